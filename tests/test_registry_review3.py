"""The registry after the third review: a name removed or taken by another node is lost,
never written again; watch callbacks never run on the heartbeat or feed thread; one node
id, one live instance; a watcher ends on what lookup returns when a local entry hid a
cluster one. Sync and async, SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from foundation import AlreadyRegisteredError, AsyncFoundation, ConfigError, Foundation
from foundation.service_registry import RegistryChange
from tests.helpers import async_wait_for, wait_for
from tests.test_registry import TTL, drain, node, stop_heartbeat
from tests.test_registry_async import freeze


@pytest.fixture
def pair(db_url: str) -> Iterator[tuple[Foundation, Foundation]]:
    with node(db_url) as a, node(db_url) as b:
        yield a, b


def anode(url: str, **kwargs: Any) -> AsyncFoundation:
    options: dict[str, Any] = {"registry_ttl_ms": TTL, "poll_interval_ms": 5}
    options.update(kwargs)
    return AsyncFoundation(url, migrate="skip", **options)


@contextlib.asynccontextmanager
async def apair(url: str) -> AsyncIterator[tuple[AsyncFoundation, AsyncFoundation]]:
    async with anode(url) as a, anode(url) as b:
        yield a, b


def watched(fdn: Foundation | AsyncFoundation, pattern: str) -> list[RegistryChange]:
    seen: list[RegistryChange] = []
    fdn.service_registry.watch(pattern, seen.append)
    return seen


def kinds(changes: list[RegistryChange], name: str | None = None) -> list[str]:
    return [c.kind for c in changes if name is None or c.name == name]


def lease_lost(fdn: Foundation | AsyncFoundation) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    fdn.telemetry.attach(
        "review3-lost", "foundation.registry.lease_lost", lambda _n, _m, meta, _c: got.append(meta)
    )
    return got


def row_node(fdn: Foundation, name: str) -> Any:
    row = fdn.database.fetchone(f"SELECT node_id FROM foundation_registry WHERE name = '{name}'")
    assert row is not None
    return row[0]


# -- 1. a name another node removed is lost, and never written again ------------------------


def test_a_name_force_unregistered_elsewhere_is_lost_and_not_written_again(
    pair: tuple[Foundation, Foundation],
) -> None:
    a, b = pair
    seen = watched(a, "*")
    lost = lease_lost(a)
    a.service_registry.register("evicted", "http://a")
    a.service_registry.register("kept", "http://a")
    wait_for(lambda: b.service_registry.find("evicted") is not None)
    b.service_registry.unregister("evicted", force=True)  # an operator evicts A
    # A learns it at once (its lease is fine): the name is no longer its own.
    wait_for(lambda: "lost" in kinds(seen, "evicted"))
    assert kinds(seen, "evicted") == ["register", "unregister", "lost"]
    assert seen[-1].entry is None and seen[-1].source == "local"
    assert lost == [{"node": a.settings.node_id, "lost": ["evicted"], "kept": []}]
    assert not a.service_registry.owns("evicted")
    assert a.service_registry.lease_losses == 0

    # Later A's lease lapses (a pause) and it recovers: only what it still held comes back.
    stop_heartbeat(a)
    # A's own view: a renewal already under way when the heartbeat stopped may extend the
    # lease after B's cache saw it run out.
    wait_for(lambda: not a.service_registry.owns("kept"), timeout=5)
    assert a.service_registry.heartbeat() is False  # learns of the lapse, recovers
    assert lost[-1] == {"node": a.settings.node_id, "lost": [], "kept": ["kept"]}
    assert a.service_registry.owns("kept") and not a.service_registry.owns("evicted")
    assert a.service_registry.find("evicted") is None
    assert row_node(a, "evicted") is None  # still the tombstone B left
    time.sleep(0.1)  # B's cache has had time to see a resurrection, were there one
    assert b.service_registry.find("evicted") is None


def test_a_name_removed_while_the_lease_had_lapsed_is_lost_at_the_recovery(
    pair: tuple[Foundation, Foundation],
) -> None:
    a, b = pair
    seen = watched(a, "*")
    lost = lease_lost(a)
    a.service_registry.register("evicted", "http://a")
    a.service_registry.register("kept", "http://a")
    wait_for(lambda: b.service_registry.find("evicted") is not None)
    stop_heartbeat(a)
    wait_for(lambda: not a.service_registry.owns("kept"), timeout=5)
    # Removed by hand while A's lease is dead (force refuses a dead owner's entry).
    b.database.execute(
        "UPDATE foundation_registry SET node_id = NULL, lease_generation = NULL,"
        " address = NULL, metadata = NULL, revision = revision + 1 WHERE name = 'evicted'"
    )
    a.service_registry.resync(a.database)  # A's cache sees the tombstone
    assert a.service_registry.heartbeat() is False  # recovers: the loss is reported there
    assert lost[-1] == {"node": a.settings.node_id, "lost": ["evicted"], "kept": ["kept"]}
    drain(a.service_registry)
    assert [c for c in seen if c.kind == "lost"][-1].name == "evicted"
    assert row_node(a, "evicted") is None and a.service_registry.owns("kept")


async def test_async_a_name_force_unregistered_elsewhere_is_lost_and_not_written_again(
    db_url: str,
) -> None:
    async with apair(db_url) as (a, b):
        seen = watched(a, "*")
        lost = lease_lost(a)
        await a.service_registry.register("evicted", "http://a")
        await a.service_registry.register("kept", "http://a")
        await async_wait_for(lambda: b.service_registry.find("evicted") is not None)
        await b.service_registry.unregister("evicted", force=True)
        await async_wait_for(lambda: "lost" in kinds(seen, "evicted"))
        assert kinds(seen, "evicted") == ["register", "unregister", "lost"]
        assert seen[-1].entry is None
        assert lost == [{"node": a.settings.node_id, "lost": ["evicted"], "kept": []}]
        await freeze(a)
        await async_wait_for(lambda: not a.service_registry.owns("kept"), timeout=5)
        assert await a.service_registry.heartbeat() is False
        assert lost[-1] == {"node": a.settings.node_id, "lost": [], "kept": ["kept"]}
        assert a.service_registry.owns("kept") and not a.service_registry.owns("evicted")
        await asyncio.sleep(0.1)
        assert b.service_registry.find("evicted") is None


# -- 2. watch callbacks never run on the heartbeat or the feed thread -----------------------


def test_a_slow_watch_callback_stalls_neither_the_heartbeat_nor_the_cache(
    pair: tuple[Foundation, Foundation],
) -> None:
    a, b = pair
    release = threading.Event()
    threads: set[str] = set()
    seen: list[tuple[str, str]] = []

    def slow(change: RegistryChange) -> None:
        threads.add(threading.current_thread().name)
        seen.append((change.name, change.kind))
        if change.kind == "expired" or change.source == "remote":
            release.wait(30)  # e.g. a call to a load balancer, far slower than the TTL

    a.service_registry.watch("*", slow)
    a.service_registry.register("leader", "http://a")
    # Its expiry is found by the heartbeat thread; B's registration by the feed's.
    a.service_registry.register("tmp", object(), None, 50, local=True)
    b.service_registry.register("first", "http://b")
    try:
        time.sleep(3 * TTL / 1000)  # three TTLs with the callback blocked
        assert a.service_registry.owns("leader") and a.service_registry.lease_losses == 0
        with pytest.raises(AlreadyRegisteredError):
            b.service_registry.register("leader", "http://b")
        b.service_registry.register("second", "http://b")  # the cache still follows
        wait_for(lambda: a.service_registry.find("second") is not None)
    finally:
        release.set()
    drain(a.service_registry)
    # Every change, in order, on the registry's own watch thread.
    assert [k for n, k in seen if n == "tmp"] == ["register", "expired"]
    assert [n for n, k in seen if k == "register"] == ["leader", "tmp", "first", "second"]
    assert threads == {f"foundation-registry-watch-{a.settings.node_id}"}


async def test_async_callbacks_are_awaited_in_order_and_never_stall_the_heartbeat(
    db_url: str,
) -> None:
    async with apair(db_url) as (a, b):
        release = asyncio.Event()
        done: list[tuple[str, str]] = []

        async def slow(change: RegistryChange) -> None:
            if change.kind == "register":
                await release.wait()  # the next callback must wait for this one
            done.append((change.name, change.kind))

        a.service_registry.watch("svc", slow)
        await a.service_registry.register("svc", "http://a")
        await a.service_registry.unregister("svc")
        await a.service_registry.register("leader", "http://a")
        await asyncio.sleep(2 * TTL / 1000)  # the callback awaits across two TTLs
        assert done == []  # the unregister waits behind the register
        assert a.service_registry.owns("leader") and a.service_registry.lease_losses == 0
        with pytest.raises(AlreadyRegisteredError):
            await b.service_registry.register("leader", "http://b")
        release.set()
        await async_wait_for(lambda: len(done) == 2)
        assert done == [("svc", "register"), ("svc", "unregister")]


async def test_async_plain_callbacks_run_on_the_loop(db_url: str) -> None:
    async with apair(db_url) as (a, b):
        loop = asyncio.get_running_loop()
        on_loop: list[bool] = []
        a.service_registry.watch("*", lambda c: on_loop.append(asyncio.get_running_loop() is loop))
        await b.service_registry.register("remote", "http://b")  # reaches A on its feed thread
        await a.service_registry.register("mine", "http://a")
        await async_wait_for(lambda: len(on_loop) == 2)
        assert all(on_loop)


def test_a_cancelled_watch_receives_nothing_more(fdn: Foundation) -> None:
    reg = fdn.service_registry
    release = threading.Event()
    seen: list[str] = []

    def first(change: RegistryChange) -> None:
        release.wait(10)

    reg.watch("a", first)
    late = reg.watch("a", lambda c: seen.append(c.kind))
    reg.register("a", "x")  # queued behind the blocked callback
    late.cancel()
    release.set()
    drain(reg)
    assert seen == []


# -- 3. one node id, one live instance ------------------------------------------------------


def test_a_second_live_instance_of_a_node_id_is_refused(db_url: str) -> None:
    with node(db_url, node_id="web") as one:
        one.service_registry.register("svc", "http://one")
        generation = one.service_registry.lease_generation
        second: Foundation | None = None
        try:
            with pytest.raises(ConfigError) as info:
                second = node(db_url, node_id="web")
        finally:
            if second is not None:
                second.close()
        err = info.value
        assert err.code == "config_error" and err.context["node_id"] == "web"
        assert "node id 'web' is in use by another live Foundation instance" in err.message
        assert "FOUNDATION_NODE_ID" in err.message
        time.sleep(TTL / 1000)  # and the first one never noticed
        assert one.service_registry.lease_generation == generation
        assert one.service_registry.lease_losses == 0 and one.service_registry.owns("svc")
        assert one.service_registry.lookup("svc").epoch == 1


def test_a_restart_after_a_crash_or_a_close_takes_the_node_id_back(db_url: str) -> None:
    crashed = node(db_url, node_id="web")
    try:
        crashed.service_registry.register("svc", "http://old")
        stop_heartbeat(crashed)  # killed: no more renewals, nothing released
        # The new process waits for the old lease to lapse (at most the TTL), then takes it.
        with node(db_url, node_id="web") as restarted:
            gone = crashed.service_registry.lease_generation
            assert (restarted.service_registry.lease_generation or 0) > (gone or 0)
            assert restarted.service_registry.register("svc", "http://new").epoch == 2
    finally:
        crashed.close()
    with node(db_url, node_id="web"):
        pass  # closed just before: released, taken at once


def test_an_instance_whose_node_id_was_taken_while_paused_stays_in_error(db_url: str) -> None:
    old = node(db_url, node_id="web")
    try:
        seen = watched(old, "*")
        lost = lease_lost(old)
        old.service_registry.register("svc", "http://old")
        stop_heartbeat(old)  # paused past its TTL; a new process of the same id starts
        with node(db_url, node_id="web") as new:
            generation = new.service_registry.lease_generation
            with pytest.raises(ConfigError, match="node id 'web' is in use"):
                old.service_registry.heartbeat()  # resumed: must not take the lease back
            with pytest.raises(ConfigError):
                old.service_registry.register("other", "http://old")
            assert lost[-1] == {"node": "web", "lost": ["svc"], "kept": []}
            # Its registration ended with its lease: expired (once), then lost.
            wait_for(lambda: kinds(seen, "svc")[-1:] == ["lost"])
            assert kinds(seen, "svc") == ["register", "expired", "lost"]
            assert not old.service_registry.owns("svc")
            assert new.service_registry.heartbeat()  # its lease untouched
            assert new.service_registry.lease_generation == generation
            assert new.service_registry.register("svc", "http://new").epoch == 2
    finally:
        old.close()


async def test_async_a_second_live_instance_of_a_node_id_is_refused(db_url: str) -> None:
    async with anode(db_url, node_id="web") as one:
        generation = one.service_registry.lease_generation
        second = anode(db_url, node_id="web")
        try:
            with pytest.raises(ConfigError) as info:
                await second.open()
        finally:
            await second.close()
        assert info.value.context["node_id"] == "web"
        await asyncio.sleep(TTL / 1000)
        assert one.service_registry.lease_generation == generation
        assert one.service_registry.lease_losses == 0


async def test_async_an_instance_whose_node_id_was_taken_stays_in_error(db_url: str) -> None:
    old = anode(db_url, node_id="web")
    await old.open()
    try:
        await old.service_registry.register("svc", "http://old")
        await freeze(old)
        async with anode(db_url, node_id="web") as new:
            generation = new.service_registry.lease_generation
            with pytest.raises(ConfigError):
                await old.service_registry.heartbeat()
            with pytest.raises(ConfigError):
                await old.service_registry.register("other", "http://old")
            assert await new.service_registry.heartbeat()
            assert new.service_registry.lease_generation == generation
    finally:
        await old.close()


# -- 4. a watcher ends on what lookup returns, local entries included -----------------------


def test_a_watcher_ends_on_the_cluster_entry_a_local_one_hid(
    pair: tuple[Foundation, Foundation],
) -> None:
    a, b = pair
    seen = watched(a, "loc")
    a.service_registry.register("loc", object(), local=True)
    remote = b.service_registry.register("loc", "http://b")  # B cannot see A's local entry
    wait_for(lambda: a.service_registry._state.live_entry("loc") is not None)
    a.service_registry.unregister("loc")  # A's lookups now show B's entry
    assert a.service_registry.lookup("loc") == remote
    wait_for(lambda: len(seen) == 3)
    assert [(c.kind, c.source, c.entry is not None and c.entry.local) for c in seen] == [
        ("register", "local", True),
        ("unregister", "local", True),
        ("register", "remote", False),  # B's register, hidden while A's entry shadowed it
    ]
    assert seen[-1].entry == remote


def test_a_watcher_ends_on_the_cluster_entry_when_the_local_ttl_passes(
    pair: tuple[Foundation, Foundation],
) -> None:
    a, b = pair
    seen = watched(a, "loc")
    a.service_registry.register("loc", object(), None, 300, local=True)
    remote = b.service_registry.register("loc", "http://b")
    wait_for(lambda: len(seen) == 3, timeout=5)
    assert kinds(seen) == ["register", "expired", "register"]
    assert seen[-1].entry == remote == a.service_registry.lookup("loc")


async def test_async_a_watcher_ends_on_the_cluster_entry_a_local_one_hid(db_url: str) -> None:
    async with apair(db_url) as (a, b):
        seen = watched(a, "loc")
        await a.service_registry.register("loc", object(), local=True)
        remote = await b.service_registry.register("loc", "http://b")
        await async_wait_for(lambda: a.service_registry._state.live_entry("loc") is not None)
        await a.service_registry.unregister("loc")
        await async_wait_for(lambda: len(seen) == 3)
        assert kinds(seen) == ["register", "unregister", "register"]
        assert seen[-1].entry == remote == a.service_registry.lookup("loc")
