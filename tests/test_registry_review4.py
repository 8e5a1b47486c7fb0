"""The registry after the fourth review. Sync and async, SQLite and PostgreSQL.

1. A lease loss never lengthens a name's own ``ttl``: the recovery writes it again with the
   end it had, and a name past its TTL is not written again (``expired``, once).
2. A node's own writes of one name, from many threads or tasks, are reported one by one,
   ``local``, in revision order; the change feed leaves a name being written to its
   writer on both backends.
3. ``close()`` delivers what is queued for at most a second; no callback starts after it
   returns.
4. ``list(where=...)`` compares metadata as JSON: ``true`` is not ``1``.
5. A resync reports what it finds name by name, in name order.
6. A name with a lone surrogate is refused for what it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import pytest

from foundation import AsyncFoundation, Foundation, ValidationError
from foundation.service_registry import RegistryChange
from tests.helpers import async_wait_for, wait_for
from tests.test_registry import drain, node, stop_heartbeat
from tests.test_registry_async import freeze
from tests.test_registry_review3 import anode, kinds, lease_lost, watched


def _row_sql(name: str) -> str:
    return f"SELECT epoch, expires_at FROM foundation_registry WHERE name = '{name}'"


def row(fdn: Foundation, name: str) -> tuple[int, datetime]:
    """(epoch, expires_at) of ``name``'s row, read from the database."""
    found = fdn.database.fetchone(_row_sql(name))
    assert found is not None
    return int(found[0]), fdn.service_registry._sql.codec.load_ts(found[1])


async def arow(fdn: AsyncFoundation, name: str) -> tuple[int, datetime]:
    found = await fdn.database.fetchone(_row_sql(name))
    assert found is not None
    return int(found[0]), fdn.service_registry._sql.codec.load_ts(found[1])


def resume_heartbeat(fdn: Foundation) -> None:
    """Start a stopped heartbeat again, as a paused process that resumes."""
    reg = fdn.service_registry
    reg._stop.clear()
    reg._thread = threading.Thread(target=reg._run, daemon=True)
    reg._thread.start()


def aresume_heartbeat(fdn: AsyncFoundation) -> None:
    reg = fdn.service_registry
    reg._task = asyncio.get_running_loop().create_task(reg._run())


# -- 1. a lease loss never lengthens a name's own ttl -----------------------------------------


def test_a_recovery_keeps_the_end_of_a_names_own_ttl(db_url: str) -> None:
    with node(db_url) as a, node(db_url) as b:
        there = watched(b, "job")
        here = watched(a, "job")
        first = a.service_registry.register("job", "http://a", ttl=4000)
        epoch, end = row(a, "job")
        assert epoch == 1
        wait_for(lambda: b.service_registry.find("job") is not None)
        stop_heartbeat(a)  # paused past its lease (1 s), well within the name's TTL (4 s)
        wait_for(lambda: not a.service_registry.owns("job"), timeout=5)
        resume_heartbeat(a)  # resumed: its sweep, then its recovery writes the name again
        wait_for(lambda: getattr(a.service_registry.find("job"), "epoch", 0) == 2)
        again = a.service_registry.lookup("job")
        assert again.epoch == 2 and again.registered_at > first.registered_at
        # The same end as the first registration, not a fresh TTL counted from now.
        assert again.until == pytest.approx(first.until, abs=0.002)
        epoch, end_again = row(a, "job")
        assert epoch == 2 and abs((end_again - end).total_seconds()) < 0.002
        wait_for(lambda: getattr(b.service_registry.find("job"), "epoch", 0) == 2)
        assert b.service_registry.lookup("job").until == pytest.approx(first.until, abs=0.002)
        # Gone on every node when the first registration's TTL ends.
        wait_for(lambda: b.service_registry.find("job") is None, timeout=5)
        assert time.time() >= first.until - 0.05
        assert a.service_registry.find("job") is None
        wait_for(lambda: len(there) == 4, timeout=5)
        drain(b.service_registry)
        drain(a.service_registry)
        # One expired per registration: the lease's end, then the TTL's.
        assert kinds(there) == ["register", "expired", "register", "expired"]
        assert [c.entry.epoch for c in there if c.entry is not None] == [1, 1, 2, 2]
        assert kinds(here)[:3] == ["register", "expired", "register"]


def test_a_name_past_its_own_ttl_is_not_written_again_by_a_recovery(db_url: str) -> None:
    with node(db_url) as a, node(db_url) as b:
        there = watched(b, "job")
        lost = lease_lost(a)
        first = a.service_registry.register("job", "http://a", ttl=1200)
        a.service_registry.register("kept", "http://a")
        stop_heartbeat(a)  # paused past its lease (1 s) and past the name's TTL (1.2 s)
        wait_for(lambda: time.time() > first.until + 0.05, timeout=5)
        assert a.service_registry.heartbeat() is False
        # Neither kept nor lost: expired; and never written again.
        assert lost[-1] == {"node": a.settings.node_id, "lost": [], "kept": ["kept"]}
        assert row(a, "job")[0] == 1
        assert a.service_registry.find("job") is None and not a.service_registry.owns("job")
        wait_for(lambda: len(there) == 2, timeout=5)
        time.sleep(0.2)  # a late re-registration would be seen by now
        drain(b.service_registry)
        assert kinds(there) == ["register", "expired"]
        assert b.service_registry.find("job") is None


async def test_async_a_recovery_keeps_the_end_of_a_names_own_ttl(db_url: str) -> None:
    async with anode(db_url) as a, anode(db_url) as b:
        there = watched(b, "job")
        first = await a.service_registry.register("job", "http://a", ttl=4000)
        await async_wait_for(lambda: b.service_registry.find("job") is not None)
        await freeze(a)
        await async_wait_for(lambda: not a.service_registry.owns("job"), timeout=5)
        aresume_heartbeat(a)
        await async_wait_for(lambda: getattr(a.service_registry.find("job"), "epoch", 0) == 2)
        again = a.service_registry.lookup("job")
        assert again.epoch == 2
        assert again.until == pytest.approx(first.until, abs=0.002)
        epoch, end = await arow(a, "job")
        assert epoch == 2 and end.timestamp() == pytest.approx(first.until, abs=0.002)
        await async_wait_for(lambda: getattr(b.service_registry.find("job"), "epoch", 0) == 2)
        await async_wait_for(lambda: b.service_registry.find("job") is None, timeout=5)
        assert time.time() >= first.until - 0.05
        await async_wait_for(lambda: len(there) == 4, timeout=5)
        assert kinds(there) == ["register", "expired", "register", "expired"]


# -- 2. a node's own concurrent writes of one name ---------------------------------------------

THREADS, CALLS = 8, 25


def metadata_changes(changes: list[RegistryChange]) -> list[RegistryChange]:
    return [c for c in changes if c.kind == "metadata"]


def assert_one_by_one(changes: list[RegistryChange], last: Any) -> None:
    got = metadata_changes(changes)
    assert len(got) == THREADS * CALLS  # every successful call, none coalesced
    assert {c.source for c in got} == {"local"}
    revisions = [c.entry.revision for c in got if c.entry is not None]
    assert revisions == sorted(set(revisions))  # in revision order, each once
    assert got[-1].entry is not None and got[-1].entry.metadata == last


def test_own_concurrent_metadata_changes_are_each_reported_in_order(db_url: str) -> None:
    with node(db_url) as a:
        reg = a.service_registry
        reg.register("n", "http://a", {"v": -1})
        seen = watched(a, "n")

        def update(i: int) -> None:
            for j in range(CALLS):
                reg.update_metadata("n", {"v": i * CALLS + j})

        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(update, range(THREADS)))
        time.sleep(0.1)  # a late change from the feed would have arrived
        drain(reg)
        assert_one_by_one(seen, reg.lookup("n").metadata)
        assert reg._writing == {}


async def test_async_own_concurrent_metadata_changes_are_each_reported_in_order(
    db_url: str,
) -> None:
    async with anode(db_url) as a:
        reg = a.service_registry
        await reg.register("n", "http://a", {"v": -1})
        seen = watched(a, "n")

        async def update(i: int) -> None:
            for j in range(CALLS):
                await reg.update_metadata("n", {"v": i * CALLS + j})

        await asyncio.gather(*(update(i) for i in range(THREADS)))
        await asyncio.sleep(0.1)
        await reg._dispatcher.flush(5)
        assert_one_by_one(seen, reg.lookup("n").metadata)
        assert reg._writing == {}


def test_the_feed_leaves_a_name_being_written_to_its_writer(db_url: str) -> None:
    """Both backends: a change of a name this node is writing, seen by the feed (a
    PostgreSQL notification, a SQLite poll, a resync), is read by the writer after its
    own (which may be that very change, committed but not yet in the cache)."""
    with node(db_url) as a, node(db_url) as b:
        assert a.feed.wait_connected(10)  # past its first full read, which applies all
        reg = a.service_registry
        lock = reg._begin_write("contested")
        lock.acquire()
        try:
            b.service_registry.register("contested", "http://b")
            wait_for(lambda: reg._writing["contested"][1] > 0)  # noted, not applied
            time.sleep(0.05)
            assert reg._state.cached_entry("contested") is None
            reg.resync(a.database)  # a resync (a listener reconnecting) leaves it too
            assert reg._state.cached_entry("contested") is None
        finally:
            reg._settle("contested", lock, True)
        assert reg.lookup("contested").address == "http://b"
        assert reg._writing == {}


async def test_async_a_task_cancelled_while_it_waits_to_write_leaves_no_trace(
    db_url: str,
) -> None:
    async with anode(db_url) as a:
        reg = a.service_registry
        await reg.register("n", "http://a")
        lock = reg._begin_write("n")  # another writer of "n" holds the name
        await lock.acquire()
        waiting = asyncio.create_task(reg.update_metadata("n", {"v": 1}))
        await asyncio.sleep(0.05)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await reg._settle("n", lock, True)
        assert reg._writing == {}
        assert (await reg.update_metadata("n", {"v": 2})).metadata == {"v": 2}


# -- 3. close() delivers for at most a second; nothing starts after it returns ---------------


def test_close_starts_no_callback_after_it_returns(db_url: str) -> None:
    a = node(db_url)
    gate = threading.Event()
    calls: list[tuple[str, str]] = []

    def slow(change: RegistryChange) -> None:
        calls.append((change.name, change.kind))
        gate.wait(10)  # far slower than close() waits

    a.service_registry.watch("*", slow)
    for i in range(3):
        a.service_registry.register(f"x{i}", "http://a")
    wait_for(lambda: len(calls) == 1)  # the first callback runs, blocked
    started = time.monotonic()
    a.close()
    assert time.monotonic() - started < 3  # a second for the callbacks, then it returns
    gate.set()  # the running callback ends; nothing starts after it
    thread = a.service_registry._dispatcher.thread
    assert thread is not None
    thread.join(5)
    assert not thread.is_alive()
    assert calls == [("x0", "register")]


async def test_async_close_starts_no_callback_after_it_returns(db_url: str) -> None:
    a = anode(db_url)
    await a.open()
    calls: list[tuple[str, str]] = []
    cancelled: list[str] = []

    async def slow(change: RegistryChange) -> None:
        calls.append((change.name, change.kind))
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(change.name)
            raise

    a.service_registry.watch("*", slow)
    for i in range(3):
        await a.service_registry.register(f"x{i}", "http://a")
    await async_wait_for(lambda: len(calls) == 1)
    started = time.monotonic()
    await a.close()
    assert time.monotonic() - started < 3
    assert cancelled == ["x0"]
    await asyncio.sleep(0.2)
    assert calls == [("x0", "register")]


async def _eight_names_watched_by_a_blocking_callback(
    db_url: str,
) -> tuple[AsyncFoundation, list[float], threading.Event]:
    """A node holding x0…x7, watched by a plain callback that records when it starts and,
    once ``slow`` is set, blocks the loop for half a second."""
    a = anode(db_url)
    await a.open()
    starts: list[float] = []
    slow = threading.Event()

    def blocking(change: RegistryChange) -> None:
        starts.append(time.monotonic())
        if slow.is_set():
            time.sleep(0.5)

    a.service_registry.watch("x*", blocking)
    for i in range(8):
        await a.service_registry.register(f"x{i}", "http://a")
    await a.service_registry._dispatcher.flush(5)  # the registrations' callbacks ran
    starts.clear()
    return a, starts, slow


async def test_async_close_gives_blocking_callbacks_a_second_not_more(db_url: str) -> None:
    """Plain callbacks that block the loop keep close()'s own timeout from firing: the
    dispatcher itself starts no callback past the second."""
    a, starts, slow = await _eight_names_watched_by_a_blocking_callback(db_url)
    slow.set()  # close() releases 8 names: 8 changes, 4 s of callbacks
    await a.close()
    closed = time.monotonic()
    await asyncio.sleep(0.2)
    assert starts and all(t < closed for t in starts)
    assert len(starts) < 8  # the rest was dropped, not delivered late


async def test_async_close_counts_its_second_from_its_start(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The change feed may read the release first, and its batch of blocking callbacks
    then holds the loop before close() reaches the dispatcher: the second still counts
    from close()'s start."""
    a, starts, slow = await _eight_names_watched_by_a_blocking_callback(db_url)
    db = a.service_registry._db
    transaction = db.transaction

    @contextlib.asynccontextmanager
    async def feed_first() -> Any:
        async with transaction() as tx:
            yield tx
        # Committed: let the feed apply (and queue) the release before close() goes on.
        await async_wait_for(lambda: a.service_registry.find("x7") is None, timeout=5)
        await asyncio.sleep(0.05)

    monkeypatch.setattr(db, "transaction", feed_first)
    slow.set()
    began = time.monotonic()
    await a.close()
    assert starts and all(t < began + 1.0 for t in starts)
    assert len(starts) < 8


# -- 4. where= compares metadata as JSON -------------------------------------------------------

WHERE = [
    ({"enabled": 1}, ["count-one", "float-one"]),
    ({"enabled": 1.0}, ["count-one", "float-one"]),
    ({"enabled": True}, ["flag-on"]),
    ({"enabled": 0}, []),
    ({"enabled": False}, ["off"]),
    ({"tags": [True]}, ["flag-on"]),
    ({"tags": [1]}, ["count-one"]),
]
METADATA = {
    "flag-on": {"enabled": True, "tags": [True]},
    "count-one": {"enabled": 1, "tags": [1]},
    "float-one": {"enabled": 1.5 - 0.5},
    "off": {"enabled": False},
}


def test_where_compares_metadata_as_json(fdn: Foundation) -> None:
    reg = fdn.service_registry
    for name, metadata in METADATA.items():
        reg.register(name, "http://a", metadata)
    for where, names in WHERE:
        assert [e.name for e in reg.list(where=where)] == sorted(names), where


async def test_async_where_compares_metadata_as_json(afdn: AsyncFoundation) -> None:
    reg = afdn.service_registry
    for name, metadata in METADATA.items():
        await reg.register(name, "http://a", metadata)
    for where, names in WHERE:
        assert [e.name for e in reg.list(where=where)] == sorted(names), where


# -- 5. a resync reports name by name ----------------------------------------------------------


def test_a_resync_reports_what_it_finds_name_by_name(db_url: str) -> None:
    with node(db_url) as a, node(db_url) as b:
        a.service_registry.register("m.gone", "http://a")
        wait_for(lambda: b.service_registry.find("m.gone") is not None)
        seen = watched(b, "*")
        b.feed.stop()  # B reads nothing more until it resyncs (a listener reconnecting)
        a.service_registry.register("z.first", "http://a")
        a.service_registry.register("a.second", "http://a")
        a.service_registry.update_metadata("z.first", {"v": 2})
        a.service_registry.unregister("m.gone")
        a.service_registry.join("grp", "http://a", member_id="m2")
        a.service_registry.join("grp", "http://a", member_id="m1")
        time.sleep(0.05)
        assert seen == []
        b.service_registry.resync(b.database)
        drain(b.service_registry)
        # What the snapshot shows, names in name order, whatever order they changed in.
        assert [(c.name, c.kind) for c in seen] == [
            ("a.second", "register"),
            ("m.gone", "unregister"),
            ("z.first", "register"),
            ("grp", "join"),
            ("grp", "join"),
        ]
        # The members by joined_at, as a poll tells them (review 19: they were by id).
        assert [c.entry.member_id for c in seen[3:]] == ["m2", "m1"]  # type: ignore[union-attr]
        assert b.service_registry.lookup("z.first").metadata == {"v": 2}


# -- 6. a lone surrogate -----------------------------------------------------------------------


def test_a_name_with_a_lone_surrogate_is_refused_for_what_it_is(fdn: Foundation) -> None:
    reg = fdn.service_registry
    with pytest.raises(ValidationError) as info:
        reg.register("svc\ud800", "http://a")
    assert info.value.message == (
        "a registry name must be valid UTF-8 text (it holds a lone surrogate)"
    )
    with pytest.raises(ValidationError, match="lone surrogate"):
        reg.join("grp\udfff", "http://a")
    with pytest.raises(ValidationError, match="must not contain control characters"):
        reg.register("svc\x07", "http://a")


async def test_async_a_name_with_a_lone_surrogate_is_refused_for_what_it_is(
    afdn: AsyncFoundation,
) -> None:
    with pytest.raises(ValidationError, match=r"valid UTF-8 text \(it holds a lone surrogate\)"):
        await afdn.service_registry.register("svc\ud800", "http://a")
