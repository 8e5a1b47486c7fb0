"""The one MetaData: every table Foundation keeps, prefixed ``foundation_``.

The migrations in ``migrations/`` are written from this module and a test proves
they agree (alembic's compare finds nothing).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

__all__ = ["JSONValue", "config", "config_history", "metadata"]

# The width of a breaker's name and a rate limit's key (config keys take up to 1024).
KEY_COLUMN_WIDTH = 255

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

# -- the event log (revision 0002) ------------------------------------------------------

events = sa.Table(
    "foundation_events",
    metadata,
    # The global position: INTEGER PRIMARY KEY (the rowid) on SQLite, BIGSERIAL on
    # PostgreSQL. Writers allocate it under a lock so that it follows commit order.
    sa.Column("position", BigInt, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(36), nullable=False),
    sa.Column("stream_id", sa.String(255), nullable=True),
    # NULL for an event outside any stream; 1, 2, 3 … within a stream.
    sa.Column("stream_version", sa.BigInteger(), nullable=True),
    sa.Column("type", sa.String(255), nullable=False),
    sa.Column("data", JSONValue, nullable=False),
    sa.Column("metadata", JSONValue, nullable=False),
    sa.Column("correlation_id", sa.String(255), nullable=True),
    sa.Column("causation_id", sa.String(255), nullable=True),
    sa.Column("recorded_at", Timestamp, nullable=False),
    sa.UniqueConstraint("id", name="uq_foundation_events_id"),
    sa.UniqueConstraint("stream_id", "stream_version", name="uq_foundation_events_stream"),
    sa.Index("ix_foundation_events_type_position", "type", "position"),
    sa.Index("ix_foundation_events_correlation_id", "correlation_id"),
    sa.Index("ix_foundation_events_recorded_at", "recorded_at"),
    comment="The append-only event log; triggers refuse UPDATE, DELETE and TRUNCATE.",
)

subscriptions = sa.Table(
    "foundation_subscriptions",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    # The position of the last event the handler finished (0: none yet).
    sa.Column("checkpoint", sa.BigInteger(), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("owner", sa.String(255), nullable=True),
    sa.Column("lease_expires_at", Timestamp, nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Column("updated_at", Timestamp, nullable=False),
    comment="Durable event-log subscriptions: checkpoint, state and the owning node's lease.",
)

# -- the service registry (revision 0003) -----------------------------------------------

leases = sa.Table(
    "foundation_leases",
    metadata,
    sa.Column("node_id", sa.String(255), primary_key=True),
    # New each time an instance of the node id takes the lease, and never given twice (see
    # the registry's _first_generation): entries name the generation they hang off, so a
    # lapsed lease never revives them.
    sa.Column("generation", sa.BigInteger(), nullable=False),
    sa.Column("ttl_ms", sa.BigInteger(), nullable=False),
    sa.Column("expires_at", Timestamp, nullable=False),
    sa.Column("renewed_at", Timestamp, nullable=False),
    sa.Column("started_at", Timestamp, nullable=False),
    comment="One lease per Foundation instance, renewed by its heartbeat.",
)

registry = sa.Table(
    "foundation_registry",
    metadata,
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("address", JSONValue, nullable=True),
    sa.Column("metadata", JSONValue, nullable=True),
    # NULL once unregistered: the row stays as a tombstone so that the epoch keeps growing.
    sa.Column("node_id", sa.String(255), nullable=True),
    sa.Column("lease_generation", sa.BigInteger(), nullable=True),
    # The fencing token: +1 on every registration of the name, never reused.
    sa.Column("epoch", sa.BigInteger(), nullable=False),
    sa.Column("revision", sa.BigInteger(), nullable=False),
    sa.Column("ttl_ms", sa.BigInteger(), nullable=True),
    sa.Column("expires_at", Timestamp, nullable=True),
    sa.Column("registered_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Index("ix_foundation_registry_node_id", "node_id"),
    comment="Cluster-wide names; an entry lives while its node's lease generation does.",
)

registry_members = sa.Table(
    "foundation_registry_members",
    metadata,
    sa.Column("group_name", sa.String(255), primary_key=True),
    sa.Column("member_id", sa.String(255), primary_key=True),
    sa.Column("address", JSONValue, nullable=False),
    sa.Column("metadata", JSONValue, nullable=False),
    sa.Column("node_id", sa.String(255), nullable=False),
    sa.Column("lease_generation", sa.BigInteger(), nullable=False),
    sa.Column("revision", sa.BigInteger(), nullable=False),
    sa.Column("joined_at", Timestamp, nullable=False),
    sa.Index("ix_foundation_registry_members_node_id", "node_id"),
    comment="Service groups: many members per group, each hanging off its node's lease.",
)

# -- circuit breakers and rate limits (revision 0004) -------------------------------------
# Times in these two tables are integers: epoch milliseconds (``*_ms``) or microseconds
# (``*_us``), taken from the database clock on PostgreSQL, so that every decision is one
# comparison inside one atomic statement.

breakers = sa.Table(
    "foundation_breakers",
    metadata,
    sa.Column("name", sa.String(KEY_COLUMN_WIDTH), primary_key=True),
    # closed | open | half_open; open with open_until_ms NULL: forced open until reset.
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("failures", sa.BigInteger(), nullable=False),
    sa.Column("opened_at_ms", sa.BigInteger(), nullable=True),
    sa.Column("open_until_ms", sa.BigInteger(), nullable=True),
    # The one probe allowed in half_open: who claimed it and until when (a lease).
    sa.Column("probe_token", sa.String(255), nullable=True),
    sa.Column("probe_until_ms", sa.BigInteger(), nullable=True),
    sa.Column("revision", sa.BigInteger(), nullable=False),
    sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
    sa.Column("updated_by", sa.String(255), nullable=False),
    comment="Shared circuit breakers: state, consecutive failures and the half-open probe.",
)

rate_limits = sa.Table(
    "foundation_rate_limits",
    metadata,
    sa.Column("key", sa.String(KEY_COLUMN_WIDTH), primary_key=True),
    sa.Column("algorithm", sa.String(16), primary_key=True),
    sa.Column("window_start_ms", sa.BigInteger(), nullable=False),
    sa.Column("count", sa.BigInteger(), nullable=False),
    sa.Column("previous_count", sa.BigInteger(), nullable=False),
    sa.Column("tat_us", sa.BigInteger(), nullable=False),
    # The outcome of the latest decision (returned by the statement that made it).
    sa.Column("allowed", sa.Boolean(), nullable=False),
    # Past this, the row says nothing a missing row would not: cleanup may delete it.
    sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
    sa.Index("ix_foundation_rate_limits_expires_at_ms", "expires_at_ms"),
    comment="Shared rate limit counters (fixed/sliding window, GCRA); expired rows are garbage.",
)

# -- the SQLite change feed's topic revisions (revision 0006) ----------------------------
# On SQLite, triggers (0006) append a row here in the writer's own transaction for every
# change to the registry, its leases and members, and the breakers: each row is one
# revision of its topic and names the key that changed. A node's feed learns whether its
# topics moved from one index seek per topic (the latest revision) instead of re-reading
# them after every commit to the file, and reads only the names above what it saw.
# A log, not a row per key, because it appends: one page per write (a row per key costs a
# page for the key and another for its revision index, about 3x the time per register).
# The triggers keep the last 10,000 revisions per topic; a node further behind re-reads.
# PostgreSQL has the table (one schema for both) but no triggers: NOTIFY already names each
# change there, and a per-topic sequence would serialise the cluster's registry writes.

topic_revisions = sa.Table(
    "foundation_topic_revisions",
    metadata,
    sa.Column("topic", sa.String(64), primary_key=True),
    sa.Column("revision", sa.BigInteger(), primary_key=True),
    sa.Column("key", sa.String(1024), nullable=False),
    comment="SQLite change feed: one row per change of a topic (registry, leases, members, "
    "breakers), naming the key that changed; the last 10,000 per topic are kept.",
    sqlite_with_rowid=False,
)
