"""Every Python example in the README and in docs/events.md runs, as a new user would
run it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
# The events guide's example checks itself with asserts, and prints one line.
EVENTS_GUIDE = re.findall(r"```python\n(.*?)```", (ROOT / "docs/events.md").read_text(), flags=re.S)


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDATION_")}
    return subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_the_events_guide_example_runs(tmp_path: Path) -> None:
    assert len(EVENTS_GUIDE) == 1
    for _ in range(2):  # a reader tries it twice in one folder
        done = _run(EVENTS_GUIDE[0], tmp_path)
        assert done.returncode == 0, done.stderr
        assert done.stdout == "stopped ['post', 'bike']\n"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, tmp_path: Path) -> None:
    for run in range(2):  # a reader tries it twice in one folder: its files are there
        done = _run(BLOCKS[index], tmp_path)
        assert done.returncode == 0, done.stderr
        if "config.watch" in BLOCKS[index]:
            # The second run sets the value it already holds: no change, no watch call.
            assert ("port: None -> 4000" in done.stdout) == (run == 0)
            assert "config_error" in done.stdout
        elif "auth_service" in BLOCKS[index]:
            assert done.stdout.split("\n")[:4] == [
                "1 {'total': 42}",
                "http://10.0.0.5:8000",
                "paid",
                "rate_limited retry after True",
            ]
        else:
            assert done.stdout.strip() == "async"
