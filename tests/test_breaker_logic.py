"""Circuit breaker transitions, without I/O."""

from __future__ import annotations

from datetime import timedelta

import pytest

from foundation.circuit_breaker import _logic as logic
from foundation.circuit_breaker._logic import (
    CLOSED_ROW,
    BreakerRow,
    admission,
    check_name,
    make_options,
)
from foundation.errors import ValidationError

OPTS = make_options(timeout=100, max_failures=3, reset_timeout=1000)


def test_closed_to_open_after_max_consecutive_failures() -> None:
    row = CLOSED_ROW
    for expected in (1, 2):
        new = logic.on_failure(row, 10, OPTS)
        assert new is not None
        row = new
        assert row.state == "closed" and row.failures == expected
    new = logic.on_failure(row, 10, OPTS)
    assert new is not None and new.state == "open"
    assert new.open_until_ms == 1010 and new.opened_at_ms == 10
    assert logic.on_failure(new, 20, OPTS) is None  # failures while open change nothing


def test_a_success_clears_the_count_only_when_there_is_one() -> None:
    assert logic.on_success(CLOSED_ROW) is None
    row = BreakerRow(failures=2, revision=4)
    assert logic.on_success(row) == BreakerRow(failures=0, revision=5)


def test_admission_and_the_single_probe() -> None:
    opened = BreakerRow(state="open", failures=3, opened_at_ms=0, open_until_ms=1000, revision=3)
    assert admission(CLOSED_ROW, 0) == ("call", None)
    assert admission(opened, 400) == ("reject", 600)
    assert admission(opened, 1000) == ("claim", None)
    first = logic.claim_probe(opened, "a", 1000, OPTS)
    assert first is not None and first.state == "half_open" and first.probe_token == "a"
    assert logic.claim_probe(first, "b", 1001, OPTS) is None  # exactly one probe
    assert admission(first, 1001)[0] == "reject"
    # The probe's lease runs out (its process died): another caller may probe.
    assert first.probe_until_ms is not None
    late = logic.claim_probe(first, "b", first.probe_until_ms, OPTS)
    assert late is not None and late.probe_token == "b"
    assert logic.probe_done(late, "a", True, 5000, OPTS) is None  # a stale prober
    closed = logic.probe_done(late, "b", True, 5000, OPTS)
    assert closed is not None and closed.state == "closed" and closed.failures == 0
    reopened = logic.probe_done(late, "b", False, 5000, OPTS)
    assert reopened is not None and reopened.state == "open"
    assert reopened.open_until_ms == 6000


def test_forced_open_never_probes_until_reset() -> None:
    forced = logic.force_open(CLOSED_ROW, 0)
    assert admission(forced, 10**12) == ("reject", None)
    assert logic.claim_probe(forced, "x", 10**12, OPTS) is None
    assert logic.reset(forced).state == "closed"


def test_options() -> None:
    opts = make_options(timeout=timedelta(seconds=1), reset_timeout=timedelta(milliseconds=5))
    assert (opts.timeout_ms, opts.reset_timeout_ms) == (1000, 5)
    assert make_options(timeout=None).timeout_ms is None
    assert make_options(failure_exceptions=ValueError).failure_exceptions == (ValueError,)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"timeout": -1},
        {"reset_timeout": -10},
        {"reset_timeout": None},
        {"timeout": "fast"},
        {"max_failures": 0},
        {"max_failures": True},
        {"failure_exceptions": ()},
        {"failure_exceptions": (int,)},
        {"scope": "planet"},
    ],
)
def test_bad_options(kwargs: dict) -> None:
    with pytest.raises(ValidationError) as info:
        make_options(**kwargs)
    assert info.value.context["option"] in kwargs


@pytest.mark.parametrize("name", [None, 3, "", "n" * 256])
def test_bad_names(name: object) -> None:
    with pytest.raises(ValidationError):
        check_name(name)
