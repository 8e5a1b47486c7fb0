"""The soak harness, short: three worker processes for 30 s with every fault switch on,
on SQLite and on PostgreSQL, and no invariant violated (scripts/soak.py, docs/soak.md).

PostgreSQL runs on a throwaway cluster of the harness's own (initdb on a free port) so
that the restart fault restarts nobody else's server; where initdb cannot run here, it
runs on the test server without that one fault. A last test forges acks and audit rows
to show that each check of the verifier does catch what it is there to catch.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals"),
]

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SHORT = ["--workers", "3", "--duration", "30", "--fault-every", "2", "--drain", "30"]


def soak(out: Path, *args: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / "soak.py"), *SHORT, *args, "--out", str(out)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    report = out / "report.json"
    assert report.exists(), f"the soak produced no report:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return dict(json.loads(report.read_text()))


def assert_clean(report: dict[str, Any], faults: list[str]) -> None:
    text = json.dumps(report, indent=1)
    assert report["violations"] == 0, text
    for fault in faults:
        assert report["faults"].get(fault, 0) > 0, f"fault {fault} never injected: {text}"
    for name, component in report["components"].items():
        assert component["operations"] > 0, f"no {name} operations: {text}"
    for invariant in report["invariants"]:
        assert invariant["checked"] > 0, f"{invariant['name']} checked nothing: {text}"


def own_cluster_possible() -> bool:
    """initdb is here, and (as root) there is a ``postgres`` user to run it as."""
    if not (glob.glob("/usr/lib/postgresql/*/bin/initdb") or shutil.which("initdb")):
        return False
    if os.geteuid() != 0:
        return True
    import pwd  # POSIX only

    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return shutil.which("runuser") is not None


@pytest.fixture(scope="module")
def sqlite_soak(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("soak-sqlite")
    return out, soak(out, "--database", "sqlite")


def test_soak_on_sqlite(sqlite_soak: tuple[Path, dict[str, Any]]) -> None:
    _out, report = sqlite_soak
    assert_clean(report, ["kill", "stop"])


def test_soak_on_postgresql(postgres_server: str, tmp_path: Path) -> None:
    if own_cluster_possible():
        report = soak(tmp_path, "--own-cluster")
        assert_clean(report, ["kill", "stop", "terminate", "restart", "slow"])
    else:  # no initdb here: every fault but the server restart, on the test server
        report = soak(tmp_path, "--database", postgres_server,
                      "--faults", "kill,stop,terminate,slow")
        assert_clean(report, ["kill", "stop", "terminate", "slow"])


def _forge(out: Path) -> None:
    """Claims no database backs, and history rows no valid run can write."""
    t = 2_000_000_000.1  # one limiter window, far from the soak's
    lines = [
        {"k": "event", "id": str(uuid.uuid4()), "pos": 1, "stream": "soak-s0", "version": 1,
         "type": "soak.order"},
        *({"k": "admit", "asked": t, "at": t} for _ in range(25)),
        {"k": "register", "name": "soak-leader-0", "epoch": 999, "node": "nobody"},
        {"k": "owns", "name": "forged-name", "epoch": 1, "asked": t},
        {"k": "config", "key": "soak.k0", "value": {"forged": True}},
        {"k": "seen", "sub": "soak-sub-w0", "pos": -5, "id": "x"},
        {"k": "escape", "op": "events", "type": "psycopg.OperationalError", "msg": "forged"},
        {"k": "start"},  # then counters that stand still for 30 s: a hang
        *({"k": "stats", "t": t + i, "counts": {"events": 1}} for i in range(0, 31, 5)),
    ]
    with open(out / "acks-w0-r99.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"t": t, **line}) + "\n" for line in lines)
    conn = sqlite3.connect(out / "soak.db")
    with conn:
        (rev,) = conn.execute("SELECT max(new_revision) FROM soak_audit_breakers").fetchone()
        conn.execute(
            "INSERT INTO soak_audit_breakers (name, op, old_state, new_state, old_revision, "
            "new_revision, updated_at_ms) VALUES ('soak-dep', 'update', 'closed', 'half_open', "
            "?, ?, 0)",
            (rev, rev + 1),
        )
        far, now = "2100-01-01 00:00:00.000000", "2026-01-01 00:00:00.000000"
        conn.execute(
            "INSERT INTO soak_audit_registry (kind, op, new_node, new_gen, new_expires_at, "
            "updated_at) VALUES ('lease', 'insert', 'forged', 1, ?, ?)",
            (far, now),
        )
        conn.execute(
            "INSERT INTO soak_audit_registry (kind, op, name, old_node, old_gen, old_epoch, "
            "new_node, new_gen, new_epoch, registered_at, updated_at) "
            "VALUES ('name', 'update', 'forged-name', 'forged', 1, 1, 'thief', 1, 2, ?, ?)",
            (now, now),
        )
        conn.execute(  # a renewal of a lease that had expired in 2000
            "INSERT INTO soak_audit_registry (kind, op, old_node, old_gen, old_expires_at, "
            "new_node, new_gen, new_expires_at, updated_at) "
            "VALUES ('lease', 'update', 'late', 1, '2000-01-01 00:00:00.000000', 'late', 1, ?, ?)",
            (far, now),
        )
        conn.execute(
            "INSERT INTO foundation_events (id, stream_id, stream_version, type, data, metadata,"
            " recorded_at) VALUES (?, 'soak-s0', 100000, 'soak.forged', '{}', '{}', ?)",
            (str(uuid.uuid4()), now),
        )
    conn.close()


def test_the_verifier_catches_forged_claims(
    sqlite_soak: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    out, _ = sqlite_soak
    copy = tmp_path / "forged"
    shutil.copytree(out, copy)
    _forge(copy)
    sys.path.insert(0, str(SCRIPTS))
    try:
        from soak_verify import Params, verify
    finally:
        sys.path.remove(str(SCRIPTS))
    results = verify(f"sqlite:///{copy / 'soak.db'}", copy, Params(20, 1000, 3, 3))
    found = {r["name"]: "\n".join(r["examples"]) for r in results}
    expected = {
        "events.acked_once": ["is not in the log"],
        "events.streams_contiguous": ["stream soak-s0"],
        "subscriptions.no_gap": ["not of its types"],
        "limiter.window_limit": ["25 acknowledged admissions"],
        "breaker.transitions": ["closed→half_open"],
        "registry.one_live_owner": [
            "forged-name epoch 2 taken by thief", "soak-leader-0 epoch 999", "still owned"
        ],
        "registry.leases": ["renewed at"],
        "config.history": ["not in history"],
        "caches.converged": ["never reported"],
        "no_escapes": ["forged"],
        "workers.progress": ["worker 0 run 99: no call returned"],
    }
    assert set(found) == set(expected)
    for name, messages in expected.items():
        for message in messages:
            assert message in found[name], f"{name} missed {message!r}: {found[name]}"
