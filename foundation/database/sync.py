"""The synchronous database: driver connections, transactions and the error boundary.

SQLite: one connection per thread (``sqlite3`` connections are cheap and a thread
never waits on another's), WAL, ``busy_timeout``, foreign keys, autocommit with an
explicit ``BEGIN IMMEDIATE`` for multi-statement writes so that a writer takes the
write lock up front and never deadlocks upgrading a read lock.

PostgreSQL: a ``psycopg_pool.ConnectionPool`` of autocommit connections (the one used
last handed out first, see :mod:`.postgres`); a single statement is its own transaction
(one round trip), several statements use ``transaction()``. A pooled connection found
dead before its statement ran (the server terminated it) is replaced and the statement
run again, once; so is a statement whose prepared plan a migration made stale, on its
connection cleaned of such plans (a transaction so refused raises
``storage_unavailable``: its rollback cleans the connection, and a retry runs).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import psycopg
import psycopg_pool

from foundation.database.codec import Codec, codec_for
from foundation.database.errors import (
    forget_plans,
    is_disconnect_before_statement,
    is_stale_plan,
    remember_backend,
    translate,
)
from foundation.database.postgres import ConnectionPool, driver_kwargs, pool_wait_s
from foundation.database.url import DatabaseURL
from foundation.settings import Settings

__all__ = [
    "Cursor",
    "SyncDatabase",
    "connect_sqlite",
    "inside_transaction_error",
    "make_parent",
    "statement_wait_s",
]

# A dict for statements compiled with named parameters; a tuple for the few hot SQLite
# statements compiled positionally (statements.compile_sqlite_positional).
Params = dict[str, Any] | tuple[Any, ...] | None
ManyParams = Sequence[dict[str, Any]] | Sequence[tuple[Any, ...]]
Row = tuple[Any, ...]


class Cursor(Protocol):
    """What a transaction hands out: the three ways to run a statement."""

    def execute(self, sql: str, params: Params = None) -> int: ...
    def fetchone(self, sql: str, params: Params = None) -> Row | None: ...
    def fetchall(self, sql: str, params: Params = None) -> list[Row]: ...
    def executemany(self, sql: str, params: ManyParams) -> None: ...
    def insert(self, sql: str, params: Params = None) -> int: ...


def connect_sqlite(url: DatabaseURL, settings: Settings) -> sqlite3.Connection:
    """A SQLite connection set up as Foundation needs it (WAL, busy timeout, FKs)."""
    path = url.sqlite_path
    if path.parent and not path.parent.exists():
        make_parent(url)
    conn = sqlite3.connect(
        str(path),
        isolation_level=None,  # autocommit; transactions are explicit
        check_same_thread=False,
        timeout=settings.sqlite_busy_timeout_ms / 1000,
    )
    # PRAGMA takes no bound parameters; both values come validated from Settings
    # (an int, and the literal NORMAL or FULL).
    conn.execute(f"PRAGMA busy_timeout = {int(settings.sqlite_busy_timeout_ms)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()
    if mode is None or str(mode[0]).lower() != "wal":  # pragma: no cover - odd filesystems
        raise sqlite3.OperationalError(f"could not switch {path} to WAL (got {mode})")
    conn.execute(f"PRAGMA synchronous = {settings.sqlite_synchronous}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def statement_wait_s(settings: Settings) -> float:
    """How long a SQLite statement in flight may take at most (it waits for the file's
    lock up to the busy timeout): what close() or a fork waits for one."""
    return settings.sqlite_busy_timeout_ms / 1000 + 1.0


def make_parent(url: DatabaseURL) -> None:
    """Create the SQLite file's directory (``storage_unavailable`` if it cannot be)."""
    path = url.sqlite_path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        from foundation.errors import StorageUnavailableError

        raise StorageUnavailableError(
            f"the SQLite database at {url.masked} is unavailable: its directory "
            f"{path.parent} cannot be created ({exc.strerror or exc})",
            context={"url": url.masked, "path": str(path)},
        ) from None


def inside_transaction_error(url: str) -> Exception:
    """SQLite: a call made inside a ``transaction()`` of the same thread (sync) or task
    (async) that is not a statement of its cursor. A service's write would join the
    transaction, and be undone by its rollback while the service believes it done (an
    event's position reused, a name held nowhere); on the async face, with one connection,
    it would wait for the transaction for ever. PostgreSQL runs it on another pooled
    connection, which commits by itself."""
    from foundation.errors import StorageError

    return StorageError(
        "this call was made inside a transaction() of this thread or task on a SQLite "
        "database: run your statements through the transaction's own cursor, and "
        "Foundation's other calls after the transaction",
        # A caller's mistake, not an outage: the services that ride out an outage (a
        # rate limiter failing open, a breaker) raise it all the same.
        context={"url": url, "inside_transaction": True},
    )


class ForkHold:
    """Whether a thread of the parent was still inside SQLite at the last fork: one of the
    locks ``hold_for_fork`` takes was not free within the wait (a statement running longer
    than the busy timeout and a second). SQLite's process-wide mutexes (its allocator's,
    its file locks') may then be copied held into the child, where any call into SQLite
    would wait on them for ever: closing an inherited connection included."""

    missed = False

    @classmethod
    def begin(cls) -> None:
        cls.missed = False

    @classmethod
    def acquire(cls, lock: Any, timeout: float) -> bool:
        if lock.acquire(timeout=timeout):
            return True
        cls.missed = True
        return False


def close_inherited(conns: list[sqlite3.Connection]) -> None:
    """In a forked child: close the SQLite connections it inherited.

    SQLite keeps one record per open file and process of the locks it holds, and the
    child inherits the parent's records, but not its locks (POSIX locks are not
    inherited). A connection the child then opens to the same file shares those records,
    and takes none of the locks they say it holds: the parent, closing its last
    connection, found no other process using the file, checkpointed it and deleted its
    WAL while the child went on writing into it (acknowledged events were lost). Closed,
    the records go. It touches nothing of the parent's: the parent's own locks make the
    closing connection give up its checkpoint. One in a transaction (the parent's other
    thread was inside one at the fork) is left open: its rollback would write to the WAL
    index the parent is using. None is closed when a thread of the parent was still inside
    SQLite (see ``ForkHold``): the child could not get past the first close."""
    if ForkHold.missed:
        return
    for conn in conns:
        with contextlib.suppress(sqlite3.Error):  # one closed already raises too
            if not conn.in_transaction:
                conn.close()


class _DriverCursor:
    __slots__ = ("_conn", "_none")

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        # No parameters: psycopg then reads no placeholder (a statement of the
        # application's own with a literal %, such as LIKE 'a%'); sqlite3 wants a mapping.
        self._none: dict[str, Any] | None = {} if isinstance(conn, sqlite3.Connection) else None

    def execute(self, sql: str, params: Params = None) -> int:
        cur = self._conn.execute(sql, params or self._none)
        return int(cur.rowcount)

    def fetchone(self, sql: str, params: Params = None) -> Row | None:
        row: Row | None = self._conn.execute(sql, params or self._none).fetchone()
        return row

    def fetchall(self, sql: str, params: Params = None) -> list[Row]:
        rows: list[Row] = self._conn.execute(sql, params or self._none).fetchall()
        return rows

    def insert(self, sql: str, params: Params = None) -> int:
        # SQLite only: the new row's rowid, free from the connection (a RETURNING
        # clause costs SQLite about a quarter of a one-row insert more).
        return int(self._conn.execute(sql, params or self._none).lastrowid)

    def executemany(self, sql: str, params: ManyParams) -> None:
        if isinstance(self._conn, sqlite3.Connection):
            self._conn.executemany(sql, params)
        else:
            with self._conn.cursor() as cur:
                cur.executemany(sql, params)


class _ThreadEnd:
    """Kept in a thread's thread-local values: its end is the thread's (see _sqlite)."""

    __slots__ = ("__weakref__",)


def _close_thread_connection(
    conns: dict[int, tuple[sqlite3.Connection, threading.RLock]],
    busy: threading.RLock,
    pid: int,
) -> None:
    """Close the SQLite connection of a thread that ended (unless close() took it)."""
    if os.getpid() != pid:
        # A forked child frees the parent's other threads' values: their connections
        # are the parent's, never touched here (see foundation._fork); and their lock
        # may be held for ever by a thread the child does not have.
        return
    # Nobody else holds it once its thread is gone, but close() or a fork for a moment.
    # Listed until closed, as close() does (a fork meanwhile waits for it).
    if busy.acquire(timeout=1.0):
        try:
            entry = conns.get(id(busy))  # no lock: this may run inside any call
            if entry is not None:
                with contextlib.suppress(sqlite3.Error):
                    entry[0].close()
        finally:
            conns.pop(id(busy), None)
            busy.release()
    else:
        conns.pop(id(busy), None)


class SyncDatabase:
    """Runs compiled statements on the driver, translating every driver error."""

    def __init__(self, url: DatabaseURL, settings: Settings) -> None:
        self.url = url
        self.settings = settings
        self.backend = url.backend
        self.codec: Codec = codec_for(url.backend)
        self._masked = url.masked
        self._closed = False
        self._closed_message = "this Foundation instance is closed"
        self._local = threading.local()
        # Each thread's SQLite connection and its lock, by a key of the thread's own.
        self._sqlite_conns: dict[int, tuple[sqlite3.Connection, threading.RLock]] = {}
        self._lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        if url.backend == "postgresql":
            # Fail fast, with the driver's own reason, when the server cannot be reached.
            self.probe()
            self._pool = ConnectionPool(
                url.conninfo,
                min_size=settings.pool_min_size,
                max_size=settings.pool_max_size,
                timeout=pool_wait_s(settings),
                kwargs={"autocommit": True, **driver_kwargs(settings, url)},
                name=f"foundation-{settings.node_id}",
                open=True,
            )

    # -- connections -----------------------------------------------------------------

    def probe(self) -> None:
        """Open and close one connection; raise storage_unavailable if that fails."""
        try:
            if self.backend == "sqlite":
                connect_sqlite(self.url, self.settings).close()
            else:
                psycopg.connect(self.url.conninfo, **driver_kwargs(self.settings, self.url)).close()
        except (sqlite3.Error, psycopg.Error) as exc:
            raise translate(exc, self._masked) from exc

    def _sqlite(self) -> tuple[sqlite3.Connection, threading.RLock]:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            busy = threading.RLock()
            with self._lock:  # a fork waits for it (see hold_for_fork)
                conn = connect_sqlite(self.url, self.settings)
                self._sqlite_conns[id(busy)] = (conn, busy)
            self._local.conn = conn
            self._local.busy = busy
            self._local.cur = _DriverCursor(conn)
            # Closed when the thread ends (its thread-local values go then): a server
            # with a thread per request would otherwise keep a connection, two file
            # descriptors, for every thread it ever ran, until "too many open files".
            self._local.end = end = _ThreadEnd()
            finalizer = weakref.finalize(
                end, _close_thread_connection, self._sqlite_conns, busy, os.getpid()
            )
            finalizer.atexit = False
        return conn, self._local.busy

    @property
    def closed(self) -> bool:
        return self._closed

    def hold_for_fork(self) -> list[Any]:
        """Before ``os.fork()``: the locks that keep every thread of this instance out of
        SQLite, taken (a lock SQLite holds inside a call would stay held for good in the
        child, and its first connection would wait on it forever). Released after."""
        if self._pool is not None:
            return []
        wait_s = statement_wait_s(self.settings)
        held: list[Any] = []
        if ForkHold.acquire(self._lock, wait_s):
            held.append(self._lock)
            conns = list(self._sqlite_conns.values())
            held += [busy for _, busy in conns if ForkHold.acquire(busy, wait_s)]
        return held

    def disown(self, message: str) -> None:
        """In a forked child: refuse every statement (``message`` says why). PostgreSQL's
        connections are the parent's sessions: closed nowhere here (see
        :mod:`foundation._fork`). SQLite's are closed (see ``close_inherited``)."""
        self._closed_message = message
        self._closed = True
        close_inherited([conn for conn, _ in self._sqlite_conns.values()])

    def _closed_error(self) -> Exception:
        from foundation.errors import StorageUnavailableError

        return StorageUnavailableError(self._closed_message, context={"url": self._masked})

    def _inside_transaction_error(self) -> Exception:
        return inside_transaction_error(self._masked)

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """A raw driver connection (autocommit) for this thread's work."""
        if self._closed:
            raise self._closed_error()
        if self._pool is None:
            sqlite_conn, busy = self._sqlite()
            with busy:  # close() waits for it (see close)
                if self._closed:
                    raise self._closed_error()
                if self._local.__dict__.get("in_transaction"):
                    raise self._inside_transaction_error()
                yield sqlite_conn
        else:
            with self._pool.connection() as conn:
                pid = conn.pgconn.backend_pid
                try:
                    yield conn
                except psycopg.Error as exc:
                    if is_stale_plan(exc):
                        forget_plans(conn)  # before the pool hands it out again
                    remember_backend(exc, pid)
                    raise

    # -- statements ------------------------------------------------------------------

    def execute(self, sql: str, params: Params = None) -> int:
        return self._run(lambda cur: cur.execute(sql, params))  # type: ignore[no-any-return]

    def fetchone(self, sql: str, params: Params = None) -> Row | None:
        return self._run(lambda cur: cur.fetchone(sql, params))  # type: ignore[no-any-return]

    def fetchall(self, sql: str, params: Params = None) -> list[Row]:
        return self._run(lambda cur: cur.fetchall(sql, params))  # type: ignore[no-any-return]

    def insert(self, sql: str, params: Params = None) -> int:
        """SQLite only: run an INSERT of one row and return its rowid."""
        return self._run(lambda cur: cur.insert(sql, params))  # type: ignore[no-any-return]

    def executemany(self, sql: str, params: ManyParams) -> None:
        with self.transaction() as tx:
            tx.executemany(sql, params)

    def _run(self, fn: Any) -> Any:
        local = self._local.__dict__
        cur = local.get("cur") if self._pool is None else None
        if cur is not None:
            # SQLite's hot path (store, register, config.set): this thread's connection,
            # no context manager; nothing to retry (no server to lose).
            with local["busy"]:  # close() waits for it (see close)
                if not self._closed:
                    if local.get("in_transaction"):
                        raise self._inside_transaction_error()
                    try:
                        return fn(cur)
                    except sqlite3.Error as exc:
                        raise translate(exc, self._masked) from exc
        for attempt in (1, 2):
            try:
                with self.connection() as conn:
                    return fn(_DriverCursor(conn))
            except (sqlite3.Error, psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                if attempt == 1 and is_disconnect_before_statement(exc):
                    self._recycle_pool()
                    continue
                if attempt == 1 and is_stale_plan(exc):
                    continue  # on that connection, cleaned (the pool hands it out first)
                raise translate(exc, self._masked) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        """Several statements as one transaction: all commit, or none."""
        for attempt in (1, 2):
            began = False
            try:
                with self.connection() as conn:
                    if self._pool is None:
                        conn.execute("BEGIN IMMEDIATE")
                        began = True
                        # Other calls of this thread are refused meanwhile (see _run).
                        self._local.in_transaction = True
                        try:
                            yield _DriverCursor(conn)
                            conn.execute("COMMIT")
                        except BaseException:
                            if conn.in_transaction:  # a failed COMMIT too (disk full, say)
                                with contextlib.suppress(sqlite3.Error):  # the error is the first
                                    conn.execute("ROLLBACK")
                            raise
                        finally:
                            self._local.in_transaction = False
                    else:
                        with conn.transaction():
                            began = True
                            yield _DriverCursor(conn)
                return
            except (sqlite3.Error, psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                if attempt == 1 and not began and is_disconnect_before_statement(exc):
                    self._recycle_pool()
                    continue
                raise translate(exc, self._masked) from exc

    def _recycle_pool(self) -> None:
        # Other idle connections were most likely cut by the same event: check them all
        # now rather than let each fail one caller.
        if self._pool is not None:
            with contextlib.suppress(psycopg.Error):  # check() discards what fails
                self._pool.check()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pool is not None:
            self._pool.close()
        with self._lock:
            conns = list(self._sqlite_conns.items())
        # Another thread's statement may be running on its connection: closing it under
        # the statement crashes the interpreter (sqlite3 frees what the statement is
        # using). Each thread runs its statements holding its connection's lock; wait for
        # it (a statement waits for SQLite's lock at most the busy timeout). The
        # connection of a thread still stuck past that is left to the collector. Each is
        # listed until closed: a fork meanwhile (hold_for_fork) waits for its close, which
        # would otherwise be copied into the child halfway, SQLite's locks held.
        wait_s = statement_wait_s(self.settings)
        for key, (conn, busy) in conns:
            if busy.acquire(timeout=wait_s):
                try:
                    with contextlib.suppress(sqlite3.Error):
                        conn.close()
                finally:
                    self._sqlite_conns.pop(key, None)
                    busy.release()
            else:
                self._sqlite_conns.pop(key, None)
