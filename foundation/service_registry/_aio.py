"""The registry's async face: :class:`AsyncServiceRegistry` (the heartbeat is an asyncio
task). The lease protocol: :mod:`._lease`; what both faces share: :mod:`._base` and the
layers under it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import time
from collections.abc import Callable
from typing import Any, TypeVar

from foundation._text import shown
from foundation.database.aio import AsyncDatabase, finish
from foundation.database.errors import never_sent
from foundation.errors import FoundationError, StorageUnavailableError, ValidationError
from foundation.service_registry._base import RegistryOptions, _RegistryBase
from foundation.service_registry._core import _Held, _Recovery, log
from foundation.service_registry._dispatch import LoopDispatcher
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
from foundation.service_registry._state import CLOSED, LOOP_ENDED
from foundation.service_registry._store import RegistrySQL
from foundation.service_registry._writes import NEW_ROW
from foundation.settings import Settings
from foundation.telemetry import Telemetry

__all__ = ["AsyncServiceRegistry"]

_T = TypeVar("_T")  # what a judge of a re-read row makes of it (see _lost_write)


class AsyncServiceRegistry(_RegistryBase):
    """The awaitable twin of :class:`ServiceRegistry`; ``lookup``/``find``/``list``/
    ``members`` stay plain calls (the cache), and the heartbeat is an asyncio task."""

    def __init__(
        self,
        db: AsyncDatabase,
        sql: RegistrySQL,
        settings: Settings,
        telemetry: Telemetry,
        options: RegistryOptions | None = None,
    ) -> None:
        super().__init__(sql, settings, telemetry, options)
        self._db = db
        self._recover_lock: asyncio.Lock | None = None
        self._members_guard: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._dispatcher = LoopDispatcher(
            f"foundation-registry-watch-{self._node}", self._state.watch_active
        )
        self._state.set_dispatcher(self._dispatcher)

    def _lock(self) -> asyncio.Lock:
        if self._recover_lock is None:
            self._recover_lock = asyncio.Lock()
        return self._recover_lock

    def _members_lock(self) -> asyncio.Lock:
        """As ``ServiceRegistry._members_lock`` (made on the loop that first needs it)."""
        if self._members_guard is None:
            self._members_guard = asyncio.Lock()
        return self._members_guard

    async def load(self) -> None:
        """As :meth:`ServiceRegistry.load` (``config_error`` if another live instance
        holds this node id's lease)."""
        await self._db.execute(self._sql.prune_members, self._sql.clock())
        await self._take_first_lease()
        mark = self._state.mark()
        self._apply_snapshot(
            await self._db.fetchall(self._sql.select_leases),
            await self._db.fetchall(self._sql.select_entries),
            await self._db.fetchall(self._sql.select_members),
            mark,
        )
        self._state.refusal = None  # loaded: reads answer
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name=f"foundation-registry-{self._node}"
        )

    async def _take_first_lease(self) -> None:
        seen: tuple[int, Any] | None = None
        while True:
            if await finish(self._take_lease()):
                return
            holder = await self._db.fetchone(self._sql.select_lease, {"node": self._node})
            seen = self._watch_holder(holder, seen)
            await asyncio.sleep(self._lease_wait_s())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await self._beat()
        except asyncio.CancelledError:
            if not self._closed:
                # Not close(): the loop ends (its asyncio.run returns, cancelling every
                # task). Once it has, nothing renews the lease or keeps the cache fresh.
                self._state.refusal = lambda: LOOP_ENDED if loop.is_closed() else None
            raise

    async def _beat(self) -> None:
        beat = self.options.heartbeat_ms / 1000
        tick = min(beat, 0.1)
        next_beat = time.monotonic() + beat
        while not self._closed:
            await asyncio.sleep(tick)
            try:
                self._loop_sweep(tick)
                if not self._lease_valid():
                    if self._conflict_wait():
                        continue
                    await self._recover()
                    next_beat = time.monotonic() + beat
                    continue
                if self._reclaim_pending:  # see ServiceRegistry._run
                    async with self._lock():
                        if self._reclaim_pending and self._lease_valid():
                            await self._reclaim()
                if time.monotonic() >= next_beat:
                    started = time.monotonic()
                    if await self.heartbeat():
                        next_beat = started + beat
            except FoundationError as exc:
                self._telemetry.execute(
                    _HEARTBEAT_FAILED, {"count": 1}, {"node": self._node, "error": exc.code}
                )
                log.warning("registry heartbeat failed (%s); retrying", exc)
            except Exception:
                log.exception("registry heartbeat failed")

    async def heartbeat(self) -> bool:
        """Renew the lease now (one statement); on a lost lease, recover. True if renewed.

        As :meth:`ServiceRegistry.heartbeat`, awaited; the heartbeat task calls it every
        ``registry_heartbeat_ms``. ``config_error`` if another live instance took this
        node id's lease.
        """
        renewed = await self._renew()
        if renewed and (self._in_doubt or self._members_in_doubt):
            try:
                await self._settle_doubts()  # out of the recovery's lock: writes take it inside
            except FoundationError as exc:  # the lease is renewed; the next beat tries again
                log.warning("registry: could not settle a register in doubt (%s)", exc)
        return renewed

    async def _renew(self) -> bool:
        async with self._lock():
            if self._lease is None or self._closed:
                return False
            started = time.monotonic()
            if started >= self._deadline:
                # What lapsed is reported expired first, as the heartbeat's own loop does.
                self._sweep()
                await self._recover_locked()
                return False
            row = await self._db.fetchone(self._sql.renew, self._lease_params())
            if self._renewed(row, started):
                return True
            self._lost_locally()  # the database says the lease is gone
            await self._recover_locked()
            return False

    async def _recover(self, own: str | None = None) -> None:
        async with self._lock():
            await self._recover_locked(own)

    async def _recover_locked(self, own: str | None = None) -> None:
        """As :meth:`ServiceRegistry._recover`."""
        if self._closed:
            return
        if not self._lease_valid():
            self._recovering()
            if not await finish(self._take_lease()):
                await asyncio.to_thread(self._feed_settled, 1.0)  # see _report_loss
                raise self._node_taken()  # another live instance has this node id
        if self._reclaim_pending:
            await self._reclaim(own)

    async def _reclaim_one(self, name: str, held: Any) -> bool:
        # Whole, as _take_lease: True when the name is written again under the new lease.
        assert self._lease is not None
        started = time.perf_counter_ns()
        gen = self._lease.generation
        row = await self._db.fetchone(self._sql.reclaim, self._reclaim_params(name, held, gen))
        if row is None:
            return False
        self._registered(name, held, gen, row, None, started, reclaimed=True)
        return True

    async def _rejoin(self, group: str, member_id: str, held: Any) -> None:
        # Whole, as _take_lease.
        assert self._lease is not None
        params = self._join_params(group, member_id, held, self._lease.generation)
        row = await self._db.fetchone(self._sql.join, params)
        if row is None:
            self._joined.pop((group, member_id), None)
        else:
            self._joined_row(row, held)

    async def _take_lease(self) -> bool:
        """Take this node's lease, whole even if the caller is cancelled meanwhile (a
        lease taken and not known here would pass for another instance's); False when
        another live instance holds it."""
        for _ in range(_TAKE_ATTEMPTS):  # see the sync face's _take_lease
            started = time.monotonic()
            row = await self._db.fetchone(self._sql.take_lease, self._lease_params())
            if row is None:
                return False
            self._took_lease(row, started)
            if self._lease_valid():
                break
        return True

    async def _reclaim(self, own: str | None = None) -> None:
        """As :meth:`ServiceRegistry._reclaim`: a name another call is writing is left
        to it."""
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
                    if not _free(lock):
                        await self._settle(name, lock, False)
                        deferred = True
                        continue
                    await lock.acquire()  # free: taken at once, without a wait
                try:
                    await self._reclaim_name(name, recovery)
                finally:
                    if lock is not None:
                        await self._settle(name, lock, True)
            if not recovery.members_done:
                async with self._members_lock():  # see ServiceRegistry._reclaim
                    for (group, member_id), held in list(self._joined.items()):
                        await finish(self._rejoin(group, member_id, held))
                recovery.members_done = True
        finally:
            if untold := self._take_untold(recovery):
                try:  # see _report_loss; in a thread, the loop is not held meanwhile
                    await asyncio.to_thread(self._feed_settled, 1.0)
                finally:
                    self._tell_lost(untold)  # cancelled meanwhile too: told
        done = self._recovered(deferred)
        if done is not None:
            self._report_loss(done.kept, done.lost, told=True)

    async def _reclaim_name(self, name: str, recovery: _Recovery) -> None:
        held = self._held.get(name)
        if held is None:
            return  # the feed found it lost meanwhile, or it was unregistered
        if not self._reclaim_due(name, held):
            return  # its own TTL passed meanwhile: expired, not lost
        if name in self._metadata_in_doubt:
            owner = await self._db.fetchone(self._sql.select_entry, {"name": name})
            held = self._landed(name, held, owner)
        if await finish(self._reclaim_one(name, held)):
            recovery.keep(name)
            return
        self._held.pop(name, None)
        recovery.lose({name: None})  # before the reads below, which may fail: told all the same
        owner = await self._db.fetchone(self._sql.select_entry, {"name": name})
        entry = None
        if owner is not None and owner[3] is not None:
            lease = await self._db.fetchone(self._sql.select_lease, {"node": owner[3]})
            self._notify(self._owner_lease(lease, owner[3]))
            entry = self._entry(owner)
            # Its register (and our registration's expiry) before the loss it caused.
            self._notify(self._state.apply_entry(entry, name, entry.revision, "remote"))
        recovery.lose({name: entry})

    async def _ensure_lease(self, own: str | None = None) -> _Lease:
        if not self._lease_valid() or self._reclaim_pending:
            if not self._lease_valid():
                self._sweep()  # what lapsed is reported expired first (see the sync face)
            await self._recover(own)
        assert self._lease is not None
        return self._lease

    async def register(
        self,
        name: Any,
        address: Any,
        metadata: Any = None,
        ttl: Any = None,
        *,
        local: bool = False,
    ) -> ServiceEntry:
        """Hold ``name`` cluster-wide, or raise ``already_registered`` naming the owner.

        As :meth:`ServiceRegistry.register`, awaited (``local=True`` too, which touches no
        database). A task cancelled once the write has begun lets it finish, and this
        node's record of it, then raises ``CancelledError``: the name is then held as any
        other; one still waiting for another write of the same name writes nothing (see
        "Cancelled calls" in docs/registry.md). ``find(name)`` tells which.
        """
        if self._check_flag(local, "local"):
            return self._register_local(name, address, metadata, ttl)
        started = time.perf_counter_ns()
        name, held = self._prepare(name, address, metadata, ttl)
        self._check_local_free(name)
        lock = self._begin_write(name)
        locked = False
        try:
            locked = await lock.acquire()
            late = 0
            while True:
                lease = await self._ensure_lease(name)
                entry = await finish(self._register_once(name, held, lease, started))
                if entry is not None:
                    return entry
                late = self._too_late(name, late)
        finally:
            await self._settle(name, lock, locked)

    async def _register_once(
        self, name: str, held: Any, lease: _Lease, started: int
    ) -> ServiceEntry | None:
        """The write and what this node keeps of it: run whole, even if the caller is
        cancelled meanwhile (else a row this node wrote would be one it cannot remove).
        None: the lease changed while we wrote (a recovery ran): write again under it."""
        gen = lease.generation
        params, now = self._register_params(name, held, gen)
        fresh = self._fresh_params(name, params)
        try:
            if fresh is not None and await self._db.execute(self._sql.register_new, fresh):
                row: tuple[Any, ...] | None = NEW_ROW
            else:
                row = await self._db.fetchone(self._sql.register, params)
        except StorageUnavailableError as exc:
            adopted = await self._lost_write(
                exc,
                name,
                functools.partial(self._judge_lost_reply, name, held, gen, started),
                lambda: self._in_doubt.add(name),
            )
            if adopted is None:
                raise
            return adopted
        if row is None:
            owner = await self._db.fetchone(self._sql.select_entry, {"name": name})
            if not self._orphan(name, gen, owner):
                raise self._conflict(name, owner)
            assert owner is not None
            if self._adoptable(held, owner):
                # Under a lease that ran out meanwhile: dead, written again (as below).
                return self._adopt(name, held, gen, owner, started) if self._lease_valid() else None
            await self._release_orphan(name, gen)
            return None  # written anew with the values of this call
        if self._lease is not lease or not self._lease_valid():
            return None  # see ServiceRegistry.register
        return self._registered(name, held, gen, row, now, started)

    async def _release_orphan(self, name: str, gen: int) -> None:
        """As :meth:`ServiceRegistry._release_orphan`."""
        params = {"name": name, "node": self._node, "gen": gen, **self._sql.clock()}
        row = await self._db.fetchone(self._sql.unregister, params)
        if row is not None:
            self._unregistered(name, row, time.perf_counter_ns())

    async def _settle_doubts(self) -> None:
        """As :meth:`ServiceRegistry._settle_doubts`."""
        if not await self._ended_backends():
            return
        for name in builtins.list(self._in_doubt):
            lock = self._begin_write(name)
            locked = False
            try:
                locked = await lock.acquire()
                lease = self._lease
                if lease is not None and self._held_live(name) is None:
                    owner = await self._db.fetchone(self._sql.select_entry, {"name": name})
                    if self._orphan(name, lease.generation, owner):
                        await finish(self._release_orphan(name, lease.generation))
                self._in_doubt.discard(name)
            finally:
                await self._settle(name, lock, locked)
        async with self._members_lock():  # as ServiceRegistry._settle_doubts
            for group, member_id in builtins.list(self._members_in_doubt):
                if (group, member_id) in self._members_in_doubt:
                    params = self._leave_params(group, member_id)
                    await finish(self._db.fetchone(self._sql.leave, params))
                    self._left(group, member_id)

    def _new_write_lock(self) -> asyncio.Lock:
        return asyncio.Lock()

    async def _settle(self, name: str, lock: asyncio.Lock, locked: bool) -> None:
        """As :meth:`ServiceRegistry._settle`."""
        try:
            revision = self._end_write(name, locked=locked)
            if revision:
                try:
                    row = await self._db.fetchone(self._sql.select_entry, {"name": name})
                except FoundationError:
                    self._request_resync()
                else:
                    self._apply_name_row(name, revision, row)
            self._judge_after_write(name)
        finally:
            if locked:
                lock.release()
            self._count_out()

    async def unregister(self, name: Any, force: bool = False) -> None:
        """Release ``name`` (only its owner may, unless ``force=True``); ``not_found`` when
        no live registration exists. As :meth:`ServiceRegistry.unregister`, awaited;
        cancelled once its write has begun, it finishes it (see :meth:`register`)."""
        started = time.perf_counter_ns()
        name = check_name(name)
        force = self._check_flag(force, "force")
        if self._unregister_local(name):
            return
        lock = self._begin_write(name)  # its own notification then costs the listener no read
        locked = False
        try:
            locked = await lock.acquire()
            if self._held_live(name) is not None:
                await self._ensure_lease(name)  # see ServiceRegistry.unregister
            elif force and self._state.live_entry(name) is None:
                row = await self._db.fetchone(self._sql.select_entry, {"name": name})
                self._seen_first(name, row)
            await finish(self._unregister_once(name, force, started))
        finally:
            await self._settle(name, lock, locked)

    async def _unregister_once(self, name: str, force: bool, started: int) -> None:
        # Whole, as _register_once.
        sql, params = self._unregister_statement(name, force)
        try:
            row = await self._db.fetchone(sql, params)
        except StorageUnavailableError as exc:
            row = await self._lost_write(
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

    async def _lost_write(
        self,
        exc: FoundationError,
        name: str,
        judge: Callable[[tuple[Any, ...] | None], _T | None],
        unread: Callable[[], None],
    ) -> _T | None:
        """As :meth:`ServiceRegistry._lost_write`."""
        if never_sent(exc):
            return None
        try:
            owner = await self._reread(exc, self._sql.select_entry, {"name": name})
        except FoundationError:
            unread()
            return None
        return judge(owner)

    async def _reread(self, exc: FoundationError, sql: str, params: dict[str, Any]) -> Any:
        """As :meth:`ServiceRegistry._reread`."""
        pid = self._cut_backend(exc)
        if pid is not None:
            self._cut_backends.add(pid)
            await self._ended_backends()
            if pid in self._cut_backends:
                raise exc
        return await self._db.fetchone(sql, params)

    async def _ended_backends(self) -> bool:
        """As :meth:`ServiceRegistry._ended_backends`."""
        for pid in builtins.list(self._cut_backends):
            if await self._db.fetchone(self._sql.backend_busy, {"pid": pid}) is None:
                self._cut_backends.discard(pid)
        return not self._cut_backends

    async def update_metadata(self, name: Any, metadata: Any) -> ServiceEntry:
        """Replace the metadata (JSON; ``None``: ``{}``) of a live name this node holds;
        ``not_found`` otherwise. As :meth:`ServiceRegistry.update_metadata`, awaited;
        cancelled once its write has begun, it finishes it (see :meth:`register`)."""
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
            locked = await lock.acquire()
            late = 0
            while True:  # see ServiceRegistry.update_metadata
                lease = await self._ensure_lease(name)
                if late and (entry := self._updated_since(name, lease, meta)) is not None:
                    return entry
                entry = await finish(self._update_once(name, meta, text))
                if self._lease is lease and self._lease_valid():
                    return entry
                late = self._too_late(name, late, "update_metadata")
        finally:
            await self._settle(name, lock, locked)

    async def _update_once(self, name: str, meta: Any, text: str) -> ServiceEntry:
        # Whole, as _register_once.
        held, params = self._update_params(name, text)
        try:
            row = await self._db.fetchone(self._sql.update_metadata, params)
        except StorageUnavailableError as exc:
            row = await self._lost_write(
                exc,
                name,
                self._judge_lost_update(meta, params["gen"]),
                lambda: self._update_in_doubt(name, meta, text),
            )
            if row is None:
                raise
        return self._metadata_updated(name, held, meta, text, row)

    async def join(
        self, group: Any, address: Any, metadata: Any = None, *, member_id: Any = None
    ) -> GroupMember:
        """Add this node as a member of ``group`` (many members per group). As
        :meth:`ServiceRegistry.join`, awaited; cancelled once its write has begun, it
        finishes it (see :meth:`register`)."""
        group, held = self._prepare(group, address, metadata, None, group=True)
        member_id, generated = self._new_member_id(member_id)
        with self._counted({"group": group}):
            lease = await self._ensure_lease()
            if (group, member_id) not in self._members_in_doubt:
                return await finish(self._join_once(group, member_id, held, lease, generated))
            async with self._members_lock():  # see ServiceRegistry._settle_doubts
                self._members_in_doubt.discard((group, member_id))
                return await finish(self._join_once(group, member_id, held, lease, generated))

    async def _join_once(
        self, group: str, member_id: str, held: Any, lease: _Lease, generated: bool
    ) -> GroupMember:
        # Whole, as _register_once.
        gen = lease.generation
        try:
            row = await self._db.fetchone(
                self._sql.join, self._join_params(group, member_id, held, gen)
            )
        except StorageUnavailableError as exc:
            member = await self._lost_join(exc, (group, member_id), held, gen, generated)
            if member is None:
                raise
            return member
        return self._join_result(group, member_id, held, row)

    async def _lost_join(
        self, exc: FoundationError, key: tuple[str, str], held: _Held, gen: int, generated: bool
    ) -> GroupMember | None:
        """As :meth:`ServiceRegistry._lost_join`."""
        try:
            row = await self._reread(
                exc, self._sql.select_member, {"group": key[0], "member": key[1]}
            )
        except FoundationError:
            if generated:
                self._members_in_doubt.add(key)
            return None
        return self._judge_lost_join(key, held, gen, row, generated)

    async def leave(self, group: Any, member_id: Any = None) -> None:
        """Remove this node's member (or all its members, without ``member_id``) of
        ``group``. As :meth:`ServiceRegistry.leave`, awaited. Members leave one statement
        each, each finished if cancelled once begun: a cancelled call for all members may
        have removed only some (``members(group)`` tells)."""
        group, ids = self._leave_targets(group, member_id)
        with self._counted({"group": group}):
            for mid in ids:
                await finish(self._leave_once(group, mid))

    async def _leave_once(self, group: str, member_id: str) -> None:
        # Whole, as _register_once; not written again by a recovery once left.
        async with self._members_lock():
            try:
                await self._db.fetchone(self._sql.leave, self._leave_params(group, member_id))
            except StorageUnavailableError as exc:
                self._leave_in_doubt(exc, group, member_id)
                raise
            self._left(group, member_id)

    def watch(
        self, name_or_prefix: Any, callback: Callable[[RegistryChange], Any]
    ) -> RegistryWatch:
        """As :meth:`ServiceRegistry.watch`, but callbacks (plain or ``async def``) run on
        the event loop of the first ``watch``, in one task of this registry: one at a time,
        in the order the changes happened, an ``async def`` callback awaited before the
        next one starts. The heartbeat is another task: a callback that awaits (however
        long) never delays a renewal, but a plain callback that blocks the loop blocks
        the heartbeat with it; hand blocking work to ``asyncio.to_thread``. Called where no
        event loop runs (another thread), it raises ``validation_error``."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise ValidationError(
                "AsyncServiceRegistry.watch must be called from async code on an event "
                "loop, which runs its callbacks (from another thread: "
                "loop.call_soon_threadsafe, or ServiceRegistry of a Foundation)",
                context={"name": shown(name_or_prefix, 200)},
            ) from None
        watch = self._watch(name_or_prefix, callback, None)
        self._dispatcher.bind(loop)
        return watch

    async def close(self) -> None:
        """Stop the heartbeat and release the lease and names (others see them go at once).

        As :meth:`ServiceRegistry.close`, awaited: writes in flight get up to 5 s to end,
        and queued watch callbacks up to a second. It is not shielded from cancellation
        itself: :meth:`AsyncFoundation.close` runs it whole.
        """
        if self._closed:
            return
        self._closed = True  # no write begins from here (see _count_in)
        try:
            self._dispatcher.closing(timeout=1.0)  # callbacks get a second from now, no more
            # A task of a loop closed without its tasks' end (loop.close() after
            # run_until_complete) is dead, and cancelling it would raise.
            if self._task is not None and not self._task.get_loop().is_closed():
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._task
            deadline = time.monotonic() + _CLOSE_WAIT_S
            while self._writer_threads and time.monotonic() < deadline:
                await asyncio.sleep(0.005)  # the writes in flight end (they run whole)
            if self._writer_threads:
                log.warning("registry: closing with writes still running after %s s", _CLOSE_WAIT_S)
            params = self._closing()
            if params is not None:
                try:
                    async with self._db.transaction() as tx:
                        names = await tx.fetchall(self._sql.release_entries, params)
                        members = await tx.fetchall(self._sql.release_members, params)
                        await tx.execute(self._sql.release_lease, params)
                except FoundationError as exc:
                    log.warning(self._NOT_RELEASED, self._node, exc)
                else:
                    self._released(names, members)  # committed: reported as this node's own
            self._closed_locally()
            self._feed_settled(1.0)  # what the feed applied of the release is queued
            await self._dispatcher.close(timeout=1.0)  # delivers what is queued, within that second
        finally:  # also when cancelled: a second close() returns at once
            self._state.refusal = CLOSED  # nothing keeps the cache fresh


def _free(lock: asyncio.Lock) -> bool:
    """Whether ``lock.acquire()`` takes it at once: not held, and no waiter queued for it.
    A lock just released with a waiter woken but not yet run is not locked(), yet
    acquire() queues behind that waiter (which may wait for the recovery in turn)."""
    waiters = getattr(lock, "_waiters", None)  # asyncio.Lock's own queue
    return not lock.locked() and not any(not w.cancelled() for w in waiters or ())
