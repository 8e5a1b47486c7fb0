"""Where the registry's watch callbacks run: never on the heartbeat or the feed thread.

The cache announces a change on whichever thread applied it: the heartbeat (an expiry, a
lease loss), the change feed (another node's change) or the caller's own (``register``).
Calling back there would let a slow callback stall what must never wait: a callback
slower than the TTL on the heartbeat thread let the lease lapse, and another node took a
live node's names; on the feed thread it froze the cache. So the watchers only queue
``(watch, change)`` pairs, and one dispatcher per registry calls back, one callback at a
time, in the order the changes were announced (so the changes of one name arrive in their
order):

* :class:`ThreadDispatcher` (the sync face): one daemon thread per registry, started by
  the first change a watch matches.
* :class:`LoopDispatcher` (the async face): one task on the event loop of the first
  ``watch``; it calls a plain callback on the loop and awaits an ``async def`` one before
  the next. A callback that awaits never stalls the heartbeat task; one that blocks the
  loop blocks everything on it, the heartbeat included (as any blocking call on a loop).

A callback that raises is logged, never raised into Foundation; a cancelled watch
receives nothing more, even what was queued before ``cancel()``.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import contextvars
import inspect
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from foundation._watch import Watch, Watchers
from foundation.errors import ValidationError

__all__ = ["Dispatcher", "LoopDispatcher", "RegistryWatchers", "ThreadDispatcher"]

log = logging.getLogger("foundation.registry")

Batch = builtins.list[tuple[Watch[Any], Any]]


class Dispatcher(Protocol):
    def submit(self, batch: Batch) -> None: ...


class RegistryWatchers(Watchers[Any]):
    """The registry's watches: a change is queued for the dispatcher, never called back
    on the thread that announced it (see the module's docstring)."""

    def __init__(self, name_of: Callable[[Any], str], check_name: Callable[[Any], Any]) -> None:
        super().__init__("registry", name_of, check_name, ValidationError, log)
        self.dispatcher: Dispatcher | None = None

    def active(self, watch: Watch[Any]) -> bool:
        """False once the watch was cancelled."""
        return any(w is watch for w in self._watches)

    def notify(self, changes: Iterable[Any]) -> None:
        watches = self._watches
        if not watches or self.dispatcher is None:
            return
        batch: Batch = [
            (watch, change)
            for change in changes
            for watch in watches
            if watch.matches(self._name_of(change))
        ]
        if batch:
            self.dispatcher.submit(batch)


def _failed(watch: Watch[Any], change: Any) -> None:
    log.exception("registry watcher %r failed on %r", watch.callback, change)


class ThreadDispatcher:
    """The sync face's dispatcher: one daemon thread, callbacks one at a time, in order."""

    def __init__(self, name: str, active: Callable[[Watch[Any]], bool]) -> None:
        self._name = name
        self._active = active
        self._queue: queue.SimpleQueue[Batch | threading.Event | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        # Set by close() when its time is up: the thread starts no callback after that
        # (checked under _lock, as close() sets it, before each callback).
        self._halted = False

    @property
    def thread(self) -> threading.Thread | None:
        """The thread that runs the callbacks (None until a watch first matched)."""
        return self._thread

    def submit(self, batch: Batch) -> None:
        if self._thread is None:
            with self._lock:
                if self._closed:
                    return
                if self._thread is None:
                    thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    thread.start()
                    self._thread = thread
        self._queue.put(batch)

    def _run(self) -> None:
        while True:
            batch = self._queue.get()
            if batch is None:
                return
            if isinstance(batch, threading.Event):
                batch.set()  # flush(): everything queued before it was delivered
                continue
            for watch, change in batch:
                with self._lock:
                    if self._halted:
                        return  # close() gave up waiting: what is left is dropped
                if not self._active(watch):
                    continue
                try:
                    result = watch.callback(change)
                except BaseException:  # sys.exit() too: it would end this thread alone
                    _failed(watch, change)
                    continue
                if inspect.iscoroutine(result):
                    result.close()
                    log.error(
                        "registry watcher %r returned a coroutine: the sync registry calls"
                        " plain functions (async def callbacks need AsyncFoundation)",
                        watch.callback,
                    )

    def flush(self, timeout: float) -> bool:
        """Wait until every change queued so far was called back (False: timed out)."""
        with self._lock:
            if self._thread is None or self._closed:
                return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float) -> None:
        """Deliver what is queued (waiting at most ``timeout`` seconds), then stop: no
        callback starts after this returns. What is still queued then is dropped; a
        callback running then is not interrupted (a thread cannot be): it runs to its end
        on the watch thread, which then ends. Called from a callback (on the watch thread
        itself), it returns at once; the thread delivers what was queued before, then
        ends."""
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is None:
            return
        self._queue.put(None)
        if thread is threading.current_thread():
            return
        thread.join(timeout)
        with self._lock:
            self._halted = True  # if still running: no next callback


# The dispatcher whose task runs the current code (a callback, or a task it started).
_DISPATCHING: contextvars.ContextVar[LoopDispatcher | None] = contextvars.ContextVar(
    "foundation_dispatching", default=None
)


# The callback running when the current task was started (a mark per call: see
# LoopDispatcher.called_back).
_CALLBACK: contextvars.ContextVar[object | None] = contextvars.ContextVar(
    "foundation_registry_callback", default=None
)


class LoopDispatcher:
    """The async face's dispatcher: one task on the loop, callbacks one at a time, in
    order; an ``async def`` callback is awaited before the next one starts."""

    def __init__(self, name: str, active: Callable[[Watch[Any]], bool]) -> None:
        self._name = name
        self._active = active
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Batch | asyncio.Event | None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._calling: object | None = None  # the running callback's mark (see called_back)
        # close()'s deadline (monotonic): no callback starts after it, even when plain
        # callbacks that block the loop keep close()'s own timeout from firing.
        self._deadline: float | None = None

    @property
    def task(self) -> asyncio.Task[None] | None:
        return self._task

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run the callbacks on ``loop`` (the loop of the first ``watch``; called on it)."""
        if self._loop is None or self._loop.is_closed():
            self._loop = loop
            self._queue = asyncio.Queue()
            self._deadline = None
            self._task = loop.create_task(self._run(), name=self._name)

    def submit(self, batch: Batch) -> None:
        loop, q = self._loop, self._queue
        if loop is None or q is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # RuntimeError: the loop closed meanwhile
            loop.call_soon_threadsafe(q.put_nowait, batch)  # FIFO, from any thread

    async def _run(self) -> None:
        assert self._queue is not None
        _DISPATCHING.set(self)  # in this task, and the tasks its callbacks start
        while True:
            batch = await self._queue.get()
            if batch is None:
                return
            if isinstance(batch, asyncio.Event):
                batch.set()  # flush(): everything queued before it was delivered
                continue
            for watch, change in batch:
                deadline = self._deadline
                if deadline is not None and time.monotonic() >= deadline:
                    return  # close() is out of time: what is left is dropped
                if not self._active(watch):
                    continue
                self._calling = call = object()
                token = _CALLBACK.set(call)  # for the tasks this callback starts
                try:
                    result = watch.callback(change)
                    if inspect.isawaitable(result):
                        await result
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise  # this task's own cancellation (close() out of time)
                    _failed(watch, change)  # the callback's own: it awaited a cancelled task
                except Exception:
                    _failed(watch, change)
                finally:
                    _CALLBACK.reset(token)
                    self._calling = None

    def called_back(self) -> bool:
        """Whether the current task is this dispatcher's, or one the running callback
        started (a task inherits the context): that callback may await it. A task an
        earlier callback started waits like any caller."""
        if self._task is asyncio.current_task():
            return True
        return self._calling is not None and _CALLBACK.get() is self._calling

    async def flush(self, timeout: float) -> bool:
        """Wait until every change queued so far was called back (False: timed out);
        called on the dispatcher's loop."""
        loop, q = self._loop, self._queue
        if loop is None or q is None or loop.is_closed():
            return True
        done = asyncio.Event()
        loop.call_soon_threadsafe(q.put_nowait, done)  # after what other threads queued
        try:
            await asyncio.wait_for(done.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def closing(self, timeout: float) -> None:
        """The registry's close() has begun: no callback starts more than ``timeout``
        seconds from now. Plain callbacks that block the loop while close() releases the
        node's names would otherwise run on before :meth:`close` starts its clock."""
        if self.called_back():
            return  # close() from a callback: what was queued before is delivered
        if self._deadline is None:
            self._deadline = time.monotonic() + timeout

    async def close(self, timeout: float) -> None:
        """Deliver what is queued (waiting at most ``timeout`` seconds, counted from
        :meth:`closing` if it was called), then stop."""
        task, q, loop = self._task, self._queue, self._loop
        self._loop = None
        if task is None or q is None or loop is None or loop.is_closed():
            return
        if loop is not asyncio.get_running_loop():
            loop.call_soon_threadsafe(task.cancel)
            return
        # After what was submitted before (submit() queues through call_soon_threadsafe,
        # even on this thread): a change announced just before close() is delivered.
        loop.call_soon_threadsafe(q.put_nowait, None)
        if self.called_back():
            # close() called from a callback (or a task of its own: AsyncFoundation.close()
            # runs in one): the task ends after it; waiting would wait for ourselves.
            return
        if self._deadline is None:
            self._deadline = time.monotonic() + timeout
        left = max(0.0, self._deadline - time.monotonic())
        done, _ = await asyncio.wait({task}, timeout=left)
        if not done:
            task.cancel()
            await asyncio.wait({task})
