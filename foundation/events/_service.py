"""The event log's sync face: :class:`Events` (subscriptions run in threads). What both
faces share, and how ``store`` is written once for both: :mod:`._base`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import (
    Callable,
    Generator,
    Iterator,
    Mapping,
)
from typing import Any
from uuid import UUID

from foundation.database.sync import SyncDatabase
from foundation.errors import FoundationError, StorageUnavailableError
from foundation.events._base import (
    _GROUP_UNITS,
    MAX_BATCH_JSON,
    _callable,
    _check_id_arg,
    _check_version_arg,
    _correlation_arg,
    _EventsBase,
    _ids_given,
    _now,
    _Outcome,
    _Unit,
    unit_json,
)
from foundation.events._group import GroupCommit
from foundation.events._model import (
    NewEvent,
    RecordedEvent,
)
from foundation.events._plan import (
    NO_IDS,
    Pager,
    StoredBatch,
    drive,
    known_ids,
    may_be_own_retry,
    needs_transaction,
    sqlite_store,
)
from foundation.events._store import EventSQL
from foundation.events._subscription import SubscriptionOptions, closed_error, interval_ms
from foundation.events._subscription_sync import Subscription
from foundation.settings import Settings
from foundation.telemetry import Telemetry

__all__ = ["Events"]


class Events(_EventsBase):
    """The append-only event log, backed by ``foundation_events``."""

    def __init__(
        self,
        db: SyncDatabase,
        sql: EventSQL,
        settings: Settings,
        telemetry: Telemetry,
    ) -> None:
        super().__init__(sql, settings, telemetry)
        self._db = db
        self._subscriptions: list[Subscription] = []
        # Guards the list, ``closed`` and the count of subscribe() calls under way: a
        # subscribe either sees ``closed`` first and starts nothing, or is in the list
        # close() takes, which waits for those under way (a start is a few statements).
        # Held only to read or change them, never across a statement.
        self._subscribing = threading.Condition(threading.Lock())
        self._starts = 0
        self.group_commit: GroupCommit[_Unit, StoredBatch] = GroupCommit(
            self._append_group, _GROUP_UNITS, weigh=unit_json, max_weight=MAX_BATCH_JSON
        )

    def _append_group(self, units: list[_Unit], lone: bool = True) -> list[_Outcome]:
        now = _now()
        sql, params = self._append_call(units, now, lone)
        try:
            rows = self._db.fetchall(sql, params)
        except FoundationError as exc:
            if self._undecided(sql, exc):
                return self._append_group(units, lone=False)
            if not self._each_alone(exc, units):
                return [exc] * len(units)
            # One unit's failure (an id race) must not be the others': each alone.
            return [self._append_group([unit])[0] for unit in units]
        if self._undecided(sql, rows):
            return self._append_group(units, lone=False)
        return self._appended(units, rows, now, params["notify"])

    def _store(self, batch: list[NewEvent]) -> StoredBatch:
        if self._sql.backend == "sqlite":
            in_tx = needs_transaction(self._sql, batch)
            plan = sqlite_store(self._sql, batch, _now(), in_tx)
            if in_tx:
                with self._db.transaction() as tx:
                    records: StoredBatch = drive(tx, plan)
            else:
                records = drive(self._db, plan)
            self._cache_written(records)
            return records
        failed: FoundationError | None = None
        found = -1  # of the batch's ids, how many the last look-up found recorded
        while True:
            known = drive(self._db, known_ids(self._sql, batch)) if _ids_given(batch) else NO_IDS
            if not known.fresh(len(batch)):
                return self._appended([(batch, known)], [], _now())[0]  # type: ignore[return-value]
            if failed is not None and len(known.records) <= found:
                # No more of ours recorded since the last try: the conflict was another
                # writer's. (Each try that goes on finds more: at most one per event.)
                raise failed
            found = len(known.records)
            try:
                return self.group_commit.submit((batch, known))
            except FoundationError as exc:
                # Given ids recorded by another writer meanwhile (the same store, retried
                # while the first was in flight, say, or other retries overlapping it in
                # a chain: [A, B], [B, C], [C]): look them up again.
                if not may_be_own_retry(exc, batch):
                    raise
                failed = exc

    def store(self, event: Any) -> RecordedEvent:
        """Append one event (a dict, pydantic model or dataclass); returns its record."""
        started = time.perf_counter_ns()
        records = self._store(self._parse_one(event))
        self._stored(started, records)
        return records[0]

    def store_many(self, events: list[Any]) -> list[RecordedEvent]:
        """Append several events in one transaction: all are recorded, or none."""
        started = time.perf_counter_ns()
        batch = self._parse(events)
        if not batch:
            return []
        records = self._store(batch)
        self._stored(started, records)
        return records

    def get(self, criteria: Mapping[str, Any] | None = None, **kwargs: Any) -> list[RecordedEvent]:
        """Events matching ``criteria`` (or keyword arguments), by position.

        Recent events are answered from the hot tail cache when the answer lies entirely
        in it (see :mod:`foundation.events._tail`); their ``data`` is then read-only.
        ``data`` is always the JSON the log holds: :meth:`decode` gives a typed event's
        model, upcast to its current version.
        """
        started = time.perf_counter_ns()
        c = self._criteria(criteria, kwargs)
        records, hi = self._cached(c)
        if records is not None and not self._fresh(hi, self.last_position()):
            records = None
        if records is None:
            sql, params = self._read(c)
            records = [self._sql.record(r) for r in self._db.fetchall(sql, params)]
        self._got(started, len(records))
        return records

    def iter(
        self, criteria: Mapping[str, Any] | None = None, batch_size: int = 500, **kwargs: Any
    ) -> Iterator[RecordedEvent]:
        """Every matching event, fetched ``batch_size`` at a time (keyset pagination)."""
        pager = self._pages(criteria, kwargs, batch_size)
        return self._iter(pager)

    def _iter(self, pager: Pager) -> Iterator[RecordedEvent]:
        while not pager.done:
            started = time.perf_counter_ns()  # each page is a get (read_stream's too)
            sql, params = pager.next_page()
            records = [self._sql.record(r) for r in self._db.fetchall(sql, params)]
            pager.advance(records, params["limit"])
            self._got(started, len(records))
            yield from records

    def read_stream(self, stream_id: str, from_version: int = 0) -> list[RecordedEvent]:
        """The events of one stream with ``stream_version >= from_version``, in order."""
        _check_version_arg(from_version)
        _check_id_arg("stream_id", stream_id)
        after = -1  # the whole stream: every version is >= 1
        if from_version > 1:  # from that version's event on, found by the stream's index
            params = {"stream_id": stream_id, "from_version": from_version}
            first = self._db.fetchone(self._sql.stream_from, params)
            if first is None or first[0] is None:
                return []
            after = int(first[0]) - 1
        return [
            e
            for e in self.iter(stream_id=stream_id, after_position=after if after >= 0 else None)
            if e.stream_version is not None and e.stream_version >= from_version
        ]

    def correlation_chain(self, correlation_id: str | UUID) -> list[RecordedEvent]:
        """Every event carrying ``correlation_id``, in log order."""
        correlation_id = _correlation_arg(correlation_id)
        return list(self.iter(correlation_id=correlation_id))

    def tail(
        self,
        criteria: Mapping[str, Any] | None = None,
        *,
        start: str | int = "end",
        poll_interval_ms: int = 500,
        **kwargs: Any,
    ) -> Generator[RecordedEvent, None, None]:
        """Follow the log live: yields each new event (after ``start``: ``"end"``,
        ``"beginning"`` or a position) as it commits.

        Not durable (see :meth:`subscribe`); it blocks between events and ends when the
        caller stops iterating or the instance is closed.
        """
        merged = self._tail_criteria(criteria, kwargs, start)
        interval = interval_ms("poll_interval_ms", poll_interval_ms) / 1000  # before a read
        # Taken now, not at the first next(): events stored after tail() returns count.
        last = self.last_position()
        position = self._tail_start(start, last)
        return self._tail(merged, position, interval)

    def _tail(
        self, merged: dict[str, Any], position: int, interval: float
    ) -> Generator[RecordedEvent, None, None]:
        wake = threading.Event()
        self.add_waker(wake.set)
        failing = False
        try:
            while not self.closed and not self._db._closed:
                wake.clear()
                sql, params = self._tail_page(merged, position)
                try:
                    rows = self._db.fetchall(sql, params)
                except StorageUnavailableError as exc:  # a restart, a cut connection
                    if self._db._closed:
                        return
                    failing = self._tail_fault(exc, failing)
                    wake.wait(interval)
                    continue
                failing = False
                for row in rows:
                    record = self._sql.record(row)
                    position = record.position
                    yield record
                if not rows:
                    wake.wait(interval)
        finally:
            self.remove_waker(wake.set)

    def last_position(self) -> int:
        """The position of the newest event (0 for an empty log)."""
        return self._position(self._db.fetchone(self._sql.newest))

    def subscribe(
        self,
        name: str,
        handler: Callable[[RecordedEvent], Any],
        types: str | list[str] | None = None,
        start: str | int = "beginning",
        **options: Any,
    ) -> Subscription:
        """Run ``handler`` on every event (durably, at least once) in a thread.

        Once the instance's close has begun it raises ``storage_unavailable``; one
        under way when it begins is stopped by it, with the others.
        """
        options_ = SubscriptionOptions.make(name, types, start, options)
        sub = Subscription(self, self._db, self._sql, options_).bind(_callable(handler, sync=True))
        with self._subscribing:
            if self.closed:
                raise closed_error(options_.name)
            self._starts += 1
        try:
            sub.start()
            with self._subscribing:
                # Listed even when close() began meanwhile: it waits for this call, then
                # stops it with the others (its handler may be the one closing: stopped
                # here, this call would wait for that handler, which waits for this call).
                # The ended ones go (each holds its handler and all it refers to).
                self._subscriptions = [s for s in self._subscriptions if not s.ended]
                self._subscriptions.append(sub)
        finally:
            with self._subscribing:
                self._starts -= 1
                if self._starts == 0:
                    self._subscribing.notify_all()
        return sub

    def close(self) -> None:
        """Stop every subscription (each as ``stop()``, waiting up to 10 s for a running
        handler; one whose handler called this, at once: see
        :meth:`Subscription._stop_for_close`) and end every live :meth:`tail`. From here
        on ``subscribe()`` raises ``storage_unavailable``. ``Foundation.close`` calls it
        before the database closes."""
        with self._subscribing:
            self.closed = True
            # A subscribe under way lists its subscription once started: waited for, so
            # that its name is released before the database closes.
            self._subscribing.wait_for(lambda: self._starts == 0)
            subs, self._subscriptions = self._subscriptions, []
        self.wake()  # tails waiting for events end now, not at their next poll
        for sub in subs:
            sub._stop_for_close()
