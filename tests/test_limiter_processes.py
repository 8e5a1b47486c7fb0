"""Real processes hammer one shared limit (and one runs with a skewed clock).

Each worker is a separate Python process (``spawn``) with its own Foundation instance,
started together on a wall-clock signal. Every decision is recorded; the parent checks
that no window admitted more than ``max_requests`` and that no request was refused
while its window still had room (a refusal for lack of a lock would show up there), and
that no decision failed or fell back to fail-open.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

PROCESSES = 4


def hammer(args: tuple[str, str, int, int, str, float, float, float]) -> dict[str, Any]:
    """In a child: decide as fast as possible on one key from start_at to end_at."""
    url, key, cap, interval, algorithm, start_at, end_at, skew_s = args
    real_time_ns = time.time_ns
    if skew_s:
        time.time_ns = lambda: real_time_ns() + int(skew_s * 1e9)  # type: ignore[assignment]
        time.time = lambda: real_time_ns() / 1e9 + skew_s  # type: ignore[assignment]
    from foundation import Foundation

    decisions: list[tuple[bool, int]] = []
    errors: list[str] = []
    degraded = 0
    with Foundation(url, migrate="skip", poll_interval_ms=1000) as fdn:
        limiter = fdn.rate_limiter
        if real_time_ns() / 1e9 > start_at:
            errors.append("this worker opened its Foundation after the start signal")
        while real_time_ns() / 1e9 < start_at:
            time.sleep(0.001)
        while real_time_ns() / 1e9 < end_at:
            try:
                d = limiter.try_acquire(key, cap, interval, algorithm)
            except Exception as exc:
                errors.append(repr(exc))
                continue
            degraded += d.degraded
            decisions.append((d.allowed, d.reset_at_ms))
    return {"decisions": decisions, "errors": errors, "degraded": degraded}


def _warm() -> None:
    import foundation  # noqa: F401  # imported once per worker, before any timing


@pytest.fixture(scope="module")
def pool() -> Iterator[Any]:
    with multiprocessing.get_context("spawn").Pool(PROCESSES, initializer=_warm) as workers:
        workers.map(time.sleep, [0.2] * PROCESSES, chunksize=1)  # every worker has started
        yield workers


def _run(
    pool: Any,
    url: str,
    key: str,
    cap: int,
    interval: int,
    algorithm: str,
    seconds: float,
    skews: list[float] | None = None,
) -> list[dict[str, Any]]:
    start = time.time() + 1.5  # each child opens its Foundation first
    skews = skews or [0.0] * PROCESSES
    jobs = [(url, key, cap, interval, algorithm, start, start + seconds, s) for s in skews]
    return list(pool.map(hammer, jobs, chunksize=1))


def _check_windows(results: list[dict[str, Any]], cap: int, interval: int, exact: bool) -> int:
    assert all(r["errors"] == [] for r in results), [r["errors"][:3] for r in results]
    assert all(r["degraded"] == 0 for r in results)
    assert all(r["decisions"] for r in results), "a worker made no decision"
    admitted: Counter[int] = Counter()
    refused: Counter[int] = Counter()
    for r in results:
        for allowed, reset_ms in r["decisions"]:
            window = reset_ms - interval
            (admitted if allowed else refused)[window] += 1
    assert admitted, "nothing was admitted"
    for window, n in admitted.items():
        assert n <= cap, f"window {window} admitted {n} > {cap}"
    if exact:  # a refusal only ever comes from a full window
        for window in refused:
            assert admitted[window] == cap, (window, admitted[window], refused[window])
    return sum(admitted.values())


@pytest.mark.slow
@settings(
    max_examples=3,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    cap=st.integers(1, 40),
    interval=st.sampled_from([100, 200, 350]),
    algorithm=st.sampled_from(["fixed_window", "sliding_window"]),
)
def test_processes_never_exceed_a_window_nor_refuse_below_it(
    pool: Any, db_url: str, cap: int, interval: int, algorithm: str
) -> None:
    key = f"k-{cap}-{interval}-{algorithm}-{time.monotonic_ns()}"
    results = _run(pool, db_url, key, cap, interval, algorithm, 0.8)
    _check_windows(results, cap, interval, exact=algorithm == "fixed_window")


@pytest.mark.slow
def test_processes_share_one_token_bucket(pool: Any, db_url: str) -> None:
    cap, interval, seconds = 20, 500, 1.0
    began = time.time()
    results = _run(pool, db_url, "bucket", cap, interval, "token_bucket", seconds)
    elapsed_ms = (time.time() - began) * 1000
    assert all(r["errors"] == [] and r["degraded"] == 0 for r in results)
    admitted = sum(a for r in results for a, _ in r["decisions"])
    refused = sum(not a for r in results for a, _ in r["decisions"])
    assert refused > 0
    # A full bucket, plus what refilled meanwhile: never more.
    assert cap <= admitted <= cap + cap * elapsed_ms / interval


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql"])  # SQLite: one machine, one clock
def test_a_skewed_clock_changes_nothing_on_postgres(pool: Any, db_url: str) -> None:
    cap, interval = 5, 300
    began_ms = time.time() * 1000
    results = _run(
        pool, db_url, "skew", cap, interval, "fixed_window", 1.0, [3600.0, -3600.0, 0.0, 0.0]
    )
    ended_ms = time.time() * 1000
    _check_windows(results, cap, interval, exact=True)
    for r in results:  # every node saw the database's windows, not its own clock's
        for _allowed, reset_ms in r["decisions"]:
            assert began_ms - interval <= reset_ms <= ended_ms + interval
