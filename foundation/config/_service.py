"""The config service: :class:`Config` (sync) and :class:`AsyncConfig`.

Both share :class:`~foundation.config._state.ConfigState` for everything but I/O;
reads never touch the database.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Generator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from foundation._text import shown
from foundation.config._sources import read_env, read_file
from foundation.config._state import (
    _MISSING,
    ConfigChange,
    ConfigExplanation,
    ConfigHistoryEntry,
    ConfigState,
    ConfigWatch,
)
from foundation.config._store import ConfigSQL
from foundation.correlation import current_correlation_id
from foundation.database.aio import AsyncDatabase, finish, not_open_error
from foundation.database.feed import ChangeFeed
from foundation.database.sync import Cursor, SyncDatabase
from foundation.errors import ConfigError, FoundationError, StorageUnavailableError
from foundation.settings import Settings
from foundation.telemetry import Telemetry

__all__ = ["AsyncConfig", "Config"]

_SET = ("foundation", "config", "set")
_DELETE = ("foundation", "config", "delete")
_RELOAD = ("foundation", "config", "reload")
_CHANGED = ("foundation", "config", "changed")
MAX_HISTORY = 10_000
# Yields (sql, params), receives the statement's row, returns whether anything changed.
WriteFlow = Generator[tuple[str, dict[str, Any]], tuple[Any, ...] | None, bool]


class _ConfigBase:
    """Reads, validation, watchers and the change-feed side, shared by both faces."""

    def __init__(self, sql: ConfigSQL, settings: Settings, telemetry: Telemetry) -> None:
        self._sql = sql
        self._settings = settings
        self._telemetry = telemetry
        self._node = settings.node_id
        self._state = ConfigState(
            node_id=settings.node_id,
            max_key_length=settings.max_key_length,
            max_value_bytes=settings.max_value_bytes,
        )
        self._request_resync: Callable[[], None] = lambda: None
        # Each change is also appended to the event log by a trigger (migration 0005):
        # the facade points this at the events tail cache, so that this node's next
        # get() reads its own config change.
        self.log_appended: Callable[[], None] = lambda: None
        self._history_seen = 0  # SQLite feed: the last history id this node has applied
        # The hot read path: the state's own bound method, so a call costs one dict lookup
        # and no extra Python frame (the method below documents it).
        self.get = self._state.get  # type: ignore[method-assign]

    def get(self, key: Any, default: Any = None) -> Any:
        """The value of ``key`` from the in-process cache, or ``default``."""
        return self._state.get(key, default)

    def all(self) -> dict[str, Any]:
        """Every key's winning value (a copy)."""
        return self._state.all()

    def explain(self, key: Any) -> ConfigExplanation:
        """Where ``key``'s value comes from: each layer that holds it and the winner."""
        return self._state.explain(key)

    @staticmethod
    def _check_watchable(pattern: Any, closed: bool) -> None:
        """A watch of a closed instance would never be called: refused, as writes are.
        (Reads still answer from the cache as it was at the close.)"""
        if closed:
            raise StorageUnavailableError(
                "this Foundation instance is closed: a config watch would never be called",
                context={"pattern": shown(pattern)},
            )

    def _load_external(self) -> list[ConfigChange]:
        path = self._settings.config_file
        file_values = read_file(Path(path)) if path is not None else {}
        env_values = read_env(self._settings.config_env_prefix)
        return self._state.load_external(file_values, str(path) if path else None, env_values)

    def _params(self, key: str, text: str | None) -> dict[str, Any]:
        params = {"key": key, "value": text, "by": self._node, "cid": current_correlation_id()}
        if self._sql.binds_time:
            params["at"] = self._sql.codec.ts(datetime.now(UTC))
        return params

    def _history_params(self, key: Any, limit: int) -> tuple[str, dict[str, Any]]:
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_HISTORY:
            raise ConfigError(
                f"history limit must be an integer from 1 to {MAX_HISTORY}",
                context={"limit": shown(limit)},
            )
        if key is None:
            return self._sql.history_all, {"limit": limit}
        return self._sql.history_key, {"key": self._state.check_key(key), "limit": limit}

    def _emitted(self, event: tuple[str, ...], started: int, metadata: dict[str, Any]) -> None:
        self._telemetry.execute(
            event, {"duration": time.perf_counter_ns() - started}, {"node": self._node, **metadata}
        )

    def _publish(self, changes: list[ConfigChange]) -> None:
        for change in changes:
            if change.source != "local":
                self._telemetry.execute(
                    _CHANGED,
                    {"count": 1},
                    {"key": change.key, "source": change.source, "node": self._node},
                )
        self._state.notify(changes)

    # -- writes: one flow, driven by both faces ----------------------------------------
    #
    # A write is a generator that yields the one statement it needs and receives its row
    # (or has the storage error thrown in), as httpx drives its auth flows: the logic is
    # written once and the sync and async faces differ only in how they run a statement.

    def _write_flow(self, key: Any, value: Any, *, delete: bool) -> WriteFlow:
        started = time.perf_counter_ns()
        key = self._state.check_key(key)
        stored, text, raw = (None, None, None) if delete else self._state.prepare(key, value)
        self._state.begin_write(key)
        try:
            row = yield (self._sql.delete if delete else self._sql.upsert), self._params(key, text)
            if row is None:  # delete of a key with no runtime value
                return False
            revision = int(row[0])
            self.log_appended()
            changes = self._state.apply_runtime(
                key, stored, revision, delete, self._node, "local", raw=raw
            )
        except FoundationError:
            self._write_failed()
            raise
        finally:
            self._state.end_write(key)
        self._emitted(_DELETE if delete else _SET, started, {"key": key, "revision": revision})
        self._publish(changes)
        return True

    # -- change feed subscriber (runs in the feed's thread) ---------------------------

    def bind_feed(self, feed: ChangeFeed) -> None:
        self._request_resync = feed.request_resync

    def _write_failed(self) -> None:
        # The write may have committed before the failure (a connection lost while the
        # result was on its way): let the feed re-read the table rather than guess.
        self._request_resync()

    def on_notify(self, payload: dict[str, Any], reader: Cursor) -> None:
        key, revision = payload.get("key"), payload.get("revision")
        if not isinstance(key, str) or not isinstance(revision, int):
            return
        if revision <= self._state.runtime_revision(key):
            return  # this node already holds that change (its own write, usually)
        # Read and apply under the state's lock, so that a local write committed after
        # this read is applied after it and never overwritten by an older value.
        with self._state.lock:
            row = reader.fetchone(self._sql.select_one, {"key": key})
            if row is None:  # the row was deleted with plain SQL
                changes = self._state.forget_runtime(key, "remote")
            else:
                changes = self._state.apply_read(*self._sql.runtime_row(row))
        self._publish(changes)

    def resync(self, reader: Cursor) -> None:
        with self._state.lock:
            head = reader.fetchone(self._sql.history_head)
            rows = [self._sql.runtime_row(r) for r in reader.fetchall(self._sql.select_all)]
            changes = self._state.replace_runtime(rows, "remote")
            self._history_seen = int(head[0] or 0) if head else 0
        self._publish(changes)

    def poll(self, reader: Cursor) -> None:
        """SQLite: the file changed; re-read only the keys changed since the last look.

        SQLite commits one writer at a time, so history ids appear in commit order and
        "every id above the last one seen" is exactly what this node has not applied.
        """
        with self._state.lock:
            row = reader.fetchone(self._sql.history_head)
            head = int(row[0] or 0) if row else 0
            if head == self._history_seen:
                return
            changes: list[ConfigChange] = []
            bounds = {"after": self._history_seen, "upto": head}
            for (key,) in reader.fetchall(self._sql.history_keys, bounds):
                current = reader.fetchone(self._sql.select_one, {"key": key})
                if current is None:
                    changes += self._state.forget_runtime(key, "remote")
                else:
                    changes += self._state.apply_read(*self._sql.runtime_row(current))
            self._history_seen = head
        self._publish(changes)


class Config(_ConfigBase):
    """Configuration with hot reload, backed by ``foundation_config``."""

    def __init__(
        self, db: SyncDatabase, sql: ConfigSQL, settings: Settings, telemetry: Telemetry
    ) -> None:
        super().__init__(sql, settings, telemetry)
        self._db = db

    def load(self) -> None:
        """First load: external sources, then the database (raises on a bad file)."""
        self._load_external()
        rows = [self._sql.runtime_row(r) for r in self._db.fetchall(self._sql.select_all)]
        self._state.replace_runtime(rows, "reload")

    def set(self, key: Any, value: Any) -> None:
        """Write ``value`` for every node: validated, committed, then cached and announced."""
        self._drive(self._write_flow(key, value, delete=False))

    def delete(self, key: Any) -> bool:
        """Remove the runtime value of ``key`` (file, env, defaults stay); True if there was one."""
        return self._drive(self._write_flow(key, None, delete=True))

    def _drive(self, flow: WriteFlow) -> bool:
        try:
            sql, params = next(flow)
            while True:
                try:
                    row = self._db.fetchone(sql, params)
                except FoundationError as exc:
                    sql, params = flow.throw(exc)
                else:
                    sql, params = flow.send(row)
        except StopIteration as done:
            return bool(done.value)

    def reload(self) -> None:
        """Re-read the file, the environment and the database; watchers see what changed."""
        started = time.perf_counter_ns()
        changes = self._load_external()
        with self._state.lock:  # as in resync: no local write lands between read and apply
            rows = [self._sql.runtime_row(r) for r in self._db.fetchall(self._sql.select_all)]
            changes += self._state.replace_runtime(rows, "reload")
        self._emitted(_RELOAD, started, {"changed": len(changes)})
        self._publish(changes)

    def register(self, key: Any, type_: Any, default: Any = _MISSING) -> None:
        """Give ``key`` a type (any type pydantic validates, or a model) and a default."""
        self._publish(self._state.register(key, type_, default))

    def watch(self, key_or_prefix: Any, callback: Callable[[ConfigChange], Any]) -> ConfigWatch:
        """Call ``callback(change)`` after each change of a key (``"db.*"``: prefix, ``"*"``: all).

        Local changes call it in the thread that made them; remote ones in the feed's thread,
        which carries every change this node reads (other keys, the registry, the
        breakers): a callback that blocks holds them all back until it returns, so hand
        long work to a thread of your own. So when several threads set one key at once,
        their calls may come in another order than the changes: read ``get(key)`` for the
        latest value, not the last ``new``.
        Another node's changes are read from the table: of several in quick succession, the
        callback may see only the last (``old`` is then the value this node held).
        On a closed instance (nothing would call it back) ``storage_unavailable``.
        """
        self._check_watchable(key_or_prefix, self._db.closed)
        return self._state.watch(key_or_prefix, callback)

    def history(self, key: Any = None, limit: int = 100) -> list[ConfigHistoryEntry]:
        """Changes, newest first, from ``foundation_config_history``."""
        sql, params = self._history_params(key, limit)
        return [self._sql.history_entry(r) for r in self._db.fetchall(sql, params)]


class AsyncConfig(_ConfigBase):
    """The awaitable twin of :class:`Config`; ``get`` stays a plain call."""

    def __init__(
        self, db: AsyncDatabase, sql: ConfigSQL, settings: Settings, telemetry: Telemetry
    ) -> None:
        super().__init__(sql, settings, telemetry)
        self._db = db
        # Until the first load the cache is empty: get() says so rather than answer None.
        self.get = self._not_loaded  # type: ignore[method-assign]

    def _not_loaded(self, key: Any, default: Any = None) -> Any:
        """``get`` before :meth:`AsyncFoundation.open` loaded the cache: raises
        ``storage_unavailable`` rather than answer ``default``. Once open, ``get`` is the
        plain cache read of :meth:`Config.get`."""
        raise not_open_error(self._db.url)

    async def load(self) -> None:
        """As :meth:`Config.load`, awaited (``AsyncFoundation.open`` calls it); from then
        on ``get`` answers from the cache."""
        self._load_external()
        rows = [self._sql.runtime_row(r) for r in await self._db.fetchall(self._sql.select_all)]
        self._state.replace_runtime(rows, "reload")
        self.get = self._state.get  # type: ignore[method-assign]

    async def set(self, key: Any, value: Any) -> None:
        """Write ``value`` for every node: validated, committed, then cached and announced.

        As :meth:`Config.set`, awaited (``config_error`` for a bad key or a value that does
        not fit its type or JSON). Once called it runs whole even if the caller is
        cancelled meanwhile: the value is written, cached and announced, then
        ``CancelledError`` is raised.
        """
        # Whole even if the caller is cancelled meanwhile (the statement runs anyway): a
        # write that reached the database is one this node has applied and logged.
        await finish(self._drive(self._write_flow(key, value, delete=False)))

    async def delete(self, key: Any) -> bool:
        """Remove the runtime value of ``key`` (file, env, defaults stay); True if there was
        one. As :meth:`Config.delete`, awaited; whole when cancelled, as :meth:`set` is."""
        return await finish(self._drive(self._write_flow(key, None, delete=True)))

    async def _drive(self, flow: WriteFlow) -> bool:
        try:
            sql, params = next(flow)
            while True:
                try:
                    row = await self._db.fetchone(sql, params)
                except FoundationError as exc:
                    sql, params = flow.throw(exc)
                else:
                    sql, params = flow.send(row)
        except StopIteration as done:
            return bool(done.value)

    async def reload(self) -> None:
        """Re-read the file, the environment and the database; watchers see what changed.

        As :meth:`Config.reload`, awaited (``config_error`` on a bad file, and nothing
        changes). The read cannot hold the cache's lock across an await: a local write that
        lands meanwhile makes it read again (three reads at most; the change feed settles
        anything left over).
        """
        started = time.perf_counter_ns()
        changes = self._load_external()
        # A thread lock cannot be held across an await: read, and apply only if no local
        # write landed meanwhile (else read again; the feed settles any rare leftover).
        for _attempt in range(3):
            writes = self._state.local_writes
            rows = [self._sql.runtime_row(r) for r in await self._db.fetchall(self._sql.select_all)]
            with self._state.lock:
                if self._state.local_writes == writes or _attempt == 2:
                    changes += self._state.replace_runtime(rows, "reload")
                    break
        self._emitted(_RELOAD, started, {"changed": len(changes)})
        self._publish(changes)

    def register(self, key: Any, type_: Any, default: Any = _MISSING) -> None:
        """Give ``key`` a type (any type pydantic validates, or a model) and a default.

        As :meth:`Config.register`, and a plain call too (no database). ``config_error``
        if the type is unusable or the default or a value already loaded does not fit it;
        then nothing changes.
        """
        self._publish(self._state.register(key, type_, default))

    def watch(self, key_or_prefix: Any, callback: Callable[[ConfigChange], Any]) -> ConfigWatch:
        """As :meth:`Config.watch`; callbacks (plain or ``async def``) run on the event loop."""
        self._check_watchable(key_or_prefix, self._db.closed)
        return self._state.watch(key_or_prefix, callback, loop=asyncio.get_running_loop())

    async def history(self, key: Any = None, limit: int = 100) -> list[ConfigHistoryEntry]:
        """Changes, newest first, from ``foundation_config_history``: of ``key``, or of every
        key when it is None; ``limit`` from 1 to 10,000 (else ``config_error``). As
        :meth:`Config.history`, awaited."""
        sql, params = self._history_params(key, limit)
        return [self._sql.history_entry(r) for r in await self._db.fetchall(sql, params)]
