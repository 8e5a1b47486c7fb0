"""The service registry on :class:`AsyncFoundation`, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from foundation import (
    AlreadyRegisteredError,
    AsyncFoundation,
    NotFoundError,
    StorageUnavailableError,
    ValidationError,
)
from foundation.service_registry import AsyncServiceRegistry, RegistryChange
from tests.helpers import async_wait_for

TTL = 1000


def anode(url: str) -> AsyncFoundation:
    return AsyncFoundation(url, migrate="skip", poll_interval_ms=5, registry_ttl_ms=TTL)


async def freeze(fdn: AsyncFoundation) -> None:
    """Stop a node's heartbeat task, as if the process were paused."""
    reg = fdn.service_registry
    assert reg._task is not None
    reg._task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reg._task


async def test_register_lookup_conflict_unregister(db_url: str) -> None:
    async with anode(db_url) as a, anode(db_url) as b:
        assert isinstance(a.service_registry, AsyncServiceRegistry)
        entry = await a.service_registry.register("auth", "http://a:1", {"v": 1})
        assert entry.epoch == 1 and a.service_registry.lookup("auth") == entry  # plain call
        await async_wait_for(lambda: b.service_registry.find("auth") is not None)
        with pytest.raises(AlreadyRegisteredError) as info:
            await b.service_registry.register("auth", "http://b:1")
        assert info.value.context["owner"] == a.settings.node_id
        with pytest.raises(NotFoundError):
            await b.service_registry.unregister("auth")
        updated = await a.service_registry.update_metadata("auth", {"v": 2})
        assert updated.metadata == {"v": 2}
        await async_wait_for(lambda: b.service_registry.lookup("auth").metadata == {"v": 2})
        await a.service_registry.unregister("auth")
        await async_wait_for(lambda: b.service_registry.find("auth") is None)
        assert (await b.service_registry.register("auth", "http://b:1")).epoch == 2
        with pytest.raises(ValidationError):
            await a.service_registry.register("", "x")
        with pytest.raises(ValidationError):
            await a.service_registry.register("n", "x", ttl=0)


async def test_watch_runs_callbacks_on_the_loop_and_async_callbacks(db_url: str) -> None:
    async with anode(db_url) as a, anode(db_url) as b:
        seen: list[tuple[str, str]] = []
        loop = asyncio.get_running_loop()
        on_loop: list[bool] = []

        async def on_change(change: RegistryChange) -> None:
            on_loop.append(asyncio.get_running_loop() is loop)
            seen.append((change.name, change.kind))

        b.service_registry.watch("svc.*", on_change)
        await a.service_registry.register("svc.one", 1)
        await async_wait_for(lambda: seen == [("svc.one", "register")])
        await a.service_registry.unregister("svc.one")
        await async_wait_for(lambda: seen[-1] == ("svc.one", "unregister"))
        assert all(on_loop)


async def test_groups_and_local_entries(db_url: str) -> None:
    async with anode(db_url) as a, anode(db_url) as b:
        await a.service_registry.join("workers", "a:1")
        await b.service_registry.join("workers", "b:1", {"zone": "eu"})
        await async_wait_for(lambda: len(a.service_registry.members("workers")) == 2)
        await b.service_registry.leave("workers")
        await async_wait_for(lambda: len(a.service_registry.members("workers")) == 1)
        obj = object()
        entry = await a.service_registry.register("local", obj, local=True)
        assert a.service_registry.lookup("local").address is obj and entry.local
        assert b.service_registry.find("local") is None
        await a.service_registry.unregister("local")
        assert a.service_registry.find("local") is None


async def test_expiry_takeover_and_recovery_after_a_pause(db_url: str) -> None:
    async with anode(db_url) as a, anode(db_url) as b:
        changes: list[RegistryChange] = []
        a.service_registry.watch("*", changes.append)
        lost: list[dict[str, Any]] = []
        a.telemetry.attach(
            "lost", "foundation.registry.lease_lost", lambda _n, _m, meta, _c: lost.append(meta)
        )
        await a.service_registry.register("taken", "a")
        kept = await a.service_registry.register("kept", "a")
        await async_wait_for(lambda: b.service_registry.find("taken") is not None)
        await freeze(a)
        await async_wait_for(lambda: b.service_registry.find("taken") is None, timeout=5)
        assert not a.service_registry.owns("taken")
        taken = await b.service_registry.register("taken", "b")
        assert taken.epoch == 2
        assert await a.service_registry.heartbeat() is False  # learns, recovers
        assert lost and lost[-1]["lost"] == ["taken"] and lost[-1]["kept"] == ["kept"]
        await async_wait_for(lambda: any(c.kind == "lost" for c in changes))
        assert a.service_registry.lookup("taken").node == b.settings.node_id
        assert a.service_registry.owns("kept") and not a.service_registry.owns("taken")
        assert a.service_registry.lookup("kept").epoch == kept.epoch + 1
        await async_wait_for(lambda: b.service_registry.find("kept") is not None)


async def test_heartbeat_task_keeps_names_alive_past_the_ttl(db_url: str) -> None:
    async with anode(db_url) as a, anode(db_url) as b:
        await a.service_registry.register("alive", "a")
        await asyncio.sleep(TTL / 1000 * 2)
        assert a.service_registry.owns("alive")
        await async_wait_for(lambda: b.service_registry.find("alive") is not None)
        assert a.service_registry.lease_losses == 0


async def test_closed_database_keeps_lookups_with_expiry(db_url: str) -> None:
    a = anode(db_url)
    await a.open()
    try:
        await a.service_registry.register("svc", "a")
        await freeze(a)
        await a.database.close()
        assert a.service_registry.lookup("svc").address == "a"
        with pytest.raises(StorageUnavailableError):
            await a.service_registry.register("other", "x")
        await async_wait_for(lambda: a.service_registry.find("svc") is None, timeout=5)
    finally:
        await a.close()
