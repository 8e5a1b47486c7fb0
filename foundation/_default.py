"""The module-level default instance behind ``foundation.config.get(...)`` and friends.

Created on first use from ``FOUNDATION_DATABASE_URL`` (else ``sqlite:///foundation.db``
in the working directory), shares the process-wide telemetry, and is closed at exit.
"""

from __future__ import annotations

import atexit
import os
import threading

from foundation import telemetry
from foundation.facade import Foundation

__all__ = ["instance", "reset", "set_instance"]

_lock = threading.Lock()
_instance: Foundation | None = None


def instance() -> Foundation:
    """The default :class:`Foundation`, created on first use."""
    global _instance
    current = _instance
    if current is not None:
        return current
    with _lock:
        if _instance is None:
            _instance = Foundation(telemetry=telemetry.default())
        return _instance


def set_instance(fdn: Foundation | None) -> None:
    """Make ``fdn`` the default (the previous default is left open for its owner)."""
    global _instance
    with _lock:
        _instance = fdn


def reset() -> None:
    """Close and forget the default instance (the next use creates a new one)."""
    global _instance
    with _lock:
        current, _instance = _instance, None
    if current is not None:
        current.close()


def _forget_in_child() -> None:
    # The parent's default instance is not this process's (see foundation._fork): the
    # child's first use creates its own, and its exit closes only that one.
    global _instance, _lock
    _instance = None
    _lock = threading.Lock()  # another thread may have held it when the parent forked


atexit.register(reset)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
