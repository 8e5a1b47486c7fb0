"""The change feed: how a node learns that another node changed a shared table.

PostgreSQL: triggers ``NOTIFY foundation`` with a JSON payload naming the topic and
the row; each instance holds one dedicated autocommit connection that LISTENs. The
listener reconnects by itself with back-off, and after every (re)connect asks each
subscriber to resync from the tables, since notifications sent while it was away are
lost. SQLite: a thread polls ``PRAGMA data_version`` (it changes when any other
connection commits to the file, whatever the table) and, when it moves, calls each
subscriber's ``poll`` (or ``resync`` if it has none). A poll first reads the latest
revision of its topics (:class:`TopicRevisions`: ``foundation_topic_revisions``, which
SQLite triggers append to in the writer's transaction, migration 0006) and returns at
once when they did not move, so an event appended to the log costs the registry one
small read, not a re-read.

Subscribers run in the feed's thread and read through the feed's own connection, so
the feed works the same for :class:`~foundation.Foundation` and
:class:`~foundation.AsyncFoundation`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import select
import socket
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import sqlalchemy as sa

from foundation.database.postgres import driver_kwargs
from foundation.database.schema import topic_revisions
from foundation.database.statements import compile_sql
from foundation.database.sync import (
    Cursor,
    ForkHold,
    _DriverCursor,
    close_inherited,
    connect_sqlite,
    statement_wait_s,
)
from foundation.database.url import Backend, DatabaseURL
from foundation.errors import FoundationError
from foundation.settings import Settings

__all__ = [
    "CHANNEL",
    "TOPIC_BREAKERS",
    "TOPIC_LEASES",
    "TOPIC_MEMBERS",
    "TOPIC_NAMES",
    "ChangeFeed",
    "FeedSubscriber",
    "TopicRevisions",
    "changed_keys_sql",
    "start_feed",
]

CHANNEL = "foundation"
log = logging.getLogger("foundation.feed")

# A row the driver cannot load (a PostgreSQL time of -infinity written with plain SQL, say)
# is no lost connection (the feed's is in autocommit: it is as fit as before): told, and
# the feed goes on with every other change, rather than reconnect and fail on it for good.
# So is one a reader cannot convert (SQLite keeps text written to an INTEGER column).
_UNLOADABLE = "%s: a row holds a value this node cannot read (written with plain SQL?): %s"

# The topics migration 0006's SQLite triggers bump (the migration spells them itself).
TOPIC_NAMES = "registry"  # foundation_registry, by name
TOPIC_LEASES = "registry.leases"
TOPIC_MEMBERS = "registry.members"
TOPIC_BREAKERS = "breakers"


@dataclass(frozen=True)
class TopicRevisions:
    """The latest revision of each of some topics: ``fetchone(sql, params)`` gives one row,
    one value per topic (None: no change yet), each an index seek (SQLite's poll)."""

    topics: tuple[str, ...]
    sql: str
    params: dict[str, str]

    @classmethod
    def build(cls, backend: Backend, *topics: str) -> TopicRevisions:
        t = topic_revisions
        latest = [
            sa.select(sa.func.max(t.c.revision))
            .where(t.c.topic == sa.bindparam(f"topic{i}"))
            .scalar_subquery()
            for i in range(len(topics))
        ]
        params = {f"topic{i}": topic for i, topic in enumerate(topics)}
        return cls(topics, compile_sql(sa.select(*latest), backend), params)

    def read(self, reader: Cursor) -> tuple[Any, ...]:
        row = reader.fetchone(self.sql, self.params)
        return tuple(row) if row is not None else (None,) * len(self.topics)


def changed_keys_sql(backend: Backend, *columns: Any, key: Any) -> str:
    """(revision, key, *columns) of each change of ``:topic`` after revision ``:after``, in
    order, each key outer-joined to its row by ``key == column`` (NULLs: deleted)."""
    t = topic_revisions
    return compile_sql(
        sa.select(t.c.revision, t.c.key, *columns)
        .select_from(t.outerjoin(key.table, key == t.c.key))
        .where(t.c.topic == sa.bindparam("topic"), t.c.revision > sa.bindparam("after"))
        .order_by(t.c.revision),
        backend,
    )


class FeedSubscriber(Protocol):
    def on_notify(self, payload: dict[str, Any], reader: Cursor) -> None:
        """One change named by a notification (PostgreSQL)."""

    def resync(self, reader: Cursor) -> None:
        """Re-read everything: notifications may have been missed."""


class ChangeFeed:
    """Base: the subscriber table, the thread, start and stop."""

    RESYNC_RETRY_S = 5.0  # a cache that failed to read its rows tries again after this
    RESYNC_RETRY_MAX_S = 60.0

    def hold_for_fork(self) -> list[Any]:
        """The locks to hold across ``os.fork()`` (see :mod:`foundation._fork`)."""
        return []

    def close_in_child(self) -> None:
        """In a forked child: close the SQLite connection it inherited (see
        :meth:`SyncDatabase.disown`); PostgreSQL's listener is left alone."""

    def __init__(self, url: DatabaseURL, settings: Settings, emit: Any) -> None:
        self.url = url
        self.settings = settings
        self._emit = emit  # telemetry execute
        self._subscribers: dict[str, list[FeedSubscriber]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._resync_requested = threading.Event()
        # A cache that could not read its rows (see _UNLOADABLE) is brought up to date
        # again from this time on (monotonic; 0: none due): a row put right with plain SQL
        # reaches it then, and the changes it missed with it.
        self._resync_retry_at = 0.0
        self._resync_retry_s = 0.0  # the next retry's delay (0: RESYNC_RETRY_S)
        self._thread = threading.Thread(
            target=self._run, name=f"foundation-feed-{settings.node_id}", daemon=True
        )
        self.resyncs = 0
        self.polls = 0  # SQLite: passes that asked subscribers to poll (the file changed)

    def subscribe(self, topic: str, subscriber: FeedSubscriber) -> None:
        with self._lock:
            self._subscribers.setdefault(topic, []).append(subscriber)

    def _all(self) -> list[tuple[str, FeedSubscriber]]:
        """(topic, subscriber): a log line names the topic (its cache: events, registry…)."""
        with self._lock:
            return [(topic, s) for topic, subs in self._subscribers.items() for s in subs]

    def start(self) -> None:
        self._thread.start()

    def request_resync(self) -> None:
        """Ask for a full resync soon (a write whose outcome is unknown, for instance)."""
        self._resync_requested.set()

    def _take_resync_request(self) -> bool:
        if self._resync_requested.is_set():
            self._resync_requested.clear()
            return True
        return 0.0 < self._resync_retry_at <= time.monotonic()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _resync_all(self, reader: Cursor) -> None:
        self.resyncs += 1
        self._resync_retry_at = 0.0
        failed = False
        for topic, sub in self._all():
            try:
                sub.resync(reader)
            except (psycopg.DataError, ValueError) as exc:  # see _UNLOADABLE
                log.error(
                    _UNLOADABLE,
                    f"the {topic} cache could not be brought up to date",
                    exc,
                    exc_info=isinstance(exc, ValueError),
                )
                failed = True
            except (sqlite3.Error, psycopg.Error):
                raise  # the feed's connection failed (see _dispatch): reconnect, resync
            except FoundationError as exc:  # a row no reader can load, say: it says which
                log.error("the %s cache could not be brought up to date: %s", topic, exc)
                failed = True
            except Exception:
                log.exception("the %s cache could not be brought up to date", topic)
                failed = True
        if failed:
            self._retry_resync()
        else:
            self._resync_retry_s = 0.0

    def _retry_resync(self) -> None:
        """A full resync again later, each time twice as late (a row that stays bad costs
        a failing resync and a log line a minute at most)."""
        if not self._resync_retry_at:
            delay = self._resync_retry_s or self.RESYNC_RETRY_S
            self._resync_retry_at = time.monotonic() + delay
            self._resync_retry_s = min(delay * 2, self.RESYNC_RETRY_MAX_S)

    def _poll_all(self, reader: Cursor) -> None:
        """Something was committed: subscribers with a cheap incremental ``poll`` use it."""
        for topic, sub in self._all():
            poll = getattr(sub, "poll", None)
            try:
                poll(reader) if poll is not None else sub.resync(reader)
            except (psycopg.DataError, ValueError) as exc:  # see _UNLOADABLE
                log.error(_UNLOADABLE, f"the {topic} cache could not read the latest changes", exc)
                self._retry_resync()
            except (sqlite3.Error, psycopg.Error):
                raise
            except FoundationError as exc:  # a row no reader can load, say: it says which
                log.error("the %s cache could not read the latest changes: %s", topic, exc)
                self._retry_resync()
            except Exception:
                log.exception("the %s cache could not read the latest changes", topic)
                self._retry_resync()
        self.polls += 1

    def notify_later(self, key: str, due: float, payload: dict[str, Any]) -> None:
        """Send ``payload`` (with a ``position``) on the channel at ``time.monotonic()``
        ``due``, unless :meth:`covered` first (PostgreSQL: a NOTIFY a writer left to the
        feed; SQLite has none, nodes poll the file)."""

    def covered(self, key: str, position: int) -> None:
        """A NOTIFY naming ``position`` went out with a write: what ``key`` left to send
        up to there is no longer needed."""

    def _run(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class _Announcements:
    """NOTIFYs that writers leave to the feed's connection (events in a burst, migration
    0008): one per key, the highest position asked, sent once due unless a writer's own
    NOTIFY covered it meanwhile."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[str, tuple[float, dict[str, Any]]] = {}
        self._asleep_until = 0.0  # time.monotonic() the feed's select may last until
        # Part of the feed's select, so that a first announcement (or stop) wakes it.
        self.reader, self._waker = socket.socketpair()
        self.reader.setblocking(False)
        self._waker.setblocking(False)

    def add(self, key: str, due: float, payload: dict[str, Any]) -> None:
        with self._lock:
            held = self._due.get(key)
            if held is not None:
                due = min(due, held[0])
                if held[1].get("position", 0) > payload.get("position", 0):
                    payload = held[1]
            self._due[key] = (due, payload)
            # Woken only when it sleeps past this time: in a burst the feed is mostly
            # between selects (reading the burst's first NOTIFY) and sees it by itself.
            late = due < self._asleep_until
        if late:
            self.wake()

    def cancel(self, key: str, position: int) -> None:
        with self._lock:
            held = self._due.get(key)
            if held is not None and held[1].get("position", 0) <= position:
                del self._due[key]

    def wake(self) -> None:
        with contextlib.suppress(OSError):  # a full buffer already wakes it; closed: stopped
            self._waker.send(b"!")

    def drain(self) -> None:
        with contextlib.suppress(OSError):
            while self.reader.recv(4096):
                pass

    def sleep(self, longest: float) -> float:
        """How long the feed may wait in select; until ``awake``, an announcement due
        sooner than that wakes it."""
        now = time.monotonic()
        with self._lock:
            soonest = min((due for due, _ in self._due.values()), default=now + longest)
            timeout = max(0.0, min(longest, soonest - now))
            self._asleep_until = now + timeout
        return timeout

    def awake(self) -> None:
        with self._lock:
            self._asleep_until = 0.0

    def send_due(self, conn: psycopg.Connection[Any], everything: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            if not self._due:
                return
            ready = {k: v for k, v in self._due.items() if everything or v[0] <= now}
            for key in ready:
                del self._due[key]
        try:
            for key, (_, payload) in list(ready.items()):
                conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, json.dumps(payload)))
                del ready[key]
        finally:
            for key, (due, payload) in ready.items():  # the connection failed: next time
                self.add(key, due, payload)

    def close(self) -> None:
        self.reader.close()
        self._waker.close()


class PostgresFeed(ChangeFeed):
    """LISTEN on a dedicated connection that reconnects and resyncs by itself."""

    KEEPALIVE_S = 5.0
    # After a batch, let notifications gather this long before reading again: a burst of
    # writes (this node's own, mostly) then wakes the thread once per few notifications
    # rather than once each, and the writers stop queueing for the GIL behind it. The
    # first notification after a quiet spell is read at once.
    BATCH_S = 0.002

    def __init__(self, url: DatabaseURL, settings: Settings, emit: Any) -> None:
        super().__init__(url, settings, emit)
        self._announcements = _Announcements()

    def notify_later(self, key: str, due: float, payload: dict[str, Any]) -> None:
        self._announcements.add(key, due, payload)

    def covered(self, key: str, position: int) -> None:
        self._announcements.cancel(key, position)

    def stop(self) -> None:
        self._stop.set()
        self._announcements.wake()  # out of its select now, not at its next timeout
        super().stop()

    def _run(self) -> None:
        try:
            self._listen()
        finally:
            self._announcements.close()

    def _listen(self) -> None:
        announcements = self._announcements
        delay = 0.05
        while not self._stop.is_set():
            conn: psycopg.Connection[Any] | None = None
            try:
                conn = psycopg.connect(
                    self.url.conninfo,
                    autocommit=True,
                    **driver_kwargs(self.settings, self.url, "foundation-listen"),
                )
                conn.execute(f"LISTEN {CHANNEL}")
                # Notifications that arrive while a subscriber queries through this
                # connection are handed over by psycopg; the others are read below.
                pending: deque[str] = deque()
                conn.add_notify_handler(functools.partial(_queue_payload, pending))
                reader = _DriverCursor(conn)
                # LISTEN is in place before the resync, so nothing falls between them.
                self._resync_all(reader)
                self._connected.set()
                self._emit(
                    ("foundation", "feed", "connected"), {"count": 1}, {"backend": "postgresql"}
                )
                delay = 0.05
                last_ping = time.monotonic()
                pgconn = conn.pgconn
                while not self._stop.is_set():
                    # Waiting on the socket directly: psycopg's notifies() sets up a
                    # selector per call, and this thread takes the GIL at the moment a
                    # writer's own result comes back (NOTIFY is sent at its commit), so
                    # what it does per notification is what every store waits for.
                    if not pending:
                        ready = select.select(
                            [pgconn.socket, announcements.reader.fileno()],
                            [],
                            [],
                            announcements.sleep(0.25),
                        )[0]
                        announcements.awake()
                        if announcements.reader.fileno() in ready:
                            announcements.drain()
                        if pgconn.socket in ready:
                            pgconn.consume_input()  # raises OperationalError if link died
                            while (note := pgconn.notifies()) is not None:
                                pending.append(note.extra.decode("utf-8", "replace"))
                    if pending:
                        while pending and not self._stop.is_set():  # stop() cuts a backlog
                            self._dispatch(pending.popleft(), reader)
                        # A burst of notifications then wakes this thread once per
                        # batch, not once each (at most BATCH_S more latency).
                        self._stop.wait(self.BATCH_S)
                    announcements.send_due(conn)
                    if self._take_resync_request():
                        self._resync_all(reader)
                    if time.monotonic() - last_ping > self.KEEPALIVE_S:
                        conn.execute("SELECT 1")  # find a silently dead socket
                        last_ping = time.monotonic()
                # Stopping: what writers left to announce goes now, not never.
                announcements.send_due(conn, everything=True)
            except psycopg.Error as exc:
                if self._stop.is_set():
                    break
                was_connected = self._connected.is_set()
                self._connected.clear()
                if was_connected:
                    log.warning("change feed lost its connection (%s); reconnecting", exc)
                    self._emit(
                        ("foundation", "feed", "disconnected"),
                        {"count": 1},
                        {"backend": "postgresql", "error": type(exc).__name__},
                    )
                self._stop.wait(delay)
                delay = min(delay * 2, self.settings.listen_reconnect_max_ms / 1000)
            finally:
                if conn is not None:
                    conn.close()
        self._connected.clear()

    def _dispatch(self, raw: str, reader: Cursor) -> None:
        try:
            payload = json.loads(raw)
            topic = payload["topic"]
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed notification on %r: %r", CHANNEL, raw[:200])
            return
        with self._lock:
            subscribers = list(self._subscribers.get(topic, ()))
        for sub in subscribers:
            try:
                sub.on_notify(payload, reader)
            except (psycopg.DataError, ValueError) as exc:  # see _UNLOADABLE
                log.error(_UNLOADABLE, f"change feed subscriber failed on {payload!r}", exc)
            except psycopg.Error:
                # The connection is gone, or no longer fit (a migration made a statement
                # prepared on it stale): reconnect and resync, rather than go on silent
                # and out of date while reporting itself connected.
                raise
            except FoundationError as exc:  # a row no reader can load, say: it says which
                log.error("change feed subscriber failed on %r: %s", payload, exc)
            except Exception:
                log.exception("change feed subscriber failed on %r", payload)


def _queue_payload(queue: deque[str], note: psycopg.Notify) -> None:
    queue.append(note.payload)


class SQLiteFeed(ChangeFeed):
    """Poll ``PRAGMA data_version``; when another connection committed, let subscribers poll."""

    def __init__(self, url: DatabaseURL, settings: Settings, emit: Any) -> None:
        super().__init__(url, settings, emit)
        self.busy = threading.Lock()  # held while the thread is in SQLite
        self._conn: sqlite3.Connection | None = None  # the poll's, for close_in_child

    def hold_for_fork(self) -> list[Any]:
        """As :meth:`SyncDatabase.hold_for_fork`, for the feed's own connection."""
        wait_s = statement_wait_s(self.settings)
        return [self.busy] if ForkHold.acquire(self.busy, wait_s) else []

    def close_in_child(self) -> None:
        close_inherited([self._conn] if self._conn is not None else [])

    def _run(self) -> None:
        interval = self.settings.poll_interval_ms / 1000
        conn: sqlite3.Connection | None = None
        last: int | None = None
        while not self._stop.is_set():
            with self.busy:
                conn, last = self._poll_once(conn, last)
                self._conn = conn
            self._stop.wait(interval)
        if conn is not None:
            with self.busy:
                conn.close()
                self._conn = None
        self._connected.clear()

    def _poll_once(
        self, conn: sqlite3.Connection | None, last: int | None
    ) -> tuple[sqlite3.Connection | None, int | None]:
        try:
            if conn is None:
                conn = connect_sqlite(self.url, self.settings)
                last = None
            version = conn.execute("PRAGMA data_version").fetchone()[0]
            if last is None or self._take_resync_request():
                self._resync_all(_DriverCursor(conn))
                self._connected.set()
            elif version != last:
                self._poll_all(_DriverCursor(conn))
            return conn, version
        except sqlite3.Error as exc:
            log.warning("SQLite change feed poll failed (%s); retrying", exc)
            if conn is not None:
                conn.close()
            return None, None
        except Exception:
            log.exception("SQLite change feed subscriber failed")
            return conn, last


def start_feed(url: DatabaseURL, settings: Settings, emit: Any) -> ChangeFeed:
    feed: ChangeFeed = (
        PostgresFeed(url, settings, emit)
        if url.backend == "postgresql"
        else SQLiteFeed(url, settings, emit)
    )
    return feed
