"""Benchmark rows for the event log (issue 3) and the service registry (issue 4).

Imported by ``scripts/bench.py``, which registers these rows after its own. Floors run the
raw driver against the very table Foundation writes (``foundation_events``,
``foundation_registry``, ``foundation_leases``), created by Foundation's own migrations in a
file (SQLite) or a fresh database (PostgreSQL) of their own, so indexes, constraints and
triggers (append-only guards, NOTIFY triggers) are the same on both sides. The peer for
events is the ``eventsourcing`` library's SQLite recorder (the ``bench`` extra), with its
connection set to ``synchronous=NORMAL`` as ours and the floor run.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from bench_helpers import BenchOutput, Context, Floor, Measured, bench, measure_calls, measure_ops

from foundation import Foundation
from foundation.database.url import DatabaseURL
from foundation.events import uuid7

TYPE = "bench.order_placed"
DATA = {"order_id": 1234, "sku": "ABC-123", "qty": 2, "price": "19.90", "note": "bench"}
DATA_TEXT = json.dumps(DATA)
GET_TYPES = ("bench.a", "bench.b", "bench.c", "bench.d", "bench.e")
GET_COUNT = 1000

# ======================================================================================
# shared helpers
# ======================================================================================


@contextlib.contextmanager
def _foundation(url: str, **overrides: Any) -> Iterator[Foundation]:
    fdn = Foundation(url, migrate="upgrade", **overrides)
    try:
        if not fdn.feed.wait_connected(10):
            raise RuntimeError("the change feed did not connect within 10 s")
        yield fdn
    finally:
        fdn.close()


def _migrated(url: str) -> None:
    """Create Foundation's schema at ``url`` (for a floor that uses the same tables)."""
    Foundation(url, migrate="upgrade").close()


def _raw_sqlite(path: Path, synchronous: str = "NORMAL") -> sqlite3.Connection:
    # The same pragmas as bench.raw_sqlite (not imported: bench.py runs as __main__).
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=5)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")  # a constant of this file
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _sqlite_floor(ctx: Context, stem: str) -> sqlite3.Connection:
    path = ctx.sqlite_path(stem)
    _migrated(f"sqlite:///{path}")
    return _raw_sqlite(path)


def _conninfo(url: str) -> str:
    return DatabaseURL.parse(url).conninfo


def _sqlite_ts(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _per_event(samples: list[int], k: int) -> list[int]:
    return [s // k for s in samples]


# ======================================================================================
# events.store, SQLite: raw sqlite3 and the eventsourcing recorder
# ======================================================================================

SQLITE_EVENT_INSERT = """
INSERT INTO foundation_events (id, stream_id, stream_version, type, data, metadata,
                               correlation_id, causation_id, recorded_at)
VALUES (?, NULL, NULL, ?, ?, '{}', NULL, NULL, ?)
"""


def _sqlite_event_row(i: int) -> tuple[Any, ...]:
    # The same work as store: a uuid7, the payload encoded, a timestamp.
    return (str(uuid7()), TYPE, json.dumps({**DATA, "i": i}), _sqlite_ts(datetime.now(UTC)))


def _es_recorder(path: Path) -> Any:
    """eventsourcing's SQLite recorder with synchronous=NORMAL on every connection."""
    from eventsourcing.sqlite import SQLiteApplicationRecorder, SQLiteDatastore

    datastore = SQLiteDatastore(db_name=str(path))
    pool = datastore.pool
    create = pool._create_connection

    def create_normal() -> Any:
        conn = create()
        conn._sqlite_conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    pool._create_connection = create_normal  # type: ignore[method-assign]
    recorder = SQLiteApplicationRecorder(datastore)
    recorder.create_table()
    with datastore.transaction(commit=False) as cursor:
        cursor.execute("PRAGMA synchronous")
        sync = cursor.fetchone()[0]
        cursor.execute("PRAGMA journal_mode")
        mode = cursor.fetchone()[0]
    if (mode, sync) != ("wal", 1):
        raise RuntimeError(f"eventsourcing's connection is {mode}, synchronous={sync}")
    return recorder


def _es_events(k: int, i: int) -> list[Any]:
    from eventsourcing.persistence import StoredEvent

    return [
        StoredEvent(
            originator_id=uuid.uuid4(),
            originator_version=1,
            topic=f"bench:{TYPE}",
            state=json.dumps({**DATA, "i": i + j}).encode(),
        )
        for j in range(k)
    ]


@bench(
    "events.store (1 event per transaction)",
    backend="sqlite",
    target="≤ 1.5x raw; < eventsourcing (spec < 100 µs)",
    ratio=1.5,
)
def events_store_sqlite(ctx: Context) -> BenchOutput:
    n, warmup = ctx.n(5_000, 30), ctx.n(500, 3)
    raw = _sqlite_floor(ctx, "events-store-raw")
    recorder = _es_recorder(ctx.sqlite_path("events-store-es"))
    try:
        with _foundation(ctx.sqlite_url("events-store")) as fdn:
            store = fdn.events.store

            def ours(i: int) -> Any:
                return store({"type": TYPE, "data": {**DATA, "i": i}})

            def floor(i: int) -> Any:
                return raw.execute(SQLITE_EVENT_INSERT, _sqlite_event_row(i)).lastrowid

            def peer(i: int) -> Any:
                return recorder.insert_events(_es_events(1, i))

            mine, flo, es = measure_ops([ours, floor, peer], n, warmup)
    finally:
        raw.close()
        recorder.datastore.close()
    return Measured(
        mine,
        [
            Floor("sqlite3 NORMAL: INSERT, its lastrowid, autocommit, same table", flo),
            Floor(
                "eventsourcing 9.x SQLiteApplicationRecorder.insert_events, WAL + NORMAL "
                "(set on its connection)",
                es,
                ratio=1.0,
            ),
        ],
        note="all three on WAL + synchronous=NORMAL, each on its own file; one new event "
        "(uuid7 id, ~90-byte JSON payload) per call; the floor writes into Foundation's own "
        "foundation_events table (same indexes and append-only triggers)",
    )


@bench(
    "events.store_many (100 events per call, per event)",
    backend="sqlite",
    target="≤ 4 µs per event",
    median_us=4.0,
)
def events_store_many_sqlite(ctx: Context) -> BenchOutput:
    k = 100
    n, warmup = ctx.n(1_000, 10), ctx.n(50, 2)
    raw = _sqlite_floor(ctx, "events-many-raw")
    recorder = _es_recorder(ctx.sqlite_path("events-many-es"))
    sql = SQLITE_EVENT_INSERT
    try:
        with _foundation(ctx.sqlite_url("events-many")) as fdn:
            store_many = fdn.events.store_many

            def ours(i: int) -> Any:
                return store_many(
                    [{"type": TYPE, "data": {**DATA, "i": i * k + j}} for j in range(k)]
                )

            def floor(i: int) -> Any:
                rows = [_sqlite_event_row(i * k + j) for j in range(k)]
                raw.execute("BEGIN IMMEDIATE")
                raw.executemany(sql, rows)
                raw.execute("COMMIT")

            def peer(i: int) -> Any:
                return recorder.insert_events(_es_events(k, i * k))

            mine, flo, es = measure_ops([ours, floor, peer], n, warmup, block=20)
    finally:
        raw.close()
        recorder.datastore.close()
    return Measured(
        _per_event(mine, k),
        [
            Floor(
                "sqlite3 NORMAL: BEGIN; executemany(100 rows); COMMIT (per event)",
                _per_event(flo, k),
            ),
            Floor(
                "eventsourcing 9.x insert_events(100 events), WAL + NORMAL (per event)",
                _per_event(es, k),
                checked=False,
            ),
        ],
        note="per-event time: each call's time divided by 100; the floor builds the same "
        "rows (uuid7, JSON, timestamp) inside the timed call",
    )


# ======================================================================================
# events.store, PostgreSQL
# ======================================================================================

PG_EVENT_INSERT = """
INSERT INTO foundation_events (id, stream_id, stream_version, type, data, metadata,
                               correlation_id, causation_id, recorded_at)
VALUES (%s, NULL, NULL, %s, %s::jsonb, '{}'::jsonb, NULL, NULL, now()) RETURNING position
"""


@bench(
    "events.store (1 event per transaction)",
    backend="postgresql",
    target="≤ 1.2x raw (spec < 100 µs)",
    ratio=1.2,
)
def events_store_postgres(ctx: Context) -> BenchOutput:
    n, warmup = ctx.n(3_000, 30), ctx.n(300, 3)
    with ctx.pg_database() as url, ctx.pg_database() as raw_url:
        _migrated(raw_url)
        with (
            _foundation(url) as fdn,
            psycopg.connect(_conninfo(raw_url), autocommit=True) as conn,
        ):
            store = fdn.events.store

            def ours(i: int) -> Any:
                return store({"type": TYPE, "data": {**DATA, "i": i}})

            def floor(i: int) -> Any:
                params = (str(uuid7()), TYPE, json.dumps({**DATA, "i": i}))
                return conn.execute(PG_EVENT_INSERT, params).fetchone()

            append_one = fdn.events._sql.append_one

            def same_call(i: int) -> Any:
                # The statement Foundation sends for a lone event: lock, insert, notify.
                params = {
                    "id": str(uuid7()),
                    "type": TYPE,
                    "data": json.dumps({**DATA, "i": i}),
                    "metadata": "{}",
                    "correlation_id": None,
                    "causation_id": None,
                    "recorded_at": datetime.now(UTC),
                    "writer": "bench",
                    "notify": False,
                }
                return conn.execute(append_one, params).fetchall()

            mine, flo, call = measure_ops([ours, floor, same_call], n, warmup)
    return Measured(
        mine,
        [
            Floor("psycopg autocommit: INSERT … RETURNING position, same table", flo),
            Floor(
                "psycopg: the same statement Foundation sends (lock, insert, NOTIFY), autocommit",
                call,
                checked=False,
            ),
        ],
        note="each side in its own fresh database migrated by Foundation (same table, "
        "indexes and triggers); Foundation's store of a lone event outside a stream is one "
        "INSERT whose WITH takes the advisory lock that keeps positions in commit order "
        "and notifies its feed (one NOTIFY per 5 ms in a burst), in one implicit "
        "transaction",
    )


# ======================================================================================
# events.get: 1000 events by type, from the database and from the tail cache
# ======================================================================================


def _fill_events(fdn: Foundation, total: int, types: tuple[str, ...], batch: int = 1000) -> None:
    i = 0
    while i < total:
        k = min(batch, total - i)
        fdn.events.store_many(
            [{"type": types[(i + j) % len(types)], "data": {**DATA, "i": i + j}} for j in range(k)]
        )
        i += k


SQLITE_GET = """
SELECT position, id, stream_id, stream_version, type, data, metadata, correlation_id,
       causation_id, recorded_at
FROM foundation_events WHERE type = ? ORDER BY position LIMIT ?
"""
PG_GET = SQLITE_GET.replace("?", "%s")


def _decode_sqlite(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    loads = json.loads
    return [(*r[:5], loads(r[5]), loads(r[6]), *r[7:]) for r in rows]


def _disable_tail(fdn: Foundation) -> None:
    # As Foundation(url, events_tail_size=0) would, on an instance already open.
    fdn.events.tail_cache.size = 0
    assert not fdn.events.tail_cache.enabled


@bench(
    f"events.get ({GET_COUNT} events by type, from the database)",
    backend="sqlite",
    target="≤ 1.3x raw fetch + decode",
    ratio=1.3,
)
def events_get_sqlite(ctx: Context) -> BenchOutput:
    n, warmup = ctx.n(1_000, 10), ctx.n(50, 2)
    path = ctx.sqlite_path("events-get")
    with _foundation(f"sqlite:///{path}") as fdn:
        _fill_events(fdn, GET_COUNT * len(GET_TYPES), GET_TYPES)
        _disable_tail(fdn)
        conn = _raw_sqlite(path)
        try:
            get = fdn.events.get

            def raw_get() -> Any:
                return _decode_sqlite(
                    conn.execute(SQLITE_GET, (GET_TYPES[2], GET_COUNT)).fetchall()
                )

            assert len(get(type=GET_TYPES[2], limit=GET_COUNT)) == GET_COUNT
            assert len(raw_get()) == GET_COUNT
            mine, flo = measure_calls(
                [(lambda: get(type=GET_TYPES[2], limit=GET_COUNT), ()), (raw_get, ())],
                n,
                warmup,
                50,
            )
        finally:
            conn.close()
    return Measured(
        mine,
        [
            Floor(
                "sqlite3: SELECT … WHERE type = ? LIMIT 1000, fetchall + json.loads of 2 columns",
                flo,
            )
        ],
        note=f"a log of {GET_COUNT * len(GET_TYPES):,} events of 5 types; the tail cache "
        "turned off (tail_cache.size = 0) so every get reads the database; ours builds "
        "RecordedEvent objects (UUID, datetime), the floor only decodes the JSON columns",
    )


@bench(
    f"events.get ({GET_COUNT} events by type, from the database)",
    backend="postgresql",
    target="≤ 1.3x raw fetch + decode",
    ratio=1.3,
)
def events_get_postgres(ctx: Context) -> BenchOutput:
    n, warmup = ctx.n(1_000, 10), ctx.n(50, 2)
    with ctx.pg_database() as url, _foundation(url) as fdn:
        _fill_events(fdn, GET_COUNT * len(GET_TYPES), GET_TYPES)
        _disable_tail(fdn)
        with psycopg.connect(_conninfo(url), autocommit=True) as conn:
            get = fdn.events.get

            def raw_get() -> Any:
                return conn.execute(PG_GET, (GET_TYPES[2], GET_COUNT)).fetchall()

            assert len(get(type=GET_TYPES[2], limit=GET_COUNT)) == GET_COUNT
            assert len(raw_get()) == GET_COUNT
            mine, flo = measure_calls(
                [(lambda: get(type=GET_TYPES[2], limit=GET_COUNT), ()), (raw_get, ())],
                n,
                warmup,
                50,
            )
    return Measured(
        mine,
        [Floor("psycopg: SELECT … WHERE type = %s LIMIT 1000 (jsonb decoded by psycopg)", flo)],
        note=f"a log of {GET_COUNT * len(GET_TYPES):,} events of 5 types; tail cache off",
    )


@bench(
    f"events.get ({GET_COUNT} events by type, tail cache)",
    backend="sqlite",
    target="≤ 1 ms (spec < 1 ms)",
    median_us=1000.0,
)
def events_get_cached(ctx: Context) -> BenchOutput:
    n, warmup = ctx.n(3_000, 10), ctx.n(100, 2)
    path = ctx.sqlite_path("events-get-cached")
    with _foundation(f"sqlite:///{path}") as fdn:
        total = GET_COUNT * len(GET_TYPES)
        _fill_events(fdn, total, GET_TYPES)
        cache = fdn.events.tail_cache
        if not cache.enabled or cache.size < total:
            raise RuntimeError(f"the tail cache holds {cache.size} events, fewer than {total}")
        get = fdn.events.get
        criteria = {"type": GET_TYPES[2], "limit": GET_COUNT}
        hit, _ = cache.answer_at(fdn.events._criteria(criteria, {}))
        if hit is None:
            raise RuntimeError("the tail cache does not answer the query")
        conn = _raw_sqlite(path)
        try:

            def raw_get() -> Any:
                return _decode_sqlite(
                    conn.execute(SQLITE_GET, (GET_TYPES[2], GET_COUNT)).fetchall()
                )

            assert get(criteria) == [*hit]
            mine, flo = measure_calls([(get, (criteria,)), (raw_get, ())], n, warmup, 50)
        finally:
            conn.close()
    return Measured(
        mine,
        [Floor("sqlite3: the same SELECT, fetchall + json.loads of 2 columns", flo, checked=False)],
        note=f"a log of {total:,} events, all in the tail cache (size {cache.size:,}); "
        "each answer is checked against the log's last position (one indexed read, so that "
        "another node's new event is never missed); the floor reads the database",
    )


# ======================================================================================
# store and get latency against the log's size
# ======================================================================================

SMALL_LOG = 10_000


def _big_log(ctx: Context) -> int:
    return ctx.n(1_000_000, 20_000)


@contextlib.contextmanager
def _two_logs(ctx: Context) -> Iterator[tuple[Foundation, Foundation, int]]:
    big = _big_log(ctx)
    with (
        _foundation(ctx.sqlite_url("events-small")) as small_fdn,
        _foundation(ctx.sqlite_url("events-big")) as big_fdn,
    ):
        _fill_events(small_fdn, SMALL_LOG, GET_TYPES)
        _fill_events(big_fdn, big, GET_TYPES, batch=5_000)
        _disable_tail(small_fdn)
        _disable_tail(big_fdn)
        yield small_fdn, big_fdn, big


@bench(
    "events.store (large log vs 10,000 events)",
    backend="sqlite",
    target="flat: ≤ 1.2x the same call on 10,000 events",
    ratio=1.2,
)
def events_store_scale(ctx: Context) -> BenchOutput:
    n, warmup = ctx.n(3_000, 30), ctx.n(300, 3)
    with _two_logs(ctx) as (small, big, size):
        s_store, b_store = small.events.store, big.events.store
        mine, flo = measure_ops(
            [
                lambda i: b_store({"type": TYPE, "data": {**DATA, "i": i}}),
                lambda i: s_store({"type": TYPE, "data": {**DATA, "i": i}}),
            ],
            n,
            warmup,
        )
    return Measured(
        mine,
        [Floor(f"events.store on a log of {SMALL_LOG:,} events", flo)],
        note=f"ours: a log of {size:,} events (filled with store_many of 5,000); the floor "
        f"row is the same call on a log of {SMALL_LOG:,}, alternating in the same run",
    )


@bench(
    f"events.get ({GET_COUNT} newest by type, large log vs 10,000 events)",
    backend="sqlite",
    target="flat: ≤ 1.2x the same call on 10,000 events",
    ratio=1.2,
)
def events_get_scale(ctx: Context) -> BenchOutput:
    n, warmup = ctx.n(500, 10), ctx.n(50, 2)
    with _two_logs(ctx) as (small, big, size):
        criteria = {"type": GET_TYPES[2], "limit": GET_COUNT, "order": "desc"}
        assert len(big.events.get(criteria)) == GET_COUNT
        mine, flo = measure_calls(
            [(big.events.get, (criteria,)), (small.events.get, (criteria,))], n, warmup, 25
        )
    return Measured(
        mine,
        [Floor(f"events.get on a log of {SMALL_LOG:,} events", flo)],
        note=f"get(type=…, limit=1000, order='desc') from the database (tail cache off); "
        f"ours: a log of {size:,} events, the floor row: {SMALL_LOG:,}",
    )


# ======================================================================================
# service_registry.lookup: the in-process copy, at 10 and 100,000 names
# ======================================================================================

REG_OTHER = "bench-other-node"


def _preload_names(path: Path, count: int) -> None:
    """``count`` names held by another node's live lease, written raw before Foundation
    starts (so its first resync loads them), as if a cluster had registered them."""
    conn = _raw_sqlite(path)
    now = datetime.now(UTC)
    ts, far = _sqlite_ts(now), _sqlite_ts(now + timedelta(days=1))
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "INSERT INTO foundation_leases (node_id, generation, ttl_ms, expires_at, "
            "renewed_at, started_at) VALUES (?, 1, 86400000, ?, ?, ?)",
            (REG_OTHER, far, ts, ts),
        )
        conn.executemany(
            "INSERT INTO foundation_registry (name, address, metadata, node_id, "
            "lease_generation, epoch, revision, ttl_ms, expires_at, registered_at, updated_at) "
            "VALUES (?, ?, '{}', ?, 1, 1, 1, NULL, NULL, ?, ?)",
            (
                (
                    f"svc.{k:06d}",
                    json.dumps(f"http://10.0.{k // 250 % 256}.{k % 250}:8000"),
                    REG_OTHER,
                    ts,
                    ts,
                )
                for k in range(count)
            ),
        )
        conn.execute("COMMIT")
    finally:
        conn.close()


@bench(
    "service_registry.lookup (10 names)",
    backend="sqlite",
    target="≤ 1 µs",
    median_us=1.0,
    names=10,
)
@bench(
    "service_registry.lookup (100,000 names)",
    backend="sqlite",
    target="≤ 1 µs",
    median_us=1.0,
    names=100_000,
)
def registry_lookup(ctx: Context, names: int) -> BenchOutput:
    n, warmup = ctx.n(200_000, 2_000), ctx.n(20_000, 200)
    path = ctx.sqlite_path("registry-lookup")
    _migrated(f"sqlite:///{path}")
    _preload_names(path, names)
    with _foundation(f"sqlite:///{path}", registry_ttl_ms=60_000) as fdn:
        reg = fdn.service_registry
        name = f"svc.{names // 2:06d}"
        entry = reg.lookup(name)
        assert entry.node == REG_OTHER
        assert len(reg.list()) == names
        plain = {e.name: e for e in reg.list()}
        mine, flo = measure_calls([(reg.lookup, (name,)), (plain.get, (name,))], n, warmup)
    return Measured(
        mine,
        [Floor(f"dict.get on a dict of {names:,} entries", flo)],
        note="names held by another node's live lease (written before start, loaded by the "
        "first resync); lookup checks the lease's expiry locally",
    )


# ======================================================================================
# service_registry.register: SQLite and PostgreSQL
# ======================================================================================

SQLITE_REG_INSERT = """
INSERT INTO foundation_registry (name, address, metadata, node_id, lease_generation, epoch,
                                 revision, ttl_ms, expires_at, registered_at, updated_at)
VALUES (?, ?, ?, 'bench-raw', 1, 1, 1, NULL, NULL, ?, ?)
"""
PG_REG_INSERT = """
INSERT INTO foundation_registry (name, address, metadata, node_id, lease_generation, epoch,
                                 revision, ttl_ms, expires_at, registered_at, updated_at)
VALUES (%s, %s::jsonb, %s::jsonb, 'bench-raw', 1, 1, 1, NULL, NULL, now(), now())
"""
ADDRESS = "http://10.0.0.5:8000"
META = {"version": "1.4.2", "zone": "eu-1"}


def _upsert_params(i: int) -> dict[str, Any]:
    """Foundation's register statement's parameters for a new name, built the raw way."""
    return {
        "name": f"same.{i:07d}",
        "address": json.dumps(ADDRESS),
        "metadata": json.dumps(META),
        "node": "bench-raw",
        "gen": 1,
        "entry_ttl_ms": None,
    }


@bench(
    "service_registry.register",
    backend="sqlite",
    target="≤ 1.3x raw insert + commit",
    ratio=1.3,
)
def registry_register_sqlite(ctx: Context) -> BenchOutput:
    n, warmup = ctx.n(3_000, 30), ctx.n(300, 3)
    raw = _sqlite_floor(ctx, "registry-raw")
    try:
        with _foundation(ctx.sqlite_url("registry"), registry_ttl_ms=60_000) as fdn:
            register = fdn.service_registry.register

            def ours(i: int) -> Any:
                return register(f"svc.{i:07d}", ADDRESS, META)

            def floor(i: int) -> Any:
                ts = _sqlite_ts(datetime.now(UTC))
                params = (f"svc.{i:07d}", json.dumps(ADDRESS), json.dumps(META), ts, ts)
                return raw.execute(SQLITE_REG_INSERT, params)

            upsert = fdn.service_registry._sql.register

            def same_statement(i: int) -> Any:
                # Foundation's own statement (takeover check, epoch RETURNING) on the raw
                # driver: what the database alone costs for register's work. Its SQLite
                # text takes a tuple, in the order of the service's _REGISTER_ORDER.
                ts = _sqlite_ts(datetime.now(UTC))
                p = _upsert_params(i)
                row = (p["name"], p["address"], p["metadata"], p["node"], p["gen"])
                return raw.execute(upsert, (*row, None, None, None, ts, ts, ts, ts)).fetchone()

            mine, flo, same = measure_ops([ours, floor, same_statement], n, warmup)
    finally:
        raw.close()
    return Measured(
        mine,
        [
            Floor("sqlite3 NORMAL: INSERT of the same row, autocommit, same table", flo),
            Floor(
                "sqlite3 NORMAL: Foundation's upsert … RETURNING epoch, revision, registered_at",
                same,
                checked=False,
            ),
        ],
        note="a new name per call; for a name its cache has never seen, ours is one INSERT … "
        "ON CONFLICT DO NOTHING (the takeover upsert … RETURNING runs only when a row was "
        "there after all), and updates the in-process copy; both sides fire the "
        "topic-revision trigger of 0006 (same table)",
    )


@bench(
    "service_registry.register",
    backend="postgresql",
    target="≤ 1.2x raw insert + commit",
    ratio=1.2,
)
def registry_register_postgres(ctx: Context) -> BenchOutput:
    n, warmup = ctx.n(3_000, 30), ctx.n(300, 3)
    with ctx.pg_database() as url, ctx.pg_database() as raw_url:
        _migrated(raw_url)
        with (
            _foundation(url, registry_ttl_ms=60_000) as fdn,
            psycopg.connect(_conninfo(raw_url), autocommit=True) as conn,
        ):
            register = fdn.service_registry.register

            def ours(i: int) -> Any:
                return register(f"svc.{i:07d}", ADDRESS, META)

            def floor(i: int) -> Any:
                params = (f"svc.{i:07d}", json.dumps(ADDRESS), json.dumps(META))
                return conn.execute(PG_REG_INSERT, params)

            upsert = fdn.service_registry._sql.register

            def same_statement(i: int) -> Any:
                # Foundation's own statement on the raw driver (see the SQLite row).
                return conn.execute(upsert, _upsert_params(i)).fetchone()

            mine, flo, same = measure_ops([ours, floor, same_statement], n, warmup)
    return Measured(
        mine,
        [
            Floor("psycopg autocommit: INSERT of the same row, same table (NOTIFY trigger)", flo),
            Floor(
                "psycopg autocommit: Foundation's upsert … RETURNING epoch, revision, "
                "registered_at",
                same,
                checked=False,
            ),
        ],
        note="a new name per call; each side in its own fresh database migrated by "
        "Foundation; ours also has its instance's LISTEN connection, which receives the "
        "NOTIFY of each register (the floor's database has no listener)",
    )


# ======================================================================================
# heartbeat: one statement per renewal, at 10 and 100,000 names
# ======================================================================================

SQLITE_RENEW = """
UPDATE foundation_leases SET expires_at = ?, renewed_at = ?
WHERE node_id = ? AND generation = 1 AND expires_at > ? RETURNING expires_at
"""


def _raw_lease(conn: sqlite3.Connection) -> Callable[[], Any]:
    now = datetime.now(UTC)
    ts = _sqlite_ts(now)
    conn.execute(
        "INSERT INTO foundation_leases (node_id, generation, ttl_ms, expires_at, renewed_at, "
        "started_at) VALUES ('bench-raw', 1, 60000, ?, ?, ?)",
        (_sqlite_ts(now + timedelta(minutes=1)), ts, ts),
    )

    def renew() -> Any:
        at = datetime.now(UTC)
        params = (
            _sqlite_ts(at + timedelta(minutes=1)),
            _sqlite_ts(at),
            "bench-raw",
            _sqlite_ts(at),
        )
        return conn.execute(SQLITE_RENEW, params).fetchone()

    return renew


@bench(
    "service_registry.heartbeat (10 names)",
    backend="sqlite",
    target="one statement whatever the names (≤ 1.3x raw UPDATE)",
    ratio=1.3,
    names=10,
)
@bench(
    "service_registry.heartbeat (100,000 names)",
    backend="sqlite",
    target="one statement whatever the names (≤ 1.3x raw UPDATE)",
    ratio=1.3,
    names=100_000,
)
def registry_heartbeat(ctx: Context, names: int) -> BenchOutput:
    n, warmup = ctx.n(3_000, 30), ctx.n(300, 3)
    path = ctx.sqlite_path("registry-heartbeat")
    _migrated(f"sqlite:///{path}")
    _preload_names(path, names)
    raw = _sqlite_floor(ctx, "registry-heartbeat-raw")
    statements: list[str] = []
    try:
        with _foundation(f"sqlite:///{path}", registry_ttl_ms=60_000) as fdn:
            reg = fdn.service_registry
            for k in range(10):  # names of our own, on our lease
                reg.register(f"own.{k}", ADDRESS, META)
            assert len(reg.list()) == names + 10
            assert reg.heartbeat()
            # Count the statements one heartbeat runs on its connection.
            db = reg._db
            fetchone, execute = db.fetchone, db.execute

            def count_fetchone(sql: str, params: Any = None) -> Any:
                statements.append(sql)
                return fetchone(sql, params)

            def count_execute(sql: str, params: Any = None) -> Any:
                statements.append(sql)
                return execute(sql, params)

            db.fetchone, db.execute = count_fetchone, count_execute
            try:
                assert reg.heartbeat()
            finally:
                del db.fetchone, db.execute
            renew = _raw_lease(raw)
            mine, flo = measure_calls([(reg.heartbeat, ()), (renew, ())], n, warmup, 100)
    finally:
        raw.close()
    return Measured(
        mine,
        [Floor("sqlite3 NORMAL: the same lease UPDATE … RETURNING, autocommit", flo)],
        note=f"{names:,} names held by another node plus 10 of ours; one heartbeat() ran "
        f"{len(statements)} statement(s) on its connection",
    )


# ======================================================================================
# the SQLite change feed's poll: a commit elsewhere in the file, 100,000 names
# ======================================================================================

SQLITE_TOPICS = (
    "SELECT (SELECT max(revision) FROM foundation_topic_revisions WHERE topic = ?), "
    "(SELECT max(revision) FROM foundation_topic_revisions WHERE topic = ?), "
    "(SELECT max(revision) FROM foundation_topic_revisions WHERE topic = ?)"
)
TOPICS = ("registry", "registry.members", "registry.leases")


@bench(
    "service_registry.poll (100,000 names, registry untouched)",
    backend="sqlite",
    target="one small read (≤ 1.3x the raw read of the 3 topics' latest revisions)",
    ratio=1.3,
    names=100_000,
)
def registry_poll(ctx: Context, names: int) -> BenchOutput:
    from foundation.database.sync import _DriverCursor, connect_sqlite

    n, warmup = ctx.n(3_000, 30), ctx.n(300, 3)
    path = ctx.sqlite_path("registry-poll")
    _migrated(f"sqlite:///{path}")
    _preload_names(path, names)
    with _foundation(f"sqlite:///{path}", registry_ttl_ms=60_000) as fdn:
        reg = fdn.service_registry
        assert len(reg.list()) == names
        conn = connect_sqlite(fdn.url, fdn.settings)
        try:
            reader = _DriverCursor(conn)
            reg.poll(reader)
            fdn.config.set("bench.unrelated", 1)  # what moves data_version: not the registry
            resyncs, reads = reg.resyncs, reg.poll_reads

            def raw() -> Any:
                return conn.execute(SQLITE_TOPICS, TOPICS).fetchone()

            mine, flo = measure_calls([(reg.poll, (reader,)), (raw, ())], n, warmup, 100)
            assert (reg.resyncs, reg.poll_reads) == (resyncs, reads), "the poll re-read"
            # What every commit to the file cost before topic revisions: a full re-read.
            full = []
            for _ in range(ctx.n(5, 1)):
                t0 = time.perf_counter_ns()
                reg.resync(reader)
                full.append(time.perf_counter_ns() - t0)
        finally:
            conn.close()
    return Measured(
        mine,
        [
            Floor("sqlite3: SELECT the latest revision of the registry's 3 topics", flo),
            Floor(f"the full re-read of {names:,} names (before 0006)", full, checked=False),
        ],
        note=f"{names:,} names held by another node; a config value was set (data_version "
        "moved) and the registry's poll read only the topic revisions",
    )
