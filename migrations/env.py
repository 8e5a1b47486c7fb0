"""alembic environment for Foundation's tables.

Run by ``foundation db upgrade``, by ``Foundation(url, migrate="upgrade")`` (which hands
its connection in ``config.attributes["connection"]``), or by plain ``alembic upgrade
head`` with ``FOUNDATION_DATABASE_URL`` set. Only tables named ``foundation_*`` are
Foundation's: an application's own tables in the same database are never touched, and
its own alembic history keeps its own version table.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from logging.config import fileConfig

from alembic import context
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from foundation.database.engine import create_engine
from foundation.database.errors import translate_errors
from foundation.database.migrate import (
    ADVISORY_LOCK_KEY,
    VERSION_TABLE,
    include_name,
    postgres_schema,
)
from foundation.database.schema import metadata
from foundation.database.url import DatabaseURL
from foundation.errors import FoundationError
from foundation.settings import DEFAULT_DATABASE_URL, build_settings

config = context.config

# Plain `alembic upgrade head` reads alembic.ini: apply its logging, as alembic's own
# templates do, so that "Running upgrade 0009 -> 0010" is printed. Foundation itself
# (and `foundation db`) builds its config in code, with no file: its logging is the
# application's business and is left alone.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    return (
        config.attributes.get("url")
        or os.environ.get("FOUNDATION_DATABASE_URL")
        or config.get_main_option("sqlalchemy.url")
        or DEFAULT_DATABASE_URL
    )


def _schema() -> str | None:
    """Settings.postgres_schema: given by Foundation, else from FOUNDATION_POSTGRES_SCHEMA
    (PostgreSQL only: SQLite would take it for an attached database)."""
    if "schema" in config.attributes:
        return config.attributes["schema"]  # type: ignore[no-any-return]
    return postgres_schema(DatabaseURL.parse(_url()), build_settings({}))


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        version_table_schema=_schema(),
        include_name=include_name,
        compare_type=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_offline() -> None:
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        schema = _schema()
        if schema:  # as _run and the engine do online (a plain identifier, validated)
            context.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            context.execute(f"SET search_path TO {schema}")
        context.run_migrations()


def _run(connection: Connection) -> None:
    steps = config.attributes.get("steps")  # what ran, for Foundation's report of it
    postgres = connection.dialect.name == "postgresql"
    _configure(
        connection=connection,
        render_as_batch=connection.dialect.name == "sqlite",
        # SQLite runs DDL in transactions too (our engine issues BEGIN IMMEDIATE), so a
        # failed revision leaves nothing half-done on either database.
        transactional_ddl=True,
        # PostgreSQL: one transaction per revision. A revision's DDL locks the tables it
        # changes until its transaction ends; all of them in one transaction held the
        # log (0014's trigger) while asking for the config table (0018's), which a
        # running node's config.set holds while its trigger appends to the log: a
        # deadlock, and the node's write failed. A failed revision leaves the schema at
        # the one before it, which the next upgrade continues from. SQLite's write
        # transaction locks the whole file: no such cycle, and all or nothing.
        transaction_per_migration=postgres,
        on_version_apply=(lambda ctx, step, heads, run_args: steps.append(step))
        if isinstance(steps, list)
        else None,
    )
    if not postgres:
        with context.begin_transaction():
            context.run_migrations()
        return
    # Several nodes may deploy at once: one upgrades, the others wait, then find the
    # schema at head and do nothing. A session lock: it spans the revisions' transactions.
    connection.exec_driver_sql(f"SELECT pg_advisory_lock({ADVISORY_LOCK_KEY})")
    try:
        schema = _schema()
        if schema:  # a plain identifier (validated by Settings); tables follow search_path
            connection.exec_driver_sql(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        connection.commit()
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()  # the version read, when no revision ran
    finally:
        # Released with the session anyway (the connection is closed after the run).
        with contextlib.suppress(Exception):
            connection.rollback()  # after a failure: the failed statement's transaction
            connection.exec_driver_sql(f"SELECT pg_advisory_unlock({ADVISORY_LOCK_KEY})")
            connection.commit()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url(), build_settings({"database_url": _url()}))
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    """A driver's error as the FoundationError it is (``storage_unavailable``...)."""
    with translate_errors(DatabaseURL.parse(_url()).masked):
        yield


@contextlib.contextmanager
def _told_as_alembic_tells() -> Iterator[None]:
    """Plain ``alembic`` (an alembic.ini): a bad URL or setting, a database it cannot
    reach or write, is one line as alembic prints its own errors (``FAILED: ...``), as
    ``foundation db upgrade`` says it, not a traceback."""
    try:
        with _translated():
            yield
    except FoundationError as exc:
        raise CommandError(str(exc)) from None


# Runs built in code (``foundation db``, ``alembic_config()``) have no file: their callers
# get the FoundationError itself. Foundation(migrate="upgrade") hands its own connection
# and translates what it raises.
if config.config_file_name:
    guard: contextlib.AbstractContextManager[None] = _told_as_alembic_tells()
elif config.attributes.get("connection") is None:
    guard = _translated()
else:
    guard = contextlib.nullcontext()
with guard:
    if context.is_offline_mode():
        run_offline()
    else:
        run_online()
