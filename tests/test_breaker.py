"""Circuit breakers on SQLite and PostgreSQL, sync and async, shared and local."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from foundation import (
    AsyncFoundation,
    CircuitOpenError,
    Foundation,
    TimeoutError,
    ValidationError,
)
from tests.helpers import wait_for

SCOPES = ["shared", "local"]


class Boom(Exception):
    pass


def boom() -> None:
    raise Boom("down")


def fail_n(breaker: Any, n: int) -> None:
    for _ in range(n):
        with pytest.raises(Boom):
            breaker.execute(boom)


@pytest.mark.parametrize("scope", SCOPES)
def test_closed_open_half_open_closed(fdn: Foundation, scope: str) -> None:
    b = fdn.circuit_breaker.get("pay", max_failures=3, reset_timeout=200, scope=scope)
    assert b.state == "closed"
    fail_n(b, 3)
    assert b.state == "open"
    calls = []
    with pytest.raises(CircuitOpenError) as info:
        b.execute(lambda: calls.append(1))
    assert calls == []  # not called while open
    assert info.value.code == "circuit_open"
    assert 0 < info.value.context["retry_after"] <= 200
    assert info.value.context["name"] == "pay"
    time.sleep(0.25)
    assert b.execute(lambda: "probe ok") == "probe ok"
    assert b.state == "closed" and b.failures == 0


@pytest.mark.parametrize("scope", SCOPES)
def test_a_failed_probe_opens_again(fdn: Foundation, scope: str) -> None:
    b = fdn.circuit_breaker.get("p2", max_failures=1, reset_timeout=150, scope=scope)
    fail_n(b, 1)
    time.sleep(0.2)
    fail_n(b, 1)  # the probe
    assert b.state == "open"
    with pytest.raises(CircuitOpenError):
        b.execute(lambda: 1)


@pytest.mark.parametrize("scope", SCOPES)
def test_one_probe_while_half_open(fdn: Foundation, scope: str) -> None:
    b = fdn.circuit_breaker.get("p3", max_failures=1, reset_timeout=100, scope=scope)
    fail_n(b, 1)
    time.sleep(0.15)
    inner: list[Any] = []

    def probe() -> str:
        assert b.state == "half_open"
        with pytest.raises(CircuitOpenError) as info:  # a second caller meanwhile
            b.execute(lambda: "second")
        inner.append(info.value.context["state"])
        return "first"

    assert b.execute(probe) == "first"
    assert inner == ["half_open"] and b.state == "closed"


def test_successes_reset_consecutive_failures(fdn: Foundation) -> None:
    b = fdn.circuit_breaker.get("consecutive", max_failures=2)
    fail_n(b, 1)
    assert b.failures == 1
    b.execute(lambda: None)
    assert b.failures == 0
    fail_n(b, 1)
    assert b.state == "closed"


def test_only_configured_exceptions_count(fdn: Foundation) -> None:
    b = fdn.circuit_breaker.get("only", max_failures=1, failure_exceptions=(Boom,))

    def other() -> None:
        raise KeyError("not a failure")

    with pytest.raises(KeyError):
        b.execute(other)
    assert b.state == "closed"
    fail_n(b, 1)
    assert b.state == "open"


@pytest.mark.parametrize("scope", SCOPES)
def test_base_exceptions_propagate_untouched_and_do_not_count(fdn: Foundation, scope: str) -> None:
    b = fdn.circuit_breaker.get("base", max_failures=1, scope=scope)

    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        b.execute(interrupted)
    assert b.state == "closed"


@pytest.mark.parametrize("scope", SCOPES)
def test_a_slow_sync_call_runs_to_completion_then_raises_timeout_and_counts(
    fdn: Foundation, scope: str
) -> None:
    b = fdn.circuit_breaker.get("slow", timeout=20, max_failures=2, scope=scope)
    done = []

    def slow() -> str:
        time.sleep(0.05)
        done.append(1)
        return "late"

    with pytest.raises(TimeoutError) as info:
        b.execute(slow)
    assert done == [1]  # it ran in the caller's thread, to the end
    assert info.value.code == "timeout" and info.value.context["timeout"] == 20
    assert b.failures == 1
    with pytest.raises(TimeoutError):
        b.execute(slow)
    assert b.state == "open"


def test_reset_and_force_open(fdn: Foundation) -> None:
    b = fdn.circuit_breaker.get("manual", reset_timeout=1)
    b.force_open()
    time.sleep(0.01)
    with pytest.raises(CircuitOpenError) as info:
        b.execute(lambda: 1)
    assert info.value.context["retry_after"] is None  # forced: no probe planned
    b.reset()
    assert b.execute(lambda: 2) == 2
    fdn.circuit_breaker.force_open("manual")
    assert fdn.circuit_breaker.state("manual") == "open"
    fdn.circuit_breaker.reset("manual")
    assert fdn.circuit_breaker.state("manual") == "closed"


def test_execute_names_and_decorators(fdn: Foundation) -> None:
    def flaky() -> None:
        raise Boom

    for _ in range(2):
        with pytest.raises(Boom):
            fdn.circuit_breaker.execute(flaky, max_failures=2)
    name = f"{__name__}.test_execute_names_and_decorators.<locals>.flaky"
    assert fdn.circuit_breaker.state(name) == "open"

    @fdn.circuit_breaker.protect("deco", max_failures=1)
    def add(a: int, b: int) -> int:
        if a < 0:
            raise Boom
        return a + b

    assert add(1, 2) == 3
    with pytest.raises(Boom):
        add(-1, 0)
    with pytest.raises(CircuitOpenError):
        add(1, 2)
    breaker = fdn.circuit_breaker.get("deco2")
    assert breaker(lambda x: x * 2)(4) == 8
    infos = {i.name: i for i in fdn.circuit_breaker.breakers()}
    assert infos["deco"].state == "open" and infos["deco"].retry_after is not None


@pytest.mark.parametrize(
    "call",
    [
        lambda cb: cb.execute("nope"),
        lambda cb: cb.execute(lambda: 1, name=5),
        lambda cb: cb.execute(lambda: 1, timeout=-1),
        lambda cb: cb.execute(lambda: 1, max_failures=0),
        lambda cb: cb.execute(lambda: 1, reset_timeout=-1),
        lambda cb: cb.get("x", scope="bad"),
        lambda cb: cb.protect(max_failures="many"),
    ],
)
def test_bad_input(fdn: Foundation, call: Any) -> None:
    with pytest.raises(ValidationError):
        call(fdn.circuit_breaker)


def test_the_closed_path_makes_no_database_round_trip(fdn: Foundation, monkeypatch: Any) -> None:
    b = fdn.circuit_breaker.get("hot", max_failures=1, reset_timeout=60_000)
    fail_n(b, 1)  # open, and cached
    other = fdn.circuit_breaker.get("cold")

    def no_db(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the database was asked")

    monkeypatch.setattr(fdn.database, "fetchone", no_db)
    monkeypatch.setattr(fdn.database, "execute", no_db)
    assert other.execute(lambda: 5) == 5  # closed
    with pytest.raises(CircuitOpenError):  # open, probe not due
        b.execute(lambda: 5)


def test_another_node_follows_through_the_change_feed(db_url: str) -> None:
    with (
        Foundation(db_url, migrate="check", poll_interval_ms=5) as a,
        Foundation(db_url, migrate="check", poll_interval_ms=5) as b,
    ):
        assert b.feed.wait_connected(10)
        ba = a.circuit_breaker.get("shared", max_failures=2, reset_timeout=300)
        fail_n(ba, 2)
        wait_for(lambda: b.circuit_breaker.state("shared") == "open")
        with pytest.raises(CircuitOpenError):
            b.circuit_breaker.get("shared", max_failures=2, reset_timeout=300).execute(lambda: 1)
        a.circuit_breaker.reset("shared")
        wait_for(lambda: b.circuit_breaker.state("shared") == "closed")


def test_transitions_and_rejections_are_emitted(fdn: Foundation) -> None:
    seen: list[tuple[str, ...]] = []
    fdn.telemetry.attach(
        "cb",
        ["foundation.circuit_breaker.state_change", "foundation.circuit_breaker.rejected"],
        lambda name, m, meta, _c: seen.append((name[-1], meta.get("to", meta.get("state")))),
    )
    b = fdn.circuit_breaker.get("tele", max_failures=1, reset_timeout=60_000, scope="local")
    fail_n(b, 1)
    with pytest.raises(CircuitOpenError):
        b.execute(lambda: 1)
    assert seen == [("state_change", "open"), ("rejected", "open")]


# -- async --------------------------------------------------------------------------------


@pytest.mark.parametrize("scope", SCOPES)
async def test_async_states_and_cancellation(afdn: AsyncFoundation, scope: str) -> None:
    cb = afdn.circuit_breaker
    b = cb.get("a", timeout=30, max_failures=2, reset_timeout=150, scope=scope)
    cancelled = []

    async def hang() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(1)
            raise

    with pytest.raises(TimeoutError):
        await b.execute(hang)
    assert cancelled == [1]

    async def bad() -> None:
        raise Boom

    with pytest.raises(Boom):
        await b.execute(bad)
    assert b.state == "open"
    with pytest.raises(CircuitOpenError):
        await b.execute(bad)
    await asyncio.sleep(0.2)

    async def good() -> str:
        return "ok"

    assert await b.execute(good) == "ok"
    assert b.state == "closed"
    assert await cb.execute(lambda: "plain", name="plain", scope=scope) == "plain"

    @cb.protect("adeco", max_failures=1, scope=scope)
    async def deco(x: int) -> int:
        return x + 1

    assert await deco(1) == 2
    await cb.force_open("adeco", scope=scope)
    with pytest.raises(CircuitOpenError):
        await deco(1)
    await cb.reset("adeco", scope=scope)
    assert cb.state("adeco", scope=scope) == "closed"
    with pytest.raises(ValidationError):
        await cb.execute(42)


async def test_async_base_exceptions_propagate(afdn: AsyncFoundation) -> None:
    b = afdn.circuit_breaker.get("abase", max_failures=1)

    async def stop() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        await b.execute(stop)
    assert b.state == "closed"


async def test_async_nodes_follow_each_other(db_url: str) -> None:
    async with (
        AsyncFoundation(db_url, migrate="check", poll_interval_ms=5) as a,
        AsyncFoundation(db_url, migrate="check", poll_interval_ms=5) as b,
    ):
        assert b.feed.wait_connected(10)

        async def bad() -> None:
            raise Boom

        with pytest.raises(Boom):
            await a.circuit_breaker.execute(bad, name="af", max_failures=1)
        for _ in range(400):
            if b.circuit_breaker.state("af") == "open":
                break
            await asyncio.sleep(0.01)
        assert b.circuit_breaker.state("af") == "open"
        assert [i.name for i in b.circuit_breaker.breakers()] == ["af"]


def test_a_coroutine_through_the_sync_face_is_refused_clearly(fdn: Foundation) -> None:
    async def later() -> int:
        return 1

    with pytest.raises(ValidationError) as info:
        fdn.circuit_breaker.execute(later, name="sync-face")
    assert "AsyncFoundation" in info.value.message


def test_module_level_functions_act_on_the_default_instance(fdn: Foundation) -> None:
    import foundation
    from foundation import _default

    _default.set_instance(fdn)
    try:
        assert foundation.circuit_breaker.execute(lambda: 3, name="mod", max_failures=1) == 3
        with pytest.raises(Boom):
            foundation.circuit_breaker.get("mod", max_failures=1).execute(boom)
        assert foundation.circuit_breaker.state("mod") == "open"
        assert [i.name for i in foundation.circuit_breaker.breakers()] == ["mod"]
        foundation.circuit_breaker.reset("mod")
        foundation.circuit_breaker.force_open("mod2")

        @foundation.circuit_breaker.protect("mod3")
        def one() -> int:
            return 1

        assert one() == 1
        assert foundation.rate_limiter.execute(lambda: 4, key="mod", max_requests=1) == 4
        assert not foundation.rate_limiter.try_acquire("mod", max_requests=1)
        with pytest.raises(foundation.RateLimitedError):
            foundation.rate_limiter.acquire("mod", max_requests=1)

        @foundation.rate_limiter.limit("mod-deco", max_requests=1)
        def two() -> int:
            return 2

        assert two() == 2
    finally:
        _default.set_instance(None)


def test_a_resync_snapshot_older_than_a_local_write_is_not_taken(fdn: Foundation) -> None:
    """A full re-read (the SQLite feed's, or a reconnect's) whose snapshot was taken before
    this node's own write committed must not put the older state back (it made a breaker
    this node had just closed half open again, refusing calls until the next poll)."""
    cb = fdn.circuit_breaker
    sql = cb._sql
    assert sql is not None

    def boom() -> None:
        raise ValueError("down")

    with pytest.raises(ValueError):
        cb.execute(boom, name="racy", max_failures=1, reset_timeout=60_000)
    assert cb.state("racy") == "open"
    began = cb._writes
    snapshot = fdn.database.fetchall(sql.select_all, cb._params(""))  # open
    cb.reset("racy")  # this node's write, after the snapshot was read
    cb.execute(lambda: None, name="racy", max_failures=1)
    cb._load(snapshot, began)
    assert cb.state("racy") == "closed"
    cb._load(snapshot)  # without the mark (start-up load), the snapshot is taken as is
    assert cb.state("racy") == "open"
