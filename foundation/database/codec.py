"""How values cross each driver: JSON, timestamps and booleans, read and written.

Both drivers take JSON as text (psycopg sends a ``str`` untyped, so PostgreSQL casts it
to ``jsonb``). PostgreSQL hands JSONB back decoded and timestamps as aware datetimes;
SQLite hands back text, kept as ``YYYY-MM-DD HH:MM:SS.ffffff`` in UTC so that it sorts
and works with SQLite's date functions.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from foundation._text import is_utf8
from foundation.database.url import Backend
from foundation.errors import FoundationError, StorageError

__all__ = [
    "Codec",
    "UnreadableJSON",
    "codec_for",
    "load_json_bytes",
    "rows_readable",
    "scan_json",
    "unreadable_json",
    "unreadable_row",
]

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


class UnreadableJSON:
    """What psycopg's loader hands back for a JSON value Python cannot hold: a number of
    more than 4,300 digits (``int``'s limit), which ``jsonb`` takes from plain SQL
    (``1e5000`` is kept as its digits). Raised from there by ``Codec.load_json``, where
    the reader knows the row to name; psycopg would let the loader's ``ValueError``
    reach the caller from inside a fetch, with no row to say which."""

    __slots__ = ("error",)

    def __init__(self, error: ValueError) -> None:
        self.error = error


def load_json_bytes(data: str | bytes) -> Any:
    """psycopg's JSON loader on Foundation's connections (``postgres.ADAPTERS``):
    ``json.loads`` of bytes first guesses their encoding, a third of a small value's
    cost; PostgreSQL sends UTF-8."""
    try:
        return scan_json(data.decode() if isinstance(data, bytes) else data)
    except ValueError as exc:
        return UnreadableJSON(exc)


def unreadable_json(
    what: str, table: str, exc: ValueError, error: type[FoundationError], **context: Any
) -> FoundationError:
    """The error for a JSON value of ``table`` no reader can load: only a hand can have
    written it (Foundation checks every value it writes), such as a number of more than
    4,300 digits. ``error``: the service's FoundationError class."""
    return error(
        f"{what} in {table} cannot be read ({exc}); written with plain SQL? Replace it "
        "there with JSON Python can read",
        context={**context, "table": table},
    )


@contextlib.contextmanager
def rows_readable(tables: str) -> Iterator[None]:
    """Around a service's load of its rows: a value its reader cannot convert, which only
    a hand can have written (SQLite keeps text given to an INTEGER or DATETIME column), is
    a ``storage_error`` naming the tables, not a raw ``ValueError``."""
    try:
        yield
    except (ValueError, OverflowError) as exc:
        raise unreadable_row(tables, exc) from None


def unreadable_row(tables: str, exc: Exception) -> StorageError:
    """:func:`rows_readable`'s error, for a hot path's own ``try`` (no context manager)."""
    return StorageError(
        f"a row of {tables} holds a value this node cannot read ({exc}); written with "
        "plain SQL? Put back a value of the column's type there",
        context={"tables": tables},
    )


class Codec:
    backend: Backend = "postgresql"

    @staticmethod
    def load_json(value: Any) -> Any:
        if type(value) is UnreadableJSON:
            raise value.error
        return value

    @staticmethod
    def ts(value: datetime) -> Any:
        return value

    @staticmethod
    def load_ts(value: Any) -> datetime:
        return value  # type: ignore[no-any-return]

    load_event_ts = load_ts

    @staticmethod
    def load_bool(value: Any) -> bool:
        return bool(value)


class SQLiteCodec(Codec):
    backend: Backend = "sqlite"

    @staticmethod
    def load_json(value: Any) -> Any:
        """A JSON value SQLite holds; ``ValueError`` for one no reader can take, which
        only plain SQL can have written (each reader names its row)."""
        if value is None:
            return None
        if value == "{}":
            return {}
        if type(value) is not str:  # x'31' (a BLOB), 5 (an integer): not JSON text
            raise ValueError(f"it is SQLite {type(value).__name__}, not JSON text")
        loaded = scan_json(value)
        # json_valid takes an escaped lone surrogate ("\ud800"), which is no text:
        # encoding it (a reply, a line of an export) would fail later, far from here.
        if ("\\ud" in value or "\\uD" in value) and not _all_text(loaded):
            raise ValueError("it holds a lone surrogate (\\ud800 to \\udfff), which is not text")
        return loaded

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

    @classmethod
    def load_event_ts(cls, value: Any) -> datetime:
        """An event's ``recorded_at``: only the forms the log's trigger takes (migrations
        0015 and 0017). Python reads more (``+05``, ``+0500``, week dates, a comma before
        the fraction), which the log's SQL reads otherwise (``get(after=...)``, the
        audit views): a row only a plain-SQL writer before migration 0014 can have."""
        if (
            len(value) == 26
            and value[4] == value[7] == "-"
            and value[10] == " "
            and value[19] == "."
        ):
            try:
                return datetime.fromisoformat(value + "+00:00")  # Foundation's own text
            except ValueError:
                pass
        if not _EVENT_TIME.match(value):
            raise ValueError(
                f"{value[:60]!r} is not a time of the form "
                "YYYY-MM-DD[ HH:MM[:SS[.fraction]]][Z|+HH:MM]"
            )
        return cls.load_ts(value)


def _all_text(value: Any) -> bool:
    """Whether every string of a decoded JSON value (keys too) is valid Unicode text."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not is_utf8(item):
                return False
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return True


# The forms of a time the log's SQLite trigger takes (migrations 0015 and 0017).
_EVENT_TIME = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"(?:[ T][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]{1,9})?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?)?\Z"
)

_CODECS: dict[Backend, Codec] = {"sqlite": SQLiteCodec(), "postgresql": Codec()}


def codec_for(backend: Backend) -> Codec:
    return _CODECS[backend]
