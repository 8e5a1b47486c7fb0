"""The rate limiter on SQLite and PostgreSQL, sync and async, shared and local."""

from __future__ import annotations

import time
from typing import Any

import pytest

from foundation import AsyncFoundation, Foundation, RateLimitedError, ValidationError
from foundation.rate_limiter import Decision
from foundation.rate_limiter._logic import fixed_window, gcra, make_limit, sliding_window
from foundation.rate_limiter._store import LimiterSQL

ALGORITHMS = ["fixed_window", "sliding_window", "token_bucket"]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("scope", ["shared", "local"])
def test_a_burst_is_admitted_up_to_the_limit(fdn: Foundation, algorithm: str, scope: str) -> None:
    decisions = [fdn.rate_limiter.try_acquire("api", 3, 60_000, algorithm, scope) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]
    assert [d.remaining for d in decisions] == [2, 1, 0, 0, 0]
    assert decisions[0].retry_after == 0 and decisions[3].retry_after > 0
    assert all(isinstance(d, Decision) and d.limit == 3 for d in decisions)
    with pytest.raises(AttributeError):
        decisions[0].allowed = False  # type: ignore[misc]  # frozen


def test_keys_and_algorithms_are_separate(fdn: Foundation) -> None:
    rl = fdn.rate_limiter
    assert rl.try_acquire("a", 1, 60_000)
    assert not rl.try_acquire("a", 1, 60_000)
    assert rl.try_acquire("b", 1, 60_000)
    assert rl.try_acquire("a", 1, 60_000, "token_bucket")
    assert rl.try_acquire("a", 1, 60_000, scope="local")  # local is its own world


def test_execute_calls_only_within_the_limit_and_says_why_not(fdn: Foundation) -> None:
    calls = []

    def work() -> str:
        calls.append(1)
        return "done"

    assert fdn.rate_limiter.execute(work, key="k", max_requests=2, interval=60_000) == "done"
    assert fdn.rate_limiter.execute(work, key="k", max_requests=2, interval=60_000) == "done"
    with pytest.raises(RateLimitedError) as info:
        fdn.rate_limiter.execute(work, key="k", max_requests=2, interval=60_000)
    assert len(calls) == 2
    err = info.value
    assert err.code == "rate_limited"
    assert {"retry_after", "limit", "remaining", "interval"} <= set(err.context)
    assert err.context["limit"] == 2 and err.context["remaining"] == 0
    assert err.context["interval"] == 60_000 and 0 < err.context["retry_after"] <= 60_000


def test_the_key_defaults_to_the_function_name_and_the_decorator_counts_calls(
    fdn: Foundation,
) -> None:
    def named() -> int:
        return 1

    fdn.rate_limiter.execute(named, max_requests=1)
    with pytest.raises(RateLimitedError) as info:
        fdn.rate_limiter.execute(named, max_requests=1)
    assert info.value.context["key"].endswith("named")

    @fdn.rate_limiter.limit("deco", max_requests=2, interval=60_000)
    def add(a: int, b: int) -> int:
        return a + b

    assert add(1, 2) == 3 and add(2, 2) == 4
    with pytest.raises(RateLimitedError):
        add(1, 1)


def test_a_window_reopens_after_its_interval(fdn: Foundation) -> None:
    rl = fdn.rate_limiter
    assert rl.try_acquire("w", 1, 200)
    refused = rl.try_acquire("w", 1, 200)
    for _ in range(5):  # calls that straddle a window boundary (a slow machine) start afresh
        if not refused.allowed:
            break
        refused = rl.try_acquire("w", 1, 200)
    assert not refused
    time.sleep(refused.retry_after / 1000 + 0.05)
    assert rl.try_acquire("w", 1, 200)


@pytest.mark.parametrize(
    "call",
    [
        lambda rl: rl.try_acquire("k", 0),
        lambda rl: rl.try_acquire("k", -1),
        lambda rl: rl.try_acquire("k", 10, -5),
        lambda rl: rl.try_acquire("k", 10, 1000, "nope"),
        lambda rl: rl.try_acquire("k", 10, 1000, scope="galaxy"),
        lambda rl: rl.try_acquire(42),
        lambda rl: rl.try_acquire("k" * 300),
        lambda rl: rl.execute("not callable"),
        lambda rl: rl.limit(max_requests=0),
    ],
)
def test_bad_input_is_a_validation_error(fdn: Foundation, call: Any) -> None:
    with pytest.raises(ValidationError):
        call(fdn.rate_limiter)


def test_telemetry_on_allow_and_deny(fdn: Foundation) -> None:
    seen = []
    fdn.telemetry.attach(
        "t",
        ["foundation.rate_limiter.allow", "foundation.rate_limiter.deny"],
        lambda name, m, meta, _c: seen.append((name[-1], meta["key"])),
    )
    fdn.rate_limiter.try_acquire("tk", 1)
    fdn.rate_limiter.try_acquire("tk", 1)
    assert seen == [("allow", "tk"), ("deny", "tk")]


def test_the_storage_error_policy_can_be_set(db_url: str) -> None:
    # What each policy does in an outage: tests/test_breaker_limiter_review.py
    with Foundation(db_url, migrate="check", rate_limiter_on_storage_error="closed") as fdn:
        assert fdn.rate_limiter.on_storage_error == "closed"


def test_expired_rows_are_cleaned_in_small_batches(fdn: Foundation) -> None:
    rl = fdn.rate_limiter
    for i in range(5):
        rl.try_acquire(f"old{i}", 5, 50)
        rl.try_acquire(f"old{i}", 5, 50, "token_bucket")
    # A sliding window's row lives two windows from its start: a fixed window of a minute
    # may end during the sleep (windows start on multiples of the interval).
    rl.try_acquire("live", 5, 60_000, "sliding_window")
    time.sleep(0.2)
    assert rl.cleanup() == 10
    assert [u.key for u in rl.usage()] == ["live"]


def test_sqlite_statements_match_the_pure_logic(tmp_path: Any) -> None:
    """On SQLite the caller's clock is a parameter: drive SQL and logic with the same times."""
    with Foundation(f"sqlite:///{tmp_path / 'x.db'}") as fdn:
        sql = LimiterSQL.build("sqlite", fdn.database.codec)
        steps = {"fixed_window": fixed_window, "sliding_window": sliding_window}
        now = 1_700_000_000_000
        for algorithm in ALGORITHMS:
            limit = make_limit(3, 1000, algorithm)
            state: Any = None
            for gap in [0, 1, 1, 400, 600, 10, 0, 990, 5, 2000, 0, 0, 0, 0]:
                now += gap
                row = fdn.database.fetchone(
                    sql.upsert[algorithm],
                    {
                        "key": "k",
                        "limit": 3,
                        "interval": 1000,
                        "emission": limit.emission_us,
                        "capacity": limit.capacity_us,
                        "now_ms": now,
                        "now_us": now * 1000,
                    },
                )
                assert row is not None
                if algorithm == "token_bucket":
                    state, allowed = gcra(state, now * 1000, limit)
                    assert (row[3], bool(row[4])) == (state, allowed)
                else:
                    state, allowed = steps[algorithm](state, now, limit)
                    got = (row[0], row[1]) if algorithm == "fixed_window" else row[:3]
                    assert (tuple(got), bool(row[4])) == (tuple(state), allowed)


async def test_async_twin(afdn: AsyncFoundation) -> None:
    rl = afdn.rate_limiter
    for algorithm in ALGORITHMS:
        got = [(await rl.try_acquire("a", 2, 60_000, algorithm)).allowed for _ in range(3)]
        assert got == [True, True, False]

    async def work() -> str:
        return "ok"

    assert await rl.execute(work, key="e", max_requests=1) == "ok"
    with pytest.raises(RateLimitedError) as info:
        await rl.execute(work, key="e", max_requests=1)
    assert info.value.context["retry_after"] > 0

    @rl.limit("d", max_requests=1, scope="local")
    async def decorated() -> int:
        return 7

    assert await decorated() == 7
    with pytest.raises(RateLimitedError):
        await decorated()
    with pytest.raises(ValidationError):
        await rl.acquire("x", max_requests=0)
    assert len(await rl.usage()) == 4
    assert await rl.cleanup() == 0


def test_cleanup_runs_by_itself_when_due(fdn: Foundation) -> None:
    rl = fdn.rate_limiter
    rl.try_acquire("gone", 5, 20)
    time.sleep(0.05)
    rl._next_cleanup = 0.0  # due now (normally every CLEANUP_EVERY_S seconds)
    rl.try_acquire("kept", 5, 60_000)
    assert [u.key for u in rl.usage()] == ["kept"]


def test_postgres_statements_commit_without_waiting_for_fsync_only_when_asked() -> None:
    from foundation.database.codec import codec_for

    fast = LimiterSQL.build("postgresql", codec_for("postgresql"))
    durable = LimiterSQL.build("postgresql", codec_for("postgresql"), fast_commit=False)
    assert all("synchronous_commit" in s for s in fast.upsert.values())
    assert not any("synchronous_commit" in s for s in durable.upsert.values())
    assert "statement_timestamp()" in fast.upsert["fixed_window"]  # the database's clock
    assert "SKIP LOCKED" in fast.cleanup and "LIMIT" in fast.cleanup


def test_durable_commits_can_be_asked_for(db_url: str, backend: str) -> None:
    with Foundation(db_url, migrate="check", rate_limiter_fast_commit=False) as fdn:
        assert fdn.rate_limiter.try_acquire("d", 1)
        sql = fdn.rate_limiter._sql
        assert sql is not None
        assert not any("synchronous_commit" in s for s in sql.upsert.values())
