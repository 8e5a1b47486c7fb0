"""The registry's proofs with real OS processes: kill -9, races, SIGSTOP/SIGCONT, and
PostgreSQL connections cut during heartbeats. Small TTLs (1 s) keep each test short."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from typing import Any

import psycopg
import pytest

from foundation import Foundation
from foundation.database.url import DatabaseURL
from tests.helpers import wait_for

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

TTL = 1000
HEARTBEAT = TTL // 3

CHILD = textwrap.dedent(
    """
    import json, os, sys, threading, time
    from foundation import AlreadyRegisteredError, Foundation

    url, mode = sys.argv[1], sys.argv[2]
    fdn = Foundation(url, migrate="skip", poll_interval_ms=5, registry_ttl_ms=1000)
    reg = fdn.service_registry

    _out_lock = threading.Lock()

    def out(*parts):
        # Watch callbacks print from the heartbeat and feed threads too: one whole line
        # per write, so lines never interleave.
        with _out_lock:
            sys.stdout.write(" ".join(str(p) for p in parts) + "\\n")
            sys.stdout.flush()

    if mode == "hold":
        for name in sys.argv[3].split(","):
            reg.register(name, {"pid": os.getpid()})
        out("ready", fdn.settings.node_id)
        time.sleep(120)
    elif mode == "race":
        names = sys.argv[3].split(",")
        out("ready", fdn.settings.node_id)
        start_at = float(sys.stdin.readline())
        time.sleep(max(0.0, start_at - time.time()))
        won = []
        for name in names:
            try:
                reg.register(name, os.getpid())
                won.append(name)
            except AlreadyRegisteredError:
                pass
        out("won", json.dumps(won))
        sys.stdin.read()  # keep the names until the parent has looked
        fdn.close()
    elif mode == "pause":
        name = sys.argv[3]
        reg.watch(name, lambda c: out("change", c.kind, c.entry.node if c.entry else "-"))
        reg.register(name, os.getpid())
        # Start the clock before saying ready: the parent may stop us right after the line.
        started = last = time.monotonic()
        resumed_at, after = None, []
        out("ready", fdn.settings.node_id)
        while True:
            now = time.monotonic()
            if resumed_at is None and now - last > 1.0:  # stopped (the parent holds >= 1.5 s)
                resumed_at = now
            if resumed_at is None and now - started > 20:
                break  # never seen stopped: report, and let the parent's assertions say so
            if resumed_at is not None:
                after.append(reg.owns(name))
                if now - resumed_at > 2.5:
                    break
            last = now
            time.sleep(0.01)
        entry = reg.find(name)
        out("after", json.dumps({
            "owned_after_resume": any(after),
            "owner": entry.node if entry else None,
            "losses": reg.lease_losses,
        }))
        fdn.close()
    """
)


def node(url: str, **kwargs: Any) -> Foundation:
    return Foundation(url, migrate="skip", poll_interval_ms=5, registry_ttl_ms=TTL, **kwargs)


def spawn(url: str, mode: str, arg: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, url, mode, arg],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def ready(child: subprocess.Popen[str]) -> str:
    assert child.stdout is not None
    while True:
        line = child.stdout.readline().split()
        assert line, "the child exited before it was ready"
        if line[0] == "ready":
            return line[1]


def reap(child: subprocess.Popen[str]) -> None:
    if child.poll() is None:
        child.kill()
    child.wait(timeout=30)
    for stream in (child.stdin, child.stdout):
        if stream is not None:
            stream.close()


def test_kill_9_frees_the_names_within_ttl_plus_a_heartbeat(db_url: str) -> None:
    with node(db_url) as b:
        child = spawn(db_url, "hold", "leader,cache")
        try:
            owner = ready(child)
            wait_for(lambda: b.service_registry.find("cache") is not None)
            assert b.service_registry.lookup("leader").node == owner
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
            killed = time.monotonic()
            # Expiry counts from the last renewal, at most TTL before now.
            budget = (TTL + HEARTBEAT) / 1000
            wait_for(lambda: b.service_registry.find("leader") is None, timeout=budget + 0.5)
            wait_for(lambda: b.service_registry.find("cache") is None, timeout=0.5)
            assert time.monotonic() - killed <= budget + 0.5
            taken = b.service_registry.register("leader", "b")
            assert taken.epoch == 2 and taken.node == b.settings.node_id
            assert b.service_registry.register("cache", "b").epoch == 2
        finally:
            reap(child)


def test_processes_racing_for_names_exactly_one_wins_each(db_url: str) -> None:
    names = [f"leader-{i}" for i in range(5)]
    children = [spawn(db_url, "race", ",".join(names)) for _ in range(6)]
    try:
        nodes = [ready(c) for c in children]
        start_at = time.time() + 0.3
        for child in children:
            assert child.stdin is not None
            child.stdin.write(f"{start_at}\n")
            child.stdin.flush()
        won: list[list[str]] = []
        for child in children:
            assert child.stdout is not None
            kind, payload = child.stdout.readline().split(" ", 1)
            assert kind == "won"
            won.append(json.loads(payload))
        for name in names:
            assert sum(name in w for w in won) == 1, (name, won)
        with node(db_url) as observer:
            for name in names:
                entry = observer.service_registry.lookup(name)
                assert entry.epoch == 1  # never taken from a live winner
                assert name in won[nodes.index(entry.node)]
    finally:
        for child in children:
            if child.stdin is not None and not child.stdin.closed:
                child.stdin.close()
            child.wait(timeout=30)
            reap(child)


def test_sigstop_past_ttl_then_sigcont_the_old_holder_reports_the_loss(db_url: str) -> None:
    with node(db_url) as b:
        child = spawn(db_url, "pause", "primary")
        try:
            ready(child)
            wait_for(lambda: b.service_registry.find("primary") is not None)
            child.send_signal(signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                wait_for(lambda: b.service_registry.find("primary") is None, timeout=5)
                taken = b.service_registry.register("primary", "b")
                assert taken.epoch == 2
                # Stopped for longer than the TTL in any case, so the child can tell.
                time.sleep(max(0.0, 1.5 - (time.monotonic() - stopped)))
            finally:
                child.send_signal(signal.SIGCONT)
            out, _ = child.communicate(timeout=30)
            lines = out.splitlines()
            after = json.loads(next(line for line in lines if line.startswith("after "))[6:])
            assert after == {
                "owned_after_resume": False,
                "owner": b.settings.node_id,
                "losses": 1,
            }
            assert f"change lost {b.settings.node_id}" in lines
            assert b.service_registry.owns("primary")
            assert b.service_registry.lookup("primary").node == b.settings.node_id
        finally:
            reap(child)


def test_postgres_connections_cut_during_heartbeats_keep_the_names(
    postgres_server: str,
) -> None:
    from tests.conftest import fresh_postgres

    with fresh_postgres(postgres_server) as url:
        Foundation(url, migrate="upgrade").close()
        with node(url, listen_reconnect_max_ms=50) as a, node(url) as b:
            reg = a.service_registry
            reg.register("svc", "a")
            generation = reg.lease_generation
            wait_for(lambda: b.service_registry.find("svc") is not None)
            parsed = DatabaseURL.parse(url)
            cut = 0
            with psycopg.connect(parsed.conninfo, autocommit=True) as admin:
                end = time.monotonic() + 3 * TTL / 1000
                while time.monotonic() < end:
                    rows = admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = %s AND application_name LIKE %s",
                        (parsed.url.database, f"foundation%{a.settings.node_id}"),
                    ).fetchall()
                    cut += len(rows)
                    time.sleep(0.1)
            assert cut > 0
            time.sleep(HEARTBEAT / 1000)
            assert reg.owns("svc")
            assert reg.lease_losses == 0 and reg.lease_generation == generation
            assert b.service_registry.lookup("svc").node == a.settings.node_id
            wait_for(lambda: a.feed.connected)
            time.sleep(TTL / 1000)
            assert b.service_registry.find("svc") is not None
