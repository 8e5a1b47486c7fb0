"""The one MetaData: every table Foundation keeps, prefixed ``foundation_``.

The migrations in ``migrations/`` are written from this module and a test proves
they agree (alembic's compare finds nothing).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

__all__ = ["JSONValue", "config", "config_history", "metadata"]

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# JSON as TEXT on SQLite (queryable with JSON1; a column typed JSON would get NUMERIC
# affinity and turn the text 12345678901234567890 into a lossy REAL), JSONB on PostgreSQL.
JSONValue = sa.Text().with_variant(postgresql.JSONB(), "postgresql")
# A 64-bit integer that SQLite still treats as its rowid alias when it is the primary key.
BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)

config = sa.Table(
    "foundation_config",
    metadata,
    sa.Column("key", sa.String(1024), primary_key=True),
    # NULL while the key is deleted: the row stays as a tombstone so that its revision
    # keeps increasing and a node never takes an older write for a newer one.
    sa.Column("value", JSONValue, nullable=True),
    sa.Column("deleted", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("revision", sa.BigInteger(), nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("updated_by", sa.String(255), nullable=False),
    sa.Column("correlation_id", sa.String(255), nullable=True),
    comment="Runtime config values set through Foundation; deleted keys stay as tombstones.",
)

config_history = sa.Table(
    "foundation_config_history",
    metadata,
    sa.Column("id", BigInt, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(1024), nullable=False),
    sa.Column("operation", sa.String(16), nullable=False),
    sa.Column("old_value", JSONValue, nullable=True),
    sa.Column("new_value", JSONValue, nullable=True),
    sa.Column("revision", sa.BigInteger(), nullable=False),
    sa.Column("changed_at", Timestamp, nullable=False),
    sa.Column("changed_by", sa.String(255), nullable=False),
    sa.Column("correlation_id", sa.String(255), nullable=True),
    sa.Index("ix_foundation_config_history_key_id", "key", "id"),
    comment="Every config change, written by a trigger; append-only.",
)
