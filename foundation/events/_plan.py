"""The statement plan of ``store``, and keyset pagination: shared by both faces.

A plan is a generator: it yields ``(method, sql, params)`` and receives each result, so
the sync and async faces run the very same logic on their own connection or transaction
(:func:`drive`, :func:`adrive`) without a thread hop.

What one store costs:

* PostgreSQL: one statement, ``foundation_append_events`` (migration 0007), in its own
  implicit transaction; the function takes the writers' lock, checks and appends, and
  notifies. Ids the caller gave are looked up first (a retry returns the original record).
  Several callers' stores can share one call (:mod:`._group`).
* SQLite: one event is one ``INSERT`` in autocommit (its stream version and
  expected-version check inside the statement); several events, or an id the caller
  gave, run in one ``BEGIN IMMEDIATE`` transaction: ids looked up, each stream's version
  read once, one ``executemany``.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from foundation._json import same_json
from foundation.database.aio import AsyncCursor
from foundation.database.sync import Cursor
from foundation.errors import ConcurrencyError, EventError, FoundationError
from foundation.events._model import NewEvent, RecordedEvent
from foundation.events._store import EventSQL, new_record

if TYPE_CHECKING:
    from foundation.events._base import _EventsBase

__all__ = [
    "NO_IDS",
    "Known",
    "Pager",
    "Step",
    "StoredBatch",
    "adrive",
    "appended",
    "concurrency_error",
    "drive",
    "is_id_race",
    "known_ids",
    "may_be_own_retry",
    "needs_transaction",
    "sqlite_store",
]

Step = tuple[str, str, Any]


@dataclass
class Known:
    """What ``known_ids`` found: events of the batch that are not to be written again."""

    records: dict[int, RecordedEvent] = field(default_factory=dict)  # index -> original
    repeats: dict[int, int] = field(default_factory=dict)  # index -> its first occurrence

    def fresh(self, size: int) -> list[int]:
        """The batch indexes to write."""
        if not self.records and not self.repeats:
            return list(range(size))
        return [i for i in range(size) if i not in self.records and i not in self.repeats]


class StoredBatch(list[RecordedEvent]):
    """The records of one store (retries included), with what the tail cache needs.

    ``inserted``: the records this call wrote; ``prev_tail``: the log's last position
    just before the first of them (None when nothing was written, or when it is not
    known: see ``_store._append_one``).
    """

    inserted: list[RecordedEvent]
    prev_tail: int | None


def _index(batch: Sequence[NewEvent], index: int) -> dict[str, int]:
    """``{"index": index}`` for an event of a store_many of several, as an event refused
    by validation is named (``_EventsBase._parse``): its id may be one generated here,
    and one stream may appear many times in a batch. Nothing for a lone event."""
    return {"index": index} if len(batch) > 1 else {}


def concurrency_error(
    event: NewEvent, actual: int, batch: Sequence[NewEvent] = (), index: int = 0
) -> ConcurrencyError:
    """``event`` (``batch[index]``) expected another version of its stream than ``actual``."""
    return ConcurrencyError(
        f"stream {event.stream_id!r} is at version {actual}, "
        f"but the writer expected {event.expected_version!r}; nothing was written",
        context={
            "stream_id": event.stream_id,
            "expected": event.expected_version,
            "actual": actual,
            "id": str(event.id),
            **_index(batch, index),
        },
    )


def _expected_holds(event: NewEvent, current: int) -> bool:
    expected = event.expected_version
    return (
        expected == "any"
        or (expected == "no_stream" and current == 0)
        or (expected == "exists" and current > 0)
        or (isinstance(expected, int) and expected == current)
    )


def is_id_race(exc: FoundationError) -> bool:
    """A given id that another writer recorded between our lookup and our insert."""
    return exc.context.get("sqlstate") == "23505" and "uq_foundation_events_id" in str(exc)


def may_be_own_retry(exc: FoundationError, batch: Sequence[NewEvent]) -> bool:
    """Whether a store that failed with ``exc`` may have lost to another store of the same
    events (a client's retry overlapping its original), so that its ids are worth
    looking up again: an id race, or a stream version taken by a writer that may have
    written these very ids (the version is checked before the id)."""
    if is_id_race(exc):
        return True
    return isinstance(exc, ConcurrencyError) and any(e.id_given for e in batch)


def is_stream_race(exc: FoundationError) -> bool:
    """A stream version that another writer recorded between our read and our insert."""
    return exc.context.get("sqlstate") == "23505" and "uq_foundation_events_stream" in str(exc)


def needs_transaction(sql: EventSQL, batch: Sequence[NewEvent]) -> bool:
    """SQLite runs one fresh event as a single autocommit statement, else a transaction."""
    return sql.backend == "sqlite" and (len(batch) > 1 or batch[0].id_given)


def _same_new(a: NewEvent, b: NewEvent) -> bool:
    return (
        (a.type, a.stream_id, a.correlation_id, a.causation_id)
        == (b.type, b.stream_id, b.correlation_id, b.causation_id)
        and same_json(a.data, b.data)
        and same_json(a.metadata, b.metadata)
    )


NO_IDS = Known()  # nothing known: shared, never written to


def known_ids(sql: EventSQL, batch: Sequence[NewEvent]) -> Generator[Step, Any, Known]:
    """Look up the ids the caller gave; raise if one is recorded with other content.

    An id given twice in one batch must describe the same event both times; the second
    is then answered with the first's record.
    """
    given: dict[Any, int] = {}
    known = Known()
    for index, event in enumerate(batch):
        if not event.id_given:
            continue
        first = given.get(event.id)
        if first is None:
            given[event.id] = index
        elif not _same_new(batch[first], event):
            raise EventError(
                f"event {event.id} appears twice in one batch with different content",
                context={"id": str(event.id), **_index(batch, index)},  # the second
            )
        else:
            known.repeats[index] = first
    if not given:
        return known
    conflicts: dict[int, tuple[RecordedEvent, list[str]]] = {}
    for statement, params in sql.id_chunks([str(i) for i in given]):
        rows = yield ("fetchall", statement, params)
        for row in rows:
            existing = sql.record(row)
            index = given[existing.id]
            differ = batch[index].differences(existing)
            if differ:
                conflicts[index] = (existing, differ)
            known.records[index] = existing
    if conflicts:
        # The first of the batch, whatever order the rows came in (it differs between
        # the backends): every setup names the same event.
        index = min(conflicts)
        existing, differ = conflicts[index]
        raise EventError(
            f"event {existing.id} is already recorded with different content "
            f"({', '.join(differ)}): a retry must repeat the event as it was stored",
            context={
                "id": str(existing.id),
                "position": existing.position,
                "fields": differ,
                **_index(batch, index),  # the first with this id (repeats are equal)
            },
        )
    return known


def _recorded(e: NewEvent, position: int, version: int | None, now: datetime) -> RecordedEvent:
    return new_record(
        e.id,
        position,
        e.stream_id,
        version,
        e.type,
        e.data,
        e.metadata,
        e.correlation_id,
        e.causation_id,
        now,
    )


def _assemble(
    batch: Sequence[NewEvent],
    known: Known,
    fresh: list[int],
    written: Sequence[tuple[int, int | None]],
    now: datetime,
    prev_tail: int | None,
) -> StoredBatch:
    """The records in batch order: originals for known ids, new records for the rest."""
    records: list[RecordedEvent | None] = [None] * len(batch)
    out = StoredBatch()
    out.inserted = []
    out.prev_tail = prev_tail if written else None
    for index, (position, version) in zip(fresh, written, strict=True):
        record = records[index] = _recorded(batch[index], position, version, now)
        out.inserted.append(record)
    for index, record in known.records.items():
        records[index] = record
    for index, first in known.repeats.items():
        records[index] = records[first]
    out.extend(records)  # type: ignore[arg-type]  # every slot is filled above
    return out


def _one(e: NewEvent, written: tuple[int, int | None], now: datetime) -> StoredBatch:
    """``_assemble`` for the commonest store: one event, written."""
    record = _recorded(e, written[0], written[1], now)
    out = StoredBatch((record,))
    out.inserted = [record]
    out.prev_tail = written[0] - 1
    return out


# A checked insert refused, then the stream found at a version it expects (another writer
# moved it between the two statements): it runs again, this many times in all.
_CHECKED_ATTEMPTS = 3


def sqlite_store(
    sql: EventSQL, batch: Sequence[NewEvent], now: datetime, in_transaction: bool
) -> Generator[Step, Any, StoredBatch]:
    """One SQLite store (``in_transaction`` as :func:`needs_transaction` said)."""
    at = sql.codec.ts(now)
    known = (yield from known_ids(sql, batch)) if in_transaction else NO_IDS
    fresh = known.fresh(len(batch))
    if not fresh:
        return _assemble(batch, known, fresh, [], now, None)
    if len(fresh) == 1:
        event = batch[fresh[0]]
        if event.stream_id is None:
            position = yield ("insert", sql.insert, sql.insert_row(event, None, at))
            written: list[tuple[int, int | None]] = [(position, None)]
        else:
            row = None
            for _ in range(_CHECKED_ATTEMPTS):
                row = yield ("fetchone", sql.insert_checked, sql.checked_params(event, at))
                if row is not None:
                    break
                # The expected version did not hold: nothing was written. The version is
                # read after (autocommit): another writer may have moved the stream since,
                # to where this expectation holds. The error must name a version that
                # refuses it: the store runs again instead, after that writer's.
                read = yield ("fetchone", sql.stream_version, {"stream_id": event.stream_id})
                found = int(read[0] or 0)
                if not _expected_holds(event, found):
                    raise concurrency_error(event, found, batch, fresh[0])
            if row is None:  # moved to a version it expects, three times over
                raise concurrency_error(event, found, batch, fresh[0])
            written = [(int(row[0]), int(row[1]))]
        # Writers are serialized and the rowid is max + 1 (append-only): the tail before
        # this row is the position just below it.
        if len(batch) == 1:
            return _one(event, written[0], now)
        return _assemble(batch, known, fresh, written, now, written[0][0] - 1)
    versions: dict[str, int] = {}
    rows = []
    assigned: list[int | None] = []
    for index in fresh:
        event = batch[index]
        version = None
        if event.stream_id is not None:
            current = versions.get(event.stream_id)
            if current is None:
                row = yield ("fetchone", sql.stream_version, {"stream_id": event.stream_id})
                current = 0 if row[0] is None else int(row[0])
            if not _expected_holds(event, current):
                raise concurrency_error(event, current, batch, index)
            version = versions[event.stream_id] = current + 1
        assigned.append(version)
        rows.append(sql.insert_row(event, version, at))
    yield ("executemany", sql.insert, rows)
    last = yield ("fetchone", sql.last_rowid, None)
    first = int(last[0]) - len(rows) + 1  # consecutive rowids: one writer, max + 1 each
    written = [(first + k, v) for k, v in enumerate(assigned)]
    return _assemble(batch, known, fresh, written, now, first - 1)


def appended(
    units: Sequence[tuple[Sequence[NewEvent], Known]],
    rows: list[tuple[Any, ...]],
    now: datetime,
) -> list[StoredBatch | ConcurrencyError]:
    """PostgreSQL: each unit's outcome from ``foundation_append_events``'s rows.

    Rows come in argument order (``o_ord`` counts every fresh event of every unit from
    1); a unit that failed its check is one row with no position.
    """
    by_ord = {int(r[0]): r for r in rows}
    tail = _int_or_none(rows[0][4]) if rows else 0  # None: not known (see _append_one)
    out: list[StoredBatch | ConcurrencyError] = []
    ord_ = 0
    for batch, known in units:
        fresh = known.fresh(len(batch))
        span = range(ord_ + 1, ord_ + len(fresh) + 1)
        ord_ += len(fresh)
        failed = next((o for o in span if by_ord.get(o, (0, 0))[1] is None), None)
        if failed is not None:
            actual = int(by_ord[failed][3])
            index = fresh[failed - span.start]
            out.append(concurrency_error(batch[index], actual, batch, index))
            continue
        written = [(int(by_ord[o][1]), _int_or_none(by_ord[o][2])) for o in span]
        stored = _assemble(batch, known, fresh, written, now, None)
        if written:
            stored.prev_tail = tail
            tail = written[-1][0]  # the next unit's follows this one's in the same call
        out.append(stored)
    return out


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


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


def drive(tx: Cursor, gen: Generator[Step, Any, Any]) -> Any:
    try:
        op, sql, params = next(gen)
        while True:
            op, sql, params = gen.send(getattr(tx, op)(sql, params))
    except StopIteration as done:
        return done.value


async def adrive(tx: AsyncCursor, gen: Generator[Step, Any, Any]) -> Any:
    try:
        op, sql, params = next(gen)
        while True:
            op, sql, params = gen.send(await getattr(tx, op)(sql, params))
    except StopIteration as done:
        return done.value
