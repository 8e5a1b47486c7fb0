"""The public surface is deliberate: what `foundation` exports, and the default instance."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import foundation
from foundation import config, telemetry


def test_exported_members_are_public_and_present() -> None:
    for module in (foundation, config, telemetry):
        for name in module.__all__:
            assert hasattr(module, name), f"{module.__name__}.{name} is in __all__ but missing"
    public = {n for n in dir(foundation) if not n.startswith("_")}
    assert {"Foundation", "AsyncFoundation", "FoundationError", "correlation"} <= public
    assert {"config", "telemetry", "errors", "settings"} <= public


def test_instances_have_the_same_service_attributes(tmp_path: Path) -> None:
    sync_attrs = {"config", "telemetry", "settings", "url", "feed", "database"}
    with foundation.Foundation(f"sqlite:///{tmp_path / 'a.db'}") as fdn:
        assert sync_attrs <= set(dir(fdn))
    afdn = foundation.AsyncFoundation(f"sqlite:///{tmp_path / 'b.db'}")
    assert sync_attrs <= set(dir(afdn))


def test_default_instance_follows_the_environment(tmp_path: Path) -> None:
    script = (
        "import foundation\n"
        "foundation.config.set('port', 4000)\n"
        "from foundation._default import instance\n"
        "print(instance().url.masked, foundation.config.get('port'))\n"
        "assert instance().telemetry is foundation.telemetry.default()\n"
    )
    url = f"sqlite:///{tmp_path / 'env.db'}"
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={"FOUNDATION_DATABASE_URL": url, "PATH": "/usr/bin:/bin"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [url, "4000"]
    with foundation.Foundation(url) as fdn:
        assert fdn.config.get("port") == 4000
