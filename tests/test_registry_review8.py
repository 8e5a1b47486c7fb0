"""Found by a reviewer running registry nodes in several processes.

* A node that stood still past the TTL (a pause, SIGSTOP) reported other nodes' live
  names and members ``expired`` when it woke: its heartbeat loop swept before the change
  feed had applied the renewals made meanwhile. And when the renewal then arrived, no
  ``register`` / ``join`` followed: watchers stayed on ``expired`` while lookups gave the
  entry, and its real end was reported ``expired`` a second time.
* SQLite: a renewal that waited for the write lock past its lease's expiry still renewed
  it (its ``:now`` was read before the wait), though another node could already have
  taken its names as dead: ``owns()`` was True on two nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from foundation import AsyncFoundation, Foundation
from foundation.service_registry import RegistryChange
from tests.helpers import async_wait_for, wait_for
from tests.test_registry import drain, node, stop_heartbeat
from tests.test_registry_async import anode, freeze
from tests.test_registry_review3 import kinds, watched


def _lapse_here(observer: Foundation | AsyncFoundation, owner: str) -> None:
    """``owner``'s lease lapses in ``observer``'s cache, as after a stall of ``observer``
    (the owner renewed meanwhile; the renewal has not reached it yet)."""
    observer.service_registry._state._leases[owner].expires = time.time() - 0.01


@contextlib.contextmanager
def _observed(
    db_url: str,
) -> Iterator[tuple[Foundation, Foundation, list[RegistryChange]]]:
    """An owner of "x", and an observer whose sweeps run only when a test calls them,
    watching every name."""
    with node(db_url, node_id="owner") as owner, node(db_url, node_id="observer") as observer:
        stop_heartbeat(observer)
        owner.service_registry.register("x", "addr")
        wait_for(lambda: observer.service_registry.find("x") is not None)
        yield owner, observer, watched(observer, "*")


def _live_again_here(observer: Foundation | AsyncFoundation, owner: str) -> bool:
    return observer.service_registry._state._leases[owner].expires > time.time()


def test_a_renewal_read_late_registers_again_what_was_reported_expired(db_url: str) -> None:
    with node(db_url, node_id="owner") as owner, node(db_url, node_id="observer") as observer:
        reg = observer.service_registry
        stop_heartbeat(observer)  # its sweeps run here only
        owner.service_registry.register("x", "addr")
        owner.service_registry.join("g", "addr", member_id="m")
        wait_for(lambda: reg.find("x") is not None and len(reg.members("g")) == 1)
        seen = watched(observer, "*")
        _lapse_here(observer, "owner")
        reg._publish(reg._state.sweep())
        drain(reg)
        assert kinds(seen) == ["expired", "expired"] and reg.find("x") is None
        owner.service_registry.heartbeat()
        wait_for(lambda: _live_again_here(observer, "owner"))
        drain(reg)
        assert sorted(kinds(seen)[2:]) == ["join", "register"]
        assert reg.lookup("x").node == "owner" and len(reg.members("g")) == 1
        # Its real end is reported once more: the registration lived again.
        owner.service_registry.unregister("x")
        wait_for(lambda: "unregister" in kinds(seen))
        assert kinds(seen, "x") == ["expired", "register", "unregister"]


async def test_a_renewal_read_late_registers_again_what_was_reported_expired_async(
    db_url: str,
) -> None:
    async with anode(db_url) as owner, anode(db_url) as observer:
        reg = observer.service_registry
        await freeze(observer)
        await owner.service_registry.register("x", "addr")
        await async_wait_for(lambda: reg.find("x") is not None)
        seen = watched(observer, "x")
        _lapse_here(observer, owner.settings.node_id)
        reg._publish(reg._state.sweep())
        await owner.service_registry.heartbeat()
        await async_wait_for(lambda: _live_again_here(observer, owner.settings.node_id))
        await async_wait_for(lambda: kinds(seen) == ["expired", "register"])
        assert reg.lookup("x").node == owner.settings.node_id


def _ticks(reg: Any, seconds: float, late: float = 0.0) -> None:
    """The heartbeat loop's passes for ``seconds``: each wakes ``late`` seconds late."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
        reg._ticked -= late
        reg._loop_sweep(0.1)
        reg._ticked = time.monotonic()  # the pass's end


def test_a_loop_that_always_wakes_late_still_reports_expiry(db_url: str) -> None:
    with _observed(db_url) as (owner, observer, seen):
        reg = observer.service_registry
        stop_heartbeat(owner)
        _lapse_here(observer, "owner")
        _ticks(reg, 1.5, late=1.0)  # every pass a "stall": one grace each, then a sweep
        drain(reg)
        assert kinds(seen) == ["expired"]


def test_a_slow_pass_is_no_stall(db_url: str) -> None:
    with _observed(db_url) as (owner, observer, seen):
        reg = observer.service_registry
        stop_heartbeat(owner)
        time.sleep(0.5)  # a pass that waited for the database: it ends now
        reg._ticked = time.monotonic()
        _lapse_here(observer, "owner")
        reg._loop_sweep(0.1)
        drain(reg)
        assert kinds(seen) == ["expired"]


def test_a_change_read_with_a_renewal_this_node_had_missed_is_that_change(
    db_url: str,
) -> None:
    with node(db_url, node_id="owner") as owner, node(db_url, node_id="observer") as observer:
        reg = observer.service_registry
        stop_heartbeat(observer)
        owner.service_registry.register("x", "addr", {"v": 1})
        wait_for(lambda: reg.find("x") is not None)
        seen = watched(observer, "x")
        _lapse_here(observer, "owner")  # it stood still: the owner's renewals unseen
        owner.service_registry.heartbeat()
        owner.service_registry.update_metadata("x", {"v": 2})
        wait_for(lambda: reg.find("x") is not None and reg.lookup("x").metadata == {"v": 2})
        drain(reg)
        assert kinds(seen) == ["metadata"]


def test_a_node_that_stood_still_waits_for_the_feed_before_reporting_expiry(
    db_url: str,
) -> None:
    with _observed(db_url) as (owner, observer, seen):
        reg = observer.service_registry
        reg._loop_sweep(0.1)
        reg._ticked -= 3.0  # its heartbeat loop slept 3 s instead of 0.1
        _lapse_here(observer, "owner")
        reg._loop_sweep(0.1)
        owner.service_registry.heartbeat()
        wait_for(lambda: _live_again_here(observer, "owner"))
        _ticks(reg, 0.7)  # past the grace: sweeps run again, and find the lease live
        drain(reg)
        assert kinds(seen) == []
        # A lease that really lapses is still reported, after the grace.
        _lapse_here(observer, "owner")
        reg._loop_sweep(0.1)
        drain(reg)
        assert kinds(seen) == ["expired"]


def test_sqlite_a_renewal_that_waited_past_its_expiry_does_not_renew(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    with Foundation(
        url, migrate="upgrade", registry_ttl_ms=2000, registry_heartbeat_ms=1000
    ) as fdn:
        reg = fdn.service_registry
        before = reg.lease_generation
        blocker = sqlite3.connect(str(tmp_path / "locked.db"), isolation_level=None)
        reg.heartbeat()
        blocker.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the expiry
        renewed: list[bool] = []
        renewal = threading.Thread(target=lambda: renewed.append(reg.heartbeat()))
        renewal.start()  # reads its clock now, then waits for the lock
        time.sleep(2.3)
        blocker.execute("COMMIT")
        renewal.join()
        blocker.close()
        # The lapsed lease stayed dead (its names may be another node's by now): the
        # node took a new one.
        assert renewed == [False]
        wait_for(lambda: (reg.lease_generation or 0) > (before or 0))


async def test_sqlite_a_renewal_that_waited_past_its_expiry_does_not_renew_async(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    options = {"registry_ttl_ms": 2000, "registry_heartbeat_ms": 1000}
    async with AsyncFoundation(url, migrate="upgrade", poll_interval_ms=5, **options) as fdn:
        reg = fdn.service_registry
        before = reg.lease_generation
        blocker = sqlite3.connect(str(tmp_path / "locked.db"), isolation_level=None)
        await reg.heartbeat()
        blocker.execute("BEGIN IMMEDIATE")
        renewal = asyncio.create_task(reg.heartbeat())
        await asyncio.sleep(2.3)
        blocker.execute("COMMIT")
        assert await renewal is False
        blocker.close()
        await async_wait_for(lambda: (reg.lease_generation or 0) > (before or 0))
