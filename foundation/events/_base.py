"""What the event log's two faces share: :class:`_EventsBase`, the base of
:class:`~._service.Events` (sync) and :class:`~._aio.AsyncEvents`: validation, criteria,
telemetry, the tail cache and the wake-ups.

The logic of ``store`` is written once, as generators of statements (``_plan``):
each face only runs the statements it yields, on its own transaction. So the two faces
cannot drift apart, and neither hops threads.
"""

from __future__ import annotations

import inspect
import threading
import time
import uuid
from collections.abc import (
    Callable,
    Mapping,
)
from datetime import UTC, datetime
from typing import Any

import pydantic

from foundation._text import shown, text_of
from foundation.database.feed import ChangeFeed
from foundation.database.sync import Cursor
from foundation.errors import EventError, FoundationError, StorageUnavailableError
from foundation.events._model import (
    _CRITERIA_KEYS,
    MAX_LIMIT,
    MAX_VERSION,
    Criteria,
    NewEvent,
    RecordedEvent,
    _text,
    merge_criteria,
    parse_criteria,
    parse_event,
)
from foundation.events._plan import (
    Known,
    Pager,
    StoredBatch,
    appended,
    is_stream_race,
)
from foundation.events._store import EventSQL
from foundation.events._subscription import log, start_position
from foundation.events._tail import TailCache
from foundation.events._typed import TypeRegistry
from foundation.settings import Settings
from foundation.telemetry import Telemetry

__all__ = ["MAX_BATCH", "MAX_BATCH_JSON"]

_STORE = ("foundation", "events", "store")
_GET = ("foundation", "events", "get")
MAX_BATCH = 10_000
# JSON (data and metadata, in UTF-8 bytes) of one store_many, and (in characters) of one
# PostgreSQL call of grouped stores: far below jsonb's 255 MiB, which the call's array of
# events must fit.
MAX_BATCH_JSON = 32 * 1024 * 1024
_TAIL_KEYS = ("type", "stream_id", "correlation_id", "causation_id")
_TAIL_BATCH = 500
_CATCH_UP_BATCH = 1_000
_GROUP_UNITS = 64  # stores sharing one PostgreSQL call, at most
# One PostgreSQL store: its events, the ids found already recorded, and its outcome.
_Unit = tuple[list[NewEvent], Known]
_Outcome = StoredBatch | BaseException


class _EventsBase:
    """Validation, criteria, telemetry and the wake-ups, shared by both faces."""

    # PostgreSQL: within a burst of stores, one NOTIFY per this many seconds (see
    # _notify_in_statement).
    NOTIFY_EVERY_S = 0.005

    def __init__(
        self,
        sql: EventSQL,
        settings: Settings,
        telemetry: Telemetry,
    ) -> None:
        self._sql = sql
        self._settings = settings
        self._telemetry = telemetry
        self._node = settings.node_id
        self._wakers: list[Callable[[], None]] = []
        self.closed = False  # close() ran: tails end
        # Named in this instance's NOTIFYs (not the node id, which a user may repeat).
        self._writer = uuid.uuid4().hex
        self._wakers_lock = threading.Lock()
        self.tail_cache = TailCache(settings.events_tail_size, sql.codec.load_ts)
        self._feed: ChangeFeed | None = None
        self._notified_at = -float("inf")  # time.monotonic() of this writer's last NOTIFY
        self.own_catch_ups = 0  # own notifications the cache had to read back (tests)
        self.types = TypeRegistry()

    # -- typed events -----------------------------------------------------------------

    def register_type(
        self,
        type_name: str,
        model: type[pydantic.BaseModel],
        version: int = 1,
        upcasters: Mapping[int, Callable[[Any], Any]] | None = None,
    ) -> None:
        """Give events of ``type_name`` a pydantic model (see :mod:`._typed`)."""
        self.types.register(type_name, model, version, upcasters)

    def decode(self, record: RecordedEvent) -> pydantic.BaseModel:
        """``record.data`` as its registered model, upcast to the current version."""
        return self.types.decode(record)

    # -- store ------------------------------------------------------------------------

    def _parse(self, events: Any) -> list[NewEvent]:
        if isinstance(events, Mapping) or not isinstance(events, list | tuple):
            raise EventError(
                "store_many takes a list of events",
                context={"type": type(events).__name__},
            )
        if len(events) > MAX_BATCH:
            raise EventError(
                f"store_many takes at most {MAX_BATCH} events at once",
                context={"count": len(events)},
            )
        limit = self._settings.max_value_bytes
        typed = self.types.prepare
        batch = []
        for index, event in enumerate(events):
            try:
                batch.append(parse_event(typed(event), limit))
            except EventError as exc:
                if len(events) == 1:
                    raise
                # Which one of thousands: the ids in the context were generated here.
                raise EventError(
                    f"event {index} of the batch (counting from 0): {exc.message}",
                    context={**exc.context, "index": index},
                ) from exc.__cause__
        if len(batch) > 1:  # one event: its own limit (max_value_bytes) is the one to meet
            size = _batch_bytes(batch)
            if size > MAX_BATCH_JSON:
                raise EventError(
                    f"store_many takes at most {MAX_BATCH_JSON // 2**20} MiB of JSON in one "
                    f"call (these {len(batch)} events have {size:,} bytes): split it into "
                    "several calls, each all or nothing",
                    context={"count": len(batch), "size": size, "max_size": MAX_BATCH_JSON},
                )
        return batch

    def _parse_one(self, event: Any) -> list[NewEvent]:
        return [parse_event(self.types.prepare(event), self._settings.max_value_bytes)]

    def _cache_written(self, records: StoredBatch) -> None:
        """Our own writes enter the tail cache (in position order, see ``_tail``)."""
        if not records.inserted or not self.tail_cache.enabled:
            return
        if not self.tail_cache.add_own(records.prev_tail, records.inserted) and self._feed:
            # Its notification went by before the cache knew it needed a read: one more,
            # from the feed's connection (a key of its own, which no store's NOTIFY
            # cancels).
            position = records.inserted[-1].position
            payload = {"topic": "events", "position": position, "writer": self._writer}
            self._feed.notify_later(self._writer + "/again", time.monotonic(), payload)

    def _append_call(
        self, units: list[_Unit], now: datetime, lone: bool = True
    ) -> tuple[str, dict[str, Any]]:
        """PostgreSQL: the statement appending ``units`` and its parameters: a lone
        event's own statement (``lone``, see ``_store._append_one``), or the function."""
        fresh = [[batch[i] for i in known.fresh(len(batch))] for batch, known in units]
        at = self._sql.codec.ts(now)
        if lone and len(fresh) == 1 and len(fresh[0]) == 1:
            sql, params = self._sql.append_one_params(fresh[0][0], at, self._writer)
        else:
            sql, params = self._sql.append, self._sql.append_params(fresh, at, self._writer)
        params["notify"] = self._notify_in_statement()
        return sql, params

    @staticmethod
    def _each_alone(exc: FoundationError, units: list[Any]) -> bool:
        """Whether a group's failure may be one unit's (an id race, say), so that each
        unit runs again alone. Not when the database is away, timed out or the reply was
        lost: each unit would wait out the same limit again in turn (16 stores failing
        after 17 lock timeouts), and a group that committed before its reply was lost
        would be written twice."""
        return len(units) > 1 and not isinstance(exc, StorageUnavailableError)

    def _undecided(self, sql: str, outcome: list[Any] | FoundationError) -> bool:
        """Whether a lone stream event's statement left the answer to the function: no
        row (its expected version did not hold, as its snapshot read it) or a version
        another store took meanwhile (see ``_store._append_one``)."""
        if sql != self._sql.append_one_checked:
            return False
        return not outcome if isinstance(outcome, list) else is_stream_race(outcome)

    def _notify_in_statement(self) -> bool:
        """Whether this store's own statement sends the NOTIFY (migration 0008).

        The first store of a burst does, and then one store per ``NOTIFY_EVERY_S``; the
        others leave it to the feed, which sends one NOTIFY naming the last of them if no
        store's own NOTIFY covered it within twice that time (the end of a burst). Other
        nodes learn of a burst's events at most twice that (10 ms) later; nothing else
        changes.
        Unlocked: two calls racing here may both notify, which is only one more NOTIFY.
        """
        now = time.monotonic()
        if self._feed is None or now - self._notified_at >= self.NOTIFY_EVERY_S:
            self._notified_at = now
            return True
        return False

    def _appended(
        self, units: list[_Unit], rows: list[Any], now: datetime, notified: bool = True
    ) -> list[_Outcome]:
        outcomes: list[_Outcome] = list(appended(units, rows, now))
        last = 0
        for outcome in outcomes:
            if isinstance(outcome, StoredBatch):
                self._cache_written(outcome)
                if outcome.inserted:
                    last = max(last, outcome.inserted[-1].position)
        if last and self._feed is not None:
            if notified:
                self._feed.covered(self._writer, last)
            else:
                # Twice the interval: inside a burst the next store's own NOTIFY (due
                # after one) covers this one first, and the feed sends nothing.
                self._feed.notify_later(
                    self._writer,
                    time.monotonic() + 2 * self.NOTIFY_EVERY_S,
                    {"topic": "events", "position": last, "writer": self._writer},
                )
        return outcomes

    def _stored(self, started: int, records: list[RecordedEvent]) -> None:
        self._telemetry.execute(
            _STORE,
            {"duration": time.perf_counter_ns() - started, "count": len(records)},
            {"node": self._node},
        )
        self.wake()

    # -- get --------------------------------------------------------------------------

    def _criteria(self, criteria: Any, kwargs: Mapping[str, Any]) -> Criteria:
        return parse_criteria(criteria, kwargs, self._sql.codec.ts)

    def _read(self, criteria: Criteria) -> tuple[str, dict[str, Any]]:
        return self._sql.query(criteria), {**criteria.params, "limit": criteria.limit}

    def _got(self, started: int, count: int) -> None:
        self._telemetry.execute(
            _GET,
            {"duration": time.perf_counter_ns() - started, "count": count},
            {"node": self._node},
        )

    def _pages(self, criteria: Any, kwargs: Mapping[str, Any], batch_size: int) -> Pager:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool):
            raise EventError("batch_size must be an int", context={"batch_size": batch_size})
        if not 1 <= batch_size <= MAX_LIMIT:
            raise EventError(
                f"batch_size must be from 1 to {MAX_LIMIT}", context={"batch_size": batch_size}
            )
        merged = merge_criteria(criteria, kwargs)
        # iter exists for large results: its limit (the total) is not get()'s page maximum.
        limit = merged.get("limit")
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_VERSION
        ):
            raise EventError(
                f"criterion 'limit' of iter must be an int from 1 to {MAX_VERSION}",
                context={"criterion": "limit", "value": shown(limit)},
            )
        self._criteria({k: v for k, v in merged.items() if k != "limit"}, {})  # the rest
        return Pager(self, merged, batch_size)

    def _tail_criteria(
        self, criteria: Any, kwargs: Mapping[str, Any], start: Any
    ) -> dict[str, Any]:
        merged = merge_criteria(criteria, kwargs)
        for key in merged:
            if key not in _TAIL_KEYS:
                what = "does not apply to tail()" if key in _CRITERIA_KEYS else "is unknown"
                raise EventError(
                    f"criterion {shown(key)} {what} (tail() takes {', '.join(_TAIL_KEYS)})",
                    context={"criterion": text_of(key)},
                )
        self._criteria(criteria, kwargs)  # wrong types
        if not (
            start in ("beginning", "end")
            or (isinstance(start, int) and not isinstance(start, bool) and start >= 0)
        ):
            raise EventError(
                "tail start must be 'beginning', 'end' or a position (an int >= 0)",
                context={"start": shown(start)},
            )
        return merged

    @staticmethod
    def _tail_start(start: str | int, last_position: int) -> int:
        """The position a tail reads after: ``start`` as subscribe() takes it."""
        if start == "beginning":
            return 0
        if start == "end":
            return last_position
        return start_position(int(start), last_position)

    def _tail_page(self, merged: dict[str, Any], position: int) -> tuple[str, dict[str, Any]]:
        return self._read(
            self._criteria({**merged, "after_position": position, "limit": _TAIL_BATCH}, {})
        )

    @staticmethod
    def _tail_fault(exc: FoundationError, failing: bool) -> bool:
        """A tail's read failed (a restart, a cut connection): it reads again after its
        poll interval, as a subscription does, and says so once per outage."""
        if not failing:
            log.warning("tail() cannot read the log (%s); retrying until it answers", exc)
        return True

    # -- change feed subscriber (runs in the feed's thread) ---------------------------

    # The list is replaced, never changed in place (copy-on-write): every store wakes,
    # and reads it without taking the lock.
    def add_waker(self, waker: Callable[[], None]) -> None:
        with self._wakers_lock:
            self._wakers = [*self._wakers, waker]

    def remove_waker(self, waker: Callable[[], None]) -> None:
        with self._wakers_lock:
            wakers = list(self._wakers)
            if waker in wakers:  # equality: a bound method is a new object each access
                wakers.remove(waker)
                self._wakers = wakers

    def wake(self) -> None:
        for waker in self._wakers:
            waker()

    def bind_feed(self, feed: ChangeFeed) -> None:
        self._feed = feed

    def _cached(self, criteria: Criteria) -> tuple[list[RecordedEvent] | None, int]:
        """The tail cache's answer (None: only the database can give it), and the last
        position it was computed at. The caller then asks the database for the log's
        last position (:meth:`_fresh`): the cache is fed by this node's writes and the
        change feed, which brings other nodes' events a moment after their commit, and a
        read that follows another node's store must see it."""
        feed = self._feed
        if feed is None or not feed.connected or not self.tail_cache.enabled:
            return None, 0
        return self.tail_cache.answer_at(criteria)

    def _fresh(self, hi: int, newest: int) -> bool:
        """Whether the cache's answer, computed with the window up to ``hi``, is the
        database's: nothing was committed after ``hi`` when the log's last position was
        ``newest``, read after the answer (positions up to ``hi`` are all there)."""
        if newest <= hi:
            return True
        self.tail_cache.hits -= 1
        self.tail_cache.misses += 1
        return False

    @staticmethod
    def _position(row: tuple[Any, ...] | None) -> int:
        return 0 if row is None or row[0] is None else int(row[0])

    def on_notify(self, payload: dict[str, Any], reader: Cursor) -> None:
        position = payload.get("position")
        if payload.get("writer") == self._writer:
            # Our own store: the writer puts it in the cache and wakes the
            # subscriptions; reading it back here would double the database work of
            # every store. Unless the cache could not place it (see TailCache.add_own).
            cache = self.tail_cache
            if cache.enabled and isinstance(position, int) and cache.own_notified(position):
                self.own_catch_ups += 1
                self._catch_up(reader)
            return
        if self.tail_cache.enabled and isinstance(position, int):
            hi = self.tail_cache.hi()
            if hi is not None and (position > hi or self.tail_cache.behind()):
                self._catch_up(reader)
        self.wake()

    def poll(self, reader: Cursor) -> None:
        """SQLite: the file changed (maybe by another process): read what came after ``hi``."""
        if self.tail_cache.enabled:
            self._catch_up(reader)
        self.wake()

    def resync(self, reader: Cursor) -> None:
        if self.tail_cache.enabled:
            self._reload(reader)
        self.wake()  # notifications may have been missed: let subscriptions poll now

    def _catch_up(self, reader: Cursor) -> None:
        """Read every event after the window's ``hi`` (a complete prefix: see ``_tail``)."""
        cache = self.tail_cache
        ticket = cache.begin_read()
        while True:
            hi = cache.hi()
            if hi is None:
                return
            c = Criteria(
                shape=("after_position", "asc"),
                params={"after_position": hi},
                limit=_CATCH_UP_BATCH,
                order="asc",
            )
            sql, params = self._read(c)
            rows = reader.fetchall(sql, params)
            records = [self._sql.record(r) for r in rows]
            if records and not cache.extend(hi, records):
                continue  # our own write moved hi meanwhile: read again from there
            if len(rows) < _CATCH_UP_BATCH:
                cache.end_read(ticket)
                return

    def _reload(self, reader: Cursor) -> None:
        """Drop the window and read the newest ``size`` events again."""
        cache = self.tail_cache
        ticket = cache.begin_read()
        cache.invalidate()
        newest: list[RecordedEvent] = []
        before: int | None = None
        while len(newest) < cache.size:
            params: dict[str, Any] = {}
            shape: tuple[Any, ...] = ("desc",)
            if before is not None:
                params["before_position"] = before
                shape = ("before_position", "desc")
            size = min(MAX_LIMIT, cache.size - len(newest))
            sql, bound = self._read(Criteria(shape=shape, params=params, limit=size, order="desc"))
            rows = reader.fetchall(sql, bound)
            newest += [self._sql.record(r) for r in rows]
            if len(rows) < size:
                cache.reset(newest, complete=True)
                cache.end_read(ticket)
                return
            before = newest[-1].position
        cache.reset(newest, complete=False)
        cache.end_read(ticket)


def _unit_json_of(event: NewEvent) -> int:
    return len(event.data_text) + len(event.metadata_text)


def _batch_bytes(batch: list[NewEvent]) -> int:
    """The batch's JSON in UTF-8 bytes, or a smaller count when that is surely under
    MAX_BATCH_JSON (a character is 1 to 4 bytes: small batches are not encoded)."""
    chars = sum(map(_unit_json_of, batch))
    if chars * 4 <= MAX_BATCH_JSON:
        return chars
    return sum(len(e.data_text.encode()) + len(e.metadata_text.encode()) for e in batch)


def unit_json(unit: _Unit) -> int:
    """A group commit unit's weight: the JSON it sends (see MAX_BATCH_JSON)."""
    return sum(map(_unit_json_of, unit[0]))


def _ids_given(batch: list[NewEvent]) -> bool:
    return any(e.id_given for e in batch)


def _now() -> datetime:
    return datetime.now(UTC)


def _callable(handler: Any, *, sync: bool = False) -> Callable[[RecordedEvent], Any]:
    if not callable(handler):
        raise EventError(
            "a subscription handler must be callable", context={"type": type(handler).__name__}
        )
    if sync and is_async_callable(handler):
        # Its coroutine would never run, and every event would be checkpointed unhandled.
        raise EventError(
            "an async def handler needs AsyncFoundation: Foundation runs handlers on a"
            " thread and calls plain functions",
            context={"handler": shown(handler)},
        )
    return handler  # type: ignore[no-any-return]


def is_async_callable(fn: Any) -> bool:
    """``async def`` functions, their partials, and objects whose ``__call__`` is one."""
    call = getattr(type(fn), "__call__", None)  # noqa: B004 (the method, not a test)
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(call)


def _check_id_arg(name: str, value: Any) -> None:
    # None would mean "no criterion": every stream, the whole log.
    if not isinstance(value, str):
        raise EventError(f"{name} must be a string", context={name: shown(value)})
    _text(name, value)  # and text the database takes (PostgreSQL's refuses a NUL)


def _correlation_arg(value: Any) -> str:
    """``correlation_chain``'s argument: text, or a UUID as ``store`` takes it."""
    if isinstance(value, uuid.UUID):
        return str(value)
    _check_id_arg("correlation_id", value)
    return value  # type: ignore[no-any-return]


def _check_version_arg(from_version: Any) -> None:
    if (
        not isinstance(from_version, int)
        or isinstance(from_version, bool)
        or not 0 <= from_version <= MAX_VERSION
    ):
        raise EventError(
            f"from_version must be an int from 0 to {MAX_VERSION}",
            context={"from_version": shown(from_version)},
        )
