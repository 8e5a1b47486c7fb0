"""The circuit breaker's sync face: :class:`CircuitBreakers` and its :class:`Breaker`
handles. How breakers work (scopes, timeouts, what counts as a failure): :mod:`._base`.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any

from foundation._text import shown
from foundation.circuit_breaker import _logic as logic
from foundation.circuit_breaker._base import (
    _FAILURE,
    F,
    _BreakerCore,
    _BreakersBase,
    _now_local,
    log,
)
from foundation.circuit_breaker._logic import (
    CLOSED,
    CLOSED_ROW,
    BreakerRow,
    admission,
    check_name,
    check_scope,
    fn_name,
    options_from,
)
from foundation.circuit_breaker._store import BreakerSQL
from foundation.database.sync import SyncDatabase
from foundation.errors import (
    FoundationError,
    ValidationError,
)
from foundation.settings import Settings
from foundation.telemetry import Telemetry

__all__ = ["Breaker", "CircuitBreakers"]


class _Keeper(threading.Event):
    """Set when a probe's function has returned: its keeper thread stops renewing."""

    thread: threading.Thread | None = None

    def join(self) -> None:
        """Set, and wait for a renewal under way to end."""
        self.set()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join()


class Breaker(_BreakerCore):
    """One named breaker: ``breaker.execute(fn)``, ``breaker.call(fn, *args)``, ``@breaker``."""

    __slots__ = ()
    _svc: CircuitBreakers

    def execute(self, fn: Callable[[], Any]) -> Any:
        """Call ``fn()`` through the breaker (the spec's shape)."""
        return self.call(fn)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` through the breaker."""
        if self._db is not None and self._db._closed:
            raise self._closed_error()
        row = self._cache.get(self.name)
        token = None
        if row is not None and row.state != CLOSED:
            if inspect.iscoroutinefunction(fn):  # refused before it holds the probe's lease
                raise self._async_refused(fn)
            token = self._svc._admit(self, row)
        timeout = self.options.timeout_ms
        started = time.perf_counter()
        keeper = None if token is None else self._svc._keep_probe(self, token)
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            if keeper is not None:
                keeper.set()
            if isinstance(exc, self._failures):
                self._svc._outcome(self, token, False)
            elif isinstance(exc, Exception) and (token is not None or (row and row.failures)):
                self._svc._outcome(self, token, True)
            raise
        if keeper is not None:
            keeper.set()
        if inspect.iscoroutine(result):  # its outcome would escape the breaker
            result.close()
            if token is not None and keeper is not None:  # the probe never ran: given back
                keeper.join()  # (a renewal under way would take it again after)
                with contextlib.suppress(FoundationError):  # else it waits for its lease
                    self._svc._extend_probe(self, token, lease_ms=0)
            raise self._async_refused(fn)
        if timeout is not None:
            elapsed = time.perf_counter() - started
            if elapsed * 1000 > timeout:
                self._svc._outcome(self, token, False)
                raise self._svc._timed_out(self, elapsed)
        if token is not None or (row is not None and row.failures):
            self._svc._outcome(self, token, True)
        return result

    def reset(self) -> None:
        """Close the breaker (on every node, for a shared one)."""
        self._svc._reset(self)

    def force_open(self) -> None:
        """Open the breaker until :meth:`reset` (no probes)."""
        self._svc._force_open(self)

    def _async_refused(self, fn: Any) -> ValidationError:
        return ValidationError(
            f"circuit breaker {self.name!r} got a coroutine from {shown(fn, 100)}: call async "
            "functions through AsyncFoundation's circuit_breaker (and await it)",
            context={"name": self.name},
        )

    def __call__(self, fn: F) -> F:
        """Use the breaker as a decorator (of a plain function: ``async def`` is refused)."""
        self._svc._check_fn(fn, "get(...) as a decorator")
        if inspect.iscoroutinefunction(fn):
            raise self._async_refused(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return self.call(fn, *args, **kwargs)

        return wrapper  # type: ignore[return-value]


class CircuitBreakers(_BreakersBase):
    """Circuit breakers, synchronous face (``fdn.circuit_breaker``)."""

    def __init__(
        self,
        db: SyncDatabase | None,
        sql: BreakerSQL | None,
        settings: Settings,
        telemetry: Telemetry,
    ) -> None:
        super().__init__(sql, settings, telemetry)
        self._db = db

    def load(self) -> None:
        """Read every shared breaker into the cache (at start)."""
        if self._db is not None and self._sql is not None:
            self._load(self._db.fetchall(self._sql.select_all, self._params("")))

    def get(self, name: Any, **options: Any) -> Breaker:
        """The breaker ``name`` with these options (``timeout``, ``max_failures``,
        ``reset_timeout``, ``failure_exceptions``, ``scope``)."""
        return self._object(Breaker, name, options)  # type: ignore[no-any-return]

    def execute(
        self,
        fn: Callable[[], Any],
        name: Any = None,
        timeout: Any = 5000,
        max_failures: Any = 5,
        reset_timeout: Any = 10000,
        failure_exceptions: Any = (Exception,),
        scope: Any = "shared",
    ) -> Any:
        """Call ``fn()`` through the breaker ``name`` (default: ``fn``'s qualified name).

        Raises ``circuit_open`` (``retry_after`` ms in the context) without calling it when
        the circuit is open, ``timeout`` when it ran past ``timeout`` ms.
        """
        breaker = self._for_call(
            Breaker, fn, name, timeout, max_failures, reset_timeout, failure_exceptions, scope
        )
        return breaker.call(fn)

    def protect(self, name: Any = None, **options: Any) -> Callable[[F], F]:
        """Decorator: ``@fdn.circuit_breaker.protect("payments", max_failures=3)``."""
        options_from(options)

        def decorate(fn: F) -> F:
            self._check_fn(fn, "protect")
            return self.get(fn_name(fn) if name is None else name, **options)(fn)

        return decorate

    def state(self, name: Any, scope: str = "shared") -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``: this node's view (no database)."""
        name = check_name(name, self._max_name)
        row = (self._shared if check_scope(scope) == "shared" else self._local).get(name)
        return CLOSED if row is None else row.state

    def reset(self, name: Any, scope: str = "shared") -> None:
        """Close the breaker ``name`` (on every node, for a shared one): failures back to
        0, a forced open ended. A shared one writes to the database (its errors raise;
        ``storage_unavailable`` after ``close()``)."""
        self.get(name, scope=scope).reset()

    def force_open(self, name: Any, scope: str = "shared") -> None:
        """Open the breaker ``name`` until :meth:`reset` (no probes; on every node, for a
        shared one): calls through it raise ``circuit_open``. A shared one writes to the
        database (its errors raise; ``storage_unavailable`` after ``close()``)."""
        self.get(name, scope=scope).force_open()

    # -- I/O --------------------------------------------------------------------------

    def _admit(self, core: _BreakerCore, row: BreakerRow) -> str:
        """Raise circuit_open, or return the probe token this caller now holds."""
        local = core.options.scope == "local"
        action, retry = admission(row, _now_local() if local else self._now())
        if action == "reject":
            raise self._rejected(core, row, retry)
        if local:
            return self._claim_local(core)
        assert self._db is not None and self._sql is not None
        token = self._token()
        try:
            claimed = self._db.fetchone(
                self._sql.claim,
                self._params(core.name, token=token, lease=core.options.probe_lease_ms),
            )
            if claimed is not None:
                self._returned(core.name, claimed)
                return token
            # Someone else holds the probe, or the database's clock says it is not due:
            # take the row as it is now so that the next calls decide without a round trip.
            found = self._db.fetchone(self._sql.select_one, self._params(core.name))
        except FoundationError as exc:
            self._storage_failed(core.name, exc)
            # Fails closed: the probe is due, but could not be claimed (said as such, not
            # as a forced open: the retry is None only because a probe was due).
            raise self._rejected(core, row, retry, unclaimed=exc) from None
        current = row if found is None else (self._returned_row(core.name, found) or row)
        current = self._shared.get(core.name, current)
        raise self._rejected(core, current, admission(current, self._now())[1])

    def _keep_probe(self, core: _BreakerCore, token: str) -> _Keeper:
        """Keep the probe's claim while ``fn`` runs (a function cannot be stopped, and one
        past its lease let another caller probe too): renewed every half lease, by a
        thread of its own, until the returned keeper is set."""
        done = _Keeper()
        every = core.options.probe_lease_ms / 2000

        def keep() -> None:
            while not done.wait(every):
                try:
                    if not self._extend_probe(core, token):
                        return  # no longer this caller's (a reset, say)
                except FoundationError as exc:
                    log.warning("breaker %r: could not extend its probe (%s)", core.name, exc)

        name = f"foundation-breaker-probe-{core.name}"[:60]
        done.thread = threading.Thread(target=keep, name=name, daemon=True)
        done.thread.start()
        return done

    def _extend_probe(self, core: _BreakerCore, token: str, lease_ms: int | None = None) -> bool:
        """Renew the probe's claim (``lease_ms=0``: give it back, due again at once)."""
        if core.options.scope == "local":
            return self._extend_local(core, token, lease_ms)
        assert self._db is not None and self._sql is not None
        lease = core.options.probe_lease_ms if lease_ms is None else lease_ms
        params = self._params(core.name, token=token, lease=lease)
        row = self._db.fetchone(self._sql.extend, params)
        self._returned(core.name, row)
        return row is not None

    def _outcome(self, core: _BreakerCore, token: str | None, ok: bool) -> None:
        if not ok:
            self._telemetry.execute(_FAILURE, {"count": 1}, {"name": core.name})
        if core.options.scope == "local":
            self._outcome_local(core, token, ok)
            return
        assert self._db is not None
        sql, params = self._outcome_statement(core, token, ok)
        try:
            if self._returned(core.name, self._db.fetchone(sql, params)) is None:
                # The row was not as this node's cache said (another node moved it first):
                # take it as it is, rather than wait for the change feed.
                self._refreshed(core.name, self._db.fetchone(*self._select(core.name)))
        except FoundationError as exc:
            self._storage_failed(core.name, exc)

    def _reset(self, core: _BreakerCore) -> None:
        if core.options.scope == "local":
            with self._lock:
                old = self._local.pop(core.name, None)
            self._transition(core.name, "local", old, None, "local")
            return
        assert self._db is not None and self._sql is not None
        self._returned(core.name, self._db.fetchone(self._sql.reset, self._params(core.name)))

    def _force_open(self, core: _BreakerCore) -> None:
        if core.options.scope == "local":
            with self._lock:
                old = self._local.get(core.name, CLOSED_ROW)
                new = logic.force_open(old, _now_local())
                self._local[core.name] = new
            self._transition(core.name, "local", old, new, "local")
            return
        assert self._db is not None and self._sql is not None
        self._returned(core.name, self._db.fetchone(self._sql.force_open, self._params(core.name)))


# == asynchronous =========================================================================
