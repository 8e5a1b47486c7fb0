"""The registry repository: its SQL, written once in Core and compiled per backend.

Time: on PostgreSQL every expiry decision uses the database clock (``now()``), so the
nodes' clocks never decide who may take a name. SQLite has no server: all processes on
one file share one machine's clock, passed in as ``:now`` (and ``:expires``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from foundation.database.codec import Codec
from foundation.database.feed import (
    TOPIC_LEASES,
    TOPIC_MEMBERS,
    TOPIC_NAMES,
    TopicRevisions,
    changed_keys_sql,
)
from foundation.database.schema import leases, registry, registry_members, topic_revisions
from foundation.database.statements import compile_sql, compile_sqlite_positional
from foundation.database.url import Backend

__all__ = ["RegistrySQL"]

_ONE_MS: Any = sa.literal_column("interval '1 millisecond'")
# SQLite's clock when the statement runs, to the millisecond, in the text form of
# Codec.ts. A renewal must judge its lease by it, not by ``:now``: that was read before
# the statement waited for the write lock (up to the busy timeout), and a lease that
# lapsed meanwhile, its names perhaps taken by another node, would live again.
_SQLITE_NOW: Any = sa.literal_column("strftime('%Y-%m-%d %H:%M:%f', 'now')")


def _clock(backend: Backend) -> tuple[Any, Any, Any]:
    """(now, now + :ttl_ms, now + :entry_ttl_ms) for the backend."""
    if backend == "postgresql":
        now = sa.func.now()
        return (
            now,
            now + sa.bindparam("ttl_ms", type_=sa.BigInteger) * _ONE_MS,
            now + sa.bindparam("entry_ttl_ms", type_=sa.BigInteger) * _ONE_MS,
        )
    return sa.bindparam("now"), sa.bindparam("expires"), sa.bindparam("entry_expires")


# The order of register's parameters in its SQLite text (checked when compiled).
_REGISTER_ORDER = (
    "name",
    "address",
    "metadata",
    "node",
    "gen",
    "entry_ttl_ms",
    "entry_ttl_ms",
    "entry_expires",
    "now",
    "now",
    "now",
    "now",
)
# register_new's parameters: the first of register's, without its takeover check's.
_NEW_PARAMS = 10


def _insert(backend: Backend) -> Any:
    return postgresql.insert if backend == "postgresql" else sqlite.insert


def _outer(table: sa.Table, column: str) -> Any:
    # A column of the row in conflict, named as text: SQLAlchemy does not correlate a
    # subquery inside ON CONFLICT … WHERE with the INSERT's table.
    return sa.literal_column(f"{table.name}.{column}")


def _member_revision(backend: Backend) -> Any:
    """A group member's revision on a write: one that only grows, across the member's
    leaves and joins (its row is deleted on leave), so that every cache can tell the
    newer of two rows of one member. SQLite: the next revision of the members topic (0006),
    which the write's own trigger records; PostgreSQL: 0019's trigger sets it from its
    sequence, whatever the statement gives."""
    if backend != "sqlite":
        return sa.literal_column("1")
    return _next_topic_revision(sa.literal_column("'registry.members'"))  # TOPIC_MEMBERS


def _next_topic_revision(topic: Any) -> Any:
    """SQLite: the revision the write's own trigger (0006) is about to record for
    ``topic`` (a constant): one past the latest, which the trigger's prune always keeps."""
    named = topic_revisions.c.topic == topic
    latest = sa.select(sa.func.max(topic_revisions.c.revision)).where(named)
    one: Any = sa.literal_column("1")
    return sa.func.coalesce(latest.scalar_subquery(), sa.literal_column("0")) + one


def _lease_live(backend: Backend, now: Any, table: sa.Table) -> Any:
    """True while the row's lease generation is live.

    On PostgreSQL a VOLATILE function (migration 0003) takes a fresh snapshot each call:
    when two writers race for a name, the one that waited on the row lock re-checks the
    winner's lease even if that lease committed after its own statement began (a plain
    subquery would still see the statement's older snapshot, miss the lease, and take
    the name from a live owner).
    """
    node, gen = _outer(table, "node_id"), _outer(table, "lease_generation")
    if backend == "postgresql":
        return sa.func.foundation_lease_live(node, gen, type_=sa.Boolean)
    return (
        sa.select(sa.literal_column("1"))
        .where(leases.c.node_id == node, leases.c.generation == gen, leases.c.expires_at > now)
        .exists()
    )


def _first_generation(backend: Backend) -> Any:
    """A new lease's generation: one no instance of the node id ever held.

    The lease row goes on ``close()``, and a paused instance may come back long after: a
    generation reused (numbering restarted at 1, or at one past the rows left) would make
    that instance the owner of a later one's lease, names and members. So it comes from a
    counter that only grows for the whole database: PostgreSQL's transaction id
    (``txid_current()``, 64 bits, never reused in a cluster's life), SQLite's next
    revision of the leases topic (0006: every lease change records one). It is also one
    past any generation the node id's rows still carry, so the rows' owners never come
    back either. A generation set by hand, or a database restored into another cluster
    (its transaction ids count from lower), may put a later instance's below an earlier
    one's: every write names its own generation exactly (``leave`` also takes a dead
    one's), never "up to".
    """
    highest = [
        sa.select(sa.func.max(table.c.lease_generation))
        .where(table.c.node_id == sa.bindparam("node"))
        .scalar_subquery()
        for table in (registry, registry_members)
    ]
    zero: Any = sa.literal_column("0")
    one: Any = sa.literal_column("1")
    past_rows = [sa.func.coalesce(h, zero) + one for h in highest]
    if backend == "postgresql":
        return sa.func.greatest(sa.func.txid_current(), *past_rows)
    leases_topic: Any = sa.literal_column("'registry.leases'")  # TOPIC_LEASES
    return sa.func.max(_next_topic_revision(leases_topic), *past_rows)


def _dead_owner(backend: Backend, now: Any) -> Any:
    """True for a row nobody holds: a tombstone, a lapsed lease, or an entry past its TTL."""
    return sa.or_(
        registry.c.node_id.is_(None),
        ~_lease_live(backend, now, registry),
        sa.and_(registry.c.expires_at.is_not(None), registry.c.expires_at <= now),
    )


ENTRY_COLUMNS = (
    registry.c.name,
    registry.c.address,
    registry.c.metadata,
    registry.c.node_id,
    registry.c.lease_generation,
    registry.c.epoch,
    registry.c.revision,
    registry.c.registered_at,
    registry.c.expires_at,
)
# What register reads back: only what the database decided. The caller already holds the
# name, address and metadata it sent (decoding them again was most of register's Python
# time on PostgreSQL, where JSONB comes back parsed); the entry's own expiry is
# registered_at + its ttl (one now() per statement).
REGISTERED_COLUMNS = (registry.c.epoch, registry.c.revision, registry.c.registered_at)
MEMBER_COLUMNS = (
    registry_members.c.group_name,
    registry_members.c.member_id,
    registry_members.c.address,
    registry_members.c.metadata,
    registry_members.c.node_id,
    registry_members.c.lease_generation,
    registry_members.c.revision,
    registry_members.c.joined_at,
)


@dataclass(frozen=True)
class RegistrySQL:
    """Every statement the registry runs, as driver-ready text."""

    backend: Backend
    codec: Codec
    take_lease: str
    renew: str
    release_lease: str
    release_entries: str
    release_members: str
    register: str
    register_new: str
    reclaim: str
    unregister: str
    unregister_force: str
    update_metadata: str
    select_entries: str
    select_entry: str
    select_leases: str
    select_lease: str
    join: str
    leave: str
    select_members: str
    select_member: str
    prune_members: str
    backend_busy: str
    topics: TopicRevisions
    select_changed_entries: str

    @classmethod
    def build(cls, backend: Backend, codec: Codec) -> RegistrySQL:
        now, expires, entry_expires = _clock(backend)
        insert = _insert(backend)
        greatest = sa.func.greatest if backend == "postgresql" else sa.func.max

        take = insert(leases).values(
            node_id=sa.bindparam("node"),
            generation=_first_generation(backend),
            ttl_ms=sa.bindparam("ttl_ms"),
            expires_at=expires,
            renewed_at=now,
            started_at=now,
        )
        # Only a lease nobody else holds: the node's own current generation (``:gen``, a
        # recovery; NULL on start), or one that lapsed. A live lease of another generation
        # belongs to another instance started with the same node id: taking it would kill
        # that instance's lease, whose recovery would kill this one's, and so on forever.
        # No row comes back then, and the caller refuses (``config_error``) or waits.
        take = take.on_conflict_do_update(
            index_elements=[leases.c.node_id],
            set_={
                # A new generation, and one past the row's (restored from elsewhere).
                "generation": greatest(
                    take.excluded.generation, leases.c.generation + sa.literal_column("1")
                ),
                "ttl_ms": take.excluded.ttl_ms,
                "expires_at": take.excluded.expires_at,
                "renewed_at": take.excluded.renewed_at,
                "started_at": take.excluded.started_at,
            },
            where=sa.or_(
                leases.c.generation == sa.bindparam("gen", type_=sa.BigInteger),
                leases.c.expires_at <= now,
            ),
        ).returning(leases.c.generation, leases.c.expires_at)

        # The heartbeat: one statement whatever the number of names, and only while the
        # lease is still live in the database's own view.
        renew = (
            sa.update(leases)
            .where(
                leases.c.node_id == sa.bindparam("node"),
                leases.c.generation == sa.bindparam("gen"),
                leases.c.expires_at > (now if backend == "postgresql" else _SQLITE_NOW),
            )
            .values(expires_at=expires, renewed_at=now)
            .returning(leases.c.expires_at)
        )
        release_lease = sa.delete(leases).where(
            leases.c.node_id == sa.bindparam("node"), leases.c.generation == sa.bindparam("gen")
        )
        tombstone = {
            "address": sa.null(),
            "metadata": sa.null(),
            "node_id": sa.null(),
            "lease_generation": sa.null(),
            "ttl_ms": sa.null(),
            "expires_at": sa.null(),
            "revision": registry.c.revision + sa.literal_column("1"),
            "updated_at": now,
        }
        release_entries = (
            sa.update(registry)
            .where(
                registry.c.node_id == sa.bindparam("node"),
                registry.c.lease_generation == sa.bindparam("gen"),
            )
            .values(**tombstone)
            .returning(registry.c.name, registry.c.revision)
        )
        release_members = (
            sa.delete(registry_members)
            .where(
                registry_members.c.node_id == sa.bindparam("node"),
                # Not a later instance's of this node id (its lease taken while this one
                # stood still), as release_entries.
                registry_members.c.lease_generation == sa.bindparam("gen"),
            )
            .returning(registry_members.c.group_name, registry_members.c.member_id)
        )

        def new_row(expires_at: Any) -> Any:
            return insert(registry).values(
                name=sa.bindparam("name"),
                address=sa.bindparam("address"),
                metadata=sa.bindparam("metadata"),
                node_id=sa.bindparam("node"),
                lease_generation=sa.bindparam("gen"),
                epoch=sa.literal_column("1"),
                revision=sa.literal_column("1"),
                ttl_ms=sa.bindparam("entry_ttl_ms"),
                expires_at=expires_at,
                registered_at=now,
                updated_at=now,
            )

        def register_statement(expires_at: Any) -> Any:
            """Register, or take over a name whose owner is gone: ONE atomic statement."""
            reg = new_row(expires_at)
            return reg.on_conflict_do_update(
                index_elements=[registry.c.name],
                set_={
                    "address": reg.excluded.address,
                    "metadata": reg.excluded.metadata,
                    "node_id": reg.excluded.node_id,
                    "lease_generation": reg.excluded.lease_generation,
                    "epoch": registry.c.epoch + sa.literal_column("1"),
                    "revision": registry.c.revision + sa.literal_column("1"),
                    "ttl_ms": reg.excluded.ttl_ms,
                    "expires_at": reg.excluded.expires_at,
                    "registered_at": reg.excluded.registered_at,
                    "updated_at": reg.excluded.updated_at,
                },
                where=_dead_owner(backend, now),
            ).returning(*REGISTERED_COLUMNS)

        entry_end = sa.case(
            (sa.bindparam("entry_ttl_ms", type_=sa.BigInteger).is_(None), sa.null()),
            else_=entry_expires,
        )
        reg = register_statement(entry_end)
        # A recovery writes a name again only where its row is still as this instance
        # last wrote it (``:held_gen``, the lease generation it wrote it under), its lease
        # lapsed: a name another node took, or removed (a tombstone, free to any
        # register), was lost, and is never written again; so was one a later instance of
        # this node id wrote meanwhile (while this one stood still). It keeps the end its
        # own TTL already had (a lease loss never lengthens a name's life):
        # ``:entry_until``.
        reclaim = (
            sa.update(registry)
            .where(
                registry.c.name == sa.bindparam("name"),
                registry.c.node_id == sa.bindparam("node"),
                registry.c.lease_generation == sa.bindparam("held_gen", type_=sa.BigInteger),
                _dead_owner(backend, now),
            )
            .values(
                address=sa.bindparam("address"),
                metadata=sa.bindparam("metadata"),
                lease_generation=sa.bindparam("gen"),
                epoch=registry.c.epoch + sa.literal_column("1"),
                revision=registry.c.revision + sa.literal_column("1"),
                ttl_ms=sa.bindparam("entry_ttl_ms"),
                expires_at=sa.bindparam("entry_until", type_=registry.c.expires_at.type),
                registered_at=now,
                updated_at=now,
            )
            .returning(*REGISTERED_COLUMNS)
        )

        # The owner's own writes: its row, under its lease generation, and not past the
        # entry's own TTL (a name nobody can look up is registered nowhere: not_found).
        mine = (
            registry.c.name == sa.bindparam("name"),
            registry.c.node_id == sa.bindparam("node"),
            registry.c.lease_generation == sa.bindparam("gen"),
            sa.or_(registry.c.expires_at.is_(None), registry.c.expires_at > now),
        )
        unregister = (
            sa.update(registry).where(*mine).values(**tombstone).returning(registry.c.revision)
        )
        unregister_force = (
            sa.update(registry)
            .where(registry.c.name == sa.bindparam("name"), ~_dead_owner(backend, now))
            .values(**tombstone)
            .returning(registry.c.revision)
        )
        update_metadata = (
            sa.update(registry)
            .where(*mine)
            .values(
                metadata=sa.bindparam("metadata"),
                revision=registry.c.revision + sa.literal_column("1"),
                updated_at=now,
            )
            .returning(*ENTRY_COLUMNS)
        )

        member_revision = _member_revision(backend)
        join = insert(registry_members).values(
            group_name=sa.bindparam("group"),
            member_id=sa.bindparam("member"),
            address=sa.bindparam("address"),
            metadata=sa.bindparam("metadata"),
            node_id=sa.bindparam("node"),
            lease_generation=sa.bindparam("gen"),
            revision=member_revision,
            joined_at=now,
        )
        member_live = _lease_live(backend, now, registry_members)
        join = join.on_conflict_do_update(
            index_elements=[registry_members.c.group_name, registry_members.c.member_id],
            set_={
                "address": join.excluded.address,
                "metadata": join.excluded.metadata,
                "node_id": join.excluded.node_id,
                "lease_generation": join.excluded.lease_generation,
                # Past the row's own too: one written before 0006's topic began counting.
                "revision": member_revision
                if backend != "sqlite"
                else sa.func.max(
                    registry_members.c.revision + sa.literal_column("1"), member_revision
                ),
                # The same node joining again keeps its place in members()' order; a
                # member id taken over from a dead node joins now.
                "joined_at": sa.case(
                    (
                        registry_members.c.node_id == join.excluded.node_id,
                        registry_members.c.joined_at,
                    ),
                    else_=join.excluded.joined_at,
                ),
            },
            where=sa.or_(registry_members.c.node_id == join.excluded.node_id, ~member_live),
        ).returning(*MEMBER_COLUMNS)
        leave = (
            sa.delete(registry_members)
            .where(
                registry_members.c.group_name == sa.bindparam("group"),
                registry_members.c.member_id == sa.bindparam("member"),
                registry_members.c.node_id == sa.bindparam("node"),
                # This instance's, or a dead one's of this node id (a predecessor that
                # crashed), never one live under another lease of the node id: a later
                # instance's, which may hold any generation but this one's.
                sa.or_(
                    registry_members.c.lease_generation == sa.bindparam("gen"),
                    ~member_live,
                ),
            )
            .returning(registry_members.c.revision)
        )
        prune_members = sa.delete(registry_members).where(~member_live)

        return cls(
            backend=backend,
            codec=codec,
            take_lease=compile_sql(take, backend),
            renew=compile_sql(renew, backend),
            release_lease=compile_sql(release_lease, backend),
            release_entries=compile_sql(release_entries, backend),
            release_members=compile_sql(release_members, backend),
            # SQLite: bound from register_params's tuple (see compile_sqlite_positional).
            register=(
                compile_sql(reg, backend)
                if backend == "postgresql"
                else compile_sqlite_positional(reg, _REGISTER_ORDER)
            ),
            register_new=(
                ""
                if backend == "postgresql"
                else compile_sqlite_positional(
                    new_row(entry_end).on_conflict_do_nothing(index_elements=[registry.c.name]),
                    _REGISTER_ORDER[:_NEW_PARAMS],
                )
            ),
            reclaim=compile_sql(reclaim, backend),
            unregister=compile_sql(unregister, backend),
            unregister_force=compile_sql(unregister_force, backend),
            update_metadata=compile_sql(update_metadata, backend),
            select_entries=compile_sql(
                sa.select(*ENTRY_COLUMNS).where(registry.c.node_id.is_not(None)), backend
            ),
            select_entry=compile_sql(
                sa.select(*ENTRY_COLUMNS).where(registry.c.name == sa.bindparam("name")),
                backend,
            ),
            select_leases=compile_sql(
                sa.select(leases.c.node_id, leases.c.generation, leases.c.expires_at), backend
            ),
            select_lease=compile_sql(
                sa.select(leases.c.generation, leases.c.expires_at, leases.c.renewed_at).where(
                    leases.c.node_id == sa.bindparam("node")
                ),
                backend,
            ),
            join=compile_sql(join, backend),
            leave=compile_sql(leave, backend),
            select_members=compile_sql(sa.select(*MEMBER_COLUMNS), backend),
            select_member=compile_sql(
                sa.select(*MEMBER_COLUMNS).where(
                    registry_members.c.group_name == sa.bindparam("group"),
                    registry_members.c.member_id == sa.bindparam("member"),
                ),
                backend,
            ),
            prune_members=compile_sql(prune_members, backend),
            backend_busy=compile_sql(_backend_busy(), backend) if backend == "postgresql" else "",
            topics=TopicRevisions.build(backend, TOPIC_NAMES, TOPIC_MEMBERS, TOPIC_LEASES),
            # (revision, name, *ENTRY_COLUMNS) of each change after :after; NULLs: deleted.
            select_changed_entries=changed_keys_sql(backend, *ENTRY_COLUMNS, key=registry.c.name),
        )

    # -- parameters -------------------------------------------------------------------

    def clock(self, ttl_ms: int | None = None, entry_ttl_ms: int | None = None) -> dict[str, Any]:
        """The time parameters of a statement (empty on PostgreSQL: it reads its own clock)."""
        if self.backend == "postgresql":
            params: dict[str, Any] = {}
            if ttl_ms is not None:
                params["ttl_ms"] = ttl_ms
            params["entry_ttl_ms"] = entry_ttl_ms
            return params
        now = datetime.now(UTC)
        ts = self.codec.ts
        return {
            "now": ts(now),
            "expires": ts(now + timedelta(milliseconds=ttl_ms or 0)),
            "entry_ttl_ms": entry_ttl_ms,
            "entry_expires": (
                None if entry_ttl_ms is None else ts(now + timedelta(milliseconds=entry_ttl_ms))
            ),
            "ttl_ms": ttl_ms,
        }

    def register_params(
        self, name: str, address: str, metadata: str, node: str, gen: int, ttl_ms: int | None
    ) -> tuple[dict[str, Any] | tuple[Any, ...], datetime | None]:
        """The parameters of ``register`` and, on SQLite, the ``now`` they carry.

        The hot path of register: the SQLite timestamp is formatted once and handed back,
        so that the caller never parses what it wrote, and the parameters are a tuple in
        ``_REGISTER_ORDER``. PostgreSQL reads its own clock: ``None``.
        """
        if self.backend == "postgresql":
            params = {
                "name": name,
                "address": address,
                "metadata": metadata,
                "node": node,
                "gen": gen,
                "entry_ttl_ms": ttl_ms,
            }
            return params, None
        now = datetime.now(UTC)
        ts = self.codec.ts
        at = ts(now)
        expires = None if ttl_ms is None else ts(now + timedelta(milliseconds=ttl_ms))
        return (name, address, metadata, node, gen, ttl_ms, ttl_ms, expires, at, at, at, at), now

    def fresh_params(self, params: dict[str, Any] | tuple[Any, ...]) -> tuple[Any, ...] | None:
        """``register_new``'s parameters from ``register``'s, or None on PostgreSQL.

        SQLite: a name no row of which ever reached this node's cache is most likely new.
        A plain insert is tried first; it writes nothing on a conflict, and ``register``
        (the takeover check) runs then. A RETURNING clause costs SQLite about a quarter
        of a one-row insert, and a new row's epoch and revision are known: 1 and 1.
        PostgreSQL gains nothing (its upsert costs what an insert does) and needs
        RETURNING for its own clock.
        """
        if not self.register_new:
            return None
        assert isinstance(params, tuple)
        return params[:_NEW_PARAMS]

    def epoch_seconds(self, value: Any) -> float:
        """A stored timestamp as seconds since the Unix epoch (what the cache compares)."""
        if value is None:
            return float("inf")
        return self.codec.load_ts(value).timestamp()


def _backend_busy() -> Any:
    """PostgreSQL: a row while server process ``pid`` runs a statement or transaction (a
    statement of a cut connection may still land); none once it is idle or gone. A
    process of that pid that is not this login role's (another role's, a background
    process: the pid reused, after a restart say) is not the cut connection's, which is
    gone; one whose state is not tracked (``track_activities`` off: ``disabled``) cannot
    tell: taken as ended."""
    activity = sa.table(
        "pg_stat_activity", sa.column("pid"), sa.column("state"), sa.column("usename")
    )
    busy: list[Any] = [
        sa.literal_column("'active'"),
        sa.literal_column("'idle in transaction'"),
        sa.literal_column("'idle in transaction (aborted)'"),
        sa.literal_column("'fastpath function call'"),
    ]
    return sa.select(sa.literal_column("1")).where(
        activity.c.pid == sa.bindparam("pid"),
        # The login role's (usename): a session may have switched to another (SET ROLE,
        # ALTER ROLE ... SET role), which may not see its state: NULL, busy to be safe.
        activity.c.usename == sa.func.session_user(),
        sa.or_(activity.c.state.is_(None), activity.c.state.in_(busy)),
    )
