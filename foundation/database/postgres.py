"""How every PostgreSQL connection of Foundation is opened (pool, listener, engine).

One place for the connect timeout, the ``application_name`` operators see in
``pg_stat_activity`` (``foundation:<node>`` for pooled connections,
``foundation-listen:<node>`` for the change feed), UTC as the session's time zone, the
optional schema (``search_path``) that ``Settings.postgres_schema`` puts Foundation's
tables in, and the adapters of the connections Foundation opens itself (a faster JSON
loader).
"""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.adapt import AdaptersMap
from psycopg.types.json import set_json_loads

from foundation.database.codec import load_json_bytes
from foundation.settings import Settings

__all__ = ["ADAPTERS", "connect_kwargs", "driver_kwargs"]

# psycopg's own adapters, but JSON decoded by Foundation's faster loader. Given to the
# connections Foundation opens itself only, never set globally: an application's other
# psycopg connections keep theirs.
ADAPTERS = AdaptersMap(psycopg.adapters)
set_json_loads(load_json_bytes, ADAPTERS)


def connect_kwargs(settings: Settings, purpose: str = "foundation") -> dict[str, Any]:
    # Timestamps come back in UTC, whatever the server's or the role's TimeZone: as the
    # tail cache and SQLite give them, so one record reads the same from any source.
    options = "-c TimeZone=UTC"
    if settings.postgres_schema:
        # Validated as a plain identifier by Settings, so it needs no quoting here.
        options += f" -c search_path={settings.postgres_schema}"
    return {
        "connect_timeout": max(1, int(settings.connect_timeout_s)),
        "application_name": f"{purpose}:{settings.node_id}"[:63],
        "options": options,
    }


def driver_kwargs(settings: Settings, purpose: str = "foundation") -> dict[str, Any]:
    """``connect_kwargs`` and Foundation's adapters, for ``psycopg.connect`` and pools
    (not for SQLAlchemy's engine, whose dialect decodes JSON its own way)."""
    return {**connect_kwargs(settings, purpose), "context": ADAPTERS}
