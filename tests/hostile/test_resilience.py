"""Hostile input to circuit breakers, rate limiters and telemetry, sync and async, both databases.

See ``tests/hostile/support.py`` for the property. Option values are the interesting part here:
negative, zero, huge, NaN, infinities, bools where ints are expected, extreme timedeltas.
"""

from __future__ import annotations

import math
import uuid
from datetime import timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

import foundation
from foundation import Foundation, FoundationError
from foundation.circuit_breaker._logic import MAX_FAILURES
from foundation.rate_limiter import Decision
from foundation.telemetry import Telemetry
from tests.hostile.support import (
    HOSTILE,
    Face,
    Tables,
    expect,
    fine_text,
    has_bad_text,
    hostile_any,
    option_values,
)

BREAKER = {"validation_error", "circuit_open", "timeout"}
LIMITER = {"validation_error", "rate_limited"}
TELEMETRY = {"validation_error"}
MAX_MS = 366 * 86_400_000  # a year, the limit of every millisecond option


def _ms_ok(value: Any, *, zero: bool = True, allow_none: bool = False) -> bool:
    if value is None:
        return allow_none
    if isinstance(value, timedelta):
        # A breaker rounds a timedelta up to whole milliseconds (1 µs is 1 ms).
        ms = math.ceil(value / timedelta(milliseconds=1))
        return (0 if zero else 1) <= ms <= MAX_MS
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return type(value) is int and (0 if zero else 1) <= value <= MAX_MS


breaker_names = st.one_of(hostile_any, fine_text, fine_text)
scopes = st.one_of(st.sampled_from(["shared", "shared", "local"]), hostile_any)


def test_breaker(face: Face, tables: Tables) -> None:
    @HOSTILE
    @given(st.data())
    def check(data: st.DataObject) -> None:
        cb = data.draw(st.sampled_from(face.services("circuit_breaker")))
        name = data.draw(breaker_names)
        if isinstance(name, str) and data.draw(st.booleans()):
            name = f"{name[:200]}-{uuid.uuid4().hex[:8]}"
        options = data.draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "timeout": st.one_of(st.just(60_000), option_values),
                    "max_failures": st.one_of(st.integers(1, 5), option_values),
                    "reset_timeout": st.one_of(st.just(1000), option_values),
                    "failure_exceptions": st.sampled_from(
                        [ValueError, (ValueError, KeyError), [], "x", (int,), None, ()]
                    ),
                    "scope": scopes,
                },
            )
        )
        fn = data.draw(st.sampled_from([lambda: "ok", None, "not callable"]))
        result = expect(
            tables,
            lambda: face.run(cb.execute(fn, name, **options)),
            BREAKER,
            recorded={"timeout", "circuit_open"},
        )
        valid = (
            callable(fn)
            and (
                name is None
                or (isinstance(name, str) and 0 < len(name) <= 255 and not has_bad_text(name))
            )
            and _ms_ok(options.get("timeout", 5000), zero=False, allow_none=True)
            and _ms_ok(options.get("reset_timeout", 1000))
            and type(options.get("max_failures", 5)) is int
            and 1 <= options.get("max_failures", 5) <= MAX_FAILURES
            and options.get("scope", "shared") in ("shared", "local")
            and options.get("failure_exceptions", Exception) not in ([], "x", (int,), None, ())
        )
        if isinstance(result, FoundationError):
            assert not valid or result.code in ("timeout", "circuit_open"), result
        else:
            assert valid and result == "ok"
        breaker = expect(tables, lambda: cb.get(name, **options), BREAKER)
        if not isinstance(breaker, FoundationError):
            assert breaker.state in ("closed", "open", "half_open")
            seven = expect(
                tables, lambda: face.run(breaker.execute(lambda: 7)), BREAKER, recorded=BREAKER
            )
            assert seven == 7 or seven.code in ("circuit_open", "timeout")
        scope = data.draw(scopes)
        for op in (cb.state, cb.force_open, cb.reset):  # reset last: no example leaves it open
            out = expect(tables, lambda op=op: face.run(op(name, scope)), BREAKER)
            assert not isinstance(out, FoundationError) or out.code == "validation_error"
        assert isinstance(cb.breakers(), list)
        decorate = expect(tables, lambda: cb.protect(name, **options), BREAKER)
        if callable(decorate):
            wrapped = expect(tables, lambda: decorate(fn), BREAKER)
            assert callable(wrapped) or isinstance(wrapped, FoundationError)
            assert callable(wrapped) <= callable(fn)

    check()


def test_limiter(face: Face, tables: Tables) -> None:
    @HOSTILE
    @given(st.data())
    def check(data: st.DataObject) -> None:
        rl = data.draw(st.sampled_from(face.services("rate_limiter")))
        key = data.draw(st.one_of(hostile_any, fine_text, fine_text))
        if isinstance(key, str) and key and data.draw(st.booleans()):
            key = f"{key[:200]}-{uuid.uuid4().hex[:8]}"
        max_requests = data.draw(st.one_of(st.integers(1, 3), option_values))
        interval = data.draw(st.one_of(st.just(60_000), option_values))
        algorithm = data.draw(
            st.one_of(
                st.sampled_from(["fixed_window", "sliding_window", "token_bucket"]), hostile_any
            )
        )
        scope = data.draw(scopes)
        args = (key, max_requests, interval, algorithm, scope)
        valid = (
            isinstance(key, str)
            and 0 < len(key) <= 255
            and not has_bad_text(key)
            and type(max_requests) is int
            and 1 <= max_requests <= 10_000_000
            and _ms_ok(interval, zero=False)
            and algorithm in ("fixed_window", "sliding_window", "token_bucket")
            and scope in ("shared", "local")
        )
        decision = expect(tables, lambda: face.run(rl.try_acquire(*args)), LIMITER)
        if isinstance(decision, FoundationError):
            assert not valid and decision.code == "validation_error", decision
        else:
            assert valid and isinstance(decision, Decision) and not decision.degraded
        acquired = expect(tables, lambda: face.run(rl.acquire(*args)), LIMITER, recorded=LIMITER)
        assert isinstance(acquired, Decision) == valid or acquired.code == "rate_limited"
        ran = expect(
            tables, lambda: face.run(rl.execute(lambda: "ran", *args)), LIMITER, recorded=LIMITER
        )
        assert ran == "ran" or isinstance(ran, FoundationError)
        decorate = expect(tables, lambda: rl.limit(*args), LIMITER)
        assert callable(decorate) or isinstance(decorate, FoundationError)
        rows = data.draw(st.one_of(st.integers(-2, 3), option_values))
        usage = expect(tables, lambda: face.run(face.fdn.rate_limiter.usage(rows)), LIMITER)
        assert isinstance(usage, list) == (type(rows) is int and 1 <= rows <= 100_000)

    check()


def test_telemetry(face: Face, tables: Tables) -> None:
    # the instance's, a fresh one, and the module-level functions (the process default)
    telemetries = [face.fdn.telemetry, Telemetry(), foundation.telemetry]
    seen: list[Any] = []

    @HOSTILE
    @given(st.data())
    def check(data: st.DataObject) -> None:
        tel = data.draw(st.sampled_from(telemetries))
        name = data.draw(
            st.one_of(
                hostile_any,
                fine_text,
                st.lists(fine_text, max_size=3).map(tuple),
                st.sampled_from(["a.b", "a..b", ".", ("a.b",), ()]),
            )
        )
        handler_id = data.draw(
            st.one_of(hostile_any, fine_text.map(lambda t: t + uuid.uuid4().hex))
        )
        handler = data.draw(st.sampled_from([lambda *a: seen.append(a), None, 3]))
        measurements = data.draw(
            st.one_of(st.none(), st.dictionaries(fine_text, st.integers()), hostile_any)
        )
        metadata = data.draw(
            st.one_of(st.none(), st.dictionaries(fine_text, hostile_any), hostile_any)
        )
        # Every draw before the first call: hypothesis may abandon an example at any draw,
        # and one abandoned after attach would leave its handler behind for the next.
        attached = expect(tables, lambda: tel.attach(handler_id, name, handler, None), TELEMETRY)
        before = len(seen)
        emitted = expect(tables, lambda: tel.execute(name, measurements, metadata), TELEMETRY)
        if attached is None and emitted is None:
            assert len(seen) == before + 1
        listed = expect(tables, lambda: tel.list_handlers(name), TELEMETRY)
        assert isinstance(listed, list | FoundationError)
        span = expect(tables, lambda: tel.span(name, metadata), TELEMETRY)
        if not isinstance(span, FoundationError):
            with span:
                pass
        detached = expect(tables, lambda: tel.detach(handler_id), TELEMETRY)
        assert detached is (attached is None) or isinstance(detached, FoundationError)

    check()


# -- inputs these properties once caught failing (fixed; kept as regression tests) -------------


def test_breaker_name_with_nul_or_surrogate(fdn: Foundation, tables: Tables) -> None:
    for name in ("a\x00b", "\ud800"):
        for op in (fdn.circuit_breaker.reset, fdn.circuit_breaker.force_open):
            out = expect(tables, lambda op=op, n=name: op(n), BREAKER)
            assert out is None or out.code == "validation_error"
