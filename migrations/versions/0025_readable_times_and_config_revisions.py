"""Times between the years 2 and 9998, and config rows below revision 1 given one.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-01

0023 refuses ``infinity`` and ``-infinity`` in the config, lease, registry, member and
subscription tables. psycopg loads no year past 9999 nor any year BC either: such a time,
written with plain SQL, stops the nodes that read it just the same. The log already
refuses them (0015: years 2 to 9998, a day's margin for any time zone); these tables now
do too, by BEFORE triggers whose WHEN clause does the check (a row that passes calls no
function). 0023's triggers are replaced (whichever form of them a database holds: a
database upgraded by an earlier build of 0023 has these already, and keeps them).

A config row of revision 0 or less already there (0023 refuses new ones) was read by no
node: it is given revision 1, stamped as a plain-SQL change is (0010, 0013), by the role
that upgrades, now, so that its history, the log and every node record and read it.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# 0023's triggers, in either form, go first.
PG_DROP = [
    "DROP TRIGGER IF EXISTS foundation_config_times_finite ON foundation_config",
    "DROP TRIGGER IF EXISTS foundation_leases_times_finite ON foundation_leases",
    "DROP TRIGGER IF EXISTS foundation_registry_times_finite ON foundation_registry",
    "DROP TRIGGER IF EXISTS foundation_registry_members_times_finite"
    " ON foundation_registry_members",
    "DROP TRIGGER IF EXISTS foundation_subscriptions_times_finite ON foundation_subscriptions",
    "DROP FUNCTION IF EXISTS foundation_times_finite()",
    "DROP TRIGGER IF EXISTS foundation_config_times_readable ON foundation_config",
    "DROP TRIGGER IF EXISTS foundation_leases_times_readable ON foundation_leases",
    "DROP TRIGGER IF EXISTS foundation_registry_times_readable ON foundation_registry",
    "DROP TRIGGER IF EXISTS foundation_registry_members_times_readable"
    " ON foundation_registry_members",
    "DROP TRIGGER IF EXISTS foundation_subscriptions_times_readable ON foundation_subscriptions",
    "DROP FUNCTION IF EXISTS foundation_times_readable()",
]
PG_UPGRADE = [
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
]
PG_DOWNGRADE = [
    "DROP TRIGGER IF EXISTS foundation_config_times_readable ON foundation_config",
    "DROP TRIGGER IF EXISTS foundation_leases_times_readable ON foundation_leases",
    "DROP TRIGGER IF EXISTS foundation_registry_times_readable ON foundation_registry",
    "DROP TRIGGER IF EXISTS foundation_registry_members_times_readable"
    " ON foundation_registry_members",
    "DROP TRIGGER IF EXISTS foundation_subscriptions_times_readable ON foundation_subscriptions",
    "DROP FUNCTION IF EXISTS foundation_times_readable()",
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
]
# ``value = value`` so that the history's trigger (on value) records it, and nodes'
# polls read it.
SQLITE_UPGRADE = """
    UPDATE foundation_config
    SET revision = 1, value = value, updated_by = 'sql',
        updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now') || '000'
    WHERE typeof(revision) != 'integer' OR revision < 1
    """


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in PG_DROP + PG_UPGRADE:
            op.execute(statement)
        return
    op.execute(SQLITE_UPGRADE)


def downgrade() -> None:
    # (A row given revision 1 keeps it: its value and history are as the upgrade left.)
    if op.get_bind().dialect.name == "postgresql":
        for statement in PG_DOWNGRADE:
            op.execute(statement)
