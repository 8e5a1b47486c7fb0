"""The event log's async face: :class:`AsyncEvents` (subscriptions run as tasks). What
both faces share: :mod:`._base`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Mapping,
)
from typing import Any
from uuid import UUID

from foundation.database.aio import AsyncDatabase, finish
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
from foundation.events._group import AsyncGroupCommit
from foundation.events._model import (
    NewEvent,
    RecordedEvent,
)
from foundation.events._plan import (
    NO_IDS,
    Pager,
    StoredBatch,
    adrive,
    known_ids,
    may_be_own_retry,
    needs_transaction,
    sqlite_store,
)
from foundation.events._store import EventSQL
from foundation.events._subscription import SubscriptionOptions, closed_error, interval_ms
from foundation.events._subscription_aio import AsyncSubscription
from foundation.settings import Settings
from foundation.telemetry import Telemetry

__all__ = ["AsyncEvents"]


class AsyncEvents(_EventsBase):
    """The awaitable twin of :class:`Events`."""

    def __init__(
        self,
        db: AsyncDatabase,
        sql: EventSQL,
        settings: Settings,
        telemetry: Telemetry,
    ) -> None:
        super().__init__(sql, settings, telemetry)
        self._db = db
        self._subscriptions: list[AsyncSubscription] = []
        # The subscribe() calls under way, each done when it has put its subscription in
        # the list (see close()).
        self._starts: set[asyncio.Future[None]] = set()
        self.group_commit: AsyncGroupCommit[_Unit, StoredBatch] = AsyncGroupCommit(
            self._append_group, _GROUP_UNITS, weigh=unit_json, max_weight=MAX_BATCH_JSON
        )

    async def _append_group(self, units: list[_Unit], lone: bool = True) -> list[_Outcome]:
        now = _now()
        sql, params = self._append_call(units, now, lone)
        try:
            rows = await self._db.fetchall(sql, params)
        except FoundationError as exc:
            if self._undecided(sql, exc):
                return await self._append_group(units, lone=False)
            if not self._each_alone(exc, units):
                return [exc] * len(units)
            return [(await self._append_group([unit]))[0] for unit in units]
        if self._undecided(sql, rows):
            return await self._append_group(units, lone=False)
        return self._appended(units, rows, now, params["notify"])

    async def _store_sqlite(self, batch: list[NewEvent]) -> StoredBatch:
        in_tx = needs_transaction(self._sql, batch)
        plan = sqlite_store(self._sql, batch, _now(), in_tx)
        if in_tx:
            async with self._db.transaction() as tx:
                records: StoredBatch = await adrive(tx, plan)
        else:
            records = await adrive(self._db, plan)  # type: ignore[arg-type]
        self._cache_written(records)
        return records

    async def _store(self, batch: list[NewEvent]) -> StoredBatch:
        if self._sql.backend == "sqlite":
            # Whole, even if the caller is cancelled meanwhile (aiosqlite runs a statement
            # sent anyway): what it wrote is in the tail cache when the cancellation goes on.
            return await finish(self._store_sqlite(batch))
        failed: FoundationError | None = None
        found = -1
        while True:
            known = (
                await adrive(self._db, known_ids(self._sql, batch))  # type: ignore[arg-type]
                if _ids_given(batch)
                else NO_IDS
            )
            if not known.fresh(len(batch)):
                return self._appended([(batch, known)], [], _now())[0]  # type: ignore[return-value]
            if failed is not None and len(known.records) <= found:
                raise failed  # as Events._store
            found = len(known.records)
            try:
                return await self.group_commit.submit((batch, known))
            except FoundationError as exc:
                if not may_be_own_retry(exc, batch):
                    raise
                failed = exc

    async def store(self, event: Any) -> RecordedEvent:
        """Append one event (a dict, pydantic model or dataclass); returns its record.

        As :meth:`Events.store`, awaited (``event_error``, ``concurrency_error``).
        A task cancelled while it awaits the store gets its ``CancelledError`` once the
        store is either not written at all (still queued for a group commit, on
        PostgreSQL) or written whole and in this node's tail cache: never half (see
        "Cancelled stores" in docs/events.md). A retry with the same id tells which.
        """
        started = time.perf_counter_ns()
        records = await self._store(self._parse_one(event))
        self._stored(started, records)
        return records[0]

    async def store_many(self, events: list[Any]) -> list[RecordedEvent]:
        """Append several events in one transaction: all are recorded, or none.

        As :meth:`Events.store_many`, awaited; cancelled, it is written whole or not at
        all, as :meth:`store` is.
        """
        started = time.perf_counter_ns()
        batch = self._parse(events)
        if not batch:
            return []
        records = await self._store(batch)
        self._stored(started, records)
        return records

    async def get(
        self, criteria: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> list[RecordedEvent]:
        """Events matching ``criteria`` (or keyword arguments), by position.

        As :meth:`Events.get`, awaited: answered from the tail cache (read-only ``data``)
        when the answer lies entirely in it, else from the database.
        """
        started = time.perf_counter_ns()
        c = self._criteria(criteria, kwargs)
        records, hi = self._cached(c)
        if records is not None and not self._fresh(hi, await self.last_position()):
            records = None
        if records is None:
            sql, params = self._read(c)
            records = [self._sql.record(r) for r in await self._db.fetchall(sql, params)]
        self._got(started, len(records))
        return records

    def iter(
        self, criteria: Mapping[str, Any] | None = None, batch_size: int = 500, **kwargs: Any
    ) -> AsyncIterator[RecordedEvent]:
        """``async for event in afdn.events.iter(...)`` (validated when called)."""
        return self._iter(self._pages(criteria, kwargs, batch_size))

    async def _iter(self, pager: Pager) -> AsyncIterator[RecordedEvent]:
        while not pager.done:
            started = time.perf_counter_ns()  # each page is a get (read_stream's too)
            sql, params = pager.next_page()
            records = [self._sql.record(r) for r in await self._db.fetchall(sql, params)]
            pager.advance(records, params["limit"])
            self._got(started, len(records))
            for record in records:
                yield record

    async def read_stream(self, stream_id: str, from_version: int = 0) -> list[RecordedEvent]:
        """The events of one stream with ``stream_version >= from_version``, in order. As
        :meth:`Events.read_stream`, awaited."""
        _check_version_arg(from_version)
        _check_id_arg("stream_id", stream_id)
        after = -1  # as Events.read_stream
        if from_version > 1:
            params = {"stream_id": stream_id, "from_version": from_version}
            first = await self._db.fetchone(self._sql.stream_from, params)
            if first is None or first[0] is None:
                return []
            after = int(first[0]) - 1
        return [
            e
            async for e in self.iter(
                stream_id=stream_id, after_position=after if after >= 0 else None
            )
            if e.stream_version is not None and e.stream_version >= from_version
        ]

    async def correlation_chain(self, correlation_id: str | UUID) -> list[RecordedEvent]:
        """Every event carrying ``correlation_id``, in log order. As
        :meth:`Events.correlation_chain`, awaited."""
        correlation_id = _correlation_arg(correlation_id)
        return [e async for e in self.iter(correlation_id=correlation_id)]

    async def tail(
        self,
        criteria: Mapping[str, Any] | None = None,
        *,
        start: str | int = "end",
        poll_interval_ms: int = 500,
        **kwargs: Any,
    ) -> AsyncGenerator[RecordedEvent, None]:
        """``async for event in await afdn.events.tail(type="x")``: as :meth:`Events.tail`."""
        merged = self._tail_criteria(criteria, kwargs, start)
        interval = interval_ms("poll_interval_ms", poll_interval_ms) / 1000  # before a read
        last = await self.last_position()
        position = self._tail_start(start, last)
        return self._tail(merged, position, interval)

    async def _tail(
        self, merged: dict[str, Any], position: int, interval: float
    ) -> AsyncGenerator[RecordedEvent, None]:
        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def waker() -> None:  # called from the feed's thread or the loop's own
            if not loop.is_closed():
                loop.call_soon_threadsafe(wake.set)

        self.add_waker(waker)
        failing = False
        try:
            while not self.closed and not self._db._closed:
                wake.clear()
                sql, params = self._tail_page(merged, position)
                try:
                    rows = await self._db.fetchall(sql, params)
                except StorageUnavailableError as exc:  # a restart, a cut connection
                    if self._db._closed:
                        return
                    failing = self._tail_fault(exc, failing)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), interval)
                    continue
                failing = False
                for row in rows:
                    record = self._sql.record(row)
                    position = record.position
                    yield record
                if not rows:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), interval)
        finally:
            self.remove_waker(waker)

    async def last_position(self) -> int:
        """The position of the newest event (0 for an empty log). As
        :meth:`Events.last_position`, awaited."""
        return self._position(await self._db.fetchone(self._sql.newest))

    async def subscribe(
        self,
        name: str,
        handler: Callable[[RecordedEvent], Any],
        types: str | list[str] | None = None,
        start: str | int = "beginning",
        **options: Any,
    ) -> AsyncSubscription:
        """Run ``handler`` (plain or ``async def``) on every event in an asyncio task.

        As :meth:`Events.subscribe`: ``storage_unavailable`` once the close has begun.
        """
        options_ = SubscriptionOptions.make(name, types, start, options)
        sub = AsyncSubscription(self, self._db, self._sql, options_).bind(_callable(handler))
        if self.closed:
            raise closed_error(options_.name)
        done = asyncio.get_running_loop().create_future()
        self._starts.add(done)
        try:
            try:
                await finish(sub.start())
            except asyncio.CancelledError:
                # A cancelled subscribe holds nothing: a claim that ran is given back (else
                # the name stayed taken for its lease, by a subscription nobody could stop).
                await finish(sub.stop())
                raise
            # Listed even when close() began meanwhile: it waits for this call, then
            # stops it with the others (see Events.subscribe).
            # The ended ones go (each holds its handler and all it refers to).
            self._subscriptions = [s for s in self._subscriptions if not s.ended]
            self._subscriptions.append(sub)
        finally:
            self._starts.discard(done)
            done.set_result(None)
        return sub

    async def close(self) -> None:
        """Stop every subscription and end every live :meth:`tail`. As
        :meth:`Events.close`, awaited: an ``async`` handler still running after 10 s is
        cancelled (see :meth:`AsyncSubscription.stop`); one that awaits this close (or a
        task it started does) gives up its name at once, as a sync one does."""
        self.closed = True
        self.wake()  # tails waiting for events end now, not at their next poll
        # A subscribe under way lists its subscription once started: waited for, so
        # that its name is released before the database closes. One of another event
        # loop (a close at the end of another asyncio.run) cannot be awaited here, and
        # its loop, its task with it, is gone.
        loop = asyncio.get_running_loop()
        starts = [f for f in self._starts if f.get_loop() is loop]
        if starts:
            await asyncio.wait(starts)
        # Each leaves the list once stopped (none joins it now: subscribe raises): a close
        # cut short (its loop closed under it) leaves the rest to the next close.
        for sub in list(self._subscriptions):
            await sub._stop_for_close()
            with contextlib.suppress(ValueError):
                self._subscriptions.remove(sub)
