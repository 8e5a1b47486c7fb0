"""The asynchronous database: the same statements as :mod:`.sync`, awaited.

SQLite goes through ``aiosqlite`` (one connection per instance, its own thread,
guarded by an ``asyncio.Lock`` so that a task's transaction never takes in another
task's statement). PostgreSQL goes through ``psycopg_pool.AsyncConnectionPool`` with
the same autocommit and disconnect rules as the sync pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import sqlite3
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import aiosqlite
import psycopg
import psycopg_pool

from foundation.database.codec import Codec, codec_for
from foundation.database.errors import (
    forget_plans_async,
    is_disconnect_before_statement,
    is_stale_plan,
    remember_backend,
    translate,
)
from foundation.database.postgres import AsyncConnectionPool, driver_kwargs, pool_wait_s
from foundation.database.sync import (
    ManyParams,
    Params,
    Row,
    inside_transaction_error,
    make_parent,
    statement_wait_s,
)
from foundation.database.url import DatabaseURL
from foundation.errors import StorageUnavailableError
from foundation.settings import Settings

__all__ = ["NOT_OPEN", "AsyncCursor", "AsyncDatabase", "finish", "not_open_error"]

T = TypeVar("T")

NOT_OPEN = (
    "this AsyncFoundation is not open yet: await fdn.open() first, or use "
    "`async with AsyncFoundation(url) as fdn:`"
)


def not_open_error(url: DatabaseURL) -> StorageUnavailableError:
    return StorageUnavailableError(NOT_OPEN, context={"url": url.masked, "opened": False})


class AsyncCursor(Protocol):
    async def execute(self, sql: str, params: Params = None) -> int: ...
    async def fetchone(self, sql: str, params: Params = None) -> Row | None: ...
    async def fetchall(self, sql: str, params: Params = None) -> list[Row]: ...
    async def executemany(self, sql: str, params: ManyParams) -> None: ...


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """Whether a statement gave up on another connection's lock (SQLITE_BUSY)."""
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY


def _busy_timeout(ms: int) -> str:
    return f"PRAGMA busy_timeout = {int(ms)}"


class _SQLiteCursor:
    """Each statement is one trip to aiosqlite's thread that runs it to its end there.

    A task cancelled while it awaits a statement does not stop the statement: aiosqlite
    runs it anyway. Run whole in the thread (executed, its rows read, its cursor done
    with), it never leaves the connection holding a half-read statement, whose write
    lock would shut every other process out of the file.
    """

    __slots__ = ("_conn",)

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = None) -> int:
        # Only statements without rows come here: they run to their end in execute().
        cur = await self._conn.execute(sql, params or {})
        return int(cur.rowcount)

    async def fetchone(self, sql: str, params: Params = None) -> Row | None:
        rows = await self._conn.execute_fetchall(sql, params or {})
        for row in rows:
            return tuple(row)
        return None

    async def fetchall(self, sql: str, params: Params = None) -> list[Row]:
        return [tuple(r) for r in await self._conn.execute_fetchall(sql, params or {})]

    async def executemany(self, sql: str, params: ManyParams) -> None:
        await self._conn.executemany(sql, params)

    async def insert(self, sql: str, params: Params = None) -> int:
        row = await self._conn.execute_insert(sql, params or {})
        assert row is not None  # last_insert_rowid() always answers
        return int(row[0])

    async def end_transaction(self) -> None:
        """Roll back whatever transaction the connection is in, if any.

        Queued behind every statement already sent (aiosqlite runs them in order), so
        it also undoes a BEGIN whose caller was cancelled before it ran. A no-op outside
        a transaction (after a COMMIT that ran despite its caller's cancellation).
        """
        await self._conn.rollback()


class _PGCursor:
    __slots__ = ("_conn",)

    def __init__(self, conn: psycopg.AsyncConnection[Row]) -> None:
        self._conn = conn

    async def execute(self, sql: str, params: Params = None) -> int:
        cur = await self._conn.execute(sql, params or None)
        return int(cur.rowcount)

    async def fetchone(self, sql: str, params: Params = None) -> Row | None:
        cur = await self._conn.execute(sql, params or None)
        return await cur.fetchone()

    async def fetchall(self, sql: str, params: Params = None) -> list[Row]:
        cur = await self._conn.execute(sql, params or None)
        return await cur.fetchall()

    async def executemany(self, sql: str, params: ManyParams) -> None:
        async with self._conn.cursor() as cur:
            await cur.executemany(sql, params)


async def finish(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even if the caller is cancelled meanwhile.

    For work that must not stop half done: a write and the bookkeeping of what it wrote,
    a rollback, a close. A cancellation that arrives meanwhile is raised once ``aw`` has
    ended, whatever its outcome (``asyncio.timeout`` and ``wait_for`` then say
    ``TimeoutError``); ``aw``'s own error, if any, is its ``__cause__``.
    """
    task = asyncio.ensure_future(aw)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True  # the caller's (a cancelled task is done: the loop ends)
        except BaseException:
            if not cancelled:
                raise
            # aw's own error, after the caller's cancellation: the cancellation goes on
    if cancelled:
        raise asyncio.CancelledError from (None if task.cancelled() else task.exception())
    return task.result()


_DRIVER_ERRORS = (sqlite3.Error, psycopg.Error, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed)


class _OpenTransaction:
    """A SQLite ``transaction()`` of an :class:`AsyncDatabase`, while it is open."""

    __slots__ = ("db", "open")

    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db
        self.open = True


# The SQLite transaction() open in this context: its task's, and inherited by the tasks
# started inside it (finish() runs a call in one), which would wait for it for ever.
_OPEN_SQLITE_TRANSACTION: contextvars.ContextVar[_OpenTransaction | None] = contextvars.ContextVar(
    "foundation_open_sqlite_transaction", default=None
)


class AsyncDatabase:
    """Awaitable twin of :class:`foundation.database.sync.SyncDatabase`."""

    def __init__(self, url: DatabaseURL, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        self.backend = url.backend
        self.codec: Codec = codec_for(url.backend)
        self._masked = url.masked
        self._sqlite: aiosqlite.Connection | None = None
        self._sqlite_lock = asyncio.Lock()
        # When a statement last gave up on another process's write lock (loop time).
        self._gave_up_at = -math.inf
        self._pool: AsyncConnectionPool | None = None
        self._closed = False
        self._closed_message = "this Foundation instance is closed"
        self._loop: asyncio.AbstractEventLoop | None = None  # the one it was opened in
        self._closing = False  # see closing()

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            if self.backend == "sqlite":
                path = self.url.sqlite_path
                make_parent(self.url)
                # Kept from the start (whole, even if the caller is cancelled meanwhile):
                # a start cut short is closed by close(), not left to the collector.
                connecting = aiosqlite.connect(
                    str(path),
                    isolation_level=None,
                    timeout=self.settings.sqlite_busy_timeout_ms / 1000,
                )
                worker = getattr(connecting, "_thread", None)
                if worker is not None and not worker.is_alive():
                    # A daemon, as the sync face's threads are: an instance the program
                    # never closed must not keep the interpreter from exiting (what is
                    # acknowledged is committed; an open transaction rolls back).
                    worker.daemon = True
                try:
                    conn = self._sqlite = await finish(connecting)
                except BaseException as exc:
                    if isinstance(exc, asyncio.CancelledError) and connecting._connection:
                        # Connected, then the caller's cancellation: kept, and closed by
                        # the close() a cut-short open runs (its thread ends then).
                        self._sqlite = connecting
                        raise
                    # aiosqlite stops its thread by a message that answers on this loop:
                    # wait for it here, or it fails later on a closed loop, to stderr.
                    thread = getattr(connecting, "_thread", None)
                    if thread is not None and thread.is_alive():
                        await asyncio.to_thread(thread.join, 5)
                    raise
                await conn.execute(
                    f"PRAGMA busy_timeout = {int(self.settings.sqlite_busy_timeout_ms)}"
                )
                await conn.execute("PRAGMA journal_mode = WAL")
                await conn.execute(f"PRAGMA synchronous = {self.settings.sqlite_synchronous}")
                await conn.execute("PRAGMA foreign_keys = ON")
            else:
                probe = await psycopg.AsyncConnection.connect(
                    self.url.conninfo, **driver_kwargs(self.settings, self.url)
                )
                await probe.close()
                self._pool = AsyncConnectionPool(
                    self.url.conninfo,
                    min_size=self.settings.pool_min_size,
                    max_size=self.settings.pool_max_size,
                    timeout=pool_wait_s(self.settings),
                    kwargs={"autocommit": True, **driver_kwargs(self.settings, self.url)},
                    name=f"foundation-async-{self.settings.node_id}",
                    open=False,
                )
                await self._pool.open()
        except _DRIVER_ERRORS as exc:
            raise translate(exc, self._masked) from exc

    @property
    def closed(self) -> bool:
        return self._closed

    def disown(self, message: str) -> None:
        """As :meth:`foundation.database.sync.SyncDatabase.disown`, but its SQLite
        connection is not closed: it may be inside a statement of the parent's event loop
        (docs/deployment.md: fork before opening an ``AsyncFoundation``)."""
        self._closed_message = message
        self._closed = True

    def _closed_error(self) -> StorageUnavailableError:
        return StorageUnavailableError(self._closed_message, context={"url": self._masked})

    @asynccontextmanager
    async def _one_off(self) -> AsyncIterator[Any]:
        """A connection of the running loop for one statement or transaction."""
        if self._pool is not None:
            conn = await psycopg.AsyncConnection.connect(
                self.url.conninfo, autocommit=True, **driver_kwargs(self.settings, self.url)
            )
            try:
                yield _PGCursor(conn)
            finally:
                await finish(conn.close())
            return
        lite = await aiosqlite.connect(
            str(self.url.sqlite_path),
            isolation_level=None,
            timeout=self.settings.sqlite_busy_timeout_ms / 1000,
        )
        try:
            yield _SQLiteCursor(lite)
        finally:
            await finish(lite.close())

    def closing(self) -> None:
        """The instance's close() has begun: its statements may run in another event loop
        than the one it was opened in (a close at the end of another ``asyncio.run``)."""
        self._closing = True

    def _other_loop_error(self) -> StorageUnavailableError:
        # Its connections, and its feed's and heartbeat's tasks, belong to that loop: used
        # from another, they would fail later or not at all (a lease left unrenewed).
        return StorageUnavailableError(
            "this AsyncFoundation was opened in another event loop, and its connections and "
            "tasks (the registry's heartbeat, subscriptions) belong to that one: open and "
            "use an AsyncFoundation within one event loop (one per asyncio.run)",
            context={"url": self._masked, "other_loop": True},
        )

    @asynccontextmanager
    async def _cursor(self) -> AsyncIterator[Any]:
        if self._closed:
            raise self._closed_error()
        if asyncio.get_running_loop() is not self._loop and self._loop is not None:
            if not self._closing:
                raise self._other_loop_error()
            # close() in another loop: the pool and the SQLite connection's thread are the
            # first loop's (that thread dies once it answers a statement the first loop
            # left in flight: one queued behind it would wait for ever). The release of
            # this node's names and subscriptions runs on a connection of this loop.
            async with self._one_off() as cursor:
                yield cursor
            return
        if self._pool is None and self._sqlite is None:
            raise not_open_error(self.url)
        if self._pool is None:
            assert self._sqlite is not None
            async with self._sqlite_turn() as cursor:
                yield cursor
        else:
            # Not the pool's connection(): a cancellation that lands while it hands the
            # connection back loses it (neither returned nor closed), and enough of them
            # empty the pool for good. The return runs whole (putconn rolls back or
            # replaces a connection a cancelled statement left busy).
            pool = self._pool
            conn = await pool.getconn()
            pid = conn.pgconn.backend_pid
            try:
                yield _PGCursor(conn)
            except psycopg.Error as exc:
                if is_stale_plan(exc):
                    await finish(forget_plans_async(conn))  # see SyncDatabase.connection
                remember_backend(exc, pid)
                raise
            finally:
                await finish(pool.putconn(conn))

    @asynccontextmanager
    async def _sqlite_turn(self) -> AsyncIterator[_SQLiteCursor]:
        """The instance's one SQLite connection, to this task alone.

        Waiting behind this instance's own statements costs nothing of a call's busy
        timeout. But when a statement ahead gave up on another process's write lock
        while this one waited, this one gets only what is left of its busy timeout,
        counted from when it began to wait: else calls queued behind a lock each waited
        a whole busy timeout in turn (three writes: 5, 10 and 15 s), where on the sync
        face, a connection per thread, each waits one.
        """
        assert self._sqlite is not None
        around = _OPEN_SQLITE_TRANSACTION.get()
        if around is not None and around.db is self and around.open:
            raise inside_transaction_error(self._masked)  # it holds the connection
        loop = asyncio.get_running_loop()
        started = loop.time()
        async with self._sqlite_lock:
            if self._closed:  # close() ran while this waited for the connection
                raise self._closed_error()
            cursor = _SQLiteCursor(self._sqlite)
            full = int(self.settings.sqlite_busy_timeout_ms)
            left = full - int((loop.time() - started) * 1000)
            reduced = self._gave_up_at >= started and left < full
            if reduced and left <= 0:
                raise translate(sqlite3.OperationalError("database is locked"), self._masked)
            try:
                if reduced:
                    await self._sqlite.execute(_busy_timeout(left))
                yield cursor
            except sqlite3.OperationalError as exc:
                if _is_busy(exc):
                    self._gave_up_at = loop.time()
                raise
            finally:
                if reduced:
                    await finish(self._sqlite.execute(_busy_timeout(full)))

    async def _run(self, op: str, sql: str, params: Params) -> Any:
        for attempt in (1, 2):
            try:
                async with self._cursor() as cur:
                    return await getattr(cur, op)(sql, params)
            except _DRIVER_ERRORS as exc:
                if attempt == 1 and is_disconnect_before_statement(exc):
                    await self._recycle_pool()
                    continue
                if attempt == 1 and is_stale_plan(exc):
                    continue  # as SyncDatabase._run
                raise translate(exc, self._masked) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def execute(self, sql: str, params: Params = None) -> int:
        return await self._run("execute", sql, params)  # type: ignore[no-any-return]

    async def fetchone(self, sql: str, params: Params = None) -> Row | None:
        return await self._run("fetchone", sql, params)  # type: ignore[no-any-return]

    async def fetchall(self, sql: str, params: Params = None) -> list[Row]:
        return await self._run("fetchall", sql, params)  # type: ignore[no-any-return]

    async def insert(self, sql: str, params: Params = None) -> int:
        """SQLite only: run an INSERT of one row and return its rowid."""
        return await self._run("insert", sql, params)  # type: ignore[no-any-return]

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncCursor]:
        for attempt in (1, 2):
            began = False
            try:
                async with self._cursor() as cur:
                    if isinstance(cur, _SQLiteCursor):
                        marker = _OpenTransaction(self)
                        token = _OPEN_SQLITE_TRANSACTION.set(marker)
                        try:
                            await cur.execute("BEGIN IMMEDIATE")
                            began = True
                            yield cur
                            await cur.execute("COMMIT")
                        except BaseException:
                            # Also on a cancellation, whichever statement it interrupted
                            # (BEGIN and COMMIT run even then): see end_transaction.
                            with contextlib.suppress(Exception):  # the error is the first
                                await finish(cur.end_transaction())
                            raise
                        finally:
                            marker.open = False
                            with contextlib.suppress(ValueError):  # ended in another context
                                _OPEN_SQLITE_TRANSACTION.reset(token)
                    else:
                        async with cur._conn.transaction():
                            began = True
                            yield cur
                return
            except _DRIVER_ERRORS as exc:
                if attempt == 1 and not began and is_disconnect_before_statement(exc):
                    await self._recycle_pool()
                    continue
                raise translate(exc, self._masked) from exc

    async def _recycle_pool(self) -> None:
        if self._pool is not None:
            with contextlib.suppress(psycopg.Error):  # check() discards what fails
                await self._pool.check()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            # psycopg_pool's close() takes its idle connections out, waits for its worker
            # tasks, then closes them: when those tasks were cancelled already (the end of
            # asyncio.run cancels every task at once, SIGTERM -> sys.exit) the wait raises
            # and the connections stay open for ever. Kept here, they are closed anyway.
            idle = list(getattr(self._pool, "_pool", ()))
            try:
                if asyncio.get_running_loop() is self._loop:
                    await self._pool.close()
                # Else the pool's tasks are the other loop's (closed, most likely): its idle
                # connections are closed below, what it had in use is that loop's to end.
            finally:
                for conn in idle:
                    if not conn.closed:
                        with contextlib.suppress(psycopg.Error):
                            await conn.close()
        if self._sqlite is not None:
            # Not under a statement or transaction in flight (the callers queued behind
            # it find the instance closed): aiosqlite would fail them with its own
            # errors. A statement waits for SQLite's lock at most the busy timeout.
            if asyncio.get_running_loop() is not self._loop:
                # Its thread is the first loop's, and dies answering a statement that loop
                # left in flight (see _cursor): a close sent to it may never be answered,
                # so none is awaited. A thread still alive is told to close the file and
                # end (one per instance would pile up: one loop per job or test); a dead
                # one's file is closed when the connection is collected (what was
                # acknowledged is committed).
                thread = getattr(self._sqlite, "_thread", None)
                if thread is not None and thread.is_alive():
                    # Its answer comes on this loop, which must outlive it.
                    stopped = self._sqlite.stop()
                    if stopped is not None:
                        with contextlib.suppress(Exception):
                            await asyncio.wait_for(asyncio.shield(stopped), 1.0)
                if thread is None or not thread.is_alive():
                    self._sqlite._connection = None
                return
            wait_s = statement_wait_s(self.settings)
            try:
                await asyncio.wait_for(self._sqlite_lock.acquire(), wait_s)
            except TimeoutError:
                await self._sqlite.close()
            else:
                try:
                    await self._sqlite.close()
                finally:
                    self._sqlite_lock.release()
