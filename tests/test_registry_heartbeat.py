"""A recovery after a lapse, as watchers and telemetry see it.

* ``heartbeat()`` called by hand after the lease lapsed tells watchers what the heartbeat's
  own loop tells them: the names expired, then came back under the new lease.
* A name another node takes while the node is paused is reported in the recovery's one
  ``lease_lost`` beside the names kept, even when the node's change feed reads the
  takeover only after the new lease turned valid (a loaded machine).
"""

from __future__ import annotations

from typing import Any

import pytest

from foundation import AsyncFoundation, Foundation
from foundation.service_registry import RegistryChange
from tests.helpers import async_wait_for, wait_for
from tests.test_registry import drain, node, stop_heartbeat
from tests.test_registry_async import freeze
from tests.test_registry_review3 import anode


def test_a_heartbeat_called_by_hand_after_a_lapse_reports_the_expiry(db_url: str) -> None:
    with node(db_url) as a:
        seen: list[RegistryChange] = []
        a.service_registry.watch("*", seen.append)
        a.service_registry.register("kept", "http://a")
        stop_heartbeat(a)
        wait_for(lambda: not a.service_registry.owns("kept"), timeout=5)
        assert a.service_registry.heartbeat() is False  # learns of the lapse, recovers
        drain(a.service_registry)
        assert [c.kind for c in seen] == ["register", "expired", "register"]
        assert a.service_registry.owns("kept")


async def test_async_heartbeat_called_by_hand_after_a_lapse_reports_the_expiry(
    db_url: str,
) -> None:
    async with anode(db_url) as a:
        seen: list[RegistryChange] = []
        a.service_registry.watch("*", seen.append)
        await a.service_registry.register("kept", "http://a")
        await freeze(a)
        await async_wait_for(lambda: not a.service_registry.owns("kept"), timeout=5)
        assert await a.service_registry.heartbeat() is False
        await async_wait_for(lambda: len(seen) >= 3, timeout=5)
        assert [c.kind for c in seen] == ["register", "expired", "register"]
        assert a.service_registry.owns("kept")


def _takeover_read_after_the_new_lease(
    monkeypatch: pytest.MonkeyPatch, a: Foundation | AsyncFoundation, b: Foundation
) -> None:
    """``b`` takes "taken" as soon as ``a``'s new lease turns valid, and ``a``'s feed
    applies that before ``a``'s recovery goes on to write its names again."""
    reg = a.service_registry
    took_lease = reg._took_lease

    def then_b_takes_it(row: tuple[Any, ...] | None, started: float) -> None:
        recovering = reg._lease is not None
        took_lease(row, started)
        if recovering:
            b.service_registry.register("taken", "b")
            owner = b.settings.node_id

            def read() -> bool:
                entry = reg._state.cached_entry("taken")
                return entry is not None and entry.node == owner and not reg._state._displaced

            wait_for(read, timeout=5)

    monkeypatch.setattr(reg, "_took_lease", then_b_takes_it)


def _lease_lost(fdn: Foundation | AsyncFoundation) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    fdn.telemetry.attach(
        "lost", "foundation.registry.lease_lost", lambda _n, _m, meta, _c: seen.append(meta)
    )
    return seen


ONE_LOSS = [{"lost": ["taken"], "kept": ["kept"]}]


def test_a_takeover_read_after_the_new_lease_is_reported_with_the_kept_names(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as a, node(db_url) as b:
        lost = _lease_lost(a)
        a.service_registry.register("taken", "a")
        a.service_registry.register("kept", "a")
        stop_heartbeat(a)
        wait_for(lambda: not a.service_registry.owns("kept"), timeout=5)
        _takeover_read_after_the_new_lease(monkeypatch, a, b)
        assert a.service_registry.heartbeat() is False
        assert [{k: m[k] for k in ("lost", "kept")} for m in lost] == ONE_LOSS
        assert a.service_registry.owns("kept") and not a.service_registry.owns("taken")


async def test_async_takeover_read_after_the_new_lease_is_reported_with_the_kept_names(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with anode(db_url) as a:
        with node(db_url) as b:
            lost = _lease_lost(a)
            await a.service_registry.register("taken", "a")
            await a.service_registry.register("kept", "a")
            await freeze(a)
            await async_wait_for(lambda: not a.service_registry.owns("kept"), timeout=5)
            _takeover_read_after_the_new_lease(monkeypatch, a, b)
            assert await a.service_registry.heartbeat() is False
            assert [{k: m[k] for k in ("lost", "kept")} for m in lost] == ONE_LOSS
            assert a.service_registry.owns("kept") and not a.service_registry.owns("taken")
