"""Durable subscriptions: catch up from a checkpoint, then follow the log live.

Delivery is at least once: the handler runs, then the checkpoint (the position of the
last event handled) is committed; a crash between the two runs that event again on
restart. Positions follow commit order (see ``_store``), so "everything after my
checkpoint" never skips an event that committed late.

One consumer per name across the cluster: the row is claimed with a conditional UPDATE
that only succeeds when nobody holds a live lease; the owner renews the lease with every
checkpoint and, every third of the lease, from a keeper of its own (a thread, or a task),
so a handler slower than the lease, or retried for longer, keeps the name and the event
in hand; a dead owner's lease simply expires. An owner paused past its lease (SIGSTOP, a
frozen VM) finds its lease taken when it resumes, and stops as ``failed``: before it hands
an event to the handler, a consumer whose lease may have run out by its own clock (a
monotonic deadline from its last renewal, never later than the row's) renews it first, so
it never delivers an event once another consumer may hold the name. The owner is one
subscription object (``<node id>#<random>``), not a node: a second ``subscribe`` of the
same name is refused in the same process too. ``stop()`` releases the name only once the
handler in hand has returned.

The loop wakes on the change feed (NOTIFY on PostgreSQL, at most 10 ms late inside another
node's burst of stores; ``data_version`` on SQLite), on this instance's own writes, and at
the latest every ``poll_interval_ms``.
A handler that keeps raising is retried with exponential backoff, then the subscription
stops in the ``failed`` state with the error, in memory and in its row: it never skips.

A subscription object runs once: ``start()`` a second time (after ``stop()``, say) raises
``event_error``; ``subscribe()`` again resumes from the checkpoint. A restarted object would
need its thread or task, its lease keeper and its place in the instance's list (that
``close()`` stops) made again; a fresh object has all that, and nothing left over from the
stop (a handler still running, a release still being written) to race with.

``close()`` called by a handler (the instance closing under it) cannot wait for the
handler, which waits for it, and the database is gone by the time the handler returns:
the name is released at once, while the database is still open, and the event in hand is
not checkpointed (at least once: the next consumer of the name gets it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

from foundation._text import shown
from foundation.correlation import correlation
from foundation.database.aio import AsyncDatabase, finish
from foundation.database.sync import SyncDatabase
from foundation.errors import (
    AlreadyRegisteredError,
    EventError,
    FoundationError,
    StorageError,
    StorageUnavailableError,
)
from foundation.events._model import MAX_LIMIT, MAX_TYPES, RecordedEvent, valid_name
from foundation.events._store import EventSQL

if TYPE_CHECKING:
    from foundation.events._aio import AsyncEvents
    from foundation.events._base import _EventsBase
    from foundation.events._service import Events

__all__ = ["AsyncSubscription", "Subscription", "SubscriptionOptions", "SubscriptionStatus"]

log = logging.getLogger("foundation.events")
# "stopping": stop() was called while the handler was still running; the name is released
# when it returns.
State = Literal["starting", "running", "stopping", "failed", "stopped"]
Handler = Callable[[RecordedEvent], Any]
# Retried from the checkpoint; any other error (an EventError, a bug) fails visibly.
_DATABASE_FAULTS = (StorageUnavailableError, StorageError)


@dataclass(frozen=True)
class SubscriptionOptions:
    name: str
    types: tuple[str, ...] | None
    start: str | int
    max_retries: int = 3
    retry_backoff_ms: int = 100
    poll_interval_ms: int = 500
    lease_ms: int = 30_000
    batch_size: int = 100

    @classmethod
    def make(
        cls, name: Any, types: Any, start: Any, options: Mapping[str, Any]
    ) -> SubscriptionOptions:
        if (
            not isinstance(name, str)
            or not name.strip()
            or len(name) > 255
            or not name.isprintable()  # no control characters (a name is shown, logged)
        ):
            raise EventError(
                "a subscription name must be a non-empty printable string of at most 255 "
                "characters",
                context={"name": shown(name)},
            )
        if isinstance(types, str):
            types = [types]
        if types is not None and (not isinstance(types, list | tuple) or not types):
            raise EventError(
                "types must be an event type or a list of them",
                context={"types": shown(types)},
            )
        for each in types or ():
            try:  # what store() takes as a type: another could never be delivered
                valid_name(each, "type", required=True)
            except EventError as exc:
                raise EventError(f"types: {exc.message}", context={"types": shown(types)}) from None
        if types is not None and len(types) > MAX_TYPES:
            # Every read of the subscription filters on them: refused now, not at each poll.
            raise EventError(
                f"a subscription takes at most {MAX_TYPES} types (got {len(types)})",
                context={"count": len(types)},
            )
        if not (
            start in ("beginning", "end")
            or (isinstance(start, int) and not isinstance(start, bool) and 0 <= start < 2**63)
        ):
            raise EventError(
                "start must be 'beginning', 'end' or a position (an int >= 0)",
                context={"start": shown(start)},
            )
        ints: dict[str, int] = {}
        for key, value in options.items():
            if key not in cls.__dataclass_fields__ or key in ("name", "types", "start"):
                raise EventError(f"unknown subscription option {key!r}", context={"option": key})
            if key.endswith("_ms"):
                ints[key] = interval_ms(key, value)
                continue
            low = 0 if key == "max_retries" else 1
            high = MAX_LIMIT if key == "batch_size" else 86_400_000
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise EventError(
                    f"subscription option {key!r} must be an int from {low} to {high}",
                    context={"option": key, "value": shown(value)},
                )
            ints[key] = value
        return cls(name, None if types is None else tuple(types), start, **ints)


def interval_ms(name: str, value: Any) -> int:
    """An interval option: milliseconds (an int from 1 to a day), or a timedelta, as every
    Foundation option in milliseconds takes. 0 would make a loop spin."""
    if isinstance(value, timedelta):
        value = round(value.total_seconds() * 1000)
        if value == 0:
            value = -1  # under a millisecond: refused below, with the given value shown
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 86_400_000:
        raise EventError(
            f"{name} must be milliseconds from 1 to 86400000 (an int) or a timedelta",
            context={"option": name, "value": shown(value)},
        )
    return value


def closed_error(name: str) -> StorageUnavailableError:
    """What ``subscribe()`` raises once the instance's close has begun (as every other call
    on a closed instance): nothing would stop a subscription started then."""
    return StorageUnavailableError(
        "this Foundation instance is closed: it starts no subscription",
        context={"name": name},
    )


def stop_timeout(value: Any) -> float | None:
    """``stop(timeout=…)``: seconds (a number from 0), a timedelta, or None (no limit)."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value < math.inf:
        raise EventError(
            "stop(timeout=…) takes seconds (a number, 0 or more), a timedelta or None",
            context={"field": "timeout", "value": shown(value)},
        )
    return float(value)


@dataclass(frozen=True)
class SubscriptionStatus:
    name: str
    state: State
    checkpoint: int
    last_error: str | None


class _SubscriptionBase:
    def __init__(self, events: _EventsBase, sql: EventSQL, options: SubscriptionOptions) -> None:
        self._events = events
        self._sql = sql
        self.options = options
        self.name = options.name
        self._node = events._node
        self._owner = f"{events._node}#{secrets.token_hex(4)}"
        self._release_lock = threading.Lock()
        self._release_claimed = False  # a caller is releasing the name (see _releasing)
        self._state: State = "starting"
        self._started = False  # start() ran (see _starting)
        self._checkpoint = 0
        self._lag_told = 0  # the lag last told (see _lag)
        self._last_error: str | None = None
        self._attempts = 0
        # Monotonic end of the lease as this consumer knows it: counted from before the
        # statement that last renewed it was sent, so never later than the row's.
        self._lease_until = 0.0

    def _starting(self) -> None:
        """Refuse a second ``start()``: an object runs once (see the module's docstring).
        Its stop would still be set: it would claim the name and say ``running``, deliver
        nothing, and hold the name past ``close()`` until the lease ran out."""
        with self._release_lock:
            started, self._started = self._started, True
        if started:
            raise EventError(
                f"subscription {self.name!r} was already started (it is {self._state}): a "
                "subscription object runs once; call subscribe() again to resume from its "
                "checkpoint",
                context={"name": self.name, "state": self._state},
            )

    def _releasing_under_handler(self) -> bool:
        """``_releasing`` for a close() called by the handler, which says so (a warning:
        the event in hand goes to another consumer)."""
        if not self._releasing():
            return False
        log.warning(
            "subscription %r: close() was called by its handler; the name is released now, "
            "while the database is open, and the event in hand is not checkpointed: the next "
            "consumer of the name gets it again",
            self.name,
        )
        return True

    def _renewed(self, sent: float) -> None:
        self._lease_until = max(self._lease_until, sent + self.options.lease_ms / 1000)

    def _lease_lapsed(self) -> bool:
        return time.monotonic() >= self._lease_until

    @property
    def ended(self) -> bool:
        """Stopped or failed: nothing left for ``close()`` to stop."""
        return self._state in ("stopped", "failed")

    @property
    def status(self) -> SubscriptionStatus:
        """Where the subscription is: state, checkpoint (last handled position), error."""
        return SubscriptionStatus(self.name, self._state, self._checkpoint, self._last_error)

    @property
    def checkpoint(self) -> int:
        return self._checkpoint

    def _stamp(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        expires = now + timedelta(milliseconds=self.options.lease_ms)
        ts = self._sql.codec.ts
        return {"name": self.name, "owner": self._owner, "now": ts(now), "expires": ts(expires)}

    def _initial_checkpoint(self, last_position: int, row: tuple[Any, ...] | None) -> int:
        """The checkpoint of a name used for the first time (``row``: the name's row, if
        it has one: then its stored checkpoint decides, and ``start`` is not checked)."""
        if row is not None:
            return 0  # unused: sub_create leaves an existing row as it is
        start = self.options.start
        if start == "beginning":
            return 0
        if start == "end":
            return last_position
        return start_position(int(start), last_position)

    def _held(self, row: tuple[Any, ...] | None) -> AlreadyRegisteredError:
        consumer = None if row is None else row[2]
        node = consumer.rpartition("#")[0] or consumer if isinstance(consumer, str) else None
        where = "another subscription of this node" if node == self._node else f"node {node!r}"
        return AlreadyRegisteredError(
            f"subscription {self.name!r} is already consumed by {where} (until its lease "
            "runs out, or it is stopped)",
            context={"name": self.name, "owner": node, "consumer": consumer},
        )

    def _releasing(self) -> bool:
        """Whether this caller is the one to release the name (once, whoever comes first).

        The state turns ``stopped`` only once the row says so (the caller's ``finally``):
        whoever sees ``stopped`` also finds it in the table.
        """
        with self._release_lock:
            if self._release_claimed or self._state not in ("running", "starting", "stopping"):
                return False
            self._release_claimed = True
            return True

    def _released(self) -> dict[str, Any]:
        return {**self._stamp(), "status": "stopped", "error": None}

    def _page(self) -> tuple[str, dict[str, Any]]:
        criteria: dict[str, Any] = {
            "after_position": self._checkpoint,
            "limit": self.options.batch_size,
        }
        if self.options.types is not None:
            criteria["type"] = list(self.options.types)
        return self._events._read(self._events._criteria(criteria, {}))

    def _backoff(self, attempt: int) -> float:
        return float(self.options.retry_backoff_ms * 2 ** (attempt - 1)) / 1000

    def _failed(self, event: RecordedEvent, exc: BaseException) -> dict[str, Any]:
        # The caller records the row first and only then flips the state, so whoever sees
        # "failed" here also finds it in the table.
        self._last_error = f"{type(exc).__name__}: {exc} (event {event.id}, position " + (
            f"{event.position})"
        )
        log.error("subscription %r failed: %s", self.name, self._last_error)
        self._telemetry_failed(type(exc).__name__, event.position)
        return {**self._stamp(), "status": "failed", "error": self._last_error[:4000]}

    def _lag(self, handled: int, last_position: int | None) -> None:
        """After a batch: positions between the checkpoint and the head of the log (one
        query per batch). A subscription to some types whose page was not full has read
        every event of its types: caught up, though its checkpoint (the last of them)
        may lie far behind the head, past events of other types. ``last_position`` None:
        a read found nothing more, told once (a gauge would keep the last batch's lag)."""
        caught_up = last_position is None or (
            self.options.types is not None and handled < self.options.batch_size
        )
        lag = 0 if caught_up else max(0, (last_position or 0) - self._checkpoint)
        if handled == 0 and self._lag_told == 0:
            return
        self._lag_told = lag
        self._events._telemetry.execute(
            ("foundation", "events", "subscription", "lag"),
            {"count": handled, "lag": lag},
            {"name": self.name, "node": self._node},
        )

    def _telemetry_failed(self, error: str, position: int | None = None) -> None:
        """Every way into ``failed`` tells telemetry (an alert watches this event)."""
        measurements = {"count": 1} if position is None else {"count": 1, "position": position}
        self._events._telemetry.execute(
            ("foundation", "events", "subscription", "failed"),
            measurements,
            {"name": self.name, "error": error},
        )

    def _crashed(self, exc: BaseException) -> dict[str, Any]:
        """A fault of the loop itself (not of the handler; a row of the log it cannot
        read, after the events before it were delivered): stop visibly rather than spin.
        Returns the row's parameters for the caller to record."""
        log.exception("subscription %r stopped on an unexpected error", self.name)
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._telemetry_failed(type(exc).__name__, getattr(exc, "context", {}).get("position"))
        return {**self._stamp(), "status": "failed", "error": self._last_error[:4000]}

    def _lost(self) -> None:
        with self._release_lock:  # after a release, the lease is not ours to lose
            if self._release_claimed or self._state not in ("running", "stopping"):
                return
            self._state = "failed"
        self._last_error = "the subscription's lease was taken over by another consumer"
        log.error("subscription %r: %s", self.name, self._last_error)
        self._telemetry_failed("lease_lost")


def start_position(start: int, last_position: int) -> int:
    """A start position must be one the log has reached: past its end, the events stored
    later at positions up to it would be skipped without a word."""
    if start > last_position:
        raise EventError(
            f"start position {shown(start, 40)} is past the end of the log (last position "
            f"{last_position}): events stored later would be skipped",
            context={"start": start, "last_position": last_position},
        )
    return start


@contextmanager
def _correlated(event: RecordedEvent) -> Iterator[None]:
    """Run the handler under the event's correlation id, so what it stores carries it."""
    if event.correlation_id is None:
        yield
        return
    with correlation(event.correlation_id):
        yield


class Subscription(_SubscriptionBase):
    """A subscription run by a thread of this process; ``stop()`` ends it cleanly."""

    def __init__(
        self, events: Events, db: SyncDatabase, sql: EventSQL, options: SubscriptionOptions
    ) -> None:
        super().__init__(events, sql, options)
        self._db = db
        self._stop = threading.Event()
        self._handling = False  # the handler is running (a stop that times out says so)
        self._wake = threading.Event()
        self._ended = threading.Event()  # the loop's thread is done: the keeper stops
        self._thread: threading.Thread | None = None
        self._handler: Handler | None = None
        self._sync_events = events

    def bind(self, handler: Handler) -> Subscription:
        self._handler = handler
        return self

    def start(self) -> None:
        """Claim the name and start the thread (``subscribe()`` calls it); once only."""
        self._starting()
        known = self._db.fetchone(self._sql.sub_read, {"name": self.name})
        first = self._initial_checkpoint(self._sync_events.last_position(), known)
        sent = time.monotonic()  # before the stamp: the lease's end counts from it
        stamp = self._stamp()
        self._db.execute(self._sql.sub_create, {**stamp, "checkpoint": first})
        row = self._db.fetchone(self._sql.sub_claim, stamp)
        if row is None:
            raise self._held(self._db.fetchone(self._sql.sub_read, {"name": self.name}))
        self._renewed(sent)
        self._checkpoint = int(row[0])
        self._state = "running"
        self._events.add_waker(self._wake.set)
        self._thread = threading.Thread(
            target=self._run, name=f"foundation-subscription-{self.name}", daemon=True
        )
        self._thread.start()
        threading.Thread(
            target=self._keep_lease, name=f"foundation-subscription-{self.name}-lease", daemon=True
        ).start()

    def _keep_lease(self) -> None:
        while not self._ended.wait(self.options.lease_ms / 3000):
            try:
                if not self._renew():
                    return
            except FoundationError as exc:  # down: the next period tries again
                if self._db.closed:
                    return  # the loop says so when the handler returns
                log.warning("subscription %r could not renew its lease (%s)", self.name, exc)

    def _renew(self) -> bool:
        sent = time.monotonic()
        if self._db.execute(self._sql.sub_renew, self._stamp()) == 0:
            self._lost()
            return False
        self._renewed(sent)
        return True

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._ended.set()
            if self._stop.is_set():  # stop() may have given up waiting for the handler
                self._release()

    def _loop(self) -> None:
        while not self._stop.is_set() and self._state == "running":
            self._wake.clear()  # before reading, so a write during the read wakes us again
            try:
                sql, params = self._page()
                rows = self._db.fetchall(sql, params)
                if not rows:
                    self._lag(0, None)
                    self._wake.wait(self.options.poll_interval_ms / 1000)
                    continue
                for row in rows:  # each made a record in turn: see _crashed
                    record = self._sql.record(row)
                    if self._stop.is_set() or not self._deliver(record):
                        return
                    if self._release_claimed:  # released under the handler: _stop_for_close
                        return
                    if not self._checkpoint_to(record.position):
                        return
                self._lag(len(rows), self._sync_events.last_position())
            except _DATABASE_FAULTS as exc:  # the database went away: retry
                if self._db.closed:  # close() gave up waiting for the handler (see stop)
                    log.warning(
                        "subscription %r: its Foundation instance closed while the handler "
                        "ran; the event it handled was not checkpointed and goes to the "
                        "next consumer of the name, once the name's lease runs out",
                        self.name,
                    )
                    return
                log.warning("subscription %r cannot read the log (%s); retrying", self.name, exc)
                self._stop.wait(self.options.poll_interval_ms / 1000)
            except Exception as exc:  # a bug, not a fault: stop visibly rather than spin
                self._record_failure(self._crashed(exc))
                return

    def _deliver(self, record: RecordedEvent) -> bool:
        assert self._handler is not None
        for attempt in range(1, self.options.max_retries + 2):
            if self._lease_lapsed() and not self._renew():
                return False  # another consumer may hold the name: not ours to deliver
            try:
                self._handling = True
                try:
                    with _correlated(record):
                        result = self._handler(record)
                finally:
                    self._handling = False
                if inspect.isawaitable(result):
                    if inspect.iscoroutine(result):
                        result.close()  # nobody will await it: no "never awaited" warning
                    raise TypeError(
                        "the handler returned an awaitable, which a thread cannot await"
                        " (async handlers need AsyncFoundation)"
                    )
                return True
            except Exception as exc:
                if attempt > self.options.max_retries:
                    self._record_failure(self._failed(record, exc))
                    return False
                if self._stop.wait(self._backoff(attempt)):
                    return False
            except BaseException as exc:
                # SystemExit, KeyboardInterrupt: not retried, and this thread must not end
                # with the status still saying "running".
                self._record_failure(self._failed(record, exc))
                return False
        return False  # pragma: no cover

    def _record_failure(self, params: dict[str, Any]) -> None:
        # The row first, then the state: whoever sees "failed" also finds it in the table.
        try:
            self._db.execute(self._sql.sub_status, params)
        except FoundationError:
            log.exception("could not record the failure of %r", self.name)
        self._state = "failed"

    def _checkpoint_to(self, position: int) -> bool:
        sent = time.monotonic()
        changed = self._db.execute(
            self._sql.sub_checkpoint, {**self._stamp(), "checkpoint": position}
        )
        if changed == 0:
            self._lost()
            return False
        self._renewed(sent)
        self._checkpoint = position
        return True

    def stop(self, timeout: float | timedelta | None = 10.0) -> None:
        """Stop after the event in hand (if any) and release the name.

        If the handler is still running after ``timeout`` seconds, the state is
        ``stopping`` and the name stays held until the handler returns: no other
        consumer may start on the event in hand meanwhile.
        """
        timeout = stop_timeout(timeout)
        self._stop.set()
        self._wake.set()
        self._events.remove_waker(self._wake.set)
        thread = self._thread
        if thread is threading.current_thread():
            return  # called by the handler: its event is checkpointed, then _run releases
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                with self._release_lock:
                    if self._state == "running":
                        self._state = "stopping"
                if self._state == "stopping":  # else the thread ended meanwhile
                    if self._handling:  # an idle loop ends at once: nothing to say
                        log.warning(
                            "subscription %r: the handler is still running after %s s; the "
                            "name is released when it returns",
                            self.name,
                            timeout,
                        )
                    return
        self._release()

    def _stop_for_close(self) -> None:
        """``stop()`` for the instance's close (``Events.close``).

        Called by the handler itself, it cannot wait for the handler (which waits for it),
        and the database closes before the handler returns: the name is released now, and
        the event in hand is delivered again to the next consumer (at least once).
        """
        if self._thread is not threading.current_thread():
            self.stop()
            return
        self._stop.set()
        self._wake.set()
        self._events.remove_waker(self._wake.set)
        if self._releasing_under_handler():
            self._write_release()

    def _release(self) -> None:
        if not self._releasing():
            return
        if self._db.closed:
            self._state = "stopped"  # the name frees when its lease runs out (see _loop)
            return
        self._write_release()

    def _write_release(self) -> None:
        try:
            self._db.execute(self._sql.sub_status, self._released())
        except FoundationError:
            log.warning("could not release subscription %r", self.name)
        finally:
            self._state = "stopped"


# The subscription whose task runs the current code (a handler, or a task it started).
_FOLLOWING: contextvars.ContextVar[AsyncSubscription | None] = contextvars.ContextVar(
    "foundation_following", default=None
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
                    if not await self._checkpoint_to(record.position):
                        return
                self._lag(len(rows), await self._async_events.last_position())
            except _DATABASE_FAULTS as exc:
                log.warning("subscription %r cannot read the log (%s); retrying", self.name, exc)
                await asyncio.sleep(self.options.poll_interval_ms / 1000)
            except Exception as exc:  # a bug, not a fault: stop visibly rather than spin
                await self._record_failure(self._crashed(exc))
                return

    async def _deliver(self, record: RecordedEvent) -> bool:
        assert self._handler is not None
        for attempt in range(1, self.options.max_retries + 2):
            if self._lease_lapsed() and not await self._renew():
                return False  # another consumer may hold the name: not ours to deliver
            failure: BaseException
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
            if attempt > self.options.max_retries:
                await self._record_failure(self._failed(record, failure))
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_asked.wait(), self._backoff(attempt))
            if self._stopping:
                return False
        return False  # pragma: no cover

    async def _record_failure(self, params: dict[str, Any]) -> None:
        try:
            await self._db.execute(self._sql.sub_status, params)
        except FoundationError:
            log.exception("could not record the failure of %r", self.name)
        self._state = "failed"

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
        if self._task is asyncio.current_task() or _FOLLOWING.get() is self:
            # Called by the handler (or a task of its own: AsyncFoundation.close() runs in
            # one): its event is checkpointed, then _run releases. Waiting here would wait
            # for ourselves.
            return
        # Whole, even if the caller is cancelled meanwhile (its cancellation is raised
        # after): the name is given up only once the handler has ended, and it is given
        # up, so that a second consumer never runs beside this one nor waits for a lease.
        await finish(self._stopped(timeout))

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
        if not (self._task is asyncio.current_task() or _FOLLOWING.get() is self):
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
            await self._db.execute(self._sql.sub_status, self._released())
        except FoundationError:
            log.warning("could not release subscription %r", self.name)
        finally:
            self._state = "stopped"
