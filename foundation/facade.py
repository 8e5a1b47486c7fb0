"""The two faces of Foundation: :class:`Foundation` (sync) and :class:`AsyncFoundation`.

An instance owns its database connections, its change feed and one object per
service (``config``, ``telemetry``, …). Both faces have the same attributes; whatever
touches the database is awaitable on :class:`AsyncFoundation`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from foundation import _fork
from foundation.circuit_breaker import AsyncCircuitBreakers, CircuitBreakers
from foundation.circuit_breaker._store import BreakerSQL
from foundation.config._service import AsyncConfig, Config
from foundation.config._store import ConfigSQL
from foundation.database import migrate as migrations
from foundation.database.aio import AsyncDatabase, finish
from foundation.database.codec import Codec, rows_readable
from foundation.database.errors import translate_errors
from foundation.database.feed import ChangeFeed, start_feed
from foundation.database.sync import SyncDatabase
from foundation.database.url import DatabaseURL
from foundation.database.version import VERSION_QUERIES
from foundation.errors import ConfigError, FoundationError, StorageUnavailableError
from foundation.events import AsyncEvents, Events, EventSQL
from foundation.events._subscription_aio import _FOLLOWING
from foundation.rate_limiter import AsyncRateLimiter, RateLimiter
from foundation.rate_limiter._store import LimiterSQL
from foundation.service_registry import AsyncServiceRegistry, RegistrySQL, ServiceRegistry
from foundation.service_registry._dispatch import _DISPATCHING
from foundation.settings import Settings, build_settings
from foundation.telemetry import Telemetry

if TYPE_CHECKING:
    from foundation.telemetry.poller import Poller

__all__ = ["AsyncFoundation", "Foundation"]

MigrateMode = Literal["upgrade", "check", "skip"]
_file_locks: dict[str, threading.Lock] = {}


def _settings(url: str | None, settings: Settings | None, overrides: dict[str, Any]) -> Settings:
    values: dict[str, Any] = dict(overrides)
    if url is not None:
        if not isinstance(url, str):
            raise ConfigError(
                f"the database URL must be a string, not {type(url).__name__}",
                context={"type": type(url).__name__},
            )
        values["database_url"] = url
    return build_settings(values, settings)


# In a forked child, the objects whose thread locks are made anew (see _fork.renew_locks).
_SERVICES = ("config", "events", "service_registry", "circuit_breaker", "rate_limiter")
_PARTS = ("_state", "tail_cache", "group_commit")


def _check_telemetry(telemetry: Any) -> Telemetry:
    if telemetry is None:
        return Telemetry()
    if not isinstance(telemetry, Telemetry):
        raise ConfigError(
            f"telemetry must be a foundation.telemetry.Telemetry, not {type(telemetry).__name__}",
            context={"setting": "telemetry", "type": type(telemetry).__name__},
        )
    return telemetry


_REGISTRY_TABLES = "foundation_registry, foundation_leases or foundation_registry_members"


@dataclass(frozen=True)
class _Statements:
    """Every service's SQL, compiled once per instance for its backend."""

    config: ConfigSQL
    events: EventSQL
    registry: RegistrySQL
    breakers: BreakerSQL
    limits: LimiterSQL


class _Base:
    settings: Settings
    url: DatabaseURL
    telemetry: Telemetry
    _feed: ChangeFeed | None

    def _prepare(
        self,
        url: str | None,
        migrate: MigrateMode | None,
        settings: Settings | None,
        telemetry: Telemetry | None,
        overrides: dict[str, Any],
    ) -> MigrateMode:
        if migrate is not None:
            overrides["migrate"] = migrate
        # Every argument is checked before any work (no connection, no migration).
        checked_telemetry = _check_telemetry(telemetry)
        self.settings = _settings(url, settings, overrides)
        self.url = DatabaseURL.parse(self.settings.database_url)
        self.telemetry = checked_telemetry
        self._feed = None
        self._pid = os.getpid()
        self._forked = False  # a child's copy, after os.fork() (see foundation._fork)
        _fork.track(self)
        mode = self.settings.migrate
        if mode is None:
            mode = "upgrade" if self.url.backend == "sqlite" else "check"
        if mode == "check" and self.url.backend == "sqlite" and not self.url.sqlite_path.exists():
            # Refused before the database is opened: opening it would create the file, and
            # its directories, for a mistyped path.
            error = _outdated(self.url, None)
            assert error is not None
            raise error
        return mode

    def _upgrade(self) -> None:
        """Run alembic (one process at a time: SQLite via BEGIN IMMEDIATE, PG via a lock)."""
        key = (
            str(self.url.sqlite_path.resolve()) if self.url.backend == "sqlite" else self.url.masked
        )
        lock = _file_locks.setdefault(key, threading.Lock())
        with lock, translate_errors(self.url.masked):
            migrations.upgrade(self.url, "head", self.settings)

    def _statements(self, codec: Codec) -> _Statements:
        backend = self.url.backend
        return _Statements(
            config=ConfigSQL.build(backend, codec),
            events=EventSQL.build(backend, codec),
            registry=RegistrySQL.build(backend, codec),
            breakers=BreakerSQL.build(backend),
            limits=LimiterSQL.build(
                backend, codec, fast_commit=self.settings.rate_limiter_fast_commit
            ),
        )

    def _hold_for_fork(self) -> list[Any]:
        # The feed's first: its thread may use the database's locks while it holds its own.
        held = self._feed.hold_for_fork() if self._feed is not None else []
        db = getattr(self, "_db", None)
        return held + (db.hold_for_fork() if isinstance(db, SyncDatabase) else [])

    def _inherited(self, message: str) -> None:
        """In a forked child: nothing here is this process's (see :mod:`foundation._fork`)."""
        self._forked = True
        db = getattr(self, "_db", None)
        if db is not None:
            db.disown(message)
        feed = getattr(self, "_feed", None)
        if feed is not None:
            feed.close_in_child()
        services = [getattr(self, name, None) for name in _SERVICES]
        parts = [getattr(s, part, None) for s in services for part in _PARTS]
        _fork.renew_locks(self, *(x for x in [*services, *parts] if x is not None))

    def _topics(self) -> dict[str, Any]:
        """Which service follows which change-feed topic, in the order they resync after
        a reconnect: the leases first (a node judges other nodes' by what it last read),
        the event log's tail last (the longest read: a connection cut during it must not
        keep the others from ever resyncing)."""
        services: Any = self
        return {
            "registry": services.service_registry,
            "config": services.config,
            "breakers": services.circuit_breaker,
            "events": services.events,
        }

    def _start_feed(self, subscribers: dict[str, Any]) -> None:
        feed = start_feed(self.url, self.settings, self.telemetry.execute)
        for topic, subscriber in subscribers.items():
            feed.subscribe(topic, subscriber)
            bind = getattr(subscriber, "bind_feed", None)
            if bind is not None:
                bind(feed)
        feed.start()
        self._feed = feed

    @property
    def feed(self) -> ChangeFeed:
        """The change feed (``feed.connected``, ``feed.wait_connected(timeout)``)."""
        assert self._feed is not None
        return self._feed

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url.masked!r}, node={self.settings.node_id!r})"


def _outdated(url: DatabaseURL, current: str | None) -> FoundationError | None:
    """The schema error to raise, or None when the database is at this release's head.

    A database at a revision this release does not know was upgraded by a newer release
    (a deploy rolled back, say): upgrading cannot help, and nothing is written.
    """
    head = migrations.head_revision()
    if current == head:
        return None
    from foundation.errors import SchemaOutdatedError

    if current is not None and not migrations.known_revision(current):
        return migrations.newer_release_error(url, current)
    return SchemaOutdatedError(
        f"the database at {url.masked} is at schema revision {current or 'none (empty)'} "
        f"but this Foundation needs {head}: run `foundation db upgrade` (or `alembic upgrade "
        "head` with FOUNDATION_DATABASE_URL set) during your deploy, or pass migrate='upgrade'",
        context={"url": url.masked, "current": current, "head": head},
    )


class Foundation(_Base):
    """A synchronous Foundation on one database.

    >>> with Foundation("sqlite:///app.db") as fdn:          # doctest: +SKIP
    ...     fdn.config.set("port", 4000)

    ``migrate``: ``"upgrade"`` the schema on start, ``"check"`` that it is at head, or
    ``"skip"``; by default SQLite upgrades and PostgreSQL checks (run ``foundation db
    upgrade`` during deploys). Other keyword arguments override :class:`Settings`.

    The services, one object each: ``config`` (:class:`~foundation.config.Config`),
    ``events`` (:class:`~foundation.events.Events`), ``service_registry``
    (:class:`~foundation.service_registry.ServiceRegistry`), ``circuit_breaker``
    (:class:`~foundation.circuit_breaker.CircuitBreakers`), ``rate_limiter``
    (:class:`~foundation.rate_limiter.RateLimiter`) and ``telemetry``
    (:class:`~foundation.telemetry.Telemetry`, the one passed in or a new one). Also
    ``settings`` (the resolved :class:`Settings`), ``url`` (the parsed
    :class:`~foundation.database.url.DatabaseURL`; ``url.masked`` hides the password),
    ``database``, ``feed`` and :meth:`poller`.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        migrate: MigrateMode | None = None,
        settings: Settings | None = None,
        telemetry: Telemetry | None = None,
        **overrides: Any,
    ) -> None:
        mode = self._prepare(url, migrate, settings, telemetry, overrides)
        self._db = SyncDatabase(self.url, self.settings)
        self._close_lock = threading.Lock()
        self._closer: int | None = None  # the thread of the first close()
        self._closed = threading.Event()
        try:
            if mode != "skip":
                error = _outdated(self.url, self._current_revision())
                if error is not None and mode == "upgrade" and not error.context.get("newer"):
                    self._upgrade()
                elif error is not None:
                    raise error
            sql = self._statements(self._db.codec)
            self.config = Config(self._db, sql.config, self.settings, self.telemetry)
            self.events = Events(self._db, sql.events, self.settings, self.telemetry)
            self.config.log_appended = self.events.tail_cache.mark_behind
            self.service_registry = ServiceRegistry(
                self._db, sql.registry, self.settings, self.telemetry
            )
            self.circuit_breaker = CircuitBreakers(
                self._db, sql.breakers, self.settings, self.telemetry
            )
            self.rate_limiter = RateLimiter(
                self._db,
                sql.limits,
                self.settings,
                self.telemetry,
                self.settings.rate_limiter_on_storage_error,
            )
            with rows_readable("foundation_config"):
                self.config.load()
            with rows_readable(_REGISTRY_TABLES):
                self.service_registry.load()
            with rows_readable("foundation_breakers"):
                self.circuit_breaker.load()
            self._start_feed(self._topics())
        except BaseException:
            self.close()
            raise

    def _current_revision(self) -> str | None:
        exists, select = VERSION_QUERIES[self.url.backend]
        if self._db.fetchone(exists) is None:
            return None
        row = self._db.fetchone(select)
        return None if row is None else str(row[0])

    def poller(self, interval_ms: int = 10_000) -> Poller:
        """A started poller of this node's vital signs (process memory, the event log's
        tail position, open breakers); ``stop()`` it, or use it as a context manager.
        Subscriptions report their own lag as ``foundation.events.subscription.lag``."""
        from foundation.telemetry.poller import Poller, event_log, open_breakers, process_memory

        if self._db.closed:  # its probes would read a database that is gone
            raise StorageUnavailableError(
                "this Foundation instance is closed: it has nothing left to poll",
                context={"url": self.url.masked, "closed": True},
            )

        def open_count() -> int:
            return sum(info.state == "open" for info in self.circuit_breaker.breakers())

        def tail_position() -> int | None:
            # A short outage skips this round: a probe that raises is removed for good.
            try:
                return self.events.last_position()
            except FoundationError:
                return None

        poller = Poller(
            self.telemetry,
            measurements=[
                process_memory(),
                event_log(tail_position=tail_position),
                open_breakers(open_count, total=lambda: len(self.circuit_breaker.breakers())),
            ],
            interval_ms=interval_ms,
        )
        poller.start()
        return poller

    @property
    def database(self) -> SyncDatabase:
        """The database handle the services share (``execute``, ``fetchone``,
        ``fetchall``, ``transaction``), for statements of your own on the same connections;
        driver errors come out as ``storage_unavailable`` or ``storage_error``. It closes
        with the instance.

        Inside ``with fdn.database.transaction() as tx:`` run statements through ``tx``.
        Foundation's services never join it: on PostgreSQL a call of theirs runs on
        another connection and commits by itself; on SQLite any other call on the
        instance from inside it (the same thread; the same task, or one it started, on
        the async face) raises ``storage_error``: it would join the transaction and be
        undone by its rollback while the service believed it done."""
        return self._db

    def close(self) -> None:
        """End the subscriptions, release this node's names and lease, stop the change
        feed and close every connection. Safe to call twice; a closed instance is not
        entered again."""
        if self._forked:
            return  # the lease, names and connections are the parent process's
        with self._close_lock:
            closer, self._closer = self._closer, self._closer or threading.get_ident()
        if closer is not None:
            # Another thread's close() is under way (a shutdown hook's and the main
            # thread's): return once it has released everything, not while it does. Its
            # own thread (a signal handler interrupting it) and a callback or handler of
            # this instance (on a thread of Foundation's, which that close() may be
            # waiting for) return at once.
            current = threading.current_thread()
            if closer != current.ident and not current.name.startswith("foundation-"):
                self._closed.wait()
            return
        try:
            self._close_steps()
        finally:
            self._closed.set()

    def _close_steps(self) -> None:
        # Last pushed, first run; each step runs whatever the one before raised (Ctrl-C
        # while a handler ends, say): one cut short would leave threads running.
        with contextlib.ExitStack() as steps:
            steps.callback(self._db.close)
            if self._feed is not None:
                steps.callback(self._feed.stop)
            if getattr(self, "service_registry", None) is not None:
                steps.callback(self.service_registry.close)  # this node's names and lease
            if getattr(self, "events", None) is not None:
                steps.callback(self.events.close)  # subscriptions, while the database is open

    def __enter__(self) -> Foundation:
        if self._db.closed:
            # As AsyncFoundation.open: a closed instance is not reopened (its lease, feed
            # and connections are gone); the first call would say so, later and less well.
            raise StorageUnavailableError(
                "this Foundation was closed and cannot be opened again: create a new "
                "Foundation(url)",
                context={"url": self.url.masked, "closed": True},
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncFoundation(_Base):
    """The asyncio face: ``async with AsyncFoundation(url) as fdn:`` (or ``await fdn.open()``).

    Same attributes as :class:`Foundation`; what touches the database is awaited, pure
    cache reads (``config.get``, ``telemetry.execute``) are plain calls.

    The services: ``config`` (:class:`~foundation.config.AsyncConfig`), ``events``
    (:class:`~foundation.events.AsyncEvents`), ``service_registry``
    (:class:`~foundation.service_registry.AsyncServiceRegistry`), ``circuit_breaker``
    (:class:`~foundation.circuit_breaker.AsyncCircuitBreakers`), ``rate_limiter``
    (:class:`~foundation.rate_limiter.AsyncRateLimiter`) and ``telemetry``
    (:class:`~foundation.telemetry.Telemetry`, shared with sync code). Also ``settings``
    (the resolved :class:`Settings`), ``url`` (the parsed
    :class:`~foundation.database.url.DatabaseURL`; ``url.masked`` hides the password),
    ``database`` and ``feed``. The constructor checks its arguments and connects nothing;
    :meth:`open` connects, checks or upgrades the schema and loads the caches. There is
    no ``poller()`` here: build a :class:`foundation.telemetry.AsyncPoller`.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        migrate: MigrateMode | None = None,
        settings: Settings | None = None,
        telemetry: Telemetry | None = None,
        **overrides: Any,
    ) -> None:
        self._mode = self._prepare(url, migrate, settings, telemetry, overrides)
        self._db = AsyncDatabase(self.url, self.settings)
        sql = self._statements(self._db.codec)
        self.config = AsyncConfig(self._db, sql.config, self.settings, self.telemetry)
        self.events = AsyncEvents(self._db, sql.events, self.settings, self.telemetry)
        self.config.log_appended = self.events.tail_cache.mark_behind
        self.service_registry = AsyncServiceRegistry(
            self._db, sql.registry, self.settings, self.telemetry
        )
        self.circuit_breaker = AsyncCircuitBreakers(
            self._db, sql.breakers, self.settings, self.telemetry
        )
        self.rate_limiter = AsyncRateLimiter(
            self._db,
            sql.limits,
            self.settings,
            self.telemetry,
            self.settings.rate_limiter_on_storage_error,
        )
        self._opened = False
        self._closed = False
        # The first close(): its loop, and its end told to that loop and to any thread.
        self._closing: (
            tuple[asyncio.AbstractEventLoop, asyncio.Future[None], threading.Event] | None
        ) = None

    async def open(self) -> AsyncFoundation:
        """Connect, check (or upgrade) the schema as ``migrate`` says, load the config,
        registry and breaker caches, start the change feed; returns the instance.

        ``async with`` and ``await AsyncFoundation(url)`` call it; a second call returns at
        once. Raises ``schema_outdated`` (the schema is not at this release's head and
        ``migrate`` does not upgrade it), ``config_error`` (a bad config file, or another
        live instance holds this node id), ``storage_unavailable`` (the database cannot be
        reached, or this instance was closed). A failed or cancelled open closes the
        instance: make a new one to try again.
        """
        if self._closed:
            # Its connections, feed and subscriptions are gone: a closed instance is not
            # reopened (as a closed file is not); make a new one.
            raise StorageUnavailableError(
                "this AsyncFoundation was closed and cannot be opened again: create a new "
                "AsyncFoundation(url)",
                context={"url": self.url.masked, "closed": True},
            )
        if self._opened:
            return self
        try:
            await self._db.open()
            if self._mode != "skip":
                error = _outdated(self.url, await self._current_revision())
                if error is not None and self._mode == "upgrade" and not error.context.get("newer"):
                    # Startup only: alembic is synchronous, so it runs in a worker thread.
                    await asyncio.to_thread(self._upgrade)
                elif error is not None:
                    raise error
            with rows_readable("foundation_config"):
                await self.config.load()
            with rows_readable(_REGISTRY_TABLES):
                await self.service_registry.load()
            with rows_readable("foundation_breakers"):
                await self.circuit_breaker.load()
            self._start_feed(self._topics())
            self._opened = True
        except BaseException:
            await self.close()
            raise
        return self

    async def _current_revision(self) -> str | None:
        exists, select = VERSION_QUERIES[self.url.backend]
        if await self._db.fetchone(exists) is None:
            return None
        row = await self._db.fetchone(select)
        return None if row is None else str(row[0])

    @property
    def database(self) -> AsyncDatabase:
        """The database handle the services share (awaitable ``execute``, ``fetchone``,
        ``fetchall``, ``transaction``); as :attr:`Foundation.database`, calls inside its
        ``transaction()`` included (on SQLite they would wait for it for ever)."""
        return self._db

    async def close(self) -> None:
        """End the subscriptions, release this node's names and lease, stop the change feed
        and close every connection; safe to call twice. A closed instance is not opened
        again.

        Each step runs whole even if the caller is cancelled meanwhile (the cancellation
        is raised after): a close cut short would leave this node's names live until
        their lease ran out.
        """
        self._closed = True
        if self._forked:
            return  # the lease, names and connections are the parent process's
        loop = asyncio.get_running_loop()
        if self._closing is not None:
            first_loop, first, done = self._closing
            if done.is_set():
                return
            if first_loop is loop or first_loop.is_running():
                # Another close() is under way (a SIGTERM task's and `async with`'s exit, two
                # handlers', an atexit hook's in another loop): return once it has released
                # everything, not while it does; but at once from this instance's handler
                # or watch callback that it may be waiting for.
                if self._awaited_by_close():
                    return
                if first_loop is loop:
                    await asyncio.shield(first)
                else:
                    await asyncio.to_thread(done.wait)
                return
            # The first close's loop ended with it unfinished: each step below runs again,
            # which is harmless.
        ours = self._closing = (loop, loop.create_future(), threading.Event())
        try:
            await self._close_steps()
        finally:
            ours[2].set()
            if not ours[1].done():
                ours[1].set_result(None)

    def _awaited_by_close(self) -> bool:
        """Whether the current task is one a close() waits for: a subscription's handler
        of this instance, or its registry's watch callbacks (or a task one of them
        awaits)."""
        following = _FOLLOWING.get()
        if following is not None and following._events is self.events:
            return following._called_by_handler()  # (or a task the handler awaits)
        dispatching = _DISPATCHING.get()
        return (
            dispatching is not None
            and dispatching.called_back()  # (or a task the callback awaits)
            and (dispatching is self.service_registry._dispatcher)
        )

    async def _close_steps(self) -> None:
        self._db.closing()
        # subscribe() refuses from here on, as on the sync face: the events close (below)
        # runs in a task of its own, and a subscribe in between would be accepted.
        self.events.closed = True
        # As Foundation.close, and each step whole even if the caller is cancelled
        # meanwhile (its cancellation is raised after): a close cut short would leave this
        # node's names, members and lease live for their TTL, and the database's threads
        # running. At the end of asyncio.run (SIGTERM -> sys.exit) every task is
        # cancelled at once, a step's own task included: the next steps still run.
        async with contextlib.AsyncExitStack() as steps:
            steps.push_async_callback(_whole, self._db.close)
            if self._feed is not None:
                steps.push_async_callback(_whole, asyncio.to_thread, self._feed.stop)
            steps.push_async_callback(_whole, self.service_registry.close)
            steps.push_async_callback(_whole, self.events.close)

    async def __aenter__(self) -> AsyncFoundation:
        return await self.open()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __await__(self) -> Any:
        return self.open().__await__()


async def _whole(step: Callable[..., Awaitable[Any]], *args: Any) -> None:
    """``await step(*args)`` to its end, even if the caller is cancelled meanwhile.

    A step whose own task was cancelled by someone else (the end of asyncio.run cancels
    every task, one not yet started included) runs again: closing twice is harmless.
    """
    for attempt in (1, 2):
        try:
            await finish(step(*args))
            return
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if attempt == 2 or (current is not None and current.cancelling()):
                raise
