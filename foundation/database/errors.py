"""The one boundary where driver exceptions become :class:`FoundationError`.

Every call into ``sqlite3``, ``aiosqlite`` or ``psycopg`` in Foundation runs under
:func:`translate_errors`; nothing from a driver reaches a user.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import psycopg.errors
import psycopg_pool
from sqlalchemy import exc as sa_exc

from foundation.errors import (
    FoundationError,
    StorageError,
    StorageUnavailableError,
)

__all__ = [
    "forget_plans",
    "forget_plans_async",
    "is_disconnect_before_statement",
    "is_stale_plan",
    "never_sent",
    "remember_backend",
    "translate",
    "translate_errors",
]

# SQLSTATE class 08 (connection exception) and 57P (operator intervention: the
# backend was terminated or the server is shutting down or starting).
_UNAVAILABLE_SQLSTATE_PREFIXES = ("08", "57P", "53")

_BACKEND_PID = "_foundation_backend_pid"


def remember_backend(exc: BaseException, pid: int) -> None:
    """Note on a psycopg error the server process the failed statement ran in (read
    before the statement: a broken connection no longer tells). A statement whose reply
    was lost may still be running there; a caller that must know whether it landed asks
    the server about that process (``backend_pid`` in the error's context)."""
    if pid and not hasattr(exc, _BACKEND_PID):
        setattr(exc, _BACKEND_PID, pid)


def translate(exc: BaseException, url: str) -> FoundationError:
    """The FoundationError for a driver exception; ``url`` must already be masked."""
    if isinstance(exc, FoundationError):
        return exc
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        return translate(exc.orig, url)  # SQLAlchemy wraps the driver's own error
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.PoolClosed):
        return StorageUnavailableError(
            f"no connection to the database at {url} could be had in time: {exc}",
            context={"url": url, "driver_error": type(exc).__name__},
        )
    if isinstance(exc, psycopg.Error):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        # OperationalError is psycopg's "could not talk to the server" family (refused,
        # terminated, database gone); the listed classes are the same from the server.
        # Class 54 (a program limit exceeded: a value too large, too many columns) is an
        # OperationalError too, but a retry cannot succeed: refused, not unavailable.
        if is_stale_plan(exc):
            return StorageUnavailableError(
                f"the database at {url} changed a table under a plan cached on this "
                f"connection (a migration ran): the statement did not run; run it again",
                context={"url": url, "sqlstate": sqlstate, "driver_error": type(exc).__name__},
            )
        if not sqlstate.startswith("54") and (
            isinstance(exc, psycopg.OperationalError)
            or sqlstate.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES)
        ):
            context = {"url": url, "sqlstate": sqlstate, "driver_error": type(exc).__name__}
            pid = getattr(exc, _BACKEND_PID, None)
            if pid is not None:
                context["backend_pid"] = pid
            return StorageUnavailableError(
                f"the database at {url} is unavailable: {detail}", context=context
            )
        return StorageError(
            f"the database at {url} refused the operation: {detail}",
            context={"url": url, "sqlstate": sqlstate, "driver_error": type(exc).__name__},
        )
    if isinstance(exc, sqlite3.Error):
        message = str(exc)
        unavailable = isinstance(exc, sqlite3.OperationalError) and any(
            marker in message
            # (a full disk too, as PostgreSQL's class 53: space may be freed)
            for marker in ("locked", "busy", "unable to open", "disk I/O", "readonly", "is full")
        )
        cls = StorageUnavailableError if unavailable else StorageError
        return cls(
            f"the SQLite database at {url} "
            f"{'is unavailable' if unavailable else 'refused the operation'}: {message}",
            context={
                "url": url,
                "driver_error": type(exc).__name__,
                "sqlite_errorname": getattr(exc, "sqlite_errorname", None),
            },
        )
    return StorageError(
        f"unexpected database failure at {url}: {type(exc).__name__}: {exc}",
        context={"url": url, "driver_error": type(exc).__name__},
    )


def is_disconnect_before_statement(exc: BaseException) -> bool:
    """True when a pooled PostgreSQL connection was found dead before the statement ran.

    A backend terminated while idle (``pg_terminate_backend``, a server restart) leaves
    a FATAL 57P0x message that the client reads on its next query: the query itself
    never ran, so it is safe to run it again on a fresh connection.
    """
    if isinstance(exc, psycopg.OperationalError):
        sqlstate = getattr(exc, "sqlstate", None) or ""
        return sqlstate.startswith("57P")
    return False


def is_stale_plan(exc: BaseException) -> bool:
    """True when a plan cached on a connection meets a table a migration changed since:
    a statement psycopg prepared (``prepare_threshold``), which PostgreSQL refuses to run
    ("cached plan must not change result type"), or a statement inside one of
    Foundation's trigger functions, whose plans PL/pgSQL keeps per session ("type of
    parameter N ... does not match that when preparing the plan"). It fails so on that
    connection until :func:`forget_plans`; the statement and its transaction were rolled
    back: it is safe to run it again."""
    if isinstance(exc, psycopg.errors.FeatureNotSupported):
        return "cached plan must not" in str(exc)
    if isinstance(exc, psycopg.errors.DatatypeMismatch):
        return "when preparing the plan" in str(exc)
    return False


# The connection's prepared statements (psycopg forgets its record of them on seeing
# this command), then the plans its functions cached.
_FORGET_PLANS = ("DEALLOCATE ALL", "DISCARD PLANS")


def forget_plans(conn: psycopg.Connection[Any]) -> None:
    """Drop a connection's cached plans after :func:`is_stale_plan`. A connection in a
    transaction is left alone (its rollback comes first): its next stale plan, run
    outside one, is dropped then."""
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        with contextlib.suppress(psycopg.Error):  # a broken connection: the pool drops it
            for command in _FORGET_PLANS:
                conn.execute(command)


async def forget_plans_async(conn: psycopg.AsyncConnection[Any]) -> None:
    """As :func:`forget_plans`, awaited."""
    if conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
        with contextlib.suppress(psycopg.Error):
            for command in _FORGET_PLANS:
                await conn.execute(command)


_DRIVER_ERRORS = (
    sqlite3.Error,
    psycopg.Error,
    psycopg_pool.PoolTimeout,
    psycopg_pool.PoolClosed,
    sa_exc.DBAPIError,
)


def never_sent(exc: FoundationError) -> bool:
    """Whether the failed call's statement never reached the server: no connection could
    be had (the pool's wait ran out, or it was closed). Nothing of it is in doubt."""
    return exc.context.get("driver_error") in ("PoolTimeout", "PoolClosed")


@contextmanager
def translate_errors(url: str) -> Iterator[None]:
    try:
        yield
    except _DRIVER_ERRORS as exc:
        raise translate(exc, url) from exc
