"""A subscription run by a thread (the sync face's); see :mod:`._subscription`."""

from __future__ import annotations

import inspect
import threading
import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from foundation.database.sync import SyncDatabase
from foundation.errors import FoundationError
from foundation.events._model import RecordedEvent
from foundation.events._store import EventSQL
from foundation.events._subscription import (
    _DATABASE_FAULTS,
    Handler,
    SubscriptionOptions,
    _correlated,
    _SubscriptionBase,
    log,
    stop_timeout,
)

if TYPE_CHECKING:
    from foundation.events._service import Events

__all__ = ["Subscription"]


class Subscription(_SubscriptionBase):
    """A subscription run by a thread of this process; ``stop()`` ends it cleanly."""

    def __init__(
        self, events: Events, db: SyncDatabase, sql: EventSQL, options: SubscriptionOptions
    ) -> None:
        super().__init__(events, sql, options)
        self._db = db
        self._stop = threading.Event()
        self._handling = False  # the handler is running (a stop that times out says so)
        self._wake = threading.Event()
        self._ended = threading.Event()  # the loop's thread is done: the keeper stops
        self._thread: threading.Thread | None = None
        self._handler: Handler | None = None
        self._sync_events = events

    def bind(self, handler: Handler) -> Subscription:
        self._handler = handler
        return self

    def start(self) -> None:
        """Claim the name and start the thread (``subscribe()`` calls it); once only."""
        self._starting()
        known = self._db.fetchone(self._sql.sub_read, {"name": self.name})
        first = self._initial_checkpoint(self._sync_events.last_position(), known)
        sent = time.monotonic()  # before the stamp: the lease's end counts from it
        stamp = self._stamp()
        self._db.execute(self._sql.sub_create, {**stamp, "checkpoint": first})
        row = self._db.fetchone(self._sql.sub_claim, stamp)
        if row is None:
            raise self._held(self._db.fetchone(self._sql.sub_read, {"name": self.name}))
        self._renewed(sent)
        self._checkpoint = int(row[0])
        self._state = "running"
        self._events.add_waker(self._wake.set)
        self._thread = threading.Thread(
            target=self._run, name=f"foundation-subscription-{self.name}", daemon=True
        )
        self._thread.start()
        threading.Thread(
            target=self._keep_lease, name=f"foundation-subscription-{self.name}-lease", daemon=True
        ).start()

    def _keep_lease(self) -> None:
        while not self._ended.wait(self.options.lease_ms / 3000):
            try:
                if not self._renew():
                    return
            except FoundationError as exc:  # down: the next period tries again
                if self._db.closed:
                    return  # the loop says so when the handler returns
                log.warning("subscription %r could not renew its lease (%s)", self.name, exc)

    def _renew(self) -> bool:
        sent = time.monotonic()
        if self._db.execute(self._sql.sub_renew, self._stamp()) == 0:
            self._lost()
            return False
        self._renewed(sent)
        return True

    def _run(self) -> None:
        try:
            self._loop()
        finally:
            self._ended.set()
            if self._stop.is_set():  # stop() may have given up waiting for the handler
                self._release()

    def _loop(self) -> None:
        while not self._stop.is_set() and self._state == "running":
            self._wake.clear()  # before reading, so a write during the read wakes us again
            try:
                sql, params = self._page()
                rows = self._db.fetchall(sql, params)
                self._fault_over()
                if not rows:
                    self._lag(0, None)
                    self._wake.wait(self.options.poll_interval_ms / 1000)
                    continue
                for row in rows:  # each made a record in turn: see _crashed
                    record = self._sql.record(row)
                    if self._stop.is_set() or not self._deliver(record):
                        return
                    if self._release_claimed:  # released under the handler: _stop_for_close
                        return
                    if not self._checkpoint_kept(record.position):
                        return
                self._lag(len(rows), self._sync_events.last_position())
            except _DATABASE_FAULTS as exc:
                if self._closed_under_handler():
                    return
                wait = self._fault_wait(exc, "read the log")
                if wait is None:
                    self._record_failure(self._gave_up(exc, None))
                    return
                self._stop.wait(wait)
            except Exception as exc:  # a bug, not a fault: stop visibly rather than spin
                self._record_failure(self._crashed(exc))
                return

    def _deliver(self, record: RecordedEvent) -> bool:
        assert self._handler is not None
        for attempt in range(1, self.options.max_retries + 2):
            if self._lease_lapsed() and not self._renew():
                return False  # another consumer may hold the name: not ours to deliver
            try:
                self._handling = True
                try:
                    with _correlated(record):
                        result = self._handler(record)
                finally:
                    self._handling = False
                if inspect.isawaitable(result):
                    if inspect.iscoroutine(result):
                        result.close()  # nobody will await it: no "never awaited" warning
                    raise TypeError(
                        "the handler returned an awaitable, which a thread cannot await"
                        " (async handlers need AsyncFoundation)"
                    )
                return True
            except Exception as exc:
                if attempt > self.options.max_retries:
                    self._record_failure(self._failed(record, exc))
                    return False
                if self._stop.wait(self._backoff(attempt)):
                    return False
            except BaseException as exc:
                # SystemExit, KeyboardInterrupt: not retried, and this thread must not end
                # with the status still saying "running".
                self._record_failure(self._failed(record, exc))
                return False
        return False  # pragma: no cover

    def _record_failure(self, params: dict[str, Any]) -> None:
        # The row first, then the state: whoever sees "failed" also finds it in the table.
        try:
            self._db.execute(self._sql.sub_status, params)
        except FoundationError as exc:  # the row keeps its lease: it runs out
            log.error("could not record the failure of %r in its row (%s)", self.name, exc)
        self._state = "failed"

    def _closed_under_handler(self) -> bool:
        if not self._db.closed:
            return False
        # close() gave up waiting for the handler (see stop).
        log.warning(
            "subscription %r: its Foundation instance closed while the handler ran; the "
            "event it handled was not checkpointed and goes to the next consumer of the "
            "name, once the name's lease runs out",
            self.name,
        )
        return True

    def _checkpoint_kept(self, position: int) -> bool:
        """Checkpoint an event the handler has handled. A database fault is retried for the
        checkpoint alone: running the handler again each time would repeat its effects."""
        while True:
            try:
                kept = self._checkpoint_to(position)
            except _DATABASE_FAULTS as exc:
                if self._closed_under_handler():
                    return False
                wait = self._fault_wait(exc, "write its checkpoint")
                if wait is None:
                    self._record_failure(self._gave_up(exc, position))
                    return False
                if self._stop.wait(wait):
                    return False  # not checkpointed: the next consumer gets it again
                continue
            self._fault_over()
            return kept

    def _checkpoint_to(self, position: int) -> bool:
        sent = time.monotonic()
        changed = self._db.execute(
            self._sql.sub_checkpoint, {**self._stamp(), "checkpoint": position}
        )
        if changed == 0:
            self._lost()
            return False
        self._renewed(sent)
        self._checkpoint = position
        return True

    def stop(self, timeout: float | timedelta | None = 10.0) -> None:
        """Stop after the event in hand (if any) and release the name.

        If the handler is still running after ``timeout`` seconds, the state is
        ``stopping`` and the name stays held until the handler returns: no other
        consumer may start on the event in hand meanwhile.
        """
        timeout = stop_timeout(timeout)
        self._stop.set()
        self._wake.set()
        self._events.remove_waker(self._wake.set)
        thread = self._thread
        if thread is threading.current_thread():
            return  # called by the handler: its event is checkpointed, then _run releases
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                with self._release_lock:
                    if self._state == "running":
                        self._state = "stopping"
                if self._state == "stopping":  # else the thread ended meanwhile
                    if self._handling:  # an idle loop ends at once: nothing to say
                        log.warning(
                            "subscription %r: the handler is still running after %s s; the "
                            "name is released when it returns",
                            self.name,
                            timeout,
                        )
                    return
        self._release()

    def _stop_for_close(self) -> None:
        """``stop()`` for the instance's close (``Events.close``).

        Called by the handler itself, it cannot wait for the handler (which waits for it),
        and the database closes before the handler returns: the name is released now, and
        the event in hand is delivered again to the next consumer (at least once).
        """
        if self._thread is not threading.current_thread():
            self.stop()
            return
        self._stop.set()
        self._wake.set()
        self._events.remove_waker(self._wake.set)
        if self._releasing_under_handler():
            self._write_release()

    def _release(self) -> None:
        if not self._releasing():
            return
        if self._db.closed:
            self._state = "stopped"  # the name frees when its lease runs out (see _loop)
            return
        self._write_release()

    def _write_release(self) -> None:
        try:
            self._db.execute(self._sql.sub_status, self._released())
        except FoundationError:
            log.warning("could not release subscription %r", self.name)
        finally:
            self._state = "stopped"
