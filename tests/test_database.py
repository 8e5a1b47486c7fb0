"""The database layer: URLs, pragmas, the error boundary, and a database that goes away."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from foundation import (
    ConfigError,
    Foundation,
    FoundationError,
    StorageError,
    StorageUnavailableError,
)
from foundation.database import create_engine, mask_url
from foundation.database.codec import load_json_bytes
from foundation.database.postgres import ADAPTERS
from foundation.database.url import DatabaseURL
from tests.helpers import wait_for


def test_mask_url_hides_the_password() -> None:
    assert mask_url("postgresql+psycopg://app:s3cret@db:5432/x") == (
        "postgresql+psycopg://app:***@db:5432/x"
    )


@pytest.mark.parametrize(
    "url",
    ["mysql://x@y/z", "sqlite://", "sqlite:///:memory:", "not a url", "postgresql+asyncpg://x/y"],
)
def test_unsupported_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        DatabaseURL.parse(url)
    assert info.value.code == "config_error"


def test_unreachable_postgres_is_storage_unavailable_with_password_masked() -> None:
    url = "postgresql+psycopg://app:topsecret@127.0.0.1:1/nowhere"
    with pytest.raises(StorageUnavailableError) as info:
        Foundation(url, connect_timeout_s=1)
    err = info.value
    assert err.code == "storage_unavailable"
    assert "topsecret" not in str(err.to_dict())
    assert "***" in err.message
    assert err.context["url"] == "postgresql+psycopg://app:***@127.0.0.1:1/nowhere"


def test_invalid_settings_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Foundation(f"sqlite:///{tmp_path / 'x.db'}", sqlite_synchronous="SOMETIMES")
    assert info.value.context["setting"] == "sqlite_synchronous"
    with pytest.raises(ConfigError):
        Foundation(12)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as typo:
        Foundation(f"sqlite:///{tmp_path / 'x.db'}", poll_intervall_ms=5)
    assert typo.value.context["setting"] == "poll_intervall_ms"


@pytest.mark.parametrize(("setting", "expected"), [("NORMAL", 1), ("FULL", 2)])
def test_sqlite_connections_use_wal_busy_timeout_and_foreign_keys(
    tmp_path: Path, setting: str, expected: int
) -> None:
    url = f"sqlite:///{tmp_path / 'p.db'}"
    fdn = Foundation(url, sqlite_synchronous=setting, sqlite_busy_timeout_ms=1234)
    with fdn, fdn.database.connection() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == expected
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 1234
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    engine.dispose()


def test_sqlite_relative_paths_and_new_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with Foundation("sqlite:///data/app.db") as fdn:
        fdn.config.set("k", 1)
    assert (tmp_path / "data" / "app.db").exists()


def test_locked_sqlite_keeps_serving_reads_and_refuses_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'locked.db'}"
    with Foundation(url, sqlite_busy_timeout_ms=50) as fdn:
        fdn.config.set("k", "before")
        blocker = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(StorageUnavailableError) as info:
                fdn.config.set("k", "after")
            assert "locked" in info.value.message
            assert fdn.config.get("k") == "before"
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        fdn.config.set("k", "after")
        assert fdn.config.get("k") == "after"


def test_postgres_that_goes_away_keeps_serving_reads(postgres_server: str) -> None:
    from tests.conftest import fresh_postgres

    with fresh_postgres(postgres_server) as url:
        fdn = Foundation(url, migrate="upgrade", connect_timeout_s=1)
        try:
            fdn.config.set("k", "before")
            name = DatabaseURL.parse(url).url.database
            with psycopg.connect(DatabaseURL.parse(postgres_server).conninfo, autocommit=True) as c:
                c.execute(f"DROP DATABASE {name} WITH (FORCE)")
            with pytest.raises(StorageUnavailableError) as info:
                fdn.config.set("k", "after")
            assert isinstance(info.value, FoundationError)
            assert fdn.config.get("k") == "before"
        finally:
            fdn.close()


def test_a_postgres_limit_is_a_refusal_not_an_outage(postgres_server: str) -> None:
    """psycopg raises class 54 (program limit exceeded) as an OperationalError, its
    family for a server it cannot talk to; "unavailable" would invite a retry that can
    never succeed."""
    from tests.conftest import fresh_postgres

    with fresh_postgres(postgres_server) as url, Foundation(url, migrate="upgrade") as fdn:
        with pytest.raises(StorageError) as info:
            fdn.database.fetchone("SELECT concat(" + ",".join(["1"] * 101) + ")")
        assert not isinstance(info.value, StorageUnavailableError)
        assert info.value.context["sqlstate"] == "54023"
        assert "refused the operation" in str(info.value)


def test_closed_instance_refuses_writes(db_url: str) -> None:
    fdn = Foundation(db_url, migrate="skip")
    fdn.config.set("k", 1)
    fdn.close()
    fdn.close()  # twice is fine
    with pytest.raises(StorageUnavailableError):
        fdn.config.set("k", 2)
    assert fdn.config.get("k") == 1


async def test_async_engine_is_set_up_like_the_sync_one(tmp_path: Path) -> None:
    from foundation.database import create_async_engine

    engine = create_async_engine(f"sqlite:///{tmp_path / 'a.db'}")
    async with engine.connect() as conn:
        assert (await conn.exec_driver_sql("PRAGMA journal_mode")).scalar() == "wal"
        assert (await conn.exec_driver_sql("PRAGMA foreign_keys")).scalar() == 1
    await engine.dispose()


def test_postgres_schema_setting_keeps_tables_in_that_schema(postgres_server: str) -> None:
    from tests.conftest import fresh_postgres

    with fresh_postgres(postgres_server) as url:
        with Foundation(url, migrate="upgrade", postgres_schema="fdn_app") as a:
            a.config.set("k", "in-schema")
            stored = a.events.store({"type": "in-schema", "stream_id": "s"})  # the function too
            with Foundation(url, postgres_schema="fdn_app") as b:
                assert b.config.get("k") == "in-schema"
                assert b.events.get(type="in-schema") == [stored]
        with psycopg.connect(DatabaseURL.parse(url).conninfo) as conn:
            schemas = conn.execute(
                "SELECT DISTINCT table_schema FROM information_schema.tables "
                "WHERE table_name LIKE 'foundation_%'"
            ).fetchall()
            assert schemas == [("fdn_app",)]
            assert conn.execute(
                "SELECT count(*) FROM fdn_app.foundation_config_history"
            ).fetchone() == (1,)


def test_plain_sql_in_another_search_path_audits_into_the_schemas_own_tables(
    postgres_server: str,
) -> None:
    """Functions that name tables find them in their own schema, not the caller's
    search_path: a psql session (search_path public) that updates fdn_app's config while
    another install lives in public writes fdn_app's history and log, not public's."""
    from tests.conftest import fresh_postgres

    with fresh_postgres(postgres_server) as url:
        Foundation(url, migrate="upgrade").close()  # another install, in public
        with Foundation(url, migrate="upgrade", postgres_schema="fdn_app") as fdn:
            fdn.config.set("port", 1)
            with psycopg.connect(DatabaseURL.parse(url).conninfo, autocommit=True) as psql:
                psql.execute("UPDATE fdn_app.foundation_config SET value = '2' WHERE key = 'port'")
                counts = [
                    psql.execute(f"SELECT count(*) FROM {table}").fetchone()
                    for table in (
                        "public.foundation_config_history",
                        "public.foundation_events",
                        "fdn_app.foundation_config_history",
                    )
                ]
                assert counts == [(0,), (0,), (2,)]
            wait_for(lambda: fdn.config.get("port") == 2)
            [change, _] = fdn.config.history("port")
            assert (change.old_value, change.new_value, change.changed_by) == (1, 2, "sql:postgres")
            events = fdn.events.get(type="foundation.config.changed")
            assert [e.data["new"] for e in events] == [1, 2]


def test_postgres_timestamps_come_back_in_utc_whatever_the_server_zone(
    postgres_server: str,
) -> None:
    """The tail cache and SQLite give UTC: a read from PostgreSQL must not differ by its
    session's TimeZone (equal instants, but another tzinfo and repr)."""
    from tests.conftest import fresh_postgres

    with fresh_postgres(postgres_server) as url:
        name = DatabaseURL.parse(url).url.database
        with psycopg.connect(DatabaseURL.parse(postgres_server).conninfo, autocommit=True) as c:
            c.execute(f"ALTER DATABASE {name} SET TimeZone = 'Asia/Tokyo'")
        with Foundation(url, migrate="upgrade", events_tail_size=0) as fdn:
            stored = fdn.events.store({"type": "t"})
            [read] = fdn.events.get(type="t")
            assert read == stored
            assert str(read.recorded_at) == str(stored.recorded_at)
            assert read.recorded_at.utcoffset() == timedelta(0)


def test_postgres_schema_must_be_a_plain_identifier() -> None:
    with pytest.raises(ConfigError) as info:
        Foundation("postgresql+psycopg://u@127.0.0.1/x", postgres_schema="x; DROP TABLE y")
    assert info.value.context["setting"] == "postgres_schema"


JSON_VALUES = [
    {},
    [],
    {"a": [1, 2.5, None, True, False], "é": "ünïcödé ✓", "nested": {"deep": [[{}]]}},
    'a string with \\ " and \n',
    12345678901234567890123,
    -0.0,
    1e300,
    None,
]


def test_foundation_decodes_postgres_json_as_psycopg_does(postgres_server: str) -> None:
    import json

    from tests.conftest import fresh_postgres

    with fresh_postgres(postgres_server) as url:
        fdn = Foundation(url, migrate="upgrade")
        try:
            conninfo = DatabaseURL.parse(url).conninfo
            with psycopg.connect(conninfo, autocommit=True) as plain:
                for value in JSON_VALUES:
                    text = json.dumps(value)
                    ours = fdn.events._db.fetchone("SELECT %(v)s::jsonb", {"v": text})
                    theirs = plain.execute("SELECT %s::jsonb", (text,)).fetchone()
                    assert ours is not None and theirs is not None
                    # (jsonb keeps 1e300 as the number's digits: an int for both)
                    assert ours[0] == theirs[0]
                    assert type(ours[0]) is type(theirs[0])
                # Foundation's loader is its connections' own, not set on psycopg globally.
                jsonb = psycopg.adapters.types["jsonb"].oid
                theirs_loader: Any = plain.adapters.get_loader(jsonb, 0)
                ours_loader: Any = ADAPTERS.get_loader(jsonb, 0)
                assert theirs_loader._loads is json.loads
                assert ours_loader._loads is load_json_bytes
            stored = fdn.events.store({"type": "t", "data": JSON_VALUES[2]})
            fdn.events.tail_cache.size = 0  # from the database
            assert fdn.events.get(type="t") == [stored]
        finally:
            fdn.close()


def _backend_pid(conn: Any) -> int:
    return int(conn.info.backend_pid)


def test_the_pool_hands_out_the_connection_used_last(postgres_server: str) -> None:
    # psycopg's own pool takes its idle connections in turn: a process storing one
    # event at a time would wake a cold server process on every call.
    from foundation.database.postgres import ConnectionPool

    conninfo = DatabaseURL.parse(postgres_server).conninfo
    with ConnectionPool(conninfo, min_size=3, max_size=3, kwargs={"autocommit": True}) as pool:
        pool.wait()
        first, second, third = pool.getconn(), pool.getconn(), pool.getconn()
        for conn in (first, second, third):
            pool.putconn(conn)
        for _ in range(4):
            with pool.connection() as conn:
                assert _backend_pid(conn) == _backend_pid(third)
                conn.execute("SELECT 1")
        # Two at once: the two used last, the longest idle left for the pool to close.
        with pool.connection() as a, pool.connection() as b:
            assert {_backend_pid(a), _backend_pid(b)} == {
                _backend_pid(third),
                _backend_pid(second),
            }
        assert pool.get_stats()["pool_available"] == 3


async def test_the_async_pool_hands_out_the_connection_used_last(postgres_server: str) -> None:
    from foundation.database.postgres import AsyncConnectionPool

    conninfo = DatabaseURL.parse(postgres_server).conninfo
    async with AsyncConnectionPool(
        conninfo, min_size=3, max_size=3, kwargs={"autocommit": True}
    ) as pool:
        await pool.wait()
        taken = [await pool.getconn() for _ in range(3)]
        for conn in taken:
            await pool.putconn(conn)
        for _ in range(4):
            async with pool.connection() as conn:
                assert _backend_pid(conn) == _backend_pid(taken[-1])
                await conn.execute("SELECT 1")


def test_foundation_stores_on_the_connection_it_used_last(postgres_server: str) -> None:
    from tests.conftest import fresh_postgres

    with fresh_postgres(postgres_server) as url:
        fdn = Foundation(url, migrate="upgrade", pool_min_size=3)
        try:
            db = fdn.events._db
            assert db._pool is not None
            db._pool.wait()
            pids = {db.fetchone("SELECT pg_backend_pid()")[0] for _ in range(6)}  # type: ignore[index]
            assert len(pids) == 1
        finally:
            fdn.close()


@pytest.mark.parametrize("timeout", [5e-324, 1e-9, 0.001])
def test_a_tiny_connect_timeout_still_gets_a_free_connection(
    postgres_server: str, timeout: float
) -> None:
    # The pool's wait was the setting itself: shorter than handing out a free connection.
    from tests.conftest import fresh_postgres

    with fresh_postgres(postgres_server) as url:
        Foundation(url, migrate="upgrade").close()
        for _ in range(3):
            with Foundation(url, migrate="check", connect_timeout_s=timeout) as fdn:
                fdn.config.set("k", 1)
                assert fdn.config.get("k") == 1
