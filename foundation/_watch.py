"""Watchers shared by the services that announce changes (config, the registry).

A watch matches one name exactly, or a prefix when its pattern ends in ``*``
(``"db.*"``; ``"*"`` matches all). Here the sync face calls the callback in the thread
that saw the change, and the async face hands it to its event loop (plain or ``async
def`` callbacks); the registry delivers through a dispatcher of its own instead, off its
heartbeat and feed threads (``service_registry._dispatch``). A callback that raises is
logged, never raised into Foundation.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar

from foundation._text import shown
from foundation.errors import FoundationError

__all__ = ["Watch", "Watchers"]

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
        except (KeyboardInterrupt, SystemExit):
            if self._loop is not None or threading.current_thread() is threading.main_thread():
                raise  # the application's own exit (Ctrl-C), where it can end it
            self._log.exception("watcher %r failed on %r", self.callback, change)
        except BaseException:  # on the feed's thread: anything else would end the thread
            self._log.exception("watcher %r failed on %r", self.callback, change)

    def _log_failure(self, task: asyncio.Future[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._log.error("async watcher %r failed", self.callback, exc_info=task.exception())

    def cancel(self) -> None:
        self._owner.unwatch(self)


class Watchers(Generic[C]):
    """The watches of one service: validated on the way in, matched on every change.

    ``name_of`` tells which name a change is about; ``check_name`` validates a pattern's
    name part (raising the service's own error). The list is replaced, never mutated, so
    announcing a change takes no lock.
    """

    def __init__(
        self,
        what: str,
        name_of: Callable[[C], str],
        check_name: Callable[[Any], Any],
        error: type[FoundationError],
        log: logging.Logger,
    ) -> None:
        self._what = what
        self._name_of = name_of
        self._check_name = check_name
        self._error = error
        self._log = log
        self._lock = threading.Lock()
        self._watches: tuple[Watch[C], ...] = ()

    def add(
        self,
        pattern: Any,
        callback: Callable[[C], Any],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> Watch[C]:
        if not callable(callback):
            raise self._error(
                f"a {self._what} watch callback must be callable",
                context={"callback": shown(callback)},
            )
        if pattern != "*":
            base = pattern[:-1] if isinstance(pattern, str) and pattern.endswith("*") else pattern
            if base != "":
                checked = self._check_name(base)
                if base is pattern and isinstance(checked, str):
                    pattern = checked  # the name's text (an Enum, say), as matched later
        watch = Watch(self, pattern, callback, loop, self._log)
        with self._lock:
            self._watches = (*self._watches, watch)
        return watch

    def unwatch(self, watch: Watch[C]) -> None:
        with self._lock:
            self._watches = tuple(w for w in self._watches if w is not watch)

    def notify(self, changes: Iterable[C]) -> None:
        watches = self._watches
        if not watches:
            return
        for change in changes:
            name = self._name_of(change)
            for watch in watches:
                if watch.matches(name):
                    watch.deliver(change)
