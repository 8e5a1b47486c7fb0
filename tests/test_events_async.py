"""The event log, async face: the same outcomes as the sync face, awaited."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

import foundation
from foundation import AsyncFoundation, ConcurrencyError, EventError


async def test_round_trip_and_filters(afdn: AsyncFoundation) -> None:
    ev = afdn.events
    with foundation.correlation("req-9"):
        a = await ev.store({"type": "a", "data": {"n": 1}, "stream_id": "s"})
    b = await ev.store({"type": "b", "data": [1], "stream_id": "s", "causation_id": str(a.id)})
    assert (a.stream_version, b.stream_version) == (1, 2) and a.position < b.position
    assert a.correlation_id == "req-9"
    assert await ev.get() == [a, b]
    assert await ev.get(type=["b"]) == [b]
    assert await ev.get({"order": "desc", "limit": 1}) == [b]
    assert await ev.get(causation_id=str(a.id)) == [b]
    assert await ev.correlation_chain("req-9") == [a]
    assert await ev.read_stream("s", from_version=2) == [b]


async def test_store_many_is_all_or_nothing(afdn: AsyncFoundation) -> None:
    with pytest.raises(EventError, match="not JSON"):
        await afdn.events.store_many([{"type": "a"}, {"type": "b", "data": float("inf")}])
    with pytest.raises(ConcurrencyError):
        await afdn.events.store_many(
            [
                {"type": "a", "stream_id": "s"},
                {"type": "b", "stream_id": "s", "expected_version": 0},
            ]
        )
    assert await afdn.events.get() == []
    done = await afdn.events.store_many([{"type": "a", "stream_id": "s"}] * 3)
    assert [e.stream_version for e in done] == [1, 2, 3]


async def test_idempotency_both_ways(afdn: AsyncFoundation) -> None:
    event_id = uuid.uuid4()
    first = await afdn.events.store({"id": event_id, "type": "paid", "data": 1})
    assert await afdn.events.store({"id": event_id, "type": "paid", "data": 1}) == first
    with pytest.raises(EventError, match="different content"):
        await afdn.events.store({"id": event_id, "type": "paid", "data": 2})
    assert await afdn.events.get() == [first]


async def test_expected_version(afdn: AsyncFoundation) -> None:
    ev = afdn.events
    await ev.store({"type": "a", "stream_id": "s", "expected_version": "no_stream"})
    await ev.store({"type": "a", "stream_id": "s", "expected_version": 1})
    with pytest.raises(ConcurrencyError) as info:
        await ev.store({"type": "a", "stream_id": "s", "expected_version": 1})
    assert info.value.context["expected"] == 1 and info.value.context["actual"] == 2
    with pytest.raises(ConcurrencyError):
        await ev.store({"type": "a", "stream_id": "new", "expected_version": "exists"})
    assert len(await ev.get()) == 2


@pytest.mark.parametrize(
    "criteria", [{"nope": 1}, {"type": 1}, {"limit": -1}, {"after": "yesterday"}]
)
async def test_bad_criteria(afdn: AsyncFoundation, criteria: dict[str, Any]) -> None:
    with pytest.raises(EventError, match=repr(next(iter(criteria)))):
        await afdn.events.get(criteria)
    with pytest.raises(EventError):
        afdn.events.iter(criteria)


async def test_bad_event_writes_nothing(afdn: AsyncFoundation) -> None:
    with pytest.raises(EventError, match="'type'"):
        await afdn.events.store({"data": 1})
    assert await afdn.events.get() == []


async def test_iter_paginates(afdn: AsyncFoundation) -> None:
    stored = await afdn.events.store_many([{"type": "t", "data": i} for i in range(12)])
    assert [e async for e in afdn.events.iter(batch_size=5)] == stored
    assert [e async for e in afdn.events.iter({"order": "desc"}, batch_size=5)] == stored[::-1]
    assert [e async for e in afdn.events.iter(limit=7, batch_size=2)] == stored[:7]


async def test_concurrent_tasks_keep_streams_consistent(afdn: AsyncFoundation) -> None:
    async def write(i: int) -> None:
        with foundation.correlation(f"task-{i}"):
            await afdn.events.store({"type": "w", "stream_id": "shared", "data": i})

    await asyncio.gather(*(write(i) for i in range(10)))
    stream = await afdn.events.read_stream("shared")
    assert [e.stream_version for e in stream] == list(range(1, 11))
    assert sorted(e.data for e in stream) == list(range(10))
    assert all(e.correlation_id == f"task-{e.data}" for e in stream)
