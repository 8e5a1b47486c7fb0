"""Configuration with hot reload: ``foundation.config.get("port", 8080)``.

The module-level functions act on the default instance (see :mod:`foundation`); every
:class:`~foundation.Foundation` has the same methods on ``fdn.config``.

Precedence, lowest first: registered defaults < config file < ``FOUNDATION_CONFIG__*``
environment variables < values set at runtime (stored in the database, so a value set
on one node is what ``get`` returns next on every node).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from foundation.config._service import AsyncConfig, Config
from foundation.config._state import (
    _MISSING,
    ConfigChange,
    ConfigExplanation,
    ConfigHistoryEntry,
    ConfigWatch,
)

__all__ = [
    "AsyncConfig",
    "Config",
    "ConfigChange",
    "ConfigExplanation",
    "ConfigHistoryEntry",
    "ConfigWatch",
    "all",
    "delete",
    "explain",
    "get",
    "history",
    "register",
    "reload",
    "set",
    "watch",
]


def _config() -> Config:
    from foundation._default import instance

    return instance().config


def get(key: Any, default: Any = None) -> Any:
    """The value of ``key`` (from the in-process cache), or ``default``."""
    return _config().get(key, default)


def set(key: Any, value: Any) -> None:
    """Set ``key`` to ``value`` (JSON) on every node."""
    _config().set(key, value)


def delete(key: Any) -> bool:
    """Remove the runtime value of ``key``; True if there was one."""
    return _config().delete(key)


def all() -> dict[str, Any]:
    """Every key's current value."""
    return _config().all()


def reload() -> None:
    """Re-read the config file, the environment and the database."""
    _config().reload()


def explain(key: Any) -> ConfigExplanation:
    """Where ``key``'s value comes from."""
    return _config().explain(key)


def register(key: Any, type_: Any, default: Any = _MISSING) -> None:
    """Give ``key`` a type validated on every set and load, and optionally a default."""
    _config().register(key, type_, default)


def watch(key_or_prefix: Any, callback: Callable[[ConfigChange], Any]) -> ConfigWatch:
    """Call ``callback(change)`` after each change of the key or prefix (``"db.*"``): each
    one this node makes; of another node's quick succession of changes, maybe the last
    only. A pattern ending in ``*`` is a prefix (a key ending in ``*`` is watched so)."""
    return _config().watch(key_or_prefix, callback)


def history(key: Any = None, limit: int = 100) -> list[ConfigHistoryEntry]:
    """Recorded changes, newest first."""
    return _config().history(key, limit)
