"""Found in the tenth round of review, in the database layer under both services.

* PostgreSQL: after a migration changed a column's type under running nodes, every
  ``get`` and ``read_stream`` of a node raised ``storage_error`` ("cached plan must not
  change result type", psycopg's prepared statements) until the pool retired its
  connections (an hour), and the change feed, swallowing the same error, stopped
  following the cluster while it reported itself connected: another node's registration
  and unregistration never reached the node's registry cache.
* Found by a migrations review: a revision changing the type of a column a trigger reads
  (``foundation_config.updated_by`` to text) failed every ``config.set`` of a running node
  (PL/pgSQL's plans cached per session: "type of parameter N does not match that when
  preparing the plan"), and ``register`` likewise for the registry's columns.
* Found by the same review: ``FOUNDATION_POSTGRES_SCHEMA`` (PostgreSQL only) broke SQLite
  (``unknown database fdn``: the version table's schema read as an attached database),
  and ``alembic upgrade head --sql`` with it wrote a script that created every table
  outside that schema.
* Found with a proxy cutting connections: after an outage, the pool's reconnection waits
  began at 1 s and doubled without bound: a server back after 16 s was reached at 31 s,
  past a 30 s lease, and a node lost its names to an outage shorter than their TTL.
* Found by a new user checking the docs: inside a SQLite ``transaction()``, a shared rate
  limiter failed open (5 of 5 calls allowed with ``max_requests=1``) and a breaker
  recorded no outcome, taking the refusal for an outage; they raise it now.
* SQLite: the sync face kept the connection of every thread that ever used it (two file
  descriptors each) until ``close()``: a server with a thread per request ran out of file
  descriptors ("unable to open database file" after ~500 threads under ``ulimit -n
  1024``).
* SQLite: a service call inside the caller's own ``fdn.database.transaction()`` joined it on
  the sync face (a rolled-back ``store`` gave its position to the next event; a
  ``store_many`` failed with "cannot start a transaction within a transaction") and waited
  for it for ever on the async face, past any ``wait_for``. It is refused with
  ``storage_error``; PostgreSQL runs it on another connection (documented).
* Found in review of those fixes: a thread's connection closed at its end in a forked
  child too (the child freeing the parent's threads), waiting for ever for a lock a
  parent thread held; and a transaction begun with ``execute("BEGIN")`` could no longer
  be ended (only ``transaction()`` marks a thread's calls as inside one now).
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from typing import Any

import psycopg
import pytest

from foundation import AsyncFoundation, Foundation, FoundationError
from foundation.database.url import DatabaseURL
from tests.helpers import async_wait_for, wait_for

# What a later revision widening a column does: the views over it go and come back.
_WIDEN = """DO $$ DECLARE ev text; rg text; BEGIN
  ev := pg_get_viewdef('foundation_audit_events');
  rg := pg_get_viewdef('foundation_audit_registry');
  DROP VIEW foundation_audit_events; DROP VIEW foundation_audit_registry;
  ALTER TABLE foundation_events ALTER COLUMN stream_id TYPE varchar(512);
  ALTER TABLE foundation_registry ALTER COLUMN name TYPE varchar(512);
  EXECUTE 'CREATE VIEW foundation_audit_events AS ' || ev;
  EXECUTE 'CREATE VIEW foundation_audit_registry AS ' || rg; END $$"""


def _migrate_under(url: str) -> None:
    with psycopg.connect(DatabaseURL.parse(url).conninfo, autocommit=True) as conn:
        conn.execute(_WIDEN)


def test_reads_and_the_feed_go_on_after_a_migration_changes_a_column(pg_url: str) -> None:
    with Foundation(pg_url, migrate="check") as fdn, Foundation(pg_url) as other:
        reg = fdn.service_registry
        for i in range(8):  # past psycopg's prepare_threshold: the statements are prepared
            fdn.events.store({"type": "t", "stream_id": "s", "data": {"i": i}})
            fdn.events.get(type="t", limit=5, order="desc")
            fdn.events.read_stream("s")
            other.service_registry.register(f"n{i}", "http://n")
            wait_for(lambda i=i: reg.find(f"n{i}") is not None)
        _migrate_under(pg_url)
        for _ in range(3):
            assert len(fdn.events.read_stream("s")) == 8
            assert len(fdn.events.get(type="t", limit=5, order="desc")) == 5
        other.service_registry.register("after", "http://a")
        other.service_registry.unregister("n0")
        wait_for(lambda: reg.find("after") is not None and reg.find("n0") is None)


def test_writes_through_triggers_go_on_after_a_migration_changes_a_column(
    pg_url: str,
) -> None:
    with Foundation(pg_url, migrate="check") as fdn:
        fdn.config.set("port", 1)  # the triggers' plans, cached on the connection
        fdn.service_registry.register("svc", "http://a")
        with psycopg.connect(DatabaseURL.parse(pg_url).conninfo, autocommit=True) as conn:
            conn.execute("ALTER TABLE foundation_config ALTER COLUMN updated_by TYPE text")
            conn.execute("ALTER TABLE foundation_registry ALTER COLUMN revision TYPE numeric")
        for port in (2, 3):
            fdn.config.set("port", port)
        fdn.service_registry.update_metadata("svc", {"v": 2})
        fdn.service_registry.register("other", "http://b")
        assert fdn.config.get("port") == 3


def test_the_feed_follows_the_cluster_after_a_migration_changes_a_column(pg_url: str) -> None:
    with Foundation(pg_url, migrate="check") as fdn, Foundation(pg_url) as other:
        reg = fdn.service_registry
        for i in range(8):  # the feed's reads of the names, prepared
            other.service_registry.register(f"n{i}", "http://n")
            wait_for(lambda i=i: reg.find(f"n{i}") is not None)
        _migrate_under(pg_url)
        other.service_registry.register("after", "http://a")
        wait_for(lambda: reg.find("after") is not None)


async def test_reads_go_on_after_a_migration_changes_a_column_async(pg_url: str) -> None:
    async with AsyncFoundation(pg_url, migrate="check") as fdn:
        for i in range(8):
            await fdn.events.store({"type": "t", "stream_id": "s", "data": {"i": i}})
            await fdn.events.read_stream("s")
        _migrate_under(pg_url)
        for _ in range(3):
            assert len(await fdn.events.read_stream("s")) == 8
        async with AsyncFoundation(pg_url) as other:
            await other.service_registry.register("after", "http://a")
            await async_wait_for(lambda: fdn.service_registry.find("after") is not None)


def test_a_threads_sqlite_connection_closes_when_the_thread_ends(tmp_path: Any) -> None:
    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    with Foundation(f"sqlite:///{tmp_path / 'threads.db'}") as fdn:
        fdn.events.store({"type": "warm", "data": {}})
        before = open_fds()
        for _ in range(60):  # one short-lived thread per request
            worker = threading.Thread(target=fdn.events.store, args=({"type": "t", "data": {}},))
            worker.start()
            worker.join()
        assert open_fds() - before < 10  # not two per thread
        assert len(fdn.events.get(type="t")) == 60
        fdn.events.store({"type": "still", "data": {}})  # this thread's is still open


def test_a_service_call_inside_your_sqlite_transaction_is_refused(tmp_path: Any) -> None:
    with Foundation(f"sqlite:///{tmp_path / 'tx.db'}") as fdn:
        with fdn.database.transaction() as tx:
            tx.execute("CREATE TABLE mine (x INTEGER)")
            for call in (
                lambda: fdn.events.store({"type": "t", "data": {}}),
                lambda: fdn.events.store_many([{"type": "t", "data": {}}] * 2),
                lambda: fdn.service_registry.register("svc", "http://a"),
                lambda: fdn.database.execute("INSERT INTO mine VALUES (1)"),
            ):
                with pytest.raises(FoundationError) as err:
                    call()
                assert err.value.code == "storage_error"
                assert "the transaction's own cursor" in str(err.value)
            tx.execute("INSERT INTO mine VALUES (2)")
        assert fdn.database.fetchall("SELECT x FROM mine") == [(2,)]
        assert fdn.events.get() == [] and fdn.service_registry.find("svc") is None
        assert fdn.events.store({"type": "t", "data": {}}).position == 1  # after it: fine


async def test_a_service_call_inside_your_sqlite_transaction_is_refused_async(
    tmp_path: Any,
) -> None:
    async with AsyncFoundation(f"sqlite:///{tmp_path / 'tx.db'}") as fdn:
        async with fdn.database.transaction() as tx:
            await tx.execute("CREATE TABLE mine (x INTEGER)")
            with pytest.raises(FoundationError) as err:  # not a wait for ever
                await asyncio.wait_for(fdn.events.store({"type": "t", "data": {}}), 10)
            assert err.value.code == "storage_error"
            with pytest.raises(FoundationError):  # from a task started inside it too
                await asyncio.wait_for(asyncio.create_task(fdn.events.get()), 10)
        assert await fdn.database.fetchall("SELECT count(*) FROM mine") == [(0,)]
        assert (await fdn.events.store({"type": "t", "data": {}})).position == 1


def test_a_service_call_inside_your_postgres_transaction_commits_by_itself(
    pg_url: str,
) -> None:
    with Foundation(pg_url, migrate="check") as fdn:
        with pytest.raises(RuntimeError), fdn.database.transaction() as tx:
            tx.execute("CREATE TABLE mine (x INTEGER)")
            fdn.events.store({"type": "t", "data": {}})  # another connection
            raise RuntimeError("rolled back")
        assert len(fdn.events.get()) == 1


def test_a_transaction_begun_by_hand_can_be_ended(tmp_path: Any) -> None:
    with Foundation(f"sqlite:///{tmp_path / 'begin.db'}") as fdn:
        db = fdn.database
        db.execute("CREATE TABLE t (x INTEGER)")
        db.execute("BEGIN")
        db.execute("INSERT INTO t VALUES (1)")
        db.execute("COMMIT")
        assert db.fetchall("SELECT x FROM t") == [(1,)]


def test_a_fork_while_a_thread_is_in_a_long_transaction_runs_the_child(tmp_path: Any) -> None:
    fdn = Foundation(f"sqlite:///{tmp_path / 'fork.db'}", sqlite_busy_timeout_ms=100)
    try:
        fdn.events.store({"type": "x", "data": {}})
        slow = (  # longer than the fork's wait for the thread (the busy timeout + 1 s)
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
            "WHERE x < 12000000) SELECT count(*) FROM c"
        )

        def long_transaction() -> None:
            with fdn.database.transaction() as tx:
                tx.fetchone(slow)

        worker = threading.Thread(target=long_transaction)
        worker.start()
        time.sleep(0.2)
        pid = os.fork()
        if pid == 0:  # the child must get here, and leave the parent's connections be
            os._exit(0)
        deadline = time.monotonic() + 20
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        if done[0] == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0  # not hung
        worker.join()
        assert len(fdn.events.get()) == 1  # the parent's connections still work
    finally:
        fdn.close()


def test_the_postgres_schema_setting_leaves_sqlite_alone(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foundation.database import migrate

    monkeypatch.setenv("FOUNDATION_POSTGRES_SCHEMA", "fdn")  # one environment for both
    url = f"sqlite:///{tmp_path / 'dev.db'}"
    with Foundation(url) as fdn:
        fdn.config.set("k", 1)
    assert migrate.current_revision(url, fdn.settings) == migrate.head_revision()


def test_offline_sql_with_a_schema_installs_into_it(pg_url: str) -> None:
    from tests.test_migrations import run_alembic

    settings = {"FOUNDATION_DATABASE_URL": pg_url, "FOUNDATION_POSTGRES_SCHEMA": "fdn"}
    done = run_alembic("upgrade", "head", "--sql", **settings)
    assert done.returncode == 0, done.stderr
    with psycopg.connect(DatabaseURL.parse(pg_url).conninfo, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")  # a fresh database
        conn.execute(done.stdout.encode())  # what a DBA runs in psql
        where = conn.execute(
            "SELECT DISTINCT table_schema FROM information_schema.tables "
            "WHERE table_name LIKE 'foundation%'"
        ).fetchall()
    assert where == [("fdn",)]
    with Foundation(pg_url, postgres_schema="fdn", migrate="check") as fdn:
        fdn.config.set("k", 1)


def test_the_pools_reconnect_every_second_at_most(monkeypatch: pytest.MonkeyPatch) -> None:
    import psycopg_pool

    from foundation.database import postgres

    attempt = postgres._Reconnect(timeout=300)
    delays = []
    for now in range(10):
        attempt.update_delay(float(now))
        delays.append(attempt.delay)
    assert delays[0] < 0.3 and max(delays) == 1.0  # psycopg_pool's own: 1, 2, 4 … 512
    used: list[Any] = []

    async def add(self: Any, attempt: Any, growing: bool = False) -> None:
        used.append(attempt)

    monkeypatch.setattr(
        psycopg_pool.ConnectionPool,
        "_add_connection",
        lambda self, a, growing=False: used.append(a),
    )
    monkeypatch.setattr(psycopg_pool.AsyncConnectionPool, "_add_connection", add)
    conninfo = "host=127.0.0.1 port=1"  # never connected: open=False
    postgres.ConnectionPool(conninfo, open=False)._add_connection(None)

    async def add_async() -> None:
        await postgres.AsyncConnectionPool(conninfo, open=False)._add_connection(None)

    asyncio.run(add_async())
    assert len(used) == 2 and all(isinstance(a, postgres._Reconnect) for a in used)


def test_the_limiter_and_breaker_refuse_inside_a_sqlite_transaction_too(tmp_path: Any) -> None:
    with Foundation(f"sqlite:///{tmp_path / 'tx.db'}") as fdn:
        calls = (
            lambda: fdn.rate_limiter.execute(lambda: None, key="api", max_requests=1),
            lambda: fdn.circuit_breaker.execute(_boom, name="payments", max_failures=2),
        )
        with fdn.database.transaction():
            for call in calls:
                with pytest.raises(FoundationError) as err:
                    call()
                assert err.value.code == "storage_error"  # not failed open, not swallowed
        fdn.rate_limiter.execute(lambda: None, key="api", max_requests=1)  # after: fine


async def test_the_limiter_refuses_inside_a_sqlite_transaction_async(tmp_path: Any) -> None:
    async with AsyncFoundation(f"sqlite:///{tmp_path / 'tx.db'}") as fdn:
        async with fdn.database.transaction():
            with pytest.raises(FoundationError) as err:
                await fdn.rate_limiter.execute(lambda: None, key="api", max_requests=1)
            assert err.value.code == "storage_error"


def _boom() -> None:
    raise RuntimeError("payment gateway down")
