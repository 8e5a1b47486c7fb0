"""Watchers shared by the services that announce changes (config, the registry).

A watch matches one name exactly, or a prefix when its pattern ends in ``*``
(``"db.*"``; ``"*"`` matches all). The sync face calls the callback in the thread that
saw the change; the async face hands it to its event loop (plain or ``async def``
callbacks). A callback that raises is logged, never raised into Foundation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Watch"]

C = TypeVar("C")


class _Watched(Protocol):
    def unwatch(self, watch: Any) -> None: ...


class Watch(Generic[C]):
    """A watcher; ``cancel()`` stops it."""

    def __init__(
        self,
        owner: _Watched,
        pattern: str,
        callback: Callable[[C], Any],
        loop: asyncio.AbstractEventLoop | None,
        log: logging.Logger,
    ) -> None:
        self._owner = owner
        self.pattern = pattern
        self.callback = callback
        self._loop = loop
        self._log = log
        self._prefix = pattern[:-1] if pattern.endswith("*") else None

    def matches(self, name: str) -> bool:
        return name.startswith(self._prefix) if self._prefix is not None else name == self.pattern

    def deliver(self, change: C) -> None:
        if self._loop is None:
            self._invoke(change)
        elif not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._invoke, change)

    def _invoke(self, change: C) -> None:
        try:
            result = self.callback(change)
            if asyncio.iscoroutine(result):
                asyncio.ensure_future(result).add_done_callback(self._log_failure)
        except Exception:
            self._log.exception("watcher %r failed on %r", self.callback, change)

    def _log_failure(self, task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._log.error("async watcher %r failed", self.callback, exc_info=task.exception())

    def cancel(self) -> None:
        self._owner.unwatch(self)
