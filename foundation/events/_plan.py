"""The statement plan of ``store``, and keyset pagination: shared by both faces.

``store_steps`` is a generator: it yields ``(method, sql, params)`` and receives each
result, so the sync and async faces run the very same logic on their own transaction
(:func:`drive`, :func:`adrive`) without a thread hop.
"""

from __future__ import annotations

import json
from collections.abc import Generator
from datetime import datetime
from typing import TYPE_CHECKING, Any

from foundation.database.aio import AsyncCursor
from foundation.database.sync import Cursor
from foundation.errors import ConcurrencyError, EventError
from foundation.events._model import NewEvent, RecordedEvent
from foundation.events._store import EventSQL

if TYPE_CHECKING:
    from foundation.events._service import _EventsBase

__all__ = ["Pager", "Step", "StoredBatch", "adrive", "check_expected", "drive", "store_steps"]

Step = tuple[str, str, dict[str, Any] | None]


class StoredBatch(list[RecordedEvent]):
    """The records of one store (retries included), with what the tail cache needs.

    ``inserted``: the records this transaction wrote; ``prev_tail``: the log's last
    position just before the first of them (None when nothing was written).
    """

    inserted: list[RecordedEvent]
    prev_tail: int | None


def check_expected(event: NewEvent, current: int) -> None:
    expected = event.expected_version
    if expected == "any":
        return
    ok = (
        (expected == "no_stream" and current == 0)
        or (expected == "exists" and current > 0)
        or (isinstance(expected, int) and expected == current)
    )
    if not ok:
        raise ConcurrencyError(
            f"stream {event.stream_id!r} is at version {current}, "
            f"but the writer expected {expected!r}; nothing was written",
            context={
                "stream_id": event.stream_id,
                "expected": expected,
                "actual": current,
                "id": str(event.id),
            },
        )


def store_steps(
    sql: EventSQL, batch: list[NewEvent], now: datetime
) -> Generator[Step, Any, list[RecordedEvent]]:
    """The statements of one store transaction; raises to roll it back."""
    if sql.lock is not None:
        yield ("fetchone", sql.lock, None)  # see _store: positions follow commit order
    at = sql.codec.ts(now)
    versions: dict[str, int] = {}
    out = StoredBatch()
    out.inserted = []
    out.prev_tail = None
    last = 0
    for event in batch:
        if event.id_given:
            row = yield ("fetchone", sql.by_id, {"id": str(event.id)})
            if row is not None:
                existing = sql.record(row)
                if not event.same_content(existing):
                    raise EventError(
                        f"event {event.id} is already recorded with different content",
                        context={"id": str(event.id), "position": existing.position},
                    )
                out.append(existing)  # a retry: the original record, nothing written
                continue
        version: int | None = None
        if event.stream_id is not None:
            current = versions.get(event.stream_id)
            if current is None:
                row = yield ("fetchone", sql.stream_version, {"stream_id": event.stream_id})
                current = 0 if row is None or row[0] is None else int(row[0])
            check_expected(event, current)
            version = versions[event.stream_id] = current + 1
        row = yield ("fetchone", sql.insert, sql.insert_params(event, version, at))
        assert row is not None
        last = int(row[0])
        if out.prev_tail is None:
            # PostgreSQL returns the tail before this row; on SQLite (writers serialized,
            # rowid = max + 1, append-only) it is the position just below.
            out.prev_tail = int(row[1] or 0) if len(row) > 1 else last - 1
        record = RecordedEvent(
            id=event.id,
            position=last,
            stream_id=event.stream_id,
            stream_version=version,
            type=event.type,
            data=event.data,
            metadata=event.metadata,
            correlation_id=event.correlation_id,
            causation_id=event.causation_id,
            recorded_at=now,
        )
        out.append(record)
        out.inserted.append(record)
    if last and sql.notify is not None:
        # Delivered at commit only, so a woken subscriber finds the events there.
        payload = json.dumps({"topic": "events", "position": last})
        yield ("fetchone", sql.notify, {"payload": payload})
    return out


class Pager:
    """Keyset pagination over criteria: each page continues after the last position."""

    def __init__(self, base: _EventsBase, merged: dict[str, Any], batch_size: int) -> None:
        self._base = base
        self._merged = merged
        self._desc = merged.get("order", "asc") == "desc"
        self._remaining: int | None = merged.get("limit")
        self._batch = batch_size
        self.done = False

    def next_page(self) -> tuple[str, dict[str, Any]]:
        size = self._batch if self._remaining is None else min(self._batch, self._remaining)
        c = self._base._criteria({**self._merged, "limit": size}, {})
        return self._base._read(c)

    def advance(self, records: list[RecordedEvent], size: int) -> None:
        if records:
            key = "before_position" if self._desc else "after_position"
            self._merged[key] = records[-1].position
        if self._remaining is not None:
            self._remaining -= len(records)
        self.done = len(records) < size or (self._remaining is not None and self._remaining <= 0)


def drive(tx: Cursor, gen: Generator[Step, Any, list[RecordedEvent]]) -> list[RecordedEvent]:
    try:
        op, sql, params = next(gen)
        while True:
            op, sql, params = gen.send(getattr(tx, op)(sql, params))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def adrive(
    tx: AsyncCursor, gen: Generator[Step, Any, list[RecordedEvent]]
) -> list[RecordedEvent]:
    try:
        op, sql, params = next(gen)
        while True:
            op, sql, params = gen.send(await getattr(tx, op)(sql, params))
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
