"""What an instance is in a child process after ``os.fork()`` (gunicorn ``--preload``,
multiprocessing's fork start method).

The child inherits the parent's sockets and files but none of its threads: no heartbeat,
no change feed. Used from two processes, one PostgreSQL connection interleaves both
sessions' messages (one process reads the other's rows), and a SQLite connection must
not cross a fork at all. So every instance the child inherits is marked in the child:
whatever would touch the database raises ``storage_unavailable`` naming the process that
made it, and ``close()`` releases nothing (the lease, the names and the connections are
the parent's: closing a PostgreSQL connection here would end the parent's session). The
inherited instances are kept referenced for the child's life, so that the collector
never closes those connections either; but their SQLite connections are closed at once
(``database.sync.close_inherited``: kept, they made the child's own connections to the
file unsafe), unless a thread of the parent was still inside a SQLite statement at the
fork (one running longer than the busy timeout and a second): SQLite's process-wide
mutexes may then be copied held, the child cannot call into SQLite at all, and what it
inherited is left as it is. Create an instance in each process.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from typing import Any, Protocol

from foundation.database.sync import ForkHold

__all__ = ["forked_error_message", "track"]


class _Inheritable(Protocol):
    def _inherited(self, message: str) -> None: ...
    def _hold_for_fork(self) -> list[Any]: ...


log = logging.getLogger("foundation")

_live: weakref.WeakSet[Any] = weakref.WeakSet()
_kept: list[Any] = []  # the instances a child inherited, never collected there
_held: list[Any] = []  # the locks taken before a fork, released after it in both processes


def track(instance: _Inheritable) -> None:
    """Mark ``instance`` as this process's, to be disowned in a forked child."""
    _live.add(instance)


def forked_error_message(pid: int) -> str:
    return (
        f"this Foundation instance was created in process {pid}, before a fork: its "
        "connections belong to that process; create an instance in each process (with "
        "gunicorn --preload, in a post_fork hook)"
    )


_LOCK = type(threading.Lock())
_RLOCK = type(threading.RLock())


def renew_locks(*holders: Any) -> None:
    """In a child: each holder's thread locks made anew. Another thread of the parent may
    have held one at the fork (the feed's, applying a change): copied held, with no thread
    left to release it, it stopped the child's first call for good, before the call could
    even be refused. What they guard is refused or read from the caches as copied.

    A holder with a ``_forget_in_flight`` method is then asked to forget the calls the
    parent's threads had in flight (a group commit's lead, a name's write lock kept in a
    dict): the child's own first call would wait for them for ever, never refused."""
    for holder in holders:
        for name, value in list(vars(holder).items()):
            if isinstance(value, _RLOCK):
                setattr(holder, name, threading.RLock())
            elif isinstance(value, _LOCK):
                setattr(holder, name, threading.Lock())
            elif isinstance(value, threading.Condition):
                setattr(holder, name, threading.Condition(threading.Lock()))
        forget = getattr(holder, "_forget_in_flight", None)
        if forget is not None:
            forget()


def _quiesce() -> None:
    """Before the fork: no thread of an instance inside SQLite (its locks held), so that
    no lock SQLite takes inside a call is copied held into the child (where the first
    connection of the child's own instance would wait on it forever)."""
    ForkHold.begin()
    for instance in list(_live):
        _held.extend(instance._hold_for_fork())


def _resume() -> None:
    while _held:
        _held.pop().release()


def _disown_in_child() -> None:
    _resume()
    inherited = list(_live)
    _live.clear()
    for instance in inherited:
        _kept.append(instance)
        try:
            instance._inherited(forked_error_message(instance._pid))
        except Exception:  # one instance's failure must not leave the others owned
            log.exception("could not disown %r in a forked child", instance)


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(before=_quiesce, after_in_parent=_resume, after_in_child=_disown_in_child)
