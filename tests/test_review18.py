"""Review 18: what a paused holder tells when its node id was taken.

* A holder paused past its TTL while a new process of its node id started and registered
  one of its names again told that name ``lost`` with no new owner (``None``): its watchers
  ended on "nobody holds it" while ``lookup`` gave the new instance's entry.

Each test failed on the commit before its fix.
"""

from __future__ import annotations

import asyncio

import pytest

from foundation import ConfigError
from tests.helpers import async_wait_for, wait_for
from tests.test_registry import node, stop_heartbeat
from tests.test_registry_async import freeze
from tests.test_registry_review3 import anode, kinds, watched


def test_a_name_the_new_instance_of_the_node_id_took_is_lost_to_it(db_url: str) -> None:
    old = node(db_url, node_id="web")
    try:
        seen = watched(old, "svc")
        old.service_registry.register("svc", "http://old")
        stop_heartbeat(old)  # paused past its TTL; a new process of the same id starts
        with node(db_url, node_id="web") as new:
            taken = new.service_registry.register("svc", "http://new")
            wait_for(lambda: kinds(seen)[-1:] == ["register"] and len(seen) > 2)
            with pytest.raises(ConfigError):
                old.service_registry.heartbeat()
            wait_for(lambda: kinds(seen)[-1:] == ["lost"])
            assert kinds(seen) == ["register", "expired", "register", "lost"]
            assert seen[-1].entry is not None and seen[-1].entry.epoch == taken.epoch
            assert seen[-1].entry == old.service_registry.lookup("svc")
            assert old.service_registry.lookup("svc").address == "http://new"
    finally:
        old.close()


async def test_async_a_name_the_new_instance_of_the_node_id_took_is_lost_to_it(
    db_url: str,
) -> None:
    old = anode(db_url, node_id="web")
    await old.open()
    try:
        seen = watched(old, "svc")
        await old.service_registry.register("svc", "http://old")
        await freeze(old)
        async with anode(db_url, node_id="web") as new:
            taken = await new.service_registry.register("svc", "http://new")
            await async_wait_for(lambda: kinds(seen)[-1:] == ["register"] and len(seen) > 2)
            with pytest.raises(ConfigError):
                await old.service_registry.heartbeat()
            await async_wait_for(lambda: kinds(seen)[-1:] == ["lost"])
            await asyncio.sleep(0.1)  # nothing more is told
            assert kinds(seen) == ["register", "expired", "register", "lost"]
            assert seen[-1].entry is not None and seen[-1].entry.epoch == taken.epoch
            assert seen[-1].entry == old.service_registry.lookup("svc")
    finally:
        await old.close()
