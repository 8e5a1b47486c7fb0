"""Fixtures shared by every test: a fresh SQLite file or PostgreSQL database per test.

PostgreSQL comes from ``FOUNDATION_TEST_POSTGRES_URL``; when it is unset the suite tries
the local server (127.0.0.1:5432, user postgres, database test), then testcontainers
where a Docker engine answers, and otherwise skips the PostgreSQL half saying why.
With ``FOUNDATION_TEST_REQUIRE_POSTGRES=1`` (CI) a missing PostgreSQL fails the run.

Each test gets its own database cloned from a template migrated once per session
(``CREATE DATABASE … TEMPLATE``), dropped afterwards; SQLite tests get a copy of a
migrated file in their own temporary folder.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from foundation import AsyncFoundation, Foundation
from foundation.database import migrate
from foundation.database.url import DatabaseURL

LOCAL_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
REQUIRE_POSTGRES = os.environ.get("FOUNDATION_TEST_REQUIRE_POSTGRES") == "1"

logging.getLogger("alembic").setLevel(logging.WARNING)


def _reachable(url: str) -> bool:
    try:
        psycopg.connect(DatabaseURL.parse(url).conninfo, connect_timeout=3).close()
        return True
    except psycopg.Error:
        return False


def _docker_postgres() -> tuple[str | None, object | None, str]:
    try:
        from testcontainers.postgres import PostgresContainer  # type: ignore[import-untyped]
    except ImportError:
        return None, None, "testcontainers is not installed"
    try:
        container = PostgresContainer("postgres:16-alpine", driver="psycopg")
        container.start()
    except Exception as exc:  # no Docker engine answers here
        return None, None, f"no local PostgreSQL and no Docker engine ({type(exc).__name__})"
    return container.get_connection_url(), container, ""


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server's maintenance database (skip or fail if none)."""
    url = os.environ.get("FOUNDATION_TEST_POSTGRES_URL")
    container = None
    reason = ""
    if url is None:
        if _reachable(LOCAL_POSTGRES):
            url = LOCAL_POSTGRES
        else:
            url, container, reason = _docker_postgres()
    elif not _reachable(url):
        reason = f"FOUNDATION_TEST_POSTGRES_URL ({DatabaseURL.parse(url).masked}) is unreachable"
        url = None
    if url is None:
        if REQUIRE_POSTGRES:
            pytest.fail(f"PostgreSQL is required (FOUNDATION_TEST_REQUIRE_POSTGRES=1): {reason}")
        pytest.skip(f"PostgreSQL tests skipped: {reason}")
    yield url
    if container is not None:
        container.stop()  # type: ignore[attr-defined]


def _admin(server_url: str) -> psycopg.Connection:
    return psycopg.connect(DatabaseURL.parse(server_url).conninfo, autocommit=True)


def _with_database(server_url: str, name: str) -> str:
    return (
        DatabaseURL.parse(server_url).url.set(database=name).render_as_string(hide_password=False)
    )


@contextlib.contextmanager
def fresh_postgres(server_url: str, template: str | None = None) -> Iterator[str]:
    name = f"foundation_test_{uuid.uuid4().hex[:12]}"
    with _admin(server_url) as conn:
        clause = f" TEMPLATE {template}" if template else ""
        conn.execute(f"CREATE DATABASE {name}{clause}")
    try:
        yield _with_database(server_url, name)
    finally:
        with _admin(server_url) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def postgres_template(postgres_server: str) -> Iterator[str]:
    name = f"foundation_tmpl_{uuid.uuid4().hex[:8]}"
    with _admin(postgres_server) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        migrate.upgrade(_with_database(postgres_server, name))
        yield name
    finally:
        with _admin(postgres_server) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty Foundation database of the test's backend."""
    if backend == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "foundation.db"
        shutil.copyfile(template, path)
        yield f"sqlite:///{path}"
    else:
        server = request.getfixturevalue("postgres_server")
        tmpl = request.getfixturevalue("postgres_template")
        with fresh_postgres(server, tmpl) as url:
            yield url


@pytest.fixture
def pg_url(postgres_server: str, postgres_template: str) -> Iterator[str]:
    """A migrated, empty PostgreSQL database, for what only a server does (cut
    connections, other sessions' locks, plans, NOTIFY)."""
    with fresh_postgres(postgres_server, postgres_template) as url:
        yield url


@pytest.fixture
def empty_db_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables at all (for migration tests)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'empty.db'}"
    else:
        with fresh_postgres(request.getfixturevalue("postgres_server")) as url:
            yield url


@pytest.fixture
def fdn(db_url: str) -> Iterator[Foundation]:
    with Foundation(db_url, migrate="check", poll_interval_ms=5) as instance:
        yield instance


@pytest.fixture
async def afdn(db_url: str) -> AsyncIterator[AsyncFoundation]:
    async with AsyncFoundation(db_url, migrate="check", poll_interval_ms=5) as instance:
        yield instance
