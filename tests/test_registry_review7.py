"""Found by a reviewer running several nodes: ``close()`` racing this node's own writes,
and a name past its own TTL.

* SQLite, sync: ``close()`` while other threads write closed their connections under
  their statements, and the interpreter crashed (SIGSEGV).
* ``register`` calls in flight when ``close()`` began committed after its release: rows
  of a closed node stayed in the database (live again when its node id came back with
  the same lease generation), their ``register`` reported and never their release.
* Async, SQLite: a call waiting for the connection when ``close()`` ran failed with
  aiosqlite's own ``ValueError`` or a ``storage_error``, not ``storage_unavailable``.
* A name past its own TTL was reported ``lost`` when another node registered it later
  (it was registered nowhere: ``expired``, neither kept nor lost); ``owns()`` said True.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from foundation import Foundation, FoundationError, StorageUnavailableError
from foundation.service_registry import RegistryChange
from tests.helpers import wait_for
from tests.test_registry import drain, node
from tests.test_registry_review3 import anode, kinds, lease_lost, watched

WRITERS = 4


def _rows_held_by(other: Foundation, closed: str) -> int:
    param = ":node" if other.database.backend == "sqlite" else "%(node)s"
    row = other.database.fetchone(
        f"SELECT count(*) FROM foundation_registry WHERE node_id = {param}", {"node": closed}
    )
    assert row is not None
    return int(row[0])


def _outcome(
    changes: list[RegistryChange], registered: list[str], failures: list[BaseException]
) -> None:
    """What every race with close() must end with: each writer stopped by
    storage_unavailable, and each name it registered reported released."""
    assert len(failures) == WRITERS
    assert all(isinstance(exc, StorageUnavailableError) for exc in failures), failures
    assert registered, "close() came before any register: the race was not run"
    released = {c.name for c in changes if c.kind == "unregister"}
    assert set(registered) <= released
    assert {c.name for c in changes if c.kind == "register"} == set(registered)


def test_close_while_threads_write_does_not_crash_sqlite(tmp_path: Path) -> None:
    # Rounds of threads storing events and registering names while close() runs: each
    # round's writers all end with storage_unavailable, and the process lives.
    script = textwrap.dedent(
        f"""
        import threading, time
        from foundation import Foundation, StorageUnavailableError
        for round in range(5):
            fdn = Foundation({f"sqlite:///{tmp_path / 'crash.db'}"!r}, registry_ttl_ms=1000)
            ended = []
            def write(k):
                try:
                    for i in range(10**6):
                        if k % 2:
                            fdn.service_registry.register(f"n.{{round}}.{{k}}.{{i}}", "addr")
                        else:
                            fdn.events.store({{"type": "t", "data": {{"i": i}}}})
                except StorageUnavailableError:
                    ended.append(k)
            threads = [threading.Thread(target=write, args=(k,)) for k in range({WRITERS})]
            for t in threads:
                t.start()
            time.sleep(0.2)
            fdn.close()
            for t in threads:
                t.join()
            print(sorted(ended))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:-1] == [str(list(range(WRITERS)))] * 5


def test_registers_racing_close_are_all_released(db_url: str) -> None:
    fdn = node(db_url)
    changes = watched(fdn, "*")
    registered: list[str] = []
    failures: list[BaseException] = []

    def write(k: int) -> None:
        try:
            for i in range(10**6):
                name = f"n.{k}.{i}"
                fdn.service_registry.register(name, "addr")
                registered.append(name)
        except FoundationError as exc:
            failures.append(exc)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(WRITERS)]
    for t in threads:
        t.start()
    wait_for(lambda: len(registered) >= 20)
    fdn.close()
    count_after_close = len(registered)
    for t in threads:
        t.join()
    assert len(registered) == count_after_close  # none acknowledged after close()
    _outcome(changes, registered, failures)
    with node(db_url) as other:
        assert _rows_held_by(other, fdn.service_registry.node) == 0
        assert other.service_registry.list() == []


async def test_registers_racing_close_are_all_released_async(db_url: str) -> None:
    fdn = anode(db_url)
    await fdn.__aenter__()
    changes = watched(fdn, "*")
    registered: list[str] = []
    failures: list[BaseException] = []

    async def write(k: int) -> None:
        try:
            for i in range(10**6):
                name = f"n.{k}.{i}"
                await fdn.service_registry.register(name, "addr")
                registered.append(name)
                await fdn.events.store({"type": "t", "data": {"i": i}})
        except FoundationError as exc:
            failures.append(exc)
        # Anything else (aiosqlite's ValueError) fails the gather below.

    tasks = [asyncio.create_task(write(k)) for k in range(WRITERS)]
    while len(registered) < 20:
        await asyncio.sleep(0.005)
    await fdn.close()
    count_after_close = len(registered)
    await asyncio.gather(*tasks)
    assert len(registered) == count_after_close
    _outcome(changes, registered, failures)
    with node(db_url) as other:
        assert _rows_held_by(other, fdn.service_registry.node) == 0
        assert other.service_registry.list() == []


def test_a_name_past_its_own_ttl_is_not_lost_when_taken(db_url: str) -> None:
    with node(db_url) as a, node(db_url) as b:
        seen = watched(a, "job")
        lost = lease_lost(a)
        a.service_registry.register("job", "http://a", ttl=200)
        assert a.service_registry.owns("job")
        wait_for(lambda: kinds(seen) == ["register", "expired"], timeout=5)
        assert not a.service_registry.owns("job")
        b.service_registry.register("job", "http://b")
        wait_for(lambda: kinds(seen) == ["register", "expired", "register"])
        time.sleep(0.2)  # a "lost" would follow the feed's read at once
        drain(a.service_registry)
        assert kinds(seen) == ["register", "expired", "register"]
        assert seen[-1].entry is not None and seen[-1].entry.node == b.service_registry.node
        assert lost == []


def test_close_inside_one_of_its_own_writes_does_not_wait_for_it(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """As close() from a SIGTERM handler that interrupted a register: the write cannot
    end before close() returns, so close() does not wait for it (it waited 5 s), and it
    releases what the node holds (PostgreSQL on another connection)."""
    fdn = node(db_url)
    fdn.service_registry.register("kept", "http://a")
    closed: list[bool] = []

    def close_now(*_: object) -> None:
        fdn.close()
        closed.append(True)

    fdn.telemetry.attach("review7-close", "foundation.registry.register", close_now)
    fdn.service_registry.register("last", "http://a")  # its telemetry closes the instance
    assert closed
    assert not [r for r in caplog.records if "writes still running" in r.getMessage()]
    with node(db_url) as other:
        assert other.service_registry.find("kept") is None
        assert other.service_registry.find("last") is None
        assert _rows_held_by(other, fdn.service_registry.node) == 0
