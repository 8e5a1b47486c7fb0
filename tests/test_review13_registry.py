"""Review 13, registry, on SQLite and PostgreSQL: a node back from a pause past its TTL.

* Its first ``update_metadata`` returns the live entry under the new lease (its new
  epoch), not the lapsed one, dead as returned and superseded a moment later.
* An ``unregister`` or ``leave`` that runs while the lease recovery writes the node's
  names and members again stays done: the recovery does not write them back.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from foundation import Foundation, FoundationError
from foundation.errors import StorageUnavailableError
from tests.helpers import async_wait_for, wait_for
from tests.test_registry import node, stop_heartbeat
from tests.test_registry_async import freeze
from tests.test_registry_review3 import anode


def test_update_metadata_after_a_lapse_returns_the_live_entry(db_url: str) -> None:
    with node(db_url) as a, node(db_url) as b:
        reg = a.service_registry
        first = reg.register("svc", "addr", {"v": 0})
        stop_heartbeat(a)
        wait_for(lambda: not reg.owns("svc"), timeout=5)
        entry = reg.update_metadata("svc", {"v": 1})  # the first call after the pause
        assert entry.alive
        assert entry.epoch == first.epoch + 1
        assert entry.metadata == {"v": 1}
        # b sees the name written again under the new lease, then its new metadata
        wait_for(lambda: b.service_registry.find("svc") == entry)


async def test_async_update_metadata_after_a_lapse_returns_the_live_entry(db_url: str) -> None:
    async with anode(db_url) as a:
        reg = a.service_registry
        first = await reg.register("svc", "addr", {"v": 0})
        await freeze(a)
        await async_wait_for(lambda: not reg.owns("svc"), timeout=5)
        entry = await reg.update_metadata("svc", {"v": 1})
        assert entry.alive
        assert entry.epoch == first.epoch + 1
        assert reg.lookup("svc").metadata == {"v": 1}


def _during_the_recovery(
    monkeypatch: pytest.MonkeyPatch, reg: Any, statement: str, key: str, value: str, call: Any
) -> list[Any]:
    """Run ``call`` on another thread when the recovery is about to write ``value`` again
    (``statement`` with ``params[key] == value``), and give it a second to end first, as
    a thread of the application would. Its outcome: None, or the error it raised."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except FoundationError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run)
    fetchone = reg._db.fetchone

    def hooked(sql: str, params: Any = None) -> Any:
        if sql == statement and params and params.get(key) == value and not worker.ident:
            worker.start()
            worker.join(1.0)  # it waits for the recovery's write of that name: go on
        return fetchone(sql, params)

    monkeypatch.setattr(reg._db, "fetchone", hooked)
    assert reg.heartbeat() is False  # the lease lapsed: recovered, names written again
    worker.join(10)
    assert worker.ident and not worker.is_alive()
    reg.heartbeat()  # a later pass ends the recovery, if a name was left to the call
    return outcome


def test_an_unregister_during_the_recovery_is_not_undone(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as a, node(db_url) as b:
        reg = a.service_registry
        reg.register("gone", "addr")
        reg.register("kept", "addr")
        stop_heartbeat(a)
        wait_for(lambda: not reg.owns("gone"), timeout=5)
        outcome = _during_the_recovery(
            monkeypatch, reg, reg._sql.reclaim, "name", "gone", lambda: reg.unregister("gone")
        )
        assert outcome == [None]
        assert reg.find("gone") is None
        assert reg.owns("kept")
        wait_for(lambda: b.service_registry.find("kept") is not None)
        reg.heartbeat()
        wait_for(lambda: b.service_registry.find("gone") is None)
        assert a.database.fetchone(
            "SELECT count(*) FROM foundation_registry WHERE name = 'gone' AND node_id IS NOT NULL"
        ) == (0,)


def test_a_leave_during_the_recovery_is_not_undone(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as a, node(db_url) as b:
        reg = a.service_registry
        reg.register("kept", "addr")
        reg.join("g", "addr", member_id="m1")
        reg.join("g", "addr", member_id="m2")
        stop_heartbeat(a)
        wait_for(lambda: not reg.owns("kept"), timeout=5)
        outcome = _during_the_recovery(
            monkeypatch, reg, reg._sql.join, "member", "m1", lambda: reg.leave("g", "m1")
        )
        assert outcome == [None]
        assert [m.member_id for m in reg.members("g")] == ["m2"]
        wait_for(lambda: [m.member_id for m in b.service_registry.members("g")] == ["m2"])
        assert a.database.fetchone(
            "SELECT count(*) FROM foundation_registry_members WHERE member_id = 'm1'"
        ) == (0,)


async def test_async_an_unregister_and_a_leave_during_the_recovery_are_not_undone(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with anode(db_url) as a:
        reg = a.service_registry
        await reg.register("gone", "addr")
        await reg.register("kept", "addr")
        await reg.join("g", "addr", member_id="m1")
        await freeze(a)
        await async_wait_for(lambda: not reg.owns("gone"), timeout=5)
        calls: dict[str, asyncio.Task[None]] = {}
        fetchone = reg._db.fetchone

        async def hooked(sql: str, params: Any = None) -> Any:
            for statement, key, value, call in (
                (reg._sql.reclaim, "name", "gone", lambda: reg.unregister("gone")),
                (reg._sql.join, "member", "m1", lambda: reg.leave("g", "m1")),
            ):
                if sql == statement and params and params.get(key) == value and value not in calls:
                    calls[value] = task = asyncio.create_task(call())
                    # it waits for the recovery's write of that name or member: go on
                    await asyncio.wait({task}, timeout=1.0)
            return await fetchone(sql, params)

        monkeypatch.setattr(reg._db, "fetchone", hooked)
        assert await reg.heartbeat() is False
        assert set(calls) == {"gone", "m1"}
        await asyncio.gather(*calls.values())  # neither raised
        await reg.heartbeat()
        assert reg.find("gone") is None
        assert reg.owns("kept")
        assert reg.members("g") == []
        for sql in (
            "SELECT count(*) FROM foundation_registry WHERE name = 'gone' AND node_id IS NOT NULL",
            "SELECT count(*) FROM foundation_registry_members WHERE member_id = 'm1'",
        ):
            assert await a.database.fetchone(sql) == (0,)


def test_a_leave_that_had_no_connection_leaves_the_member_joined(pg_url: str) -> None:
    """As an unregister that had none: never sent, nothing in doubt, still a member (the
    heartbeat removed it as if the leave might have landed)."""
    with Foundation(pg_url, pool_min_size=1, pool_max_size=1, connect_timeout_s=0.5) as fdn:
        registry = fdn.service_registry
        registry.join("g", "a", member_id="m1")
        with fdn.database.connection():  # the pool's one connection, held
            with pytest.raises(StorageUnavailableError, match="could be had in time"):
                registry.leave("g", "m1")
        assert [m.member_id for m in registry.members("g")] == ["m1"]
        registry.heartbeat()  # settles what is in doubt: nothing here
        assert [m.member_id for m in registry.members("g")] == ["m1"]
        with Foundation(pg_url, migrate="skip") as other:
            assert [m.member_id for m in other.service_registry.members("g")] == ["m1"]
        registry.leave("g", "m1")  # the retry the caller makes
        assert registry.members("g") == []


async def test_async_a_recovery_never_waits_for_a_name_a_woken_call_takes(db_url: str) -> None:
    """A name's lock just released, the next writer woken but not yet run: not locked(),
    yet acquire() queues behind that writer, which waits for the recovery in turn (the
    registry hung for good). The recovery leaves such a name to its writer."""
    async with anode(db_url) as a:
        reg = a.service_registry
        await reg.register("a_first", "addr")
        await reg.register("x", "addr")
        await freeze(a)
        gate, held = asyncio.Event(), []
        fetchone = reg._db.fetchone

        async def hooked(sql: str, params: Any = None) -> Any:
            row = await fetchone(sql, params)
            name = params.get("name") if isinstance(params, dict) else None
            if (sql == reg._sql.update_metadata and name == "x") or (
                sql == reg._sql.reclaim and name == "a_first"
            ):
                held.append(name)
                await gate.wait()  # both replies arrive in the same turn of the loop
            return row

        reg._db.fetchone = hooked  # type: ignore[method-assign]
        slow = asyncio.create_task(reg.update_metadata("x", {"v": 0}))  # its reply is slow
        await async_wait_for(lambda: held == ["x"])
        await async_wait_for(lambda: not reg.owns("x"), timeout=5)  # the lease lapses
        waiting = asyncio.create_task(reg.update_metadata("x", {"v": 1}))  # for x's lock
        recovering = asyncio.create_task(reg.register("c_new", "addr"))
        await async_wait_for(lambda: len(held) == 2)
        gate.set()
        done, pending = await asyncio.wait([slow, waiting, recovering], timeout=10)
        assert not pending, "the registry hung"
        assert all(t.exception() is None for t in done)
        assert reg.lookup("x").metadata == {"v": 1}
        assert reg.owns("c_new") and reg.owns("a_first")


def test_the_owners_forced_unregister_after_a_lapse_stays_done(db_url: str) -> None:
    with node(db_url) as a:
        reg = a.service_registry
        reg.register("x", "addr")
        stop_heartbeat(a)
        wait_for(lambda: not reg.owns("x"), timeout=5)
        reg.unregister("x", force=True)  # recovers first: the name, not a lapsed row
        reg.register("other", "addr")  # any later call (or the heartbeat) recovers
        assert not reg.owns("x") and reg.find("x") is None
        sql = "SELECT count(*) FROM foundation_registry WHERE name = 'x' AND node_id IS NOT NULL"
        assert a.database.fetchone(sql) == (0,)


async def test_async_the_owners_forced_unregister_after_a_lapse_stays_done(db_url: str) -> None:
    async with anode(db_url) as a:
        reg = a.service_registry
        await reg.register("x", "addr")
        await freeze(a)
        await async_wait_for(lambda: not reg.owns("x"), timeout=5)
        await reg.unregister("x", force=True)
        await reg.register("other", "addr")
        assert not reg.owns("x") and reg.find("x") is None


def test_a_second_register_by_the_holder_says_so(fdn: Foundation) -> None:
    reg = fdn.service_registry
    reg.register("a", "x", {"v": 1})
    for address, metadata in (("x", {"v": 1}), ("y", {"v": 1})):
        with pytest.raises(FoundationError, match=r"by this node at 'x'.*update_metadata") as err:
            reg.register("a", address, metadata)
        assert err.value.code == "already_registered"
        assert err.value.context["owner"] == fdn.settings.node_id


def _resume(reg: Any) -> None:
    """Start the heartbeat again (SIGCONT), after stop_heartbeat."""
    reg._stop = threading.Event()
    reg._thread = threading.Thread(target=reg._run, daemon=True)
    reg._thread.start()


def _slow_update(reg: Any, name: str, seconds: float) -> threading.Event:
    """The next update_metadata of ``name`` takes ``seconds`` (a row lock, a slow server)
    once the returned event is set."""
    slow, fetchone = threading.Event(), reg._db.fetchone

    def hooked(sql: str, params: Any = None) -> Any:
        if slow.is_set() and sql == reg._sql.update_metadata and params["name"] == name:
            slow.clear()
            time.sleep(seconds)
        return fetchone(sql, params)

    reg._db.fetchone = hooked
    return slow


def test_the_new_lease_is_renewed_while_a_slow_write_holds_the_recovery(db_url: str) -> None:
    """A name left to its writer, slower than the TTL: the heartbeat renews the new lease
    meanwhile (it only ran the recovery's passes: the lease lapsed again every TTL)."""
    with node(db_url) as a, node(db_url) as b:
        reg = a.service_registry
        reg.register("n0", "addr")
        reg.register("x", "addr", {"v": 0})
        before = reg.lease_generation or 0
        # Watched once b holds it: its register told or not would depend on the feed's pace.
        wait_for(lambda: b.service_registry.find("n0") is not None)
        seen: list[str] = []
        b.service_registry.watch("n0", lambda change: seen.append(change.kind))
        stop_heartbeat(a)
        _slow_update(reg, "x", 3.0).set()
        writer = threading.Thread(target=reg.update_metadata, args=("x", {"v": 1}))
        writer.start()
        wait_for(lambda: not reg.owns("n0"), timeout=5)  # lapsed
        _resume(reg)
        writer.join(10)
        wait_for(lambda: reg.owns("x") and reg.lookup("x").metadata == {"v": 1})
        assert (reg.lease_generation or 0) > before and reg.lease_losses == 1  # one lease
        time.sleep(0.5)  # what b sees settles
        assert seen == ["expired", "register"]


def test_a_name_lost_then_registered_again_during_a_recovery_ends_held(db_url: str) -> None:
    """The recovery stays open (a name left to its slow writer) while the node learns of
    a takeover, and registers the name again once it is free: its watchers end on that
    register (the loss was told at the recovery's end, after it)."""
    with node(db_url, registry_ttl_ms=3000) as a, node(db_url, registry_ttl_ms=3000) as b:
        reg = a.service_registry
        reg.register("x", "a-x")
        reg.register("y", "a-y", {"v": 0})
        started = time.monotonic()
        seen: list[tuple[str, bool]] = []
        reg.watch("x", lambda c: seen.append((c.kind, bool(c.entry and c.entry.node == reg.node))))
        stop_heartbeat(a)
        _slow_update(reg, "y", 5.0).set()
        writer = threading.Thread(target=reg.update_metadata, args=("y", {"v": 1}))
        writer.start()
        time.sleep(max(0.0, started + 3.3 - time.monotonic()))  # past the TTL
        b.service_registry.register("x", "b-x")  # taken over
        _resume(reg)
        time.sleep(0.5)
        b.service_registry.unregister("x")
        time.sleep(0.2)
        reg.register("x", "a-x2")  # before the recovery ends
        writer.join(10)
        time.sleep(1.0)  # the recovery's end, and what it tells
        assert reg.owns("x") and reg.lookup("x").address == "a-x2"
        assert seen[-1] == ("register", True), seen  # no lost after it
        assert seen.count(("lost", False)) == 1, seen


def test_update_metadata_answered_after_a_lapse_returns_the_live_entry(db_url: str) -> None:
    with node(db_url) as a:
        reg = a.service_registry
        first = reg.register("x", "addr", {"v": 0})
        fetchone, once = reg._db.fetchone, [True]

        def lapse_meanwhile(sql: str, params: Any = None) -> Any:
            if once[0] and sql == reg._sql.update_metadata:
                once[0] = False
                stop_heartbeat(a)
                wait_for(lambda: not reg.owns("x"), timeout=5)
                _resume(reg)
            return fetchone(sql, params)

        reg._db.fetchone = lapse_meanwhile  # type: ignore[method-assign]
        entry = reg.update_metadata("x", {"v": 1})
        assert entry.alive and entry.epoch == first.epoch + 1
        assert entry.metadata == {"v": 1}
        assert reg.lookup("x") == entry


def test_a_loss_found_by_a_recovery_pass_that_then_fails_is_told(db_url: str) -> None:
    with node(db_url) as a, node(db_url) as b:
        reg = a.service_registry
        lease_lost = _lease_losses(a)
        reg.register("x", "a-x")
        reg.register("y", "a-y")
        seen: list[tuple[str, str]] = []
        reg.watch("*", lambda change: seen.append((change.name, change.kind)))
        stop_heartbeat(a)
        wait_for(lambda: not reg.owns("x"), timeout=5)
        wait_for(lambda: _takes(b, "x"), timeout=5)  # b takes x over once a's lease ends
        fetchone, failed = reg._db.fetchone, []

        def once_unavailable(sql: str, params: Any = None) -> Any:
            if not failed and sql == reg._sql.reclaim and params["name"] == "y":
                failed.append(True)  # after x was found lost in the same pass
                raise StorageUnavailableError("injected: connection reset")
            return fetchone(sql, params)

        reg._db.fetchone = once_unavailable  # type: ignore[method-assign]
        _resume(reg)
        wait_for(lambda: lease_lost != [], timeout=10)
        assert failed and ("x", "lost") in seen
        assert lease_lost == [(["x"], ["y"])]
        assert reg.owns("y") and not reg.owns("x")


def _lease_losses(fdn: Foundation) -> list[tuple[list[str], list[str]]]:
    """(lost, kept) of each ``foundation.registry.lease_lost`` the node emits."""
    told: list[tuple[list[str], list[str]]] = []
    fdn.telemetry.attach(
        "lease-lost",
        ("foundation", "registry", "lease_lost"),
        lambda event, measurements, metadata, config: told.append(
            (metadata["lost"], metadata["kept"])
        ),
    )
    return told


def _takes(fdn: Foundation, name: str) -> bool:
    try:
        fdn.service_registry.register(name, "b")
    except FoundationError:
        return False
    return True


def test_a_forced_unregister_of_a_name_not_yet_seen_is_told_to_the_remover(db_url: str) -> None:
    with node(db_url, poll_interval_ms=1000) as a, node(db_url, poll_interval_ms=1000) as b:
        seen: list[tuple[str, str]] = []
        b.service_registry.watch("*", lambda change: seen.append((change.kind, change.source)))
        a.service_registry.register("svc", "http://a")
        b.service_registry.unregister("svc", force=True)  # before b's cache has it
        wait_for(lambda: len(seen) >= 2)
        assert seen == [("register", "remote"), ("unregister", "local")]


async def test_async_a_forced_unregister_of_a_name_not_yet_seen_is_told(db_url: str) -> None:
    async with anode(db_url) as a, anode(db_url) as b:
        seen: list[tuple[str, str]] = []
        b.service_registry.watch("*", lambda change: seen.append((change.kind, change.source)))
        await a.service_registry.register("svc", "http://a")
        await b.service_registry.unregister("svc", force=True)
        await async_wait_for(lambda: len(seen) >= 2)
        assert seen[-1] == ("unregister", "local")


def test_a_loss_whose_owner_row_cannot_be_read_is_told(db_url: str) -> None:
    """The recovery's reclaim of x finds it taken, then its read of the new owner's row
    fails: x, forgotten already, is told lost all the same (without the owner's entry)."""
    with node(db_url) as a, node(db_url) as b:
        reg = a.service_registry
        lease_lost = _lease_losses(a)
        reg.register("x", "a-x")
        reg.register("y", "a-y")
        seen: list[tuple[str, str]] = []
        reg.watch("*", lambda change: seen.append((change.name, change.kind)))
        stop_heartbeat(a)
        wait_for(lambda: not reg.owns("x"), timeout=5)
        with reg._resync_lock:  # a's feed stands still too (a pause): x looks a's here
            wait_for(lambda: _takes(b, "x"), timeout=5)
            fetchone, failed = reg._db.fetchone, []

            def owner_unreadable(sql: str, params: Any = None) -> Any:
                if not failed and sql == reg._sql.select_entry and params["name"] == "x":
                    failed.append(True)
                    raise StorageUnavailableError("injected: connection reset")
                return fetchone(sql, params)

            reg._db.fetchone = owner_unreadable  # type: ignore[method-assign]
            _resume(reg)
            wait_for(lambda: bool(failed), timeout=10)
        wait_for(lambda: lease_lost != [], timeout=10)
        assert ("x", "lost") in seen
        assert lease_lost == [(["x"], ["y"])]
