"""Circuit breakers: ``foundation.circuit_breaker.execute(fn, name="payments")``.

The module-level functions act on the default instance (see :mod:`foundation`); every
:class:`~foundation.Foundation` has the same methods on ``fdn.circuit_breaker``.

A breaker's state (closed → open → half-open → closed) is shared by every node through
``foundation_breakers`` and cached on each, so the closed path costs no database round
trip; exactly one probe runs in half-open across the cluster. ``scope="local"`` keeps a
breaker in this process. Times are milliseconds (a ``timedelta`` is accepted).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from foundation.circuit_breaker._aio import AsyncBreaker, AsyncCircuitBreakers
from foundation.circuit_breaker._base import BreakerInfo
from foundation.circuit_breaker._service import Breaker, CircuitBreakers

__all__ = [
    "AsyncBreaker",
    "AsyncCircuitBreakers",
    "Breaker",
    "BreakerInfo",
    "CircuitBreakers",
    "breakers",
    "execute",
    "force_open",
    "get",
    "protect",
    "reset",
    "state",
]


def _breakers() -> CircuitBreakers:
    from foundation._default import instance

    return instance().circuit_breaker


def execute(
    fn: Callable[[], Any],
    name: Any = None,
    timeout: Any = 5000,
    max_failures: Any = 5,
    reset_timeout: Any = 10000,
    failure_exceptions: Any = (Exception,),
    scope: Any = "shared",
) -> Any:
    """Call ``fn()`` through the breaker ``name`` (default: ``fn``'s qualified name)."""
    return _breakers().execute(
        fn, name, timeout, max_failures, reset_timeout, failure_exceptions, scope
    )


def get(name: Any, **options: Any) -> Breaker:
    """The breaker object ``name`` (``.execute``, ``.call``, ``.state``, ``.reset()``, …)."""
    return _breakers().get(name, **options)


def protect(name: Any = None, **options: Any) -> Callable[[Any], Any]:
    """Decorator: calls of the function go through the breaker."""
    return _breakers().protect(name, **options)


def state(name: Any, scope: str = "shared") -> str:
    """``"closed"``, ``"open"`` or ``"half_open"``."""
    return _breakers().state(name, scope)


def reset(name: Any, scope: str = "shared") -> None:
    """Close the breaker ``name`` on every node."""
    _breakers().reset(name, scope)


def force_open(name: Any, scope: str = "shared") -> None:
    """Open the breaker ``name`` until it is reset."""
    _breakers().force_open(name, scope)


def breakers() -> list[BreakerInfo]:
    """Every breaker: name, scope, state, failures, ms until a probe may run."""
    return _breakers().breakers()
