"""Found by a reviewer running projections under faults and shutdowns.

* ``AsyncFoundation.close()`` stopped halfway when the subscription's task, or a task of
  the close itself, was cancelled meanwhile (the end of ``asyncio.run`` cancels every
  task: the SIGTERM -> ``sys.exit`` advice of docs/deployment.md). The registry, feed and
  database were never closed: on SQLite aiosqlite's thread kept the process alive, on
  PostgreSQL the subscription's name stayed ``running`` until its lease ran out.
* ``tail()`` (both faces, and ``events tail --follow``) ended with ``storage_unavailable``
  at the first failed read; subscriptions and stores ride the same fault out.
* The async face's ``stop()`` slept out a failing handler's retry backoff.
* ``stop(timeout=…)`` took no ``timedelta`` and let a ``TypeError`` through (the async
  face after marking itself stopping).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from foundation import (
    AsyncFoundation,
    EventError,
    Foundation,
    StorageError,
    StorageUnavailableError,
)
from foundation.database.url import DatabaseURL
from foundation.events import RecordedEvent
from tests.helpers import async_wait_for

from .test_events_cli import ok

FAST = {"poll_interval_ms": 20, "retry_backoff_ms": 1}


def _row(fdn: Foundation, name: str) -> tuple[Any, ...] | None:
    return fdn.database.fetchone(fdn.events._sql.sub_read, {"name": name})


def _cut_connections(fdn: Foundation | AsyncFoundation, url: str) -> None:
    """PostgreSQL: every connection of the node terminated by the server."""
    if fdn.url.backend != "postgresql":
        return
    with psycopg.connect(DatabaseURL.parse(url).conninfo, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE %s",
            (f"%{fdn.settings.node_id}%",),
        )


def _failing_reads(monkeypatch: pytest.MonkeyPatch, db: Any, count: int, aio: bool) -> None:
    """The next ``count`` reads of ``db`` fail as an outage does."""
    real = db.fetchall
    failures = iter(range(count))

    def fail() -> None:
        if next(failures, None) is not None:
            raise StorageUnavailableError("the database is down (simulated)")

    def flaky(sql: str, params: Any = None) -> Any:
        fail()
        return real(sql, params)

    async def aflaky(sql: str, params: Any = None) -> Any:
        fail()
        return await real(sql, params)

    monkeypatch.setattr(db, "fetchall", aflaky if aio else flaky)


@pytest.mark.parametrize("cancelled", ["the subscription's task", "every task"])
async def test_async_close_completes_when_tasks_are_cancelled_meanwhile(
    db_url: str, cancelled: str
) -> None:
    fdn = await AsyncFoundation(db_url, migrate="check", poll_interval_ms=20)
    sub = await fdn.events.subscribe("projector", lambda e: None, **FAST)
    await async_wait_for(lambda: sub.status.state == "running")
    closing = asyncio.ensure_future(fdn.close())
    await asyncio.sleep(0)  # close() has begun
    if cancelled == "every task":  # as asyncio.run does at its end (close's own tasks too)
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task() and task is not closing:
                task.cancel()
    else:
        assert sub._task is not None
        sub._task.cancel()
    await closing
    assert sub.status.state == "stopped"
    assert fdn.database._closed and fdn.service_registry._closed
    with Foundation(db_url, migrate="check") as other:
        row = _row(other, "projector")
        assert row is not None and row[1] == "stopped"
        other.events.subscribe("projector", lambda e: None).stop()  # the name is free


def test_sync_close_runs_every_step_when_one_raises(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fdn = Foundation(db_url, migrate="check", poll_interval_ms=20)
    fdn.service_registry.register("svc", "addr")

    def interrupted() -> None:
        raise KeyboardInterrupt  # Ctrl-C while a handler ends, say

    monkeypatch.setattr(fdn.events, "close", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fdn.close()
    assert fdn.database._closed and fdn.service_registry._closed
    with Foundation(db_url, migrate="check") as other:
        assert other.service_registry.find("svc") is None  # released


def test_tail_rides_out_the_database_going_away(
    fdn: Foundation, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tail = fdn.events.tail(start="end", poll_interval_ms=20)
    first = fdn.events.store({"type": "a", "data": 1})
    assert next(tail) == first
    _failing_reads(monkeypatch, fdn.database, 3, aio=False)
    got: list[RecordedEvent] = []
    reader = threading.Thread(target=lambda: got.extend(next(tail) for _ in range(2)))
    reader.start()
    _cut_connections(fdn, db_url)
    with Foundation(db_url, migrate="check") as other:
        stored = other.events.store_many([{"type": "a", "data": 2}, {"type": "a", "data": 3}])
    reader.join(30)
    assert got == stored
    tail.close()


async def test_tail_rides_out_the_database_going_away_async(
    afdn: AsyncFoundation, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    tail: AsyncIterator[RecordedEvent] = await afdn.events.tail(start="end", poll_interval_ms=20)
    first = await afdn.events.store({"type": "a", "data": 1})
    assert await anext(tail) == first
    _failing_reads(monkeypatch, afdn.database, 3, aio=True)
    _cut_connections(afdn, db_url)
    with Foundation(db_url, migrate="check") as other:
        stored = other.events.store_many([{"type": "a", "data": 2}, {"type": "a", "data": 3}])
    assert [await anext(tail), await anext(tail)] == stored


def test_cli_tail_follow_rides_out_the_database_going_away(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import foundation.events._service as sync_events

    real = sync_events.Events.get
    calls = iter(range(10**6))

    def get(self: Any, *args: Any, **kwargs: Any) -> Any:
        n = next(calls)
        if n == 1:  # the first read of the follow loop: then an event arrives
            with Foundation(db_url, migrate="check") as other:
                other.events.store({"type": "t", "data": 1})
        if 1 <= n <= 3:
            raise StorageUnavailableError("the database is down (simulated)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(sync_events.Events, "get", get)
    out = ok(db_url, "events", "tail", "-n", "0", "--follow", "--max-events", "1", "--json")
    assert '"type": "t"' in out.stdout
    assert out.stderr.count("retrying") == 1


async def test_async_stop_cuts_a_retry_backoff_short(afdn: AsyncFoundation) -> None:
    calls: list[int] = []

    def failing(event: RecordedEvent) -> None:
        calls.append(event.position)
        raise RuntimeError("not yet")

    sub = await afdn.events.subscribe(
        "backoff", failing, retry_backoff_ms=600_000, max_retries=3, poll_interval_ms=20
    )
    await afdn.events.store({"type": "a"})
    await async_wait_for(lambda: calls)
    # With the handler's next try ten minutes away, stop() returns at once; it waited
    # for the backoff (up to its timeout, then cancelled) before.
    await asyncio.wait_for(sub.stop(timeout=300), 60)
    assert sub.status.state == "stopped" and calls == [calls[0]]


@pytest.mark.parametrize("bad", ["5", -1, float("nan"), True])
def test_stop_timeout_is_checked_before_anything_changes(fdn: Foundation, bad: Any) -> None:
    sub = fdn.events.subscribe("checked", lambda e: None, **FAST)
    with pytest.raises(EventError) as info:
        sub.stop(timeout=bad)
    assert info.value.context["field"] == "timeout"
    assert sub.status.state == "running"
    sub.stop(timeout=timedelta(seconds=5))  # a timedelta, as every duration option
    assert sub.status.state == "stopped"
    again = fdn.events.subscribe("checked", lambda e: None, **FAST)
    again.stop(timeout=None)  # no limit
    assert again.status.state == "stopped"


async def test_stop_timeout_is_checked_before_anything_changes_async(
    afdn: AsyncFoundation,
) -> None:
    sub = await afdn.events.subscribe("checked", lambda e: None, **FAST)
    with pytest.raises(EventError):
        await sub.stop(timeout="5")  # type: ignore[arg-type]
    assert sub.status.state == "running"
    await sub.stop(timeout=timedelta(seconds=5))
    assert sub.status.state == "stopped"


def test_tail_raises_an_error_that_waiting_cannot_cure(
    fdn: Foundation, monkeypatch: pytest.MonkeyPatch
) -> None:
    tail = fdn.events.tail(start="beginning", poll_interval_ms=20)

    def broken(sql: str, params: Any = None) -> Any:
        raise StorageError("no such table: foundation_events (simulated)")

    monkeypatch.setattr(fdn.database, "fetchall", broken)
    with pytest.raises(StorageError):
        next(tail)


def test_cli_tail_follow_idle_timeout_ends_it_during_an_outage(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import foundation.events._service as sync_events

    def down(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise StorageUnavailableError("the database is down (simulated)")

    monkeypatch.setattr(sync_events.Events, "get", down)
    out = ok(db_url, "events", "tail", "-n", "0", "--follow", "--idle-timeout", "0.3")
    assert out.stderr.count("retrying") == 1
