"""Found in the ninth round of review, outside the event log and the registry.

* ``fdn.poller()`` emitted values (``memory.peak_rss``, ``memory.vms``,
  ``circuit_breakers.total``) that ``default_metrics()`` had no metric for, though
  docs/telemetry.md says every value has one.
* A closed ``Foundation`` could be entered again (``with fdn:``) without a word, failing
  only at its first database call; ``AsyncFoundation`` refuses at once.
* PostgreSQL: ``AsyncFoundation.close()`` run after every task was cancelled (the end of
  ``asyncio.run`` after SIGTERM -> ``sys.exit``) left the pool's idle connections open.
* ``AsyncFoundation`` on SQLite: calls queued for the instance's one connection each
  waited a whole busy timeout in turn while another process held the write lock (three
  writes: 5, 10 and 15 s).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from typing import Any

import psycopg
import pytest

from foundation import AsyncFoundation, Foundation, FoundationError
from foundation.database.url import DatabaseURL
from foundation.telemetry import default_metrics
from tests.helpers import async_wait_for


def test_every_value_the_poller_emits_has_a_default_metric(fdn: Foundation) -> None:
    emitted: set[str] = set()
    fdn.telemetry.attach(
        "review9-poller",
        [
            ("foundation", "poller", "memory"),
            ("foundation", "poller", "event_log"),
            ("foundation", "poller", "circuit_breakers"),
        ],
        lambda event, measurements, _m, _c: emitted.update(
            ".".join(event) + "." + key for key in measurements
        ),
    )
    with fdn.poller(interval_ms=10):
        deadline = time.monotonic() + 10
        while len(emitted) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    names = {metric.dotted_name for metric in default_metrics()}
    assert emitted and emitted <= names, emitted - names


def test_a_closed_foundation_is_not_entered_again(db_url: str) -> None:
    fdn = Foundation(db_url, migrate="check")
    with fdn:
        fdn.config.set("k", 1)
    with pytest.raises(FoundationError) as err, fdn:
        pass
    assert err.value.code == "storage_unavailable" and "cannot be opened again" in str(err.value)


async def test_async_close_closes_idle_connections_when_every_task_was_cancelled(
    db_url: str,
) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("a pool of connections is PostgreSQL's")
    fdn = await AsyncFoundation(db_url, migrate="check", pool_max_size=8)
    await asyncio.gather(*(fdn.events.get(limit=1) for _ in range(20)))  # a few connections
    # Settled: a connection the pool is still opening when its task is cancelled is not
    # the pool's yet, and not this test's subject.
    await async_wait_for(lambda: fdn.database._pool.get_stats().get("pool_size", 0) > 1)
    await asyncio.sleep(0.3)
    for task in asyncio.all_tasks():  # as asyncio.run does at its end, the pool's own too
        if task is not asyncio.current_task():
            task.cancel()
    await asyncio.sleep(0.05)
    await fdn.close()
    with psycopg.connect(DatabaseURL.parse(db_url).conninfo, autocommit=True) as admin:

        def left() -> int:  # a closed connection's server process ends a moment later
            row = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE %s",
                (f"%{fdn.settings.node_id}%",),
            ).fetchone()
            return int(row[0]) if row else 0

        await async_wait_for(lambda: left() == 0)


async def test_async_sqlite_calls_wait_one_busy_timeout_in_all(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/locked.db"
    fdn = await AsyncFoundation(url, sqlite_busy_timeout_ms=200)
    try:
        held, release = threading.Event(), threading.Event()

        def other_process() -> None:  # another writer holds the file's write lock
            conn = sqlite3.connect(f"{tmp_path}/locked.db", isolation_level=None)
            conn.execute("BEGIN IMMEDIATE")
            held.set()
            release.wait(10)
            conn.execute("COMMIT")
            conn.close()

        holder = threading.Thread(target=other_process)
        holder.start()
        held.wait(5)
        threading.Timer(0.7, release.set).start()
        outcomes = await asyncio.gather(
            *(fdn.events.store({"type": "queued", "data": i}) for i in range(5)),
            return_exceptions=True,
        )
        await asyncio.to_thread(holder.join)
        # Each gave up after one busy timeout (200 ms), long before the lock was let go:
        # queued one behind another, the fourth would have waited past 0.7 s and written.
        codes = [getattr(o, "code", o) for o in outcomes]
        assert codes == ["storage_unavailable"] * 5
        assert await fdn.events.get(type="queued") == []
    finally:
        await fdn.close()


async def test_async_sqlite_calls_queued_behind_their_own_instance_do_not_time_out(
    tmp_path: Any,
) -> None:
    """Found in review of the fix above: waiting behind this instance's own statements
    was counted against the busy timeout (2999 of 3000 stores failed with 20 ms)."""
    fdn = await AsyncFoundation(f"sqlite:///{tmp_path}/busy.db", sqlite_busy_timeout_ms=20)
    try:
        stored = await asyncio.gather(*(fdn.events.store({"type": "q"}) for _ in range(500)))
        assert len({e.position for e in stored}) == 500
        row = await fdn.database.fetchone("PRAGMA busy_timeout")
        assert row == (20,)
    finally:
        await fdn.close()
