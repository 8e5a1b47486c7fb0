"""Times every reader can load, and config revisions that count.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-01

PostgreSQL takes ``'infinity'`` and ``'-infinity'`` as a ``timestamptz``; psycopg loads
neither (Python's datetime has no such value). A lease, a registration, a group member or
a subscription given one with plain SQL stopped every node that read it: new nodes could
not start, and (before the feed learnt to skip such a row) a running node's change feed
went down for good. The log already refused them (0015); the other tables' times now do,
by BEFORE triggers, as 0021's (a CHECK would first have to hold for every row already
there, and SQLAlchemy 2.1 cannot reflect a table with a CHECK ``NOT VALID``). A NULL
time (no expiry) passes.

A config row whose revision is 0 or less (an ``INSERT`` by hand) was taken by the table
and its history, and read by no node: every node holds revision 0 for a key it has not
seen, and reads only a later one. Refused now, on both databases (on SQLite also a
revision that is not an integer: its tables take any type).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Each trigger's WHEN clause does the check (no function call for a row that passes: a
# heartbeat's renewal pays a few comparisons); the function only says what was refused,
# the trigger's arguments naming the columns checked.
PG_UPGRADE = [
    """
    CREATE FUNCTION foundation_times_finite() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
    BEGIN
        RAISE EXCEPTION '%: % must be finite (not infinity or -infinity)',
            TG_TABLE_NAME, array_to_string(TG_ARGV, ', ')
            USING ERRCODE = 'check_violation';
    END
    $$
    """,
    """
    CREATE TRIGGER foundation_config_times_finite
        BEFORE INSERT OR UPDATE ON foundation_config
        FOR EACH ROW WHEN (NOT isfinite(NEW.updated_at))
        EXECUTE FUNCTION foundation_times_finite('updated_at')
    """,
    """
    CREATE TRIGGER foundation_leases_times_finite
        BEFORE INSERT OR UPDATE ON foundation_leases
        FOR EACH ROW WHEN (NOT (isfinite(NEW.expires_at) AND isfinite(NEW.renewed_at)
                                AND isfinite(NEW.started_at)))
        EXECUTE FUNCTION foundation_times_finite('expires_at', 'renewed_at', 'started_at')
    """,
    """
    CREATE TRIGGER foundation_registry_times_finite
        BEFORE INSERT OR UPDATE ON foundation_registry
        FOR EACH ROW WHEN (NOT (isfinite(NEW.expires_at) AND isfinite(NEW.registered_at)
                                AND isfinite(NEW.updated_at)))
        EXECUTE FUNCTION foundation_times_finite('expires_at', 'registered_at', 'updated_at')
    """,
    """
    CREATE TRIGGER foundation_registry_members_times_finite
        BEFORE INSERT OR UPDATE ON foundation_registry_members
        FOR EACH ROW WHEN (NOT isfinite(NEW.joined_at))
        EXECUTE FUNCTION foundation_times_finite('joined_at')
    """,
    """
    CREATE TRIGGER foundation_subscriptions_times_finite
        BEFORE INSERT OR UPDATE ON foundation_subscriptions
        FOR EACH ROW WHEN (NOT (isfinite(NEW.lease_expires_at) AND isfinite(NEW.updated_at)))
        EXECUTE FUNCTION foundation_times_finite('lease_expires_at', 'updated_at')
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
    "DROP TRIGGER foundation_subscriptions_times_finite ON foundation_subscriptions",
    "DROP TRIGGER foundation_registry_members_times_finite ON foundation_registry_members",
    "DROP TRIGGER foundation_registry_times_finite ON foundation_registry",
    "DROP TRIGGER foundation_leases_times_finite ON foundation_leases",
    "DROP TRIGGER foundation_config_times_finite ON foundation_config",
    "DROP FUNCTION foundation_times_finite()",
]
SQLITE_UPGRADE = [
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
