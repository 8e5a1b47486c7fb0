"""The rate limiter's arithmetic, without I/O (fast, property-based)."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from foundation.errors import ValidationError
from foundation.rate_limiter._logic import (
    check_key,
    fixed_decision,
    fixed_window,
    gcra,
    gcra_decision,
    make_limit,
    sliding_decision,
    sliding_window,
)

limits = st.integers(1, 20)
intervals = st.integers(1, 5000)
steps = st.lists(st.integers(0, 700), min_size=1, max_size=200)
T0 = 1_700_000_000_000


def _times(gaps: list[int]) -> list[int]:
    now, out = T0, []
    for gap in gaps:
        now += gap
        out.append(now)
    return out


@settings(max_examples=200, deadline=None)
@given(limits, intervals, steps)
def test_fixed_window_admits_at_most_the_limit_per_window_and_refuses_only_when_full(
    cap: int, interval: int, gaps: list[int]
) -> None:
    limit = make_limit(cap, interval, "fixed_window")
    state = None
    admitted: Counter[int] = Counter()
    for now in _times(gaps):
        state, allowed = fixed_window(state, now, limit)
        window = now - now % interval
        if allowed:
            admitted[window] += 1
        else:
            assert admitted[window] == cap  # refused only when the window is full
        decision = fixed_decision(state, allowed, now, limit)
        assert decision.allowed is allowed
        assert decision.remaining == cap - admitted[window]
        assert (decision.retry_after > 0) is (not allowed)
        assert decision.retry_after <= interval
    assert all(n <= cap for n in admitted.values())


@settings(max_examples=200, deadline=None)
@given(limits, intervals, steps)
def test_sliding_window_never_exceeds_the_limit_in_an_aligned_window(
    cap: int, interval: int, gaps: list[int]
) -> None:
    limit = make_limit(cap, interval, "sliding_window")
    state = None
    admitted: Counter[int] = Counter()
    for now in _times(gaps):
        state, allowed = sliding_window(state, now, limit)
        if allowed:
            admitted[now - now % interval] += 1
        decision = sliding_decision(state, allowed, now, limit)
        assert decision.allowed is allowed and decision.limit == cap
        assert 0 <= decision.remaining <= cap
        assert (decision.retry_after > 0) is (not allowed)
    assert all(n <= cap for n in admitted.values())


@settings(max_examples=200, deadline=None)
@given(limits, intervals, steps)
def test_gcra_admits_at_most_a_bucket_plus_the_refill(
    cap: int, interval: int, gaps: list[int]
) -> None:
    limit = make_limit(cap, interval, "token_bucket")
    tat = None
    times = [t * 1000 for t in _times(gaps)]
    admitted = []
    for now in times:
        tat, allowed = gcra(tat, now, limit)
        if allowed:
            admitted.append(now)
        decision = gcra_decision(tat, allowed, now, limit)
        assert (decision.retry_after > 0) is (not allowed)
        assert 0 <= decision.remaining < cap or (allowed is False and decision.remaining == 0)
    # Over any span d (µs): at most cap + d / emission admitted.
    for i, start in enumerate(admitted):
        for j in range(i, len(admitted)):
            span = admitted[j] - start
            assert j - i + 1 <= cap + span // limit.emission_us


def test_a_fresh_bucket_allows_a_full_burst_then_the_rate() -> None:
    limit = make_limit(3, 1000, "token_bucket")
    tat, now = None, T0 * 1000
    results = []
    for _ in range(4):
        tat, allowed = gcra(tat, now, limit)
        results.append((allowed, gcra_decision(tat, allowed, now, limit).remaining))
    assert results == [(True, 2), (True, 1), (True, 0), (False, 0)]
    tat, allowed = gcra(tat, now + limit.emission_us, limit)
    assert allowed


def test_a_late_writer_never_reopens_a_full_window() -> None:
    limit = make_limit(2, 1000, "fixed_window")
    state = None
    for _ in range(2):
        state, _ok = fixed_window(state, T0 + 1000, limit)  # the next window, full
    state, allowed = fixed_window(state, T0 + 999, limit)  # an older clock reading
    assert not allowed and state == (T0 + 1000, 2)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((0, 1000, "fixed_window"), "max_requests must be from 1"),
        ((-5, 1000, "fixed_window"), "max_requests must be from 1"),
        ((True, 1000, "fixed_window"), "max_requests must be an integer"),
        (("10", 1000, "fixed_window"), "max_requests must be an integer"),
        ((10, -1, "fixed_window"), "interval must be from 1 ms"),
        ((10, 0, "fixed_window"), "interval must be from 1 ms"),
        ((10, timedelta(seconds=-1), "fixed_window"), "interval must be from 1 ms"),
        ((10, "soon", "fixed_window"), "interval must be a whole number"),
        ((10, 1000, "leaky"), "algorithm must be one of"),
    ],
)
def test_bad_options_are_clear_validation_errors(args: tuple, fragment: str) -> None:
    with pytest.raises(ValidationError) as info:
        make_limit(*args)
    assert fragment in info.value.message
    assert info.value.code == "validation_error"


def test_timedelta_intervals_are_milliseconds() -> None:
    assert make_limit(5, timedelta(seconds=2), "sliding_window").interval == 2000


@pytest.mark.parametrize("key", [None, 12, b"k", "", "x" * 256])
def test_bad_keys(key: object) -> None:
    with pytest.raises(ValidationError):
        check_key(key, 255)
