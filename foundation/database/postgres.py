"""How every PostgreSQL connection of Foundation is opened (pool, listener, engine).

One place for the connect timeout, the ``application_name`` operators see in
``pg_stat_activity`` (``foundation:<node>`` for pooled connections,
``foundation-listen:<node>`` for the change feed), UTC as the session's time zone, the
optional schema (``search_path``) that ``Settings.postgres_schema`` puts Foundation's
tables in, the adapters of the connections Foundation opens itself (a faster JSON
loader), and the pools that hand out the connection used last.
"""

from __future__ import annotations

from collections import deque
from typing import Any

import psycopg
import psycopg_pool
from psycopg.adapt import AdaptersMap
from psycopg.types.json import set_json_loads
from psycopg_pool.base import AttemptWithBackoff

from foundation.database.codec import load_json_bytes
from foundation.database.url import DatabaseURL
from foundation.settings import Settings

__all__ = [
    "ADAPTERS",
    "AsyncConnectionPool",
    "ConnectionPool",
    "connect_kwargs",
    "driver_kwargs",
    "pool_wait_s",
]

# psycopg's own adapters, but JSON decoded by Foundation's faster loader. Given to the
# connections Foundation opens itself only, never set globally: an application's other
# psycopg connections keep theirs.
ADAPTERS = AdaptersMap(psycopg.adapters)
set_json_loads(load_json_bytes, ADAPTERS)


def connect_kwargs(
    settings: Settings, url: DatabaseURL, purpose: str = "foundation"
) -> dict[str, Any]:
    # Timestamps come back in UTC, whatever the server's or the role's TimeZone: as the
    # tail cache and SQLite give them, so one record reads the same from any source.
    options = "-c TimeZone=UTC"
    if settings.postgres_schema:
        # Validated as a plain identifier by Settings, so it needs no quoting here.
        options += f" -c search_path={settings.postgres_schema}"
    # The URL's own (?options=-c%20statement_timeout%3D5000) are kept, Foundation's after
    # them: this keyword replaces the URL's value, and the last -c of a setting wins.
    given = url.url.query.get("options")
    if given:
        options = f"{given if isinstance(given, str) else given[-1]} {options}"
    return {
        "connect_timeout": max(1, int(settings.connect_timeout_s)),
        "application_name": f"{purpose}:{settings.node_id}"[:63],
        "options": options,
    }


def pool_wait_s(settings: Settings) -> float:
    """How long a caller waits for a pooled connection: ``connect_timeout_s``, one second
    at least. libpq counts a connect's time limit in whole seconds (two at least), and a
    shorter wait would fail callers while a connection is free or being opened."""
    return max(1.0, settings.connect_timeout_s)


def driver_kwargs(
    settings: Settings, url: DatabaseURL, purpose: str = "foundation"
) -> dict[str, Any]:
    """``connect_kwargs`` and Foundation's adapters, for ``psycopg.connect`` and pools
    (not for SQLAlchemy's engine, whose dialect decodes JSON its own way)."""
    return {**connect_kwargs(settings, url, purpose), "context": ADAPTERS}


# psycopg's pools hand out their idle connections in turn (first returned, first out), so
# a process whose work comes one statement at a time still spreads it over every
# connection the pool ever opened, each a server process whose caches have gone cold
# since its last turn. Measured here with two pooled connections and one thread storing
# events: 460 µs a store in turn, 370 µs on the connection used last (the statement alone
# on one connection: 355 µs). Most recently used first also lets the connections a burst
# added sit idle until the pool's ``max_idle`` closes them (psycopg's shrink closes the
# longest idle, at the other end). Only the order changes: the pool's checks, growth and
# statistics are its own.


def _most_recent_first(idle: object) -> None:
    # ``_pool`` is the pool's deque of idle connections, returned ones appended on the
    # right and taken from the left (psycopg_pool 3.2 and 3.3); anything else: left as is.
    if isinstance(idle, deque) and len(idle) > 1:
        idle.rotate(1)


class _Reconnect(AttemptWithBackoff):
    """psycopg_pool's reconnection after the server went away, its waits shorter.

    Its own start at 1 s and double without bound (1, 2, 4 … s): a server back after
    1.5 s was reached at 3 s, one back after 16 s at 31 s, past a 30 s lease: a node
    lost its names to an outage shorter than their TTL. Here: from 0.25 s, at most 1 s
    apart (a refused connection costs the server next to nothing)."""

    INITIAL_DELAY = 0.25
    MAX_DELAY = 1.0

    def update_delay(self, now: float) -> None:
        super().update_delay(now)
        self.delay = min(self.delay, self.MAX_DELAY)


class ConnectionPool(psycopg_pool.ConnectionPool[psycopg.Connection[Any]]):
    """psycopg's pool, the connection returned last handed out first, reconnecting every
    second at most (see ``_Reconnect``)."""

    def _get_ready_connection(self, timeout: float | None) -> psycopg.Connection[Any] | None:
        _most_recent_first(getattr(self, "_pool", None))  # under the pool's lock
        return super()._get_ready_connection(timeout)

    def _add_connection(self, attempt: AttemptWithBackoff | None, growing: bool = False) -> None:
        super()._add_connection(attempt or _Reconnect(timeout=self.reconnect_timeout), growing)


class AsyncConnectionPool(psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]]):
    """psycopg's async pool, as :class:`ConnectionPool`."""

    async def _add_connection(
        self, attempt: AttemptWithBackoff | None, growing: bool = False
    ) -> None:
        attempt = attempt or _Reconnect(timeout=self.reconnect_timeout)
        await super()._add_connection(attempt, growing)

    async def _get_ready_connection(
        self, timeout: float | None
    ) -> psycopg.AsyncConnection[Any] | None:
        _most_recent_first(getattr(self, "_pool", None))
        return await super()._get_ready_connection(timeout)
