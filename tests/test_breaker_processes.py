"""Real processes share one circuit breaker (and two run with skewed clocks).

Each worker is a separate Python process (``spawn``) with its own Foundation instance.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from typing import Any

import pytest

from foundation import CircuitOpenError, Foundation

PROCESSES = 4
MAX_FAILURES = 3
RESET_MS = 800
PROBE_S = 0.3


class Down(Exception):
    pass


def _warm() -> None:
    import foundation  # noqa: F401


@pytest.fixture(scope="module")
def pool() -> Iterator[Any]:
    with multiprocessing.get_context("spawn").Pool(PROCESSES, initializer=_warm) as workers:
        workers.map(time.sleep, [0.2] * PROCESSES, chunksize=1)
        yield workers


def share(args: tuple[str, float]) -> dict[str, Any]:
    """In a child: fail until the breaker opens, then call until one call succeeds."""
    url, start_at = args
    failing_calls = 0
    executions: list[tuple[float, float]] = []

    def down() -> None:
        nonlocal failing_calls
        failing_calls += 1
        raise Down

    def slow_ok() -> str:
        began = time.time()
        time.sleep(PROBE_S)
        executions.append((began, time.time()))
        return "ok"

    with Foundation(url, migrate="skip", poll_interval_ms=5) as fdn:
        breaker = fdn.circuit_breaker.get(
            "shared", max_failures=MAX_FAILURES, reset_timeout=RESET_MS, timeout=None
        )
        while time.time() < start_at:
            time.sleep(0.001)
        saw_open = False
        deadline = time.time() + 10
        while time.time() < deadline and not saw_open:
            try:
                breaker.execute(down)
            except Down:
                pass
            except CircuitOpenError:
                saw_open = True
        succeeded = False
        while time.time() < deadline and not succeeded:
            try:
                breaker.execute(slow_ok)
                succeeded = True
            except CircuitOpenError:
                time.sleep(0.005)
        while time.time() < deadline and breaker.state != "closed":
            time.sleep(0.005)
        return {
            "failing_calls": failing_calls,
            "saw_open": saw_open,
            "succeeded": succeeded,
            "executions": executions,
            "final": breaker.state,
        }


@pytest.mark.slow
def test_processes_share_a_breaker_with_one_probe(pool: Any, db_url: str) -> None:
    start = time.time() + 1.5
    results = pool.map(share, [(db_url, start)] * PROCESSES, chunksize=1)
    assert all(r["saw_open"] for r in results)  # it opened for every process
    total_failing = sum(r["failing_calls"] for r in results)
    # Each process may have one failing call in flight when the breaker opens.
    assert MAX_FAILURES <= total_failing <= MAX_FAILURES + PROCESSES - 1
    assert all(r["succeeded"] and r["final"] == "closed" for r in results)
    runs = sorted(e for r in results for e in r["executions"])
    _probe_start, probe_end = runs[0]
    # Exactly one probe: every other call began after the probe had finished.
    assert all(began >= probe_end for began, _ in runs[1:]), runs


def skewed(args: tuple[str, float, float, float]) -> dict[str, Any]:
    """In a child with its clock moved by ``skew_s``: when is the first call admitted?"""
    url, skew_s, opened_at, until = args
    real_time_ns = time.time_ns
    time.time_ns = lambda: real_time_ns() + int(skew_s * 1e9)  # type: ignore[assignment]
    rejected = 0
    admitted_at = None
    with Foundation(url, migrate="skip", poll_interval_ms=5) as fdn:
        breaker = fdn.circuit_breaker.get("skewed", max_failures=1, reset_timeout=RESET_MS)
        while real_time_ns() / 1e9 < until:
            try:
                breaker.execute(lambda: None)
                admitted_at = real_time_ns() / 1e9
                break
            except CircuitOpenError:
                rejected += 1
                time.sleep(0.01)
    return {"rejected": rejected, "admitted_at": admitted_at, "opened_at": opened_at}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql"])  # SQLite: one machine, one clock
def test_a_skewed_clock_does_not_move_the_probe_on_postgres(pool: Any, db_url: str) -> None:
    with Foundation(db_url, migrate="skip") as fdn:
        breaker = fdn.circuit_breaker.get("skewed", max_failures=1, reset_timeout=RESET_MS)
        opened_at = time.time()
        with pytest.raises(Down):
            breaker.execute(lambda: (_ for _ in ()).throw(Down()))
        assert breaker.state == "open"
        jobs = [(db_url, skew, opened_at, opened_at + 8) for skew in (3600.0, -3600.0)]
        ahead, behind = pool.map(skewed, jobs, chunksize=1)
    for result in (ahead, behind):
        # Rejected first (a clock an hour ahead did not probe at once) and admitted once
        # the database's reset_timeout was over (a clock an hour behind did not wait).
        assert result["rejected"] > 0
        assert result["admitted_at"] is not None
        assert result["admitted_at"] >= opened_at + RESET_MS / 1000 - 0.05
