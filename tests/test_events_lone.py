"""PostgreSQL: a lone event's own statement, and what happens when its snapshot is stale.

A store of one event is one INSERT that takes the writers' lock in its WITH clause
(``events._store._append_one``). The statement's snapshot is taken before it waits for
the lock, so a store of the same stream that commits while it waits is not in what it
read. The tests make that happen for certain: they hold the writers' lock in a
transaction of their own, wait until the store is queued behind it, append to the stream
in that transaction, and commit. The store must then answer as if it had read the
stream once it held the lock: the right version, or the right concurrency error.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from typing import Any

import psycopg
import pytest

from foundation import AsyncFoundation, Foundation
from foundation.database.url import DatabaseURL
from foundation.errors import ConcurrencyError
from foundation.events._store import EVENTS_LOCK_KEY
from tests.helpers import wait_for


def _waiting_for_the_lock(conninfo: str) -> bool:
    with psycopg.connect(conninfo, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        ).fetchone()
    return bool(row and row[0])


class _SlippedIn:
    """Holds the writers' lock; ``commit`` appends one event to ``stream`` meanwhile."""

    def __init__(self, url: str) -> None:
        self.conninfo = DatabaseURL.parse(url).conninfo
        self.conn = psycopg.connect(self.conninfo)
        self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (EVENTS_LOCK_KEY,))

    def commit(self, stream: str, version: int) -> None:
        wait_for(lambda: _waiting_for_the_lock(self.conninfo), timeout=10)
        row = self.conn.execute(
            "INSERT INTO foundation_events"
            " (id, stream_id, stream_version, type, data, metadata, recorded_at)"
            " VALUES (%s, %s, %s, 'slipped', '{}', '{}', now()) RETURNING position",
            (str(uuid.uuid4()), stream, version),
        ).fetchone()
        assert row is not None
        # Announced as another node's store is, for the tail caches.
        note = json.dumps({"topic": "events", "position": row[0], "writer": "another-node"})
        self.conn.execute("SELECT pg_notify('foundation', %s)", (note,))
        self.conn.commit()
        self.conn.close()


def _store_behind_the_lock(fdn: Foundation, url: str, event: dict[str, Any], version: int) -> Any:
    """``fdn.events.store(event)`` while another transaction appends ``version``."""
    slipped = _SlippedIn(url)
    outcome: list[Any] = []

    def store() -> None:
        try:
            outcome.append(fdn.events.store(event))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=store)
    thread.start()
    slipped.commit(event["stream_id"], version)
    thread.join(10)
    assert outcome, "the store did not return"
    return outcome[0]


@pytest.mark.parametrize(
    ("expected", "result"),
    [
        ("any", 3),  # the version after the one that slipped in
        (1, "actual 2"),  # the writer's view was out of date: a concurrency error
        (2, 3),  # what slipped in made the expectation true
        ("exists", 3),
        ("no_stream", "actual 2"),
    ],
)
def test_a_store_that_slipped_in_while_waiting_for_the_lock(
    pg_url: str, expected: Any, result: Any
) -> None:
    with Foundation(pg_url, migrate="check") as fdn:
        stream = "order-1" if expected != "no_stream" else "order-2"
        if expected != "no_stream":
            fdn.events.store({"type": "opened", "stream_id": stream})
        version = 2 if expected != "no_stream" else 1
        event = {"type": "paid", "stream_id": stream, "expected_version": expected}
        outcome = _store_behind_the_lock(fdn, pg_url, event, version)
        if isinstance(result, int):
            assert not isinstance(outcome, BaseException), outcome
            assert outcome.stream_version == result
        else:
            assert isinstance(outcome, ConcurrencyError)
            assert outcome.context["actual"] == version
        with psycopg.connect(DatabaseURL.parse(pg_url).conninfo) as conn:
            rows = conn.execute(
                "SELECT stream_version FROM foundation_events"
                " WHERE stream_id = %s ORDER BY position",
                (stream,),
            ).fetchall()
        written = [r[0] for r in rows]
        assert written == list(range(1, version + 1 + isinstance(result, int)))
        # The other writer's event reaches this node's cache through the feed.
        wait_for(lambda: [e.stream_version for e in fdn.events.get(stream_id=stream)] == written)


def test_a_lone_store_of_a_stream_is_one_statement(pg_url: str) -> None:
    with Foundation(pg_url, migrate="check") as fdn:
        sent: list[str] = []
        fetchall = fdn.events._db.fetchall

        def counting(sql: str, params: Any = None) -> Any:
            sent.append(sql)
            return fetchall(sql, params)

        fdn.events._db.fetchall = counting  # type: ignore[method-assign]
        first = fdn.events.store({"type": "a", "stream_id": "s", "expected_version": "no_stream"})
        second = fdn.events.store({"type": "b", "stream_id": "s", "expected_version": 1})
        assert (first.stream_version, second.stream_version) == (1, 2)
        assert sent == [fdn.events._sql.append_one_checked] * 2
        with pytest.raises(ConcurrencyError) as caught:  # a real mismatch: asked again
            fdn.events.store({"type": "c", "stream_id": "s", "expected_version": 5})
        assert caught.value.context["actual"] == 2
        assert sent[2:] == [fdn.events._sql.append_one_checked, fdn.events._sql.append]


async def test_async_a_store_that_slipped_in_takes_the_next_version(pg_url: str) -> None:
    async with AsyncFoundation(pg_url, migrate="check") as afdn:
        await afdn.events.store({"type": "opened", "stream_id": "s"})
        slipped = _SlippedIn(pg_url)
        task = asyncio.ensure_future(afdn.events.store({"type": "paid", "stream_id": "s"}))
        await asyncio.to_thread(slipped.commit, "s", 2)
        recorded = await task
        assert recorded.stream_version == 3
        assert [e.type for e in await afdn.events.read_stream("s")] == ["opened", "slipped", "paid"]
