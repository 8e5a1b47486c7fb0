"""Review 14, registry, on SQLite and PostgreSQL: ``members()`` read while other threads
join and leave answers (it raised ``RuntimeError``), and the change feed's read of a
member, overtaken by this node's own leave, no longer brings the member back (reported as
a second join, listed by ``members()`` after its ``leave()`` returned)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from foundation import AsyncFoundation, Foundation
from foundation.service_registry import RegistryChange

ROUNDS = 300


def test_members_read_while_the_group_changes(db_url: str) -> None:
    with Foundation(db_url, registry_ttl_ms=10_000) as fdn:
        reg = fdn.service_registry
        for i in range(200):
            reg.join("g", f"http://10.0.0.{i % 250}", member_id=f"m{i}")
        stop = threading.Event()
        failures: list[BaseException] = []

        def churn() -> None:
            i = 0
            while not stop.is_set():
                reg.join("g", "http://extra", member_id=f"x{i}")
                if i >= 10:
                    reg.leave("g", f"x{i - 10}")
                i += 1

        churner = threading.Thread(target=churn)
        churner.start()
        reads = 0
        deadline = time.monotonic() + 3.0
        try:
            while time.monotonic() < deadline:
                try:
                    assert len(reg.members("g")) >= 200
                except RuntimeError as exc:
                    failures.append(exc)
                reads += 1
        finally:
            stop.set()
            churner.join(10)
        assert reads > 0 and failures == []


def _check_sequence(changes: list[tuple[str, str, int]]) -> None:
    """Each round's member joined once and left once, in that order, all told locally."""
    expected = [(kind, "local", i) for i in range(ROUNDS) for kind in ("join", "leave")]
    assert changes == expected


def test_a_member_left_is_not_brought_back_by_the_feed(db_url: str) -> None:
    with Foundation(db_url, registry_ttl_ms=10_000) as fdn:
        reg = fdn.service_registry
        changes: list[tuple[str, str, int]] = []

        def seen(change: RegistryChange) -> None:
            changes.append((change.kind, change.source, change.entry.metadata["i"]))

        reg.watch("g", seen)
        listed_after_leave = 0
        for i in range(ROUNDS):
            reg.join("g", "http://a", {"i": i}, member_id="m")
            reg.leave("g", "m")
            listed_after_leave += len(reg.members("g"))
        time.sleep(1.0)  # the feed reads the last notifications
        assert reg.members("g") == []
        _wait_for(lambda: len(changes) >= 2 * ROUNDS)
        time.sleep(0.3)  # nothing more comes
    assert listed_after_leave == 0
    _check_sequence(changes)


async def test_async_a_member_left_is_not_brought_back_by_the_feed(db_url: str) -> None:
    async with AsyncFoundation(db_url, registry_ttl_ms=10_000) as fdn:
        reg = fdn.service_registry
        changes: list[tuple[str, str, int]] = []

        def seen(change: RegistryChange) -> None:
            changes.append((change.kind, change.source, change.entry.metadata["i"]))

        reg.watch("g", seen)
        for i in range(ROUNDS):
            await reg.join("g", "http://a", {"i": i}, member_id="m")
            await reg.leave("g", "m")
            assert reg.members("g") == []
        await asyncio.sleep(1.0)
        for _ in range(100):
            if len(changes) >= 2 * ROUNDS:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
    _check_sequence(changes)


def _wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def _members(fdn: Foundation) -> list[tuple[str, Any]]:
    return [(m.member_id, m.address) for m in fdn.service_registry.members("g")]


def test_a_member_that_moved_is_seen_at_its_new_address(db_url: str) -> None:
    """A member left and joined again at once (a new address): its new row's revision
    started at 1 again, as the cached one's, and other nodes kept the old address."""
    with (
        Foundation(db_url, node_id="node-a", registry_ttl_ms=30_000) as a,
        Foundation(db_url, node_id="node-b", registry_ttl_ms=30_000) as b,
    ):
        heard: list[tuple[str, Any]] = []
        b.service_registry.watch("g", lambda c: heard.append((c.kind, c.entry.address)))
        a.service_registry.join("g", "http://old:1", member_id="m")
        _wait_for(lambda: _members(b) == [("m", "http://old:1")])
        a.service_registry.leave("g", "m")
        a.service_registry.join("g", "http://new:2", member_id="m")
        _wait_for(lambda: _members(b) == [("m", "http://new:2")])
        time.sleep(0.5)
        assert _members(b) == [("m", "http://new:2")]
        assert heard[0] == ("join", "http://old:1") and heard[-1] == ("join", "http://new:2")


def test_a_snapshot_read_before_a_leave_does_not_bring_the_member_back(db_url: str) -> None:
    """SQLite's poll (and PostgreSQL's resync) read the whole members table: a read that
    began before this node's leave was applied after it, and the member came back."""
    with Foundation(db_url, registry_ttl_ms=30_000, poll_interval_ms=1) as fdn:
        reg = fdn.service_registry
        for i in range(3000):  # a big group: the snapshot takes a while to read
            reg.join("g", "http://filler", member_id=f"f{i}")
        time.sleep(1.0)
        changes: list[tuple[str, str, int]] = []
        reg.watch(
            "g",
            lambda c: (
                c.entry.member_id == "m"
                and changes.append((c.kind, c.source, c.entry.metadata["i"]))
            ),
        )
        for i in range(20):
            reg.join("g", "http://a", {"i": i}, member_id="m")
            reg.leave("g", "m")
        listed = set()
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            listed |= {m.metadata["i"] for m in reg.members("g") if m.member_id == "m"}
            time.sleep(0.002)
    assert listed == set()
    assert changes == [(kind, "local", i) for i in range(20) for kind in ("join", "leave")]


def test_a_members_revision_only_grows_across_leave_and_join(db_url: str) -> None:
    with Foundation(db_url) as fdn:
        reg = fdn.service_registry
        first = reg.join("g", "http://a", member_id="m")
        reg.leave("g", "m")
        again = reg.join("g", "http://b", member_id="m")
        updated = reg.join("g", "http://c", member_id="m")
        assert first.revision < again.revision < updated.revision


def test_postgresql_a_member_row_written_by_hand_takes_its_revision_from_the_sequence(
    pg_url: str,
) -> None:
    """0019's trigger: whatever revision a statement gives (a node of an earlier release
    during a deploy), the row takes the next one of the sequence."""
    with Foundation(pg_url) as fdn:
        high = fdn.service_registry.join("g", "http://a", member_id="m").revision
        fdn.service_registry.leave("g", "m")
        row = fdn.database.fetchone(
            "INSERT INTO foundation_registry_members (group_name, member_id, address, "
            "metadata, node_id, lease_generation, revision, joined_at) VALUES "
            "('g', 'x', '\"http://x\"', '{}', 'old-release', 1, 1, now()) RETURNING revision"
        )
    assert row is not None and row[0] > high


def test_a_slow_telemetry_handler_never_lets_the_lease_lapse(db_url: str) -> None:
    """The heartbeat's own telemetry (an expiry it swept) ran the handlers on its thread:
    one slower than the TTL let the node's lease lapse, and it lost its names."""
    with (
        Foundation(db_url, node_id="node-a", registry_ttl_ms=1500) as a,
        Foundation(db_url, node_id="node-b", registry_ttl_ms=1500) as b,
    ):
        losses: list[Any] = []

        def slow(event: Any, measurements: Any, metadata: Any, config: Any) -> None:
            time.sleep(3.0)  # twice the TTL

        a.telemetry.attach("slow-alert", ["foundation.registry.expired"], slow)
        a.telemetry.attach(
            "losses", ["foundation.registry.lease_lost"], lambda *args: losses.append(args)
        )
        a.service_registry.register("mine", "http://a")
        b.service_registry.register("brief", "http://b", ttl=200)  # expires at once
        time.sleep(4.5)
        assert a.service_registry.owns("mine")
        assert b.service_registry.lookup("mine").epoch == 1
        assert losses == []


def test_a_local_names_end_is_not_in_the_registrys_telemetry(db_url: str) -> None:
    with Foundation(db_url) as fdn:
        seen: list[Any] = []
        fdn.telemetry.attach(
            "all",
            [
                "foundation.registry.register",
                "foundation.registry.unregister",
                "foundation.registry.expired",
            ],
            lambda event, measurements, metadata, config: seen.append(
                (event, metadata.get("name"))
            ),
        )
        fdn.service_registry.register("loc", object(), local=True, ttl=100)
        fdn.service_registry.register("loc2", object(), local=True)
        fdn.service_registry.unregister("loc2")
        time.sleep(0.5)
        assert fdn.service_registry.find("loc") is None
        assert seen == []


def test_a_rejoin_passes_a_members_own_revision_too(db_url: str) -> None:
    """SQLite: a row written before the members topic began counting (0006) may have a
    revision above it; a join again still goes past it. (PostgreSQL: 0019's sequence.)"""
    with Foundation(db_url) as fdn:
        fdn.service_registry.join("g", "http://a", member_id="m")
        fdn.database.execute(
            "UPDATE foundation_registry_members SET revision = 1000000000 WHERE member_id = 'm'"
        )
        high = fdn.database.fetchone(
            "SELECT revision FROM foundation_registry_members WHERE member_id = 'm'"
        )
        again = fdn.service_registry.join("g", "http://b", member_id="m")
        assert high is not None and again.revision > high[0]
