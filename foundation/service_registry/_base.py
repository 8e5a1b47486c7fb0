"""What the registry's two faces share: :class:`_RegistryBase`, the base of
:class:`~._service.ServiceRegistry` (sync) and :class:`~._aio.AsyncServiceRegistry`, holds
validation, the cache, watches, the change-feed side and the bookkeeping of what this node
holds; the faces differ only in how they run statements and in their heartbeat (a thread,
or an asyncio task).

The lease protocol, per instance:

1. ``load`` takes the lease (``generation`` + 1 if the node id had one before), but only
   a lease nobody holds: none, released, or lapsed. The lease row names its holder by
   (node id, generation) alone, so a live lease of the node id may be a predecessor that
   crashed a moment ago or another live instance given the same node id. ``load`` waits
   and watches the row: a renewal proves a live holder, and the instance is refused with
   ``config_error`` (one node id per process); an expiry (at most the TTL) frees the
   lease for a restarted process. Taking a live lease instead would kill the other
   instance's, whose recovery would kill this one's, forever.
2. The heartbeat renews it every ``heartbeat_ms`` (default ``ttl / 3``) with ONE UPDATE
   that succeeds only while the lease is still live in the database's view.
3. The node counts its lease valid until ``ttl`` after the monotonic start of its last
   successful renewal, which is never later than the database's expiry. Past that (a
   pause, a database outage) or when a renewal finds the lease gone, it takes a new
   generation (its own lease, or a lapsed one), re-registers the names it held where
   they are still free (a name keeps the end of its own ``ttl``; one past it is not
   written again), and reports each one it lost (``kind="lost"`` to watchers,
   ``foundation.registry.lease_lost``). If another instance holds the node id's lease by
   then, the node reports every name lost and stays in error: ``register`` and ``join``
   raise ``config_error``, the heartbeat retries once per interval and takes the lease
   only once that instance's lapses.
4. A name this node holds that another node removes (``unregister(force=True)``) or
   takes is dropped from what it holds as soon as its cache shows it, and reported lost
   the same way; it is never written again after a lease loss.
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from foundation._json import same_json
from foundation._text import shown
from foundation.database.errors import never_sent
from foundation.errors import (
    AlreadyRegisteredError,
    ConfigError,
    FoundationError,
    NotFoundError,
    StorageUnavailableError,
    ValidationError,
)
from foundation.service_registry._feed import RegistryFeedSide
from foundation.service_registry._model import (
    INF,
    GroupMember,
    RegistryChange,
    RegistryWatch,
    ServiceEntry,
    _Lease,
    check_json,
    check_name,
    check_new_name,
    check_ttl,
    check_where,
)
from foundation.service_registry._state import RegistryState
from foundation.service_registry._store import RegistrySQL
from foundation.settings import Settings
from foundation.telemetry import Telemetry

__all__ = ["RegistryOptions"]

log = logging.getLogger("foundation.registry")

_REGISTER = ("foundation", "registry", "register")
_UNREGISTER = ("foundation", "registry", "unregister")
_EXPIRED = ("foundation", "registry", "expired")
_LEASE_LOST = ("foundation", "registry", "lease_lost")
_CONFLICT = ("foundation", "registry", "conflict")
_HEARTBEAT_FAILED = ("foundation", "registry", "heartbeat_failed")
# A lease statement that waited longer than the TTL is run again, this many times in all.
_TAKE_ATTEMPTS = 3
# close() waits this long at most for this node's writes in flight (see _count_in).
_CLOSE_WAIT_S = 5.0
# A heartbeat loop that woke this much later than it asked stood still; its sweeps then
# give the change feed this long to bring in other nodes' renewals (see _loop_sweep).
_STALL_S = 0.25
_STALL_GRACE_S = 0.5


@dataclass(frozen=True)
class RegistryOptions:
    """Lease timing, from :class:`~foundation.settings.Settings` (``registry_ttl_ms``,
    ``registry_heartbeat_ms``; ``FOUNDATION_REGISTRY_TTL_MS`` in the environment)."""

    ttl_ms: int = 30_000
    heartbeat_ms: int = 10_000

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistryOptions:
        ttl = settings.registry_ttl_ms
        return cls(ttl, settings.registry_heartbeat_ms or max(1, ttl // 3))


@dataclass(frozen=True)
class _Held:
    """What this node registered, to write again after a lease loss.

    ``until``: the end of the registration's own ``ttl`` (Unix seconds, from the database
    clock; ``INF`` without one), set once registered. A recovery writes the name again
    with that same end: a lease loss never gives a name more of its own TTL.
    """

    address: Any
    address_text: str
    metadata: Any
    metadata_text: str
    ttl_ms: int | None
    until: float = INF
    # The lease generation the name was last written under by this instance: a recovery
    # writes again only a row still carrying it (see ``RegistrySQL.reclaim``).
    generation: int = 0

    def with_metadata(self, metadata: Any, text: str) -> _Held:
        return dataclasses.replace(self, metadata=metadata, metadata_text=text)


@dataclass
class _Recovery:
    """A lease recovery's outcome, gathered over its passes: a name another call of this
    node is writing when a pass reaches it is left to that call, and a later pass (the
    heartbeat's, or that call's own) takes it; the loss is told once, at the end."""

    kept: builtins.list[str] = field(default_factory=builtins.list)
    lost: dict[str, ServiceEntry | None] = field(default_factory=dict)
    untold: dict[str, ServiceEntry | None] = field(default_factory=dict)  # lost, not told
    members_done: bool = False

    def keep(self, name: str) -> None:
        self.lost.pop(name, None)  # (registered again since, and kept under a new lease)
        self.untold.pop(name, None)
        if name not in self.kept:  # (kept under an earlier lease of this recovery)
            self.kept.append(name)

    def lose(self, lost: dict[str, ServiceEntry | None]) -> None:
        """Recorded as soon as found (forgotten by the node already: a pass that fails
        after must not lose the report)."""
        self.lost.update(lost)
        self.untold.update(lost)
        self.kept = [name for name in self.kept if name not in lost]


# What register_new "returns" for the row it wrote (epoch, revision, registered_at): a new
# row's first epoch and revision; registered_at is the ``now`` the statement carried.
NEW_ROW = (1, 1, None)


class _RegistryBase(RegistryFeedSide):
    """Validation, the cache, watches, the change-feed side; no I/O."""

    def __init__(
        self,
        sql: RegistrySQL,
        settings: Settings,
        telemetry: Telemetry,
        options: RegistryOptions | None = None,
    ) -> None:
        self._sql = sql
        self._settings = settings
        self._telemetry = telemetry
        self.options = options or RegistryOptions.from_settings(settings)
        self._node = settings.node_id
        self._max_bytes = settings.max_value_bytes
        self._state = RegistryState(self._node)
        self._lease: _Lease | None = None
        self._deadline = 0.0  # monotonic: this node's own view of its lease
        self._held: dict[str, _Held] = {}
        # Names whose register failed on the connection, unread since: it may have
        # committed (its reply lost). The heartbeat settles them (see _orphan).
        self._in_doubt: set[str] = set()
        self._joined: dict[tuple[str, str], _Held] = {}
        # Members (of an id join generated) whose join failed so, unread since: the
        # heartbeat removes them (see _judge_lost_join).
        self._members_in_doubt: set[tuple[str, str]] = set()
        # Names whose update_metadata failed so: its metadata and text (see _landed).
        self._metadata_in_doubt: dict[str, tuple[Any, str]] = {}
        # PostgreSQL: the server processes of connections cut under a write. While one
        # still runs, that write may yet land: no read says it did not (see _lost_write),
        # and the heartbeat settles nothing in doubt until each has ended.
        self._cut_backends: set[int] = set()
        self._reclaim_pending = False
        self._recovery = _Recovery()
        # Set while another live instance holds this node id's lease (see the module).
        self._node_conflict: ConfigError | None = None
        self._conflict_retry = 0.0  # monotonic: the next attempt to take the lease
        self._closed = False
        self._ticked = time.monotonic()  # the start of the heartbeat loop's last pass
        self._sweep_from = 0.0  # monotonic: the loop's sweeps wait till then (a stall)
        self._resync_lock = threading.Lock()
        self.lease_losses = 0
        self._init_feed_side()
        # The hot read paths: the state's own bound methods (one dict lookup, no frame).
        # Until load() they refuse (see RegistryState.refusal), as they do after close().
        self.lookup = self._state.lookup  # type: ignore[method-assign]
        self.find = self._state.find  # type: ignore[method-assign]

    # -- reads (cache only) -----------------------------------------------------------

    def lookup(self, name: Any) -> ServiceEntry:
        """The live entry for ``name`` from the in-process cache, or raise ``not_found``."""
        return self._state.lookup(name)

    def find(self, name: Any) -> ServiceEntry | None:
        """As :meth:`lookup`, but ``None`` when nobody holds the name."""
        return self._state.find(name)

    def list(self, prefix: str | None = None, where: Any = None) -> builtins.list[ServiceEntry]:
        """Live entries (cluster and local), by name; ``where``: metadata values (a dict of
        text keys and JSON values, ``validation_error`` otherwise) or a callable.

        ``prefix`` is the names' first characters, as they are: ``"svc."``, not a
        pattern (``"svc.*"`` matches only names that start with those five characters;
        ``watch`` is the one that takes ``"svc.*"``)."""
        if prefix is not None and not isinstance(prefix, str):
            raise ValidationError("prefix must be a string", context={"prefix": shown(prefix)})
        return self._state.list(prefix, check_where(where))

    def groups(self, prefix: str | None = None) -> builtins.list[str]:
        """The groups with a live member, by name; ``prefix`` as :meth:`list`'s."""
        if prefix is not None and not isinstance(prefix, str):
            raise ValidationError("prefix must be a string", context={"prefix": shown(prefix)})
        return self._state.groups(prefix)

    def members(self, group: Any) -> builtins.list[GroupMember]:
        """The live members of ``group``, oldest first."""
        return self._state.members(check_name(group, "a group name"))

    def owns(self, name: Any) -> bool:
        """True while this node holds ``name`` and its own lease is valid (monotonic clock)."""
        name = check_name(name)
        if self._state.local_entry(name) is not None:
            return True
        entry = self._state.cached_entry(name)
        return (
            self._held_live(name) is not None
            and self._lease_valid()
            and entry is not None
            and entry.lease is self._lease
        )

    def nodes(self) -> dict[str, tuple[int, datetime | None]]:
        """Every lease this node knows: node id -> (generation, expiry; None once released)."""
        return {
            node: (gen, datetime.fromtimestamp(exp, UTC) if exp > 0 else None)
            for node, (gen, exp) in self._state.leases().items()
        }

    @property
    def node(self) -> str:
        return self._node

    @property
    def lease_generation(self) -> int | None:
        return None if self._lease is None else self._lease.generation

    def _too_late(self, name: str, late: int, call: str = "register") -> int:
        """A register (or update_metadata) written again: its lease changed meanwhile (a
        recovery, this call's or the heartbeat's), or ran out while its statement waited.
        Three times in a row is a database slower than the lease: ``storage_unavailable``
        (the heartbeat settles what was written)."""
        if late >= 2:
            raise StorageUnavailableError(
                f"{call} of {name!r}: the database answered after this node's lease "
                f"({self.options.ttl_ms} ms) had run out, three times",
                context={"name": name, "ttl_ms": self.options.ttl_ms},
            )
        return late + 1

    def _lease_valid(self) -> bool:
        return self._lease is not None and time.monotonic() < self._deadline

    # -- validation -------------------------------------------------------------------

    def _prepare(self, name: Any, address: Any, metadata: Any, ttl: Any) -> tuple[str, _Held]:
        name = check_new_name(name)
        if address is None:
            raise ValidationError(
                f"the address of {name!r} must not be None", context={"name": name}
            )
        addr, addr_text = check_json(address, f"the address of {name!r}", name, self._max_bytes)
        meta, meta_text = check_json(
            {} if metadata is None else metadata,
            f"the metadata of {name!r}",
            name,
            self._max_bytes,
        )
        return name, _Held(addr, addr_text, meta, meta_text, check_ttl(ttl))

    def _loop_sweep(self, tick: float) -> None:
        """The heartbeat loop's sweep of what expired, after a wait of ``tick`` seconds.

        A wait that lasted much longer means this process stood still (a pause, SIGSTOP,
        starvation): every other node's lease then looks lapsed here, while the renewals
        they made meanwhile are still on their way through the change feed. The sweeps
        wait a moment for it, so as not to report live names expired (lookups still
        enforce every expiry at once; a renewal read late reports them back, see
        ``RegistryState._revived``)."""
        now = time.monotonic()
        # From the start of the last pass: a stall that landed inside it (during its
        # statement, say) counts as well as one in the wait. So does a long wait for the
        # database: it only puts the sweep off by the grace. One grace per stall: a loop
        # that is always late still sweeps, every other pass.
        if now - self._ticked > tick + _STALL_S and not self._sweep_from:
            self._sweep_from = now + _STALL_GRACE_S
        self._ticked = now
        if now >= self._sweep_from:
            self._sweep_from = 0.0
            self._sweep()

    def _sweep(self) -> None:
        """Report what expired. Watchers are told under the cache's lock, as what expired
        is found: a late renewal's ``register`` (see ``RegistryState._revived``), found
        just after, is never delivered before this ``expired``."""
        self._count_expired(self._state.sweep(notify=True))

    # -- statement parameters and results ---------------------------------------------

    def _lease_params(self) -> dict[str, Any]:
        """Parameters of take_lease and renew: ``gen`` is this instance's generation
        (``None`` before its first lease: it takes only a lease nobody holds)."""
        params = {"node": self._node, **self._sql.clock(self.options.ttl_ms)}
        params["gen"] = None if self._lease is None else self._lease.generation
        return params

    # -- one node id, one live instance -----------------------------------------------

    def _lease_wait_s(self) -> float:
        """How often ``load`` looks at a lease it waits for."""
        return min(0.05, self.options.ttl_ms / 10_000)

    def _node_in_use(self, generation: int | None, why: str) -> ConfigError:
        return ConfigError(
            f"node id {self._node!r} is in use by another live Foundation instance ({why});"
            " every process needs its own node_id: set a different FOUNDATION_NODE_ID (or"
            " node_id=...) per process, or leave it unset for a unique host:pid:random id",
            context={"node_id": self._node, "generation": generation},
        )

    def _watch_holder(
        self, holder: tuple[Any, ...] | None, seen: tuple[int, Any] | None
    ) -> tuple[int, Any] | None:
        """``load`` found this node id's lease live: the holder as first seen, or raise
        ``config_error`` once it was renewed (or taken again) since: a live instance."""
        if holder is None:
            return seen  # released meanwhile: the next attempt takes it
        mark = (int(holder[0]), holder[2])
        if seen is None:
            log.warning(
                "node id %r: its lease (generation %s) is live; waiting until it expires"
                " (a previous process of this node id that stopped) or is renewed (another"
                " live instance: refused)",
                self._node,
                mark[0],
            )
            return mark
        if mark != seen:
            raise self._node_in_use(mark[0], "its lease was renewed while this one waited")
        return seen

    def _node_taken(self) -> ConfigError:
        """A recovery found this node id's lease live under another generation: another
        instance holds it. Report every name lost (they hung off this instance's dead
        generation), forget them, and stay in error until that lease lapses."""
        self._conflict_retry = time.monotonic() + self.options.heartbeat_ms / 1000
        if self._node_conflict is None:
            gen = None if self._lease is None else self._lease.generation
            self._node_conflict = self._node_in_use(
                gen, "it took this node id's lease while this instance's had lapsed"
            )
            log.error("registry: %s", self._node_conflict.message)
            lost: dict[str, ServiceEntry | None] = {}
            for name in builtins.list(self._held):
                entry = self._state.cached_entry(name)  # None: it was this instance's
                lost[name] = entry if entry is not None and entry.node != self._node else None
            self._held.clear()
            self._joined.clear()
            self._reclaim_pending = False
            self._report_loss([], lost)
        return self._node_conflict

    def _conflict_wait(self) -> bool:
        """True while in error (another instance holds the node id) and not yet time to
        try the lease again: the heartbeat then skips the attempt."""
        return self._node_conflict is not None and time.monotonic() < self._conflict_retry

    def _took_lease(self, row: tuple[Any, ...] | None, started: float) -> None:
        assert row is not None
        if self._node_conflict is not None:
            log.warning("registry: node id %r: its lease is this instance's again", self._node)
            self._node_conflict = None
        lease = _Lease(self._node, int(row[0]), self._sql.epoch_seconds(row[1]))
        self._state.install_own(lease)
        self._lease = lease
        self._deadline = started + self.options.ttl_ms / 1000

    def _renewed(self, row: tuple[Any, ...] | None, started: float) -> bool:
        if row is None or self._lease is None:
            return False
        expires = self._sql.epoch_seconds(row[0])
        self._publish(self._state.apply_lease(self._node, self._lease.generation, expires))
        self._deadline = started + self.options.ttl_ms / 1000
        return True

    def _recovering(self) -> None:
        """A recovery begins: the lease is lost here. What this node held is reclaimed
        once it has a new one, unless another instance took the node id meanwhile (all
        was reported lost then). Flagged before the lease turns valid, so that no change
        the feed applies in between reads a held name as lost on its own (the reclaim
        reports them with the kept ones, as one loss)."""
        self._lost_locally()
        if self._lease is not None and self._node_conflict is None:
            if not self._reclaim_pending:
                self._recovery = _Recovery()  # else the unfinished one's outcome carries on
            self._recovery.members_done = False  # written again under each new lease
            self._reclaim_pending = True

    def _closed_locally(self) -> None:
        """``close()``, after the release: this node's names are gone, its local ones too
        (reported ``unregister`` with the released names, before the dispatcher stops)."""
        self._lost_locally()
        self._count_expired(self._state.drop_locals())  # told as dropped, under its lock

    def _lost_locally(self) -> None:
        if self._lease is not None:
            # Our own entries vanish from lookups at once, and are reported expired (a
            # time of death, not 0.0, which would read as "not known yet").
            self._lease.expires = min(self._lease.expires, time.time())
        self._deadline = 0.0

    _NOT_RELEASED = (
        "registry: node %s could not release its lease and names on close (%s); other nodes "
        "see them until the lease runs out"
    )

    def _closing(self) -> dict[str, Any] | None:
        """``close()``: the release's parameters, or None if there is nothing to release
        (no lease, or one that lapsed: the database may have given it away already).
        From here on, the release is this node's own change (``RegistryState.closing``)."""
        lease = self._lease
        if lease is None or time.monotonic() >= self._deadline:
            return None
        self._state.closing(lease)
        return {"node": self._node, "gen": lease.generation, **self._sql.clock()}

    def _released(
        self, names: builtins.list[tuple[Any, ...]], members: builtins.list[tuple[Any, ...]]
    ) -> None:
        """``close()`` released ``names`` ((name, revision) rows) and ``members`` ((group,
        member id) rows): reported to this node's watchers as its own ``unregister`` and
        ``leave`` (``local``), queued before the dispatcher delivers what is left and
        stops. The feed may have applied some of it first: it reports them the same way
        (``RegistryState.closing``), and the cache takes each change once."""
        changes: builtins.list[RegistryChange] = []
        for name, revision in names:
            self._held.pop(name, None)
            changes += self._state.apply_entry(None, name, int(revision), "local")
        for group, member_id in members:
            self._joined.pop((group, member_id), None)
            changes += self._state.apply_member(group, member_id, None, "local")
        self._notify(changes)

    def _register_params(
        self, name: str, held: _Held, gen: int
    ) -> tuple[dict[str, Any] | tuple[Any, ...], datetime | None]:
        return self._sql.register_params(
            name, held.address_text, held.metadata_text, self._node, gen, held.ttl_ms
        )

    def _update_params(self, name: str, text: str) -> tuple[_Held, dict[str, Any]]:
        """``update_metadata``'s row check and parameters, under the name's write lock
        (checked again there: another write of the name may have run first)."""
        held = self._held_live(name)
        if held is None or self._lease is None:
            raise self._not_held(name)
        params = {"name": name, "node": self._node, "gen": self._lease.generation}
        return held, {**params, "metadata": text, **self._sql.clock()}

    def _updated_since(self, name: str, lease: _Lease, meta: Any) -> ServiceEntry | None:
        """This node's live entry of ``name`` under ``lease`` holding ``meta``: an
        update_metadata answered after the lease lapsed, once the recovery wrote the name
        again with that metadata (nothing to write a second time)."""
        entry = self._state.live_entry(name)
        if entry is None or entry.node != self._node or entry.lease is not lease:
            return None
        return entry if same_json(entry.metadata, meta) else None

    def _metadata_updated(
        self, name: str, held: _Held, meta: Any, text: str, row: tuple[Any, ...] | None
    ) -> ServiceEntry:
        """Install what ``update_metadata`` wrote (``row`` None: not this node's any more)."""
        if row is None:
            self._held_live(name)  # forgets it if its own TTL has passed
            raise self._not_held(name)
        self._metadata_in_doubt.pop(name, None)
        self._held[name] = held.with_metadata(meta, text)
        entry = self._entry(row)
        self._notify(self._state.apply_entry(entry, name, entry.revision, "local"))
        return entry

    def _fresh_params(
        self, name: str, params: dict[str, Any] | tuple[Any, ...]
    ) -> tuple[Any, ...] | None:
        """``register_new``'s parameters when ``name`` is new to this node's cache (see
        :meth:`RegistrySQL.fresh_params`), else None."""
        if self._state.revision(name):
            return None
        return self._sql.fresh_params(params)

    def _reclaim_params(self, name: str, held: _Held, gen: int) -> dict[str, Any]:
        """``reclaim``'s parameters: ``register``'s, with the registration's own end
        (``held.until``) instead of a TTL counted from now."""
        until = (
            None
            if held.until == INF
            else self._sql.codec.ts(datetime.fromtimestamp(held.until, UTC))
        )
        return {
            **self._sql.clock(),
            "name": name,
            "address": held.address_text,
            "metadata": held.metadata_text,
            "node": self._node,
            "gen": gen,
            "held_gen": held.generation,
            "entry_ttl_ms": held.ttl_ms,
            "entry_until": until,
        }

    def _reclaim_due(self, name: str, held: _Held) -> bool:
        """Whether a recovery writes ``name`` again: not once its own TTL has passed (it is
        registered nowhere then; its ``expired`` is the sweep's, once, as for any name):
        forgotten here, neither kept nor lost."""
        if held.until <= time.time():
            self._held.pop(name, None)
            return False
        return True

    def _owner_lease(self, lease_row: tuple[Any, ...] | None, node: str) -> builtins.list[Any]:
        """The lease of a name's new owner, read after its row (``select_lease``): the feed
        may not have brought it yet (this node back from an outage), and an entry whose
        lease has no known expiry is dead to the cache: its ``register`` was told after
        the loss it caused, and ``lookup`` found nobody meanwhile."""
        if lease_row is None:
            return []
        expires = self._sql.epoch_seconds(lease_row[1])
        return self._state.apply_lease(node, int(lease_row[0]), expires)

    def _entry(self, row: tuple[Any, ...]) -> ServiceEntry:
        return self._state.make_entry(row, self._sql.codec.load_json, self._sql.codec.load_ts)

    def _member(self, row: tuple[Any, ...]) -> GroupMember:
        return self._state.make_member(row, self._sql.codec.load_json, self._sql.codec.load_ts)

    def _registered(
        self,
        name: str,
        held: _Held,
        gen: int,
        row: tuple[Any, ...],
        now: datetime | None,
        started: int,
        *,
        reclaimed: bool = False,
    ) -> ServiceEntry:
        """Install what ``register`` wrote: ``row`` is (epoch, revision, registered_at).

        The entry is built from the values this node sent (already normalised to what
        they read back as; JSONB may order an object's keys otherwise, which equality
        ignores), not decoded again from the row; ``now`` is the SQLite timestamp the
        statement carried (PostgreSQL returns its own ``now()``). ``reclaimed``: written
        again by a recovery (``reclaim``), which kept the registration's own end.
        """
        self._state.releasing(name, done=True)
        epoch, revision, registered_at = row
        registered = now if now is not None else self._sql.codec.load_ts(registered_at)
        ttl = held.ttl_ms
        if ttl is not None and not reclaimed:
            held = dataclasses.replace(held, until=registered.timestamp() + ttl / 1000)
        held = dataclasses.replace(held, generation=gen)
        entry = ServiceEntry(
            name,
            held.address,
            held.metadata,
            self._node,
            registered,
            int(epoch),
            lease=self._state.lease_for(self._node, gen),
            until=held.until,
            revision=int(revision),
        )
        self._held[name] = held
        # Told first: an ``expired`` of the registration this one replaces, if unseen.
        self._notify(self._state.apply_entry(entry, name, entry.revision, "local"))
        self._telemetry_event(
            _REGISTER,
            {"duration": time.perf_counter_ns() - started},
            {"node": self._node, "name": name, "epoch": entry.epoch},
        )
        return entry

    # -- a register whose reply was lost ----------------------------------------------
    #
    # On PostgreSQL a connection cut after the commit and before the reply raises
    # storage_unavailable for a register that did write: the row is this node's, under
    # its current lease, while this node does not hold it (nor can it unregister it, and
    # a retry found it "already registered" by itself). Such a row is an orphan. A retry
    # with the same values adopts it (the register succeeded after all); one with other
    # values releases it and writes anew; left alone, the heartbeat releases it, as the
    # failed call said nothing was written.

    def _orphan(self, name: str, gen: int, owner: tuple[Any, ...] | None) -> bool:
        """Whether ``owner`` (the name's row) is this node's, under lease generation
        ``gen``, and not a registration this node holds."""
        return (
            owner is not None
            and self._under_lease(owner[3], owner[4], gen)
            and self._held_live(name) is None
        )

    def _under_lease(self, node: Any, row_gen: Any, gen: int) -> bool:
        """Whether a row's node and lease generation are this node's ``gen``, and that
        lease is still the one it holds (a recovery since made the row dead)."""
        return (
            node == self._node
            and row_gen is not None
            and int(row_gen) == gen
            and self._lease is not None
            and self._lease.generation == gen
        )

    def _adoptable(self, held: _Held, owner: tuple[Any, ...]) -> bool:
        """Whether the orphan ``owner`` holds the values a register sends now."""
        load = self._sql.codec.load_json
        if not (
            same_json(load(owner[1]), held.address) and same_json(load(owner[2]), held.metadata)
        ):
            return False
        if owner[8] is None or held.ttl_ms is None:
            return owner[8] is None and held.ttl_ms is None
        load_ts = self._sql.codec.load_ts
        ttl_ms = (load_ts(owner[8]) - load_ts(owner[7])).total_seconds() * 1000
        return abs(ttl_ms - held.ttl_ms) < 1  # the same ttl, not only a ttl

    def _judge_lost_reply(
        self, name: str, held: _Held, gen: int, started: int, owner: tuple[Any, ...] | None
    ) -> ServiceEntry | None:
        """A register that failed on the connection, and its row as read after: the entry
        if the write landed with these values; else None (an orphan of other values waits
        in doubt for the heartbeat)."""
        if not self._orphan(name, gen, owner):
            return None
        assert owner is not None
        if self._adoptable(held, owner):
            if not self._lease_valid():
                # Landed under a lease that ran out meanwhile: a dead row, registered
                # nowhere (its epoch is no token). The call raises; a retry writes anew.
                return None
            return self._adopt(name, held, gen, owner, started)
        self._in_doubt.add(name)
        return None

    @staticmethod
    def _cut_backend(exc: FoundationError) -> int | None:
        """The server process a lost write ran in (PostgreSQL), as the error tells it."""
        pid = exc.context.get("backend_pid")
        return pid if type(pid) is int else None

    def _adopt(
        self, name: str, held: _Held, gen: int, owner: tuple[Any, ...], started: int
    ) -> ServiceEntry:
        self._in_doubt.discard(name)
        return self._registered(name, held, gen, (owner[5], owner[6], owner[7]), None, started)

    def _conflict(self, name: str, owner: tuple[Any, ...] | None) -> AlreadyRegisteredError:
        """``already_registered`` for ``name``, whose row (``owner``) a write met held."""
        if owner is None or owner[3] is None:  # released meanwhile: no holder to name
            return self._held_by(name, None)
        return self._held_by(name, self._entry(owner))

    def _held_by(self, name: str, entry: ServiceEntry | None) -> AlreadyRegisteredError:
        context: dict[str, Any] = {"name": name}
        who = ""
        if entry is not None:
            context.update(owner=entry.node, address=entry.address, epoch=entry.epoch)
            who = f" by node {entry.node!r} at {entry.address!r}"
            if entry.node == self._node:  # as a second register of one name in Elixir
                who = (
                    f" by this node at {entry.address!r} (update_metadata changes its "
                    "metadata; unregister it to register it anew)"
                )
        return self._refused_conflict(f"{name!r} is already registered{who}", context)

    def _refused_conflict(self, message: str, context: dict[str, Any]) -> AlreadyRegisteredError:
        self._telemetry_event(_CONFLICT, {"count": 1}, {"node": self._node, **context})
        return AlreadyRegisteredError(message, context=context)

    def _unregister_statement(self, name: str, force: bool) -> tuple[str, dict[str, Any]]:
        """``unregister``'s statement and parameters, or ``not_found`` when this node does
        not hold ``name`` (and ``force`` is false)."""
        if force:
            return self._sql.unregister_force, {"name": name, **self._sql.clock()}
        if self._held_live(name) is None or self._lease is None:
            raise self._not_held(name)
        params = {"name": name, "node": self._node, "gen": self._lease.generation}
        return self._sql.unregister, {**params, **self._sql.clock()}

    def _unregister_in_doubt(self, name: str) -> None:
        """An unregister that failed on the connection, its outcome unread: the name is
        no longer this node's (a recovery would write it again; the feed's tombstone would
        read as the name lost, and is told as this node's own, ``local``), and the
        heartbeat releases its row if it is still there (the unregister the caller asked
        for, done; see ``_settle_doubts``)."""
        if self._held.pop(name, None) is not None:
            self._in_doubt.add(name)
            self._state.releasing(name)

    def _update_in_doubt(self, name: str, meta: Any, text: str) -> None:
        """An update_metadata that failed on the connection, its outcome unread: a lease
        recovery reads the row before it writes the name again (see ``_landed``)."""
        self._metadata_in_doubt[name] = (meta, text)

    def _landed(self, name: str, held: _Held, owner: tuple[Any, ...] | None) -> _Held:
        """What a recovery writes for a name whose update_metadata is in doubt: its row
        (``owner``, read again) says whether that update landed."""
        meta, text = self._metadata_in_doubt.pop(name)
        if owner is None or owner[3] != self._node:
            return held
        if not same_json(self._sql.codec.load_json(owner[2]), meta):
            return held
        self._held[name] = held = held.with_metadata(meta, text)
        return held

    @staticmethod
    def _judge_lost_unregister(owner: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        """An unregister that failed on the connection (its reply lost after the commit,
        maybe), and the name's row read after: released (no owner), what the statement
        would have returned (its revision); else None, and the call raises."""
        if owner is not None and owner[3] is None:
            return (owner[6],)
        return None

    def _judge_lost_update(
        self, meta: Any, gen: int
    ) -> Callable[[tuple[Any, ...] | None], tuple[Any, ...] | None]:
        """For an update_metadata that failed on the connection: the name's row read
        after, if it is this node's under lease ``gen`` with ``meta`` (the update landed:
        the row is what the statement returns); else None, and the call raises."""

        def judge(owner: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
            if owner is None or not self._under_lease(owner[3], owner[4], gen):
                return None
            return owner if same_json(self._sql.codec.load_json(owner[2]), meta) else None

        return judge

    def _unregistered(self, name: str, row: tuple[Any, ...], started: int) -> None:
        self._held.pop(name, None)
        changes = self._state.apply_entry(None, name, int(row[0]), "local")
        self._emit(_UNREGISTER, started, {"name": name})
        self._notify(changes)

    def _not_held(self, name: str, *, force: bool = False) -> FoundationError:
        """``not_found`` for an unregister or update_metadata that changed nothing (on a
        closed instance, which held nothing more, what every other write says)."""
        if self._closed:
            return self._closed_error({"name": name})
        entry = self._state.live_entry(name)
        context: dict[str, Any] = {"name": name, "node": self._node}
        if entry is not None and entry.node != self._node and not force:
            context["owner"] = entry.node
            return NotFoundError(
                f"this node does not hold {name!r} (node {entry.node!r} does)", context=context
            )
        return NotFoundError(f"no service is registered as {name!r}", context=context)

    @staticmethod
    def _closed_error(context: dict[str, Any], what: str | None = None) -> FoundationError:
        """What a write on a closed instance raises (as the database layer's own)."""
        message = "this Foundation instance is closed"
        if what is not None:
            message += f": its registry {what}"
        return StorageUnavailableError(message, context=context)

    @staticmethod
    def _check_flag(value: Any, flag: str) -> bool:
        """``value`` of the option ``flag`` (``force``, ``local``): a bool, not any truthy
        value (``local="false"`` would register in this process only, unseen)."""
        if not isinstance(value, bool):
            raise ValidationError(
                f"{flag} must be True or False, not {type(value).__name__}",
                context={flag: shown(value, 100)},
            )
        return value

    def _held_live(self, name: str) -> _Held | None:
        """What this node holds as ``name``, unless its own TTL has passed (then forgotten:
        it is registered nowhere, and must not be written again after a lease loss)."""
        held = self._held.get(name)
        if held is not None and held.until <= time.time():
            self._held.pop(name, None)
            return None
        return held

    def _check_local_free(self, name: str) -> None:
        local = self._state.local_entry(name)
        if local is not None:
            raise self._refused_conflict(
                f"{name!r} is registered locally in this process",
                {"name": name, "owner": self._node, "local": True},
            )

    def _register_local(self, name: Any, value: Any, metadata: Any, ttl: Any) -> ServiceEntry:
        """A local entry: any object as its address, JSON metadata, an optional TTL.

        One name, one holder as this node sees it: a name this node's cache shows held
        cluster-wide is refused, as a cluster ``register`` of a local name is.
        """
        name = check_new_name(name)
        meta, _ = check_json(
            {} if metadata is None else metadata,
            f"the metadata of {name!r}",
            name,
            self._max_bytes,
        )
        ttl_ms = check_ttl(ttl)
        self._check_local_free(name)
        owner = self._state.live_entry(name)
        if owner is not None:
            raise self._held_by(name, owner)
        now = datetime.now(UTC)
        entry = ServiceEntry(
            name=name,
            address=value,
            metadata=meta,
            node=self._node,
            registered_at=now,
            epoch=0,
            local=True,
            until=INF if ttl_ms is None else now.timestamp() + ttl_ms / 1000,
        )
        if not self._state.add_local(entry, "register"):
            raise self._closed_error({"name": name, "local": True})
        return entry

    def _update_local(self, local: ServiceEntry, metadata: Any) -> ServiceEntry:
        name = local.name
        meta, _ = check_json(
            {} if metadata is None else metadata,
            f"the metadata of {name!r}",
            name,
            self._max_bytes,
        )
        entry = ServiceEntry(
            name,
            local.address,
            meta,
            local.node,
            local.registered_at,
            0,
            local=True,
            until=local.until,
        )
        if not self._state.add_local(entry, "metadata"):
            raise self._closed_error({"name": name, "local": True})
        return entry

    def _metadata_json(self, name: str, metadata: Any) -> tuple[Any, str]:
        """``update_metadata``'s value: JSON, and ``None`` means ``{}`` (as in register)."""
        return check_json(
            {} if metadata is None else metadata,
            f"the metadata of {name!r}",
            name,
            self._max_bytes,
        )

    def _unregister_local(self, name: str) -> bool:
        entry = self._state.remove_local(name)
        if entry is None:
            return False
        # Then the cluster entry the local one hid, if any: what lookup returns now.
        self._notify(
            [RegistryChange(name, "unregister", entry, "local"), *self._state.unshadowed(name)]
        )
        return True

    def _join_params(self, group: str, member_id: str, held: _Held, gen: int) -> dict[str, Any]:
        return {
            "group": group,
            "member": member_id,
            "address": held.address_text,
            "metadata": held.metadata_text,
            "node": self._node,
            "gen": gen,
            **self._sql.clock(),
        }

    def _new_member_id(self, member_id: Any) -> tuple[str, bool]:
        """``join``'s member id, and whether it was generated here (no caller knows it)."""
        if member_id is None:
            return uuid.uuid4().hex, True
        return check_name(member_id, "a member id"), False

    # A join whose reply was lost (the connection cut after its commit) left a member of
    # this node that the node does not know: members() lists it, leave() cannot remove
    # it, and a retry without member_id joins a second one. Its row is read again at
    # once and adopted when it holds this call's values under the current lease. When
    # that read fails too, a member of a generated id (no retry can name it) waits in
    # doubt for the heartbeat, which removes it (the failed call said nothing was
    # written); one of the caller's own id is the caller's: a retry joins it again.

    def _judge_lost_join(
        self,
        key: tuple[str, str],
        held: _Held,
        gen: int,
        row: tuple[Any, ...] | None,
        generated: bool,
    ) -> GroupMember | None:
        """A join that failed on the connection, and its row as read after: the member
        if the write landed with these values."""
        load = self._sql.codec.load_json
        if (
            row is not None
            and self._under_lease(row[4], row[5], gen)
            and same_json(load(row[2]), held.address)
            and same_json(load(row[3]), held.metadata)
        ):
            self._members_in_doubt.discard(key)
            return self._joined_row(row, held)
        if generated and row is not None and row[4] == self._node:
            self._members_in_doubt.add(key)
        return None

    def _join_result(
        self, group: str, member_id: str, held: _Held, row: tuple[Any, ...] | None
    ) -> GroupMember:
        """What ``join``'s statement returned: the member, or None when another live node
        holds that member id."""
        if row is None:
            raise AlreadyRegisteredError(
                f"member {member_id!r} of group {group!r} belongs to another live node",
                context={"group": group, "member_id": member_id},
            )
        return self._joined_row(row, held)

    def _joined_row(self, row: tuple[Any, ...], held: _Held) -> GroupMember:
        member = self._member(row)
        self._members_in_doubt.discard((member.group, member.member_id))
        self._joined[(member.group, member.member_id)] = held
        self._notify(self._state.apply_member(member.group, member.member_id, member, "local"))
        return member

    def _leave_targets(self, group: Any, member_id: Any) -> tuple[str, builtins.list[str]]:
        group = check_name(group, "a group name")
        if member_id is None:  # its members, those a lost leave left in doubt too
            mine = [*self._joined, *self._members_in_doubt]
            ids = builtins.list(dict.fromkeys(m for (g, m) in mine if g == group))
        else:
            ids = [check_name(member_id, "a member id")]
        if self._closed:
            raise self._closed_error({"group": group})
        wanted = self._joined.keys() | self._members_in_doubt
        if not ids or any((group, m) not in wanted for m in ids):
            raise NotFoundError(
                f"this node is not a member of group {group!r}"
                + ("" if member_id is None else f" as {member_id!r}"),
                context={"group": group, "member_id": member_id},
            )
        return group, ids

    def _left(self, group: str, member_id: str) -> None:
        self._joined.pop((group, member_id), None)
        self._members_in_doubt.discard((group, member_id))
        self._notify(self._state.apply_member(group, member_id, None, "local"))

    def _leave_in_doubt(self, exc: FoundationError, group: str, member_id: str) -> None:
        """A leave that failed on the connection (its reply lost after the commit, maybe):
        the member is no longer this node's to rejoin after a lease recovery, and the
        heartbeat removes it (the leave the caller asked for, done); a retry may too.
        One never sent (no connection could be had) left nothing in doubt: still joined."""
        if never_sent(exc):
            return
        pid = self._cut_backend(exc)
        if pid is not None:
            self._cut_backends.add(pid)
        self._joined.pop((group, member_id), None)
        self._members_in_doubt.add((group, member_id))

    def _pending_names(self) -> tuple[builtins.list[str], dict[str, ServiceEntry | None]]:
        """Names held but not (yet) written under the current lease generation (and
        not past their own TTL: those are forgotten), and the held names the cache shows
        removed or owned by another node: lost, never written again (dropped here)."""
        out = []
        gone: dict[str, ServiceEntry | None] = {}
        for name in builtins.list(self._held):
            if self._held_live(name) is None:
                continue
            entry = self._state.cached_entry(name)
            if entry is None or entry.node != self._node:
                if self._held.pop(name, None) is not None:
                    gone[name] = entry
            elif entry.lease is not self._lease:
                out.append(name)
        return out, gone

    def _losses(self, names: builtins.list[str]) -> builtins.list[RegistryChange]:
        """Of ``names`` (another node's changes reached them), those this node believed it
        held while its lease is valid: dropped, reported (telemetry and ``lost``).

        While the lease is not valid, the recovery judges them (``_pending_names``) and
        reports them with the names it kept, as one lease loss. A name this node is
        writing is judged by the writer (``_settle``): the change may be its own.
        """
        if (
            not names
            or not self._held
            or self._closed  # closing releases the names: its own tombstones are no loss
            or self._reclaim_pending
            or not self._lease_valid()
        ):
            return []
        lost: dict[str, ServiceEntry | None] = {}
        for name in names:
            # Past its own TTL it was registered nowhere: expired then, neither kept nor lost.
            if self._writing_now(name) or self._held_live(name) is None:
                continue
            entry = self._state.cached_entry(name)
            if entry is not None and entry.node == self._node:
                continue
            if self._held.pop(name, None) is not None:
                lost[name] = entry
        if not lost:
            return []
        self._telemetry_event(
            _LEASE_LOST,
            {"lost": len(lost), "kept": 0},
            {"node": self._node, "lost": sorted(lost), "kept": []},
        )
        return [RegistryChange(name, "lost", owner, "local") for name, owner in lost.items()]

    def _judge_after_write(self, name: str) -> None:
        """After this node's write of ``name``: lost meanwhile to another node's change?"""
        self._notify(self._losses([name]))

    def _recovered(self, deferred: bool) -> _Recovery | None:
        """After a reclaim pass: the recovery's outcome to tell, once no name was left
        to another call (``deferred``); None while one was."""
        if deferred:
            return None
        self._reclaim_pending = False
        recovery, self._recovery = self._recovery, _Recovery()
        return recovery

    def _take_untold(self, recovery: _Recovery) -> dict[str, ServiceEntry | None]:
        """A recovery pass's losses not told yet, told at the end of the pass that found
        them (a name this node registers again before the recovery ends comes after its
        ``lost``), or of the next one if that pass failed; the recovery's ``lease_lost``
        sums them up at its end."""
        untold, recovery.untold = recovery.untold, {}
        return untold

    def _tell_lost(self, lost: dict[str, ServiceEntry | None]) -> None:
        self._notify([RegistryChange(name, "lost", owner, "local") for name, owner in lost.items()])

    def _report_loss(
        self, kept: builtins.list[str], lost: dict[str, ServiceEntry | None], *, told: bool = False
    ) -> None:
        """Tell a recovery's outcome. A recovery that lost names first waits (at most a
        second, ``_feed_settled``) for a feed pass under way: the feed may have put a new
        owner's row in the cache (the recovery then found nothing to tell) and not yet
        queued its register, and a loss told first would precede the change causing it."""
        self.lease_losses += 1
        self._telemetry_event(
            _LEASE_LOST,
            {"lost": len(lost), "kept": len(kept)},
            {"node": self._node, "lost": sorted(lost), "kept": sorted(kept)},
        )
        if not told:  # (a recovery's were, pass by pass: _tell_lost)
            self._notify(
                [RegistryChange(name, "lost", owner, "local") for name, owner in lost.items()]
            )

    def _telemetry_event(self, event: tuple[str, ...], measurements: Any, metadata: Any) -> None:
        """Telemetry of the registry (the sync face hands its heartbeat's elsewhere)."""
        self._telemetry.execute(event, measurements, metadata)

    def _emit(self, event: tuple[str, ...], started: int, metadata: dict[str, Any]) -> None:
        self._telemetry_event(
            event, {"duration": time.perf_counter_ns() - started}, {"node": self._node, **metadata}
        )

    def _count_expired(self, changes: builtins.list[RegistryChange]) -> None:
        for change in changes:
            # A local entry's end is this process's own business, as its register was.
            entry = change.entry
            if change.kind != "expired" or entry is None:
                continue
            if isinstance(entry, ServiceEntry) and entry.local:
                continue
            meta = {"name": change.name, "node": self._node, "owner": entry.node}
            if isinstance(entry, GroupMember):
                meta["member_id"] = entry.member_id
            self._telemetry_event(_EXPIRED, {"count": 1}, meta)

    def _notify(self, changes: builtins.list[RegistryChange]) -> None:
        """Tell watchers, and telemetry of each ``expired``, whichever path found it (a
        feed, a write's own answer, a recovery): one report, both ways."""
        self._count_expired(changes)
        self._state.notify(changes)

    def _publish(self, changes: builtins.list[RegistryChange]) -> None:
        displaced = self._state.take_displaced()
        if displaced:
            changes = changes + self._losses(displaced)  # after the change that caused them
        self._notify(changes)

    # -- watch ------------------------------------------------------------------------

    def _watch(
        self, pattern: Any, callback: Callable[[RegistryChange], Any], loop: Any
    ) -> RegistryWatch:
        if self._closed:
            # Nothing would ever call it back: say so, as every write does.
            raise self._closed_error({"pattern": shown(pattern)}, "watches nothing")
        if isinstance(pattern, str) and not pattern.strip():
            raise ValidationError(
                "a registry watch pattern must not be empty: a name, a prefix ending in '*'"
                " ('svc.*'), or '*' for every name",
                context={"pattern": pattern},
            )
        return self._state.watch(pattern, callback, loop)
