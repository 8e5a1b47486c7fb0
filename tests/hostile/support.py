"""Shared pieces of the hostile-input tests (``tests/hostile/test_*.py``).

The property every test checks, for every public function it drives: a call either
works, or raises a :class:`~foundation.FoundationError` whose ``code`` is one the
contract gives that function (never ``storage_error``: hostile input is the caller's
fault, not the database's), and a failed call leaves every ``foundation_*`` table as it
was (read with a plain driver connection, not through Foundation). Any other exception
escapes the call and fails the test.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import sqlite3
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

import psycopg
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import foundation
from foundation import AsyncFoundation, Foundation, FoundationError
from foundation._default import set_instance
from foundation.database.url import DatabaseURL

# One instance per test and function-scoped fixtures: the health checks about them do not
# apply; deadline=None because a database round trip has no fixed cost on a shared machine.
HOSTILE = settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

# Columns a background thread of a live instance rewrites on its own (lease heartbeats,
# subscription leases): left out of the before/after comparison.
_VOLATILE = {
    "foundation_leases": {"expires_at", "renewed_at"},
    "foundation_subscriptions": {"lease_expires_at", "updated_at"},
}

# Tables the database itself keeps append-only (triggers refuse UPDATE and DELETE): a
# write shows in their count and highest key, so that is all a snapshot reads of them.
_APPEND_ONLY = {"foundation_events": "position", "foundation_config_history": "id"}

# -- inputs --------------------------------------------------------------------------------

SQL_LIKE = [
    "'; DROP TABLE foundation_events; --",
    '"; DELETE FROM foundation_config; --',
    "x' OR '1'='1",
    "%s",
    "%(key)s",
    ":name",
    ":key",
    "$1",
    "?",
    "\\",
    "*/ SELECT 1; /*",
    "foundation_config",
]
NASTY_TEXT = [
    "",
    " ",
    "\t",
    "\n",
    "\x00",
    "a\x00b",
    "\ud800",
    "a\udfffb",
    "\u202e",
    "\ufeff",
    "é",
    "😀",
    "x" * 255,
    "x" * 256,
    "x" * 1024,
    "x" * 1025,
    "y" * 100_000,
    *SQL_LIKE,
]
# Every code point, lone surrogates included (st.text() leaves them out by default).
any_char = st.characters(codec=None, exclude_categories=())
hostile_text = st.one_of(
    st.sampled_from(NASTY_TEXT),
    st.text(any_char, max_size=40),
    st.text(st.sampled_from("ab.*_-:$%'\"\\\x00\ud800 "), max_size=12),
)
# Text a name must accept: short, printable, valid UTF-8 (and hostile-looking).
fine_text = st.one_of(
    st.sampled_from([t for t in SQL_LIKE if t.strip()]),
    st.text(
        st.characters(codec="utf-8", exclude_categories=("Cc", "Cf", "Cs", "Zl", "Zp", "Co", "Cn")),
        min_size=1,
        max_size=30,
    ).filter(lambda t: t.strip() and t.isprintable()),
)
wrong_types = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.binary(max_size=8),
    st.lists(st.integers(), max_size=3),
    st.tuples(st.integers()),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.just(object()),
    st.just(b"\x00"),
)
hostile_any = st.one_of(hostile_text, wrong_types)


def deep(depth: int, leaf: Any = 1) -> Any:
    """``depth`` nested lists and dicts around ``leaf`` (built without recursion)."""
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    hostile_text,
)
json_values = st.one_of(
    st.recursive(
        _scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(hostile_text, inner, max_size=4),
        ),
        max_leaves=12,
    ),
    st.integers(min_value=1, max_value=3000).map(deep),
    st.sampled_from([10**400, 10**5000, -(2**64), 1.5e300, 1e16, -0.0, 5e-324]),
    st.sampled_from([set(), b"bytes", {1: 2}, {(1, 2): 3}, {None: 1}, object(), 1j]),
    st.sampled_from(["z" * 2_000_000, ["w" * 400_000] * 3]),
)
# Millisecond options and counts: negative, zero, huge, bool where an int is expected,
# floats (whole and not), NaN, infinities, timedeltas at their extremes, text.
option_values = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, 1, -1, 2**31, 2**63, 2**64, True, False, None]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        [timedelta(0), timedelta(milliseconds=-1), timedelta.max, timedelta.min, timedelta(1)]
    ),
    st.timedeltas(),
    hostile_text,
)


def plain_json(value: Any) -> Any:
    """What a JSON value reads back as: the contract's normal form."""
    return json.loads(json.dumps(value, allow_nan=False))


MAX_DEPTH = 100  # the contract's nesting limit (foundation/_json.py)
MAX_BYTES = 1024 * 1024  # Settings.max_value_bytes by default


def is_json(value: Any) -> bool:
    """Whether ``value`` is storable JSON: encodable, at most MAX_DEPTH deep, MAX_BYTES long,
    its objects keyed by strings (json.dumps would write 1 as "1")."""
    try:
        text = json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError, RecursionError):
        return False
    return (
        depth(value) <= MAX_DEPTH
        and len(text.encode("utf-8", "replace")) <= MAX_BYTES
        and str_keys(value)
    )


def str_keys(value: Any) -> bool:
    """Whether every dict in ``value`` has only string keys."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if not all(isinstance(k, str) for k in item):
                return False
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return True


def depth(value: Any) -> int:
    """How many containers nest in ``value``."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, level + 1) for v in item)
        else:
            continue
        deepest = max(deepest, level + 1)
    return deepest


def has_bad_text(value: Any) -> bool:
    """Whether a string anywhere in ``value`` holds a NUL or a lone surrogate."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if "\x00" in item or not _utf8(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def good_name(value: Any, max_length: int = 255) -> bool:
    """Whether a registry/event/config name is valid by the contract's rules."""
    return (
        isinstance(value, str)
        and bool(value.strip())
        and len(value) <= max_length
        and value.isprintable()
        and _utf8(value)
    )


# -- the database seen from outside ------------------------------------------------------------


class Tables:
    """Every ``foundation_*`` table of one database, read with a plain driver connection."""

    def __init__(self, url: str) -> None:
        self.url = DatabaseURL.parse(url)
        if self.url.backend == "sqlite":
            self._conn: Any = sqlite3.connect(str(self.url.sqlite_path), isolation_level=None)
            names = self._conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'foundation%'"
            ).fetchall()
        else:
            self._conn = psycopg.connect(self.url.conninfo, autocommit=True)
            names = self._conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                " AND tablename LIKE 'foundation%%'"
            ).fetchall()
        self.names = sorted(n for (n,) in names if n != "foundation_alembic_version")
        self._columns = {name: self._column_names(name) for name in self.names}

    def _column_names(self, table: str) -> list[str]:
        cur = self._conn.execute(f"SELECT * FROM {table} WHERE 1 = 0")
        skip = _VOLATILE.get(table, set())
        return [d[0] for d in cur.description if d[0] not in skip]

    def snapshot(self, tables: Iterable[str] | None = None) -> dict[str, list[tuple[Any, ...]]]:
        out = {}
        for table in tables or self.names:
            if table in _APPEND_ONLY:  # triggers refuse UPDATE and DELETE: count and top
                key = _APPEND_ONLY[table]
                out[table] = self._conn.execute(
                    f"SELECT count(*), max({key}) FROM {table}"
                ).fetchall()
                continue
            cols = ", ".join(self._columns[table])
            rows = self._conn.execute(f"SELECT {cols} FROM {table}").fetchall()
            out[table] = sorted((tuple(map(repr, row)) for row in rows), key=repr)
        return out

    def one(self, sql_sqlite: str, sql_pg: str, params: tuple[Any, ...]) -> Any:
        sql = sql_sqlite if self.url.backend == "sqlite" else sql_pg
        return self._conn.execute(sql, params).fetchone()

    def load_json(self, value: Any) -> Any:
        """A JSON column's value as the driver returns it (SQLite: text)."""
        if self.url.backend == "sqlite" and value is not None:
            return json.loads(value)
        return value

    def close(self) -> None:
        self._conn.close()


def expect(
    tables: Tables,
    call: Callable[[], Any],
    codes: set[str],
    watched: Iterable[str] | None = None,
    recorded: Iterable[str] = (),
) -> Any:
    """Run ``call``: its result, or the FoundationError it raised after checking that the
    code is allowed and that no watched table changed. Any other exception propagates.

    ``recorded``: codes that are outcomes the service records (a breaker counts a timeout
    as a failure), not refusals of the input; the database may change for those."""
    before = tables.snapshot(watched)
    try:
        return call()
    except FoundationError as err:
        assert err.code in codes, f"{err.code} not in {sorted(codes)}: {err}"
        assert err.code not in ("storage_error", "storage_unavailable")
        assert isinstance(err.to_dict(), dict)
        if err.code in recorded:
            return err
        after = tables.snapshot(watched)
        assert after == before, f"a failed call ({err.code}) changed the database"
        return err


# -- one instance per test, sync or async ------------------------------------------------------


class Face:
    """A Foundation (sync) or an AsyncFoundation on its own event loop, driven the same way:
    ``face.run(fdn.config.set(k, v))`` returns the value (awaiting it on the async face)."""

    def __init__(self, url: str, kind: str) -> None:
        self.kind = kind
        self._runner: asyncio.Runner | None = None
        if kind == "sync":
            self.fdn: Any = Foundation(url, migrate="check", poll_interval_ms=5)
            set_instance(self.fdn)  # the module-level functions act on it too
        else:
            self._runner = asyncio.Runner()
            self.fdn = self._runner.run(_open(url))

    def run(self, value: Any) -> Any:
        if self._runner is not None and inspect.isawaitable(value):
            return self._runner.run(_await(value))
        return value

    def in_loop(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` called where the face's callers call it (async: inside the event loop)."""
        if self._runner is None:
            return fn()
        return self._runner.run(_call(fn))

    def collect(self, items: Any) -> list[Any]:
        """Every item of a (sync or async) iterator."""
        if self._runner is not None and hasattr(items, "__aiter__"):
            return self._runner.run(_alist(items))
        return list(items)

    def services(self, name: str) -> list[Any]:
        """The service object(s) to call: the instance's, and on the sync face the module."""
        if self.kind == "sync":
            return [getattr(self.fdn, name), getattr(foundation, name)]
        return [getattr(self.fdn, name)]

    def close(self) -> None:
        if self._runner is None:
            set_instance(None)
            self.fdn.close()
        else:
            self._runner.run(self.fdn.close())
            self._runner.close()


async def _open(url: str) -> AsyncFoundation:
    return await AsyncFoundation(url, migrate="check", poll_interval_ms=5).open()


async def _call(fn: Callable[[], Any]) -> Any:
    return fn()


async def _await(value: Any) -> Any:
    return await value


async def _alist(items: Any) -> list[Any]:
    return [item async for item in items]
