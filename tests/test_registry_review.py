"""The registry after review: what a dead entry refuses, one expiry per registration (names
and group members), what a remote watcher sees, bad input on every path, local names
beside cluster names, and the messages of ``unregister``. Sync and async, both databases.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from foundation import (
    AlreadyRegisteredError,
    AsyncFoundation,
    Foundation,
    NotFoundError,
    ValidationError,
)
from foundation.service_registry import GroupMember, RegistryChange
from tests.helpers import async_wait_for, wait_for
from tests.test_registry import drain, node, stop_heartbeat
from tests.test_registry_async import anode
from tests.test_registry_feed import quiet_node


@pytest.fixture
def pair(db_url: str) -> Iterator[tuple[Foundation, Foundation]]:
    with node(db_url) as a, node(db_url) as b:
        yield a, b


def watched(fdn: Foundation, pattern: str) -> list[RegistryChange]:
    """Every change ``fdn`` reports for ``pattern``, as it comes."""
    seen: list[RegistryChange] = []
    fdn.service_registry.watch(pattern, seen.append)
    return seen


def row_of(fdn: Foundation, name: str) -> tuple[Any, ...] | None:
    """(revision, node_id, metadata) of a name's row, straight from the table."""
    return fdn.database.fetchone(
        f"SELECT revision, node_id, metadata FROM foundation_registry WHERE name = '{name}'"
    )


def metadata_on(fdn: Foundation, name: str) -> Any:
    entry = fdn.service_registry.find(name)
    return None if entry is None else entry.metadata


def kinds(changes: list[RegistryChange], name: str | None = None) -> list[str]:
    return [c.kind for c in changes if name is None or c.name == name]


# -- 1. a name past its own TTL is registered nowhere -------------------------------------


def test_a_name_past_its_own_ttl_refuses_update_and_unregister(
    pair: tuple[Foundation, Foundation],
) -> None:
    a, b = pair
    seen = watched(b, "short")
    a.service_registry.register("short", "a", {"v": 1}, ttl=200)
    wait_for(lambda: kinds(seen) == ["register"])
    wait_for(lambda: a.service_registry.find("short") is None, timeout=5)
    wait_for(lambda: kinds(seen) == ["register", "expired"], timeout=5)
    before = row_of(a, "short")
    for call in (
        lambda: a.service_registry.update_metadata("short", {"v": 2}),
        lambda: a.service_registry.unregister("short"),
        lambda: b.service_registry.unregister("short", force=True),
    ):
        with pytest.raises(NotFoundError) as info:
            call()
        assert info.value.code == "not_found"
        assert info.value.message == "no service is registered as 'short'"
        assert info.value.context["name"] == "short"
    assert row_of(a, "short") == before  # nothing written
    assert not a.service_registry.owns("short")
    # the name is free, and nobody heard of a change that never happened
    assert b.service_registry.register("short", "b").epoch == 2
    wait_for(lambda: kinds(seen) == ["register", "expired", "register"])
    assert a.service_registry.heartbeat()


def test_a_name_past_its_own_ttl_is_not_written_again_after_a_lease_loss(
    pair: tuple[Foundation, Foundation],
) -> None:
    a, b = pair
    a.service_registry.register("brief", "a", ttl=200)
    a.service_registry.register("steady", "a")
    wait_for(lambda: a.service_registry.find("brief") is None, timeout=5)
    stop_heartbeat(a)
    wait_for(lambda: b.service_registry.find("steady") is None, timeout=5)
    assert a.service_registry.heartbeat() is False  # recovers under a new lease
    assert a.service_registry.owns("steady")
    assert a.service_registry.find("brief") is None
    row = row_of(a, "brief")
    assert row is not None and int(row[0]) == 1  # never registered again


async def test_async_a_name_past_its_own_ttl_refuses_update_and_unregister(db_url: str) -> None:
    async with anode(db_url) as a, anode(db_url) as b:
        await a.service_registry.register("short", "a", {"v": 1}, ttl=200)
        await async_wait_for(lambda: a.service_registry.find("short") is None, timeout=5)
        with pytest.raises(NotFoundError):
            await a.service_registry.update_metadata("short", {"v": 2})
        with pytest.raises(NotFoundError):
            await a.service_registry.unregister("short")
        with pytest.raises(NotFoundError) as info:
            await b.service_registry.unregister("short", force=True)
        assert info.value.message == "no service is registered as 'short'"
        assert (await b.service_registry.register("short", "b")).epoch == 2


# -- 2 and 3. one expiry per registration, members included ---------------------------------


def test_members_of_a_dead_node_expire_on_every_node(pair: tuple[Foundation, Foundation]) -> None:
    a, b = pair
    seen = watched(b, "workers")
    expired: list[dict[str, Any]] = []
    b.telemetry.attach(
        "exp", "foundation.registry.expired", lambda _n, _m, meta, _c: expired.append(meta)
    )
    member = a.service_registry.join("workers", "a:1", member_id="a-1")
    wait_for(lambda: kinds(seen) == ["join"])
    stop_heartbeat(a)
    wait_for(lambda: "expired" in kinds(seen), timeout=5)
    assert b.service_registry.members("workers") == []
    assert kinds(seen) == ["join", "expired"]
    change = seen[-1]
    assert isinstance(change.entry, GroupMember) and change.entry == member
    assert change.name == "workers" and change.source == "remote"
    wait_for(lambda: expired)  # telemetry has its own thread: no order with the watcher's
    assert expired[-1]["member_id"] == "a-1" and expired[-1]["owner"] == a.settings.node_id
    # The node comes back and joins again: a join, no "leave" for the member already gone.
    assert a.service_registry.heartbeat() is False
    wait_for(lambda: len(b.service_registry.members("workers")) == 1)
    # The watcher is called a moment after the cache changed (its own thread).
    with contextlib.suppress(AssertionError):
        wait_for(lambda: len(seen) >= 3, timeout=5)
    assert kinds(seen) == ["join", "expired", "join"]


def test_one_expiry_per_registration_and_none_for_the_long_dead(db_url: str) -> None:
    with node(db_url) as b:
        seen = watched(b, "d.*")
        a = node(db_url)
        try:
            # Long enough for b's feed to read it alive even under load: a row that died
            # before it reached a cache is told neither registered nor expired there.
            a.service_registry.register("d.ttl", "a", ttl=1000)
            a.service_registry.register("d.lease", "a")
            a.service_registry.join("d.group", "a")
            wait_for(lambda: "expired" in kinds(seen, "d.ttl"), timeout=5)
            stop_heartbeat(a)  # killed: its lease runs out, the TTL entry is long gone
            wait_for(lambda: "expired" in kinds(seen, "d.lease"), timeout=5)
            wait_for(lambda: "expired" in kinds(seen, "d.group"), timeout=5)
            # the lease's death is reported in one sweep: a duplicate would be there now
            assert b.service_registry._state.sweep() == []
            assert kinds(seen, "d.ttl") == ["register", "expired"]
            assert kinds(seen, "d.lease") == ["register", "expired"]
            assert kinds(seen, "d.group") == ["join", "expired"]

            # A node that starts after all of it died reports nothing about it.
            with node(db_url) as c:
                late = watched(c, "d.*")
                # Its heartbeat thread sweeps on every tick before it renews the lease:
                # once the lease moved, sweeps have run with the watch in place.
                first = c.service_registry.nodes()[c.settings.node_id][1]
                wait_for(lambda: c.service_registry.nodes()[c.settings.node_id][1] != first)
                c.service_registry._publish(c.service_registry._state.sweep())
                drain(c.service_registry)
                assert late == []
                assert c.service_registry.find("d.lease") is None
                assert c.service_registry.list(prefix="d.") == []
                # and the names can be taken, once
                c.service_registry.register("d.lease", "c")
                wait_for(lambda: kinds(seen, "d.lease") == ["register", "expired", "register"])
                wait_for(lambda: kinds(late) == ["register"])
        finally:
            a.close()


# -- 4. what a remote watcher sees: the latest state, coalesced --------------------------------


def churn(fdn: Foundation, *held: str) -> None:
    """Quick changes: c0..c4 registered and unregistered, "m" registered with {"v": 0},
    then "m" and each name of ``held`` given {"v": 1}, {"v": 2}, {"v": 3}."""
    for i in range(5):
        fdn.service_registry.register(f"c{i}", "x")
        fdn.service_registry.unregister(f"c{i}")
    fdn.service_registry.register("m", "x", {"v": 0})
    for v in (1, 2, 3):
        for name in ("m", *held):
            fdn.service_registry.update_metadata(name, {"v": v})


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    path = tmp_path / "foundation.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite:///{path}"


def test_sqlite_a_poll_delivers_the_latest_state_of_each_name(sqlite_url: str) -> None:
    with node(sqlite_url) as a, quiet_node(sqlite_url) as (b, poll):
        seen: list[tuple[str, str, Any]] = []
        b.service_registry.watch(
            "*", lambda c: seen.append((c.name, c.kind, getattr(c.entry, "metadata", None)))
        )
        a.service_registry.register("held", "x", {"v": 0})
        poll()
        drain(b.service_registry)
        assert seen == [("held", "register", {"v": 0})]
        churn(a, "held")
        poll()  # all of it between two polls: one change per name, to its latest state
        drain(b.service_registry)
        assert seen[1:] == [("m", "register", {"v": 3}), ("held", "metadata", {"v": 3})]
        assert b.service_registry.lookup("m").metadata == {"v": 3}
        assert [e.name for e in b.service_registry.list()] == ["held", "m"]


def test_a_remote_watcher_always_ends_on_the_latest_state(
    pair: tuple[Foundation, Foundation],
) -> None:
    a, b = pair
    seen = watched(b, "*")
    churn(a)
    wait_for(lambda: metadata_on(b, "m") == {"v": 3})
    drain(b.service_registry)
    last = [c for c in seen if c.name == "m"][-1]
    assert last.kind in ("register", "metadata") and last.entry is not None
    assert last.entry.metadata == {"v": 3}
    for i in range(5):  # whatever was seen of a short-lived name ends unregistered
        assert kinds(seen, f"c{i}") in ([], ["register", "unregister"])
        assert b.service_registry.find(f"c{i}") is None


# -- 5. bad input, nothing written ---------------------------------------------------------


BAD_CALLS: list[tuple[str, Any]] = [
    ("local ttl -1", lambda r: r.register("n", "x", None, -1, local=True)),
    ("local ttl 0", lambda r: r.register("n", "x", None, 0, local=True)),
    ("local ttl str", lambda r: r.register("n", "x", None, "10s", local=True)),
    ("local metadata set", lambda r: r.register("n", object(), {1, 2}, local=True)),
    ("local metadata nan", lambda r: r.register("n", object(), {"a": float("nan")}, local=True)),
    ("force str", lambda r: r.unregister("n", force="yes")),
    ("force int", lambda r: r.unregister("n", force=1)),
    ("force None", lambda r: r.unregister("n", force=None)),
]


@pytest.mark.parametrize(("label", "call"), BAD_CALLS, ids=[c[0] for c in BAD_CALLS])
def test_bad_input_is_refused(fdn: Foundation, label: str, call: Any) -> None:
    reg = fdn.service_registry
    reg.register("n", "x")  # force is checked before anything is removed
    with pytest.raises(ValidationError) as info:
        call(reg)
    assert info.value.code == "validation_error" and info.value.message
    assert info.value.context
    assert reg.lookup("n").local is False  # no local entry, the cluster one stays
    row = row_of(fdn, "n")
    assert row is not None and int(row[0]) == 1


def test_bad_watch_patterns_and_local_metadata_updates(fdn: Foundation) -> None:
    reg = fdn.service_registry
    for pattern in ("", "   "):
        with pytest.raises(ValidationError) as info:
            reg.watch(pattern, print)
        assert "'*'" in info.value.message
    reg.watch("*", print).cancel()
    handler = object()
    reg.register("local", handler, local=True)
    with pytest.raises(ValidationError):
        reg.update_metadata("local", {"s": {1}})
    assert reg.lookup("local").metadata == {}
    with pytest.raises(ValidationError):
        reg.update_metadata("anything", {"s": {1}})


async def test_async_bad_input_is_refused(afdn: AsyncFoundation) -> None:
    reg = afdn.service_registry
    await reg.register("n", "x")
    with pytest.raises(ValidationError):
        await reg.register("l", "x", None, -1, local=True)
    with pytest.raises(ValidationError):
        await reg.register("l", object(), {1}, local=True)
    with pytest.raises(ValidationError):
        await reg.unregister("n", force="yes")
    with pytest.raises(ValidationError):
        reg.watch("", print)
    assert reg.find("l") is None and reg.lookup("n").address == "x"


def test_a_local_ttl_is_honoured(fdn: Foundation) -> None:
    reg = fdn.service_registry
    seen = watched(fdn, "tmp")
    handler = object()
    entry = reg.register("tmp", handler, {"k": 1}, ttl=150, local=True)
    assert entry.local and entry.expires_at is not None and reg.lookup("tmp").address is handler
    wait_for(lambda: reg.find("tmp") is None, timeout=5)
    wait_for(lambda: kinds(seen) == ["register", "expired"], timeout=5)
    assert seen[-1].source == "local" and reg.list() == []
    assert reg.register("tmp", handler, local=True).expires_at is None  # free again


# -- 6. a local name beside a cluster name ---------------------------------------------------


def test_a_local_name_shadows_a_cluster_name_on_its_node(
    pair: tuple[Foundation, Foundation],
) -> None:
    a, b = pair
    handler = object()
    a.service_registry.register("svc", handler, {"role": "local"}, local=True)
    # B cannot see A's process: it takes the name cluster-wide.
    remote = b.service_registry.register("svc", "http://b")
    wait_for(lambda: a.service_registry._state.live_entry("svc") is not None)
    # On A its own local entry wins everywhere, once.
    assert a.service_registry.lookup("svc").address is handler
    assert a.service_registry.find("svc") is not None
    assert [(e.name, e.local) for e in a.service_registry.list(prefix="svc")] == [("svc", True)]
    assert [e.name for e in a.service_registry.list(where={"role": "local"})] == ["svc"]
    assert b.service_registry.lookup("svc") == remote
    # A's unregister removes what A's lookups return; then the cluster entry shows.
    a.service_registry.unregister("svc")
    assert a.service_registry.lookup("svc") == remote
    assert [(e.name, e.local) for e in a.service_registry.list()] == [("svc", False)]
    # And on one node the two never collide, either way round.
    with pytest.raises(AlreadyRegisteredError) as info:
        a.service_registry.register("svc", object(), local=True)
    assert info.value.context["owner"] == b.settings.node_id
    a.service_registry.register("mine", object(), local=True)
    with pytest.raises(AlreadyRegisteredError) as local_info:
        a.service_registry.register("mine", "http://a")
    assert local_info.value.context["local"] is True


async def test_async_a_local_name_shadows_a_cluster_name(db_url: str) -> None:
    async with anode(db_url) as a, anode(db_url) as b:
        handler = object()
        await a.service_registry.register("svc", handler, local=True)
        remote = await b.service_registry.register("svc", "http://b")
        await async_wait_for(lambda: a.service_registry._state.live_entry("svc") is not None)
        assert a.service_registry.lookup("svc").address is handler
        assert len(a.service_registry.list()) == 1
        await a.service_registry.unregister("svc")
        assert a.service_registry.lookup("svc") == remote
        with pytest.raises(AlreadyRegisteredError):
            await a.service_registry.register("svc", object(), local=True)


# -- 7 and 8. messages, and None metadata --------------------------------------------------------


def test_unregister_messages(pair: tuple[Foundation, Foundation]) -> None:
    a, b = pair
    for force in (False, True):
        with pytest.raises(NotFoundError) as info:
            a.service_registry.unregister("nope", force=force)
        assert info.value.message == "no service is registered as 'nope'"
    a.service_registry.register("held", "a")
    wait_for(lambda: b.service_registry.find("held") is not None)
    with pytest.raises(NotFoundError) as other:
        b.service_registry.unregister("held")
    assert other.value.message == (
        f"this node does not hold 'held' (node {a.settings.node_id!r} does)"
    )
    assert other.value.context["owner"] == a.settings.node_id
    b.service_registry.unregister("held", force=True)
    wait_for(lambda: a.service_registry.find("held") is None)


def test_none_metadata_means_an_empty_mapping_everywhere(
    pair: tuple[Foundation, Foundation],
) -> None:
    a, b = pair
    assert a.service_registry.register("svc", "x", None).metadata == {}
    a.service_registry.update_metadata("svc", {"v": 1})
    wait_for(lambda: metadata_on(b, "svc") == {"v": 1})
    assert a.service_registry.update_metadata("svc", None).metadata == {}
    assert a.service_registry.lookup("svc").metadata == {}
    wait_for(lambda: metadata_on(b, "svc") == {})
    row = row_of(a, "svc")
    assert row is not None and row[2] in ({}, "{}")
    a.service_registry.register("loc", object(), {"v": 1}, local=True)
    assert a.service_registry.update_metadata("loc", None).metadata == {}


async def test_async_messages_and_none_metadata(afdn: AsyncFoundation) -> None:
    reg = afdn.service_registry
    with pytest.raises(NotFoundError) as info:
        await reg.unregister("nope", force=True)
    assert info.value.message == "no service is registered as 'nope'"
    await reg.register("svc", "x", {"v": 1})
    assert (await reg.update_metadata("svc", None)).metadata == {}
    assert reg.lookup("svc").metadata == {}
