"""The hot tail cache: the most recent events in memory, so ``get`` of recent events is free.

What the cache holds
--------------------
Every event with ``lo < position <= hi``, in position order, and nothing else: a
contiguous window of the log. ``hi`` only moves when the cache learns of a *complete*
prefix of the log up to a new position:

* its own writes: a store also learns the log's tail just before its first inserted row
  (PostgreSQL: ``foundation_append_events`` reads it once it holds the writers' lock, so
  no other writer can commit in between, and a lone event's statement knows it when no
  position below its own is missing, see ``_store._append_one``; SQLite: writers are
  serialized and the rowid is ``max + 1``, so it is ``position - 1``). A batch extends
  the cache when that tail is ``hi``, or ``hi`` is the position just below it. One that
  comes back before ``hi`` gets there (another call of this node still on its way, or
  another node's events between) is held and placed when ``hi`` reaches it; if nothing
  does (a rolled-back store left a gap), its own notification has the feed read it.
* the change feed: a notification (PostgreSQL) or a changed ``data_version`` (SQLite)
  makes the feed's thread read every event after ``hi``. Positions follow commit order
  (see ``_store``), so whatever a reader sees after ``hi`` is a complete prefix.
* a resync (start, reconnect): the window is dropped and the last ``size`` events read
  again.

When the cache answers
----------------------
Only when the answer lies entirely in the window: the feed is connected, the window
is loaded and holds this node's own latest write (read-your-writes), and the criteria's
lower bound (``after_position``, or the start of the log) is at or above ``lo``, or a
``desc`` query found its ``limit`` matches inside the window. Anything else (``after``
or ``before`` datetimes without such a bound, a window not yet loaded, a feed that is
reconnecting) goes to the database. Writes made by *other* nodes reach the window once
the feed delivers them (PostgreSQL: the NOTIFY latency, plus up to twice
``NOTIFY_EVERY_S``, 10 ms, inside another node's burst of stores, see ``_base``; SQLite:
one poll interval); meanwhile ``get`` sees them in the log's last position, which it
reads after each answer from the window, and reads the database instead.

Records handed out by the cache are shared: their ``data`` and ``metadata`` are read-only
containers (:mod:`foundation._frozen`), equal to what the database returns.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Callable
from typing import Any

from foundation._frozen import freeze
from foundation.events._model import Criteria, RecordedEvent
from foundation.events._store import new_record

__all__ = ["DEFAULT_TAIL_SIZE", "TailCache"]

DEFAULT_TAIL_SIZE = 10_000
_MAX_PENDING = 256  # own writes held for placement at most (see TailCache.add_own)


def _pos(record: RecordedEvent) -> int:
    return record.position


def frozen(record: RecordedEvent) -> RecordedEvent:
    """The record with read-only data and metadata (what the cache shares)."""
    return new_record(
        record.id,
        record.position,
        record.stream_id,
        record.stream_version,
        record.type,
        freeze(record.data),
        freeze(record.metadata),
        record.correlation_id,
        record.causation_id,
        record.recorded_at,
    )


class TailCache:
    """A contiguous window ``(lo, hi]`` of the log; thread-safe, readers never block long."""

    def __init__(self, size: int, load_ts: Callable[[Any], Any]) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise ValueError("events_tail_size must be an int >= 0")
        self.size = size
        self._load_ts = load_ts
        self._lock = threading.Lock()
        self._valid = False
        self._lo = 0
        self._hi = 0
        self._need = 0  # this node's newest own position: served only once hi reaches it
        # Events this node wrote through a trigger (config changes) have no position
        # here: after one, the window answers only once a read of the log begun after
        # it has ended (catch-ups and reloads are numbered as they begin).
        self._reads_begun = 0
        self._read_upto = 0  # the newest numbered read that has ended
        self._stale_until = 0  # the read that must end before the window answers again
        self._own_passed = 0  # the newest own notification the feed let pass unread
        # Own writes that came back before the window reached them (another writer's
        # events between, or ours still on their way): first position -> (the tail
        # before them when known, the records). Placed as soon as hi reaches them.
        self._pending: dict[int, tuple[int | None, list[RecordedEvent]]] = {}
        # Appended in place, replaced (never shifted) when trimmed: a reader's snapshot
        # stays consistent, and entries appended after it are above its ``hi``.
        self._records: list[RecordedEvent] = []
        self._by_type: dict[str, list[RecordedEvent]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.size > 0

    def window(self) -> tuple[bool, int, int]:
        """``(valid, lo, hi)`` now (for tests and diagnostics)."""
        with self._lock:
            return self._valid, self._lo, self._hi

    # -- writes into the window ------------------------------------------------------

    def mark_behind(self) -> None:
        """The log has grown by a write of this node that the window cannot place."""
        with self._lock:
            self._stale_until = self._reads_begun + 1

    def behind(self) -> bool:
        return self._read_upto < self._stale_until

    def begin_read(self) -> int:
        """Number a read of the log (catch-up or reload) as it begins."""
        with self._lock:
            self._reads_begun += 1
            return self._reads_begun

    def end_read(self, ticket: int) -> None:
        with self._lock:
            self._read_upto = max(self._read_upto, ticket)

    def invalidate(self) -> None:
        with self._lock:
            self._valid = False
            self._records = []
            self._by_type = {}
            self._pending = {}

    def reset(self, newest_first: list[RecordedEvent], complete: bool) -> None:
        """Replace the window with the log's newest events (``complete``: the whole log)."""
        records = [frozen(r) for r in reversed(newest_first)]
        with self._lock:
            self._records = records
            by_type: dict[str, list[RecordedEvent]] = {}
            for r in records:
                by_type.setdefault(r.type, []).append(r)
            self._by_type = by_type
            self._hi = records[-1].position if records else 0
            if complete or not records:
                self._lo = 0
            else:
                self._lo = records[0].position - 1
            self._valid = True
            self._drain()

    def hi(self) -> int | None:
        with self._lock:
            return self._hi if self._valid else None

    def extend(self, prev_tail: int, records: list[RecordedEvent]) -> bool:
        """Append ``records`` if the log's tail before them was exactly ``hi``."""
        if not records:
            return True
        with self._lock:
            if not self._valid or prev_tail != self._hi:
                return False
            self._append(records)
            return True

    def add_own(self, prev_tail: int | None, records: list[RecordedEvent]) -> bool:
        """This node's own write: served only once ``hi`` reaches it (read-your-writes),
        and appended when the log's tail before it is ``hi`` (``prev_tail``; None when
        not known) or ``hi`` is the position just below it: now, or as soon as ``hi``
        gets there (another of our writes, or a read of the log, brings it there).

        Left unplaced, it is read from the log when its own notification arrives (see
        :meth:`own_notified`). False when that notification has already gone by: the
        caller must have another one sent.
        """
        with self._lock:
            position = records[-1].position
            if position > self._need:
                self._need = position
            if not self._valid:
                return True  # the window's (re)load reads it
            first = records[0].position
            if first > self._hi:
                # Copied now: the caller gets ``records`` back and may change their data
                # before the drain places them (behind another writer's, say).
                self._pending[first] = (prev_tail, [frozen(r) for r in records])
                if len(self._pending) > _MAX_PENDING:  # stuck behind a gap: read instead
                    del self._pending[min(self._pending)]
                self._drain()
            return self._hi >= position or self._own_passed < position

    def own_notified(self, position: int) -> bool:
        """The feed got this node's own notification of ``position``: whether to read
        the log after the window (a write of ours it could not place), or let it pass
        (already in the window, or its writer has yet to offer it)."""
        with self._lock:
            if self._valid and self._hi < position <= self._need:
                return True
            self._own_passed = max(self._own_passed, position)
            return False

    def _append(self, records: list[RecordedEvent]) -> None:
        # Under the lock.
        self._put(records)
        self._drain()

    def _drain(self) -> None:
        """Place pending own writes that now follow ``hi``; drop those it passed."""
        pending = self._pending
        while pending:
            hi = self._hi
            ready = pending.pop(hi + 1, None)
            if ready is None:
                for first in [f for f in pending if f <= hi]:
                    del pending[first]
                known = next((f for f, (tail, _) in pending.items() if tail == hi), None)
                if known is None:
                    return
                ready = pending.pop(known)
            self._put(ready[1], already_frozen=True)

    def _put(self, records: list[RecordedEvent], *, already_frozen: bool = False) -> None:
        fresh = records if already_frozen else [frozen(r) for r in records]
        self._records.extend(fresh)
        for r in fresh:
            bucket = self._by_type.get(r.type)
            if bucket is None:
                self._by_type[r.type] = [r]
            else:
                bucket.append(r)
        self._hi = fresh[-1].position
        if len(self._records) > self.size + max(self.size // 4, 16):
            self._trim()

    def _trim(self) -> None:
        drop = len(self._records) - self.size
        self._lo = self._records[drop - 1].position
        self._records = self._records[drop:]
        lo = self._lo
        by_type: dict[str, list[RecordedEvent]] = {}
        for name, bucket in self._by_type.items():
            cut = bisect_right(bucket, lo, key=_pos)
            if cut < len(bucket):
                by_type[name] = bucket[cut:]
        self._by_type = by_type

    # -- reads ---------------------------------------------------------------------------

    def answer(self, criteria: Criteria) -> list[RecordedEvent] | None:
        """The answer from the window, or None when only the database can give it."""
        return self.answer_at(criteria)[0]

    def answer_at(self, criteria: Criteria) -> tuple[list[RecordedEvent] | None, int]:
        """The answer and the ``hi`` it was computed at (the log as of that position)."""
        with self._lock:
            if not self._valid or self._hi < self._need or self._read_upto < self._stale_until:
                self.misses += 1
                return None, self._hi
            lo, hi = self._lo, self._hi
            records, by_type = self._records, self._by_type
        result = _answer(criteria, lo, hi, records, by_type, self._load_ts)
        if result is None:
            self.misses += 1
        else:
            self.hits += 1
        return result, hi


def _answer(
    criteria: Criteria,
    lo: int,
    hi: int,
    records: list[RecordedEvent],
    by_type: dict[str, list[RecordedEvent]],
    load_ts: Callable[[Any], Any],
) -> list[RecordedEvent] | None:
    params = criteria.params
    after_pos: int = params.get("after_position", 0)
    before_pos: int | None = params.get("before_position")
    limit = criteria.limit
    checks: list[Callable[[RecordedEvent], bool]] = []
    base = records
    types: list[str] = []
    for item in criteria.shape:
        if isinstance(item, tuple) and item[0] == "type":
            types = [params[f"type_{i}"] for i in range(item[1])]
    if len(types) == 1:
        base = by_type.get(types[0], [])
    elif types:
        wanted = frozenset(types)
        checks.append(lambda r: r.type in wanted)
    for key in ("stream_id", "correlation_id", "causation_id"):
        if key in params:
            checks.append(_equals(key, params[key]))
    if "after" in params:
        after = load_ts(params["after"])
        checks.append(lambda r: r.recorded_at > after)
    if "before" in params:
        before = load_ts(params["before"])
        checks.append(lambda r: r.recorded_at < before)

    def ok(r: RecordedEvent) -> bool:
        return all(check(r) for check in checks)

    top = bisect_right(base, hi, key=_pos)  # entries appended after the snapshot excluded
    if before_pos is not None:
        top = min(top, bisect_right(base, before_pos - 1, key=_pos))
    if criteria.order == "asc":
        if after_pos < lo:
            return None  # matches may lie below the window
        start = bisect_right(base, after_pos, key=_pos)
        if not checks:
            return base[start : min(top, start + limit)]
        out: list[RecordedEvent] = []
        for i in range(start, top):
            r = base[i]
            if ok(r):
                out.append(r)
                if len(out) == limit:
                    break
        return out
    floor = bisect_right(base, after_pos, key=_pos)
    out = []
    for i in range(top - 1, floor - 1, -1):
        r = base[i]
        if not checks or ok(r):
            out.append(r)
            if len(out) == limit:
                return out  # the newest `limit` matches, all inside the window
    return out if after_pos >= lo else None


def _equals(key: str, value: str) -> Callable[[RecordedEvent], bool]:
    if key == "stream_id":
        return lambda r: r.stream_id == value
    if key == "correlation_id":
        return lambda r: r.correlation_id == value
    return lambda r: r.causation_id == value
