"""Review 15, registry, on SQLite and PostgreSQL.

* A name another node removed (``unregister(force=True)``) while its holder stood still is
  lost to that holder, even when its recovery runs before its cache shows the removal: the
  recovery wrote the tombstoned name back (it took any free row for its own).
* A node's resync (SQLite's first poll, PostgreSQL's after a reconnect) that finds a node
  closed tells its names' ``unregister``: it ended that node's lease first, and the names
  then went unseen, as already dead.
* A later instance of a node id does not become the owner of a name left dead in the table
  by an earlier one (its own TTL ran out during a pause): lease generations went back to 1
  after ``close()``, and other nodes reported the long-dead name ``expired``.
* ``AsyncServiceRegistry.watch`` where no event loop runs raises ``validation_error``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from foundation import FoundationError
from foundation.errors import StorageUnavailableError
from tests.helpers import async_wait_for, wait_for
from tests.test_registry import drain, node, stop_heartbeat
from tests.test_registry_async import freeze
from tests.test_registry_review3 import anode

FEED_SIDE = ("on_notify", "poll", "resync")


@contextmanager
def feed_held(reg: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The registry's change-feed calls wait until the block ends (the feed is late)."""
    gate = threading.Event()
    for method in FEED_SIDE:
        original = getattr(reg, method)

        def held(*args: Any, _original: Any = original) -> Any:
            gate.wait(30)
            return _original(*args)

        monkeypatch.setattr(reg, method, held)
    try:
        yield
    finally:
        gate.set()


def _told(reg: Any) -> list[tuple[str, str, str]]:
    seen: list[tuple[str, str, str]] = []
    reg.watch("*", lambda change: seen.append((change.name, change.kind, change.source)))
    return seen


def _holder(db_url: str, name: str) -> Any:
    with node(db_url) as reader:
        row = reader.database.fetchone(
            f"SELECT node_id FROM foundation_registry WHERE name = '{name}'"
        )
    return row[0] if row else None


# -- a name removed while its holder stood still -----------------------------------------


def test_a_name_removed_during_a_pause_is_lost_even_if_the_recovery_comes_first(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as a, node(db_url) as b:
        reg = a.service_registry
        reg.register("gone", "a1")
        reg.register("kept", "a2")
        wait_for(lambda: b.service_registry.find("gone") is not None)
        stop_heartbeat(a)
        with feed_held(reg, monkeypatch):
            b.service_registry.unregister("gone", force=True)
            wait_for(lambda: not reg._lease_valid(), timeout=10)
            reg.heartbeat()  # the recovery, before this node's cache shows the removal
            assert not reg.owns("gone") and reg.owns("kept")
        assert _holder(db_url, "gone") is None  # not written back
        wait_for(lambda: b.service_registry.find("kept") is not None)
        assert b.service_registry.find("gone") is None


async def test_async_a_name_removed_during_a_pause_is_lost(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with anode(db_url) as a, anode(db_url) as b:
        reg = a.service_registry
        await reg.register("gone", "a1")
        await reg.register("kept", "a2")
        await async_wait_for(lambda: b.service_registry.find("gone") is not None)
        await freeze(a)
        with feed_held(reg, monkeypatch):
            await b.service_registry.unregister("gone", force=True)
            await async_wait_for(lambda: not reg._lease_valid(), timeout=10)
            await reg.heartbeat()
            assert not reg.owns("gone") and reg.owns("kept")
        assert _holder(db_url, "gone") is None


# -- a resync that finds a node closed ----------------------------------------------------


def test_a_resync_that_finds_a_node_closed_tells_its_names_unregistered(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as observer:
        reg = observer.service_registry
        other = node(db_url)
        try:
            other.service_registry.register("other", "y")
            wait_for(lambda: reg.find("other") is not None)
            seen = _told(reg)
            with feed_held(reg, monkeypatch):
                other.close()  # its names and its lease go in one transaction
                type(reg).resync(reg, observer.database)  # as after a reconnect, or a first poll
                drain(reg)
                assert seen == [("other", "unregister", "remote")]
            drain(reg)
            assert seen == [("other", "unregister", "remote")]  # once
        finally:
            other.close()


# -- a later instance of a node id --------------------------------------------------------


def test_a_later_instance_of_a_node_id_does_not_own_a_name_left_dead(db_url: str) -> None:
    with node(db_url, node_id="X") as first:
        first.service_registry.register("short", "x", ttl=300)
        stop_heartbeat(first)  # paused: its lease and the name's own TTL run out
        wait_for(lambda: not first.service_registry._lease_valid(), timeout=10)
        first.service_registry.heartbeat()  # back: a new lease; "short" is past its TTL
        stale = first.database.fetchone(
            "SELECT lease_generation FROM foundation_registry WHERE name = 'short'"
        )
        assert stale is not None and stale[0] is not None  # left in the table, dead
    with node(db_url) as observer:
        reg = observer.service_registry
        seen = _told(reg)
        later = node(db_url, node_id="X")
        try:
            assert (later.service_registry.lease_generation or 0) > int(stale[0])
            later.service_registry.register("other", "y")
            wait_for(lambda: reg.find("other") is not None)
            assert reg.find("short") is None
            stop_heartbeat(later)  # it dies: its names expire on every node
            wait_for(lambda: ("other", "expired", "remote") in seen, timeout=10)
            drain(reg)
            assert [change for change in seen if change[0] == "short"] == []
        finally:
            later.close()


# -- async watch where no loop runs --------------------------------------------------------


def test_async_watch_where_no_event_loop_runs_is_a_validation_error(db_url: str) -> None:
    fdn = anode(db_url)
    with pytest.raises(FoundationError) as before_open:
        fdn.service_registry.watch("svc", lambda change: None)
    assert before_open.value.code == "validation_error"

    async def scenario() -> None:
        async with fdn:
            errors: list[BaseException] = []

            def from_a_thread() -> None:
                try:
                    fdn.service_registry.watch("svc", lambda change: None)
                except BaseException as exc:
                    errors.append(exc)

            await asyncio.to_thread(from_a_thread)
            [error] = errors
            assert isinstance(error, FoundationError) and error.code == "validation_error"
            watch = fdn.service_registry.watch("svc", lambda change: None)  # on the loop
            watch.cancel()

    asyncio.run(scenario())


# -- a register whose reply was lost while its lease ran out -------------------------------


def test_a_register_answered_lost_after_the_lease_ran_out_is_not_returned_dead(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as a, node(db_url) as b:
        reg = a.service_registry
        stop_heartbeat(a)
        db = reg._db
        real_execute, real_fetchone = db.execute, db.fetchone

        def lost(real: Any) -> Any:
            def call(sql: str, params: Any = None) -> Any:
                if sql in (reg._sql.register, reg._sql.register_new):
                    real(sql, params)  # committed, and then the reply is lost ...
                    reg._deadline = 0.0  # ... while the outage outlasts the lease
                    raise StorageUnavailableError("the connection was lost", context={})
                return real(sql, params)

            return call

        monkeypatch.setattr(db, "execute", lost(real_execute))
        monkeypatch.setattr(db, "fetchone", lost(real_fetchone))
        with pytest.raises(StorageUnavailableError):
            reg.register("x", "a1")  # not the entry of a dead lease, its epoch no token
        monkeypatch.undo()
        entry = reg.register("x", "a1")  # the retry: written anew, a new epoch
        assert entry.alive and entry.epoch == 2
        wait_for(lambda: b.service_registry.find("x") == entry)


def test_a_name_a_later_instance_of_the_node_id_wrote_is_lost_to_the_paused_one(
    db_url: str,
) -> None:
    with node(db_url, node_id="A") as first:
        reg = first.service_registry
        reg.register("x", "first")
        reg.register("y", "first")
        stop_heartbeat(first)  # paused past its TTL: a later instance takes the node id
        with node(db_url, node_id="A") as later:
            later.service_registry.register("x", "later")
            stop_heartbeat(later)  # it dies in turn (kill -9), its row left under its lease
            wait_for(lambda: not later.service_registry._lease_valid(), timeout=10)
            time.sleep(0.2)  # and the database's view of its lease lapses too
            reg.heartbeat()  # the first one is back
            assert not reg.owns("x") and reg.owns("y")
            assert _holder(db_url, "x") == "A"
            with node(db_url) as reader:
                row = reader.database.fetchone(
                    "SELECT address FROM foundation_registry WHERE name = 'x'"
                )
            assert row is not None and "later" in str(row[0])  # not written back


def test_an_adopted_register_of_json_equal_metadata_is_kept_by_a_recovery(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as a, node(db_url) as b:
        reg = a.service_registry
        db = reg._db
        real_execute, real_fetchone = db.execute, db.fetchone
        cut = {"register": True, "reread": True}

        def lost(real: Any) -> Any:
            def call(sql: str, params: Any = None) -> Any:
                if sql in (reg._sql.register, reg._sql.register_new) and cut["register"]:
                    cut["register"] = False
                    real(sql, params)  # committed; the reply lost, and the read after it
                    raise StorageUnavailableError("the connection was lost", context={})
                if sql == reg._sql.select_entry and cut["reread"]:
                    cut["reread"] = False
                    raise StorageUnavailableError("the connection was lost", context={})
                return real(sql, params)

            return call

        monkeypatch.setattr(db, "execute", lost(real_execute))
        monkeypatch.setattr(db, "fetchone", lost(real_fetchone))
        with pytest.raises(StorageUnavailableError):
            reg.register("x", "addr", {"a": 1, "b": 2})
        # The retry, with the same metadata spelled otherwise: adopted as it stands.
        entry = reg.register("x", "addr", {"b": 2.0, "a": 1})
        assert entry.alive
        monkeypatch.undo()
        stop_heartbeat(a)
        wait_for(lambda: not reg._lease_valid(), timeout=10)
        reg.heartbeat()  # back from a pause: nobody touched it, so it is kept
        assert reg.owns("x")
        wait_for(lambda: (found := b.service_registry.find("x")) is not None and found.alive)
