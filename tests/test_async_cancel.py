"""Cancelling an awaited call of AsyncFoundation (``asyncio.wait_for`` timing out, a
dropped request) leaves nothing half done. SQLite and PostgreSQL.

1. The connection is clean afterwards: no transaction left open (SQLite ran a BEGIN its
   cancelled caller never saw, and every later store went into it, never committed), no
   half-read statement holding the file's write lock (other processes could not write).
2. A registry write is whole: a name or member written is one this node knows it holds
   (it can update and remove it), or it is not written.

Each call is cancelled after 1, 2, 3 … turns of the loop, so that the cancellation lands
on each of its awaits in turn.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from foundation import AsyncFoundation, Foundation, FoundationError
from tests.conftest import fresh_postgres
from tests.helpers import async_wait_for

TURNS = range(1, 7)

Op = Callable[[AsyncFoundation], Awaitable[Any]]

WRITES: dict[str, Op] = {
    "store_many": lambda f: f.events.store_many([{"type": "a"}, {"type": "b"}]),
    "store in a stream": lambda f: f.events.store({"type": "a", "stream_id": "s"}),
    "store with an id": lambda f: f.events.store({"type": "a", "id": str(uuid.uuid4())}),
    "store": lambda f: f.events.store({"type": "a"}),
    "config.set": lambda f: f.config.set("k", uuid.uuid4().hex),
    "update_metadata": lambda f: f.service_registry.update_metadata("held", {"u": 1}),
    "join": lambda f: f.service_registry.join("g", "http://x"),
    "rate_limiter": lambda f: f.rate_limiter.execute(
        lambda: 1, key="k", max_requests=10**6, interval=60_000
    ),
}


async def cancelled_after(aw: Awaitable[Any], turns: int) -> bool:
    """Run ``aw`` as a task cancelled after ``turns`` turns of the loop; whether the
    cancellation reached it (False: it had finished)."""
    task = asyncio.ensure_future(aw)
    for _ in range(turns):
        await asyncio.sleep(0)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return True
    return False


def sqlite_write_lock_free(url: str) -> bool:
    other = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=0.05)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()


def log_length(url: str) -> int:
    """The log's length as another connection (another process would) reads it."""
    with Foundation(url, migrate="skip", events_tail_size=0) as other:
        return len(other.events.get(limit=10_000))


@pytest.mark.parametrize("op", list(WRITES))
async def test_a_cancelled_write_leaves_the_connection_clean(db_url: str, op: str) -> None:
    async with AsyncFoundation(db_url, migrate="skip", poll_interval_ms=5) as fdn:
        await fdn.service_registry.register("held", "http://x")
        for turns in TURNS:
            await cancelled_after(WRITES[op](fdn), turns)
            if db_url.startswith("sqlite"):
                assert sqlite_write_lock_free(db_url), f"locked after {turns} turns"
            # Later writes commit: another connection sees them.
            before = await fdn.events.get(limit=10_000)
            stored = await fdn.events.store_many([{"type": "later"}, {"type": "later"}])
            assert [r.position for r in stored] == [
                r.position for r in (await fdn.events.get(limit=10_000))[len(before) :]
            ][-2:]
            assert log_length(db_url) == len(before) + 2, f"after {turns} turns"


async def test_a_cancelled_store_leaves_the_tail_cache_true(db_url: str) -> None:
    async with AsyncFoundation(db_url, migrate="skip", poll_interval_ms=5) as fdn:
        for turns in TURNS:
            await cancelled_after(fdn.events.store({"type": "a", "data": turns}), turns)
            # The cancelled store is written and known, or not written: what the cache
            # answers (no other node writes here) is what the database holds.
            cached = [r.data for r in await fdn.events.get(type="a", limit=100)]
            with Foundation(db_url, migrate="skip", events_tail_size=0) as other:
                assert cached == [r.data for r in other.events.get(type="a", limit=100)]
        assert fdn.events.tail_cache.hits > 0


async def test_a_cancelled_register_is_held_or_not_written(db_url: str) -> None:
    async with AsyncFoundation(db_url, migrate="skip", poll_interval_ms=5) as fdn:
        reg = fdn.service_registry
        for turns in TURNS:
            name = f"svc.{turns}"
            if not await cancelled_after(reg.register(name, "http://x"), turns):
                await reg.unregister(name)
                continue
            entry = reg.find(name)
            if entry is None:  # not written: nobody holds it
                row = await fdn.database.fetchone(
                    "SELECT node_id FROM foundation_registry WHERE name = "
                    + (":n" if db_url.startswith("sqlite") else "%(n)s"),
                    {"n": name},
                )
                assert row is None or row[0] is None
                continue
            assert entry.node == reg.node and reg.owns(name)
            updated = await reg.update_metadata(name, {"v": 2})
            assert updated.metadata == {"v": 2}
            await reg.unregister(name)
            assert reg.find(name) is None
            await reg.register(name, "http://y")  # free for this node again


async def test_a_cancelled_join_is_a_member_or_not_written(db_url: str) -> None:
    async with AsyncFoundation(db_url, migrate="skip", poll_interval_ms=5) as fdn:
        reg = fdn.service_registry
        for turns in TURNS:
            mid = f"m{turns}"
            await cancelled_after(reg.join("workers", "http://x", member_id=mid), turns)
            listed = mid in [m.member_id for m in reg.members("workers")]
            if listed:
                await reg.leave("workers", mid)
            else:
                with pytest.raises(FoundationError):
                    await reg.leave("workers", mid)
            assert mid not in [m.member_id for m in reg.members("workers")]


def _q(url: str, sql: str) -> str:
    """``sql`` with ``?`` placeholders in the driver's style of ``url``."""
    return sql if url.startswith("sqlite") else sql.replace("?", "%s")


async def test_a_cancelled_close_still_releases_names_members_and_lease(db_url: str) -> None:
    for turns in TURNS:
        node = f"web-{turns}"
        fdn = await AsyncFoundation(db_url, migrate="skip", node_id=node).open()
        await fdn.service_registry.register(f"auth-{turns}", "http://10.0.0.5:8000")
        await fdn.service_registry.join("workers", "http://10.0.0.5:8000")
        assert await cancelled_after(fdn.close(), turns)
        await fdn.close()  # a second close: nothing left to do, and no error
        with Foundation(db_url, migrate="skip", node_id=f"other-{turns}") as other:
            assert other.service_registry.find(f"auth-{turns}") is None
            assert other.service_registry.members("workers") == []
            leases = other.database.fetchall(
                _q(db_url, "SELECT node_id FROM foundation_leases WHERE node_id = ?"), (node,)
            )
        assert leases == []


async def test_a_cancelled_subscribe_holds_nothing(db_url: str) -> None:
    async with AsyncFoundation(db_url, migrate="skip", poll_interval_ms=5) as fdn:
        await fdn.events.store({"type": "t"})
        for turns in range(1, 40):  # subscribe takes more turns than a write
            name = f"billing-{turns}"
            subscribing = fdn.events.subscribe(name, lambda e: None, lease_ms=60_000)
            if not await cancelled_after(subscribing, turns):
                continue  # subscribed before the cancellation: its object was returned
            # Free at once (not after its minute of lease): the claim was given back.
            sub = await fdn.events.subscribe(name, lambda e: None)
            await sub.stop()


async def test_a_cancelled_stop_gives_the_name_up_after_the_handler_ends(db_url: str) -> None:
    async with AsyncFoundation(db_url, migrate="skip", poll_interval_ms=5) as fdn:
        await fdn.events.store({"type": "t"})
        log: list[str] = []
        started = asyncio.Event()

        async def slow(event: Any) -> None:
            started.set()
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                await asyncio.sleep(0.3)  # cleaning up after itself
                log.append("first cleaned up")
                raise

        sub = await fdn.events.subscribe("mail", slow)
        await asyncio.wait_for(started.wait(), 10)
        stopper = asyncio.create_task(sub.stop(timeout=0.05))  # cancels the handler
        await asyncio.sleep(0.1)
        stopper.cancel()  # while the handler still cleans up
        with pytest.raises(asyncio.CancelledError):
            await stopper
        log.append("stop ended")
        second = await fdn.events.subscribe("mail", lambda e: log.append("second got it"))
        await async_wait_for(lambda: "second got it" in log)
        await second.stop()
    assert log[:2] == ["first cleaned up", "stop ended"]


async def test_a_cancelled_breaker_outcome_is_known_at_once(db_url: str) -> None:
    async with AsyncFoundation(db_url, migrate="skip", poll_interval_ms=60_000) as fdn:
        cb = fdn.circuit_breaker

        async def boom() -> None:
            raise ValueError("down")

        for turns in TURNS:
            name = f"b{turns}"
            await cancelled_after(
                cb.execute(boom, name=name, max_failures=1, reset_timeout=60_000), turns
            )
            row = await fdn.database.fetchone(
                _q(db_url, "SELECT state FROM foundation_breakers WHERE name = ?"), (name,)
            )
            assert cb.state(name) == (row[0] if row else "closed"), f"after {turns} turns"


@pytest.mark.parametrize("via", ["subscription handler", "watch callback"])
async def test_a_callback_may_close_its_foundation(db_url: str, via: str) -> None:
    # close() runs in a task of its own (see finish): stop() and the watch dispatcher must
    # still know they are called from their own side, or they would wait for the
    # callback, which waits for close().
    fdn = await AsyncFoundation(db_url, migrate="skip", poll_interval_ms=5).open()
    closed = asyncio.Event()

    async def shutdown(_: Any) -> None:
        await fdn.close()
        closed.set()

    if via == "subscription handler":
        await fdn.events.subscribe("shutdown", shutdown)
        await fdn.events.store({"type": "shutdown"})
    else:
        fdn.service_registry.watch("svc.*", shutdown)
        await fdn.service_registry.register("svc.a", "http://x")
    await asyncio.wait_for(closed.wait(), 10)
    with pytest.raises(FoundationError, match="closed"):
        await fdn.events.store({"type": "after"})


async def test_cancelled_calls_give_every_pool_connection_back(
    postgres_server: str, postgres_template: str
) -> None:
    """A cancellation that landed while psycopg_pool's connection() handed a connection
    back lost it: after some hundreds of timed-out reads every call waited for a
    connection and failed with storage_unavailable."""
    with fresh_postgres(postgres_server, postgres_template) as url:
        await _read_storm(url)


async def _read_storm(url: str) -> None:
    async with AsyncFoundation(url, migrate="skip", events_tail_size=0) as fdn:
        await fdn.events.store({"type": "x", "stream_id": "s"})
        timeouts = 0

        async def reader(k: int) -> None:
            nonlocal timeouts
            for n in range(60):
                try:
                    await asyncio.wait_for(fdn.events.read_stream("s"), (k * 60 + n) % 5 / 1000)
                except TimeoutError:
                    timeouts += 1

        await asyncio.gather(*(reader(k) for k in range(12)))
        assert timeouts > 100  # the race was run
        pool = fdn.events._db._pool
        assert pool is not None
        stats = pool.get_stats()
        assert stats["pool_available"] == stats["pool_size"]
        assert len(await asyncio.wait_for(fdn.events.read_stream("s"), 2)) == 1
