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

__all__ = ["Codec", "codec_for"]


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
        return None if value is None else json.loads(value)

    @staticmethod
    def ts(value: datetime) -> Any:
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")

    @staticmethod
    def load_ts(value: Any) -> datetime:
        if isinstance(value, datetime):
            return value
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


_CODECS: dict[Backend, Codec] = {"sqlite": SQLiteCodec(), "postgresql": Codec()}


def codec_for(backend: Backend) -> Codec:
    return _CODECS[backend]
