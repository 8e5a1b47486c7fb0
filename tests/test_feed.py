"""The change feed across instances and OS processes, and after the LISTEN connection dies."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import Any

import psycopg

from foundation import AsyncFoundation, Foundation
from foundation.database.url import DatabaseURL
from tests.helpers import async_wait_for, wait_for

WRITER = textwrap.dedent(
    """
    import sys
    from foundation import Foundation
    with Foundation(sys.argv[1], migrate="skip") as fdn:
        fdn.config.set("from_child", {"pid": int(sys.argv[2])})
        fdn.config.delete("from_parent")
    """
)

WATCHER = textwrap.dedent(
    """
    import sys, threading
    from foundation import Foundation
    seen = threading.Event()
    with Foundation(sys.argv[1], migrate="skip", poll_interval_ms=5) as fdn:
        fdn.config.watch("ping", lambda change: seen.set() if change.new == "pong" else None)
        print("ready", flush=True)
        ok = seen.wait(30)
        print("seen" if ok else "timeout", fdn.config.get("ping"), flush=True)
    """
)


def test_changes_cross_os_processes_both_ways(db_url: str) -> None:
    with Foundation(db_url, migrate="skip", poll_interval_ms=5) as fdn:
        fdn.config.set("from_parent", 1)
        done = subprocess.run(
            [sys.executable, "-c", WRITER, db_url, "7"], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
        wait_for(lambda: fdn.config.get("from_child") == {"pid": 7})
        wait_for(lambda: fdn.config.get("from_parent") is None)

        child = subprocess.Popen(
            [sys.executable, "-c", WATCHER, db_url], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None
            assert child.stdout.readline().strip() == "ready"
            fdn.config.set("ping", "pong")
            assert child.stdout.readline().split() == ["seen", "pong"]
        finally:
            child.wait(timeout=30)
            if child.stdout is not None:
                child.stdout.close()


def _terminate_listeners(url: str) -> int:
    parsed = DatabaseURL.parse(url)
    with psycopg.connect(parsed.conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE 'foundation-listen:%%' AND datname = %s",
            (parsed.url.database,),
        ).fetchall()
    return len(rows)


def test_listener_reconnects_and_resyncs_after_termination(postgres_server: str) -> None:
    from tests.conftest import fresh_postgres

    with fresh_postgres(postgres_server) as url:
        with (
            Foundation(url, migrate="upgrade") as a,
            Foundation(url, listen_reconnect_max_ms=50) as b,
        ):
            assert b.feed.wait_connected(10)
            resyncs = b.feed.resyncs
            events: list[Any] = []
            b.telemetry.attach(
                "feed",
                ["foundation.feed.disconnected", "foundation.feed.connected"],
                lambda name, *_: events.append(name[-1]),
            )
            assert _terminate_listeners(url) == 2
            a.config.set("during", "outage")  # may land while b is reconnecting
            wait_for(lambda: b.feed.resyncs > resyncs)
            wait_for(lambda: b.config.get("during") == "outage")
            a.config.set("after", "reconnect")
            wait_for(lambda: b.config.get("after") == "reconnect")
            assert "disconnected" in events and "connected" in events
            # Pooled connections cut as well: the next write gets a fresh one.
            with psycopg.connect(DatabaseURL.parse(url).conninfo, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name LIKE 'foundation:%%' AND pid <> pg_backend_pid() "
                    "AND datname = %s",
                    (DatabaseURL.parse(url).url.database,),
                )
            a.config.set("after_cut", True)
            wait_for(lambda: b.config.get("after_cut") is True)


async def test_two_async_instances_share_changes(db_url: str) -> None:
    async with (
        AsyncFoundation(db_url, migrate="skip", poll_interval_ms=5) as a,
        AsyncFoundation(db_url, migrate="skip", poll_interval_ms=5) as b,
    ):
        await a.config.set("k", [1, 2, 3])
        await async_wait_for(lambda: b.config.get("k") == [1, 2, 3])
        await b.config.delete("k")
        await async_wait_for(lambda: a.config.get("k") is None)
