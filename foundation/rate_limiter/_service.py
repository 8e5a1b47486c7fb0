"""The rate limiter service: :class:`RateLimiter` (sync) and :class:`AsyncRateLimiter`.

``scope="shared"`` (the default) decides in the database, one atomic statement per
decision (see :mod:`._store`); ``scope="local"`` decides in this process's memory with
the same arithmetic (:mod:`._logic`).

When the database cannot be reached, ``on_storage_error`` decides: ``"open"`` (the
default) admits the request with a ``degraded`` decision and emits
``foundation.rate_limiter.storage_error``; ``"closed"`` raises the
``storage_unavailable`` error and the function is not called. Fail open is the default
because a limiter protects a service from overload, and refusing every call while the
database is down would turn a database outage into a full outage. A closed instance is
not an outage: after ``close()`` a shared limit raises ``storage_unavailable`` whatever
the policy (a bug in the caller, reported as config and the registry report it), while
a local limit (``scope="local"``) needs no database and keeps deciding, as a local
circuit breaker keeps running.

The sync face refuses ``async`` functions (``validation_error``): their coroutine would
run, if ever, outside the limit. An ``async def`` is refused before a request is counted;
a plain function found returning a coroutine, after (its request was counted).

Expired rows are deleted a small batch at a time (``CLEANUP_BATCH`` rows, no table scan
held under a lock, ``SKIP LOCKED`` on PostgreSQL) by whichever call on a node finds the
cleanup due, every ``CLEANUP_EVERY_S`` seconds, sooner while batches come back full.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Literal, NamedTuple, NoReturn, TypeVar

from foundation._text import shown
from foundation.database.aio import AsyncDatabase
from foundation.database.codec import unreadable_row
from foundation.database.schema import KEY_COLUMN_WIDTH
from foundation.database.sync import SyncDatabase
from foundation.errors import (
    FoundationError,
    RateLimitedError,
    StorageError,
    StorageUnavailableError,
    ValidationError,
)
from foundation.rate_limiter._logic import (
    Decision,
    Limit,
    check_key,
    check_usage_limit,
    fixed_decision,
    fixed_window,
    gcra,
    gcra_decision,
    make_limit,
    sliding_decision,
    sliding_window,
    usage_now,
)
from foundation.rate_limiter._store import LimiterSQL
from foundation.settings import Settings
from foundation.telemetry import Telemetry

__all__ = ["AsyncRateLimiter", "LimitUsage", "RateLimiter"]

F = TypeVar("F", bound=Callable[..., Any])
Scope = Literal["shared", "local"]
log = logging.getLogger("foundation.rate_limiter")

_ALLOW = ("foundation", "rate_limiter", "allow")
_DENY = ("foundation", "rate_limiter", "deny")
_STORAGE = ("foundation", "rate_limiter", "storage_error")
CLEANUP_BATCH = 500
CLEANUP_EVERY_S = 30.0
_NO_STATE: tuple[Any, int] = (None, 0)


def _plain_key(key: Any, max_length: int) -> bool:
    """The hot path's test: a non-empty ASCII str without NUL needs no further check
    (``isascii`` is a flag lookup; anything else goes through :func:`check_key`)."""
    return type(key) is str and 0 < len(key) <= max_length and key.isascii() and "\x00" not in key


# A shared decision is made at the statement's time: SQLite's is read before the statement
# waits for the write lock, PostgreSQL's (statement_timestamp()) before it waits for the
# key's row lock. A refusal whose wait passed while the statement waited is out of date
# when the call returns (admitted by then, its reset_at past): judged again, at most twice
# more. A refusal counts nothing, so judging again changes no count.
_JUDGED_AT_MOST = 3


def _outdated(decision: Decision, started: float) -> bool:
    return not decision.allowed and (time.monotonic() - started) * 1000 >= decision.retry_after


def _fn_key(fn: Any) -> str:
    return f"{getattr(fn, '__module__', None) or '?'}.{getattr(fn, '__qualname__', shown(fn))}"


class LimitUsage(NamedTuple):
    """One stored limit as of now, as ``foundation limits`` lists it (times in epoch ms /
    µs): a window that has ended, or a bucket full again, is left out; a sliding window
    whose current window ended shows its count as the previous window's. A token bucket
    has no count (``used`` and ``previous_count`` are None): ``tat_us`` (and
    ``expires_at``) say when it is full again."""

    key: str
    algorithm: str
    window_start_ms: int
    used: int | None
    previous_count: int | None
    tat_us: int
    expires_at: datetime


class _LimiterBase:
    def __init__(
        self,
        sql: LimiterSQL | None,
        settings: Settings,
        telemetry: Telemetry,
        on_storage_error: Literal["open", "closed"] = "open",
    ) -> None:
        if on_storage_error not in ("open", "closed"):
            raise ValidationError(
                "on_storage_error must be 'open' or 'closed'",
                context={"value": shown(on_storage_error, 100)},
            )
        self._sql = sql
        self._settings = settings
        self._telemetry = telemetry
        self._node = settings.node_id
        # At most the key column's width (max_key_length may allow config's longer keys).
        self._max_key = min(settings.max_key_length, KEY_COLUMN_WIDTH)
        self.on_storage_error: Literal["open", "closed"] = on_storage_error
        self._local: dict[tuple[str, str], tuple[Any, int]] = {}
        self._local_lock = threading.Lock()
        self._local_sweep_at = 0
        self._limits: dict[tuple[Any, Any, Any], Limit] = {}
        self._next_cleanup = time.monotonic() + CLEANUP_EVERY_S

    # -- validation -------------------------------------------------------------------

    def _limit(self, max_requests: Any, interval: Any, algorithm: Any) -> Limit:
        if type(max_requests) is int and type(interval) is int and type(algorithm) is str:
            # the cached fast path (an unhashable algorithm goes to make_limit's error)
            cached = self._limits.get((max_requests, interval, algorithm))
            if cached is not None:
                return cached
            limit = make_limit(max_requests, interval, algorithm)
            if len(self._limits) < 1000:
                self._limits[(max_requests, interval, algorithm)] = limit
            return limit
        return make_limit(max_requests, interval, algorithm)

    @staticmethod
    def _bad_scope(scope: Any) -> NoReturn:
        raise ValidationError(
            f"scope must be 'shared' or 'local', not {shown(scope, 100)}",
            context={"option": "scope", "value": shown(scope, 100)},
        )

    def _scope(self, scope: Any) -> Scope:
        if scope not in ("shared", "local"):
            self._bad_scope(scope)
        return scope  # type: ignore[no-any-return]

    def _check_fn(self, fn: Any, call: str = "execute") -> None:
        if not callable(fn):
            raise ValidationError(
                f"rate_limiter.{call} needs a callable, not {type(fn).__name__}",
                context={"fn": shown(fn, 100)},
            )

    @staticmethod
    def _async_refused(fn: Any, key: Any) -> ValidationError:
        return ValidationError(
            f"the rate limiter got a coroutine from {shown(fn, 100)}: call async functions through "
            "AsyncFoundation's rate_limiter (and await it)",
            context={"key": shown(key, 100), "fn": shown(fn, 100)},
        )

    def _check_sync_fn(self, fn: Any, key: Any, call: str = "execute") -> None:
        """The sync face's check, before a request is counted: a callable, not ``async``."""
        self._check_fn(fn, call)
        code = getattr(fn, "__code__", None)  # a function or a bound method: one flag test
        if (
            code.co_flags & inspect.CO_COROUTINE
            if code is not None
            else inspect.iscoroutinefunction(fn)
        ):
            raise self._async_refused(fn, key)

    def _sync_result(self, fn: Any, key: Any, result: Any) -> Any:
        if inspect.iscoroutine(result):  # from a plain function: it would escape the limit
            result.close()
            raise self._async_refused(fn, key)
        return result

    # -- local scope ------------------------------------------------------------------

    def _decide_local(self, key: str, limit: Limit) -> Decision:
        now_us = time.time_ns() // 1000
        now_ms = now_us // 1000
        slot = (key, limit.algorithm)
        with self._local_lock:
            if now_ms >= self._local_sweep_at:
                self._sweep_local(now_ms)
            # Each slot holds (state, the time in ms from which it reads as no state).
            state = self._local.get(slot, _NO_STATE)[0]
            if limit.algorithm == "fixed_window":
                new, allowed = fixed_window(state, now_ms, limit)
                self._local[slot] = (new, new[0] + limit.interval)
                return fixed_decision(new, allowed, now_ms, limit)
            if limit.algorithm == "sliding_window":
                new3, allowed = sliding_window(state, now_ms, limit)
                self._local[slot] = (new3, new3[0] + 2 * limit.interval)
                return sliding_decision(new3, allowed, now_ms, limit)
            tat, allowed = gcra(state, now_us, limit)
            self._local[slot] = (tat, tat // 1000 + 1)
            return gcra_decision(tat, allowed, now_us, limit)

    def _sweep_local(self, now_ms: int) -> None:
        """Drop the local slots that read as no state any more (a window past, a bucket
        refilled): one per key ever limited otherwise, kept for the process's life."""
        self._local = {slot: kept for slot, kept in self._local.items() if kept[1] > now_ms}
        self._local_sweep_at = now_ms + int(CLEANUP_EVERY_S * 1000)

    # -- shared scope -----------------------------------------------------------------

    def _params(self, key: str, limit: Limit) -> dict[str, Any]:
        params: dict[str, Any] = {
            "key": key,
            "limit": limit.max_requests,
            "interval": limit.interval,
            "emission": limit.emission_us,
            "capacity": limit.capacity_us,
        }
        if self._sql is not None and self._sql.backend == "sqlite":
            now_us = time.time_ns() // 1000
            params["now_us"] = now_us
            params["now_ms"] = now_us // 1000
        return params

    def _from_row(self, row: Any, limit: Limit) -> Decision:
        start, count, previous, tat, allowed, now_ms, now_us = row[:7]
        allowed = bool(allowed)
        try:
            if limit.algorithm == "fixed_window":
                return fixed_decision((int(start), int(count)), allowed, int(now_ms), limit)
            if limit.algorithm == "sliding_window":
                return sliding_decision(
                    (int(start), int(count), int(previous)), allowed, int(now_ms), limit
                )
            return gcra_decision(int(tat), allowed, int(now_us), limit)
        except ValueError as exc:  # SQLite keeps text written by hand in a count
            raise unreadable_row("foundation_rate_limits", exc) from None

    def _degraded(self, key: str, limit: Limit, exc: FoundationError) -> Decision:
        self._telemetry.execute(
            _STORAGE,
            {"count": 1},
            {"key": key, "error": exc.code, "policy": self.on_storage_error, "node": self._node},
        )
        if self.on_storage_error == "closed":
            raise exc
        log.warning("rate limiter failing open for %r: %s", key, exc.message)
        return Decision(
            allowed=True,
            remaining=limit.max_requests,
            retry_after=0,
            reset_at_ms=time.time_ns() // 1_000_000 + limit.interval,
            limit=limit.max_requests,
            degraded=True,
        )

    def _cleanup_due(self) -> bool:
        return time.monotonic() >= self._next_cleanup

    def _cleaned(self, deleted: int) -> None:
        self._next_cleanup = time.monotonic() + (
            1.0 if deleted >= CLEANUP_BATCH else CLEANUP_EVERY_S
        )

    def _now_params(self, **params: Any) -> dict[str, Any]:
        """``params``, with this node's clock on SQLite (PostgreSQL reads its own)."""
        if self._sql is not None and self._sql.backend == "sqlite":
            params["now_ms"] = time.time_ns() // 1_000_000
        return params

    # -- outcome ----------------------------------------------------------------------

    def _emit(self, key: str, limit: Limit, decision: Decision, scope: str) -> None:
        if decision.allowed:
            self._telemetry.execute(
                _ALLOW,
                {"count": 1, "remaining": decision.remaining},
                {"key": key, "algorithm": limit.algorithm, "scope": scope},
            )
        else:
            self._telemetry.execute(
                _DENY,
                {"count": 1, "retry_after": decision.retry_after},
                {"key": key, "algorithm": limit.algorithm, "scope": scope},
            )

    @staticmethod
    def _refused(key: str, limit: Limit, decision: Decision) -> RateLimitedError:
        return RateLimitedError(
            f"rate limit for {key!r} exceeded ({limit.max_requests} per {limit.interval} ms, "
            f"{limit.algorithm}); retry after {decision.retry_after} ms",
            context={
                "key": key,
                "retry_after": decision.retry_after,
                "limit": limit.max_requests,
                "remaining": decision.remaining,
                "interval": limit.interval,
                "algorithm": limit.algorithm,
                "reset_at": decision.reset_at.isoformat(),
            },
        )


class RateLimiter(_LimiterBase):
    """Per-key rate limits shared by every node (or ``scope="local"``: this process)."""

    def __init__(
        self,
        db: SyncDatabase | None,
        sql: LimiterSQL | None,
        settings: Settings,
        telemetry: Telemetry,
        on_storage_error: Literal["open", "closed"] = "open",
    ) -> None:
        super().__init__(sql, settings, telemetry, on_storage_error)
        self._db = db

    def try_acquire(
        self,
        key: Any,
        max_requests: Any = 100,
        interval: Any = 60000,
        algorithm: Any = "fixed_window",
        scope: Any = "shared",
    ) -> Decision:
        """Count one request for ``key``; the :class:`Decision`, allowed or not (never raises
        ``rate_limited``)."""
        if not _plain_key(key, self._max_key):
            key = check_key(key, self._max_key)
        limit = self._limit(max_requests, interval, algorithm)
        if scope == "local":
            decision = self._decide_local(key, limit)
        elif scope == "shared":
            decision = self._decide_shared(key, limit)
        else:
            self._bad_scope(scope)
        self._emit(key, limit, decision, scope)
        return decision

    def _decide_shared(self, key: str, limit: Limit) -> Decision:
        assert self._db is not None and self._sql is not None
        for _ in range(_JUDGED_AT_MOST):
            started = time.monotonic()
            try:
                row = self._db.fetchone(self._sql.upsert[limit.algorithm], self._params(key, limit))
            except (StorageUnavailableError, StorageError) as exc:
                # Used after close(), or inside a SQLite transaction(): a caller's mistake,
                # not an outage; never fail open.
                if self._db._closed or exc.context.get("inside_transaction"):
                    raise
                return self._degraded(key, limit, exc)
            assert row is not None
            decision = self._from_row(row, limit)
            if not _outdated(decision, started):
                break
        if self._cleanup_due():
            self.cleanup()
        return decision

    def cleanup(self) -> int:
        """Delete one batch of expired rows; how many went."""
        assert self._db is not None and self._sql is not None
        self._next_cleanup = time.monotonic() + CLEANUP_EVERY_S
        try:
            deleted = self._db.execute(self._sql.cleanup, self._now_params(batch=CLEANUP_BATCH))
        except FoundationError as exc:
            if self._db._closed:
                raise
            log.warning("rate limit cleanup failed: %s", exc.message)
            return 0
        self._cleaned(deleted)
        return deleted

    def acquire(
        self,
        key: Any,
        max_requests: Any = 100,
        interval: Any = 60000,
        algorithm: Any = "fixed_window",
        scope: Any = "shared",
    ) -> Decision:
        """As :meth:`try_acquire`, but a refusal raises ``rate_limited``."""
        limit = self._limit(max_requests, interval, algorithm)
        decision = self.try_acquire(key, max_requests, interval, algorithm, scope)
        if not decision.allowed:
            raise self._refused(key, limit, decision)
        return decision

    def execute(
        self,
        fn: Callable[[], Any],
        key: Any = None,
        max_requests: Any = 100,
        interval: Any = 60000,
        algorithm: Any = "fixed_window",
        scope: Any = "shared",
    ) -> Any:
        """Call ``fn()`` if ``key`` (default: ``fn``'s qualified name) is within its limit,
        else raise ``rate_limited`` (``retry_after``, ``limit``, ``remaining``, ``interval``
        in its context) without calling it."""
        self._check_sync_fn(fn, key)
        name = _fn_key(fn) if key is None else key
        self.acquire(name, max_requests, interval, algorithm, scope)
        return self._sync_result(fn, name, fn())

    def limit(
        self,
        key: Any = None,
        max_requests: Any = 100,
        interval: Any = 60000,
        algorithm: Any = "fixed_window",
        scope: Any = "shared",
    ) -> Callable[[F], F]:
        """Decorator: every call of the function is one request on ``key`` (an ``async
        def`` is refused: decorate it with AsyncFoundation's rate_limiter)."""
        self._limit(max_requests, interval, algorithm)
        self._scope(scope)
        checked = None if key is None else check_key(key, self._max_key)

        def decorate(fn: F) -> F:
            self._check_sync_fn(fn, key, "limit")
            name = _fn_key(fn) if checked is None else checked

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                self.acquire(name, max_requests, interval, algorithm, scope)
                return self._sync_result(fn, name, fn(*args, **kwargs))

            return wrapper  # type: ignore[return-value]

        return decorate

    def usage(self, limit: int = 1000) -> list[LimitUsage]:
        """The stored limits as of now (for ``foundation limits``): key, algorithm and
        counters; what has ended is left out (see :class:`LimitUsage`)."""
        assert self._db is not None and self._sql is not None
        rows = self._db.fetchall(
            self._sql.select_all, self._now_params(limit=check_usage_limit(limit))
        )
        return _usages(rows)


def _usages(rows: list[Any]) -> list[LimitUsage]:
    """The stored rows as of the database's now (the last column)."""
    out = []
    for key, algorithm, start, count, previous, tat, expires, now in rows:
        try:
            state = usage_now(
                algorithm, int(start), int(count), int(previous), int(tat), int(expires), int(now)
            )
            if state is not None:
                at = datetime.fromtimestamp(int(expires) / 1000, UTC)
                out.append(LimitUsage(key, algorithm, *state, int(tat), at))
        except (ValueError, OverflowError) as exc:  # SQLite keeps text written by hand
            raise unreadable_row(f"foundation_rate_limits (key {key!r})", exc) from None
    return out


class AsyncRateLimiter(_LimiterBase):
    """The awaitable twin of :class:`RateLimiter` (local decisions stay in memory)."""

    def __init__(
        self,
        db: AsyncDatabase | None,
        sql: LimiterSQL | None,
        settings: Settings,
        telemetry: Telemetry,
        on_storage_error: Literal["open", "closed"] = "open",
    ) -> None:
        super().__init__(sql, settings, telemetry, on_storage_error)
        self._db = db

    async def try_acquire(
        self,
        key: Any,
        max_requests: Any = 100,
        interval: Any = 60000,
        algorithm: Any = "fixed_window",
        scope: Any = "shared",
    ) -> Decision:
        """Count one request for ``key``; the :class:`Decision`, allowed or not (never raises
        ``rate_limited``). As :meth:`RateLimiter.try_acquire`, awaited (a local decision
        awaits nothing).

        ``validation_error`` for a bad key or limit. A shared decision the database cannot
        make follows ``on_storage_error``: a ``degraded`` admission, or
        ``storage_unavailable`` (always, after ``close()``). A call cancelled while its
        statement runs may have counted its request.
        """
        if not _plain_key(key, self._max_key):
            key = check_key(key, self._max_key)
        limit = self._limit(max_requests, interval, algorithm)
        if scope == "local":
            decision = self._decide_local(key, limit)
        elif scope == "shared":
            decision = await self._decide_shared(key, limit)
        else:
            self._bad_scope(scope)
        self._emit(key, limit, decision, scope)
        return decision

    async def _decide_shared(self, key: str, limit: Limit) -> Decision:
        assert self._db is not None and self._sql is not None
        for _ in range(_JUDGED_AT_MOST):  # see RateLimiter._decide_shared
            started = time.monotonic()
            try:
                row = await self._db.fetchone(
                    self._sql.upsert[limit.algorithm], self._params(key, limit)
                )
            except (StorageUnavailableError, StorageError) as exc:
                if self._db._closed or exc.context.get("inside_transaction"):
                    raise
                return self._degraded(key, limit, exc)
            assert row is not None
            decision = self._from_row(row, limit)
            if not _outdated(decision, started):
                break
        if self._cleanup_due():
            await self.cleanup()
        return decision

    async def cleanup(self) -> int:
        """Delete one batch of expired rows; how many went. As :meth:`RateLimiter.cleanup`,
        awaited: a failure is logged and counts 0 (``storage_unavailable`` after
        ``close()``). Shared decisions call it when it is due."""
        assert self._db is not None and self._sql is not None
        self._next_cleanup = time.monotonic() + CLEANUP_EVERY_S
        try:
            deleted = await self._db.execute(
                self._sql.cleanup, self._now_params(batch=CLEANUP_BATCH)
            )
        except FoundationError as exc:
            if self._db._closed:
                raise
            log.warning("rate limit cleanup failed: %s", exc.message)
            return 0
        self._cleaned(deleted)
        return deleted

    async def acquire(
        self,
        key: Any,
        max_requests: Any = 100,
        interval: Any = 60000,
        algorithm: Any = "fixed_window",
        scope: Any = "shared",
    ) -> Decision:
        """As :meth:`try_acquire`, but a refusal raises ``rate_limited`` (``retry_after``,
        ``limit``, ``remaining``, ``interval`` in its context). As
        :meth:`RateLimiter.acquire`, awaited."""
        limit = self._limit(max_requests, interval, algorithm)
        decision = await self.try_acquire(key, max_requests, interval, algorithm, scope)
        if not decision.allowed:
            raise self._refused(key, limit, decision)
        return decision

    async def execute(
        self,
        fn: Callable[[], Any],
        key: Any = None,
        max_requests: Any = 100,
        interval: Any = 60000,
        algorithm: Any = "fixed_window",
        scope: Any = "shared",
    ) -> Any:
        """As :meth:`RateLimiter.execute`; ``fn()`` may return an awaitable (awaited).

        A call cancelled once its request was counted stays counted (as a request that
        failed would), though ``fn`` never ran: the count is the attempts'."""
        self._check_fn(fn)
        await self.acquire(
            _fn_key(fn) if key is None else key, max_requests, interval, algorithm, scope
        )
        result = fn()
        if inspect.isawaitable(result):
            result = await result
        return result

    def limit(
        self,
        key: Any = None,
        max_requests: Any = 100,
        interval: Any = 60000,
        algorithm: Any = "fixed_window",
        scope: Any = "shared",
    ) -> Callable[[F], F]:
        """Decorator for ``async def`` functions: each call is one request on ``key``."""
        self._limit(max_requests, interval, algorithm)
        self._scope(scope)
        checked = None if key is None else check_key(key, self._max_key)

        def decorate(fn: F) -> F:
            self._check_fn(fn, "limit")
            name = _fn_key(fn) if checked is None else checked

            @functools.wraps(fn)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                await self.acquire(name, max_requests, interval, algorithm, scope)
                result = fn(*args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
                return result

            return wrapper  # type: ignore[return-value]

        return decorate

    async def usage(self, limit: int = 1000) -> list[LimitUsage]:
        """The stored limits as of now (for ``foundation limits``): key, algorithm and
        counters; what has ended is left out (see :class:`LimitUsage`). ``limit``: at most
        that many rows, 1 to 100,000 (else ``validation_error``). As
        :meth:`RateLimiter.usage`, awaited."""
        assert self._db is not None and self._sql is not None
        rows = await self._db.fetchall(
            self._sql.select_all, self._now_params(limit=check_usage_limit(limit))
        )
        return _usages(rows)
