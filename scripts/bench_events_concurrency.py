"""Benchmark rows for concurrent event writers on PostgreSQL (issue 3).

The figure is the time per stored event (wall time of a round divided by the events it
stored): 16 writers against one writer, so the ratio is the inverse of the speed-up
(≤ 0.2 means at least 5x the single writer's throughput). Rounds alternate between the
two so that both see the same machine. Each event is one ``store`` call acknowledged
after its commit (``synchronous_commit=on``).

Writers are threads of one process sharing one ``Foundation`` (a web app's worker
threads): concurrent stores there are grouped into one call and one commit
(``foundation.events._group``). Writers that are separate processes cannot be grouped:
each store holds the writers' lock to its commit, so their row is shown for information.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Any

from bench_events_registry import DATA, TYPE, _foundation
from bench_helpers import BenchOutput, Context, Floor, Measured, bench

from foundation import Foundation

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


def _process_writer(url: str, per_writer: int, ready: Any, go: Any) -> None:
    with Foundation(url, migrate="skip", pool_max_size=2) as fdn:
        fdn.events.store({"type": TYPE, "data": DATA})  # connected and warm
        ready.release()
        go.wait(60)
        for i in range(per_writer):
            fdn.events.store({"type": TYPE, "data": {**DATA, "i": i}})


def _processes_round(url: str, per_writer: int) -> int:
    ctx = multiprocessing.get_context("spawn")
    ready, go = ctx.Semaphore(0), ctx.Event()
    procs = [
        ctx.Process(target=_process_writer, args=(url, per_writer, ready, go))
        for _ in range(WRITERS)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        ready.acquire(timeout=120)
    t0 = time.perf_counter_ns()
    go.set()
    for p in procs:
        p.join(300)
    elapsed = time.perf_counter_ns() - t0
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
        _one_writer_round(store, 50)  # warm up connections and plans
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
