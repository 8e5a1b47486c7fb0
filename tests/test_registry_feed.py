"""How the registry and the breakers follow the change feed without re-reading everything.

SQLite: every node's feed polls ``PRAGMA data_version``, which moves on any commit to the
file; topic revisions (migration 0006) let the registry and the breakers tell their own
changes from an event or a config value, and read only the names that changed. The
SQLite tests drive the feed's poll pass by hand (``feed._poll_all`` on a connection of
their own) on a node whose feed thread sleeps, so each count is exact. PostgreSQL: NOTIFY
names the topic, so an unrelated commit never reaches the registry either.

Counters, never timings: ``resyncs`` (full re-reads), ``polls``, ``poll_reads`` (polls
that found a registry topic moved) and ``names_read`` (names decoded by those polls).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from foundation import AsyncFoundation, Foundation
from foundation.database.sync import Cursor, _DriverCursor, connect_sqlite
from foundation.service_registry import RegistryChange
from tests.conftest import fresh_postgres
from tests.helpers import async_wait_for, wait_for
from tests.test_registry import drain

QUIET = 600_000  # a feed (or heartbeat) interval that never comes round during a test


def node(url: str, **kwargs: Any) -> Foundation:
    options: dict[str, Any] = {"registry_ttl_ms": 1000, "poll_interval_ms": 5}
    options.update(kwargs)
    return Foundation(url, migrate="skip", **options)


@contextlib.contextmanager
def quiet_node(url: str) -> Iterator[tuple[Foundation, Any]]:
    """A node whose feed and heartbeat sleep, and a ``poll()`` that runs one feed pass."""
    fdn = node(url, poll_interval_ms=QUIET, registry_ttl_ms=QUIET)
    conn = connect_sqlite(fdn.url, fdn.settings)
    reader: Cursor = _DriverCursor(conn)
    try:
        assert fdn.feed.wait_connected(10)  # its first (full) read is done

        def poll() -> None:
            fdn.feed._poll_all(reader)

        yield fdn, poll
    finally:
        conn.close()
        fdn.close()


def counters(fdn: Foundation) -> tuple[int, int, int, int]:
    reg = fdn.service_registry
    return reg.resyncs, reg.poll_reads, reg.names_read, fdn.circuit_breaker.resyncs


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """SQLite's poll only (PostgreSQL's side is the NOTIFY test at the end)."""
    path = tmp_path / "foundation.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


@pytest.fixture
def postgres_url(postgres_server: str, postgres_template: str) -> Iterator[str]:
    with fresh_postgres(postgres_server, postgres_template) as url:
        yield url


# -- SQLite: the poll --------------------------------------------------------------------


def test_sqlite_an_unrelated_commit_costs_the_registry_no_read(sqlite_url: str) -> None:
    with node(sqlite_url) as a, quiet_node(sqlite_url) as (b, poll):
        a.service_registry.register("svc.a", "http://a")
        poll()
        assert b.service_registry.lookup("svc.a").address == "http://a"
        before = counters(b)
        polls = b.service_registry.polls

        a.config.set("unrelated", 1)
        a.events.store({"type": "unrelated", "data": {}})
        poll()

        assert b.config.get("unrelated") == 1  # the pass ran, and config used it
        assert b.service_registry.polls == polls + 1
        assert counters(b) == before  # no resync, no registry read, no breaker re-read


def test_sqlite_a_poll_reads_only_the_names_that_changed(sqlite_url: str) -> None:
    with node(sqlite_url) as a, quiet_node(sqlite_url) as (b, poll):
        for k in range(50):
            a.service_registry.register(f"svc.{k:02d}", f"http://{k}")
        poll()
        assert len(b.service_registry.list("svc.")) == 50
        resyncs, _, names, _ = counters(b)
        assert names == 50

        a.service_registry.register("svc.new", "http://new", {"v": 2})
        a.service_registry.update_metadata("svc.07", {"v": 3})
        poll()

        assert b.service_registry.lookup("svc.new").metadata == {"v": 2}
        assert b.service_registry.lookup("svc.07").metadata == {"v": 3}
        assert b.service_registry.names_read == names + 2
        assert b.service_registry.resyncs == resyncs


def test_sqlite_unregister_release_and_a_hand_delete_are_seen(sqlite_url: str) -> None:
    with quiet_node(sqlite_url) as (b, poll):
        changes: list[RegistryChange] = []
        b.service_registry.watch("*", changes.append)
        with node(sqlite_url) as a:
            for name in ("gone", "deleted", "released"):
                a.service_registry.register(name, "http://a")
            poll()
            assert {e.name for e in b.service_registry.list()} == {"gone", "deleted", "released"}
            resyncs = b.service_registry.resyncs

            a.service_registry.unregister("gone")
            b.database.execute("DELETE FROM foundation_registry WHERE name = :n", {"n": "deleted"})
            poll()
            assert b.service_registry.find("gone") is None
            assert b.service_registry.find("deleted") is None
            assert b.service_registry.lookup("released").node == a.settings.node_id
        poll()  # a closed: its names and its lease were released
        assert b.service_registry.find("released") is None
        assert b.service_registry.resyncs == resyncs
        drain(b.service_registry)
        assert [(c.name, c.kind) for c in changes if c.kind != "register"] == [
            ("gone", "unregister"),
            ("deleted", "unregister"),
            ("released", "unregister"),  # released with its lease, in one transaction
        ]


def test_sqlite_lease_expiry_needs_no_write(sqlite_url: str) -> None:
    """A dead node writes nothing: its names vanish by the clock, and are reported."""
    with node(sqlite_url) as b:
        expired: list[str] = []
        b.service_registry.watch(
            "*", lambda c: expired.append(c.name) if c.kind == "expired" else None
        )
        a = node(sqlite_url, registry_ttl_ms=500)
        try:
            a.service_registry.register("mortal", "http://a")
            wait_for(lambda: b.service_registry.find("mortal") is not None)
            reg = a.service_registry
            reg._stop.set()  # the heartbeat stops: the process is gone, as far as b can tell
            assert reg._thread is not None
            reg._thread.join(5)
            resyncs = b.service_registry.resyncs
            wait_for(lambda: b.service_registry.find("mortal") is None, timeout=5)
            wait_for(lambda: "mortal" in expired)
            assert b.service_registry.resyncs == resyncs
        finally:
            a.close()


def test_sqlite_members_and_leases_follow_their_topics(sqlite_url: str) -> None:
    with node(sqlite_url) as a, quiet_node(sqlite_url) as (b, poll):
        a.service_registry.join("workers", "http://w1", member_id="w1")
        poll()
        assert [m.member_id for m in b.service_registry.members("workers")] == ["w1"]
        resyncs = b.service_registry.resyncs
        before = b.service_registry.nodes()[a.settings.node_id]
        assert a.service_registry.heartbeat()  # the lease topic alone moves
        names = b.service_registry.names_read
        poll()
        assert b.service_registry.nodes()[a.settings.node_id][1] >= before[1]  # type: ignore[operator]
        assert b.service_registry.names_read == names
        a.service_registry.leave("workers", "w1")
        poll()
        assert b.service_registry.members("workers") == []
        assert b.service_registry.resyncs == resyncs


def test_sqlite_breakers_reread_only_when_a_breaker_changed(sqlite_url: str) -> None:
    with node(sqlite_url) as a, quiet_node(sqlite_url) as (b, poll):
        poll()
        resyncs = b.circuit_breaker.resyncs
        a.config.set("unrelated", 2)
        poll()
        assert b.circuit_breaker.resyncs == resyncs

        def boom() -> None:
            raise RuntimeError("down")

        with pytest.raises(RuntimeError):
            a.circuit_breaker.execute(boom, name="payments", max_failures=5)
        poll()
        assert b.circuit_breaker.resyncs == resyncs + 1


def test_sqlite_topic_revisions_that_go_back_mean_a_full_read(sqlite_url: str) -> None:
    with node(sqlite_url) as a, quiet_node(sqlite_url) as (b, poll):
        a.service_registry.register("svc.x", "http://x")
        poll()
        resyncs = b.service_registry.resyncs
        b.database.execute("DELETE FROM foundation_topic_revisions")
        a.service_registry.register("svc.y", "http://y")  # the names topic restarts at 1
        poll()
        assert b.service_registry.resyncs == resyncs + 1
        assert b.service_registry.lookup("svc.y").address == "http://y"


async def test_sqlite_async_face_follows_the_poll(sqlite_url: str) -> None:
    with node(sqlite_url) as a:
        async with AsyncFoundation(
            sqlite_url, migrate="skip", registry_ttl_ms=1000, poll_interval_ms=5
        ) as b:
            assert b.feed.wait_connected(10)
            resyncs = b.service_registry.resyncs
            a.service_registry.register("svc.async", "http://a")
            await async_wait_for(lambda: b.service_registry.find("svc.async") is not None)
            a.events.store({"type": "unrelated", "data": {}})
            a.service_registry.unregister("svc.async")
            await async_wait_for(lambda: b.service_registry.find("svc.async") is None)
            assert b.service_registry.resyncs == resyncs


# -- PostgreSQL: NOTIFY names the topic ----------------------------------------------------


def test_postgres_an_unrelated_commit_never_reaches_the_registry(postgres_url: str) -> None:
    with node(postgres_url) as a, node(postgres_url) as b:
        assert b.feed.wait_connected(10)
        a.service_registry.register("svc.pg", "http://a")
        wait_for(lambda: b.service_registry.find("svc.pg") is not None)
        before = (b.service_registry.resyncs, b.circuit_breaker.resyncs)
        a.config.set("unrelated", 3)
        a.events.store({"type": "unrelated", "data": {}})
        wait_for(lambda: b.config.get("unrelated") == 3)
        a.service_registry.unregister("svc.pg")
        wait_for(lambda: b.service_registry.find("svc.pg") is None)
        assert (b.service_registry.resyncs, b.circuit_breaker.resyncs) == before


def test_sqlite_a_node_too_far_behind_reads_everything_again(sqlite_url: str) -> None:
    """The triggers keep the last 10,000 revisions per topic: past that, a full read."""
    # A lease that outlives the bulk insert, which holds the file's write lock (and with it
    # a's heartbeat) for as long as it takes on a busy machine.
    with node(sqlite_url, registry_ttl_ms=30_000) as a, quiet_node(sqlite_url) as (b, poll):
        a.service_registry.register("first", "http://a")
        poll()
        resyncs, reads = b.service_registry.resyncs, b.service_registry.poll_reads
        gen = a.service_registry.lease_generation
        rows = [
            {"name": f"bulk.{k:05d}", "node": a.settings.node_id, "gen": gen} for k in range(12_000)
        ]
        a.database.executemany(
            "INSERT INTO foundation_registry (name, address, metadata, node_id, "
            "lease_generation, epoch, revision, registered_at, updated_at) VALUES "
            "(:name, '\"http://bulk\"', '{}', :node, :gen, 1, 1, "
            "'2026-01-01 00:00:00.000000', '2026-01-01 00:00:00.000000')",
            rows,
        )
        kept = a.database.fetchone(
            "SELECT count(*) FROM foundation_topic_revisions WHERE topic = :t", {"t": "registry"}
        )
        assert kept is not None and kept[0] <= 11_000
        poll()
        assert b.service_registry.resyncs == resyncs + 1
        assert b.service_registry.poll_reads == reads + 1
        assert len(b.service_registry.list("bulk.")) == 12_000


def test_postgres_a_change_announced_during_an_own_write_is_read_by_the_writer(
    postgres_url: str,
) -> None:
    """While this node writes a name, the listener leaves that name's notifications to the
    writer (usually its own write, not yet cached); one from another node is still read."""
    with node(postgres_url) as a, node(postgres_url) as b:
        assert a.feed.wait_connected(10)
        reg = a.service_registry
        lock = reg._begin_write("contested")
        lock.acquire()
        try:
            b.service_registry.register("contested", "http://b")
            wait_for(lambda: reg._writing["contested"][1] > 0)  # noted, not read
            assert reg.find("contested") is None
        finally:
            reg._settle("contested", lock, True)
        assert reg.lookup("contested").address == "http://b"
        assert "contested" not in reg._writing
        reg.register("mine", "http://a")  # its own notification costs the listener no read
        b.service_registry.unregister("contested")
        wait_for(lambda: reg.find("contested") is None)


def _own_writes(fdn: Foundation) -> None:
    reg = fdn.service_registry
    reg.register("own", "http://a")
    reg.update_metadata("own", {"v": 2})
    reg.unregister("own")


def test_postgres_own_writes_cost_the_listener_no_read(postgres_url: str) -> None:
    """register, update_metadata and unregister settle their own notifications: the
    listener reads a name only for another node's change (here, the sentinel's)."""
    with node(postgres_url) as a, node(postgres_url) as b:
        assert a.feed.wait_connected(10)
        reads = a.service_registry.names_read
        _own_writes(a)
        b.service_registry.register("sentinel", "http://b")  # read after the three above
        wait_for(lambda: a.service_registry.find("sentinel") is not None)
        assert a.service_registry.names_read == reads + 1
        assert a.service_registry.find("own") is None


async def test_postgres_async_own_writes_cost_the_listener_no_read(postgres_url: str) -> None:
    async with AsyncFoundation(postgres_url, migrate="skip", registry_ttl_ms=1000) as a:
        assert a.feed.wait_connected(10)
        with node(postgres_url) as b:
            reg = a.service_registry
            reads = reg.names_read
            await reg.register("own", "http://a")
            await reg.update_metadata("own", {"v": 2})
            await reg.unregister("own")
            b.service_registry.register("sentinel", "http://b")
            await async_wait_for(lambda: reg.find("sentinel") is not None)
            assert reg.names_read == reads + 1
            assert reg.find("own") is None
