"""The event-log repository: its SQL, written once in Core and compiled per backend.

Ordering under concurrent writers (PostgreSQL)
----------------------------------------------
A sequence hands out positions at ``nextval`` time, but transactions commit in any
order: writer A takes position 7, writer B takes 8 and commits first, and a follower that
reads "after 6" sees 8, moves its cursor to 8, and never sees 7 when A commits. This is
the failure reported against Marten, Eventuous and SQLStreamStore.

Every store transaction therefore begins with ``pg_advisory_xact_lock(EVENTS_LOCK_KEY)``,
before any position is allocated, and holds it to the end of the transaction. Writers
are serialized: the one holding the lock allocates its positions and commits before the
next one can allocate any, so positions are handed out in commit order. PostgreSQL makes
a commit visible (``ProcArrayEndTransaction``) before it releases the transaction's
locks, so when a reader sees position N every position below N is already either
committed and visible or rolled back for good: a follower never skips, and a gap from a
rolled-back transaction is simply never filled (followers pass it). This is the
mechanism the ``eventsourcing`` library uses.

Cost: writers to the log do not overlap: throughput is bounded by one transaction's
lock-to-commit time, including the commit's WAL flush. Two things keep that small. The
lock, the checks, the inserts and the NOTIFY run inside one server-side function
(``foundation_append_events``, migrations 0007 and 0008; inside a burst of stores the
NOTIFY is left to the change feed, one for the burst, see ``_base``), or, for a lone
event, inside one INSERT that takes the lock in its WITH clause (``_append_one``), so a
store is one statement and one round trip, and the lock is held for the statement and
the commit only, never across a network round trip. And stores that arrive while one is
in flight are sent together as one call (group commit, :mod:`._group`): one lock, one
commit, one WAL flush for all of them, each caller's events still all-or-nothing on
their own. Readers never take the lock. The only other writer of the log, the trigger of migration
0005 that appends ``foundation.config.changed`` events, takes the same lock first
(``EVENTS_LOCK_KEY`` is copied there). On SQLite, a write transaction already excludes
every other writer and the rowid is the position.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from foundation.database.codec import Codec
from foundation.database.schema import events, subscriptions
from foundation.database.statements import compile_sql, compile_sqlite_positional
from foundation.database.url import Backend
from foundation.errors import EventError
from foundation.events._model import Criteria, NewEvent, RecordedEvent, uuid_of

__all__ = ["EVENTS_LOCK_KEY", "EventSQL"]

_json_string = json.encoder.encode_basestring

# pg_advisory_xact_lock key serializing event writers ("FdnEvts" in ASCII).
EVENTS_LOCK_KEY = 0x46646E45767473

_COLUMNS = (
    events.c.position,
    events.c.id,
    events.c.stream_id,
    events.c.stream_version,
    events.c.type,
    events.c.data,
    events.c.metadata,
    events.c.correlation_id,
    events.c.causation_id,
    events.c.recorded_at,
)


# SQLite keeps recorded_at as text. Foundation writes "YYYY-MM-DD HH:MM:SS.ffffff" in UTC,
# whose text order is time order; plain SQL may write the other ISO forms migration 0015
# takes ("T", no seconds, "Z", an offset), whose text order is not (…T12:00+05:00 is 07:00
# UTC). after/before compare Foundation's rows by their text and the others by
# SQLITE_UTC_TIME (see _query): migration 0016's partial index is on that expression for
# the rows NOT (SQLITE_OWN_TIME), and SQLite uses it only for a query that says both in the
# very same words (the two texts below are 0016's).
SQLITE_OWN_TIME = "recorded_at GLOB '????-??-?? ??:??:??.?????[0-9]'"
# Another form's time as Foundation writes it, in UTC: SQLite's strftime takes offsets of
# at most 14 hours, so the offset (0015: up to 23:59) is applied in minutes; the digits
# of a second are those written (strftime would round them: 59.9999 s). _N is the
# offset's length (Z: 1, +HH:MM: 6), _S the seconds and their fraction (":SS.fff").
_N = (
    "(CASE WHEN recorded_at GLOB '*Z' THEN 1"
    " WHEN substr(recorded_at, 17) GLOB '*[+-]*' THEN 6 ELSE 0 END)"
)
_S = f"substr(recorded_at, 17, length(recorded_at) - 16 - {_N})"
SQLITE_UTC_TIME = (
    f"strftime('%Y-%m-%d %H:%M:%S', substr(recorded_at, 1, 16) || substr({_S}, 1, 3),"
    f" CASE WHEN {_N} = 6"
    " THEN CASE WHEN substr(recorded_at, -6, 1) = '+' THEN '-' ELSE '+' END"
    " || (substr(recorded_at, -5, 2) * 60 + substr(recorded_at, -2, 2)) || ' minutes'"
    " ELSE '+0 minutes' END)"
    f" || '.' || substr(substr({_S}, 5) || '000000', 1, 6)"
)


def _where(shape: tuple[Any, ...], column: Any, recorded_at: Any) -> list[Any]:
    """The conditions of a criteria shape; every value stays a bound parameter."""
    where: list[Any] = []
    for item in shape:
        if isinstance(item, tuple) and item[0] == "type":
            where.append(column("type").in_([sa.bindparam(f"type_{i}") for i in range(item[1])]))
        elif item in ("stream_id", "correlation_id", "causation_id"):
            where.append(column(item) == sa.bindparam(item))
        elif item == "after":
            where.append(recorded_at > sa.bindparam("after"))
        elif item == "before":
            where.append(recorded_at < sa.bindparam("before"))
        elif item == "after_position":
            where.append(column("position") > sa.bindparam("after_position"))
        elif item == "before_position":
            where.append(column("position") < sa.bindparam("before_position"))
    return where


def _ordered(stmt: sa.Select[Any], position: Any, shape: tuple[Any, ...]) -> sa.Select[Any]:
    order = position.desc() if shape[-1] == "desc" else position.asc()
    # SQLite renders LIMIT with an OFFSET; a literal keeps it out of the parameters.
    return stmt.order_by(order).limit(sa.bindparam("limit")).offset(sa.literal_column("0"))


def _query(shape: tuple[Any, ...], backend: Backend) -> sa.Select[Any]:
    """The SELECT for one criteria shape."""
    column = events.c.__getitem__
    if backend != "sqlite" or not ("after" in shape or "before" in shape):
        stmt = sa.select(*_COLUMNS).where(*_where(shape, column, events.c.recorded_at))
        return _ordered(stmt, events.c.position, shape)
    if not ("after" in shape and "before" in shape):
        # One bound ("the latest after t", iter's pages): read in position order until
        # `limit` rows match, each row by its own form's time; Foundation's rows cost a
        # test of their text's shape more (a window is the union's, below).
        either: Any = sa.literal_column(
            f"(CASE WHEN {SQLITE_OWN_TIME} THEN recorded_at ELSE {SQLITE_UTC_TIME} END)"
        )
        # First a test of the text every row in the bound passes (see _text_bounds):
        # the exact one then costs only the rows within a day or two of it.
        loose = (
            events.c.recorded_at >= sa.bindparam("after_floor")
            if "after" in shape
            else events.c.recorded_at < sa.bindparam("before_ceil")
        )
        stmt = sa.select(*_COLUMNS).where(loose, *_where(shape, column, either))
        return _ordered(stmt, events.c.position, shape)
    # A window: Foundation's rows on the recorded_at index, exactly, and the others on
    # migration 0016's, each its first `limit` in position order, then those of both.
    # The shape test last: SQLite tests a row's terms in their order, so that it costs
    # only the rows the others take.
    own = sa.select(*_COLUMNS).where(
        *_where(shape, column, events.c.recorded_at), sa.text(f"({SQLITE_OWN_TIME})")
    )
    # The others on 0016's index, or on a stream's or a correlation's when that narrows
    # them more (the planner's choice), but never on the type index ("+type" is no
    # index's term): walked whole for a common type, where 0016's holds few rows.
    utc: Any = sa.literal_column(f"({SQLITE_UTC_TIME})")
    other_column = lambda name: sa.literal_column("+type") if name == "type" else column(name)  # noqa: E731
    other = sa.select(*_COLUMNS).where(
        sa.text(f"NOT ({SQLITE_OWN_TIME})"), *_where(shape, other_column, utc)
    )
    # Each the first `limit` of its own, then the first `limit` of both.
    own_first = _ordered(own, events.c.position, shape).subquery()
    other_first = _ordered(other, events.c.position, shape).subquery()
    both = sa.union_all(sa.select(own_first), sa.select(other_first)).subquery()
    return _ordered(sa.select(both), both.c.position, shape)


_ID_CHUNK = 100  # ids looked up per statement (one compiled text per chunk size)
_EXPECTED_KINDS = ("any", "no_stream", "exists")


@dataclass
class EventSQL:
    """Every statement the events service runs, as driver-ready text."""

    backend: Backend
    codec: Codec
    insert: str
    insert_checked: str
    append: str
    append_one: str
    append_one_checked: str
    stream_version: str
    stream_from: str  # the position of a stream's first event from a version on
    last_rowid: str
    newest: str  # the log's last position (NULL when empty): an index's last entry
    sub_create: str
    sub_claim: str
    sub_checkpoint: str
    sub_renew: str
    sub_status: str
    sub_read: str
    _queries: dict[tuple[Any, ...], str] = field(default_factory=dict)
    _by_ids: dict[int, str] = field(default_factory=dict)

    @classmethod
    def build(cls, backend: Backend, codec: Codec) -> EventSQL:
        values: dict[str, Any] = {name: sa.bindparam(name) for name in _INSERTED}
        insert = sa.insert(events).values(**values)
        sqlite_only = backend == "sqlite"  # PostgreSQL appends with statements of its own
        postgres = not sqlite_only
        s = subscriptions
        claimable = sa.or_(
            s.c.owner.is_(None),
            s.c.owner == sa.bindparam("owner"),
            s.c.lease_expires_at < sa.bindparam("now"),
        )
        mine = sa.and_(s.c.name == sa.bindparam("name"), s.c.owner == sa.bindparam("owner"))
        return cls(
            backend=backend,
            codec=codec,
            # SQLite only, bound from insert_row's tuples (see compile_sqlite_positional);
            # a lone insert's position is the connection's last rowid.
            insert=compile_sqlite_positional(insert, _INSERTED) if sqlite_only else "",
            insert_checked=compile_sql(_insert_checked(), backend) if sqlite_only else "",
            append=compile_sql(_append(), backend) if postgres else "",
            append_one=compile_sql(_append_one(False), backend) if postgres else "",
            append_one_checked=compile_sql(_append_one(True), backend) if postgres else "",
            stream_version=compile_sql(
                sa.select(sa.func.max(events.c.stream_version)).where(
                    events.c.stream_id == sa.bindparam("stream_id")
                ),
                backend,
            ),
            # Found by the stream's unique index (stream_id, stream_version).
            stream_from=compile_sql(
                sa.select(sa.func.min(events.c.position)).where(
                    events.c.stream_id == sa.bindparam("stream_id"),
                    events.c.stream_version >= sa.bindparam("from_version"),
                ),
                backend,
            ),
            last_rowid=compile_sql(sa.select(sa.func.last_insert_rowid()), backend),
            newest=compile_sql(sa.select(sa.func.max(events.c.position)), backend),
            sub_create=compile_sql(_sub_create(backend), backend),
            # Claim the row only when nobody holds a live lease on it.
            sub_claim=compile_sql(
                sa.update(s)
                .where(s.c.name == sa.bindparam("name"), claimable)
                .values(
                    owner=sa.bindparam("owner"),
                    lease_expires_at=sa.bindparam("expires"),
                    status=sa.literal_column("'running'"),
                    last_error=sa.null(),
                    updated_at=sa.bindparam("now"),
                )
                .returning(s.c.checkpoint),
                backend,
            ),
            # Advance the checkpoint and renew the lease, only while we still own it.
            sub_checkpoint=compile_sql(
                sa.update(s)
                .where(mine)
                .values(
                    checkpoint=sa.bindparam("checkpoint"),
                    lease_expires_at=sa.bindparam("expires"),
                    updated_at=sa.bindparam("now"),
                ),
                backend,
            ),
            # The lease alone, while a handler runs: the checkpoint is the loop's to move.
            sub_renew=compile_sql(
                sa.update(s)
                .where(mine)
                .values(lease_expires_at=sa.bindparam("expires"), updated_at=sa.bindparam("now")),
                backend,
            ),
            # Leave the row: stopped (or failed, with the error), lease released.
            sub_status=compile_sql(
                sa.update(s)
                .where(mine)
                .values(
                    owner=sa.null(),
                    lease_expires_at=sa.null(),
                    status=sa.bindparam("status"),
                    last_error=sa.bindparam("error"),
                    updated_at=sa.bindparam("now"),
                ),
                backend,
            ),
            sub_read=compile_sql(
                sa.select(s.c.checkpoint, s.c.status, s.c.owner, s.c.last_error).where(
                    s.c.name == sa.bindparam("name")
                ),
                backend,
            ),
        )

    def by_ids(self, count: int) -> str:
        """SELECT of the events whose id is one of ``id_0 … id_{count-1}``."""
        text = self._by_ids.get(count)
        if text is None:
            ids: list[Any] = [sa.bindparam(f"id_{i}") for i in range(count)]
            text = compile_sql(sa.select(*_COLUMNS).where(events.c.id.in_(ids)), self.backend)
            self._by_ids[count] = text
        return text

    def id_chunks(self, ids: list[str]) -> list[tuple[str, dict[str, Any]]]:
        """Statements looking up ``ids``, at most ``_ID_CHUNK`` per statement."""
        out = []
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start : start + _ID_CHUNK]
            out.append(
                (self.by_ids(len(chunk)), {f"id_{i}": value for i, value in enumerate(chunk)})
            )
        return out

    def query(self, criteria: Criteria) -> str:
        """The compiled SELECT for ``criteria``'s shape (compiled once per shape)."""
        text = self._queries.get(criteria.shape)
        if text is None:
            text = compile_sql(_query(criteria.shape, self.backend), self.backend)
            self._queries[criteria.shape] = text
        return text

    def insert_row(self, event: NewEvent, version: int | None, at: Any) -> tuple[Any, ...]:
        """``insert``'s parameters (one row, or each of executemany's), in ``_INSERTED`` order."""
        return (
            event.id_text,
            event.stream_id,
            version,
            event.type,
            event.data_text,
            event.metadata_text,
            event.correlation_id,
            event.causation_id,
            at,
        )

    def checked_params(self, event: NewEvent, at: Any) -> dict[str, Any]:
        """``insert_checked``'s parameters: the row, and the expected version to check."""
        expected = event.expected_version
        params = _named_row(event, at)
        params["stream_id"] = event.stream_id
        params["expected_kind"] = expected if expected in _EXPECTED_KINDS else "version"
        params["expected_version"] = expected if isinstance(expected, int) else None
        return params

    def append_params(self, units: list[list[NewEvent]], at: Any, writer: str) -> dict[str, Any]:
        """``append``'s parameters: every event of every unit as one JSON array."""
        parts = [
            f'{{"u":{u},"id":"{e.id_text}","s":{_text(e.stream_id)},'
            f'"e":"{e.expected_version}","t":{_text(e.type)},"d":{e.data_text},'
            f'"m":{e.metadata_text},"c":{_text(e.correlation_id)},'
            f'"k":{_text(e.causation_id)}}}'
            for u, unit in enumerate(units)
            for e in unit
        ]
        return {
            "events": f"[{','.join(parts)}]",
            "recorded_at": at,
            "writer": writer,
            "notify": True,
        }

    def append_one_params(
        self, event: NewEvent, at: Any, writer: str
    ) -> tuple[str, dict[str, Any]]:
        """The lone-event statement for ``event`` (``append_one``, or its stream form)
        and its parameters."""
        if event.stream_id is None:
            params = _named_row(event, at)
            sql = self.append_one
        else:
            params = self.checked_params(event, at)
            sql = self.append_one_checked
        params["writer"] = writer
        params["notify"] = True
        return sql, params

    def record(self, row: tuple[Any, ...]) -> RecordedEvent:
        load = self.codec.load_json
        try:
            return new_record(
                _uuid(row[1]),
                int(row[0]),
                row[2],
                None if row[3] is None else int(row[3]),
                row[4],
                load(row[5]),
                load(row[6]),
                row[7],
                row[8],
                self.codec.load_event_ts(row[9]),
            )
        except (ValueError, TypeError, OverflowError) as exc:
            raise unreadable_row(row, exc) from None


# Reading 1000 events is mostly building 1000 records, so both steps skip the generic
# machinery: a frozen dataclass's __init__ goes through object.__setattr__ per field,
# and uuid.UUID(str) validates every form of input; the log holds only canonical text.
(
    _set_id,
    _set_position,
    _set_stream_id,
    _set_stream_version,
    _set_type,
    _set_data,
    _set_metadata,
    _set_correlation_id,
    _set_causation_id,
    _set_recorded_at,
) = (getattr(RecordedEvent, name).__set__ for name in RecordedEvent.__slots__)


def new_record(
    id: uuid.UUID,
    position: int,
    stream_id: str | None,
    stream_version: int | None,
    type: str,
    data: Any,
    metadata: Any,
    correlation_id: str | None,
    causation_id: str | None,
    recorded_at: Any,
) -> RecordedEvent:
    record = object.__new__(RecordedEvent)
    _set_id(record, id)
    _set_position(record, position)
    _set_stream_id(record, stream_id)
    _set_stream_version(record, stream_version)
    _set_type(record, type)
    _set_data(record, data)
    _set_metadata(record, metadata)
    _set_correlation_id(record, correlation_id)
    _set_causation_id(record, causation_id)
    _set_recorded_at(record, recorded_at)
    return record


def _uuid(text: str) -> uuid.UUID:
    # The int below alone would take 'deadbeef', ' 0192…' or 36 hex digits for a UUID.
    digits = text.replace("-", "")
    if not (
        len(text) == 36
        and len(digits) == 32
        and digits.isalnum()
        and text[8] == text[13] == text[18] == text[23] == "-"
    ):
        raise ValueError(f"{text!r} is not a UUID's text")
    return uuid_of(int(digits, 16))


def unreadable_row(row: tuple[Any, ...], exc: Exception) -> EventError:
    """A row of the log no record can be made of: one written with plain SQL before
    migration 0014 refused such rows (an id that is not a UUID, say). Named by its
    position, for its owner to see to; every reader reaching it stops there (a
    subscription as ``failed``: no retry can read it)."""
    return EventError(
        f"the event at position {row[0]} cannot be read ({type(exc).__name__}: "
        f"{str(exc)[:200]}); a row written to foundation_events with plain SQL? Its id "
        f"is {str(row[1])[:60]!r}",
        context={"position": row[0], "id": str(row[1])[:60], "error": type(exc).__name__},
    )


_ZERO: Any = sa.literal_column("0")
_INSERTED = (
    "id",
    "stream_id",
    "stream_version",
    "type",
    "data",
    "metadata",
    "correlation_id",
    "causation_id",
    "recorded_at",
)


def _stream_check() -> tuple[Any, Any]:
    """The stream's current version (a subquery) and whether the expected one holds."""
    current = (
        sa.select(sa.func.coalesce(sa.func.max(events.c.stream_version), _ZERO).label("cur"))
        .where(events.c.stream_id == sa.bindparam("stream_id"))
        .subquery("stream")
    )
    cur = current.c.cur
    kind: Any = sa.bindparam("expected_kind")
    expected_holds = sa.or_(
        kind == sa.literal_column("'any'"),
        sa.and_(kind == sa.literal_column("'no_stream'"), cur == _ZERO),
        sa.and_(kind == sa.literal_column("'exists'"), cur > _ZERO),
        sa.and_(kind == sa.literal_column("'version'"), cur == sa.bindparam("expected_version")),
    )
    return cur, expected_holds


def _insert_checked() -> Any:
    """SQLite: one event of a stream, its version and expected-version check in one
    statement (atomic under SQLite's write lock). No row back means the check failed."""
    cur, expected_holds = _stream_check()
    row = sa.select(
        *(
            (cur + sa.literal_column("1")).label(name)
            if name == "stream_version"
            else sa.bindparam(name)
            for name in _INSERTED
        )
    ).where(expected_holds)
    return (
        sa.insert(events)
        .from_select(list(_INSERTED), row)
        .returning(events.c.position, events.c.stream_version)
    )


def _append() -> Any:
    """PostgreSQL: ``foundation_append_events`` (migrations 0007 and 0008), one statement
    per store; ``notify`` false leaves the NOTIFY to the change feed (see ``_base``)."""
    fn = sa.func.foundation_append_events(
        sa.cast(sa.bindparam("events"), postgresql.JSONB),
        sa.cast(sa.bindparam("recorded_at"), sa.DateTime(timezone=True)),
        sa.cast(sa.bindparam("writer"), sa.Text),
        sa.cast(sa.bindparam("notify"), sa.Boolean),
    ).table_valued("o_ord", "o_position", "o_version", "o_actual", "o_tail")
    # The tail is exact there (read once the lock is held): an empty log's is 0.
    tail = sa.func.coalesce(fn.c.o_tail, _ZERO)
    return sa.select(fn.c.o_ord, fn.c.o_position, fn.c.o_version, fn.c.o_actual, tail)


def _append_one(stream: bool) -> Any:
    """PostgreSQL: one event, without ``foundation_append_events``'s machinery.

    The commonest store needs none of the function's unit bookkeeping, and PL/pgSQL
    costs it about a fifth of its time on top of the INSERT itself. Here the writers'
    lock is a CTE the INSERT selects from, so it is held before ``nextval`` hands out
    the position (positions still follow commit order, see the module's docstring).

    The statement's snapshot is taken before the lock, so what it reads may miss a
    store that committed in between. The row comes back in the function's shape, with
    the log's tail before the event when it is certain: when the snapshot's
    ``max(position)`` is ``position - 1``, no lower position is left to commit (the
    lock); otherwise (a rolled-back store's gap, or a commit in between) it is NULL, and
    the tail cache places the event once its window reaches the position below it, or
    reads the log (``_tail``). With ``stream``, the
    event's version is its stream's current one, as that snapshot read it, plus one,
    written only if the expected version held. A stale read cannot write a wrong
    version: versions of a stream are consecutive, so a store that came in between
    holds that version already and the unique index refuses the row. Either way (no
    row, or that refusal) the caller asks ``foundation_append_events``, which reads
    once it holds the lock, for the answer.
    """
    lock = sa.select(sa.func.pg_advisory_xact_lock(sa.literal_column(str(EVENTS_LOCK_KEY))))
    held = lock.cte("held")
    jsonb = postgresql.JSONB
    values: dict[str, Any] = {
        "id": sa.bindparam("id"),
        "type": sa.bindparam("type"),
        "data": sa.cast(sa.bindparam("data"), jsonb),
        "metadata": sa.cast(sa.bindparam("metadata"), jsonb),
        "correlation_id": sa.bindparam("correlation_id"),
        "causation_id": sa.bindparam("causation_id"),
        "recorded_at": sa.cast(sa.bindparam("recorded_at"), sa.DateTime(timezone=True)),
    }
    if stream:
        cur, expected_holds = _stream_check()
        values["stream_id"] = sa.bindparam("stream_id")
        values["stream_version"] = cur + sa.literal_column("1")
    row = sa.select(*values.values()).select_from(held)
    if stream:
        row = row.where(expected_holds)
    inserted = (
        sa.insert(events)
        .from_select(list(values), row)
        .returning(events.c.position, events.c.stream_version)
        .cte("inserted")
    )
    # Delivered at commit only; skipped inside a burst as the function's (migration 0008).
    # A SELECT in a WITH runs only when referenced: the count below references it.
    payload = sa.func.json_build_object(
        sa.literal_column("'topic'"),
        sa.literal_column("'events'"),
        sa.literal_column("'position'"),
        inserted.c.position,
        sa.literal_column("'writer'"),
        sa.cast(sa.bindparam("writer"), sa.Text),
    )
    notified = (
        sa.select(sa.func.pg_notify(sa.literal_column("'foundation'"), sa.cast(payload, sa.Text)))
        .select_from(inserted)
        .where(sa.cast(sa.bindparam("notify"), sa.Boolean))
        .cte("notified")
    )
    sent = sa.select(sa.func.count().label("n")).select_from(notified).subquery("sent")
    no_number = sa.cast(sa.null(), sa.BigInteger)
    below = inserted.c.position - sa.literal_column("1")
    seen = sa.select(sa.func.coalesce(sa.func.max(events.c.position), _ZERO)).scalar_subquery()
    return sa.select(
        sa.literal_column("1"),
        inserted.c.position,
        inserted.c.stream_version,
        no_number,
        sa.case((seen == below, below), else_=no_number),
    ).select_from(inserted.join(sent, sa.true()))


def _named_row(event: NewEvent, at: Any) -> dict[str, Any]:
    """The columns of an event's row that both named inserts bind."""
    return {
        "id": event.id_text,
        "type": event.type,
        "data": event.data_text,
        "metadata": event.metadata_text,
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
        "recorded_at": at,
    }


def _text(value: str | None) -> str:
    """A JSON string (or null) for ``append_params``."""
    return "null" if value is None else _json_string(value)


def _sub_create(backend: Backend) -> Any:
    """A new subscription row; an existing one (a restart) keeps its checkpoint."""
    insert = postgresql.insert if backend == "postgresql" else sqlite.insert
    return (
        insert(subscriptions)
        .values(
            name=sa.bindparam("name"),
            checkpoint=sa.bindparam("checkpoint"),
            status=sa.literal_column("'stopped'"),
            updated_at=sa.bindparam("now"),
        )
        .on_conflict_do_nothing(index_elements=[subscriptions.c.name])
    )
