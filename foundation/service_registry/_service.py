"""The registry's sync face: :class:`ServiceRegistry` (the heartbeat is a thread).

The lease protocol: :mod:`._lease`; what both faces share: :mod:`._base` and the layers
under it.
"""

from __future__ import annotations

import builtins
import functools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from foundation.database.errors import never_sent
from foundation.database.sync import SyncDatabase
from foundation.errors import FoundationError, StorageUnavailableError
from foundation.service_registry._base import RegistryOptions, _RegistryBase
from foundation.service_registry._core import _Held, _Recovery, log
from foundation.service_registry._dispatch import ThreadDispatcher
from foundation.service_registry._lease import (
    _CLOSE_WAIT_S,
    _HEARTBEAT_FAILED,
    _TAKE_ATTEMPTS,
)
from foundation.service_registry._model import (
    GroupMember,
    RegistryChange,
    RegistryWatch,
    ServiceEntry,
    _Lease,
    check_name,
)
from foundation.service_registry._state import CLOSED
from foundation.service_registry._store import RegistrySQL
from foundation.service_registry._writes import NEW_ROW
from foundation.settings import Settings
from foundation.telemetry import Telemetry

__all__ = ["ServiceRegistry"]

_T = TypeVar("_T")  # what a judge of a re-read row makes of it (see _lost_write)


class ServiceRegistry(_RegistryBase):
    """Cluster-wide names with leases, backed by ``foundation_registry``."""

    def __init__(
        self,
        db: SyncDatabase,
        sql: RegistrySQL,
        settings: Settings,
        telemetry: Telemetry,
        options: RegistryOptions | None = None,
    ) -> None:
        super().__init__(sql, settings, telemetry, options)
        self._db = db
        self._recover_lock = threading.RLock()
        # The heartbeat's removal of members in doubt, and a join of one of them: one at a
        # time (a join landing between its check and its leave was undone).
        self._members_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dispatcher = ThreadDispatcher(
            f"foundation-registry-watch-{self._node}", self._state.watch_active
        )
        self._state.set_dispatcher(self._dispatcher)
        self._outbox: queue.SimpleQueue[Any] | None = None

    def _telemetry_event(self, event: tuple[str, ...], measurements: Any, metadata: Any) -> None:
        """On the heartbeat thread, telemetry is handed to a thread of its own: a handler
        as slow as the TTL (an alert sent over HTTP) let the lease lapse, and the node
        lost its names; and the expiries its lapse reported ran the handler again."""
        if threading.current_thread() is not self._thread:
            self._telemetry.execute(event, measurements, metadata)
            return
        if self._outbox is None:
            self._outbox = queue.SimpleQueue()
            threading.Thread(
                target=self._send_telemetry,
                args=(self._outbox,),
                name=f"foundation-registry-telemetry-{self._node}",
                daemon=True,
            ).start()
        self._outbox.put((event, measurements, metadata))

    def _send_telemetry(self, outbox: queue.SimpleQueue[Any]) -> None:
        while (item := outbox.get()) is not None:
            self._telemetry.execute(*item)  # a handler's failure: Telemetry's to handle

    def load(self) -> None:
        """Take this instance's lease, fill the cache, start the heartbeat thread.

        ``config_error`` if another live instance holds this node id's lease (see
        :mod:`._lease`); a lease left by a stopped process is waited for (at most its TTL).
        """
        self._db.execute(self._sql.prune_members, self._sql.clock())
        self._take_first_lease()
        self.resync(self._db)
        self._state.refusal = None  # loaded: reads answer
        self._thread = threading.Thread(
            target=self._run, name=f"foundation-registry-{self._node}", daemon=True
        )
        self._thread.start()

    def _take_first_lease(self) -> None:
        seen: tuple[int, Any] | None = None
        while True:
            if self._take_lease():
                return
            holder = self._db.fetchone(self._sql.select_lease, {"node": self._node})
            seen = self._watch_holder(holder, seen)
            time.sleep(self._lease_wait_s())

    # -- heartbeat --------------------------------------------------------------------

    def _run(self) -> None:
        beat = self.options.heartbeat_ms / 1000
        tick = min(beat, 0.1)
        next_beat = time.monotonic() + beat
        while not self._stop.wait(tick):
            try:
                self._loop_sweep(tick)
                if not self._lease_valid():
                    if self._conflict_wait():
                        continue
                    self._recover()
                    next_beat = time.monotonic() + beat
                    continue
                if self._reclaim_pending:  # a name left to its writer: another pass
                    with self._recover_lock:
                        if self._reclaim_pending and self._lease_valid():
                            self._reclaim()
                # Renewed meanwhile all the same: a writer slower than the TTL must not
                # make the new lease lapse too.
                if time.monotonic() >= next_beat:
                    started = time.monotonic()
                    if self.heartbeat():
                        next_beat = started + beat
            except FoundationError as exc:  # retried on the next tick
                self._telemetry_event(
                    _HEARTBEAT_FAILED, {"count": 1}, {"node": self._node, "error": exc.code}
                )
                log.warning("registry heartbeat failed (%s); retrying", exc)
            except Exception:
                log.exception("registry heartbeat failed")

    def heartbeat(self) -> bool:
        """Renew the lease now (one statement); on a lost lease, recover. True if renewed."""
        renewed = self._renew()
        if renewed and (self._in_doubt or self._members_in_doubt):
            try:
                self._settle_doubts()  # out of the recovery's lock: writes take it inside
            except FoundationError as exc:  # the lease is renewed; the next beat tries again
                log.warning("registry: could not settle a register in doubt (%s)", exc)
        return renewed

    def _renew(self) -> bool:
        with self._recover_lock:
            if self._lease is None or self._closed:
                return False
            started = time.monotonic()
            if started >= self._deadline:
                # What lapsed is reported expired first, as the heartbeat's own loop does.
                self._sweep()
                self._recover()
                return False
            row = self._db.fetchone(self._sql.renew, self._lease_params())
            if self._renewed(row, started):
                return True
            self._lost_locally()  # the database says the lease is gone
            self._recover()
            return False

    def _recover(self, own: str | None = None) -> None:
        """Take a new lease if this one lapsed, then write again what this node held
        (``own``: a name whose write lock the caller holds)."""
        with self._recover_lock:
            if self._closed:
                return
            if not self._lease_valid():
                self._recovering()
                if not self._take_lease():
                    self._feed_settled(1.0)  # see _report_loss
                    raise self._node_taken()  # another live instance has this node id
            if self._reclaim_pending:
                self._reclaim(own)

    def _take_lease(self) -> bool:
        """Take this node's lease; False when another live instance holds it. Taken again
        (twice at most) when the statement waited longer than the TTL (for a connection
        after an outage, for SQLite's lock): one recovery, not a second one at once."""
        for _ in range(_TAKE_ATTEMPTS):
            started = time.monotonic()
            row = self._db.fetchone(self._sql.take_lease, self._lease_params())
            if row is None:
                return False
            self._took_lease(row, started)
            if self._lease_valid():
                break
        return True

    def _reclaim(self, own: str | None = None) -> None:
        """Write again what this node held under its new lease; report what is gone.

        Each name under its write lock, taken without waiting: a name another call is
        writing (an ``unregister`` just after a pause, say) is left to it, as that call
        may be waiting for this recovery; the call writes it again itself first
        (``_ensure_lease``) or releases it, and the recovery ends on a later pass.
        ``own``: the name whose lock the calling thread holds."""
        assert self._lease is not None
        recovery = self._recovery
        pending, gone = self._pending_names()
        recovery.lose(gone)
        deferred = False
        try:
            for name in pending:
                lock = None
                if name != own:
                    lock = self._begin_write(name)
                    if not lock.acquire(blocking=False):
                        self._settle(name, lock, False)
                        deferred = True
                        continue
                try:
                    self._reclaim_name(name, recovery)
                finally:
                    if lock is not None:
                        self._settle(name, lock, True)
            if not recovery.members_done:
                with self._members_lock:  # a leave goes first, or after (see leave)
                    for (group, member_id), held in list(self._joined.items()):
                        gen = self._lease.generation
                        params = self._join_params(group, member_id, held, gen)
                        row = self._db.fetchone(self._sql.join, params)
                        if row is None:
                            self._joined.pop((group, member_id), None)
                        else:
                            self._joined_row(row, held)
                recovery.members_done = True
        finally:
            if untold := self._take_untold(recovery):
                self._feed_settled(1.0)  # see _report_loss
                self._tell_lost(untold)
        done = self._recovered(deferred)
        if done is not None:
            self._report_loss(done.kept, done.lost, told=True)

    def _reclaim_name(self, name: str, recovery: _Recovery) -> None:
        assert self._lease is not None
        held = self._held.get(name)
        if held is None:
            return  # the feed found it lost meanwhile, or it was unregistered
        if not self._reclaim_due(name, held):
            return  # its own TTL passed meanwhile: expired, not lost
        if name in self._metadata_in_doubt:
            owner = self._db.fetchone(self._sql.select_entry, {"name": name})
            held = self._landed(name, held, owner)
        started = time.perf_counter_ns()
        gen = self._lease.generation
        row = self._db.fetchone(self._sql.reclaim, self._reclaim_params(name, held, gen))
        if row is not None:
            self._registered(name, held, gen, row, None, started, reclaimed=True)
            recovery.keep(name)
            return
        self._held.pop(name, None)
        recovery.lose({name: None})  # before the reads below, which may fail: told all the same
        owner = self._db.fetchone(self._sql.select_entry, {"name": name})
        entry = None
        if owner is not None and owner[3] is not None:
            lease = self._db.fetchone(self._sql.select_lease, {"node": owner[3]})
            self._notify(self._owner_lease(lease, owner[3]))
            entry = self._entry(owner)
            # Its register (and our registration's expiry) before the loss it caused.
            self._notify(self._state.apply_entry(entry, name, entry.revision, "remote"))
        recovery.lose({name: entry})

    def _ensure_lease(self, own: str | None = None) -> _Lease:
        """A live lease, every held name written under it (``own``: see ``_recover``)."""
        if not self._lease_valid() or self._reclaim_pending:
            if not self._lease_valid():
                # What lapsed is reported expired first, as _renew does: a name the
                # recovery finds lost is then never told expired after its loss.
                self._sweep()
            self._recover(own)
        assert self._lease is not None
        return self._lease

    # -- writes -----------------------------------------------------------------------

    def register(
        self,
        name: Any,
        address: Any,
        metadata: Any = None,
        ttl: Any = None,
        *,
        local: bool = False,
    ) -> ServiceEntry:
        """Hold ``name`` cluster-wide, or raise ``already_registered`` naming the owner
        (this node as well: a name is registered once, whatever the values, as in the
        original; ``update_metadata`` changes the metadata).

        A name whose owner's lease expired is taken over in one atomic statement; the
        returned entry's ``epoch`` is the new fencing token. ``ttl`` (ms or timedelta)
        limits this registration further: past it the name is registered nowhere
        (``update_metadata`` and ``unregister`` raise ``not_found``). ``metadata`` is
        JSON (``None``: ``{}``).

        ``local=True`` maps the name to any Python object (``address``) in this process
        only, never written to the database; ``ttl`` applies as well. On one node a name
        is either local or cluster-wide: each refuses the other (``already_registered``).
        Another node cannot see a local entry and may register the same name
        cluster-wide; on this node the local entry then shadows it (``lookup``, ``find``
        and ``list`` show the local one, ``unregister`` removes it, and the cluster entry
        shows again).
        """
        if self._check_flag(local, "local"):
            return self._register_local(name, address, metadata, ttl)
        started = time.perf_counter_ns()
        name, held = self._prepare(name, address, metadata, ttl)
        self._check_local_free(name)
        lock = self._begin_write(name)
        locked = False
        late = 0
        try:
            locked = lock.acquire()
            while True:
                lease = self._ensure_lease(name)
                gen = lease.generation
                params, now = self._register_params(name, held, gen)
                fresh = self._fresh_params(name, params)
                try:
                    if fresh is not None and self._db.execute(self._sql.register_new, fresh):
                        row: tuple[Any, ...] | None = NEW_ROW
                    else:
                        row = self._db.fetchone(self._sql.register, params)
                except StorageUnavailableError as exc:
                    adopted = self._lost_write(
                        exc,
                        name,
                        functools.partial(self._judge_lost_reply, name, held, gen, started),
                        lambda: self._in_doubt.add(name),  # the heartbeat settles it
                    )
                    if adopted is None:
                        raise
                    return adopted
                if row is None:
                    owner = self._db.fetchone(self._sql.select_entry, {"name": name})
                    if not self._orphan(name, gen, owner):
                        raise self._conflict(name, owner)
                    assert owner is not None
                    if self._adoptable(held, owner) and self._lease_valid():
                        return self._adopt(name, held, gen, owner, started)
                    if self._adoptable(held, owner):  # its lease ran out: dead, as below
                        late = self._too_late(name, late)
                        continue
                    self._release_orphan(name, gen)
                    continue  # written anew with the values of this call
                if self._lease is lease and self._lease_valid():
                    return self._registered(name, held, lease.generation, row, now, started)
                # The lease changed while we wrote (a recovery ran), or ran out while the
                # statement waited (a stalled server): an entry dead as it is returned,
                # its epoch replaced a moment later. Write again under a live one.
                late = self._too_late(name, late)
        finally:
            self._settle(name, lock, locked)

    def _release_orphan(self, name: str, gen: int) -> None:
        """Release a row of this node's lease that it does not hold (the name's write
        lock is held)."""
        params = {"name": name, "node": self._node, "gen": gen, **self._sql.clock()}
        row = self._db.fetchone(self._sql.unregister, params)
        if row is not None:
            self._unregistered(name, row, time.perf_counter_ns())

    def _settle_doubts(self) -> None:
        """Release the orphans of lost replies that no retry adopted (a heartbeat's):
        names, and members of generated ids."""
        if not self._ended_backends():
            return  # a write in doubt may still land: the next beat looks again
        for name in builtins.list(self._in_doubt):
            lock = self._begin_write(name)
            locked = False
            try:
                locked = lock.acquire()
                lease = self._lease
                if lease is not None and self._held_live(name) is None:
                    owner = self._db.fetchone(self._sql.select_entry, {"name": name})
                    if self._orphan(name, lease.generation, owner):
                        self._release_orphan(name, lease.generation)
                self._in_doubt.discard(name)
            finally:
                self._settle(name, lock, locked)
        with self._members_lock:  # a join of one of them waits, or goes first
            for group, member_id in builtins.list(self._members_in_doubt):
                if (group, member_id) in self._members_in_doubt:  # not joined meanwhile
                    self._db.fetchone(self._sql.leave, self._leave_params(group, member_id))
                    self._left(group, member_id)

    def _new_write_lock(self) -> threading.Lock:
        return threading.Lock()

    def _settle(self, name: str, lock: threading.Lock, locked: bool) -> None:
        """After a write: read ``name`` if the feed saw a change of it meanwhile (another
        node's, after this one's own), then let the name's next writer in."""
        try:
            revision = self._end_write(name, locked=locked)
            if revision:
                try:
                    row = self._db.fetchone(self._sql.select_entry, {"name": name})
                except FoundationError:
                    self._request_resync()  # the feed reads it, a little later
                else:
                    self._apply_name_row(name, revision, row)
            self._judge_after_write(name)
        finally:
            if locked:
                lock.release()
            self._count_out()

    def unregister(self, name: Any, force: bool = False) -> None:
        """Release ``name`` (only its owner may, unless ``force=True``; ``force`` is a
        bool). A local entry of this process goes first. ``not_found`` when no live
        registration exists (or, without ``force``, when another node holds it)."""
        started = time.perf_counter_ns()
        name = check_name(name)
        force = self._check_flag(force, "force")
        if self._unregister_local(name):
            return
        lock = self._begin_write(name)  # its own notification then costs the listener no read
        locked = False
        try:
            locked = lock.acquire()
            if self._held_live(name) is not None:  # with force too: this node's name
                # A lapsed lease is recovered first: the name under the new one (or lost),
                # not left for a recovery to write again once released.
                self._ensure_lease(name)
            elif force and self._state.live_entry(name) is None:
                # Another node's name this node's cache has not seen yet (registered a
                # moment ago): its row first, so that this node's watchers see what its
                # unregister removes, as for a name the cache held.
                self._seen_first(name, self._db.fetchone(self._sql.select_entry, {"name": name}))
            sql, params = self._unregister_statement(name, force)
            try:
                row = self._db.fetchone(sql, params)
            except StorageUnavailableError as exc:
                row = self._lost_write(
                    exc,
                    name,
                    self._judge_lost_unregister,
                    lambda: self._unregister_in_doubt(name),
                )
                if row is None:
                    raise
            if row is None:
                if not force:
                    self._held.pop(name, None)
                raise self._not_held(name, force=force)
            self._unregistered(name, row, started)
        finally:
            self._settle(name, lock, locked)

    def _lost_write(
        self,
        exc: FoundationError,
        name: str,
        judge: Callable[[tuple[Any, ...] | None], _T | None],
        unread: Callable[[], None],
    ) -> _T | None:
        """After a register, unregister or update_metadata failed on the connection (its
        reply lost after the commit, maybe): ``judge`` of the name's row, read again;
        None, after ``unread()``, when that read fails too or cannot be trusted yet; None
        at once when the statement was never sent (no connection could be had)."""
        if never_sent(exc):
            return None
        try:
            owner = self._reread(exc, self._sql.select_entry, {"name": name})
        except FoundationError:
            unread()
            return None
        return judge(owner)

    def _reread(self, exc: FoundationError, sql: str, params: dict[str, Any]) -> Any:
        """The row a lost write touched, read again; raises while the write may still land.

        A cut connection's statement can go on running on the server (waiting for a
        lock, say) and commit after a read made at once: that read is trusted only when
        the server process it ran in is idle or gone (PostgreSQL tells; SQLite loses no
        replies)."""
        pid = self._cut_backend(exc)
        if pid is not None:
            self._cut_backends.add(pid)
            self._ended_backends()
            if pid in self._cut_backends:
                raise exc
        return self._db.fetchone(sql, params)

    def _ended_backends(self) -> bool:
        """Forget the cut connections' server processes that are idle or gone; True when
        none is left running."""
        for pid in builtins.list(self._cut_backends):
            if self._db.fetchone(self._sql.backend_busy, {"pid": pid}) is None:
                self._cut_backends.discard(pid)
        return not self._cut_backends

    def update_metadata(self, name: Any, metadata: Any) -> ServiceEntry:
        """Replace the metadata (JSON; ``None``: ``{}``) of a live name this node holds;
        every node sees the change. ``not_found`` past the entry's own TTL."""
        name = check_name(name)
        local = self._state.local_entry(name)
        if local is not None:
            return self._update_local(local, metadata)
        meta, text = self._metadata_json(name, metadata)
        if self._held_live(name) is None or self._lease is None:
            raise self._not_held(name)
        lock = self._begin_write(name)
        locked = False
        try:
            locked = lock.acquire()
            late = 0
            while True:
                # Not an entry of a lapsed lease, dead as returned: recovered first.
                lease = self._ensure_lease(name)
                if late and (entry := self._updated_since(name, lease, meta)) is not None:
                    return entry
                held, params = self._update_params(name, text)
                try:
                    row = self._db.fetchone(self._sql.update_metadata, params)
                except StorageUnavailableError as exc:
                    row = self._lost_write(
                        exc,
                        name,
                        self._judge_lost_update(meta, params["gen"]),
                        lambda: self._update_in_doubt(name, meta, text),
                    )
                    if row is None:
                        raise
                entry = self._metadata_updated(name, held, meta, text, row)
                if self._lease is lease and self._lease_valid():
                    return entry
                # The lease lapsed while the statement ran: the recovery (the next turn)
                # writes the name again with this metadata.
                late = self._too_late(name, late, "update_metadata")
        finally:
            self._settle(name, lock, locked)

    def join(
        self, group: Any, address: Any, metadata: Any = None, *, member_id: Any = None
    ) -> GroupMember:
        """Add this node as a member of ``group`` (many members per group)."""
        group, held = self._prepare(group, address, metadata, None, group=True)
        member_id, generated = self._new_member_id(member_id)
        with self._counted({"group": group}):
            lease = self._ensure_lease()
            if (group, member_id) not in self._members_in_doubt:
                return self._join_once(group, member_id, held, lease.generation, generated)
            with self._members_lock:  # see _settle_doubts
                self._members_in_doubt.discard((group, member_id))  # joined, not left
                return self._join_once(group, member_id, held, lease.generation, generated)

    def _join_once(
        self, group: str, member_id: str, held: _Held, gen: int, generated: bool
    ) -> GroupMember:
        try:
            row = self._db.fetchone(self._sql.join, self._join_params(group, member_id, held, gen))
        except StorageUnavailableError as exc:
            member = self._lost_join(exc, (group, member_id), held, gen, generated)
            if member is None:
                raise
            return member
        return self._join_result(group, member_id, held, row)

    def _lost_join(
        self, exc: FoundationError, key: tuple[str, str], held: _Held, gen: int, generated: bool
    ) -> GroupMember | None:
        """After a join failed on the connection: the member if it landed (see
        ``_judge_lost_join``)."""
        try:
            row = self._reread(exc, self._sql.select_member, {"group": key[0], "member": key[1]})
        except FoundationError:
            if generated:
                self._members_in_doubt.add(key)
            return None
        return self._judge_lost_join(key, held, gen, row, generated)

    def leave(self, group: Any, member_id: Any = None) -> None:
        """Remove this node's member (or all its members, without ``member_id``) of ``group``."""
        group, ids = self._leave_targets(group, member_id)
        with self._counted({"group": group}):
            for mid in ids:
                with self._members_lock:  # not written again by a recovery once left
                    try:
                        self._db.fetchone(self._sql.leave, self._leave_params(group, mid))
                    except StorageUnavailableError as exc:
                        self._leave_in_doubt(exc, group, mid)
                        raise
                    self._left(group, mid)

    def watch(
        self, name_or_prefix: Any, callback: Callable[[RegistryChange], Any]
    ) -> RegistryWatch:
        """Call ``callback(change)`` for changes of a name, a prefix (``"svc.*"``) or all
        names (``"*"``); an empty pattern is refused (``validation_error``).

        ``change.kind``, for a name: ``register``, ``unregister``, ``metadata``,
        ``expired`` (its owner's lease or its own TTL ran out; once per registration,
        never for what was already dead when this node loaded its cache) and ``lost``
        (this node's lease lapsed and another node took the name). For a group (``name``
        is the group, ``entry`` a :class:`GroupMember`): ``join``, ``leave`` and
        ``expired`` (the member's node died). ``lost``: a name this node held and no
        longer does, because another node took it after this node's lease lapsed or
        removed it (``unregister(force=True)``); ``entry`` is the new owner's, or None.

        Callbacks run on this registry's own watch thread (``foundation-registry-watch-
        <node>``), one at a time, in the order the cache took the changes (each name's
        in their order; across names, the order they happened, except after a resync,
        which reports what it finds name by name): never on the heartbeat or change-feed
        thread, so a slow callback delays the callbacks after it, never the lease
        renewals or the cache. A callback that raises is logged. Delivery is
        asynchronous: a change this thread made (``register``) reaches the callback
        shortly after the call returns. A cancelled watch receives nothing more.
        ``close()`` delivers what is queued for at most a second; no callback starts
        after it returns (one still running then runs to its end).

        What this node does is reported in full (``source="local"``), one change at a
        time in revision order (this node's writes of one name, from any thread, run one
        at a time): its ``close()`` included (an ``unregister`` or ``leave`` for each name
        and member it releases, delivered before ``close()`` returns), and the
        ``expired`` of its own registrations (another node sees that expiry as
        ``remote``). Another node's
        changes (``source="remote"``) are reported as this node's cache catches up:
        SQLite once per poll, PostgreSQL once per notification read, and each read takes
        the name's *current* row. Changes that land between two reads are coalesced into
        one change to the latest state: three ``update_metadata`` calls may arrive as one
        ``metadata`` with the last value; a name registered and unregistered in between
        may not be reported at all; an unregister followed by a new registration may
        arrive as one ``register`` with a higher ``epoch``. A watcher always ends on the
        latest state (the cache's own, what ``lookup`` returns), never on an older one: a
        local entry hides the changes of a cluster entry of the same name on this node,
        and when the local entry goes, a ``register`` of the live cluster entry follows.
        Every intermediate change of another node needs a change log in the database
        (not there yet).
        """
        return self._watch(name_or_prefix, callback, None)

    def _release(self, params: dict[str, Any]) -> None:
        try:
            with self._db.transaction() as tx:
                names = tx.fetchall(self._sql.release_entries, params)
                members = tx.fetchall(self._sql.release_members, params)
                tx.execute(self._sql.release_lease, params)
        except FoundationError as exc:
            log.warning(self._NOT_RELEASED, self._node, exc)
            return
        self._released(names, members)  # committed: reported as this node's own

    def close(self) -> None:
        """Stop the heartbeat and release the lease and names (others see them go at once)."""
        with self._writes_lock:
            if self._closed:
                return
            self._closed = True  # no write begins from here (see _count_in)
        try:
            self._stop.set()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join(timeout=5)
            if not self._writes_done(_CLOSE_WAIT_S):
                log.warning("registry: closing with writes still running after %s s", _CLOSE_WAIT_S)
            params = self._closing()
            if params is not None:
                if self._writing_here() and self._sql.backend == "postgresql":
                    # Inside a write of this thread (close() from a signal handler): its
                    # connection may be in the middle of that write. Another one releases.
                    # (SQLite: the same connection; it may refuse while the interrupted
                    # statement is unfinished, which the warning then says.)
                    releaser = threading.Thread(target=self._release, args=(params,))
                    releaser.start()
                    releaser.join()
                else:
                    self._release(params)
            self._closed_locally()
            self._feed_settled(1.0)  # what the feed applied of the release is queued
            self._dispatcher.close(timeout=1.0)  # delivers what is queued (or gives up)
            if self._outbox is not None:
                self._outbox.put(None)  # the heartbeat's telemetry queued so far, then ends
        finally:  # also when interrupted (Ctrl-C): a second close() returns at once
            self._state.refusal = CLOSED  # nothing keeps the cache fresh
