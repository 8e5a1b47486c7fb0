"""Foundation's first tables: runtime config and its audit history.

Revision ID: 0001
Revises:
Create Date: 2026-11-28

The history is written by triggers, so a change made with plain SQL is audited too,
and the history itself refuses UPDATE, DELETE and TRUNCATE. On PostgreSQL the same
trigger publishes the change on the ``foundation`` channel (NOTIFY is delivered at
commit, never for a rolled-back change).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONValue = sa.Text().with_variant(postgresql.JSONB(), "postgresql")
BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

PG_FUNCTIONS = [
    """
    CREATE FUNCTION foundation_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '% is append-only: % is refused', TG_TABLE_NAME, TG_OP
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'Foundation keeps this table as an audit log.';
    END
    $$
    """,
    """
    CREATE FUNCTION foundation_config_audit() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            INSERT INTO foundation_config_history
                (key, operation, old_value, new_value, revision, changed_at, changed_by,
                 correlation_id)
            VALUES (OLD.key, 'delete', CASE WHEN OLD.deleted THEN NULL ELSE OLD.value END,
                    NULL, OLD.revision + 1, now(), 'sql:' || current_user, NULL);
            PERFORM pg_notify('foundation', json_build_object(
                'topic', 'config', 'key', OLD.key, 'revision', OLD.revision + 1)::text);
            RETURN NULL;
        END IF;
        INSERT INTO foundation_config_history
            (key, operation, old_value, new_value, revision, changed_at, changed_by,
             correlation_id)
        VALUES (NEW.key,
                CASE WHEN NEW.deleted THEN 'delete' ELSE 'set' END,
                CASE WHEN TG_OP = 'UPDATE' AND NOT OLD.deleted THEN OLD.value END,
                CASE WHEN NEW.deleted THEN NULL ELSE NEW.value END,
                NEW.revision, NEW.updated_at, NEW.updated_by, NEW.correlation_id);
        PERFORM pg_notify('foundation', json_build_object(
            'topic', 'config', 'key', NEW.key, 'revision', NEW.revision)::text);
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER foundation_config_audit
        AFTER INSERT OR UPDATE OR DELETE ON foundation_config
        FOR EACH ROW EXECUTE FUNCTION foundation_config_audit()
    """,
    """
    CREATE TRIGGER foundation_config_history_append_only
        BEFORE UPDATE OR DELETE ON foundation_config_history
        FOR EACH ROW EXECUTE FUNCTION foundation_refuse_change()
    """,
    """
    CREATE TRIGGER foundation_config_history_no_truncate
        BEFORE TRUNCATE ON foundation_config_history
        FOR EACH STATEMENT EXECUTE FUNCTION foundation_refuse_change()
    """,
]

SQLITE_TRIGGERS = [
    """
    CREATE TRIGGER foundation_config_audit_insert AFTER INSERT ON foundation_config
    BEGIN
        INSERT INTO foundation_config_history
            (key, operation, old_value, new_value, revision, changed_at, changed_by, correlation_id)
        VALUES (NEW.key, CASE WHEN NEW.deleted THEN 'delete' ELSE 'set' END, NULL,
                CASE WHEN NEW.deleted THEN NULL ELSE NEW.value END,
                NEW.revision, NEW.updated_at, NEW.updated_by, NEW.correlation_id);
    END
    """,
    """
    CREATE TRIGGER foundation_config_audit_update AFTER UPDATE ON foundation_config
    BEGIN
        INSERT INTO foundation_config_history
            (key, operation, old_value, new_value, revision, changed_at, changed_by, correlation_id)
        VALUES (NEW.key, CASE WHEN NEW.deleted THEN 'delete' ELSE 'set' END,
                CASE WHEN OLD.deleted THEN NULL ELSE OLD.value END,
                CASE WHEN NEW.deleted THEN NULL ELSE NEW.value END,
                NEW.revision, NEW.updated_at, NEW.updated_by, NEW.correlation_id);
    END
    """,
    """
    CREATE TRIGGER foundation_config_audit_delete AFTER DELETE ON foundation_config
    BEGIN
        INSERT INTO foundation_config_history
            (key, operation, old_value, new_value, revision, changed_at, changed_by, correlation_id)
        VALUES (OLD.key, 'delete', CASE WHEN OLD.deleted THEN NULL ELSE OLD.value END, NULL,
                OLD.revision + 1, strftime('%Y-%m-%d %H:%M:%f', 'now'), 'sql', NULL);
    END
    """,
    """
    CREATE TRIGGER foundation_config_history_no_update
    BEFORE UPDATE ON foundation_config_history
    BEGIN
        SELECT RAISE(ABORT, 'foundation_config_history is append-only: UPDATE is refused');
    END
    """,
    """
    CREATE TRIGGER foundation_config_history_no_delete
    BEFORE DELETE ON foundation_config_history
    BEGIN
        SELECT RAISE(ABORT, 'foundation_config_history is append-only: DELETE is refused');
    END
    """,
]


def upgrade() -> None:
    op.create_table(
        "foundation_config",
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("value", JSONValue, nullable=True),
        sa.Column("deleted", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_by", sa.String(255), nullable=False),
        sa.Column("correlation_id", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_foundation_config")),
        comment="Runtime config values set through Foundation; deleted keys stay as tombstones.",
    )
    op.create_table(
        "foundation_config_history",
        sa.Column("id", BigInt, autoincrement=True, nullable=False),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("operation", sa.String(16), nullable=False),
        sa.Column("old_value", JSONValue, nullable=True),
        sa.Column("new_value", JSONValue, nullable=True),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_by", sa.String(255), nullable=False),
        sa.Column("correlation_id", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_foundation_config_history")),
        comment="Every config change, written by a trigger; append-only.",
    )
    op.create_index(
        "ix_foundation_config_history_key_id",
        "foundation_config_history",
        ["key", "id"],
    )
    statements = PG_FUNCTIONS if op.get_bind().dialect.name == "postgresql" else SQLITE_TRIGGERS
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TABLE foundation_config_history")
        op.execute("DROP TABLE foundation_config")
        op.execute("DROP FUNCTION foundation_config_audit()")
        op.execute("DROP FUNCTION foundation_refuse_change()")
        return
    # SQLite drops a table's triggers with the table.
    op.drop_index("ix_foundation_config_history_key_id", "foundation_config_history")
    op.drop_table("foundation_config_history")
    op.drop_table("foundation_config")
