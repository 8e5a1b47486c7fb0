"""Circuit breakers and rate limiters: a closed instance, bad options, async functions
through the sync face, and ``foundation limits`` as of now (SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from foundation import (
    AsyncFoundation,
    CircuitOpenError,
    Foundation,
    RateLimitedError,
    StorageUnavailableError,
    ValidationError,
)
from foundation.circuit_breaker._logic import OPTION_NAMES
from foundation.cli import main
from foundation.database.url import DatabaseURL
from foundation.rate_limiter._logic import make_limit, usage_now
from foundation.rate_limiter._service import _usages
from foundation.rate_limiter._store import LimiterSQL
from tests.helpers import wait_for

# A node that gives up at once when its database is gone (no 5 s waits in the tests).
IMPATIENT = {"sqlite_busy_timeout_ms": 0, "connect_timeout_s": 1}


class Boom(Exception):
    pass


def boom() -> None:
    raise Boom("down")


@contextlib.contextmanager
def outage(db_url: str) -> Iterator[None]:
    """A real outage: SQLite locked by another writer, PostgreSQL refusing connections."""
    url = DatabaseURL.parse(db_url)
    if url.backend == "sqlite":
        holder = sqlite3.connect(url.sqlite_path, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        return
    name = url.url.database
    server = DatabaseURL.parse(url.url.set(database="postgres"))
    with psycopg.connect(server.conninfo, autocommit=True) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        try:
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


# -- 1. a closed instance ------------------------------------------------------------------


def test_a_closed_instance_refuses_shared_limits_and_keeps_local_ones(db_url: str) -> None:
    fdn = Foundation(db_url, migrate="check")
    fdn.close()
    rl = fdn.rate_limiter
    calls: list[int] = []
    for _ in range(3):
        with pytest.raises(StorageUnavailableError) as info:
            rl.execute(lambda: calls.append(1), key="api", max_requests=2, interval=60_000)
        assert "closed" in info.value.message
    assert calls == []
    for attempt in (rl.try_acquire, rl.acquire):
        with pytest.raises(StorageUnavailableError):
            attempt("api", 2, 60_000)
    rl.on_storage_error = "open"  # the policy is for outages, not for use after close()
    with pytest.raises(StorageUnavailableError):
        rl.try_acquire("api", 2, 60_000, "token_bucket")

    @rl.limit("deco", max_requests=2)
    def decorated() -> int:
        return 1

    with pytest.raises(StorageUnavailableError):
        decorated()
    with pytest.raises(StorageUnavailableError):
        rl.cleanup()
    with pytest.raises(StorageUnavailableError):
        rl.usage()
    # scope="local" needs no database: it keeps deciding, limit included.
    assert rl.execute(lambda: "ok", key="api", max_requests=1, scope="local") == "ok"
    with pytest.raises(RateLimitedError):
        rl.execute(lambda: "ok", key="api", max_requests=1, scope="local")


async def test_a_closed_async_instance_refuses_shared_limits(db_url: str) -> None:
    afdn = await AsyncFoundation(db_url, migrate="check")
    await afdn.close()
    rl = afdn.rate_limiter
    calls: list[int] = []
    for _ in range(3):
        with pytest.raises(StorageUnavailableError):
            await rl.execute(lambda: calls.append(1), key="api", max_requests=2)
    assert calls == []
    with pytest.raises(StorageUnavailableError):
        await rl.try_acquire("api", 2)

    @rl.limit("deco", max_requests=2)
    async def decorated() -> int:
        return 1

    with pytest.raises(StorageUnavailableError):
        await decorated()
    with pytest.raises(StorageUnavailableError):
        await rl.cleanup()
    assert (await rl.try_acquire("api", 1, scope="local")).allowed
    assert not (await rl.try_acquire("api", 1, scope="local")).allowed


def test_a_closed_instance_refuses_shared_breakers_and_keeps_local_ones(db_url: str) -> None:
    fdn = Foundation(db_url, migrate="check")
    cb = fdn.circuit_breaker
    handle = cb.get("payments", max_failures=1)
    fdn.close()
    calls: list[int] = []
    with pytest.raises(StorageUnavailableError) as info:
        cb.execute(lambda: calls.append(1), name="payments")
    assert info.value.context == {"name": "payments", "scope": "shared"}
    with pytest.raises(StorageUnavailableError):
        handle.call(calls.append, 1)

    @cb.protect("protected")
    def protected() -> None:
        calls.append(1)

    with pytest.raises(StorageUnavailableError):
        protected()
    with pytest.raises(StorageUnavailableError):
        cb.reset("payments")
    assert calls == []
    assert cb.state("payments") == "closed"  # reads answer from the cache
    # A local breaker needs no database: it runs, counts and opens as usual.
    assert cb.execute(lambda: "ok", name="mem", scope="local") == "ok"
    with pytest.raises(Boom):
        cb.execute(boom, name="mem", max_failures=1, scope="local")
    with pytest.raises(CircuitOpenError):
        cb.execute(lambda: "ok", name="mem", max_failures=1, scope="local")
    cb.reset("mem", scope="local")
    assert cb.state("mem", scope="local") == "closed"


async def test_a_closed_async_instance_refuses_shared_breakers(db_url: str) -> None:
    afdn = await AsyncFoundation(db_url, migrate="check")
    await afdn.close()
    cb = afdn.circuit_breaker
    calls: list[int] = []

    async def work() -> None:
        calls.append(1)

    with pytest.raises(StorageUnavailableError):
        await cb.execute(work, name="payments")

    @cb.protect("protected")
    async def protected() -> None:
        calls.append(1)

    with pytest.raises(StorageUnavailableError):
        await protected()
    assert calls == []
    await cb.execute(work, name="mem", scope="local")
    assert calls == [1]


def test_an_outage_still_fails_open_by_default_and_closed_when_asked(db_url: str) -> None:
    with Foundation(db_url, migrate="check", **IMPATIENT) as fdn, outage(db_url):
        decision = fdn.rate_limiter.try_acquire("k", 1)
        assert decision.allowed and decision.degraded
        fdn.rate_limiter.on_storage_error = "closed"
        with pytest.raises(StorageUnavailableError):
            fdn.rate_limiter.execute(lambda: 1, key="k", max_requests=1)


async def test_an_async_outage_fails_open(db_url: str) -> None:
    async with AsyncFoundation(db_url, migrate="check", **IMPATIENT) as afdn:
        with outage(db_url):
            decision = await afdn.rate_limiter.try_acquire("k", 1)
        assert decision.allowed and decision.degraded


def test_an_outage_never_hides_the_function_outcome(db_url: str) -> None:
    with Foundation(db_url, migrate="check", **IMPATIENT) as fdn:
        errors: list[str] = []
        fdn.telemetry.attach(
            "storage",
            "foundation.circuit_breaker.storage_error",
            lambda _n, _m, meta, _c: errors.append(meta["error"]),
        )
        opened = fdn.circuit_breaker.get("outage-open", max_failures=1, reset_timeout=0)
        with pytest.raises(Boom):
            opened.execute(boom)
        b = fdn.circuit_breaker.get("outage", max_failures=1)
        with outage(db_url):
            assert b.execute(lambda: "still works") == "still works"  # closed: no database
            with pytest.raises(Boom):  # the function's own exception wins over the write
                b.execute(boom)
            assert errors == ["storage_unavailable"]
            with pytest.raises(CircuitOpenError):  # a probe that cannot be claimed: refused
                opened.execute(lambda: 1)


# -- 2. unknown options ------------------------------------------------------------------


def test_unknown_breaker_options_are_named(fdn: Foundation) -> None:
    cb = fdn.circuit_breaker
    for call in (lambda: cb.get("x", bogus=1), lambda: cb.protect("x", bogus=1, other=2)):
        with pytest.raises(ValidationError) as info:
            call()
        assert "'bogus'" in info.value.message and "max_failures" in info.value.message
        assert info.value.context["known"] == list(OPTION_NAMES)
    assert info.value.context["unknown"] == ["bogus", "other"]
    assert cb.breakers() == []


async def test_unknown_async_breaker_options_are_named(afdn: AsyncFoundation) -> None:
    with pytest.raises(ValidationError) as info:
        afdn.circuit_breaker.get("x", bogus=1)
    assert info.value.context["unknown"] == ["bogus"]
    with pytest.raises(ValidationError):
        afdn.circuit_breaker.protect(max_failure=3)


# -- 3. async functions through the sync face ------------------------------------------


async def later() -> int:
    return 1


def test_the_sync_limiter_refuses_async_functions_without_counting(fdn: Foundation) -> None:
    rl = fdn.rate_limiter
    for scope in ("shared", "local"):
        with pytest.raises(ValidationError) as info:
            rl.execute(later, key=f"co-{scope}", max_requests=1, scope=scope)
        assert "AsyncFoundation" in info.value.message
        # No request was counted: the one request of the limit is still there.
        assert rl.execute(lambda: 2, key=f"co-{scope}", max_requests=1, scope=scope) == 2
    with pytest.raises(ValidationError):
        rl.limit("deco", max_requests=1)(later)
    # A plain function that returns a coroutine is found out when it returns.
    with pytest.raises(ValidationError):
        rl.execute(lambda: later(), key="lam", max_requests=5)

    @rl.limit("wrapped", max_requests=5)
    def wrapped() -> Any:
        return later()

    with pytest.raises(ValidationError):
        wrapped()


def test_the_sync_breaker_refuses_async_functions_when_decorating(fdn: Foundation) -> None:
    with pytest.raises(ValidationError):
        fdn.circuit_breaker.protect("co")(later)
    with pytest.raises(ValidationError):
        fdn.circuit_breaker.get("co")(later)


# -- 4. bad input refused where it is given -----------------------------------------------


def test_every_breaker_entry_point_validates_scope(fdn: Foundation) -> None:
    cb = fdn.circuit_breaker
    for call in (
        lambda: cb.state("x", scope="bogus"),
        lambda: cb.reset("x", scope="bogus"),
        lambda: cb.force_open("x", scope="bogus"),
        lambda: cb.get("x", scope="bogus"),
        lambda: cb.protect("x", scope="bogus"),
        lambda: cb.execute(lambda: 1, name="x", scope="bogus"),
    ):
        with pytest.raises(ValidationError) as info:
            call()
        assert info.value.context == {"option": "scope", "value": "'bogus'"}
    assert cb.breakers() == []


async def test_async_breaker_state_validates_scope(afdn: AsyncFoundation) -> None:
    with pytest.raises(ValidationError):
        afdn.circuit_breaker.state("x", scope="global")


@pytest.mark.parametrize("timeout", [0, -1, timedelta(0)])
def test_a_breaker_timeout_must_be_positive(fdn: Foundation, timeout: Any) -> None:
    calls: list[int] = []
    with pytest.raises(ValidationError) as info:
        fdn.circuit_breaker.execute(lambda: calls.append(1), name="t", timeout=timeout)
    assert info.value.context["option"] == "timeout" and "None" in info.value.message
    with pytest.raises(ValidationError):
        fdn.circuit_breaker.get("t", timeout=timeout)
    assert calls == [] and fdn.circuit_breaker.breakers() == []
    # None is "no timeout"; the smallest timeout is 1 ms (a timedelta rounds up to it).
    assert fdn.circuit_breaker.execute(lambda: 1, name="t", timeout=None) == 1
    assert fdn.circuit_breaker.get("t", timeout=timedelta(microseconds=1)).options.timeout_ms == 1


def test_a_limit_decorator_checks_its_key_when_applied(fdn: Foundation) -> None:
    for key in (3, "", "a\x00"):
        with pytest.raises(ValidationError) as info:
            fdn.rate_limiter.limit(key=key)
        assert "key" in info.value.context
    assert fdn.rate_limiter.usage() == []


async def test_an_async_limit_decorator_checks_its_key_when_applied(
    afdn: AsyncFoundation,
) -> None:
    with pytest.raises(ValidationError):
        afdn.rate_limiter.limit(key=3)


# -- 5. foundation limits: the state as of now -----------------------------------------


def test_usage_as_of_now() -> None:
    # fixed window 1000..2000: live until 2000, then empty.
    assert usage_now("fixed_window", 1000, 2, 0, 0, 2000, 1999) == (1000, 2, 0)
    assert usage_now("fixed_window", 1000, 2, 0, 0, 2000, 2000) is None
    # sliding window 1000..2000 (kept to 3000): its count becomes the previous window's.
    assert usage_now("sliding_window", 1000, 2, 1, 0, 3000, 1500) == (1000, 2, 1)
    assert usage_now("sliding_window", 1000, 2, 1, 0, 3000, 2000) == (2000, 0, 2)
    assert usage_now("sliding_window", 1000, 0, 1, 0, 3000, 2000) is None
    assert usage_now("sliding_window", 1000, 2, 1, 0, 3000, 3000) is None
    # token bucket: listed while it is not full again.
    assert usage_now("token_bucket", 0, 0, 0, 5_000_000, 5001, 4000) == (0, None, None)
    assert usage_now("token_bucket", 0, 0, 0, 5_000_000, 5001, 5000) is None


def test_sqlite_usage_is_read_as_of_the_given_now(tmp_path: Any) -> None:
    with Foundation(f"sqlite:///{tmp_path / 'x.db'}") as fdn:
        sql = LimiterSQL.build("sqlite", fdn.database.codec)
        now = 1_700_000_000_000  # a window boundary for 1000 ms
        for algorithm in ("fixed_window", "sliding_window", "token_bucket"):
            limit = make_limit(3, 1000, algorithm)
            for _ in range(2):
                fdn.database.fetchone(
                    sql.upsert[algorithm],
                    {
                        "key": algorithm,
                        "limit": 3,
                        "interval": 1000,
                        "emission": limit.emission_us,
                        "capacity": limit.capacity_us,
                        "now_ms": now + 10,
                        "now_us": (now + 10) * 1000,
                    },
                )

        def usage(at: int) -> list[tuple[str, int | None, int | None]]:
            rows = fdn.database.fetchall(sql.select_all, {"limit": 10, "now_ms": at})
            return [(u.key, u.used, u.previous_count) for u in _usages(rows)]

        assert usage(now + 500) == [
            ("fixed_window", 2, 0),
            ("sliding_window", 2, 0),
            ("token_bucket", None, None),  # no count: when it is full again (tat_us)
        ]
        assert usage(now + 1500) == [("sliding_window", 0, 2)]
        assert usage(now + 2500) == []


def test_the_limits_listing_leaves_out_ended_windows(db_url: str) -> None:
    with Foundation(db_url, migrate="check") as node:
        for _ in range(2):
            node.rate_limiter.try_acquire("gone", max_requests=5, interval=20)
            node.rate_limiter.try_acquire("live", max_requests=5, interval=86_400_000)
        wait_for(lambda: [u.key for u in node.rate_limiter.usage()] == ["live"])
    result = CliRunner().invoke(main, ["-d", db_url, "limits", "--json"])
    assert result.exit_code == 0, result.stderr
    assert [(u["key"], u["used"]) for u in json.loads(result.stdout)] == [("live", 2)]
    result = CliRunner().invoke(main, ["-d", db_url, "limits"])
    assert result.exit_code == 0, result.stderr
    assert "live" in result.stdout and "gone" not in result.stdout
    assert re.search(r"-\d", result.stdout) is None  # no time already past
