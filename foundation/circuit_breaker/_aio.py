"""The circuit breaker's async face: :class:`AsyncCircuitBreakers` and its
:class:`AsyncBreaker` handles. How breakers work: :mod:`._base`.
"""

from __future__ import annotations

import asyncio
import builtins
import functools
import inspect
import time
from collections.abc import Callable
from typing import Any

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
from foundation.database.aio import AsyncDatabase, finish
from foundation.errors import (
    FoundationError,
)
from foundation.settings import Settings
from foundation.telemetry import Telemetry

__all__ = ["AsyncBreaker", "AsyncCircuitBreakers"]


class AsyncBreaker(_BreakerCore):
    """The awaitable twin of :class:`Breaker`; coroutines are cancelled on timeout."""

    __slots__ = ()
    _svc: AsyncCircuitBreakers

    async def execute(self, fn: Callable[[], Any]) -> Any:
        """Await ``fn()`` through the breaker (the spec's shape): :meth:`call` with no
        arguments."""
        return await self.call(fn)

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Await ``fn(*args, **kwargs)`` through the breaker (a plain result is taken too)."""
        if self._db is not None and self._db._closed:
            raise self._closed_error()
        row = self._cache.get(self.name)
        token = None
        if row is not None and row.state != CLOSED:
            token = await self._svc._admit(self, row)
        timeout = self.options.timeout_ms
        started = time.perf_counter()
        cm: Any = None
        keeper: asyncio.Task[None] | None = None
        try:
            result = fn(*args, **kwargs)
            if inspect.isawaitable(result):
                if token is not None:  # see CircuitBreakers._keep_probe
                    keeper = asyncio.create_task(self._svc._keep_probe(self, token))
                if timeout is None:
                    result = await result
                else:
                    cm = asyncio.timeout(timeout / 1000)
                    async with cm:
                        result = await result
        except BaseException as exc:
            if keeper is not None:
                keeper.cancel()
            if cm is not None and cm.expired() and isinstance(exc, builtins.TimeoutError):
                await self._svc._outcome(self, token, False)
                raise self._svc._timed_out(self, time.perf_counter() - started) from None
            if isinstance(exc, self._failures):
                await self._svc._outcome(self, token, False)
            elif isinstance(exc, Exception) and (token is not None or (row and row.failures)):
                await self._svc._outcome(self, token, True)
            raise
        if keeper is not None:
            keeper.cancel()
        if timeout is not None and cm is None:  # a plain function: judged as in the sync face
            elapsed = time.perf_counter() - started
            if elapsed * 1000 > timeout:
                await self._svc._outcome(self, token, False)
                raise self._svc._timed_out(self, elapsed)
        if token is not None or (row is not None and row.failures):
            await self._svc._outcome(self, token, True)
        return result

    async def reset(self) -> None:
        """Close the breaker (on every node, for a shared one). As :meth:`Breaker.reset`,
        awaited."""
        await self._svc._reset(self)

    async def force_open(self) -> None:
        """Open the breaker until :meth:`reset` (no probes). As :meth:`Breaker.force_open`,
        awaited."""
        await self._svc._force_open(self)

    def __call__(self, fn: F) -> F:
        """Use the breaker as a decorator. The wrapper is an ``async def`` (await its
        calls), whether ``fn`` is one or a plain function."""
        self._svc._check_fn(fn, "get(...) as a decorator")

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await self.call(fn, *args, **kwargs)

        return wrapper  # type: ignore[return-value]


class AsyncCircuitBreakers(_BreakersBase):
    """Circuit breakers, asyncio face (``afdn.circuit_breaker``); state reads stay plain."""

    def __init__(
        self,
        db: AsyncDatabase | None,
        sql: BreakerSQL | None,
        settings: Settings,
        telemetry: Telemetry,
    ) -> None:
        super().__init__(sql, settings, telemetry)
        self._db = db

    async def load(self) -> None:
        """Read every shared breaker into the cache (at start). As
        :meth:`CircuitBreakers.load`, awaited."""
        if self._db is not None and self._sql is not None:
            self._load(await self._db.fetchall(self._sql.select_all, self._params("")))

    def get(self, name: Any, **options: Any) -> AsyncBreaker:
        """The breaker ``name`` with these options (``timeout``, ``max_failures``,
        ``reset_timeout``, ``failure_exceptions``, ``scope``); ``validation_error`` for a
        bad name or option. As :meth:`CircuitBreakers.get`, and a plain call too: the
        handle's ``call``, ``execute``, ``reset`` and ``force_open`` are awaited."""
        return self._object(AsyncBreaker, name, options)  # type: ignore[no-any-return]

    async def execute(
        self,
        fn: Callable[[], Any],
        name: Any = None,
        timeout: Any = 5000,
        max_failures: Any = 5,
        reset_timeout: Any = 10000,
        failure_exceptions: Any = (Exception,),
        scope: Any = "shared",
    ) -> Any:
        """As :meth:`CircuitBreakers.execute`; a coroutine is cancelled at ``timeout``."""
        breaker = self._for_call(
            AsyncBreaker, fn, name, timeout, max_failures, reset_timeout, failure_exceptions, scope
        )
        return await breaker.call(fn)

    def protect(self, name: Any = None, **options: Any) -> Callable[[F], F]:
        """Decorator: ``@afdn.circuit_breaker.protect("payments", max_failures=3)``
        (``name`` defaults to the function's qualified name; options are checked now).
        The decorated function is an ``async def`` (await it), whether ``fn`` is one or a
        plain function; a coroutine is cancelled at ``timeout``."""
        options_from(options)

        def decorate(fn: F) -> F:
            self._check_fn(fn, "protect")
            return self.get(fn_name(fn) if name is None else name, **options)(fn)

        return decorate

    def state(self, name: Any, scope: str = "shared") -> str:
        """``"closed"``, ``"open"`` or ``"half_open"``: this node's view (no database, a
        plain call). As :meth:`CircuitBreakers.state`."""
        name = check_name(name, self._max_name)
        row = (self._shared if check_scope(scope) == "shared" else self._local).get(name)
        return CLOSED if row is None else row.state

    async def reset(self, name: Any, scope: str = "shared") -> None:
        """Close the breaker ``name`` (on every node, for a shared one). As
        :meth:`CircuitBreakers.reset`, awaited."""
        await self.get(name, scope=scope).reset()

    async def force_open(self, name: Any, scope: str = "shared") -> None:
        """Open the breaker ``name`` until :meth:`reset` (no probes). As
        :meth:`CircuitBreakers.force_open`, awaited."""
        await self.get(name, scope=scope).force_open()

    async def _admit(self, core: _BreakerCore, row: BreakerRow) -> str:
        local = core.options.scope == "local"
        action, retry = admission(row, _now_local() if local else self._now())
        if action == "reject":
            raise self._rejected(core, row, retry)
        if local:
            return self._claim_local(core)
        assert self._db is not None and self._sql is not None
        token = self._token()
        try:
            claimed = await self._db.fetchone(
                self._sql.claim,
                self._params(core.name, token=token, lease=core.options.probe_lease_ms),
            )
            if claimed is not None:
                self._returned(core.name, claimed)
                return token
            found = await self._db.fetchone(self._sql.select_one, self._params(core.name))
        except FoundationError as exc:
            self._storage_failed(core.name, exc)
            # Fails closed: the probe is due, but could not be claimed (said as such, not
            # as a forced open: the retry is None only because a probe was due).
            raise self._rejected(core, row, retry, unclaimed=exc) from None
        if found is not None:
            self._returned_row(core.name, found)
        current = self._shared.get(core.name, row)
        raise self._rejected(core, current, admission(current, self._now())[1])

    async def _keep_probe(self, core: _BreakerCore, token: str) -> None:
        """As :meth:`CircuitBreakers._keep_probe`, while the coroutine is awaited (one
        with no ``timeout`` may run past its lease)."""
        every = core.options.probe_lease_ms / 2000
        while True:
            await asyncio.sleep(every)
            try:
                if not await self._extend_probe(core, token):
                    return
            except FoundationError as exc:
                log.warning("breaker %r: could not extend its probe (%s)", core.name, exc)

    async def _extend_probe(self, core: _BreakerCore, token: str) -> bool:
        if core.options.scope == "local":
            return self._extend_local(core, token)
        assert self._db is not None and self._sql is not None
        params = self._params(core.name, token=token, lease=core.options.probe_lease_ms)
        row = await self._db.fetchone(self._sql.extend, params)
        self._returned(core.name, row)
        return row is not None

    async def _outcome(self, core: _BreakerCore, token: str | None, ok: bool) -> None:
        if not ok:
            self._telemetry.execute(_FAILURE, {"count": 1}, {"name": core.name})
        if core.options.scope == "local":
            self._outcome_local(core, token, ok)
            return
        # Whole, even if the caller is cancelled meanwhile: an outcome the database took is
        # one this node's copy shows (else a probe's success left it half open, refusing).
        await finish(self._record_outcome(core, token, ok))

    async def _record_outcome(self, core: _BreakerCore, token: str | None, ok: bool) -> None:
        assert self._db is not None
        sql, params = self._outcome_statement(core, token, ok)
        try:
            if self._returned(core.name, await self._db.fetchone(sql, params)) is None:
                self._refreshed(core.name, await self._db.fetchone(*self._select(core.name)))
        except FoundationError as exc:
            self._storage_failed(core.name, exc)

    async def _reset(self, core: _BreakerCore) -> None:
        if core.options.scope == "local":
            with self._lock:
                old = self._local.pop(core.name, None)
            self._transition(core.name, "local", old, None, "local")
            return
        assert self._db is not None and self._sql is not None
        self._returned(core.name, await self._db.fetchone(self._sql.reset, self._params(core.name)))

    async def _force_open(self, core: _BreakerCore) -> None:
        if core.options.scope == "local":
            with self._lock:
                old = self._local.get(core.name, CLOSED_ROW)
                new = logic.force_open(old, _now_local())
                self._local[core.name] = new
            self._transition(core.name, "local", old, new, "local")
            return
        assert self._db is not None and self._sql is not None
        self._returned(
            core.name, await self._db.fetchone(self._sql.force_open, self._params(core.name))
        )
