"""Rate limiting: ``foundation.rate_limiter.execute(fn, key="api", max_requests=50)``.

The module-level functions act on the default instance (see :mod:`foundation`); every
:class:`~foundation.Foundation` has the same methods on ``fdn.rate_limiter``.

Three algorithms (``fixed_window``, the spec's; ``sliding_window``; ``token_bucket``, as
GCRA), each limit shared by every node through one atomic statement per decision, or
kept in this process with ``scope="local"``. A refusal raises ``rate_limited`` with
``retry_after`` (ms), ``limit``, ``remaining`` and ``interval`` in its context.

A key (at most 255 characters) keeps one state per algorithm, whatever limit a call
gives: calls that give one key two limits (3 a minute, 3 a second) share that state, and
neither limit holds. Give each limit a key of its own (``"api:minute"``, ``"api:second"``).

A shared decision is made at its statement's time: SQLite's clock is read before the
statement waits for the write lock, PostgreSQL's (``statement_timestamp()``) before it
waits for the key's row. A call that waited is counted at that earlier time, so around a
long lock wait up to one limit's worth of such calls may land just before the next
window's (as at any fixed window's boundary), and its ``reset_at`` may be past when it
returns. A refusal whose ``retry_after`` passed during the wait is judged again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from foundation.rate_limiter._logic import ALGORITHMS, Decision
from foundation.rate_limiter._service import AsyncRateLimiter, LimitUsage, RateLimiter

__all__ = [
    "ALGORITHMS",
    "AsyncRateLimiter",
    "Decision",
    "LimitUsage",
    "RateLimiter",
    "acquire",
    "execute",
    "limit",
    "try_acquire",
]


def _limiter() -> RateLimiter:
    from foundation._default import instance

    return instance().rate_limiter


def execute(
    fn: Callable[[], Any],
    key: Any = None,
    max_requests: Any = 100,
    interval: Any = 60000,
    algorithm: Any = "fixed_window",
    scope: Any = "shared",
) -> Any:
    """Call ``fn()`` within ``key``'s limit, or raise ``rate_limited``."""
    return _limiter().execute(fn, key, max_requests, interval, algorithm, scope)


def try_acquire(
    key: Any,
    max_requests: Any = 100,
    interval: Any = 60000,
    algorithm: Any = "fixed_window",
    scope: Any = "shared",
) -> Decision:
    """Count one request on ``key``; the decision, allowed or not."""
    return _limiter().try_acquire(key, max_requests, interval, algorithm, scope)


def acquire(
    key: Any,
    max_requests: Any = 100,
    interval: Any = 60000,
    algorithm: Any = "fixed_window",
    scope: Any = "shared",
) -> Decision:
    """Count one request on ``key``; raise ``rate_limited`` when refused."""
    return _limiter().acquire(key, max_requests, interval, algorithm, scope)


def limit(
    key: Any = None,
    max_requests: Any = 100,
    interval: Any = 60000,
    algorithm: Any = "fixed_window",
    scope: Any = "shared",
) -> Callable[[Any], Any]:
    """Decorator: each call of the function is one request on ``key``."""
    return _limiter().limit(key, max_requests, interval, algorithm, scope)
