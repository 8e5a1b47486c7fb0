"""Benchmark rows for concurrent event writers on PostgreSQL (issue 3).

The figure is the time per stored event (wall time of a round divided by the events it
stored): 16 writers against one writer, so the ratio is the inverse of the speed-up
(≤ 0.2 means at least 5x the single writer's throughput). Rounds alternate between the
two so that both see the same machine. Each event is one ``store`` call acknowledged
after its commit (``synchronous_commit=on``).

Writers are threads of one process sharing one ``Foundation`` (a web app's worker
threads), or tasks sharing one ``AsyncFoundation`` (an asyncio app's requests): concurrent
stores there are grouped into one call and one commit (``foundation.events._group``).
Each face is compared with its own single writer. Writers that are separate processes
cannot be grouped: each store holds the writers' lock to its commit, so their row is shown
for information.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
import time
from typing import Any

from bench_events_registry import DATA, TYPE, _foundation
from bench_helpers import BenchOutput, Context, Floor, Measured, bench

from foundation import AsyncFoundation, Foundation

WRITERS = 16


def _one_writer_round(store: Any, count: int) -> int:
    t0 = time.perf_counter_ns()
    for i in range(count):
        store({"type": TYPE, "data": {**DATA, "i": i}})
    return (time.perf_counter_ns() - t0) // count


def _threads_round(store: Any, per_writer: int) -> int:
    start = threading.Barrier(WRITERS + 1)

    def writer(w: int) -> None:
        start.wait()
        for i in range(per_writer):
            store({"type": TYPE, "data": {**DATA, "w": w, "i": i}})

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter_ns()
    for t in threads:
        t.join()
    return (time.perf_counter_ns() - t0) // (WRITERS * per_writer)


def _process_writer(url: str, per_writer: int, ready: Any, go: Any, done: Any) -> None:
    with Foundation(url, migrate="skip", pool_max_size=2) as fdn:
        for _ in range(30):  # connected, and the session's plans cached
            fdn.events.store({"type": TYPE, "data": DATA})
        ready.release()
        go.wait(60)
        for i in range(per_writer):
            fdn.events.store({"type": TYPE, "data": {**DATA, "i": i}})
        done.release()  # before close(): stopping threads is not the stores' time


def _processes_round(url: str, per_writer: int) -> int:
    ctx = multiprocessing.get_context("spawn")
    ready, go, done = ctx.Semaphore(0), ctx.Event(), ctx.Semaphore(0)
    procs = [
        ctx.Process(target=_process_writer, args=(url, per_writer, ready, go, done))
        for _ in range(WRITERS)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire(timeout=120)
    t0 = time.perf_counter_ns()
    go.set()
    for _ in procs:
        done.acquire(timeout=300)
    elapsed = time.perf_counter_ns() - t0
    for p in procs:
        p.join(60)
    if any(p.exitcode != 0 for p in procs):
        raise RuntimeError("a writer process failed")
    return elapsed // (WRITERS * per_writer)


@bench(
    f"events.store, {WRITERS} concurrent writers (time per event)",
    backend="postgresql",
    target="≥ 5x one writer's throughput (time per event ≤ 0.2x)",
    ratio=0.2,
)
def events_store_concurrent(ctx: Context) -> BenchOutput:
    rounds = ctx.n(20, 2)
    per_writer = ctx.n(40, 5)
    with ctx.pg_database() as url, _foundation(url, pool_max_size=WRITERS) as fdn:
        store = fdn.events.store
        # Warm every pooled connection: each session prepares its statements and caches
        # the function's plans after a few calls, and the pool hands connections round.
        for _ in range(3):
            _threads_round(store, per_writer)
            _one_writer_round(store, WRITERS * per_writer // 4)
        threads, single = [], []
        for _ in range(rounds):
            threads.append(_threads_round(store, per_writer))
            single.append(_one_writer_round(store, WRITERS * per_writer // 4))
        groups_before = fdn.events.group_commit.groups
        _threads_round(store, per_writer)
        grouped = WRITERS * per_writer / max(1, fdn.events.group_commit.groups - groups_before)
        procs = [_processes_round(url, per_writer) for _ in range(ctx.n(3, 1))]
    return Measured(
        threads,
        [
            Floor("one writer: store after store (time per event)", single),
            Floor(
                f"{WRITERS} writer processes, each its own Foundation (time per event)",
                procs,
                checked=False,
            ),
        ],
        note=f"{WRITERS} threads sharing one Foundation, {per_writer} stores each per round; "
        f"{grouped:.1f} stores per database call on average (group commit); every store "
        "is acknowledged after its own commit",
    )


async def _one_task_round(store: Any, count: int) -> int:
    t0 = time.perf_counter_ns()
    for i in range(count):
        await store({"type": TYPE, "data": {**DATA, "i": i}})
    return (time.perf_counter_ns() - t0) // count


async def _tasks_round(store: Any, per_writer: int) -> int:
    async def writer(w: int) -> None:
        for i in range(per_writer):
            await store({"type": TYPE, "data": {**DATA, "w": w, "i": i}})

    t0 = time.perf_counter_ns()
    await asyncio.gather(*(writer(w) for w in range(WRITERS)))
    return (time.perf_counter_ns() - t0) // (WRITERS * per_writer)


async def _async_rounds(
    url: str, rounds: int, per_writer: int
) -> tuple[list[int], list[int], float]:
    async with AsyncFoundation(url, migrate="upgrade", pool_max_size=WRITERS) as fdn:
        if not await asyncio.to_thread(fdn.feed.wait_connected, 10):
            raise RuntimeError("the change feed did not connect within 10 s")
        store = fdn.events.store
        for _ in range(3):  # every pooled connection's statements prepared
            await _tasks_round(store, per_writer)
            await _one_task_round(store, WRITERS * per_writer // 4)
        tasks, single = [], []
        for _ in range(rounds):
            tasks.append(await _tasks_round(store, per_writer))
            single.append(await _one_task_round(store, WRITERS * per_writer // 4))
        groups_before = fdn.events.group_commit.groups
        await _tasks_round(store, per_writer)
        grouped = WRITERS * per_writer / max(1, fdn.events.group_commit.groups - groups_before)
    return tasks, single, grouped


@bench(
    f"events.store, {WRITERS} concurrent asyncio tasks (time per event)",
    backend="postgresql",
    target="≥ 5x one writer's throughput (time per event ≤ 0.2x)",
    ratio=0.2,
)
def events_store_concurrent_tasks(ctx: Context) -> BenchOutput:
    per_writer = ctx.n(40, 5)
    with ctx.pg_database() as url:
        tasks, single, grouped = asyncio.run(_async_rounds(url, ctx.n(20, 2), per_writer))
    return Measured(
        tasks,
        [Floor("one task: await store after await store (time per event)", single)],
        note=f"{WRITERS} tasks sharing one AsyncFoundation, {per_writer} stores each per "
        f"round; {grouped:.1f} stores per database call on average (group commit); every "
        "store is acknowledged after its own commit",
    )
