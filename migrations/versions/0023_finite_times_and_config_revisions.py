"""Times every reader can load, and config revisions that count.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-01

PostgreSQL takes ``'infinity'``, ``'-infinity'``, years past 9999 and years BC as a
``timestamptz``; psycopg loads none of them (Python's datetime has no such value). A
lease, a registration, a group member or a subscription given one with plain SQL stopped
every node that read it: new nodes could not start, and (before the feed learnt to skip
such a row) a running node's change feed went down for good. The log already refused
them (0015: years 2 to 9998, a day's margin for any time zone); the other tables' times
now do, by BEFORE triggers, as 0021's (a CHECK would first have to hold for every row
already there, and SQLAlchemy 2.1 cannot reflect a table with a CHECK ``NOT VALID``).

A config row whose revision is 0 or less (an ``INSERT`` by hand) was taken by the table
and its history, and read by no node: every node holds revision 0 for a key it has not
seen, and reads only a later one. Refused now, on both databases (on SQLite also a
revision that is not an integer: its tables take any type); such a row already there is
given revision 1 first, so that nodes read it (the value its writer meant; its history
and the log record the change, by the role that upgrades, at the upgrade's time).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each trigger's WHEN clause does the check (no function call for a row that passes: a
# heartbeat's renewal pays a few comparisons); the function only says what was refused,
# the trigger's arguments naming the columns checked. A NULL time (no expiry) passes.
PG_UPGRADE = [
    # Stamped as a plain-SQL change is (0010): by the role that upgrades, now.
    """
    UPDATE foundation_config
    SET revision = 1, updated_by = 'sql:' || current_user, updated_at = now()
    WHERE revision < 1
    """,
    """
    CREATE FUNCTION foundation_times_readable() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
    BEGIN
        RAISE EXCEPTION '%: % must be times between the years 2 and 9998',
            TG_TABLE_NAME, array_to_string(TG_ARGV, ', ')
            USING ERRCODE = 'check_violation';
    END
    $$
    """,
    """
    CREATE TRIGGER foundation_config_times_readable
        BEFORE INSERT OR UPDATE ON foundation_config
        FOR EACH ROW WHEN (NOT (
            NEW.updated_at >= '0002-01-01+00' AND NEW.updated_at < '9999-01-01+00'))
        EXECUTE FUNCTION foundation_times_readable('updated_at')
    """,
    """
    CREATE TRIGGER foundation_leases_times_readable
        BEFORE INSERT OR UPDATE ON foundation_leases
        FOR EACH ROW WHEN (NOT (
            NEW.expires_at >= '0002-01-01+00' AND NEW.expires_at < '9999-01-01+00'
            AND NEW.renewed_at >= '0002-01-01+00' AND NEW.renewed_at < '9999-01-01+00'
            AND NEW.started_at >= '0002-01-01+00' AND NEW.started_at < '9999-01-01+00'))
        EXECUTE FUNCTION foundation_times_readable('expires_at', 'renewed_at', 'started_at')
    """,
    """
    CREATE TRIGGER foundation_registry_times_readable
        BEFORE INSERT OR UPDATE ON foundation_registry
        FOR EACH ROW WHEN (NOT (
            NEW.expires_at >= '0002-01-01+00' AND NEW.expires_at < '9999-01-01+00'
            AND NEW.registered_at >= '0002-01-01+00' AND NEW.registered_at < '9999-01-01+00'
            AND NEW.updated_at >= '0002-01-01+00' AND NEW.updated_at < '9999-01-01+00'))
        EXECUTE FUNCTION foundation_times_readable('expires_at', 'registered_at', 'updated_at')
    """,
    """
    CREATE TRIGGER foundation_registry_members_times_readable
        BEFORE INSERT OR UPDATE ON foundation_registry_members
        FOR EACH ROW WHEN (NOT (
            NEW.joined_at >= '0002-01-01+00' AND NEW.joined_at < '9999-01-01+00'))
        EXECUTE FUNCTION foundation_times_readable('joined_at')
    """,
    """
    CREATE TRIGGER foundation_subscriptions_times_readable
        BEFORE INSERT OR UPDATE ON foundation_subscriptions
        FOR EACH ROW WHEN (NOT (
            NEW.lease_expires_at >= '0002-01-01+00' AND NEW.lease_expires_at < '9999-01-01+00'
            AND NEW.updated_at >= '0002-01-01+00' AND NEW.updated_at < '9999-01-01+00'))
        EXECUTE FUNCTION foundation_times_readable('lease_expires_at', 'updated_at')
    """,
    """
    CREATE FUNCTION foundation_config_revision_counts() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
    BEGIN
        RAISE EXCEPTION 'foundation_config: the revision must be an integer from 1, not %',
            NEW.revision USING ERRCODE = 'check_violation';
    END
    $$
    """,
    """
    CREATE TRIGGER foundation_config_revision_counts
        BEFORE INSERT OR UPDATE OF revision ON foundation_config
        FOR EACH ROW WHEN (NEW.revision < 1)
        EXECUTE FUNCTION foundation_config_revision_counts()
    """,
]
PG_DOWNGRADE = [
    "DROP TRIGGER foundation_config_revision_counts ON foundation_config",
    "DROP FUNCTION foundation_config_revision_counts()",
    "DROP TRIGGER foundation_subscriptions_times_readable ON foundation_subscriptions",
    "DROP TRIGGER foundation_registry_members_times_readable ON foundation_registry_members",
    "DROP TRIGGER foundation_registry_times_readable ON foundation_registry",
    "DROP TRIGGER foundation_leases_times_readable ON foundation_leases",
    "DROP TRIGGER foundation_config_times_readable ON foundation_config",
    "DROP FUNCTION foundation_times_readable()",
]
SQLITE_UPGRADE = [
    # Stamped as a plain-SQL change is (0010, 0013); ``value = value`` so that the
    # history's trigger (on value) records it, and nodes' polls read it.
    """
    UPDATE foundation_config
    SET revision = 1, value = value, updated_by = 'sql',
        updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'
    WHERE typeof(revision) != 'integer' OR revision < 1
    """,
    """
    CREATE TRIGGER foundation_config_revision_insert BEFORE INSERT ON foundation_config
    WHEN typeof(NEW.revision) != 'integer' OR NEW.revision < 1
    BEGIN
        SELECT RAISE(ABORT, 'foundation_config: the revision must be an integer from 1');
    END
    """,
    """
    CREATE TRIGGER foundation_config_revision_update
    BEFORE UPDATE OF revision ON foundation_config
    WHEN typeof(NEW.revision) != 'integer' OR NEW.revision < 1
    BEGIN
        SELECT RAISE(ABORT, 'foundation_config: the revision must be an integer from 1');
    END
    """,
]
SQLITE_DOWNGRADE = [
    "DROP TRIGGER foundation_config_revision_insert",
    "DROP TRIGGER foundation_config_revision_update",
]


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in PG_UPGRADE if postgres else SQLITE_UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in PG_DOWNGRADE if postgres else SQLITE_DOWNGRADE:
        op.execute(statement)
