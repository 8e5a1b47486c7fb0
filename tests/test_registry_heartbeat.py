"""``heartbeat()`` called by hand after the lease lapsed tells watchers what the heartbeat's
own loop tells them: the names expired, then came back under the new lease."""

from __future__ import annotations

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
