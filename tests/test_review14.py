"""Review 14, on SQLite and PostgreSQL: a value Python cannot show (an int past its 4,300
digits, a list nested past the recursion limit, an object whose ``__repr__`` raises) given
where a name, key or number belongs is a FoundationError like any other wrong value, not
the exception its ``repr`` raises while the error is being written; nothing is written."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from foundation import AsyncFoundation, Foundation, FoundationError

BIG = 10**5000


def _deep(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


class _BadRepr:
    def __repr__(self) -> str:
        raise ValueError("repr failed")

    __str__ = __repr__


HOSTILE = {"big int": BIG, "deep list": _deep(3000), "bad repr": _BadRepr()}


def _noop(*args: Any) -> None:
    return None


def _calls(fdn: Foundation) -> dict[str, Callable[[Any], Any]]:
    e, c, r = fdn.events, fdn.config, fdn.service_registry
    return {
        "store type": lambda v: e.store({"type": v}),
        "store stream_id": lambda v: e.store({"type": "t", "stream_id": v}),
        "store id": lambda v: e.store({"type": "t", "id": v}),
        "store correlation_id": lambda v: e.store({"type": "t", "correlation_id": v}),
        "store expected_version": lambda v: e.store(
            {"type": "t", "stream_id": "s", "expected_version": v}
        ),
        "store_many": lambda v: e.store_many([{"type": "t"}, {"type": v}]),
        "get type": lambda v: e.get(type=["a", v]),
        "get limit": lambda v: e.get(limit=v),
        "get after_position": lambda v: e.get(after_position=v),
        "get after": lambda v: e.get(after=v),
        "get order": lambda v: e.get(order=v),
        "iter batch_size": lambda v: list(e.iter({}, batch_size=v)),
        "read_stream": lambda v: e.read_stream(v),
        "read_stream from_version": lambda v: e.read_stream("s", from_version=v),
        "correlation_chain": lambda v: e.correlation_chain(v),
        "subscribe name": lambda v: e.subscribe(v, _noop),
        "subscribe types": lambda v: e.subscribe("sub", _noop, types=v),
        "subscribe start": lambda v: e.subscribe("sub", _noop, start=v),
        "config.set key": lambda v: c.set(v, 1),
        "config.get key": lambda v: c.get(v),
        "register name": lambda v: r.register(v, "addr"),
        "register ttl": lambda v: r.register("n", "addr", None, v),
        "lookup": lambda v: r.lookup(v),
        "unregister force": lambda v: r.unregister("n", force=v),
        "update_metadata": lambda v: r.update_metadata(v, {}),
        "list prefix": lambda v: r.list(prefix=v),
        "members": lambda v: r.members(v),
        "join member_id": lambda v: r.join("g", "addr", member_id=v),
        "rate limiter key": lambda v: fdn.rate_limiter.execute(
            _noop, key=v, max_requests=1, interval=1000
        ),
        "rate limiter max_requests": lambda v: fdn.rate_limiter.execute(
            _noop, key="k", max_requests=v, interval=1000
        ),
        "rate limiter interval": lambda v: fdn.rate_limiter.execute(
            _noop, key="k", max_requests=1, interval=v
        ),
        "breaker name": lambda v: fdn.circuit_breaker.execute(_noop, name=v),
        "breaker reset_timeout": lambda v: fdn.circuit_breaker.execute(
            _noop, name="c", reset_timeout=v
        ),
        "telemetry event name": lambda v: fdn.telemetry.execute(v, {}),
    }


def _keyed(fdn: Foundation) -> dict[str, Callable[[Any], Any]]:
    """Calls taking the value as a mapping's key (it must be hashable)."""
    return {
        "event field": lambda v: fdn.events.store({"type": "t", v: 1}),
        "criterion": lambda v: fdn.events.get({v: 1}),
        "tail criterion": lambda v: next(iter(fdn.events.tail({v: 1}))),
    }


def _not_refused(name: str, call: Callable[[], Any]) -> list[str]:
    """[] when ``call`` raises a FoundationError, else what it did instead."""
    try:
        call()
    except FoundationError:
        return []
    except Exception as exc:
        return [f"{name}: {type(exc).__name__}"]
    return [f"{name}: accepted"]


def _rows(fdn: Foundation) -> tuple[Any, ...]:
    return (
        fdn.database.fetchone("SELECT count(*) FROM foundation_events"),
        fdn.database.fetchone("SELECT count(*) FROM foundation_config"),
        fdn.database.fetchone("SELECT count(*) FROM foundation_registry"),
        fdn.database.fetchone("SELECT count(*) FROM foundation_registry_members"),
    )


def test_a_value_python_cannot_show_is_a_foundation_error(fdn: Foundation) -> None:
    before = _rows(fdn)
    raw: list[str] = []
    for call_name, call in _calls(fdn).items():
        for value_name, value in HOSTILE.items():
            try:
                call(value)
            except FoundationError as exc:
                assert exc.message and repr(exc)  # both can be shown
            except Exception as exc:
                raw.append(f"{call_name} ({value_name}): {type(exc).__name__}")
            else:
                raw.append(f"{call_name} ({value_name}): accepted")
    for call_name, call in _keyed(fdn).items():
        for value_name, value in (("big int", BIG), ("bad repr", _BadRepr())):
            try:
                call(value)
            except FoundationError:
                pass
            except Exception as exc:
                raw.append(f"{call_name} ({value_name}): {type(exc).__name__}")
    assert raw == []
    assert _rows(fdn) == before


async def test_async_a_value_python_cannot_show_is_a_foundation_error(
    afdn: AsyncFoundation,
) -> None:
    e, r = afdn.events, afdn.service_registry
    calls: dict[str, Callable[[Any], Any]] = {
        "store type": lambda v: e.store({"type": v}),
        "store expected_version": lambda v: e.store(
            {"type": "t", "stream_id": "s", "expected_version": v}
        ),
        "get limit": lambda v: e.get(limit=v),
        "read_stream": lambda v: e.read_stream(v),
        "config.set key": lambda v: afdn.config.set(v, 1),
        "register ttl": lambda v: r.register("n", "addr", None, v),
        "lookup": lambda v: r.lookup(v),
    }
    raw: list[str] = []
    for call_name, call in calls.items():
        for value_name, value in HOSTILE.items():
            try:
                await call(value)
            except FoundationError:
                pass
            except Exception as exc:
                raw.append(f"{call_name} ({value_name}): {type(exc).__name__}")
            else:
                raw.append(f"{call_name} ({value_name}): accepted")
    assert raw == []
    assert await e.get(limit=10) == []


def test_an_error_with_an_unshowable_context_value_can_be_shown() -> None:
    exc = FoundationError("bad", context={"value": BIG})
    assert repr(exc).startswith("FoundationError('bad', context=")
    assert str(exc).endswith("bad")


def test_more_values_python_cannot_show(fdn: Foundation) -> None:
    """Found in review of the first fix: messages (not only contexts) of these calls."""

    class IntKey(int):
        def __repr__(self) -> str:
            raise ValueError("repr failed")

    async def coroutine_fn() -> None:
        return None

    class BadReprCallable:
        def __repr__(self) -> str:
            raise ValueError("repr failed")

        def __call__(self) -> Any:
            return coroutine_fn()

    calls: dict[str, Callable[[], Any]] = {
        "breaker scope": lambda: fdn.circuit_breaker.execute(_noop, name="c", scope=BIG),
        "limiter scope": lambda: fdn.rate_limiter.execute(
            _noop, key="k", max_requests=1, interval=1000, scope=_BadRepr()
        ),
        "limiter algorithm": lambda: fdn.rate_limiter.execute(
            _noop, key="k", max_requests=1, interval=1000, algorithm=BIG
        ),
        "config.register type": lambda: fdn.config.register("k", BIG),
        "config.register deep default": lambda: fdn.config.register(
            "limits", list, default=_deep(100_000)
        ),
        "tail start": lambda: next(iter(fdn.events.tail(start=BIG))),
        "JSON key": lambda: fdn.events.store({"type": "t", "data": {IntKey(1): 1}}),
        "limiter async callable": lambda: fdn.rate_limiter.execute(
            BadReprCallable(), key="k", max_requests=5, interval=1000
        ),
        "breaker async callable": lambda: fdn.circuit_breaker.execute(BadReprCallable(), name="c2"),
    }
    assert [fault for name, call in calls.items() for fault in _not_refused(name, call)] == []
    # The failed register left nothing behind: the key takes any value, and a type.
    fdn.config.set("limits", 5)
    fdn.config.register("limits", int, default=1)
    assert fdn.config.get("limits") == 5


def test_a_reporter_skips_a_measurement_it_cannot_show() -> None:
    from foundation.telemetry import Telemetry, metrics
    from foundation.telemetry.reporters import LoggingReporter

    for value in (BIG, _BadRepr(), _deep(100_000)):
        tel = Telemetry()
        reporter = LoggingReporter(
            tel, [metrics.last_value("app.load.value", event_name="app.load")]
        )
        tel.execute("app.load", {"value": value}, {})
        tel.execute("app.load", {"value": 1}, {})
        assert reporter.attached
        assert reporter.stats()["app.load.value"].invalid == 1


def test_a_bucket_past_a_floats_range_is_a_validation_error() -> None:
    from foundation.errors import ValidationError
    from foundation.telemetry import metrics

    with pytest.raises(ValidationError):
        metrics.distribution("app.size.bytes", buckets=[1, 10**400])
