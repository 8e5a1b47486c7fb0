"""Migration 0015: the log refuses a ``recorded_at`` its readers cannot read.

0014's trigger took, on PostgreSQL, ``'infinity'``, ``'-infinity'``, the year 10000 and
dates before Christ (psycopg cannot load them: readers failed with ``storage_error``, a
subscription retried for good); on SQLite, text ``datetime.fromisoformat`` refuses
(``'2026-02-30'``, ``'2026-11-30 24:00:00'``, a trailing space, a lower-case ``'z'``, the
year 0), and an id, data or metadata holding a NUL character (SQLite's text functions
stop at it). On SQLite the rule is checked against a reference (the grammar, then
``fromisoformat``) over many generated strings: it takes exactly what the reader reads.
"""

from __future__ import annotations

import contextlib
import random
import re
import sqlite3
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import psycopg.errors
import pytest

from foundation import Foundation
from foundation.database import migrate
from foundation.database.codec import SQLiteCodec
from foundation.database.url import DatabaseURL

SQLITE_MESSAGE = (
    "foundation_events: recorded_at must be an ISO date and time"
    " (YYYY-MM-DD[ HH:MM[:SS[.fraction]]][Z|+HH:MM]) between the years 2 and 9998"
)
PG_MESSAGE = "foundation_events: recorded_at must be a finite time between the years 2 and 9998"

# What the SQLite trigger must take: the grammar of the message, a real time, years 2-9998
# (and offset minutes up to 59, where fromisoformat takes '+01:60').
GRAMMAR = re.compile(
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:(?P<offset_minutes>\d{2}))?)?",
    re.ASCII,
)


def readable(text: str) -> bool:
    match = GRAMMAR.fullmatch(text)
    if not match or not 2 <= int(text[:4]) <= 9998:
        return False
    if int(match["offset_minutes"] or 0) > 59:
        return False
    try:
        datetime.fromisoformat(text)  # the day of the month, hours, minutes, the offset
    except ValueError:
        return False
    return True


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "log.db"
    path.write_bytes(sqlite_template.read_bytes())
    return f"sqlite:///{path}"


@contextlib.contextmanager
def _sqlite(url: str) -> Iterator[sqlite3.Connection]:
    with contextlib.closing(
        sqlite3.connect(DatabaseURL.parse(url).sqlite_path, isolation_level=None)
    ) as conn:
        yield conn


def _sqlite_insert(
    conn: sqlite3.Connection,
    recorded_at: Any,
    *,
    event_id: str | None = None,
    data: Any = "{}",
    metadata: Any = "{}",
    stream_version: Any = None,
) -> str | None:
    """None if the row is taken, else the trigger's message."""
    try:
        conn.execute(
            "INSERT INTO foundation_events"
            " (id, stream_id, stream_version, type, data, metadata, recorded_at)"
            " VALUES (?, ?, ?, 't', ?, ?, ?)",
            (
                event_id or str(uuid.uuid4()),
                None if stream_version is None else f"s-{uuid.uuid4()}",
                stream_version,
                data,
                metadata,
                recorded_at,
            ),
        )
    except sqlite3.IntegrityError as exc:
        return str(exc)
    return None


def _pg_insert(url: str, recorded_at: str, event_id: str | None = None) -> None:
    with psycopg.connect(DatabaseURL.parse(url).conninfo, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO foundation_events (id, type, data, metadata, recorded_at)"
            " VALUES (%s, 't', '{}', '{}', %s::timestamptz)",
            (event_id or str(uuid.uuid4()), recorded_at),
        )


# -- SQLite: a table of values -----------------------------------------------------------

SQLITE_TAKEN = [
    "2026-11-30 12:00:00.000000",  # Foundation's own form
    "2026-11-30 12:00:00.123456",
    "2026-12-31 23:59:59.999999",  # own form, a day past the 28th
    "2024-02-29 00:00:00.000000",  # a leap day
    "2026-11-30",
    "2026-11-30 12:00",
    "2026-11-30T12:00",
    "2026-11-30 12:00:00",  # CURRENT_TIMESTAMP's form
    "2026-11-30T12:00:00Z",
    "2026-11-30 12:00Z",
    "2026-11-30 12:00:00.1",
    "2026-11-30T12:00:00.1234567+00:00",  # .NET's round-trip form
    "2026-11-30T12:00:00.123456789Z",  # Go's RFC 3339 with nanoseconds
    "2026-11-30 12:00:00.12345Z",  # 26 characters, not Foundation's form
    "2026-11-30 12:00+05:30",
    "2026-11-30 12:00:00.5-23:59",
    "2026-11-30 12:00:00.000000+00:00",
    "0002-01-01 00:00:00.000000",
    "0002-01-01 00:00+23:59",
    "9998-12-31 23:59:59.999999-23:59",
]

SQLITE_REFUSED = [
    "2026-02-30",  # date('2026-02-30') answers '2026-02-30'
    "2026-02-29 12:00:00.000000",
    "2026-04-31 00:00:00.000000",
    "2026-13-01 00:00:00.000000",
    "2026-00-10",
    "2026-01-00",
    "2026-11-30 24:00:00",
    "2026-11-30 23:60:00",
    "2026-11-30 12:00:60",
    "2026-11-30 12:00:00 ",  # a trailing space
    " 2026-11-30 12:00:00",
    "2026-11-30T12:00:00z",  # lower-case z
    "2026-11-30t12:00:00",
    "2026-11-30 12:00:00 +01:00",
    "2026-11-30 12:00:00+24:00",
    "2026-11-30 12:00:00+01:60",
    "2026-11-30 12:00:00+0100",
    "2026-11-30 12:00:00+01",
    "2026-11-30Z",  # an offset without a time
    "2026-11-30+01:00",
    "2026-11-30 12",
    "2026-11-30 12:00:00.",
    "2026-11-30 12:00:00.1234567890",  # 10 digits
    "2026-11-30 12:00:00,5",
    "2026-11-30 12:00:00.12a",
    "2026-11-30x12:00",
    "0000-01-01",
    "0001-12-31 23:59:59.999999",
    "9999-01-01",
    "9999-12-31 23:59:59.999999",
    "2026-11-30\n",
    "2026-1-30",
    "",
    20261130,  # not text
    None,
    b"2026-11-30",
]


@pytest.mark.parametrize("recorded_at", SQLITE_TAKEN)
def test_sqlite_takes_and_reads_back(sqlite_url: str, recorded_at: str) -> None:
    with _sqlite(sqlite_url) as conn:
        assert _sqlite_insert(conn, recorded_at) is None
    with Foundation(sqlite_url, migrate="check") as fdn:
        [event] = fdn.events.get()
    assert event.recorded_at == SQLiteCodec.load_ts(recorded_at)
    assert event.recorded_at.tzinfo is not None


@pytest.mark.parametrize("recorded_at", SQLITE_REFUSED)
def test_sqlite_refuses(sqlite_url: str, recorded_at: Any) -> None:
    with _sqlite(sqlite_url) as conn:
        assert _sqlite_insert(conn, recorded_at) == SQLITE_MESSAGE
        assert conn.execute("SELECT count(*) FROM foundation_events").fetchone() == (0,)


def test_sqlite_keeps_the_other_rules_of_0014(sqlite_url: str) -> None:
    ok = "2026-11-30 12:00:00.000000"
    other = "2026-11-30T12:00:00Z"  # runs the trigger's body: the rules there too
    with _sqlite(sqlite_url) as conn:
        for recorded_at in (ok, other):
            assert _sqlite_insert(conn, recorded_at, event_id=str(uuid.uuid4()).upper()) == (
                "foundation_events: the id must be a UUID in lower-case text"
            )
            assert _sqlite_insert(conn, recorded_at, data="{not json") == (
                "foundation_events: the data must be JSON text"
            )
            assert _sqlite_insert(conn, recorded_at, metadata="[]") == (
                "foundation_events: the metadata must be a JSON object"
            )
            assert _sqlite_insert(conn, recorded_at, stream_version=1.5) == (
                "foundation_events: the stream_version must be an integer"
            )
            assert _sqlite_insert(conn, recorded_at, stream_version=3) is None
            # SQLite's text functions stop at a NUL: 0014 read these as what precedes it.
            assert _sqlite_insert(conn, recorded_at, event_id=str(uuid.uuid4()) + "\x00zz") == (
                "foundation_events: the id must be a UUID in lower-case text"
            )
            assert _sqlite_insert(conn, recorded_at, data='{"a": 1}\x00garbage') == (
                "foundation_events: the data must be JSON text"
            )
            assert _sqlite_insert(conn, recorded_at, metadata="{}\x00[]") == (
                "foundation_events: the metadata must be a JSON object"
            )
        # the first rule broken is named, in 0014's order
        assert _sqlite_insert(conn, "2026-02-30", stream_version=1.5) == SQLITE_MESSAGE
        assert _sqlite_insert(conn, "2026-02-30", metadata="[]") == (
            "foundation_events: the metadata must be a JSON object"
        )


# -- SQLite: generated strings -------------------------------------------------------------


def _two(rng: random.Random, top: int) -> str:
    """Two digits, below top mostly, else up to 99 (out of range for every field)."""
    return f"{rng.randrange(top if rng.random() < 0.9 else 100):02d}"


def _generated(rng: random.Random) -> str:
    years = ["0000", "0001", "0002", "2024", "2026", "9998", "9999"]
    year = rng.choice([*years, f"{rng.randrange(10000):04d}"])
    text = f"{year}-{_two(rng, 13)}-{_two(rng, 32)}"
    if rng.random() < 0.85:
        text += rng.choice([" ", " ", "T", "T", "t", "_", "", "  "])
        text += f"{_two(rng, 24)}:{_two(rng, 60)}"
        if rng.random() < 0.8:
            text += f":{_two(rng, 60)}"
            if rng.random() < 0.7:
                text += rng.choice([".", ".", ","]) + "".join(
                    rng.choice("0123456789") for _ in range(rng.randrange(9))
                )
    if rng.random() < 0.5:
        text += rng.choice(
            [
                "Z",
                "z",
                f"+{_two(rng, 24)}:{_two(rng, 60)}",
                f"-{_two(rng, 24)}:{_two(rng, 60)}",
                f"+{_two(rng, 24)}{_two(rng, 60)}",
                f"-{_two(rng, 24)}",
                " +01:00",
                "+24:00",
            ]
        )
    for _ in range(rng.choice([0, 0, 0, 1, 1, 2])):  # corruptions
        at = rng.randrange(len(text) + 1)
        kind = rng.randrange(5)
        if kind == 0:
            text = text[:at] + text[at + 1 :]  # a character less
        elif kind == 1:
            text = text[:at] + rng.choice(" \n:.-+Z0x٣") + text[at:]  # one more
        elif kind == 2:
            text = text[:at] + rng.choice(" 09:.-T٣") + text[at + 1 :]  # another
        elif kind == 3:
            text = text[:at]  # cut
        else:
            text = rng.choice([" ", "", "\t"]) + text + rng.choice([" ", "", "\x00"])
    return text


def _foundation_form(rng: random.Random) -> str:
    """Foundation's 26 characters, now and then with one digit out of range."""
    stamp = datetime(rng.randrange(1, 10000), 1, 1, tzinfo=UTC).replace(
        month=rng.randrange(1, 13), day=rng.randrange(1, 29)
    )
    text = stamp.isoformat(" ", "microseconds")[:26]
    text = text[:8] + rng.choice(["28", "29", "30", "31", text[8:10]]) + text[10:]
    if rng.random() < 0.3:
        at = rng.choice([5, 6, 11, 12, 14, 15, 17, 18])
        text = text[:at] + rng.choice("0123456789") + text[at + 1 :]
    return text


def test_sqlite_takes_exactly_what_the_reader_reads(sqlite_url: str) -> None:
    rng = random.Random(15)
    candidates = [_generated(rng) for _ in range(20_000)]
    candidates += [_foundation_form(rng) for _ in range(2000)]
    candidates += SQLITE_TAKEN + [c for c in SQLITE_REFUSED if isinstance(c, str)]
    candidates = list(dict.fromkeys(candidates))
    taken: list[str] = []
    wrong: list[tuple[str, bool]] = []
    with _sqlite(sqlite_url) as conn:
        conn.execute("BEGIN")
        for text in candidates:
            refusal = _sqlite_insert(conn, text)
            assert refusal in (None, SQLITE_MESSAGE), (text, refusal)
            if (refusal is None) != readable(text):
                wrong.append((text, refusal is None))
            if refusal is None:
                taken.append(text)
                parsed = datetime.fromisoformat(text)
                loaded = SQLiteCodec.load_ts(text)
                assert loaded.tzinfo is not None and 2 <= parsed.year <= 9998
                assert loaded == (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC))
                loaded.astimezone(UTC)  # no overflow converting it
        conn.execute("COMMIT")
    assert wrong == []
    # a fair share of each (the generator is not all noise)
    assert len(taken) > 2000 and len(candidates) - len(taken) > 2000
    assert sum(len(t) != 26 for t in taken) > 1000
    with Foundation(sqlite_url, migrate="check") as fdn:
        events = list(fdn.events.iter())
    assert [e.recorded_at for e in events] == [SQLiteCodec.load_ts(t) for t in taken]


# -- PostgreSQL ---------------------------------------------------------------------------

PG_REFUSED = [
    "infinity",
    "-infinity",
    "10000-01-01 00:00+00",
    "9999-01-01 00:00+00",
    "9999-06-30 12:00+00",
    "0001-01-01 00:00+00 BC",
    "0001-12-31 23:59:59.999999+00",
    "0001-06-30 12:00+00",
]
PG_TAKEN = [
    "0002-01-01 00:00+00",
    "0001-12-31 23:00-02",  # 0002-01-01 01:00 UTC
    "9998-12-31 23:59:59.999999+00",
    "2026-11-30 12:00+05:30",
]


@pytest.mark.parametrize("recorded_at", PG_REFUSED)
def test_postgres_refuses(pg_url: str, recorded_at: str) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as refused:
        _pg_insert(pg_url, recorded_at)
    assert str(refused.value.diag.message_primary).startswith(PG_MESSAGE + ", not ")
    with Foundation(pg_url, migrate="check") as fdn:
        assert fdn.events.get() == []


def test_postgres_takes_finite_times_and_reads_them_back(pg_url: str) -> None:
    for recorded_at in PG_TAKEN:
        _pg_insert(pg_url, recorded_at)
    with psycopg.connect(DatabaseURL.parse(pg_url).conninfo, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO foundation_events (id, type, data, metadata, recorded_at)"
            " VALUES (%s, 't', '{}', '{}', now())",
            (str(uuid.uuid4()),),
        )
    with Foundation(pg_url, migrate="check") as fdn:
        events = fdn.events.get()
    assert [e.recorded_at.year for e in events][:3] == [2, 2, 9998]
    assert len(events) == len(PG_TAKEN) + 1
    assert abs((datetime.now(UTC) - events[-1].recorded_at).total_seconds()) < 60


def test_postgres_keeps_the_other_rules_of_0014(pg_url: str) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="UUID in lower-case text"):
        _pg_insert(pg_url, "infinity", event_id=str(uuid.uuid4()).upper())  # the id first
    with (
        psycopg.connect(DatabaseURL.parse(pg_url).conninfo, autocommit=True) as conn,
        pytest.raises(psycopg.errors.CheckViolation, match="metadata must be a JSON object"),
    ):
        conn.execute(
            "INSERT INTO foundation_events (id, type, data, metadata, recorded_at)"
            " VALUES (%s, 't', '{}', 'null', now())",
            (str(uuid.uuid4()),),
        )


def test_the_function_keeps_its_search_path(pg_url: str) -> None:
    with psycopg.connect(DatabaseURL.parse(pg_url).conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT proconfig FROM pg_proc WHERE proname = 'foundation_events_valid_row'"
        ).fetchall()
    assert row == [(["search_path=pg_catalog, pg_temp"],)]


# -- both ---------------------------------------------------------------------------------


def test_foundations_own_store_still_works(db_url: str) -> None:
    with Foundation(db_url, migrate="check") as fdn:
        one = fdn.events.store({"type": "order", "stream_id": "o-1", "data": {"n": 1}})
        more = fdn.events.store_many([{"type": "bulk", "data": i} for i in range(50)])
        fdn.config.set("k", 1)  # the config trigger writes to the log too
        events = fdn.events.get(limit=1000)
    assert [e.id for e in events][:51] == [one.id, *(e.id for e in more)]
    assert events[-1].type == "foundation.config.changed"


def _definition(url: str) -> str:
    parsed = DatabaseURL.parse(url)
    if parsed.backend == "sqlite":
        with _sqlite(url) as conn:
            (sql,) = conn.execute(
                "SELECT sql FROM sqlite_master WHERE name = 'foundation_events_valid_row'"
            ).fetchone()
        return str(sql)
    with psycopg.connect(parsed.conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_get_functiondef(p.oid) || coalesce(t.tgname, '') FROM pg_proc p"
            " LEFT JOIN pg_trigger t ON t.tgfoid = p.oid"
            " WHERE p.proname = 'foundation_events_valid_row'"
        ).fetchall()
    assert len(rows) == 1
    return str(rows[0][0])


def test_upgrade_downgrade_upgrade_with_rows(empty_db_url: str) -> None:
    url = empty_db_url
    migrate.upgrade(url, "0014")
    at_0014 = _definition(url)
    migrate.upgrade(url)
    assert migrate.current_revision(url) == migrate.head_revision()  # 0015 and after
    at_0015 = _definition(url)
    assert at_0015 != at_0014 and "between the years 2 and 9998" in at_0015
    with Foundation(url, migrate="check") as fdn:
        first = fdn.events.store({"type": "t", "data": 1})
    migrate.downgrade(url, "0014")
    assert migrate.current_revision(url) == "0014"
    assert _definition(url) == at_0014  # 0014's rule, word for word
    migrate.upgrade(url)
    assert _definition(url) == at_0015
    with Foundation(url, migrate="check") as fdn:
        second = fdn.events.store({"type": "t", "data": 2})
        assert [e.id for e in fdn.events.get()] == [first.id, second.id]
    if DatabaseURL.parse(url).backend == "sqlite":
        with _sqlite(url) as conn:
            assert _sqlite_insert(conn, "2026-02-30") == SQLITE_MESSAGE
    else:
        with pytest.raises(psycopg.errors.CheckViolation, match=PG_MESSAGE):
            _pg_insert(url, "infinity")
