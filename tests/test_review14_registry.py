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
