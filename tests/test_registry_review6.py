"""Found by a reviewer using the registry as a new user would (SQLite and PostgreSQL).

* A dead node's group member is reported ``expired`` once: a node that starts later and
  prunes the dead member's row does not report it again.
* A node whose lease lapsed reports its own names ``expired`` before they come back,
  whichever call finds the lapse (a ``register``, not only the heartbeat).
* A recovery whose lease statement waited longer than the TTL (a connection, after an
  outage) ends with a valid lease: one recovery, one ``lease_lost``, not two.
* A name another node took while this one was paused: watchers see that node's
  ``register`` before the ``lost`` it caused, whoever read the row first.
* A node id taken by another instance and given back: no second, empty ``lease_lost``.
* Writes on a closed instance all say ``storage_unavailable``; ``list(where=)`` refuses
  a filter no metadata could match (a key that is not text, a value that is not JSON).
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

import pytest

from foundation import (
    AlreadyRegisteredError,
    AsyncFoundation,
    Foundation,
    StorageUnavailableError,
    ValidationError,
)
from foundation.service_registry import RegistryChange
from tests.helpers import async_wait_for, wait_for
from tests.test_registry import TTL, drain, node, stop_heartbeat
from tests.test_registry_async import freeze
from tests.test_registry_review3 import anode, kinds, lease_lost, watched


def test_a_dead_members_expiry_is_reported_once(db_url: str) -> None:
    with node(db_url) as watcher:
        seen = watched(watcher, "grp")
        dead = node(db_url)
        try:
            dead.service_registry.join("grp", "http://dead", member_id="m1")
            wait_for(lambda: len(watcher.service_registry.members("grp")) == 1)
            stop_heartbeat(dead)  # as a process killed with -9
            wait_for(lambda: kinds(seen) == ["join", "expired"], timeout=5)
            with node(db_url):  # its start prunes the dead member's row
                wait_for(lambda: watcher.service_registry._state._members.get("grp") is None)
                drain(watcher.service_registry)
            assert kinds(seen) == ["join", "expired"]
        finally:
            dead.close()


def _lapsed_holding_svc(a: Foundation) -> list[RegistryChange]:
    """``a`` registers "svc" and is paused past its TTL; what its watcher of "svc" sees."""
    seen = watched(a, "svc")
    a.service_registry.register("svc", "http://a")
    stop_heartbeat(a)
    wait_for(lambda: not a.service_registry.owns("svc"), timeout=5)
    return seen


async def _async_lapsed_holding_svc(a: AsyncFoundation) -> list[RegistryChange]:
    seen = watched(a, "svc")
    await a.service_registry.register("svc", "http://a")
    await freeze(a)
    await async_wait_for(lambda: not a.service_registry.owns("svc"), timeout=5)
    return seen


def test_a_lapse_found_by_a_register_reports_the_own_names_expired(db_url: str) -> None:
    with node(db_url) as a:
        seen = _lapsed_holding_svc(a)
        a.service_registry.register("other", "http://a")  # finds the lapse, recovers
        drain(a.service_registry)
        assert [(c.kind, c.source) for c in seen] == [
            ("register", "local"),
            ("expired", "local"),
            ("register", "local"),
        ]


async def test_async_a_lapse_found_by_a_register_reports_the_own_names_expired(
    db_url: str,
) -> None:
    async with anode(db_url) as a:
        seen = await _async_lapsed_holding_svc(a)
        await a.service_registry.register("other", "http://a")
        await async_wait_for(lambda: len(seen) >= 3, timeout=5)
        assert kinds(seen) == ["register", "expired", "register"]


# -- a lease statement slower than the TTL ----------------------------------------------------


def _slow_take_lease(monkeypatch: pytest.MonkeyPatch, fdn: Foundation | AsyncFoundation) -> None:
    """The next take_lease waits longer than the TTL before it reaches the database."""
    reg = fdn.service_registry
    db = reg._db
    fetchone = db.fetchone
    take = reg._sql.take_lease
    delay = TTL / 1000 * 1.3
    waits = [delay]

    def wait(sql: str) -> None:
        if sql == take and waits:
            time.sleep(waits.pop())  # (blocks an async node's loop: its heartbeat is frozen)

    if isinstance(fdn, Foundation):

        def slow(sql: str, params: Any = None) -> Any:
            wait(sql)
            return fetchone(sql, params)

        monkeypatch.setattr(db, "fetchone", slow)
    else:

        async def aslow(sql: str, params: Any = None) -> Any:
            wait(sql)
            return await fetchone(sql, params)

        monkeypatch.setattr(db, "fetchone", aslow)


def test_a_recovery_slower_than_the_ttl_keeps_its_lease(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as a:
        lost = lease_lost(a)
        a.service_registry.register("kept", "http://a")
        generation = a.service_registry.lease_generation or 0
        stop_heartbeat(a)
        wait_for(lambda: not a.service_registry.owns("kept"), timeout=5)
        _slow_take_lease(monkeypatch, a)
        assert a.service_registry.heartbeat() is False  # recovers
        assert a.service_registry.owns("kept")
        recovered = a.service_registry.lease_generation or 0
        assert recovered > generation
        a.service_registry.register("other", "http://a")  # no second recovery
        assert a.service_registry.lease_generation == recovered
        assert [m["kept"] for m in lost] == [["kept"]]


async def test_async_a_recovery_slower_than_the_ttl_keeps_its_lease(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with anode(db_url) as a:
        lost = lease_lost(a)
        await a.service_registry.register("kept", "http://a")
        generation = a.service_registry.lease_generation or 0
        await freeze(a)
        await async_wait_for(lambda: not a.service_registry.owns("kept"), timeout=5)
        _slow_take_lease(monkeypatch, a)
        assert await a.service_registry.heartbeat() is False
        assert a.service_registry.owns("kept")
        recovered = a.service_registry.lease_generation or 0
        assert recovered > generation
        await a.service_registry.register("other", "http://a")
        assert a.service_registry.lease_generation == recovered
        assert [m["kept"] for m in lost] == [["kept"]]


# -- the register that caused a loss ----------------------------------------------------------


def _feed_blind(monkeypatch: pytest.MonkeyPatch, fdn: Foundation | AsyncFoundation) -> None:
    """The node's change feed does not read "svc" (a paused process, resumed: its
    heartbeat recovers before the feed has read the name). Leases still flow: the new
    owner's must stay live in this node's cache."""
    state = fdn.service_registry._state
    apply_entry = state.apply_entry
    caller = threading.get_ident()  # the test's thread (and the async node's loop)

    def blind(entry: Any, name: str, revision: int, source: str) -> Any:
        if name == "svc" and threading.get_ident() != caller:
            return []
        return apply_entry(entry, name, revision, source)

    monkeypatch.setattr(state, "apply_entry", blind)


def _take(b: Foundation) -> Any:
    """b registers "svc" once the database agrees its owner's lease ran out (b's cache
    may have shown it a moment before its last renewal reached it)."""
    try:
        return b.service_registry.register("svc", "http://b")
    except AlreadyRegisteredError:
        return None


LOST_ORDER = [
    ("register", "local"),
    ("expired", "local"),
    ("register", "remote"),
    ("lost", "local"),
]


def test_the_register_that_caused_a_loss_is_reported_before_it(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as a, node(db_url) as b:
        seen = watched(a, "svc")
        a.service_registry.register("svc", "http://a")
        wait_for(lambda: b.service_registry.find("svc") is not None)
        stop_heartbeat(a)
        _feed_blind(monkeypatch, a)
        wait_for(lambda: b.service_registry.find("svc") is None, timeout=5)
        wait_for(lambda: _take(b), timeout=5)
        assert a.service_registry.heartbeat() is False
        drain(a.service_registry)
        assert [(c.kind, c.source) for c in seen] == LOST_ORDER
        monkeypatch.undo()  # the feed reads again (b's lease renewals among the rest)
        owner = b.settings.node_id
        wait_for(lambda: getattr(a.service_registry.find("svc"), "node", None) == owner)


async def test_async_the_register_that_caused_a_loss_is_reported_before_it(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with anode(db_url) as a:
        with node(db_url) as b:
            seen: list[RegistryChange] = watched(a, "svc")
            await a.service_registry.register("svc", "http://a")
            await async_wait_for(lambda: b.service_registry.find("svc") is not None)
            await freeze(a)
            _feed_blind(monkeypatch, a)
            await async_wait_for(lambda: b.service_registry.find("svc") is None, timeout=5)
            await async_wait_for(lambda: _take(b), timeout=5)
            assert await a.service_registry.heartbeat() is False
            with contextlib.suppress(AssertionError):  # the comparison below shows what came
                await async_wait_for(lambda: len(seen) >= 4, timeout=10)
            assert [(c.kind, c.source) for c in seen] == LOST_ORDER


# -- a node id given back ---------------------------------------------------------------------


def test_a_node_id_given_back_reports_no_second_loss(db_url: str) -> None:
    old = node(db_url, node_id="web")
    try:
        lost = lease_lost(old)
        old.service_registry.register("svc", "http://old")
        stop_heartbeat(old)
        with node(db_url, node_id="web"):
            wait_for(lambda: not old.service_registry.owns("svc"), timeout=5)
            with pytest.raises(Exception, match="in use"):
                old.service_registry.heartbeat()
        old.service_registry.heartbeat()  # the other instance closed: the lease is free
        assert old.service_registry.register("again", "http://old").node == "web"
        assert lost == [{"node": "web", "lost": ["svc"], "kept": []}]
    finally:
        old.close()


# -- closed instances, where filters ----------------------------------------------------------


def test_writes_on_a_closed_instance_say_storage_unavailable(db_url: str) -> None:
    fdn = node(db_url)
    fdn.service_registry.register("svc", "http://a")
    fdn.service_registry.join("grp", "http://a", member_id="m1")
    fdn.close()
    reg = fdn.service_registry
    for call in (
        lambda: reg.unregister("svc"),
        lambda: reg.update_metadata("svc", {"v": 2}),
        lambda: reg.leave("grp"),
        lambda: reg.leave("grp", "m1"),
        lambda: reg.register("svc", "http://a"),
    ):
        with pytest.raises(StorageUnavailableError, match="closed"):
            call()


async def test_async_writes_on_a_closed_instance_say_storage_unavailable(db_url: str) -> None:
    fdn = anode(db_url)
    await fdn.open()
    await fdn.service_registry.register("svc", "http://a")
    await fdn.service_registry.join("grp", "http://a", member_id="m1")
    await fdn.close()
    reg = fdn.service_registry
    with pytest.raises(StorageUnavailableError, match="closed"):
        await reg.unregister("svc")
    with pytest.raises(StorageUnavailableError, match="closed"):
        await reg.update_metadata("svc", {"v": 2})
    with pytest.raises(StorageUnavailableError, match="closed"):
        await reg.leave("grp")


@pytest.mark.parametrize(
    "where", [{"v": object()}, {1: 1}, {"v": float("nan")}], ids=["object", "int-key", "nan"]
)
def test_list_refuses_a_where_no_metadata_could_match(fdn: Foundation, where: Any) -> None:
    fdn.service_registry.register("svc", "http://a", {"v": 1})
    with pytest.raises(ValidationError, match="where"):
        fdn.service_registry.list(where=where)
    assert [e.name for e in fdn.service_registry.list(where={"v": 1.0})] == ["svc"]


# -- second review: members joined again, member ids taken over, a recovery's rewrites --------


def test_a_member_joined_again_with_new_metadata_is_reported(db_url: str) -> None:
    with node(db_url) as a, node(db_url) as b:
        here, there = watched(a, "g"), watched(b, "g")
        first = a.service_registry.join("g", "tcp://1", {"w": 1}, member_id="m")
        again = a.service_registry.join("g", "tcp://2", {"w": 2}, member_id="m")
        assert again.joined_at == first.joined_at  # the same node keeps its place
        drain(a.service_registry)
        assert [(c.kind, c.entry and c.entry.metadata) for c in here] == [
            ("join", {"w": 1}),
            ("join", {"w": 2}),
        ]
        # Another node may read both joins at once: it ends on the latest.
        wait_for(lambda: there and there[-1].entry.metadata == {"w": 2}, timeout=5)
        assert b.service_registry.members("g")[0].address == "tcp://2"


def test_a_member_id_taken_over_from_a_dead_node_joins_now(db_url: str) -> None:
    with node(db_url) as b:
        dead = node(db_url)
        try:
            dead.service_registry.join("g", "http://dead", member_id="m1")
            b.service_registry.join("g", "http://b", member_id="m2")
            stop_heartbeat(dead)
            wait_for(lambda: [m.member_id for m in b.service_registry.members("g")] == ["m2"], 5)

            def take() -> Any:
                # b's cache may have shown the death before the lease's last renewal
                # reached it: the database decides, a moment later at most.
                try:
                    return b.service_registry.join("g", "http://b", member_id="m1")
                except AlreadyRegisteredError:
                    return None

            taken = wait_for(take, timeout=5)
            members = b.service_registry.members("g")
            assert [m.member_id for m in members] == ["m2", "m1"]  # oldest first
            assert taken.joined_at > members[0].joined_at
        finally:
            dead.close()


def _feed_first_reclaim(monkeypatch: pytest.MonkeyPatch, fdn: Foundation | AsyncFoundation) -> None:
    """A recovery applies each name it wrote again only after the feed had 0.2 s to
    read the row (a notification read first: a loaded machine). Since review 13 the
    recovery writes each name under its write lock, and the feed leaves the row of a name
    being written to its writer: the outcome must be the same either way."""
    reg = fdn.service_registry
    registered = reg._registered

    def late(*args: Any, reclaimed: bool = False) -> Any:
        name, row = args[0], args[3]
        if reclaimed:
            deadline = time.monotonic() + 0.2  # well within the new lease
            while reg._state.revision(name) < int(row[1]) and time.monotonic() < deadline:
                time.sleep(0.01)
        return registered(*args, reclaimed=reclaimed)

    monkeypatch.setattr(reg, "_registered", late)


RECLAIMED = [("register", "local"), ("expired", "local"), ("register", "local")]


def test_a_recoverys_rewrites_read_by_the_feed_first_are_local(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as a:
        seen = _lapsed_holding_svc(a)
        _feed_first_reclaim(monkeypatch, a)
        assert a.service_registry.heartbeat() is False
        drain(a.service_registry)
        assert [(c.kind, c.source) for c in seen] == RECLAIMED
        assert a.service_registry.owns("svc")


async def test_async_a_recoverys_rewrites_read_by_the_feed_first_are_local(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with anode(db_url) as a:
        seen = await _async_lapsed_holding_svc(a)
        _feed_first_reclaim(monkeypatch, a)
        assert await a.service_registry.heartbeat() is False
        await async_wait_for(lambda: len(seen) >= 3, timeout=5)
        assert [(c.kind, c.source) for c in seen] == RECLAIMED
