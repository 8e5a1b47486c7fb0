"""Group commit: concurrent stores of one process share one statement and one commit.

On PostgreSQL every store holds the writers' lock from its first position to its commit,
WAL flush included (that is what keeps positions in commit order, see ``_store``), so
stores issued one by one cannot overlap, however many threads or tasks issue them. Here
the callers that arrive while a store is in flight queue up; when it returns, the whole
queue goes to the database as one ``foundation_append_events`` call (each caller's events
one unit, all or nothing on its own), and each caller gets its own outcome. A caller is
answered only after that call, commit included, has returned: an acknowledged event is
durable exactly as a lone store is.

A lone thread pays nothing: with an empty queue it runs its store at once.

The sync face uses leader hand-off (as LevelDB's writer queue): a caller that finds the
lead free runs its unit with those waiting, then passes the lead to the next waiting
caller, so no thread is kept serving others. One lead at a time: writers wait for their
own outcome, so whatever arrives during a call goes in the next one whether one or two
calls are in flight; a second lead only halves the groups, and with them the stores per
round trip. On two cores, 16 threads stored 15% faster with one lead than with two
(8.5 stores per call against 5.3).

On the async face a caller that finds no call in flight lets the loop turn once, so that
the tasks already due to store (woken by the last call's outcomes, typically) queue beside
it. Alone, it runs its own call (one loop turn later: a few µs). Else the queue, its unit
first, is sent by a task of its own, as are the callers that queue while a call is in
flight: no caller's cancellation cancels the others' statement. A caller cancelled
before its unit is sent is not written; after, it waits for the statement's end (it is
written, and in the tail cache) before its cancellation goes on. With 16 tasks storing,
that turn cut the time per event by 13% (68 to 60 µs), the lone store's unchanged.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from foundation.database.aio import finish
from foundation.errors import StorageUnavailableError

__all__ = ["AsyncGroupCommit", "GroupCommit"]

U = TypeVar("U")
R = TypeVar("R")
# Outcomes are results or exceptions, one per unit, in the units' order.
Run = Callable[[list[U]], list[R | BaseException]]


def _fitting(units: list[U], limit: int, weigh: Callable[[U], int], max_weight: int) -> int:
    """How many of the first ``units`` go in one call: at most ``limit``, and no more
    than ``max_weight`` in all (the first always goes, whatever it weighs)."""
    total = 0
    for count, unit in enumerate(units[:limit]):
        total += weigh(unit)
        if count and total > max_weight:
            return count
    return min(len(units), limit)


def _one(unit: object) -> int:
    return 1


def _result(outcome: R | BaseException) -> R:
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


class _Slot(Generic[U, R]):
    __slots__ = ("done", "lead", "outcome", "unit")

    def __init__(self, unit: U) -> None:
        self.unit = unit
        self.outcome: R | BaseException | None = None
        self.lead = False
        # Made only for a caller that waits: a plain lock it takes once the leader has
        # released it (a C-level handoff; threading.Event costs a Python Condition).
        self.done: threading.Lock | None = None


class GroupCommit(Generic[U, R]):
    """Threads' units, run in groups of at most ``limit`` units by the threads that lead.

    Up to ``leaders`` groups are in flight at once (one by default, see the module).
    """

    def __init__(
        self,
        run: Run[U, R],
        limit: int,
        leaders: int = 1,
        weigh: Callable[[U], int] = _one,
        max_weight: int = 2**62,
    ) -> None:
        self._run = run
        self._limit = limit
        self._weigh = weigh
        self._max_weight = max_weight
        self._max_leaders = leaders
        self._lock = threading.Lock()
        self._queue: list[_Slot[U, R]] = []  # waiting followers only
        self._leaders = 0
        self.groups = 0  # how many calls ran (for tests and the benchmark)

    def _forget_in_flight(self) -> None:
        """In a forked child (see ``foundation._fork``): the parent's leader and waiting
        threads are not there; a store of the child leads at once (and is refused)."""
        self._queue = []
        self._leaders = 0

    def _take(self, slot: _Slot[U, R]) -> list[_Slot[U, R]]:
        # Under the lock: the leader's own unit first, then the oldest waiting ones.
        units = [slot.unit, *(s.unit for s in self._queue[: self._limit - 1])]
        taken = _fitting(units, self._limit, self._weigh, self._max_weight) - 1
        group = [slot, *self._queue[:taken]]
        del self._queue[:taken]
        return group

    def submit(self, unit: U) -> R:
        slot: _Slot[U, R] = _Slot(unit)
        with self._lock:
            if self._leaders < self._max_leaders:
                self._leaders += 1
                slot.lead = True
                group = self._take(slot)
            else:
                slot.done = threading.Lock()
                slot.done.acquire()
                self._queue.append(slot)
        if not slot.lead:
            slot.done.acquire()  # type: ignore[union-attr]  # made just above
            if not slot.lead:  # another leader ran our unit
                return _result(slot.outcome)  # type: ignore[return-value]
            with self._lock:  # handed the lead (our slot left the queue then)
                group = self._take(slot)
        try:
            outcomes = self._run([s.unit for s in group])
        except BaseException as exc:
            outcomes = [exc] * len(group)
        self.groups += 1
        for s, outcome in zip(group, outcomes, strict=True):
            s.outcome = outcome
        with self._lock:
            successor = self._queue.pop(0) if self._queue else None
            if successor is None:
                self._leaders -= 1
            else:
                successor.lead = True
        if successor is not None:
            successor.done.release()  # type: ignore[union-attr]  # a waiting slot
        for s in group[1:]:
            s.done.release()  # type: ignore[union-attr]
        return _result(slot.outcome)  # type: ignore[return-value]


class AsyncGroupCommit(Generic[U, R]):
    """Tasks' units: a lone caller runs its own; those arriving meanwhile, in groups."""

    def __init__(
        self,
        run: Callable[[list[U]], Awaitable[list[R | BaseException]]],
        limit: int,
        weigh: Callable[[U], int] = _one,
        max_weight: int = 2**62,
    ):
        self._run = run
        self._limit = limit
        self._weigh = weigh
        self._max_weight = max_weight
        self._queue: list[tuple[U, asyncio.Future[R]]] = []
        self.busy = False  # a call is in flight (its caller's own, or a flushing task's)
        self._flusher: asyncio.Task[None] | None = None
        self.groups = 0

    async def submit(self, unit: U) -> R:
        loop = asyncio.get_running_loop()
        if self.busy:
            future: asyncio.Future[R] = loop.create_future()
            self._queue.append((unit, future))
            return await self._outcome(future)
        self.busy = True
        try:
            # One turn of the loop first: the tasks already due to store (woken by the
            # last call's outcomes, say) queue meanwhile, and go with this unit.
            await asyncio.sleep(0)
        except BaseException:
            self._handoff(loop)
            raise
        if self._queue:
            future = loop.create_future()
            self._queue.insert(0, (unit, future))
            self._handoff(loop)
            return await self._outcome(future)
        try:
            # Sent: whole, even if this caller is cancelled meanwhile (see _outcome).
            outcome = (await finish(self._run([unit])))[0]
            self.groups += 1
        finally:
            # Whoever queued meanwhile is sent by a task of its own, so that this
            # caller's cancellation cannot cancel their statement.
            if self._queue:
                self._flusher = loop.create_task(self._flush())
            else:
                self.busy = False
        return _result(outcome)

    async def _outcome(self, future: asyncio.Future[R]) -> R:
        """The outcome of a unit queued for the flusher.

        A caller cancelled while its unit is still queued drops it: it is not written.
        Once sent, its statement runs on; the caller waits for its end before its
        cancellation goes on, so that a cancelled store is, when it returns, either
        written and known to this node (its tail cache), or not written at all.
        """
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if future.done() or any(f is future for _, f in self._queue):
                future.cancel()  # queued: the flusher drops it
                raise
            try:
                await finish(future)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # its outcome: the cancellation goes on all the same
                raise asyncio.CancelledError from exc
            raise

    def _handoff(self, loop: asyncio.AbstractEventLoop) -> None:
        """The queue goes to a task of its own (none in flight: ``busy`` is ours)."""
        if self._queue:
            self._flusher = loop.create_task(self._flush())
        else:
            self.busy = False

    async def _run_whole(self, units: list[U]) -> tuple[list[R | BaseException], bool]:
        """The group's call, and whether this flusher was cancelled meanwhile.

        The call runs to its end all the same, so that its callers learn its outcome
        (``asyncio.run`` cancels every task when it ends: the flusher and the callers
        waiting on it): they get their ``CancelledError`` once the events are written
        or not, as ``_outcome`` says. Only a cancellation of the call itself cuts it
        short, and leaves its outcome unknown."""
        call = asyncio.ensure_future(self._run(units))
        stopping = False
        while not call.done():
            try:
                await asyncio.shield(call)
            except asyncio.CancelledError:
                stopping = True
            except BaseException:  # the call's own: read below
                break
        if call.cancelled():
            unknown = StorageUnavailableError(
                "the store was interrupted before its outcome was known",
                context={"reason": "group commit cancelled"},
            )
            return [unknown] * len(units), True
        error = call.exception()
        if error is not None:
            return [error] * len(units), stopping
        return call.result(), stopping

    async def _flush(self) -> None:
        group: list[tuple[U, asyncio.Future[R]]] = []
        try:
            while self._queue:
                # Callers cancelled while queued are dropped first: they are not written.
                self._queue = [(u, f) for u, f in self._queue if not f.done()]
                if not self._queue:
                    break
                count = _fitting(
                    [u for u, _ in self._queue], self._limit, self._weigh, self._max_weight
                )
                group = self._queue[:count]
                del self._queue[:count]
                outcomes, stopping = await self._run_whole([u for u, _ in group])
                self.groups += 1
                for (_, future), outcome in zip(group, outcomes, strict=True):
                    if future.done():
                        continue  # cancelled by the loop's shutdown (see _outcome)
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                group = []
                if stopping:
                    raise asyncio.CancelledError
        finally:
            self._flusher = None
            self.busy = False
            # Cancelled (the loop is closing): nobody may wait forever.
            for _, future in group + self._queue:
                if not future.done():
                    future.set_exception(
                        StorageUnavailableError(
                            "the store was interrupted before its outcome was known",
                            context={"reason": "group commit cancelled"},
                        )
                    )
            self._queue.clear()
