"""Benchmark rows for the circuit breaker and the rate limiter (issue 5), beside the peers.

Imported by ``scripts/bench.py``, which registers these rows after its own. Peers (the
``bench`` extra): pybreaker for the breaker, ``limits`` (memory storage) for the local
limiter, pyrate-limiter's SQLite and PostgreSQL buckets for the shared one; the floor of
a shared decision is the raw driver running Foundation's own statement (same table, same
SQL, same pragmas), one autocommit statement per decision.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
from bench_helpers import BenchOutput, Context, Floor, Measured, bench, measure_calls, measure_ops
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.schema import CreateIndex, CreateTable

from foundation import Foundation
from foundation.database.schema import rate_limits
from foundation.database.statements import compile_sql
from foundation.database.url import DatabaseURL
from foundation.rate_limiter._store import _upsert

# A limit no benchmark reaches, so that every decision admits (as PEERS.md drives the peers).
LIMIT = 10_000_000
INTERVAL_MS = 3_600_000
KEY = "bench.key"
ALGORITHMS = ("fixed_window", "sliding_window", "token_bucket")
FAST_COMMIT = {"options": "-c synchronous_commit=off"}


@contextlib.contextmanager
def _foundation(url: str) -> Iterator[Foundation]:
    fdn = Foundation(url, migrate="upgrade")
    try:
        if not fdn.feed.wait_connected(10):
            raise RuntimeError("the change feed did not connect within 10 s")
        yield fdn
    finally:
        fdn.close()


def _noop() -> None:
    return None


# ======================================================================================
# circuit breaker, closed path
# ======================================================================================


def _pybreaker() -> Any:
    import pybreaker

    return pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)


def _breaker_rows(peer: list[int], bare: list[int]) -> list[Floor]:
    return [
        Floor("pybreaker 1.x CircuitBreaker.call(noop), in memory", peer),
        Floor("bare call noop()", bare, checked=False),
    ]


@bench(
    "circuit_breaker: breaker.execute(noop), closed",
    backend="sqlite",
    target="≤ pybreaker (shared scope: state cached, no round trip)",
    ratio=1.0,
    scope="shared",
)
@bench(
    "circuit_breaker: breaker.execute(noop), closed, scope=local",
    backend="memory",
    target="≤ pybreaker",
    ratio=1.0,
    scope="local",
)
def breaker_object(ctx: Context, scope: str) -> BenchOutput:
    n, warmup = ctx.n(200_000, 2_000), ctx.n(20_000, 200)
    cb = _pybreaker()
    with _foundation(ctx.sqlite_url("breaker")) as fdn:
        breaker = fdn.circuit_breaker.get(f"bench.{scope}", scope=scope)
        assert breaker.state == "closed"
        ours, peer, bare = measure_calls(
            [(breaker.execute, (_noop,)), (cb.call, (_noop,)), (_noop, ())], n, warmup
        )
        assert breaker.state == "closed" and breaker.failures == 0
    return ours, _breaker_rows(peer, bare)


@bench(
    "circuit_breaker.execute(noop, name=…), closed",
    backend="sqlite",
    target="≤ pybreaker",
    ratio=1.0,
)
def breaker_module_execute(ctx: Context) -> BenchOutput:
    n, warmup = ctx.n(200_000, 2_000), ctx.n(20_000, 200)
    cb = _pybreaker()
    with _foundation(ctx.sqlite_url("breaker-fn")) as fdn:
        execute = fdn.circuit_breaker.execute

        def ours_call() -> Any:
            return execute(_noop, name="bench.fn")

        def peer_call() -> Any:
            return cb.call(_noop)

        ours, peer, bare = measure_calls([(ours_call, ()), (peer_call, ()), (_noop, ())], n, warmup)
        assert fdn.circuit_breaker.state("bench.fn") == "closed"
    return Measured(
        ours,
        _breaker_rows(peer, bare),
        note="the breaker looked up by name on every call (shared scope, the default); "
        "both sides called through a one-line Python wrapper",
    )


# ======================================================================================
# local limiter (memory) beside limits' MemoryStorage
# ======================================================================================

# Each of ours beside the limits strategy closest to it. limits has no token bucket: the
# token bucket row is shown beside its moving (exact) window.
LIMITS_PEER = {
    "fixed_window": "FixedWindowRateLimiter",
    "sliding_window": "SlidingWindowCounterRateLimiter",
    "token_bucket": "MovingWindowRateLimiter",
}


@bench(
    "rate_limiter.try_acquire, scope=local (fixed_window)",
    target="≤ limits MemoryStorage",
    ratio=1.0,
    algorithm="fixed_window",
)
@bench(
    "rate_limiter.try_acquire, scope=local (sliding_window)",
    target="≤ limits MemoryStorage",
    ratio=1.0,
    algorithm="sliding_window",
)
@bench(
    "rate_limiter.try_acquire, scope=local (token_bucket)",
    target="≤ limits MemoryStorage",
    ratio=1.0,
    algorithm="token_bucket",
)
def limiter_local(ctx: Context, algorithm: str) -> BenchOutput:
    from limits import RateLimitItemPerHour, storage, strategies

    n, warmup = ctx.n(100_000, 1_000), ctx.n(10_000, 100)
    peer_name = LIMITS_PEER[algorithm]
    peer = getattr(strategies, peer_name)(storage.MemoryStorage())
    item = RateLimitItemPerHour(LIMIT)
    with _foundation(ctx.sqlite_url("limiter-local")) as fdn:
        try_acquire = fdn.rate_limiter.try_acquire
        args = (KEY, LIMIT, INTERVAL_MS, algorithm, "local")
        assert try_acquire(*args).allowed and peer.hit(item, KEY)
        ours, theirs = measure_calls([(try_acquire, args), (peer.hit, (item, KEY))], n, warmup)
        assert try_acquire(*args).allowed and peer.hit(item, KEY)
    note = ""
    if algorithm == "token_bucket":
        note = "limits has no token bucket; shown beside its moving window"
    return Measured(ours, [Floor(f"limits 5.x {peer_name}.hit, MemoryStorage", theirs)], note)


# ======================================================================================
# shared limiter on SQLite: raw sqlite3 running the same statement, pyrate-limiter
# ======================================================================================


def _limit_params() -> dict[str, Any]:
    emission = -(-INTERVAL_MS * 1000 // LIMIT)
    return {
        "key": KEY,
        "limit": LIMIT,
        "interval": INTERVAL_MS,
        "emission": emission,
        "capacity": emission * LIMIT,
    }


def _raw_sqlite_limiter(path: Path, algorithm: str) -> tuple[Any, Callable[[int], Any]]:
    """A raw sqlite3 connection on its own file, deciding with Foundation's statement."""
    # The same pragmas as bench.raw_sqlite (not imported: bench.py runs as __main__).
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=5)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    dialect = sqlite_dialect.dialect()
    conn.execute(str(CreateTable(rate_limits).compile(dialect=dialect)))
    for index in rate_limits.indexes:  # the expiry index: updated by every decision too
        conn.execute(str(CreateIndex(index).compile(dialect=dialect)))
    sql = compile_sql(_upsert("sqlite", algorithm, True), "sqlite")
    base = _limit_params()

    def decide(i: int) -> Any:
        now_us = time.time_ns() // 1000
        row = conn.execute(sql, {**base, "now_us": now_us, "now_ms": now_us // 1000}).fetchone()
        assert row[4]
        return row

    return conn, decide


def _pyrate_sqlite(path: Path) -> Any:
    from pyrate_limiter import Duration, Limiter, Rate, SQLiteBucket

    bucket = SQLiteBucket.init_from_file(
        [Rate(LIMIT, Duration.HOUR)], table="bench_bucket", db_path=str(path)
    )
    # init_from_file sets WAL + NORMAL only with use_file_lock=True (which also takes a
    # file lock per call); set them on its connection, as ours and the floor run.
    bucket.conn.execute("PRAGMA journal_mode = WAL")
    bucket.conn.execute("PRAGMA synchronous = NORMAL")
    mode = bucket.conn.execute("PRAGMA journal_mode").fetchone()[0]
    sync = bucket.conn.execute("PRAGMA synchronous").fetchone()[0]
    if (mode, sync) != ("wal", 1):
        raise RuntimeError(f"pyrate-limiter's connection is {mode}, synchronous={sync}")
    return Limiter(bucket)


@bench(
    "rate_limiter.try_acquire, shared (fixed_window)",
    backend="sqlite",
    target="≤ 1.3x raw; < pyrate-limiter",
    ratio=1.3,
    algorithm="fixed_window",
)
@bench(
    "rate_limiter.try_acquire, shared (sliding_window)",
    backend="sqlite",
    target="≤ 1.3x raw; < pyrate-limiter",
    ratio=1.3,
    algorithm="sliding_window",
)
@bench(
    "rate_limiter.try_acquire, shared (token_bucket)",
    backend="sqlite",
    target="≤ 1.3x raw; < pyrate-limiter",
    ratio=1.3,
    algorithm="token_bucket",
)
def limiter_shared_sqlite(ctx: Context, algorithm: str) -> BenchOutput:
    n, warmup = ctx.n(3_000, 30), ctx.n(300, 3)
    raw, decide = _raw_sqlite_limiter(ctx.sqlite_path("limiter-raw"), algorithm)
    pyrate = _pyrate_sqlite(ctx.sqlite_path("limiter-pyrate"))
    try:
        with _foundation(ctx.sqlite_url("limiter-shared")) as fdn:
            try_acquire = fdn.rate_limiter.try_acquire
            args = (KEY, LIMIT, INTERVAL_MS, algorithm, "shared")
            assert try_acquire(*args).allowed
            assert pyrate.try_acquire(KEY, blocking=False)
            ours, floor, peer = measure_ops(
                [
                    lambda i: try_acquire(*args),
                    decide,
                    lambda i: pyrate.try_acquire(KEY, blocking=False),
                ],
                n,
                warmup,
            )
            assert not try_acquire(*args).degraded
    finally:
        raw.close()
        pyrate.close()
    return Measured(
        ours,
        [
            Floor("sqlite3 NORMAL: Foundation's upsert … RETURNING, same table, autocommit", floor),
            Floor(
                "pyrate-limiter 4.x SQLiteBucket, WAL + NORMAL (set on its connection)",
                peer,
                ratio=1.0,
            ),
        ],
        note="all three on WAL + synchronous=NORMAL, each on its own file; pyrate-limiter "
        f"keeps one row per admitted call (a sliding log): its figure is for up to {n + warmup:,}"
        " calls in the window, and grows with them",
    )


# ======================================================================================
# shared limiter on PostgreSQL beside pyrate-limiter's PostgresBucket
# ======================================================================================


@bench(
    "rate_limiter.try_acquire, shared (fixed_window)",
    backend="postgresql",
    target="≤ 0.3x pyrate-limiter",
    ratio=0.3,
    algorithm="fixed_window",
)
@bench(
    "rate_limiter.try_acquire, shared (sliding_window)",
    backend="postgresql",
    target="≤ 0.3x pyrate-limiter",
    ratio=0.3,
    algorithm="sliding_window",
)
@bench(
    "rate_limiter.try_acquire, shared (token_bucket)",
    backend="postgresql",
    target="≤ 0.3x pyrate-limiter",
    ratio=0.3,
    algorithm="token_bucket",
)
def limiter_shared_postgres(ctx: Context, algorithm: str) -> BenchOutput:
    from psycopg_pool import ConnectionPool
    from pyrate_limiter import Duration, Limiter, PostgresBucket, Rate

    n, warmup = ctx.n(2_000, 20), ctx.n(200, 3)
    with ctx.pg_database() as url, contextlib.ExitStack() as stack:
        conninfo = DatabaseURL.parse(url).conninfo
        pyrates = []
        # pyrate-limiter as shipped (the server's synchronous_commit), and at our
        # durability (synchronous_commit=off on its pool's connections), each on its table.
        for table, options in (("bench_bucket", {}), ("bench_bucket_nosync", FAST_COMMIT)):
            pool = ConnectionPool(conninfo, min_size=1, max_size=2, kwargs=options, open=True)
            stack.callback(pool.close)
            with pool.connection() as conn:
                shown = conn.execute("SHOW synchronous_commit").fetchone()
                if options and (shown is None or shown[0] != "off"):
                    raise RuntimeError(f"pyrate-limiter's pool has synchronous_commit={shown}")
            limiter = Limiter(PostgresBucket(pool, table, [Rate(LIMIT, Duration.HOUR)]))
            stack.callback(limiter.close)
            pyrates.append(limiter)
        sql = compile_sql(_upsert("postgresql", algorithm, True), "postgresql")
        base = _limit_params()
        fdn = stack.enter_context(_foundation(url))
        raw = stack.enter_context(psycopg.connect(conninfo, autocommit=True))
        try_acquire = fdn.rate_limiter.try_acquire
        args = (KEY, LIMIT, INTERVAL_MS, algorithm, "shared")
        assert try_acquire(*args).allowed
        assert all(p.try_acquire(KEY, blocking=False) for p in pyrates)

        def decide(i: int) -> Any:
            return raw.execute(sql, base).fetchone()

        def peer(limiter: Any) -> Callable[[int], Any]:
            return lambda i: limiter.try_acquire(KEY, blocking=False)

        ours, shipped, nosync, floor = measure_ops(
            [lambda i: try_acquire(*args), peer(pyrates[0]), peer(pyrates[1]), decide],
            n,
            warmup,
        )
        assert not try_acquire(*args).degraded
    return Measured(
        ours,
        [
            Floor("pyrate-limiter 4.x PostgresBucket (psycopg_pool), server's durability", shipped),
            Floor(
                "pyrate-limiter 4.x PostgresBucket, synchronous_commit=off on its connections",
                nosync,
                checked=False,
            ),
            Floor("psycopg autocommit: Foundation's upsert … RETURNING", floor, checked=False),
        ],
        note="ours and the raw floor commit with synchronous_commit=off for the decision's "
        "transaction (set in the statement; see rate_limiter/_store.py); pyrate-limiter runs "
        "LOCK TABLE … NOWAIT, a COUNT over its table and an INSERT per call, at the server's "
        "setting (see PostgreSQL settings above) and again with synchronous_commit=off; it "
        f"keeps one row per admitted call, so its figure is for up to {n + warmup:,} calls in "
        "the window",
    )
