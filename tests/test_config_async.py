"""The async face of config: same behaviour, awaited writes, plain-call reads."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from foundation import AsyncFoundation, ConfigError, correlation
from tests.helpers import async_wait_for


async def test_set_get_delete_history(afdn: AsyncFoundation) -> None:
    with correlation("async-1"):
        await afdn.config.set("port", 4000)
    assert afdn.config.get("port") == 4000
    await afdn.config.set("port", 4001)
    assert await afdn.config.delete("port") is True
    assert await afdn.config.delete("port") is False
    history = await afdn.config.history("port")
    assert [(h.operation, h.old_value, h.new_value) for h in history] == [
        ("delete", 4001, None),
        ("set", 4000, 4001),
        ("set", None, 4000),
    ]
    assert history[-1].correlation_id == "async-1"


async def test_bad_input_is_refused(afdn: AsyncFoundation) -> None:
    with pytest.raises(ConfigError):
        await afdn.config.set("", 1)
    with pytest.raises(ConfigError):
        await afdn.config.set("k", float("nan"))
    assert afdn.config.all() == {}


async def test_watchers_run_on_the_loop_sync_and_async(db_url: str) -> None:
    async with (
        AsyncFoundation(db_url, migrate="skip", poll_interval_ms=5) as a,
        AsyncFoundation(db_url, migrate="skip", poll_interval_ms=5) as b,
    ):
        loop = asyncio.get_running_loop()
        plain: list[Any] = []
        coro: list[Any] = []

        def on_change(change: Any) -> None:
            assert asyncio.get_running_loop() is loop
            plain.append(change)

        async def on_change_async(change: Any) -> None:
            await asyncio.sleep(0)
            coro.append(change)

        b.config.watch("k", on_change)
        b.config.watch("k", on_change_async)
        await a.config.set("k", {"v": 1})
        await async_wait_for(lambda: len(plain) == 1 and len(coro) == 1)
        assert b.config.get("k") == {"v": 1}
        assert plain[0].source == "remote"
        assert coro[0].new == {"v": 1}


async def test_concurrent_tasks_keep_their_own_correlation(afdn: AsyncFoundation) -> None:
    async def write(i: int) -> None:
        with correlation(f"task-{i}"):
            await asyncio.sleep(0)
            await afdn.config.set(f"k{i}", i)

    await asyncio.gather(*(write(i) for i in range(10)))
    history = await afdn.config.history()
    assert {(h.key, h.correlation_id) for h in history} == {
        (f"k{i}", f"task-{i}") for i in range(10)
    }


async def test_reload_and_register(afdn: AsyncFoundation) -> None:
    afdn.config.register("timeout", int, default=5)
    await afdn.config.reload()
    assert afdn.config.get("timeout") == 5
    await afdn.config.set("timeout", 7)
    with pytest.raises(ConfigError):
        await afdn.config.set("timeout", "soon")
    assert afdn.config.get("timeout") == 7
