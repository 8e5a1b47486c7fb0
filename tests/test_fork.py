"""An instance inherited through ``os.fork()`` (gunicorn ``--preload``) is the parent's.

Found by a reviewer: the workers of a preloading master shared its PostgreSQL sockets
(one process read another's rows) and its node id, with no heartbeat and no change feed;
a worker's exit closed the master's default instance, releasing its lease and names.
"""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

import foundation
from foundation import Foundation, StorageUnavailableError, _default

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")


def _in_child(work: Any) -> dict[str, Any]:
    """Run ``work()`` in a forked child; its dict result (or the error) comes back."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, run the exit hooks as a worker's exit does, leave
        os.close(read)
        try:
            out = work()
        except BaseException as exc:
            out = {"raised": f"{type(exc).__name__}: {exc}"}
        os.write(write, json.dumps(out).encode())
        os.close(write)
        try:
            _default.reset()  # what atexit runs at a worker's exit
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return dict(json.loads(data))


def test_an_inherited_instance_refuses_the_database_and_leaves_the_parents_state(
    db_url: str,
) -> None:
    with Foundation(db_url, migrate="skip") as parent:
        parent.service_registry.register("web", "http://parent")
        parent.config.set("port", 1)
        parent_pid = os.getpid()

        def child() -> dict[str, Any]:
            refused = []
            for write in (
                lambda: parent.config.set("port", 2),
                lambda: parent.events.store({"type": "from-child"}),
                lambda: parent.service_registry.register("other", "http://child"),
                lambda: parent.events.last_position(),
            ):
                try:
                    write()
                except StorageUnavailableError as exc:
                    refused.append(str(exc))
            parent.close()  # releases nothing: the parent's lease and names stay
            return {"refused": refused, "cached": parent.config.get("port")}

        out = _in_child(child)
        assert len(out["refused"]) == 4, out
        assert all(f"created in process {parent_pid}, before a fork" in m for m in out["refused"])
        assert out["cached"] == 1
        # The parent goes on as before: its name, its lease, its connections.
        parent.events.store({"type": "from-parent"})
        assert parent.config.get("port") == 1
        with Foundation(db_url, migrate="skip") as other:
            assert other.service_registry.lookup("web").node == parent.service_registry.node
            assert other.events.get(type="from-child") == []
        parent.service_registry.update_metadata("web", {"still": "mine"})


def test_a_childs_default_instance_is_its_own(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOUNDATION_DATABASE_URL", f"sqlite:///{tmp_path / 'default.db'}")
    _default.reset()
    try:
        foundation.service_registry.register("web", "http://master")
        master = _default.instance()

        def child() -> dict[str, Any]:
            mine = _default.instance()
            return {
                "own": mine is not master,
                "pid": mine.service_registry.node.split(":")[1],
                "sees": foundation.service_registry.lookup("web").address,
            }

        out = _in_child(child)
        assert out == {"own": True, "pid": str(out["pid"]), "sees": "http://master"}
        assert out["pid"] != str(os.getpid())
        # The child's exit closed its own instance, not the master's.
        assert master.service_registry.owns("web")
        assert foundation.service_registry.lookup("web").address == "http://master"
    finally:
        _default.reset()


def test_a_fork_while_a_thread_migrates_leaves_the_child_free_to_migrate(tmp_path: Path) -> None:
    """The lock that keeps migrations one at a time in a process, held by a thread the
    child does not have (review 12: the child's own upgrade of another database hung)."""
    from foundation.database import migrate

    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    with migrate._IN_PROCESS:  # as a thread of the parent's that waits on another deploy

        def child() -> dict[str, Any]:
            signal.alarm(20)  # a hang ends the child (the parent's assert then fails)
            with Foundation(f"sqlite:///{tmp_path / 'child.db'}") as fdn:
                return {"events": len(fdn.events.get())}

        assert _in_child(child) == {"events": 0}


def test_a_fork_while_another_thread_holds_a_cache_lock(db_url: str) -> None:
    """The feed's thread applying a change holds the config cache's lock: copied held
    into the child, it stopped the child's config.set for good (review 12: the suite hung
    here now and then), before the call could be refused."""
    with Foundation(db_url, migrate="skip") as parent:
        held = threading.Event()
        release = threading.Event()
        locks = [
            parent.config._state._lock,
            parent.service_registry._state._lock,
            parent.events.group_commit._lock,
        ]

        def holder() -> None:
            for lock in locks:
                lock.acquire()
            held.set()
            release.wait(30)
            for lock in reversed(locks):
                lock.release()

        thread = threading.Thread(target=holder)
        thread.start()
        assert held.wait(10)
        try:

            def child() -> dict[str, Any]:
                signal.alarm(20)  # a hang ends the child (the parent's assert then fails)
                refused = 0
                for write in (
                    lambda: parent.config.set("port", 2),
                    lambda: parent.service_registry.register("other", "http://child"),
                    lambda: parent.events.store({"type": "from-child"}),
                ):
                    try:
                        write()
                    except StorageUnavailableError:
                        refused += 1
                return {"refused": refused}

            assert _in_child(child) == {"refused": 3}
        finally:
            release.set()
            thread.join()
