"""How values cross each driver: JSON, timestamps and booleans, read and written.

Both drivers take JSON as text (psycopg sends a ``str`` untyped, so PostgreSQL casts it
to ``jsonb``). PostgreSQL hands JSONB back decoded and timestamps as aware datetimes;
SQLite hands back text, kept as ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC so that it sorts
and works with SQLite's date functions.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from foundation.database.url import Backend

__all__ = ["Codec", "codec_for", "load_json_bytes", "scan_json"]

_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def scan_json(text: str) -> Any:
    """``json.loads(text)`` for text a database wrote: the C scanner without the Python
    wrapper of json.loads, which costs as much as the scan for small values."""
    try:
        result, end = _scan(text, 0)
    except StopIteration:
        return json.loads(text)  # raises a proper JSONDecodeError
    if end != len(text):
        return json.loads(text)  # trailing text: someone wrote it by hand
    return result


def load_json_bytes(data: str | bytes) -> Any:
    """psycopg's JSON loader on Foundation's connections (``postgres.ADAPTERS``):
    ``json.loads`` of bytes first guesses their encoding, a third of a small value's
    cost; PostgreSQL sends UTF-8."""
    return scan_json(data.decode() if isinstance(data, bytes) else data)


class Codec:
    backend: Backend = "postgresql"

    @staticmethod
    def load_json(value: Any) -> Any:
        return value

    @staticmethod
    def ts(value: datetime) -> Any:
        return value

    @staticmethod
    def load_ts(value: Any) -> datetime:
        return value  # type: ignore[no-any-return]

    @staticmethod
    def load_bool(value: Any) -> bool:
        return bool(value)


class SQLiteCodec(Codec):
    backend: Backend = "sqlite"

    @staticmethod
    def load_json(value: Any) -> Any:
        if value is None:
            return None
        if value == "{}":
            return {}
        return scan_json(value)

    @staticmethod
    def ts(value: datetime) -> Any:
        if value.tzinfo is not UTC:
            value = value.astimezone(UTC)
        # isoformat is a third of strftime's cost; the first 26 characters are
        # "YYYY-MM-DD HH:MM:SS.ffffff", the offset after them is always +00:00 here.
        return value.isoformat(" ", "microseconds")[:26]

    @staticmethod
    def load_ts(value: Any) -> datetime:
        if isinstance(value, datetime):
            return value
        if len(value) == 26:  # Foundation's own text: naive, in UTC
            try:
                # Parsed with its zone: datetime.replace(tzinfo=) costs ten times this
                # (it counts when get builds a thousand records).
                return datetime.fromisoformat(value + "+00:00")
            except ValueError:
                pass  # written by another hand: below
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


_CODECS: dict[Backend, Codec] = {"sqlite": SQLiteCodec(), "postgresql": Codec()}


def codec_for(backend: Backend) -> Codec:
    return _CODECS[backend]
