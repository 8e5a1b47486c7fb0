"""Which ``source`` a watcher sees: ``local`` for this node's own changes and its own
registrations' expiry, ``remote`` for another node's (docs/registry.md). Sync and async,
SQLite and PostgreSQL.

* A node that closes reports the names and members it releases to its own watchers as
  ``unregister`` and ``leave``, ``local``, every time: whether close() applies the release
  itself or the change feed read it first (a loaded machine), never as ``remote``.
* A node's own join and leave are ``local`` even when the change feed reads the member
  row before the call that wrote it has applied it (a loaded machine).
* A name past its own TTL is reported ``expired``: ``local`` on the node that registered
  it, ``remote`` on the others, whichever path noticed it (the sweep, or a takeover that
  arrived before the sweep).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from foundation import AsyncFoundation, Foundation
from foundation.service_registry import RegistryChange
from tests.helpers import async_wait_for, wait_for
from tests.test_registry import drain, node, stop_heartbeat
from tests.test_registry_review3 import anode


def watched(fdn: Foundation | AsyncFoundation) -> list[tuple[str, str, str]]:
    seen: list[tuple[str, str, str]] = []

    def record(change: RegistryChange) -> None:
        seen.append((change.name, change.kind, change.source))

    fdn.service_registry.watch("*", record)
    return seen


def released(fdn: Foundation | AsyncFoundation) -> bool:
    """The node's cache shows its release of "svc" and its member of "grp"."""
    reg = fdn.service_registry
    return reg._state.cached_entry("svc") is None and reg.members("grp") == []


def feed_first(monkeypatch: pytest.MonkeyPatch, fdn: Foundation) -> None:
    """A loaded machine: close()'s release commits, and the node's own change feed reads
    it (a notification, a poll) before close() goes on."""
    db = fdn.service_registry._db
    transaction = db.transaction

    @contextlib.contextmanager
    def slow() -> Iterator[Any]:
        with transaction() as tx:
            yield tx
        if fdn.service_registry._closed:  # the release, not an earlier transaction
            wait_for(lambda: released(fdn), timeout=5)

    monkeypatch.setattr(db, "transaction", slow)


def afeed_first(monkeypatch: pytest.MonkeyPatch, fdn: AsyncFoundation) -> None:
    db = fdn.service_registry._db
    transaction = db.transaction

    @contextlib.asynccontextmanager
    async def slow() -> AsyncIterator[Any]:
        async with transaction() as tx:
            yield tx
        if fdn.service_registry._closed:
            await async_wait_for(lambda: released(fdn), timeout=5)

    monkeypatch.setattr(db, "transaction", slow)


def in_order(changes: list[tuple[str, str, str]]) -> list[tuple[str, str, str]]:
    """Each name's changes in their order (what the dispatcher promises); the release of
    "svc" and of "grp" are two names' changes, read by the feed in either order."""
    return sorted(changes, key=lambda c: c[0])


CLOSED = [
    ("svc", "register", "local"),
    ("grp", "join", "local"),
    ("svc", "unregister", "local"),
    ("grp", "leave", "local"),
]
SEEN_CLOSE = [
    ("svc", "register", "remote"),
    ("grp", "join", "remote"),
    ("svc", "unregister", "remote"),
    ("grp", "leave", "remote"),
]


# -- 1. a node's own close --------------------------------------------------------------------


@pytest.mark.parametrize("race", [False, True], ids=["close-first", "feed-first"])
def test_close_reports_its_own_release_as_local(
    db_url: str, race: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as b:
        others = watched(b)
        a = node(db_url)
        seen = watched(a)
        a.service_registry.register("svc", "http://a")
        a.service_registry.join("grp", "http://a", member_id="m1")
        a.events.store({"type": "t"})  # the reviewer's reproduction stored one event
        wait_for(lambda: len(b.service_registry.members("grp")) == 1)
        if race:
            feed_first(monkeypatch, a)
        a.close()
        # close() delivered what it queued before it returned: once each, as its own.
        assert in_order(seen) == in_order(CLOSED)
        wait_for(lambda: len(others) == 4, timeout=5)
        drain(b.service_registry)
        assert in_order(others) == in_order(SEEN_CLOSE)


@pytest.mark.parametrize("race", [False, True], ids=["close-first", "feed-first"])
async def test_async_close_reports_its_own_release_as_local(
    db_url: str, race: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with anode(db_url) as b:
        others = watched(b)
        a = await anode(db_url)
        seen = watched(a)
        await a.service_registry.register("svc", "http://a")
        await a.service_registry.join("grp", "http://a", member_id="m1")
        await a.events.store({"type": "t"})
        await async_wait_for(lambda: len(b.service_registry.members("grp")) == 1)
        if race:
            afeed_first(monkeypatch, a)
        await a.close()
        assert in_order(seen) == in_order(CLOSED)
        await async_wait_for(lambda: len(others) == 4, timeout=5)
        assert in_order(others) == in_order(SEEN_CLOSE)


def _feed_first_members(monkeypatch: pytest.MonkeyPatch, fdn: Foundation | AsyncFoundation) -> None:
    """join() and leave() apply their own write only once the feed has read it."""
    reg = fdn.service_registry
    joined_row, left = reg._joined_row, reg._left

    def late_join(row: tuple[Any, ...], held: Any) -> Any:
        group, member_id = row[0], row[1]
        wait_for(lambda: any(m.member_id == member_id for m in reg.members(group)), timeout=5)
        return joined_row(row, held)

    def late_leave(group: str, member_id: str) -> None:
        wait_for(lambda: all(m.member_id != member_id for m in reg.members(group)), timeout=5)
        left(group, member_id)

    monkeypatch.setattr(reg, "_joined_row", late_join)
    monkeypatch.setattr(reg, "_left", late_leave)


OWN_MEMBER = [("grp", "join", "local"), ("grp", "leave", "local")]


def test_own_join_and_leave_read_by_the_feed_first_are_local(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as a:
        seen = watched(a)
        _feed_first_members(monkeypatch, a)
        a.service_registry.join("grp", "http://a", member_id="m1")
        a.service_registry.leave("grp", "m1")
        drain(a.service_registry)
        assert seen == OWN_MEMBER


async def test_async_own_join_and_leave_read_by_the_feed_first_are_local(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with anode(db_url) as a:
        seen = watched(a)
        _feed_first_members(monkeypatch, a)
        await a.service_registry.join("grp", "http://a", member_id="m1")
        await a.service_registry.leave("grp", "m1")
        await async_wait_for(lambda: len(seen) >= 2, timeout=5)
        assert seen == OWN_MEMBER


# -- 2. a name's own TTL ----------------------------------------------------------------------

EXPIRED_HERE = [("svc.ttl", "register", "local"), ("svc.ttl", "expired", "local")]
EXPIRED_THERE = [("svc.ttl", "register", "remote"), ("svc.ttl", "expired", "remote")]


def test_own_ttl_expiry_is_local_here_and_remote_elsewhere(db_url: str) -> None:
    with node(db_url) as a, node(db_url) as b:
        here, there = watched(a), watched(b)
        a.service_registry.register("svc.ttl", "http://a", ttl=1000)
        wait_for(lambda: len(here) == 2 and len(there) == 2, timeout=5)
        drain(a.service_registry)
        drain(b.service_registry)
        assert here == EXPIRED_HERE
        assert there == EXPIRED_THERE


async def test_async_own_ttl_expiry_is_local_here_and_remote_elsewhere(db_url: str) -> None:
    async with anode(db_url) as a, anode(db_url) as b:
        here, there = watched(a), watched(b)
        await a.service_registry.register("svc.ttl", "http://a", ttl=1000)
        await async_wait_for(lambda: len(here) == 2 and len(there) == 2, timeout=5)
        assert here == EXPIRED_HERE
        assert there == EXPIRED_THERE


def test_own_ttl_expiry_seen_through_a_takeover_is_still_local(db_url: str) -> None:
    """The sweep has not run (a paused heartbeat) when another node takes the name past
    its TTL: the feed that brings the new owner reports the old registration's expiry,
    which is still this node's own."""
    with node(db_url) as a, node(db_url) as b:
        seen = watched(a)
        a.service_registry.register("svc.ttl", "http://a", ttl=100)
        wait_for(lambda: b.service_registry.find("svc.ttl") is not None)
        stop_heartbeat(a)  # no sweep on a; its lease (1 s) is still valid
        time.sleep(0.15)
        b.service_registry.register("svc.ttl", "http://b")
        wait_for(lambda: len(seen) >= 3, timeout=0.8)
        drain(a.service_registry)
        # (A "lost" follows today: the name is still counted as held past its own TTL.)
        assert seen[:3] == [
            ("svc.ttl", "register", "local"),
            ("svc.ttl", "expired", "local"),
            ("svc.ttl", "register", "remote"),
        ]
