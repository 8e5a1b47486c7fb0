"""A subscription run by an asyncio task (the async face's); see :mod:`._subscription`."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from foundation.database.aio import AsyncDatabase, finish
from foundation.errors import FoundationError
from foundation.events._model import RecordedEvent
from foundation.events._store import EventSQL
from foundation.events._subscription import (
    _DATABASE_FAULTS,
    Handler,
    SubscriptionOptions,
    _correlated,
    _SubscriptionBase,
    log,
    stop_timeout,
)

if TYPE_CHECKING:
    from foundation.events._aio import AsyncEvents

__all__ = ["AsyncSubscription"]

# The subscription whose task runs the current code (a handler, or a task it started).
_FOLLOWING: contextvars.ContextVar[AsyncSubscription | None] = contextvars.ContextVar(
    "foundation_following", default=None
)


# The handler call running when the current task was started (a mark per call: see
# AsyncSubscription._called_by_handler).
_HANDLING: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "foundation_handling", default=None
)


class AsyncSubscription(_SubscriptionBase):
    """A subscription run by an asyncio task; the handler may be ``async def``."""

    def __init__(
        self, events: AsyncEvents, db: AsyncDatabase, sql: EventSQL, options: SubscriptionOptions
    ) -> None:
        super().__init__(events, sql, options)
        self._db = db
        self._async_events = events
        self._stopping = False
        self._wake = asyncio.Event()
        self._stop_asked = asyncio.Event()  # cuts a retry's backoff short (as sync's _stop)
        self._task: asyncio.Task[None] | None = None
        self._handling: object | None = None  # the running call's mark (_called_by_handler)
        self._keeper: asyncio.Task[None] | None = None
        self._handler: Handler | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, handler: Handler) -> AsyncSubscription:
        self._handler = handler
        return self

    def _waker(self) -> None:
        # Called from the feed's thread or the loop's own: hop onto the loop either way.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._wake.set)

    async def start(self) -> None:
        """Claim the name and start the task (``subscribe()`` calls it); once only."""
        self._starting()
        self._loop = asyncio.get_running_loop()
        known = await self._db.fetchone(self._sql.sub_read, {"name": self.name})
        first = self._initial_checkpoint(await self._async_events.last_position(), known)
        sent = time.monotonic()  # before the stamp: the lease's end counts from it
        stamp = self._stamp()
        await self._db.execute(self._sql.sub_create, {**stamp, "checkpoint": first})
        row = await self._db.fetchone(self._sql.sub_claim, stamp)
        if row is None:
            raise self._held(await self._db.fetchone(self._sql.sub_read, {"name": self.name}))
        self._renewed(sent)
        self._checkpoint = int(row[0])
        self._state = "running"
        self._events.add_waker(self._waker)
        self._task = asyncio.create_task(self._run(), name=f"foundation-subscription-{self.name}")
        self._keeper = asyncio.create_task(
            self._keep_lease(), name=f"foundation-subscription-{self.name}-lease"
        )

    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(self.options.lease_ms / 3000)
            try:
                if not await self._renew():
                    return
            except FoundationError as exc:  # down: the next period tries again
                if self._db.closed:
                    return  # the loop says so when the handler returns
                log.warning("subscription %r could not renew its lease (%s)", self.name, exc)

    async def _renew(self) -> bool:
        sent = time.monotonic()
        if await self._db.execute(self._sql.sub_renew, self._stamp()) == 0:
            self._lost()
            return False
        self._renewed(sent)
        return True

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _run(self) -> None:
        _FOLLOWING.set(self)  # in this task, and the tasks it (its handler) starts
        try:
            await self._follow()
        except asyncio.CancelledError:
            if not self._stopping:
                # Cancelled by another than stop(): a shutdown that cancels every task, the
                # end of asyncio.run() before close(). Nothing follows the log any more:
                # the subscription stops, its name given up (its event not checkpointed).
                log.warning("subscription %r: its task was cancelled; it stops", self.name)
                self._stopping = True
            raise
        finally:
            if self._keeper is not None:
                self._keeper.cancel()
            if self._stopping:  # stop() was called by the handler, or cancelled it
                await self._release()

    async def _follow(self) -> None:
        while not self._stopping and self._state == "running":
            self._wake.clear()
            try:
                sql, params = self._page()
                rows = await self._db.fetchall(sql, params)
                self._fault_over()
                if not rows:
                    self._lag(0, None)
                    await self._sleep(self.options.poll_interval_ms / 1000)
                    continue
                for row in rows:  # as Subscription._loop
                    record = self._sql.record(row)
                    if self._stopping or not await self._deliver(record):
                        return
                    if self._release_claimed:  # released under the handler: _stop_for_close
                        return
                    if not await self._checkpoint_kept(record.position):
                        return
                self._lag(len(rows), await self._async_events.last_position())
            except _DATABASE_FAULTS as exc:
                wait = self._fault_wait(exc, "read the log")
                if wait is None:
                    await self._record_failure(self._gave_up(exc, None))
                    return
                await self._stop_wait(wait)
            except Exception as exc:  # a bug, not a fault: stop visibly rather than spin
                await self._record_failure(self._crashed(exc))
                return

    async def _deliver(self, record: RecordedEvent) -> bool:
        assert self._handler is not None
        for attempt in range(1, self.options.max_retries + 2):
            if self._lease_lapsed() and not await self._renew():
                return False  # another consumer may hold the name: not ours to deliver
            failure: BaseException
            self._handling = call = object()
            token = _HANDLING.set(call)  # for the tasks this handler starts
            try:
                with _correlated(record):
                    result = self._handler(record)
                    if inspect.isawaitable(result):
                        await result
                return True
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if self._stopping or (task is not None and task.cancelling()):
                    raise  # stop() or the loop's end cancelled this task
                # The handler's own (a task it awaited was cancelled): a failure like any.
                failure = exc
            except Exception as exc:
                failure = exc
            except (SystemExit, KeyboardInterrupt) as exc:
                # The program is ending (a SIGTERM handler's sys.exit, Ctrl-C, which on
                # the loop land in a plain handler): a stop, not the handler's failure.
                # The event is not checkpointed (delivered again); _run releases the name.
                log.warning(
                    "subscription %r stopped by %s in its handler; the event at position "
                    "%s is delivered again",
                    self.name,
                    type(exc).__name__,
                    record.position,
                )
                self._stopping = True
                raise
            finally:
                _HANDLING.reset(token)
                self._handling = None
            if attempt > self.options.max_retries:
                await self._record_failure(self._failed(record, failure))
                return False
            await self._stop_wait(self._backoff(attempt))
            if self._stopping:
                return False
        return False  # pragma: no cover

    async def _stop_wait(self, seconds: float) -> None:
        """Wait ``seconds``, or less if ``stop()`` is called meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_asked.wait(), seconds)

    async def _record_failure(self, params: dict[str, Any]) -> None:
        try:
            await self._db.execute(self._sql.sub_status, params)
        except FoundationError as exc:  # the row keeps its lease: it runs out
            log.error("could not record the failure of %r in its row (%s)", self.name, exc)
        self._state = "failed"

    async def _checkpoint_kept(self, position: int) -> bool:
        """As :meth:`Subscription._checkpoint_kept`: a fault is retried for the checkpoint
        alone, the handler not run again."""
        while True:
            try:
                kept = await self._checkpoint_to(position)
            except _DATABASE_FAULTS as exc:
                wait = self._fault_wait(exc, "write its checkpoint")
                if wait is None:
                    await self._record_failure(self._gave_up(exc, position))
                    return False
                await self._stop_wait(wait)
                if self._stopping:
                    return False  # not checkpointed: the next consumer gets it again
                continue
            self._fault_over()
            return kept

    async def _checkpoint_to(self, position: int) -> bool:
        sent = time.monotonic()
        params = {**self._stamp(), "checkpoint": position}
        if await self._db.execute(self._sql.sub_checkpoint, params) == 0:
            self._lost()
            return False
        self._renewed(sent)
        self._checkpoint = position
        return True

    async def stop(self, timeout: float | timedelta | None = 10.0) -> None:
        """Stop after the event in hand; an ``async`` handler still running after
        ``timeout`` seconds is cancelled (and the name released once it has ended)."""
        timeout = stop_timeout(timeout)
        self._stopping = True
        self._wake.set()
        self._stop_asked.set()
        self._events.remove_waker(self._waker)
        if self._called_by_handler():
            # Called by the handler (or a task of its own: AsyncFoundation.close() runs in
            # one): its event is checkpointed, then _run releases. Waiting here would wait
            # for ourselves.
            return
        # Whole, even if the caller is cancelled meanwhile (its cancellation is raised
        # after): the name is given up only once the handler has ended, and it is given
        # up, so that a second consumer never runs beside this one nor waits for a lease.
        await finish(self._stopped(timeout))

    def _called_by_handler(self) -> bool:
        """Whether the current task is the subscription's own, or one the running handler
        call started (a task inherits the context): the handler may await it. A task an
        earlier call started waits like any caller."""
        if self._task is asyncio.current_task():
            return True
        return self._handling is not None and _HANDLING.get() is self._handling

    async def _stopped(self, timeout: float | None) -> None:
        task = self._task
        if task is not None and task.get_loop().is_closed():
            # A close in another event loop, the subscription's own gone (and its task
            # with it): nothing is left to wait for; the name is given up.
            task = None
        try:
            if task is not None and not task.done():
                try:
                    await asyncio.wait_for(asyncio.shield(task), timeout)
                except TimeoutError:
                    task.cancel()
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # this stop's own
                    # The loop's task, cancelled by someone else (the end of asyncio.run
                    # cancels every task at once): it has ended, the stop goes on.
        finally:
            # Also when this stop is cancelled: the name is given up all the same, once
            # the handler has ended (a second consumer never runs beside this one).
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
            await self._release()

    async def _stop_for_close(self) -> None:
        """``stop()`` for the instance's close (``AsyncEvents.close``): as
        :meth:`Subscription._stop_for_close`, and the lease keeper has ended when it returns."""
        if not self._called_by_handler():
            await self.stop()
            return
        self._stopping = True
        self._wake.set()
        self._stop_asked.set()
        self._events.remove_waker(self._waker)
        if not self._releasing_under_handler():
            return
        try:
            keeper = self._keeper
            if keeper is not None and keeper is not asyncio.current_task():
                keeper.cancel()  # it renews what is released here: ended first
                await asyncio.wait([keeper])
            await self._db.execute(self._sql.sub_status, self._released())
        except FoundationError:
            log.warning("could not release subscription %r", self.name)
        finally:
            self._state = "stopped"

    async def _release(self) -> None:
        if not self._releasing():
            return
        keeper = self._keeper
        if keeper is not None and not keeper.get_loop().is_closed():  # else dead with it
            keeper.cancel()
        try:
            # Whole even if this task is cancelled meanwhile (stop() cancels it once its
            # timeout has passed, maybe here): "stopped" is told only of a released name.
            await finish(self._db.execute(self._sql.sub_status, self._released()))
        except FoundationError:
            log.warning("could not release subscription %r", self.name)
        finally:
            self._state = "stopped"
