"""Durable subscriptions: catch up from a checkpoint, then follow the log live.

What both faces share is here; the runners are :class:`~._subscription_sync.Subscription`
(a thread) and :class:`~._subscription_aio.AsyncSubscription` (an asyncio task).

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

import enum
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

from foundation._text import node_tag, shown
from foundation.correlation import correlation
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
    from foundation.events._base import _EventsBase

__all__ = ["SubscriptionOptions", "SubscriptionStatus"]

log = logging.getLogger("foundation.events")
# "stopping": stop() was called while the handler was still running; the name is released
# when it returns.
State = Literal["starting", "running", "stopping", "failed", "stopped"]
Handler = Callable[[RecordedEvent], Any]
# Retried (see _SubscriptionBase._fault_wait); any other error (an EventError, a bug) fails
# visibly.
_DATABASE_FAULTS = (StorageUnavailableError, StorageError)
# A refusal that goes away by itself: a serialization failure or deadlock (class 40), a lock
# not available, a statement timeout.
_PASSING_SQLSTATES = ("40", "55P03", "57014")


def _refusal(exc: FoundationError) -> bool:
    """Whether the database refused the statement (a missing grant, a read-only database,
    a table gone), which no wait mends, rather than being out of reach or busy."""
    sqlstate = str(exc.context.get("sqlstate") or "")
    return isinstance(exc, StorageError) and not sqlstate.startswith(_PASSING_SQLSTATES)


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
        if isinstance(types, str | enum.Enum):
            types = [types]
        if types is not None and (not isinstance(types, list | tuple) or not types):
            raise EventError(
                "types must be an event type or a list of them",
                context={"types": shown(types)},
            )
        try:  # what store() takes as a type: another could never be delivered
            types = None if types is None else [valid_name(t, "type", required=True) for t in types]
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
        self._owner = f"{node_tag(events._node)}#{secrets.token_hex(4)}"
        self._release_lock = threading.Lock()
        self._release_claimed = False  # a caller is releasing the name (see _releasing)
        self._state: State = "starting"
        self._started = False  # start() ran (see _starting)
        self._checkpoint = 0
        self._lag_told = 0  # the lag last told (see _lag)
        self._last_error: str | None = None
        self._refusals = 0  # the database's refusals in a row (see _fault_wait)
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
            if type(row[0]) is not int or row[0] < 0:  # SQLite keeps any type
                raise StorageError(
                    f"subscription {self.name!r} has a checkpoint of {shown(row[0])} in "
                    "foundation_subscriptions, which is no position (an integer from 0): "
                    "written with plain SQL? Set it there to the position of the last "
                    "event handled",
                    context={"name": self.name, "checkpoint": shown(row[0])},
                )
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
        mine = node == node_tag(self._node)
        where = "another subscription of this node" if mine else f"node {node!r}"
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
            self._last_error = None  # a fault it was retrying: over with it (not a failure)
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

    def _fault_wait(self, exc: FoundationError, doing: str) -> float | None:
        """A database fault while ``doing`` (reading the log, writing the checkpoint):
        the seconds to wait before trying again, or None to give up.

        Out of reach (an outage, a lock), it is tried again every ``poll_interval_ms`` for
        as long as it lasts. Refused (a missing grant, a read-only database), it is tried
        again as a failing handler is, ``max_retries`` times with backoff, then the
        subscription fails (see :meth:`_gave_up`): it would never move again. Meanwhile
        ``status.last_error`` says why nothing moves."""
        self._last_error = f"could not {doing}: {exc.message}"
        if _refusal(exc):
            self._refusals += 1
            if self._refusals > self.options.max_retries:
                return None
            wait = self._backoff(self._refusals)
        else:
            wait = self.options.poll_interval_ms / 1000
        log.warning("subscription %r %s; retrying in %.3g s", self.name, self._last_error, wait)
        return wait

    def _fault_over(self) -> None:
        """A statement went through: the fault told in ``last_error`` is over (unless the
        subscription ended meanwhile: its lease taken over, say, which it tells)."""
        if self._state == "running" and (self._last_error is not None or self._refusals):
            self._refusals = 0
            self._last_error = None

    def _gave_up(self, exc: FoundationError, position: int | None) -> dict[str, Any]:
        """The database refused the subscription's statement too often: it fails (the row's
        parameters, for the caller to record; refused too, most likely, but tried)."""
        self._last_error = (
            f"{self._last_error} (refused {self._refusals} times in a row; subscribe again "
            "once the database takes it)"
        )
        log.error("subscription %r failed: %s", self.name, self._last_error)
        self._telemetry_failed(type(exc).__name__, position)
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
