"""The event log and its durable subscriptions.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

``foundation_events`` is append-only in the database itself: triggers refuse UPDATE and
DELETE on both databases, and TRUNCATE on PostgreSQL (reusing 0001's
``foundation_refuse_change()``), so an auditor can trust the log whatever client wrote.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONValue = sa.Text().with_variant(postgresql.JSONB(), "postgresql")
BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)

PG_TRIGGERS = [
    """
    CREATE TRIGGER foundation_events_append_only
        BEFORE UPDATE OR DELETE ON foundation_events
        FOR EACH ROW EXECUTE FUNCTION foundation_refuse_change()
    """,
    """
    CREATE TRIGGER foundation_events_no_truncate
        BEFORE TRUNCATE ON foundation_events
        FOR EACH STATEMENT EXECUTE FUNCTION foundation_refuse_change()
    """,
]

SQLITE_TRIGGERS = [
    """
    CREATE TRIGGER foundation_events_no_update BEFORE UPDATE ON foundation_events
    BEGIN
        SELECT RAISE(ABORT, 'foundation_events is append-only: UPDATE is refused');
    END
    """,
    """
    CREATE TRIGGER foundation_events_no_delete BEFORE DELETE ON foundation_events
    BEGIN
        SELECT RAISE(ABORT, 'foundation_events is append-only: DELETE is refused');
    END
    """,
]


def upgrade() -> None:
    op.create_table(
        "foundation_events",
        sa.Column("position", BigInt, autoincrement=True, nullable=False),
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("stream_id", sa.String(255), nullable=True),
        sa.Column("stream_version", sa.BigInteger(), nullable=True),
        sa.Column("type", sa.String(255), nullable=False),
        sa.Column("data", JSONValue, nullable=False),
        sa.Column("metadata", JSONValue, nullable=False),
        sa.Column("correlation_id", sa.String(255), nullable=True),
        sa.Column("causation_id", sa.String(255), nullable=True),
        sa.Column("recorded_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("position", name=op.f("pk_foundation_events")),
        sa.UniqueConstraint("id", name="uq_foundation_events_id"),
        sa.UniqueConstraint("stream_id", "stream_version", name="uq_foundation_events_stream"),
        comment="The append-only event log; triggers refuse UPDATE, DELETE and TRUNCATE.",
    )
    op.create_index("ix_foundation_events_type_position", "foundation_events", ["type", "position"])
    op.create_index("ix_foundation_events_correlation_id", "foundation_events", ["correlation_id"])
    op.create_index("ix_foundation_events_recorded_at", "foundation_events", ["recorded_at"])
    op.create_table(
        "foundation_subscriptions",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("checkpoint", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("owner", sa.String(255), nullable=True),
        sa.Column("lease_expires_at", Timestamp, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_foundation_subscriptions")),
        comment="Durable event-log subscriptions: checkpoint, state and the owning node's lease.",
    )
    postgres = op.get_bind().dialect.name == "postgresql"
    for statement in PG_TRIGGERS if postgres else SQLITE_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    # Dropping a table drops its triggers on both databases; foundation_refuse_change()
    # belongs to 0001 and stays.
    op.drop_table("foundation_subscriptions")
    if op.get_bind().dialect.name == "sqlite":
        op.drop_index("ix_foundation_events_recorded_at", "foundation_events")
        op.drop_index("ix_foundation_events_correlation_id", "foundation_events")
        op.drop_index("ix_foundation_events_type_position", "foundation_events")
    op.drop_table("foundation_events")
