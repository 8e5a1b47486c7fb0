"""Registry logic shared by the sync and async services: the cache and its watches (the
values it holds and the checks of input are in :mod:`._model`).

No I/O here. The cache is a complete copy of the live tables:

* ``_leases``: node id → :class:`_Lease` (generation, expiry in Unix seconds). One object
  per (node, generation); a renewal updates it in place, so every entry hanging off it
  sees the new expiry at once and a heartbeat costs O(1) whatever the number of names.
* ``_entries``: name → :class:`ServiceEntry`, each holding its lease object.

``lookup`` is one dict lookup and one float compare against ``time.time()``.

Clock skew: the expiry in the cache was computed by the database clock (PostgreSQL's
``now()``; the shared machine clock on SQLite), while lookups compare it with this
node's wall clock. A node whose clock runs ``s`` seconds ahead of the database sees
entries vanish ``s`` seconds early; one running behind keeps serving a dead node's
entries for up to ``s`` seconds longer. Keep nodes NTP-synchronised (skew well under
the heartbeat interval, ``ttl / 3``). Ownership itself never depends on the local
clock: takeovers are decided by the database, and a node counts its own lease from
the monotonic clock at the start of its last successful renewal (never later than the
database's expiry).
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from foundation._frozen import freeze
from foundation.errors import (
    NotFoundError,
    StorageUnavailableError,
)
from foundation.service_registry._dispatch import Dispatcher, RegistryWatchers
from foundation.service_registry._members import _MemberCache
from foundation.service_registry._model import (
    _DEAD,
    INF,
    ChangeKind,
    GroupMember,
    RegistryChange,
    RegistryWatch,
    ServiceEntry,
    _Lease,
    check_name,
    loaded_json,
    relinked,
)

__all__ = ["CLOSED", "LOOP_ENDED", "NOT_OPEN", "RegistryState"]

# Why the registry's reads are refused (see RegistryState.refusal).
NOT_OPEN = (
    "this Foundation instance is not open yet: its registry has no cache to answer from "
    "(async with AsyncFoundation(url), or await fdn.open(), first)"
)
CLOSED = (
    "this Foundation instance is closed: its registry cache is no longer kept up to date "
    "(what it held then may have changed since)"
)
LOOP_ENDED = (
    "the event loop this AsyncFoundation was opened in has ended (its asyncio.run "
    "returned): its registry cache is no longer kept up to date, nor its lease renewed; "
    "open and use an AsyncFoundation within one event loop"
)

log = logging.getLogger("foundation.registry")
_time = time.time


def _due(
    timed: set[str], entries: dict[str, ServiceEntry], now: float
) -> builtins.list[ServiceEntry]:
    """The entries of ``timed`` (names with their own TTL) whose TTL has passed; those and
    the names no longer timed leave the set."""
    due = []
    for name in list(timed):
        entry = entries.get(name)
        if entry is None or entry.until == INF:
            timed.discard(name)
        elif entry.until <= now:
            timed.discard(name)
            due.append(entry)
    return due


def _by_name(change: RegistryChange) -> str:
    return change.name


def _death(entry: ServiceEntry) -> float:
    """When ``entry`` stops being live, as the cache knows it now (0: lease not known)."""
    return min(entry.lease.expires, entry.until)


# -- the cache ----------------------------------------------------------------------------


class RegistryState(_MemberCache):
    """Leases, entries, members, local entries and watchers of one instance."""

    def __init__(self, node: str) -> None:
        self.node = node
        self._lock = threading.RLock()
        self._leases: dict[str, _Lease] = {}
        # The lease generations this instance has held: a row of this node id under
        # another is another instance's (its node id taken while this one stood still).
        self._own_generations: set[int] = set()
        self._entries: dict[str, ServiceEntry] = {}
        self._revisions: dict[str, int] = {}  # name -> last revision seen (tombstones too)
        self._members: dict[str, dict[str, GroupMember]] = {}
        self._local: dict[str, ServiceEntry] = {}
        self._watchers = RegistryWatchers(lambda change: change.name, check_name)
        self._announced: set[tuple[str, int]] = set()  # dead leases already reported
        self._retired: builtins.list[_Lease] = []  # replaced by a later generation (_retire)
        # A node id's lease the table no longer holds, whose deletion is not applied here
        # yet: its next instance numbered from 1 again (see apply_leases). Its own
        # notifications, still to come, apply to it, not to the new one.
        self._superseded: dict[tuple[str, int], _Lease] = {}
        # A lease whose deletion found names or members still on it (see apply_lease):
        # the feed looks at the table (see _feed's _released_holding).
        self.released_holding: _Lease | None = None
        self._timed: set[str] = set()  # names with their own TTL
        self._timed_local: set[str] = set()  # local entries with their own TTL
        self._locals_dropped = False  # close() dropped them: none is kept any more
        # What was reported dead (or was dead when it reached this cache), with its time of
        # death: one "expired" per registration, none for what was dead before this node
        # saw it. A lease that comes back to life (a late renewal) dies later, and counts.
        self._reported: dict[str, tuple[ServiceEntry, float]] = {}
        self._reported_members: dict[tuple[str, str], tuple[GroupMember, float]] = {}
        # A resync reads a snapshot that may predate this node's own latest writes (they
        # run on other threads): what changed after the resync began is left alone.
        self._seq = 0
        self._touched: dict[Any, int] = {}
        self._resyncing = False
        # Members removed, with the revision they had and when: a row read before the
        # removal (a snapshot, a notification's read) must not bring them back. Revisions
        # of a member only grow, across leaves and joins (migration 0019).
        self._members_gone: dict[tuple[str, str], tuple[int, float]] = {}
        # The member the feed is reading after a notification, and whether this node's
        # own join or leave of it was applied meanwhile (see read_member).
        self._member_read: tuple[str, str] | None = None
        self._member_read_overtaken = False
        # Names another node's change (a tombstone, another owner) reached since the last
        # take_displaced(): the service checks them against what it believes it holds.
        self._displaced: set[str] = set()
        # The lease this node's close() is releasing (see closing()).
        self._closing: _Lease | None = None
        self._releasing: set[str] = set()  # see releasing
        # Why reads cannot be answered, or None: until the cache is loaded, and once the
        # instance is closed (nothing keeps it fresh: it would answer with what was true).
        # Why reads raise; a callable tells it when asked (None: they answer after all).
        self.refusal: str | Callable[[], str | None] | None = NOT_OPEN

    # -- reads (hot path) -------------------------------------------------------------

    def lookup(self, name: Any) -> ServiceEntry:
        """The live entry for ``name`` from the in-process cache (no database), or raise
        ``not_found``. A local entry of this process shadows a cluster entry of the same
        name; an entry whose lease or own TTL has run out is not live. A name that is not
        valid (not a string, empty, too long) raises ``validation_error``."""
        # A local entry shadows a cluster entry of the same name on this node; ``_local``
        # is almost always empty, so the common case costs one truth test more.
        if self.refusal is not None:
            self._refuse()
        try:
            entry = (self._local.get(name) if self._local else None) or self._entries.get(name)
        except TypeError:
            entry = None
        if entry is not None:
            now = _time()
            if entry.lease.expires > now and entry.until > now:
                return entry
        return self._miss(name, raise_=True)  # type: ignore[return-value]

    def find(self, name: Any) -> ServiceEntry | None:
        """As :meth:`lookup`, but ``None`` when nobody holds the name (an invalid name
        still raises ``validation_error``)."""
        if self.refusal is not None:
            self._refuse()
        try:
            entry = (self._local.get(name) if self._local else None) or self._entries.get(name)
        except TypeError:
            entry = None
        if entry is not None:
            now = _time()
            if entry.lease.expires > now and entry.until > now:
                return entry
        return self._miss(name, raise_=False)

    def _refuse(self) -> None:
        refusal = self.refusal
        if callable(refusal):
            refusal = refusal()
        if refusal is not None:
            raise StorageUnavailableError(refusal, context={"reads": "refused"})

    def _miss(self, name: Any, *, raise_: bool) -> ServiceEntry | None:
        # The slow path: an Enum (the cache is keyed by the name's text), a local entry
        # past its own TTL that shadowed a live cluster entry, or no live entry at all.
        name = check_name(name)
        entry = self.local_entry(name) or self.live_entry(name)
        if entry is not None:
            return entry
        if raise_:
            raise NotFoundError(f"no service is registered as {name!r}", context={"name": name})
        return None

    def live_entry(self, name: str) -> ServiceEntry | None:
        entry = self._entries.get(name)
        return entry if entry is not None and entry.alive else None

    def local_entry(self, name: str) -> ServiceEntry | None:
        """This process's live local entry for ``name`` (a local TTL may have passed)."""
        entry = self._local.get(name)
        return entry if entry is not None and entry.until > _time() else None

    def list(
        self, prefix: str | None, where: Callable[[Any], bool] | None
    ) -> builtins.list[ServiceEntry]:
        if self.refusal is not None:
            self._refuse()
        now = _time()
        local = dict(self._local)
        live_local = [e for e in local.values() if e.until > now]
        shadowed = {e.name for e in live_local}  # a local entry hides a cluster one here
        found = [
            e
            for e in [*self._entries.values(), *live_local]
            if e.lease.expires > now
            and e.until > now
            and (not shadowed or e.local or e.name not in shadowed)
            and (prefix is None or e.name.startswith(prefix))
            and (where is None or where(e.metadata))
        ]
        found.sort(key=lambda e: e.name)
        return found

    def leases(self) -> dict[str, tuple[int, float]]:
        return {n: (lease.generation, lease.expires) for n, lease in self._leases.items()}

    # -- leases -----------------------------------------------------------------------

    def lease_for(self, node: str, generation: int) -> _Lease:
        """The cache's object for (node, generation); a dead one for an older generation
        (unless the node's lease was released: its next instance may number from 1 again)."""
        current = self._leases.get(node)
        if current is not None and current.generation == generation:
            return current
        superseded = self._superseded.get((node, generation))
        if superseded is not None:
            return superseded
        if (
            current is None
            or generation > current.generation
            or (current.released and node != self.node)
        ):
            # Expiry unknown until the lease row (or its notification) arrives: dead till then.
            fresh = _Lease(node, generation, 0.0)
            self._leases[node] = fresh
            if (
                current is not None
                and node != self.node  # (this node's: install_own)
                and (node, current.generation) not in self._superseded  # (its own end)
            ):
                self._retire(current)
            return fresh
        return _DEAD

    def live_generation(self, node: str) -> int | None:
        """The generation cached for another node's lease, unless released or not known."""
        current = self._leases.get(node)
        if node == self.node or current is None or current.released or current.expires <= 0.0:
            return None
        return current.generation

    def names_on(self, lease: _Lease) -> builtins.list[str]:
        return [name for name, entry in self._entries.items() if entry.lease is lease]

    def members_on(self, lease: _Lease) -> bool:
        return any(m.lease is lease for table in self._members.values() for m in table.values())

    def generation_behind(self, node: str, generation: int) -> bool:
        """Whether a row of ``node`` read now hangs off a generation below the one cached:
        an old instance's (dead), or the next instance's of a node id whose lease was
        released and whose deletion is not applied yet (the table tells which)."""
        current = self._leases.get(node)
        return (
            node != self.node
            and current is not None
            and not current.released
            and generation < current.generation
            and (node, generation) not in self._superseded
        )

    def _retire(self, lease: _Lease) -> None:
        """``lease`` has a later generation of its node id: it is dead, from now at the
        latest, and the next sweep reports what still hangs off it (it is no longer among
        the leases the sweep reads: a node id restarted before this node saw its lease
        lapse would leave its names and members unreported for good)."""
        if lease.expires <= 0.0:
            return  # never known live here (or released): nothing on it was ever told
        with self._lock:  # (make_entry's callers may not hold it: sweep() swaps the list)
            lease.expires = min(lease.expires, _time())
            self._retired.append(lease)

    def apply_lease(
        self, node: str, generation: int, expires: float
    ) -> builtins.list[RegistryChange]:
        """A lease's expiry as the database has it (0.0: released or deleted)."""
        with self._lock:
            lease = self.lease_for(node, generation)
            if lease is self._closing:
                return []  # its end is the closing node's to report (see closing())
            if lease is not _DEAD and (expires > lease.expires or expires == 0.0):
                was, lease.expires = lease.expires, expires
                lease.released = expires == 0.0
                if lease.released:
                    self._superseded.pop((node, generation), None)
                    # A node's close releases its names and members before its lease (one
                    # transaction, notified in that order): one still on it here was read
                    # after that, and is another instance's of the node id under the same
                    # generation number (a feed that fell behind a restart or several).
                    if self.names_on(lease) or self.members_on(lease):
                        self.released_holding = lease
                now = _time()
                if expires > now:
                    self._announced.discard((node, generation))
                    if was <= now:  # (0.0: a released lease, its number the next instance's)
                        return self._revived(lease, now)
            return []

    def apply_leases(
        self, lease_rows: Iterable[tuple[str, int, float]]
    ) -> builtins.list[RegistryChange]:
        """Each lease's expiry as the database has it (none ends here: see
        :meth:`replace_leases`); what a lease that came back brought back. Each row is its
        node id's only one (the table's key): a generation below the one cached means
        that one is gone, released, and a new instance numbered from 1 again. The old one
        stays live until its deletion is applied (its names, released with it, are told
        ``unregister``); the new one is the node id's from now."""
        changes: builtins.list[RegistryChange] = []
        with self._lock:
            for node, gen, expires in lease_rows:
                current = self._leases.get(node)
                if (
                    current is not None
                    and node != self.node
                    and gen < current.generation
                    and not current.released
                    and (node, gen) not in self._superseded
                ):
                    self._superseded[(node, current.generation)] = current
                    current.released = True  # (lease_for: the new generation replaces it)
                changes += self.apply_lease(node, gen, expires)
        return changes

    def _revived(self, lease: _Lease, now: float) -> builtins.list[RegistryChange]:
        """``register`` and ``join`` again for what was reported dead (or arrived dead) on
        ``lease``, which a renewal read late has brought back: this process stood still
        past the lease's expiry, or the renewal's notification came after it. A watcher
        ends on what lookups give; the lease's real end is reported expired later."""
        changes = []
        for name, (entry, _) in list(self._reported.items()):
            if entry.lease is lease and self._entries.get(name) is entry and _death(entry) > now:
                del self._reported[name]
                changes.append(
                    RegistryChange(name, "register", entry, self._source_of(lease.node, lease))
                )
        for key, (member, _) in list(self._reported_members.items()):
            if member.lease is lease and self._members.get(key[0], {}).get(key[1]) is member:
                del self._reported_members[key]
                changes.append(
                    RegistryChange(key[0], "join", member, self._source_of(lease.node, lease))
                )
        return changes

    def install_own(self, lease: _Lease) -> None:
        with self._lock:
            self._own_generations.add(lease.generation)
            current = self._leases.get(lease.node)
            if current is not None and current is not lease:
                # Dead from now (a time of death: its entries are reported expired, once,
                # whoever finds them first; 0.0 would read as "not known").
                current.expires = min(current.expires, _time())
            self._leases[lease.node] = lease

    def closing(self, lease: _Lease) -> None:
        """This node's ``close()`` is about to release ``lease``, its names and members.

        The release is this node's own change, whoever applies it first: ``close()`` itself
        (from the rows it released) or the change feed (the notification or poll that read
        them). So a removal of an entry or member on that lease is reported ``local``, and
        the lease's deletion, read by the feed, leaves it live here until ``close()`` ends
        it: otherwise the entries would be dead when their release is applied, and nothing
        reported. (A ``force`` unregister by another node in that instant cannot be told
        apart from the release; it is reported as the release.)
        """
        with self._lock:
            self._closing = lease

    def _removal_source(self, old: ServiceEntry | GroupMember | None, source: str) -> Any:
        if old is None:
            return source
        if isinstance(old, ServiceEntry) and old.name in self._releasing:
            self._releasing.discard(old.name)
            return "local"  # this node's own unregister, its reply lost (see releasing)
        return "local" if old.lease is self._closing else source

    def releasing(self, name: str, *, done: bool = False) -> None:
        """This node unregistered ``name``, its reply lost: the removal, when the feed
        brings it, is this node's own (``local``). ``done``: no more (registered again)."""
        if done and name not in self._releasing:
            return  # the usual case (every register): no lock
        with self._lock:
            if done:
                self._releasing.discard(name)
            else:
                self._releasing.add(name)

    # -- entries ----------------------------------------------------------------------

    def make_entry(self, row: tuple[Any, ...], load_json: Any, load_ts: Any) -> ServiceEntry:
        name, address, metadata, node, gen, epoch, revision, registered_at, expires_at = row
        return ServiceEntry(
            name=name,
            address=freeze(loaded_json(load_json, address, name, "foundation_registry")),
            metadata=freeze(loaded_json(load_json, metadata, name, "foundation_registry")),
            node=node,
            registered_at=load_ts(registered_at),
            epoch=int(epoch),
            lease=self.lease_for(node, int(gen)),
            until=INF if expires_at is None else load_ts(expires_at).timestamp(),
            revision=int(revision),
        )

    def revision(self, name: str) -> int:
        return self._revisions.get(name, 0)

    def apply_entry(
        self,
        entry: ServiceEntry | None,
        name: str,
        revision: int,
        source: str,
        relink: bool = False,
    ) -> builtins.list[RegistryChange]:
        """Install a row (None: a tombstone) if newer than what the cache holds (or, with
        ``relink``, the same revision: see :meth:`_relinked`)."""
        with self._lock:
            if revision <= self._revisions.get(name, 0) and not relink:
                return []
            self._revisions[name] = revision
            self._seq += 1
            if self._resyncing:
                self._touched[name] = self._seq
            if source == "remote" and (entry is None or entry.node != self.node):
                self._displaced.add(name)
            old = self._entries.get(name)
            now = _time()
            old_live = old is not None and old.lease.expires > now and old.until > now
            src: Any = source if entry is not None else self._removal_source(old, source)
            if entry is not None and self._own(entry.node, entry.lease):
                # This instance's own row: a recovery's rewrite, which the feed may read
                # before the recovery applied it (its lease is installed by then). Another
                # generation's is another instance's (its node id taken while this one
                # stood still).
                src = "local"
            # An old registration that died unseen by the sweep (replaced within a tick).
            changes = [] if old is None or old_live else self._expired_entry(old)
            if entry is None:
                self._entries.pop(name, None)
                self._reported.pop(name, None)
                if old_live:
                    changes.append(RegistryChange(name, "unregister", old, src))
                return changes
            self._entries[name] = entry
            if entry.until != INF:
                self._timed.add(name)
            death = _death(entry)
            if 0.0 < death <= now or entry.lease is _DEAD:
                if old is not None and old.epoch == entry.epoch and old.node == entry.node:
                    # The same registration, changed (update_metadata) as it ended: its end
                    # is told once, as an expiry.
                    changes += self._expired_entry(old) if old_live else []
                    self._reported[name] = (entry, death)
                    return changes
                if old_live:
                    changes.append(RegistryChange(name, "unregister", old, src))
                if entry.node == self.node and entry.lease is not _DEAD and entry.until <= now:
                    # This node's own registration, whose own TTL ran out on the way here
                    # (shorter than a round trip): its register returned it, so both are
                    # told, once, whichever path brings the row first.
                    changes.append(RegistryChange(name, "register", entry, "local"))
                    return changes + self._expired_entry(entry)
                # Dead before it reached this cache (a lapsed lease or TTL, an old lease
                # generation): nobody could look it up here, so no register, no expiry.
                self._reported[name] = (entry, death)
                return changes
            self._reported.pop(name, None)
            if (
                old_live
                and old is not None
                and old.epoch == entry.epoch
                and old.node == entry.node
                and old.lease is entry.lease
            ):
                if old.metadata != entry.metadata or old.address != entry.address:
                    changes.append(RegistryChange(name, "metadata", entry, src))
                return changes
            changes.append(RegistryChange(name, "register", entry, src))
            return changes

    def _own(self, node: str, lease: _Lease) -> bool:
        """Whether a registration or member is this instance's own (dead on arrival
        here, of an earlier generation: the node's, as far as anyone can tell)."""
        return node == self.node and (lease is _DEAD or lease.generation in self._own_generations)

    def _source_of(self, node: str, lease: _Lease) -> Any:
        """An expiry's source: ``local`` for this instance's own registration or member
        (its own TTL or lease ran out), ``remote`` for another's, whoever noticed it."""
        return "local" if self._own(node, lease) else "remote"

    def _expired_entry(self, entry: ServiceEntry) -> builtins.list[RegistryChange]:
        """``[expired]`` the first time this registration is seen dead, else ``[]``."""
        death = _death(entry)
        if death <= 0.0:  # its lease's expiry is not known yet (or it was released)
            return []
        seen = self._reported.get(entry.name)
        if seen is not None and seen[0] is entry and death <= seen[1]:
            return []
        self._reported[entry.name] = (entry, death)
        return [
            RegistryChange(entry.name, "expired", entry, self._source_of(entry.node, entry.lease))
        ]

    def replace_leases(
        self, lease_rows: Iterable[tuple[str, int, float]]
    ) -> builtins.list[RegistryChange]:
        """A resync, first half: the leases as the table has them (a missing one is dead).
        Returns what leases that came back brought back (see :meth:`_revived`)."""
        with self._lock:
            rows = list(lease_rows)
            changes = self.apply_leases(rows)
            seen = {node: gen for node, gen, _ in rows}
            for node, lease in self._leases.items():
                if node not in seen and node != self.node:
                    lease.expires = 0.0  # released or deleted
                    lease.released = True
            for (node, gen), lease in list(self._superseded.items()):
                if seen.get(node) != gen:  # gone from the table: released
                    lease.expires = 0.0
                    del self._superseded[(node, gen)]
        return changes

    def mark(self) -> int:
        """Call before reading a snapshot; pass the result to :meth:`replace_entries`.

        One resync at a time (the caller serialises them).
        """
        with self._lock:
            self._touched.clear()
            self._resyncing = True  # record local changes from here until replace_entries
            return self._seq

    def replace_entries(
        self,
        entries: Iterable[ServiceEntry],
        members: Iterable[GroupMember],
        mark: int,
        writing: Callable[[str, int], bool] | None = None,
    ) -> builtins.list[RegistryChange]:
        """A resync, second half: entries and members become exactly the tables.

        ``writing(name, revision)``: True if this node is writing ``name``; the snapshot's
        row of it (which may hold that write, not yet in the cache) is left to the writer.

        The changes are what the snapshot shows, name by name: in name order (then the
        members, by their ``joined_at``: see ``replace_members``), each name's own changes
        in their order. A
        snapshot does not say in which order different names changed (the rows come in
        table order, which differs between the backends and moves with every update).
        """
        with self._lock:
            changes: builtins.list[RegistryChange] = []
            fresh = {entry.name: entry for entry in entries}
            for name, entry in fresh.items():
                relink = relinked(self._entries.get(name), entry)
                if entry.revision > self._revisions.get(name, 0) or relink:
                    if writing is not None and writing(name, entry.revision):
                        continue
                    changes += self.apply_entry(entry, name, entry.revision, "remote", relink)
            touched = self._touched
            for name in [n for n in self._entries if n not in fresh and touched.get(n, 0) <= mark]:
                revision = self._revisions.get(name, 0) + 1
                if writing is not None and writing(name, revision):
                    continue  # (its writer reads the row, a tombstone, and its revision)
                changes += self.apply_entry(None, name, revision, "remote")
            changes.sort(key=_by_name)  # stable: each name's changes keep their order
            changes += self.replace_members(members, mark)
            self._resyncing = False
            self._touched.clear()
            return changes

    def cached_entry(self, name: str) -> ServiceEntry | None:
        return self._entries.get(name)

    def holder_elsewhere(self, name: str) -> ServiceEntry | None:
        """The live cached entry of ``name`` unless it is this instance's own: the new
        owner a ``lost`` names (None: nobody, as ``lookup`` says, e.g. a taker since dead)."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or self._own(entry.node, entry.lease):
                return None
            now = _time()
            return entry if entry.lease.expires > now and entry.until > now else None

    def take_displaced(self) -> builtins.list[str]:
        """The names another node removed or registered since the last call."""
        with self._lock:
            if not self._displaced:
                return []
            names = builtins.list(self._displaced)
            self._displaced.clear()
            return names

    # -- local entries ----------------------------------------------------------------

    def add_local(self, entry: ServiceEntry, kind: ChangeKind) -> bool:
        """Keep a local entry and tell watchers (``register`` or ``metadata``), as one
        against ``drop_locals``; False (nothing kept or told) once that ran (closed)."""
        with self._lock:
            if self._locals_dropped:
                return False
            self._local[entry.name] = entry
            if entry.until != INF:
                self._timed_local.add(entry.name)
            self.notify([RegistryChange(entry.name, kind, entry, "local")])
            return True

    def drop_locals(self) -> builtins.list[RegistryChange]:
        """``close()``: every local entry goes, told ``unregister`` as a released cluster
        name is (``expired`` if its own TTL ran out unswept); none is kept after (see
        ``add_local``). Returns what watchers were told."""
        with self._lock:
            self._locals_dropped = True
            dropped, self._local = self._local, {}
            self._timed_local.clear()
            now = _time()
            changes = [
                RegistryChange(e.name, "unregister" if e.until > now else "expired", e, "local")
                for e in dropped.values()
            ]
            self.notify(changes)
            return changes

    def remove_local(self, name: str) -> ServiceEntry | None:
        with self._lock:
            return self._local.pop(name, None)

    def unshadowed(self, name: str) -> builtins.list[RegistryChange]:
        """After this node's local entry for ``name`` went: the cluster entry it hid, if
        one is live, as a ``register`` (the watcher then ends on what ``lookup`` says)."""
        entry = self.live_entry(name)
        if entry is None or self.local_entry(name) is not None:
            return []
        return [RegistryChange(name, "register", entry, self._source_of(entry.node, entry.lease))]

    def _shadowed(self, change: RegistryChange) -> bool:
        """A cluster entry's change hidden here by a live local entry of the same name
        (lookups show the local one; the cluster entry is reported when it goes)."""
        return (
            isinstance(change.entry, ServiceEntry)
            and not change.entry.local
            and change.kind != "lost"
            and self.local_entry(change.name) is not None
        )

    # -- expiry -----------------------------------------------------------------------

    def sweep(self, notify: bool = False) -> builtins.list[RegistryChange]:
        """Report entries whose lease (or own TTL) ran out since the last sweep (to the
        watchers too, under the lock, with ``notify``).

        Cheap when nothing died: it looks at the leases (one per node) and at the few
        entries that carry their own TTL; it scans the entries only when a lease died.
        """
        now = _time()
        changes: builtins.list[RegistryChange] = []
        with self._lock:
            retired, self._retired = self._retired, []  # (under the lock, as _retire)
            dead = {
                (lease.node, lease.generation)
                for lease in (*self._leases.values(), *retired)
                if lease.expires <= now
            }
            newly = dead - self._announced
            self._announced = dead
            candidates: builtins.list[ServiceEntry] = []
            if newly:
                candidates = [
                    e for e in self._entries.values() if (e.lease.node, e.lease.generation) in newly
                ]
            candidates += _due(self._timed, self._entries, now)
            for entry in candidates:
                changes += self._expired_entry(entry)
            if newly:
                for table in self._members.values():
                    for member in table.values():
                        if (member.lease.node, member.lease.generation) in newly:
                            changes += self._expired_member(member)
            for local in _due(self._timed_local, self._local, now):
                del self._local[local.name]
                changes.append(RegistryChange(local.name, "expired", local, "local"))
                changes += self.unshadowed(local.name)
            if notify:
                self.notify(changes)
        return changes

    def lease_ended(self, lease: _Lease) -> builtins.list[RegistryChange]:
        """This node's ``lease`` is known dead for good (another instance holds the node
        id): what still hangs off it is reported expired now (once), before the node tells
        its names lost. The sweep would not: a later generation replaced it in the cache,
        and the sweep reads the current ones."""
        with self._lock:
            lease.expires = min(lease.expires, _time())
            changes = [
                change
                for entry in list(self._entries.values())
                if entry.lease is lease
                for change in self._expired_entry(entry)
            ]
            for table in self._members.values():
                for member in list(table.values()):
                    if member.lease is lease:
                        changes += self._expired_member(member)
        return changes

    # -- watches ----------------------------------------------------------------------

    def watch(
        self,
        pattern: Any,
        callback: Callable[[RegistryChange], Any],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> RegistryWatch:
        return self._watchers.add(pattern, callback, loop)

    def set_dispatcher(self, dispatcher: Dispatcher) -> None:
        """Who calls the watchers back (see :mod:`._dispatch`)."""
        self._watchers.dispatcher = dispatcher

    def watch_active(self, watch: RegistryWatch) -> bool:
        return self._watchers.active(watch)

    def notify(self, changes: builtins.list[RegistryChange]) -> None:
        if self._local and changes:
            changes = [c for c in changes if not self._shadowed(c)]
        if changes:
            self._watchers.notify(changes)
