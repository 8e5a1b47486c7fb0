"""Audit views over the event log, and config changes appended to it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28

``foundation_audit_events`` gives auditors the log with readable columns (``data`` and
``metadata`` stay JSONB on PostgreSQL, JSON text on SQLite, so ``data->>'order_id'`` and
``json_extract(data, '$.order_id')`` work). ``foundation_audit_config`` does the same for
config history.

Every row written to ``foundation_config_history`` (itself written by 0001's triggers) is
also appended to ``foundation_events`` as a ``foundation.config.changed`` event, so one
log holds the whole audit trail. On PostgreSQL the trigger first takes the events
writers' transaction lock (``pg_advisory_xact_lock``, the key in
``foundation.events._store.EVENTS_LOCK_KEY``), so its position follows commit order like
every other event's, then announces the position on the ``foundation`` channel.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# foundation.events._store.EVENTS_LOCK_KEY ("FdnEvts"); a migration never imports the app.
EVENTS_LOCK_KEY = 0x46646E45767473

AUDIT_EVENTS_VIEW = """
    CREATE VIEW foundation_audit_events AS
    SELECT position, recorded_at, type, stream_id, stream_version, correlation_id,
           causation_id, id AS event_id, data, metadata
    FROM foundation_events
"""

AUDIT_CONFIG_VIEW = """
    CREATE VIEW foundation_audit_config AS
    SELECT id, changed_at, key, operation, old_value, new_value, changed_by, revision,
           correlation_id
    FROM foundation_config_history
"""

PG_STATEMENTS = [
    AUDIT_EVENTS_VIEW,
    AUDIT_CONFIG_VIEW,
    f"""
    CREATE FUNCTION foundation_config_changed_event() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        pos bigint;
    BEGIN
        -- The events writers' lock: positions keep following commit order.
        PERFORM pg_advisory_xact_lock({EVENTS_LOCK_KEY});
        INSERT INTO foundation_events
            (id, stream_id, stream_version, type, data, metadata, correlation_id,
             causation_id, recorded_at)
        VALUES (gen_random_uuid()::text, NULL, NULL, 'foundation.config.changed',
                jsonb_build_object('key', NEW.key, 'operation', NEW.operation,
                                   'old', NEW.old_value, 'new', NEW.new_value,
                                   'by', NEW.changed_by, 'revision', NEW.revision),
                '{{}}'::jsonb, NEW.correlation_id, NULL, NEW.changed_at)
        RETURNING position INTO pos;
        PERFORM pg_notify('foundation', json_build_object(
            'topic', 'events', 'position', pos)::text);
        RETURN NULL;
    END
    $$
    """,  # noqa: S608 (constants only, no input)
    """
    CREATE TRIGGER foundation_config_changed_event
        AFTER INSERT ON foundation_config_history
        FOR EACH ROW EXECUTE FUNCTION foundation_config_changed_event()
    """,
]

# A random (version 4) UUID as text, from SQLite's built-in functions.
_SQLITE_UUID = """
    (SELECT lower(substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-4' || substr(h, 14, 3)
                  || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(h, 18, 3)
                  || '-' || substr(h, 21, 12))
     FROM (SELECT hex(randomblob(16)) AS h))
"""

SQLITE_STATEMENTS = [
    AUDIT_EVENTS_VIEW,
    AUDIT_CONFIG_VIEW,
    f"""
    CREATE TRIGGER foundation_config_changed_event AFTER INSERT ON foundation_config_history
    BEGIN
        INSERT INTO foundation_events
            (id, stream_id, stream_version, type, data, metadata, correlation_id,
             causation_id, recorded_at)
        VALUES ({_SQLITE_UUID}, NULL, NULL, 'foundation.config.changed',
                json_object('key', NEW.key, 'operation', NEW.operation,
                            'old', json(NEW.old_value), 'new', json(NEW.new_value),
                            'by', NEW.changed_by, 'revision', NEW.revision),
                '{{}}', NEW.correlation_id, NULL, NEW.changed_at);
    END
    """,  # noqa: S608 (constants only, no input)
]


def upgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in PG_STATEMENTS if postgres else SQLITE_STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER foundation_config_changed_event ON foundation_config_history")
        op.execute("DROP FUNCTION foundation_config_changed_event()")
    else:
        op.execute("DROP TRIGGER foundation_config_changed_event")
    op.execute("DROP VIEW foundation_audit_config")
    op.execute("DROP VIEW foundation_audit_events")
