"""Circuit breaker and rate limiter state.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

``foundation_breakers`` holds one row per shared breaker; on PostgreSQL a trigger
publishes every change on the ``foundation`` channel (topic ``breakers``) so each node's
cache follows. ``foundation_rate_limits`` holds one row per key and algorithm; it is not
published (decisions are made in the database) and expired rows are garbage.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_STATEMENTS = [
    """
    CREATE FUNCTION foundation_breakers_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            PERFORM pg_notify('foundation', json_build_object(
                'topic', 'breakers', 'name', OLD.name, 'revision', OLD.revision + 1,
                'deleted', true)::text);
            RETURN NULL;
        END IF;
        PERFORM pg_notify('foundation', json_build_object(
            'topic', 'breakers', 'name', NEW.name, 'revision', NEW.revision)::text);
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER foundation_breakers_notify
        AFTER INSERT OR UPDATE OR DELETE ON foundation_breakers
        FOR EACH ROW EXECUTE FUNCTION foundation_breakers_notify()
    """,
]


def upgrade() -> None:
    op.create_table(
        "foundation_breakers",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("failures", sa.BigInteger(), nullable=False),
        sa.Column("opened_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("open_until_ms", sa.BigInteger(), nullable=True),
        sa.Column("probe_token", sa.String(255), nullable=True),
        sa.Column("probe_until_ms", sa.BigInteger(), nullable=True),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_by", sa.String(255), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_foundation_breakers")),
        comment="Shared circuit breakers: state, consecutive failures and the half-open probe.",
    )
    op.create_table(
        "foundation_rate_limits",
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("algorithm", sa.String(16), nullable=False),
        sa.Column("window_start_ms", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
        sa.Column("previous_count", sa.BigInteger(), nullable=False),
        sa.Column("tat_us", sa.BigInteger(), nullable=False),
        sa.Column("allowed", sa.Boolean(), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("key", "algorithm", name=op.f("pk_foundation_rate_limits")),
        comment=(
            "Shared rate limit counters (fixed/sliding window, GCRA); expired rows are garbage."
        ),
    )
    op.create_index(
        "ix_foundation_rate_limits_expires_at_ms", "foundation_rate_limits", ["expires_at_ms"]
    )
    if op.get_bind().dialect.name == "postgresql":
        for statement in PG_STATEMENTS:
            op.execute(statement)


def downgrade() -> None:
    op.drop_index("ix_foundation_rate_limits_expires_at_ms", "foundation_rate_limits")
    op.drop_table("foundation_rate_limits")
    op.drop_table("foundation_breakers")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION foundation_breakers_notify()")
