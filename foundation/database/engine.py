"""SQLAlchemy engines set up as Foundation's own connections are.

Foundation's hot paths run on the driver (see :mod:`.statements`); these engines serve
migrations, the CLI, and users who want to query Foundation's tables with SQLAlchemy.
SQLite engines use WAL, the busy timeout, foreign keys and the configured
``synchronous``, and begin transactions with ``BEGIN IMMEDIATE`` (the pysqlite driver
would otherwise commit DDL statement by statement).
"""

from __future__ import annotations

from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.ext.asyncio import create_async_engine as sa_create_async_engine

from foundation.database.postgres import connect_kwargs
from foundation.database.url import DatabaseURL
from foundation.settings import Settings

__all__ = ["create_async_engine", "create_engine"]


def _sqlite_setup(settings: Settings) -> tuple[Any, Any]:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(settings.sqlite_busy_timeout_ms)}")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute(f"PRAGMA synchronous = {settings.sqlite_synchronous}")
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    def on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return on_connect, on_begin


def create_engine(url: str | DatabaseURL, settings: Settings | None = None) -> sa.Engine:
    """A sync engine (pooled on PostgreSQL) for ``sqlite:///…`` or ``postgresql+psycopg://…``."""
    settings = settings or Settings()
    parsed = url if isinstance(url, DatabaseURL) else DatabaseURL.parse(url)
    if parsed.backend == "sqlite":
        parsed.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            parsed.sqlalchemy_url(),
            connect_args={"timeout": settings.sqlite_busy_timeout_ms / 1000},
        )
        on_connect, on_begin = _sqlite_setup(settings)
        event.listen(engine, "connect", on_connect)
        event.listen(engine, "begin", on_begin)
        return engine
    conninfo, kwargs = parsed.conninfo, connect_kwargs(settings, parsed)
    return sa.create_engine(
        parsed.sqlalchemy_url(),
        pool_size=settings.pool_max_size,
        pool_pre_ping=True,
        # Connected as Foundation's own connections are (the same conninfo): SQLAlchemy's
        # dialect would read the URL's parts again, its host undecoded.
        creator=lambda: psycopg.connect(conninfo, **kwargs),
    )


def create_async_engine(url: str | DatabaseURL, settings: Settings | None = None) -> AsyncEngine:
    """The asyncio twin of :func:`create_engine` (aiosqlite / psycopg async)."""
    settings = settings or Settings()
    parsed = url if isinstance(url, DatabaseURL) else DatabaseURL.parse(url)
    if parsed.backend == "sqlite":
        parsed.sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa_create_async_engine(
            parsed.sqlalchemy_url(asynchronous=True),
            connect_args={"timeout": settings.sqlite_busy_timeout_ms / 1000},
        )
        on_connect, on_begin = _sqlite_setup(settings)
        event.listen(engine.sync_engine, "connect", on_connect)
        event.listen(engine.sync_engine, "begin", on_begin)
        return engine
    conninfo, kwargs = parsed.conninfo, connect_kwargs(settings, parsed)
    return sa_create_async_engine(
        parsed.sqlalchemy_url(asynchronous=True),
        pool_size=settings.pool_max_size,
        pool_pre_ping=True,
        async_creator=lambda: psycopg.AsyncConnection.connect(conninfo, **kwargs),
    )
