"""PostgreSQL: a burst of stores wakes the other nodes once, not once per store.

The first store of a burst notifies from its own statement; the stores that follow within
``NOTIFY_EVERY_S`` pass ``notify => false`` (migration 0008) and the writer's change feed
sends one NOTIFY for them, naming the highest position, when that time is up. The tests
listen with a plain psycopg connection, as another node's feed does, and make the
interval long so that what is coalesced does not depend on the machine's speed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from foundation import AsyncFoundation, Foundation
from foundation.database.url import DatabaseURL
from tests.helpers import wait_for


class Listener:
    """Another node's view of the channel: every events notification, in order."""

    def __init__(self, url: str) -> None:
        self.conn = psycopg.connect(DatabaseURL.parse(url).conninfo, autocommit=True)
        self.conn.execute("LISTEN foundation")

    def positions(self) -> list[int]:
        seen = []
        for note in self.conn.notifies(timeout=0.05, stop_after=None):
            payload = json.loads(note.payload)
            if payload["topic"] == "events":
                seen.append(payload["position"])
        return seen

    def collect(self, until: int, timeout: float = 10.0) -> list[int]:
        """Positions announced until one reaches ``until`` (or the timeout)."""
        seen: list[int] = []
        deadline = time.monotonic() + timeout
        while (not seen or seen[-1] < until) and time.monotonic() < deadline:
            seen += self.positions()
        return seen

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def listener(pg_url: str) -> Iterator[Listener]:
    node = Listener(pg_url)
    yield node
    node.close()


def _burst(fdn: Foundation, count: int) -> list[int]:
    return [fdn.events.store({"type": "burst", "data": {"i": i}}).position for i in range(count)]


def test_a_burst_is_announced_by_its_first_store_and_one_more(
    pg_url: str, listener: Listener
) -> None:
    with Foundation(pg_url, migrate="check") as fdn:
        fdn.events.NOTIFY_EVERY_S = 1.0
        positions = _burst(fdn, 5)
        announced = listener.collect(until=positions[-1])
    # The first store's own NOTIFY, then the feed's, naming the last position: every
    # event of the burst is covered, with two wake-ups instead of five.
    assert announced == [positions[0], positions[-1]]


def test_a_long_burst_notifies_from_its_stores_and_once_at_its_end(
    pg_url: str, listener: Listener
) -> None:
    with Foundation(pg_url, migrate="check") as fdn:
        fdn.events.NOTIFY_EVERY_S = interval = 0.05
        positions: list[int] = []
        started = time.monotonic()
        while time.monotonic() - started < 0.5:
            positions += _burst(fdn, 1)
        announced = listener.collect(until=positions[-1])
    # At most one store's own NOTIFY per interval; the feed's only at the end, since
    # each next one covered what the stores in between left to it.
    assert announced[-1] == positions[-1]
    # In order; a position may come twice when the tail cache could not place a store
    # of its own and asked the feed for one more notice (``_cache_written``).
    assert announced == sorted(announced)
    assert len(set(announced)) <= 0.5 / interval + 2
    assert len(announced) < len(positions) or len(positions) <= 0.5 / interval


def test_a_store_after_a_quiet_spell_notifies_at_once(pg_url: str, listener: Listener) -> None:
    with Foundation(pg_url, migrate="check") as fdn:
        fdn.events.NOTIFY_EVERY_S = 0.2
        first = _burst(fdn, 1)[0]
        assert listener.collect(until=first) == [first]
        time.sleep(0.3)  # longer than the interval: the next store is a burst's first
        second = _burst(fdn, 1)[0]
        started = time.monotonic()
        assert listener.collect(until=second) == [second]
        # Its own statement notified: no wait for the feed's interval (0.2 s).
        assert time.monotonic() - started < 0.2


def test_other_nodes_see_every_event_of_a_burst(pg_url: str) -> None:
    with (
        Foundation(pg_url, migrate="check") as writer,
        Foundation(pg_url, migrate="check") as reader,
    ):
        assert reader.feed.wait_connected(10)
        writer.events.NOTIFY_EVERY_S = 0.2
        seen: list[int] = []
        # Polling an hour apart: only the writer's NOTIFYs can wake it in time.
        sub = reader.events.subscribe(
            "follow",
            lambda e: seen.append(e.position),
            types=["burst"],
            start="end",
            poll_interval_ms=3_600_000,
        )
        try:
            wait_for(lambda: sub.status.state == "running")
            positions = _burst(writer, 20)
            wait_for(lambda: seen == positions)
            # The reader's tail cache caught up through the feed's announcement too.
            wait_for(lambda: reader.events.tail_cache.hi() == positions[-1])
            assert [e.position for e in reader.events.get(type="burst")] == positions
        finally:
            sub.stop()


def test_closing_sends_what_was_left_to_announce(pg_url: str, listener: Listener) -> None:
    with Foundation(pg_url, migrate="check") as fdn:
        fdn.events.NOTIFY_EVERY_S = 3600.0  # due long after the close below
        positions = _burst(fdn, 3)
    assert listener.collect(until=positions[-1]) == [positions[0], positions[-1]]


def test_an_announcement_survives_the_feed_losing_its_connection(
    pg_url: str, listener: Listener
) -> None:
    with Foundation(pg_url, migrate="check", listen_reconnect_max_ms=50) as fdn:
        assert fdn.feed.wait_connected(10)
        fdn.events.NOTIFY_EVERY_S = 1.0
        positions = _burst(fdn, 3)
        reconnects = fdn.feed.resyncs
        with psycopg.connect(DatabaseURL.parse(pg_url).conninfo, autocommit=True) as admin:
            cut = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name LIKE 'foundation-listen:%%' AND datname = %s",
                (DatabaseURL.parse(pg_url).url.database,),
            ).fetchall()
        assert len(cut) == 1
        wait_for(lambda: fdn.feed.resyncs > reconnects)
        assert listener.collect(until=positions[-1]) == [positions[0], positions[-1]]


async def test_the_async_face_coalesces_the_same_way(pg_url: str, listener: Listener) -> None:
    async with AsyncFoundation(pg_url, migrate="check") as fdn:
        fdn.events.NOTIFY_EVERY_S = 1.0
        positions = [
            (await fdn.events.store({"type": "burst", "data": {"i": i}})).position for i in range(4)
        ]
        announced = await asyncio.to_thread(listener.collect, positions[-1])
    assert announced == [positions[0], positions[-1]]


def test_the_three_argument_function_still_notifies(pg_url: str, listener: Listener) -> None:
    """Nodes of the previous release call the 0007 signature during a rolling deploy."""
    event: dict[str, Any] = {
        "u": 0,
        "id": "0190a000-0000-7000-8000-000000000001",
        "s": None,
        "e": "any",
        "t": "old.node",
        "d": {"v": 1},
        "m": {},
        "c": None,
        "k": None,
    }
    with psycopg.connect(DatabaseURL.parse(pg_url).conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT o_ord, o_position FROM foundation_append_events(%s::jsonb, now(), 'old')",
            (json.dumps([event]),),
        ).fetchall()
    assert len(rows) == 1 and rows[0][0] == 1
    assert listener.collect(until=rows[0][1]) == [rows[0][1]]
