"""Found in the tenth round of review.

* PostgreSQL: retries overlapping in flight in a chain (``store_many([A, B])``,
  ``store_many([B, C])`` and ``store_many([C])`` at once, the same content for each id)
  failed with the driver's unique violation (``storage_error``) in 10 to 27 of 30 rounds:
  a store looked its ids up again only once after losing an id race, and lost the next
  race too. It looks them up again as long as each try finds more of them recorded.
* PostgreSQL: a group commit that failed ran each of its stores again alone, whatever the
  failure: during a lock wait or an outage, 16 stores waited 17 lock timeouts (17 s with
  a 1 s ``lock_timeout``; 85 s with a 5 s connect timeout), and a group whose reply was
  lost after its commit was written a second time, store by store. Only a failure that
  may be one store's (an id race) runs them alone now.
* Bad input: ``events export`` to a full disk printed two Python tracebacks and left a
  file cut mid-line without a word; ``events tail -f --idle-timeout nan`` never timed out;
  ``register_type(..., version=2**62)`` used up memory listing the missing upcasters;
  ``subscribe`` took types no event can have (``""``, 1000 characters) and names with
  control characters.
* Found by a subscriptions review: a row written with plain SQL whose id is not a UUID
  (``'order-42'``) stopped every reader with a bare ``ValueError`` (``get``, ``tail``, every
  subscription reaching it, failed without the ``failed`` telemetry); an upper-case id let
  the log hold one UUID twice; invalid JSON (SQLite) did the same. Migration 0014 refuses
  such rows; a reader reaching one written before it raises ``event_error`` naming its
  position. A subscription to some types reported a lag of every event of other types
  after it had caught up, for good; one that lost its lease went ``failed`` untold.
* Found in review of those fixes: the lag stayed at its last batch's when that batch
  was exactly a full page; 36 characters that are not a UUID's text (36 hex digits, a
  misplaced dash, a leading space) read as some other UUID.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import uuid
from collections.abc import Generator
from typing import Any

import psycopg
import pydantic
import pytest

import foundation.events._aio as aio_events
import foundation.events._service as sync_events
from foundation import AsyncFoundation, Foundation, FoundationError, StorageUnavailableError
from foundation.database.url import DatabaseURL
from foundation.events._plan import NO_IDS, known_ids
from tests.helpers import async_wait_for, wait_for

from .test_events_cli import ok, run


def _each_lookup_loses_a_race(
    monkeypatch: pytest.MonkeyPatch, module: Any, url: str, events: list[dict[str, Any]]
) -> None:
    """After the k-th id lookup of ``module``'s store, another instance stores
    ``events[k]`` (an overlapping retry of it commits first), for each of ``events``."""
    landed = iter(events)

    def lookup(sql: Any, batch: Any) -> Generator[Any, Any, Any]:
        known = yield from known_ids(sql, batch)
        event = next(landed, None)
        if event is not None:
            with Foundation(url, migrate="check") as other:
                other.events.store(event)
        return known

    monkeypatch.setattr(module, "known_ids", lookup)


def _batch() -> list[dict[str, Any]]:
    return [{"id": str(uuid.uuid4()), "type": "t", "data": {"i": i}} for i in range(3)]


def test_retries_overlapping_in_a_chain_get_the_original_records(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = _batch()
    with Foundation(pg_url, migrate="check") as fdn:
        _each_lookup_loses_a_race(monkeypatch, sync_events, pg_url, batch[:2])
        records = fdn.events.store_many(batch)
        assert [str(r.id) for r in records] == [e["id"] for e in batch]
        assert sorted(r.data["i"] for r in fdn.events.get()) == [0, 1, 2]  # once each


async def test_retries_overlapping_in_a_chain_get_the_original_records_async(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = _batch()
    async with AsyncFoundation(pg_url, migrate="check") as fdn:
        _each_lookup_loses_a_race(monkeypatch, aio_events, pg_url, batch[:2])
        records = await fdn.events.store_many(batch)
        assert [str(r.id) for r in records] == [e["id"] for e in batch]
        assert len(await fdn.events.get()) == 3


def _reply_lost(monkeypatch: pytest.MonkeyPatch, fdn: Any, calls: list[str], aio: bool) -> None:
    """Each statement of the group commit runs, then its reply is lost."""
    db = fdn.events._db
    real = db.fetchall

    def lost(sql: str, params: Any = None) -> None:
        calls.append(sql)
        raise StorageUnavailableError("the reply was lost (simulated)")

    def call(sql: str, params: Any = None) -> Any:
        real(sql, params)
        lost(sql)

    async def acall(sql: str, params: Any = None) -> Any:
        await real(sql, params)
        lost(sql)

    monkeypatch.setattr(db, "fetchall", acall if aio else call)


def _units(fdn: Any, n: int) -> list[Any]:
    return [(fdn.events._parse_one({"type": "t", "data": {"i": i}}), NO_IDS) for i in range(n)]


def test_a_failed_group_commit_is_not_run_again_store_by_store(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Foundation(pg_url, migrate="check") as fdn:
        calls: list[str] = []
        _reply_lost(monkeypatch, fdn, calls, aio=False)
        outcomes = fdn.events._append_group(_units(fdn, 4))
        monkeypatch.undo()
        assert len(calls) == 1  # one wait, not five
        assert all(isinstance(o, StorageUnavailableError) for o in outcomes)
        assert len(fdn.events.get()) == 4  # written once


async def test_a_failed_group_commit_is_not_run_again_store_by_store_async(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncFoundation(pg_url, migrate="check") as fdn:
        calls: list[str] = []
        _reply_lost(monkeypatch, fdn, calls, aio=True)
        outcomes = await fdn.events._append_group(_units(fdn, 4))
        monkeypatch.undo()
        assert len(calls) == 1
        assert all(isinstance(o, StorageUnavailableError) for o in outcomes)
        assert len(await fdn.events.get()) == 4


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_an_export_to_a_full_disk_says_it_is_incomplete(db_url: str) -> None:
    ok(db_url, "events", "export", os.devnull)  # migrates, nothing to export
    with Foundation(db_url, migrate="check") as fdn:
        fdn.events.store({"type": "t", "data": {}})
    result = run(db_url, "events", "export", "/dev/full")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error [storage_error]: cannot write /dev/full" in result.stderr
    assert "the export is incomplete" in result.stderr


def test_tail_refuses_an_idle_timeout_of_nan(db_url: str) -> None:
    result = run(db_url, "events", "tail", "--follow", "--idle-timeout", "nan")
    assert result.exit_code == 2 and "nan is not a number of seconds" in result.stderr


def test_register_type_with_a_huge_version_is_refused_at_once(fdn: Foundation) -> None:
    class Order(pydantic.BaseModel):
        total: int

    with pytest.raises(FoundationError) as err:
        fdn.events.register_type("order", Order, version=2**62, upcasters={1: lambda d: d})
    assert err.value.code == "event_error"
    assert err.value.context["missing"][:2] == [2, 3] and len(err.value.context["missing"]) == 20
    assert err.value.context["missing_count"] == 2**62 - 2


@pytest.mark.parametrize(
    ("name", "types"),
    [("ok", ""), ("ok", ["x" * 1000]), ("ok", ["a", " "]), ("line\nbreak", None)],
)
def test_subscribe_refuses_types_no_event_has_and_unprintable_names(
    fdn: Foundation, name: str, types: Any
) -> None:
    with pytest.raises(FoundationError) as err:
        fdn.events.subscribe(name, lambda event: None, types=types)
    assert err.value.code == "event_error"
    assert fdn.events._subscriptions == []


def _plain_insert(db_url: str, event_id: str, data: str = "{}") -> None:
    """An INSERT an auditor or a script might make, straight through the driver."""
    url = DatabaseURL.parse(db_url)
    if url.backend == "sqlite":
        with contextlib.closing(sqlite3.connect(url.sqlite_path, isolation_level=None)) as c:
            c.execute(
                "INSERT INTO foundation_events (id, type, data, metadata, recorded_at) "
                "VALUES (?, 't', ?, '{}', '2026-11-30 00:00:00.000000')",
                (event_id, data),
            )
    else:
        with psycopg.connect(url.conninfo, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO foundation_events (id, type, data, metadata, recorded_at) "
                "VALUES (%s, 't', %s::jsonb, '{}', now())",
                (event_id, data),
            )


@pytest.mark.parametrize(
    ("event_id", "data"),
    [
        ("order-42", "{}"),
        ("0192F0C4-7A10-7B3E-9C1D-2F4B6A8C0E12", "{}"),  # another text than store()'s
        ("deadbeef", "{}"),
    ],
)
def test_the_log_refuses_a_row_its_readers_cannot_read(
    fdn: Foundation, db_url: str, event_id: str, data: str
) -> None:
    with pytest.raises((sqlite3.Error, psycopg.Error)):
        _plain_insert(db_url, event_id, data)
    assert fdn.events.get() == []


@pytest.mark.parametrize(
    ("column", "value", "rule"),
    [
        ("data", b"{}", "data must be JSON"),  # a blob: json_valid() takes it
        ("metadata", "[1]", "metadata must be a JSON object"),
        ("recorded_at", "garbage", "recorded_at must be an ISO date"),
        ("recorded_at", 12345, "recorded_at must be an ISO date"),
        ("stream_version", "abc", "stream_version must be an integer"),
    ],
)
def test_sqlite_refuses_what_postgres_column_types_refuse(
    tmp_path: Any, column: str, value: Any, rule: str
) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    row = {"id": str(uuid.uuid4()), "type": "t", "data": "{}", "metadata": "{}"}
    row |= {"recorded_at": "2026-11-30 00:00:00.000000", "stream_id": "s"}
    row |= {"stream_version": 1, column: value}
    with Foundation(url) as fdn:
        with (
            contextlib.closing(sqlite3.connect(tmp_path / "log.db")) as conn,
            pytest.raises(sqlite3.IntegrityError, match=rule),
        ):
            columns, marks = ", ".join(row), ", ".join("?" * len(row))
            conn.execute(
                f"INSERT INTO foundation_events ({columns}) VALUES ({marks})", tuple(row.values())
            )
        assert fdn.events.get() == []


def test_sqlite_refuses_a_row_whose_data_is_not_json(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'log.db'}"
    with Foundation(url) as fdn:
        with pytest.raises(sqlite3.IntegrityError, match="data must be JSON"):
            _plain_insert(url, str(uuid.uuid4()), "{not json")
        assert fdn.events.get() == []


def _unreadable_row_written_before_0014(db_url: str, event_id: str = "order-42") -> None:
    url = DatabaseURL.parse(db_url)
    if url.backend == "sqlite":
        with contextlib.closing(sqlite3.connect(url.sqlite_path, isolation_level=None)) as c:
            c.execute("DROP TRIGGER foundation_events_valid_row")
    else:
        with psycopg.connect(url.conninfo, autocommit=True) as conn:
            conn.execute("DROP TRIGGER foundation_events_valid_row ON foundation_events")
    _plain_insert(db_url, event_id)


def test_a_row_no_reader_can_read_is_named_by_its_position(fdn: Foundation, db_url: str) -> None:
    fdn.events.store({"type": "t", "data": {}})
    _unreadable_row_written_before_0014(db_url)
    failed: list[dict[str, Any]] = []
    fdn.telemetry.attach(
        "unreadable",
        ("foundation", "events", "subscription", "failed"),
        lambda _e, measurements, meta, _c: failed.append({**measurements, **meta}),
    )
    with pytest.raises(FoundationError) as err:
        fdn.events.get(after_position=1)
    assert err.value.code == "event_error" and err.value.context["position"] == 2
    assert "position 2" in err.value.message
    seen: list[int] = []
    sub = fdn.events.subscribe("projection", lambda e: seen.append(e.position), start=0)
    wait_for(lambda: sub.status.state == "failed")
    assert seen == [1] and "position 2" in (sub.status.last_error or "")
    assert failed == [{"count": 1, "position": 2, "name": "projection", "error": "EventError"}]
    sub.stop()


async def test_a_row_no_reader_can_read_fails_an_async_subscription(db_url: str) -> None:
    async with AsyncFoundation(db_url, migrate="check") as fdn:
        await fdn.events.store({"type": "t", "data": {}})
        _unreadable_row_written_before_0014(db_url)
        seen: list[int] = []
        sub = await fdn.events.subscribe("projection", lambda e: seen.append(e.position), start=0)
        await async_wait_for(lambda: sub.status.state == "failed")
        assert seen == [1] and "position 2" in (sub.status.last_error or "")
        with pytest.raises(FoundationError) as err:
            async for _ in await fdn.events.tail(start=1):
                pass
        assert err.value.code == "event_error"
        await sub.stop()


def test_a_subscription_to_some_types_reports_no_lag_once_caught_up(fdn: Foundation) -> None:
    lags: list[int] = []
    fdn.telemetry.attach(
        "lag",
        ("foundation", "events", "subscription", "lag"),
        lambda _e, measurements, _m, _c: lags.append(measurements["lag"]),
    )
    fdn.events.store({"type": "order_cancelled", "data": {}})
    fdn.events.store_many([{"type": "order_placed", "data": {}}] * 50)
    sub = fdn.events.subscribe("cancellations", lambda e: None, types=["order_cancelled"])
    wait_for(lambda: lags)
    sub.stop()
    assert lags == [0]


@pytest.mark.parametrize(
    "event_id",
    ["a" * 36, "0192f0c47a10-7b3e-9c1d-2f4b6a8c0e12-", " 0192f0c4-7a10-7b3e-9c1d-2f4b6a8c0e1"],
)
def test_a_row_whose_id_only_looks_like_a_uuid_is_named_too(
    fdn: Foundation, db_url: str, event_id: str
) -> None:
    fdn.events.store({"type": "t", "data": {}})
    _unreadable_row_written_before_0014(db_url, event_id)
    with pytest.raises(FoundationError) as err:
        fdn.events.get(after_position=1)
    assert err.value.code == "event_error" and err.value.context["position"] == 2


def test_the_lag_drops_to_0_after_a_full_last_page(fdn: Foundation) -> None:
    lags: list[tuple[int, int]] = []
    fdn.telemetry.attach(
        "lag-full-page",
        ("foundation", "events", "subscription", "lag"),
        lambda _e, measurements, _m, _c: lags.append((measurements["count"], measurements["lag"])),
    )
    fdn.events.store_many([{"type": "order_cancelled", "data": {}}] * 10)
    fdn.events.store_many([{"type": "order_placed", "data": {}}] * 50)
    sub = fdn.events.subscribe(
        "cancellations",
        lambda e: None,
        types=["order_cancelled"],
        batch_size=10,
        poll_interval_ms=10,
    )
    wait_for(lambda: lags and lags[-1] == (0, 0))
    sub.stop()
    assert lags == [(10, 50), (0, 0)]  # told once, not at every idle poll
