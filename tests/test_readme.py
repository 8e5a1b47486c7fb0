"""Every Python example in the README runs, as a new user would run it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_examples() -> None:
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FOUNDATION_")}
    done = subprocess.run(
        [sys.executable, "-c", BLOCKS[index]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    if "port: None -> 4000" in done.stdout:
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
