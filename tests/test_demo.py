"""The demo (``scripts/demo``, ``python -m foundation.demo``) runs, and runs again."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _demo(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDATION_")}
    return subprocess.run(
        [sys.executable, "-m", "foundation.demo", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_demo_runs_twice_on_one_database(tmp_path: Path) -> None:
    """A second run on the same SQLite file (the embedded default in the working folder)
    must not trip over the first run's stream, config value or registration."""
    for run in (1, 2):
        done = _demo(tmp_path)
        assert done.returncode == 0, f"run {run}: {done.stderr}"
        out = done.stdout
        assert "projection (subscription, at least once): total = 42" in out
        assert "concurrency_error: stream 'order-" in out
        assert "node B takes it: http://10.0.0.9:8000" in out
        assert "seen on the other after" in out and ": 400" in out
    assert (tmp_path / "foundation.db").exists()


def test_the_demo_says_what_it_does_before_it_writes(tmp_path: Path) -> None:
    done = _demo(tmp_path, "--help")
    assert done.returncode == 0 and "FOUNDATION_DATABASE_URL" in done.stdout
    refused = _demo(tmp_path, "--verbose")
    assert refused.returncode == 2 and "unrecognized arguments: --verbose" in refused.stderr
    assert list(tmp_path.iterdir()) == []  # neither wrote foundation.db
