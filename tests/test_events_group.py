"""Concurrent stores: each caller gets its own outcome, and on PostgreSQL they share calls.

On PostgreSQL, stores arriving while one is in flight are sent together as one
``foundation_append_events`` call (``events._group``). The tests hold the first call until
the others have queued, so the grouping is certain rather than likely; the database and
the statement are the real ones.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from foundation import AsyncFoundation, Foundation
from foundation.errors import ConcurrencyError, EventError
from foundation.events._base import MAX_BATCH_JSON
from foundation.events._group import AsyncGroupCommit, GroupCommit
from tests.helpers import async_wait_for, wait_for

THREADS = 16


def _hold_first_call(fdn: Foundation, queued: int) -> threading.Event:
    """Make the first append call wait until ``queued`` stores are queued behind it.

    With one lead (the default), everything queued behind the held call then goes as one
    group: the grouping is certain.
    """
    events = fdn.events
    assert events.group_commit._max_leaders == 1
    fetchall = events._db.fetchall
    released = threading.Event()

    def held(sql: str, params: Any = None) -> Any:
        if sql in (events._sql.append, events._sql.append_one) and not released.is_set():
            wait_for(lambda: len(events.group_commit._queue) >= queued, timeout=30)
            released.set()
        return fetchall(sql, params)

    events._db.fetchall = held  # type: ignore[method-assign]
    return released


def _run_threads(count: int, work: Callable[[int], Any]) -> list[Any]:
    start = threading.Barrier(count)

    def run(i: int) -> Any:
        start.wait(10)
        try:
            return work(i)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def test_sixteen_threads_each_get_their_own_records(fdn: Foundation) -> None:
    if fdn.url.backend == "postgresql":
        _hold_first_call(fdn, THREADS - 1)

    def work(i: int) -> Any:
        return fdn.events.store_many(
            [{"type": "t", "data": {"i": i, "j": j}, "stream_id": f"s{i % 4}"} for j in range(3)]
        )

    results = _run_threads(THREADS, work)
    assert all(isinstance(r, list) for r in results), results
    for i, records in enumerate(results):
        assert [r.data for r in records] == [{"i": i, "j": j} for j in range(3)]
        positions = [r.position for r in records]
        assert positions == list(range(positions[0], positions[0] + 3))  # a unit stays whole
    log = fdn.events.get(limit=1000)
    assert {r.id: r for rs in results for r in rs} == {r.id: r for r in log}
    for s in range(4):  # streams gap-free although their writers were grouped
        versions = [e.stream_version for e in fdn.events.read_stream(f"s{s}")]
        assert versions == list(range(1, 13))
    if fdn.url.backend == "postgresql":
        assert fdn.events.group_commit.groups == 2  # the held call, then all the others


def test_a_failed_unit_leaves_the_others_of_its_group_written(fdn: Foundation) -> None:
    fdn.events.store({"type": "t", "stream_id": "taken"})
    if fdn.url.backend == "postgresql":
        _hold_first_call(fdn, THREADS - 1)

    def work(i: int) -> Any:
        expected: Any = 0 if i == 7 else "any"  # "taken" is at version 1
        stream = "taken" if i == 7 else f"free{i}"
        return fdn.events.store_many(
            [
                {"type": "t", "data": i, "stream_id": f"other{i}"},
                {"type": "t", "data": i, "stream_id": stream, "expected_version": expected},
            ]
        )

    results = _run_threads(THREADS, work)
    failed = results[7]
    assert isinstance(failed, ConcurrencyError)
    assert failed.context["expected"] == 0 and failed.context["actual"] == 1
    assert fdn.events.read_stream("other7") == []  # nothing of the failed unit
    for i, records in enumerate(results):
        if i != 7:
            assert [r.data for r in records] == [i, i]
    assert len(fdn.events.get(limit=1000)) == 1 + 2 * (THREADS - 1)


def test_the_same_given_id_from_two_callers_is_written_once(fdn: Foundation) -> None:
    event_id = str(uuid.uuid4())
    if fdn.url.backend == "postgresql":
        _hold_first_call(fdn, 2)  # both checked the id before either wrote it

    def work(i: int) -> Any:
        if i == 0:
            return fdn.events.store({"type": "first"})
        return fdn.events.store({"id": event_id, "type": "paid", "data": {"n": 1}})

    results = _run_threads(3, work)
    assert results[1] == results[2]  # one record, answered to both
    assert [e.id for e in fdn.events.get(type="paid")] == [uuid.UUID(event_id)]


def test_many_stores_per_thread_keep_every_outcome_apart(fdn: Foundation) -> None:
    def work(i: int) -> Any:
        return [fdn.events.store({"type": "t", "data": [i, j]}) for j in range(20)]

    results = _run_threads(THREADS, work)
    assert all(isinstance(r, list) for r in results), results
    log = {r.id: r for r in fdn.events.get(limit=1000)}
    assert len(log) == THREADS * 20
    for i, records in enumerate(results):
        assert [r.data for r in records] == [[i, j] for j in range(20)]
        assert all(log[r.id] == r for r in records)  # what each caller got is the log's
    if fdn.url.backend == "postgresql":
        assert fdn.events.group_commit.groups < THREADS * 20  # some stores shared a call


async def test_async_tasks_share_calls_and_a_cancelled_waiter_is_not_written(
    afdn: AsyncFoundation,
) -> None:
    events = afdn.events
    gate = asyncio.Event()
    postgres = afdn.url.backend == "postgresql"
    if postgres:
        fetchall = events._db.fetchall

        async def held(sql: str, params: Any = None) -> Any:
            if sql in (events._sql.append, events._sql.append_one) and not gate.is_set():
                await gate.wait()
            return await fetchall(sql, params)

        events._db.fetchall = held  # type: ignore[method-assign]
    first = asyncio.ensure_future(events.store({"type": "first"}))
    if postgres:
        await async_wait_for(lambda: events.group_commit.busy)
    others = [asyncio.ensure_future(events.store({"type": "t", "data": i})) for i in range(8)]
    if postgres:
        doomed = asyncio.ensure_future(events.store({"type": "cancelled"}))
        await asyncio.sleep(0.01)
        doomed.cancel()  # still queued behind the held call
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await doomed
    records = await asyncio.gather(first, *others)
    assert [r.data for r in records[1:]] == list(range(8))
    assert await events.get(type="cancelled") == []  # dropped before it was sent
    assert len(await events.get(type="t")) == 8
    if postgres:
        assert events.group_commit.groups == 2


def test_a_group_stays_under_its_weight_in_queue_order() -> None:
    """PostgreSQL takes a call's events as one jsonb array, which cannot exceed 255 MiB:
    the units of a group weigh at most max_weight (a heavier unit goes alone)."""
    calls: list[list[str]] = []
    gate = threading.Event()

    def run(units: list[str]) -> list[str | BaseException]:
        calls.append(list(units))
        if len(calls) == 1:
            gate.wait(10)
        return list(units)

    group: GroupCommit[str, str] = GroupCommit(run, limit=64, weigh=len, max_weight=10)
    first = threading.Thread(target=group.submit, args=("a",))
    first.start()
    wait_for(lambda: calls)
    units = ["bbbb", "cccc", "dddd", "e" * 12, "f"]
    threads: list[threading.Thread] = []
    for unit in units:  # queued one after the other, so their order is known
        threads.append(threading.Thread(target=group.submit, args=(unit,)))
        threads[-1].start()
        queued = len(threads)
        wait_for(lambda: len(group._queue) == queued)  # noqa: B023 - waited for here
    gate.set()
    for t in [first, *threads]:
        t.join(10)
    assert calls == [["a"], ["bbbb", "cccc"], ["dddd"], ["e" * 12], ["f"]]


async def test_an_async_group_stays_under_its_weight() -> None:
    calls: list[list[str]] = []
    gate = asyncio.Event()

    async def run(units: list[str]) -> list[str | BaseException]:
        calls.append(list(units))
        if len(calls) == 1:
            await gate.wait()
        return list(units)

    group: AsyncGroupCommit[str, str] = AsyncGroupCommit(run, limit=64, weigh=len, max_weight=10)
    first = asyncio.ensure_future(group.submit("a"))
    await async_wait_for(lambda: group.busy)
    units = ["bbbb", "cccc", "dddd", "e" * 12, "f"]
    queued = [asyncio.ensure_future(group.submit(u)) for u in units]
    await asyncio.sleep(0)
    gate.set()
    assert await asyncio.gather(first, *queued) == ["a", *units]
    assert calls == [["a"], ["bbbb", "cccc"], ["dddd"], ["e" * 12], ["f"]]


def test_store_many_refuses_more_json_than_one_call_takes(db_url: str) -> None:
    """32 MiB in all: far below what PostgreSQL's jsonb takes in one call (255 MiB), so a
    batch that SQLite would store is not refused by PostgreSQL alone, half-way."""
    big = "x" * (2**20 - 100)
    count = MAX_BATCH_JSON // len(big) + 1
    with Foundation(db_url, migrate="check") as fdn:
        with pytest.raises(EventError, match="at most 32 MiB of JSON in one call") as info:
            fdn.events.store_many([{"type": "big", "data": big} for _ in range(count)])
        assert info.value.context["count"] == count
        assert fdn.events.get(type="big") == []
        fdn.events.store_many([{"type": "big", "data": big} for _ in range(3)])  # under it
        assert len(fdn.events.get(type="big")) == 3


async def test_async_tasks_ready_together_share_one_call(afdn: AsyncFoundation) -> None:
    """A caller that finds no call in flight lets the loop turn once: the tasks due at the
    same time go with it, in one call (on PostgreSQL; SQLite runs no group commit)."""
    events = afdn.events
    before = events.group_commit.groups
    records = await asyncio.gather(*(events.store({"type": "t", "data": i}) for i in range(10)))
    assert [r.data for r in records] == list(range(10))
    assert [r.data for r in await events.get(type="t")] == list(range(10))
    if afdn.url.backend == "postgresql":
        assert events.group_commit.groups == before + 1


async def test_async_a_lone_caller_cancelled_in_its_loop_turn_leaves_no_trace() -> None:
    calls: list[list[str]] = []

    async def run(units: list[str]) -> list[str | BaseException]:
        calls.append(list(units))
        return list(units)

    group: AsyncGroupCommit[str, str] = AsyncGroupCommit(run, limit=64)
    doomed = asyncio.ensure_future(group.submit("doomed"))
    await asyncio.sleep(0)  # it is in its loop turn now
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    assert not group.busy and calls == []  # not written, and the next caller goes
    assert await group.submit("next") == "next"
    assert calls == [["next"]]
