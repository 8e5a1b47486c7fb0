"""The core of the registry's two faces: :class:`_RegistryCore` holds validation, the
cache and its reads, watches, telemetry and what this node holds. The layers above it
add the lease (:mod:`._lease`), the writes' outcomes (:mod:`._writes`), and local names
and groups (:mod:`._base`); the faces, :class:`~._service.ServiceRegistry` (sync) and
:class:`~._aio.AsyncServiceRegistry`, differ only in how they run statements and in their
heartbeat (a thread, or an asyncio task).
"""

from __future__ import annotations

import builtins
import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from foundation._text import shown
from foundation.database.codec import unreadable_row
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

_EXPIRED = ("foundation", "registry", "expired")
_CONFLICT = ("foundation", "registry", "conflict")
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


class _RegistryCore(RegistryFeedSide):
    """Validation, the cache and its reads, watches, telemetry; no I/O."""

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

    # -- reads (cache only) -------------------------------------------------------------

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

    def _lease_valid(self) -> bool:
        return self._lease is not None and time.monotonic() < self._deadline

    # -- validation ---------------------------------------------------------------------

    def _prepare(
        self, name: Any, address: Any, metadata: Any, ttl: Any, *, group: bool = False
    ) -> tuple[str, _Held]:
        """A name's (or, with ``group``, a group's member's) checked values."""
        name = check_new_name(name, "a group name" if group else "a registry name")
        of = f"a member of group {name!r}" if group else repr(name)
        if address is None:
            raise ValidationError(f"the address of {of} must not be None", context={"name": name})
        addr, addr_text = check_json(address, f"the address of {of}", name, self._max_bytes)
        meta, meta_text = check_json(
            {} if metadata is None else metadata,
            f"the metadata of {of}",
            name,
            self._max_bytes,
        )
        return name, _Held(addr, addr_text, meta, meta_text, check_ttl(ttl))

    # -- expiry -------------------------------------------------------------------------

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

    # -- rows, refusals, telemetry ------------------------------------------------------

    def _entry(self, row: tuple[Any, ...]) -> ServiceEntry:
        codec = self._sql.codec
        try:
            return self._state.make_entry(row, codec.load_json, codec.load_ts)
        except (ValueError, OverflowError) as exc:  # SQLite keeps text written by hand
            raise unreadable_row(f"foundation_registry (name {row[0]!r})", exc) from None

    def _member(self, row: tuple[Any, ...]) -> GroupMember:
        codec = self._sql.codec
        try:
            return self._state.make_member(row, codec.load_json, codec.load_ts)
        except (ValueError, OverflowError) as exc:
            raise unreadable_row(
                f"foundation_registry_members (group {row[0]!r}, member {row[1]!r})", exc
            ) from None

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

    def _metadata_json(self, name: str, metadata: Any) -> tuple[Any, str]:
        """``update_metadata``'s value: JSON, and ``None`` means ``{}`` (as in register)."""
        return check_json(
            {} if metadata is None else metadata,
            f"the metadata of {name!r}",
            name,
            self._max_bytes,
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

    # -- watch --------------------------------------------------------------------------

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
