"""What the circuit breaker's two faces share: :class:`~._service.CircuitBreakers` (sync)
and :class:`~._aio.AsyncCircuitBreakers` build on the cores and the base here.

``scope="shared"`` (the default): the state lives in ``foundation_breakers``; every node
caches it and the change feed (topic ``breakers``) keeps the cache fresh, so a call on a
closed breaker, or a refusal by an open one, costs no database round trip. Failures,
trips, the one half-open probe and its outcome are single conditional statements
(:mod:`._store`). On PostgreSQL every time comparison is made on the database's clock:
the statements use it, and each answer carries it, so a node keeps the offset between
its own clock and the database's and judges "is a probe due yet" on the database's
time. ``scope="local"``: the same transitions on an in-memory row. The probe's claim is
a lease (``timeout``, or ``reset_timeout`` without one, and a second): renewed every half
lease while the probe runs (by a thread for a plain function, a task while a coroutine
is awaited), so a probe that runs long is still the only one; a caller that dies
mid-probe leaves it to the next caller once the lease ends.

Timeouts. An ``async`` function is cancelled when it runs past ``timeout``. A
synchronous function cannot be interrupted in Python: it runs to completion in the
caller's thread (no worker thread, no leaked work), and if it took longer than
``timeout`` its result is discarded, the call counts as a failure and ``timeout`` is
raised. ``timeout=None`` disables the check.

What counts as a failure: an exception that is an instance of ``failure_exceptions``
(default ``(Exception,)``) or a timeout. Other exceptions are re-raised and count as a
success (the dependency answered). ``BaseException`` subclasses that are not
``Exception`` (``KeyboardInterrupt``, ``SystemExit``, ``asyncio.CancelledError``)
propagate untouched and are not counted; a probe they interrupt is retried by the next
caller once its lease ends.

If the database cannot be reached while an outcome is recorded, the function's own
result or exception wins: the error is logged and emitted as
``foundation.circuit_breaker.storage_error``. A probe that cannot be claimed is refused
(``circuit_open``): a breaker fails closed while it is already open. So while the
database is down a shared breaker that is closed stays closed (its failures are not
recorded), and each failed recording first waits for a connection (``connect_timeout_s``
on PostgreSQL, ``sqlite_busy_timeout_ms`` on SQLite): a dependency that fails with the
database guard it with ``scope="local"``, which needs none.

After ``close()`` a shared breaker raises ``storage_unavailable`` without calling the
function (as every other service of a closed instance does: that is a bug in the caller,
not an outage). A local breaker needs no database and keeps working, as the rate
limiter's local scope does; the state reads (``state``, ``breakers``) answer from the
cache either way.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from foundation._text import node_tag, shown
from foundation.circuit_breaker import _logic as logic
from foundation.circuit_breaker._logic import (
    CLOSED,
    CLOSED_ROW,
    STATES,
    BreakerOptions,
    BreakerRow,
    admission,
    check_name,
    fn_name,
    options_from,
)
from foundation.circuit_breaker._store import BreakerSQL
from foundation.database.feed import TOPIC_BREAKERS, TopicRevisions
from foundation.database.schema import KEY_COLUMN_WIDTH
from foundation.database.sync import Cursor
from foundation.errors import (
    CircuitOpenError,
    FoundationError,
    StorageUnavailableError,
    TimeoutError,
    ValidationError,
)
from foundation.settings import Settings
from foundation.telemetry import Telemetry

__all__ = ["BreakerInfo"]

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("foundation.circuit_breaker")

_STATE_CHANGE = ("foundation", "circuit_breaker", "state_change")
_REJECTED = ("foundation", "circuit_breaker", "rejected")
_TIMEOUT = ("foundation", "circuit_breaker", "timeout")
_FAILURE = ("foundation", "circuit_breaker", "failure")
_STORAGE = ("foundation", "circuit_breaker", "storage_error")


@dataclass(frozen=True, slots=True)
class BreakerInfo:
    """One breaker as ``foundation breakers`` would list it."""

    name: str
    scope: str
    state: str
    failures: int
    retry_after: int | None  # ms until a probe may run (open), None otherwise or if forced


def _now_local() -> int:
    return time.time_ns() // 1_000_000


class _Closable(Protocol):
    _closed: bool


class _BreakerCore:
    """What both breaker objects share: the name, the options, the cache they read."""

    __slots__ = ("_cache", "_db", "_failures", "_svc", "name", "options")

    def __init__(self, svc: _BreakersBase, name: str, options: BreakerOptions) -> None:
        self._svc = svc
        self.name = name
        self.options = options
        self._failures = options.failure_exceptions
        self._cache = svc._shared if options.scope == "shared" else svc._local
        # The database a shared breaker needs (None: local), to refuse calls after close().
        self._db: _Closable | None = (
            getattr(svc, "_db", None) if options.scope == "shared" else None
        )

    def _closed_error(self) -> StorageUnavailableError:
        return StorageUnavailableError(
            f"this Foundation instance is closed: the shared circuit breaker {self.name!r} "
            "cannot run calls (a local breaker, scope='local', needs no database)",
            context={"name": self.name, "scope": "shared"},
        )

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` (this node's cached view)."""
        row = self._cache.get(self.name)
        return CLOSED if row is None else row.state

    @property
    def failures(self) -> int:
        row = self._cache.get(self.name)
        return 0 if row is None else row.failures

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, state={self.state!r})"


class _BreakersBase:
    def __init__(self, sql: BreakerSQL | None, settings: Settings, telemetry: Telemetry) -> None:
        self._sql = sql
        self._settings = settings
        self._telemetry = telemetry
        self._node = settings.node_id
        # At most the name column's width (max_key_length may allow config's longer keys).
        self._max_name = min(settings.max_key_length, KEY_COLUMN_WIDTH)
        self._token_prefix = node_tag(self._node)  # a probe token: "<node>#<n>"
        self._shared: dict[str, BreakerRow] = {}
        self._local: dict[str, BreakerRow] = {}
        self._lock = threading.Lock()
        self._offset_ms = 0  # database clock minus this node's clock (PostgreSQL)
        self._tokens = itertools.count(1)
        self._objects: dict[Any, Any] = {}
        self._calls: dict[Any, Any] = {}
        # The SQLite feed's side: the breakers topic's revision when last read (None: read
        # everything on the next poll) and how many full re-reads happened.
        self._topic: TopicRevisions | None = None
        if sql is not None and sql.backend == "sqlite":  # PostgreSQL: NOTIFY names changes
            self._topic = TopicRevisions.build(sql.backend, TOPIC_BREAKERS)
        self._topic_seen: tuple[Any, ...] | None = None
        self.resyncs = 0
        # A full read's snapshot may predate a write this node made meanwhile (another
        # thread or task): each name this node wrote is numbered, and a read leaves alone
        # what was written after it began.
        self._writes = 0
        self._written: dict[str, int] = {}

    # -- options and objects ----------------------------------------------------------

    def _object(self, cls: type, name: Any, options: dict[str, Any]) -> Any:
        try:
            # The name's type too: an IntEnum member equals its int (and True equals 1),
            # which is no name.
            key = (type(name), name, *sorted(options.items()))
            hash(key)
        except TypeError:
            key = None
        if key is not None:
            found = self._objects.get(key)
            if found is not None:
                return found
        opts = options_from(options)
        if opts.scope == "shared" and self._sql is None:  # pragma: no cover - wiring error
            raise ValidationError("this circuit breaker service has no database", context={})
        obj = cls(self, check_name(name, self._max_name), opts)
        if key is not None and len(self._objects) < 10_000:
            self._objects[key] = obj
        return obj

    def _for_call(
        self,
        cls: type,
        fn: Any,
        name: Any,
        timeout: Any,
        max_failures: Any,
        reset_timeout: Any,
        failure_exceptions: Any,
        scope: Any,
    ) -> Any:
        """The breaker for an ``execute`` call: one dict lookup once it has been seen."""
        if not callable(fn):
            self._check_fn(fn)
        if name is None:
            name = fn_name(fn)
        options = (timeout, max_failures, reset_timeout, failure_exceptions, scope)
        key = (cls, type(name), name, *options)
        if type(max_failures) is int and bool not in (type(timeout), type(reset_timeout)):
            try:
                return self._calls[key]
            except (KeyError, TypeError):
                pass
        breaker = self._object(
            cls,
            name,
            {
                "timeout": timeout,
                "max_failures": max_failures,
                "reset_timeout": reset_timeout,
                "failure_exceptions": failure_exceptions,
                "scope": scope,
            },
        )
        try:
            if len(self._calls) < 10_000:
                self._calls[key] = breaker
        except TypeError:  # an unhashable option (a list of exceptions): no cache
            pass
        return breaker

    @staticmethod
    def _check_fn(fn: Any, call: str = "execute") -> None:
        if not callable(fn):
            raise ValidationError(
                f"circuit_breaker.{call} needs a callable, not {type(fn).__name__}",
                context={"fn": shown(fn, 100)},
            )

    # -- clocks, params ---------------------------------------------------------------

    def _now(self) -> int:
        return _now_local() + self._offset_ms

    def _params(self, name: str, **extra: Any) -> dict[str, Any]:
        params = {"name": name, "by": self._node, **extra}
        if self._sql is not None and self._sql.backend == "sqlite":
            params["now_ms"] = _now_local()
        return params

    def _db_clock(self, db_now: int) -> None:
        if self._sql is not None and self._sql.backend == "postgresql":
            self._offset_ms = db_now - _now_local()

    # -- the cache --------------------------------------------------------------------

    def _apply(self, name: str, row: BreakerRow | None, source: str, force: bool = False) -> None:
        """Take ``row`` (None: the row is gone) if it is newer than what the node holds."""
        with self._lock:
            old = self._shared.get(name)
            if row is None:
                if old is None:
                    return
                del self._shared[name]
            else:
                if not force and old is not None and row.revision <= old.revision:
                    return
                self._shared[name] = row
        self._transition(name, "shared", old, row, source)

    def _transition(
        self, name: str, scope: str, old: BreakerRow | None, new: BreakerRow | None, source: str
    ) -> None:
        before = CLOSED if old is None else old.state
        after = CLOSED if new is None else new.state
        if before != after:
            self._telemetry.execute(
                _STATE_CHANGE,
                {"count": 1, "failures": 0 if new is None else new.failures},
                {"name": name, "from": before, "to": after, "scope": scope, "source": source},
            )

    def _returned(self, name: str, values: Any, source: str = "local") -> BreakerRow | None:
        if values is None:
            return None
        row, db_now = BreakerSQL.row(values)
        self._db_clock(db_now)
        if source == "local":
            with self._lock:
                self._writes += 1
                self._written[name] = self._writes
        self._apply(name, row, source)
        return row

    # -- change feed subscriber (runs in the feed's thread) ---------------------------

    def on_notify(self, payload: dict[str, Any], reader: Cursor) -> None:
        name, revision = payload.get("name"), payload.get("revision")
        if not isinstance(name, str) or not isinstance(revision, int) or self._sql is None:
            return
        current = self._shared.get(name)
        if current is not None and revision <= current.revision and not payload.get("deleted"):
            return  # this node already holds it (its own write, usually)
        found = reader.fetchone(self._sql.select_one, self._params(name))
        if found is None:
            self._apply(name, None, "remote")
        else:
            # This node's own write, whose notification came before the write's answer
            # (which then finds the revision applied, and tells nothing): local.
            self._returned_row(name, found)

    def resync(self, reader: Cursor) -> None:
        if self._sql is None:
            return
        # The revision first: a change committed during the read moves it again.
        seen = None if self._topic is None else self._topic.read(reader)
        began = self._writes
        self._load(reader.fetchall(self._sql.select_all, self._params("")), began)
        self._topic_seen = seen
        self.resyncs += 1

    def poll(self, reader: Cursor) -> None:
        """SQLite: the file changed. Re-read the breakers only if their topic moved
        (a failure counted, a state change…), not on every event or config write."""
        if self._topic is None:
            return
        if self._topic_seen is None or self._topic.read(reader) != self._topic_seen:
            self.resync(reader)

    def _load(self, rows: list[Any], began: int | None = None) -> None:
        """Take a full read of the table (``began``: ``_writes`` when it began)."""
        seen = set()
        for values in rows:
            name = values[0]
            seen.add(name)
            row, db_now = BreakerSQL.row(values[1:])
            self._db_clock(db_now)
            if self._written_since(name, began):
                continue  # this node's own write is newer than the snapshot
            current = self._shared.get(name)
            if current is None or current.revision != row.revision:
                # Any other revision, lower too: a row deleted (reset) and made again.
                self._apply(name, row, self._source(values), force=True)
        for name in [n for n in self._shared if n not in seen]:
            if not self._written_since(name, began):
                self._apply(name, None, "remote")

    def _source(self, values: Any) -> str:
        """Whose change a row read by name is (its last column: its writer)."""
        return "local" if values[-1] == self._node else "remote"

    def _written_since(self, name: str, began: int | None) -> bool:
        return began is not None and self._written.get(name, 0) > began

    # -- decisions shared by both faces ----------------------------------------------

    def _rejected(
        self,
        core: _BreakerCore,
        row: BreakerRow,
        retry_after: int | None,
        unclaimed: FoundationError | None = None,
    ) -> Exception:
        """``circuit_open``; ``unclaimed``: a probe was due, and claiming it failed so."""
        self._telemetry.execute(
            _REJECTED,
            {"count": 1},
            {"name": core.name, "state": row.state, "retry_after": retry_after},
        )
        when = "it was forced open" if retry_after is None else f"next probe in {retry_after} ms"
        if unclaimed is not None:
            when = f"its probe is due, but could not be claimed ({unclaimed.code})"
        message = f"circuit breaker {core.name!r} is {row.state.replace('_', '-')}: {when}"
        if row.state not in STATES:  # a row written with plain SQL before migration 0021
            message = (
                f"circuit breaker {core.name!r} has the state {shown(row.state, 60)} in "
                f"foundation_breakers, which is none of {', '.join(STATES)}: calls are "
                "refused until reset() closes it"
            )
        return CircuitOpenError(
            message,
            context={
                "name": core.name,
                "state": row.state,
                "failures": row.failures,
                "retry_after": retry_after,
            },
        )

    def _timed_out(self, core: _BreakerCore, elapsed_s: float) -> Exception:
        elapsed = round(elapsed_s * 1000)
        self._telemetry.execute(_TIMEOUT, {"count": 1, "duration_ms": elapsed}, {"name": core.name})
        return TimeoutError(
            f"call through circuit breaker {core.name!r} took {elapsed} ms, "
            f"past its timeout of {core.options.timeout_ms} ms",
            context={"name": core.name, "timeout": core.options.timeout_ms, "elapsed": elapsed},
        )

    def _token(self) -> str:
        return f"{self._token_prefix}#{next(self._tokens)}"

    def _claim_local(self, core: _BreakerCore) -> str:
        token = self._token()
        with self._lock:
            row = self._local.get(core.name, CLOSED_ROW)
            new = logic.claim_probe(row, token, _now_local(), core.options)
            if new is not None:
                self._local[core.name] = new
        if new is None:
            raise self._rejected(core, row, admission(row, _now_local())[1])
        self._transition(core.name, "local", row, new, "local")
        return token

    def _extend_local(self, core: _BreakerCore, token: str, lease_ms: int | None = None) -> bool:
        with self._lock:
            row = self._local.get(core.name, CLOSED_ROW)
            new = logic.extend_probe(row, token, _now_local(), core.options, lease_ms)
            if new is not None:
                self._local[core.name] = new
        return new is not None

    def _outcome_local(self, core: _BreakerCore, token: str | None, ok: bool) -> None:
        now = _now_local()
        with self._lock:
            row = self._local.get(core.name, CLOSED_ROW)
            if token is not None:
                new = logic.probe_done(row, token, ok, now, core.options)
            else:
                new = logic.on_success(row) if ok else logic.on_failure(row, now, core.options)
            if new is not None:
                self._local[core.name] = new
        if new is not None:
            self._transition(core.name, "local", row, new, "local")

    def _outcome_statement(
        self, core: _BreakerCore, token: str | None, ok: bool
    ) -> tuple[str, dict[str, Any]]:
        assert self._sql is not None
        opts = core.options
        if token is not None:
            sql = self._sql.probe_ok if ok else self._sql.probe_failed
            return sql, self._params(core.name, token=token, reset=opts.reset_timeout_ms)
        if ok:
            return self._sql.success, self._params(core.name)
        return self._sql.failure, self._params(
            core.name, max=opts.max_failures, reset=opts.reset_timeout_ms
        )

    def _select(self, name: str) -> tuple[str, dict[str, Any]]:
        assert self._sql is not None
        return self._sql.select_one, self._params(name)

    def _refreshed(self, name: str, found: Any) -> None:
        """A row read by name after another node's change (None: there is none, the
        breaker is closed: reset by another node)."""
        if found is None:
            self._apply(name, None, "remote")
        else:
            self._returned_row(name, found)

    def _returned_row(self, name: str, found: Any) -> BreakerRow | None:
        """A row read by name: its writer's change (this node's, or another's: a claim
        that found the probe taken, an outcome that found the row moved). Newer than any
        resync's snapshot under way, as this node's writes are (see _written_since)."""
        source = self._source(found)
        if source != "local":
            with self._lock:
                self._writes += 1
                self._written[name] = self._writes
        return self._returned(name, found[1:], source)

    def _storage_failed(self, name: str, exc: FoundationError) -> None:
        if exc.context.get("inside_transaction"):  # a caller's mistake, not an outage
            raise exc
        log.warning("circuit breaker %r could not record an outcome: %s", name, exc.message)
        self._telemetry.execute(_STORAGE, {"count": 1}, {"name": name, "error": exc.code})

    def _local_row(self, name: str) -> BreakerRow | None:
        return self._local.get(name)

    def breakers(self) -> list[BreakerInfo]:
        """The breakers with a stored state, by name: a shared one (the cluster's) once
        it has failed, opened, or been forced or reset, closed again or not; a local one
        while it has failures or is open, half-open or forced. A breaker whose calls have
        all succeeded stores nothing (it is closed, with no failures, which is what
        ``state`` says of any name) and is not listed."""
        now_shared, now_local = self._now(), _now_local()
        out = []
        for scope, rows, now in (
            ("shared", dict(self._shared), now_shared),
            ("local", dict(self._local), now_local),
        ):
            for name, row in rows.items():
                retry = None
                if row.state == "open" and row.open_until_ms is not None:
                    retry = max(0, row.open_until_ms - now)
                out.append(BreakerInfo(name, scope, row.state, row.failures, retry))
        return sorted(out, key=lambda i: (i.name, i.scope))


# == synchronous ==========================================================================
