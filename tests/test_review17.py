"""Defects found by the seventeenth review round, each with the case that showed it.

Each test failed on the commit before its fix.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from foundation import ConfigError
from tests.helpers import async_wait_for, wait_for
from tests.test_cli import fails, ok
from tests.test_registry import node, stop_heartbeat
from tests.test_registry_async import freeze
from tests.test_registry_review3 import anode, kinds, watched


def test_a_refused_import_into_a_new_file_leaves_no_database(tmp_path: Path) -> None:
    lines = tmp_path / "events.jsonl"
    lines.write_text('{"type": 5}\n')
    url = f"sqlite:///{tmp_path / 'restore' / 'app.db'}"
    fails(url, "event_error", "events", "import", str(lines))
    assert not (tmp_path / "restore").exists()


def test_an_import_keeps_a_file_that_holds_anything(tmp_path: Path) -> None:
    """A database that existed, or one the import wrote to before its error, stays."""
    first, bad = tmp_path / "first.jsonl", tmp_path / "bad.jsonl"
    first.write_text('{"type": "a"}\n')
    bad.write_text('{"type": 5}\n')
    url = f"sqlite:///{tmp_path / 'app.db'}"
    ok(url, "db", "upgrade")
    fails(url, "event_error", "events", "import", str(bad))
    assert (tmp_path / "app.db").exists()  # existed (empty) before the command

    many = tmp_path / "many.jsonl"
    many.write_text('{"type": "a"}\n' * 600 + '{"type": 5}\n')  # a first batch commits
    url = f"sqlite:///{tmp_path / 'new.db'}"
    fails(url, "event_error", "events", "import", str(many))
    with sqlite3.connect(tmp_path / "new.db") as db:
        assert db.execute("SELECT count(*) FROM foundation_events").fetchone() == (500,)


def test_a_paused_holder_whose_node_id_was_taken_reports_each_registration_expired_then_lost(
    db_url: str,
) -> None:
    """Its names hung off its dead lease: each is reported expired (once), then lost; a
    name the new instance registers again is a new registration after that."""
    old = node(db_url, node_id="web")
    try:
        seen = watched(old, "*")
        old.service_registry.register("svc", "http://old")
        old.service_registry.register("other", "http://old")
        old.service_registry.join("workers", "http://old")
        stop_heartbeat(old)  # paused past its TTL; a new process of the same id starts
        with node(db_url, node_id="web") as new:
            with pytest.raises(ConfigError):
                old.service_registry.heartbeat()
            new.service_registry.register("svc", "http://new")
            wait_for(lambda: kinds(seen, "svc")[-1:] == ["register"] and len(seen) > 6)
            time.sleep(0.3)  # nothing more is told
            assert kinds(seen, "svc") == ["register", "expired", "lost", "register"]
            assert kinds(seen, "other") == ["register", "expired", "lost"]
            assert kinds(seen, "workers") == ["join", "expired"]
    finally:
        old.close()


async def test_async_a_paused_holder_whose_node_id_was_taken_reports_expired_then_lost(
    db_url: str,
) -> None:
    old = anode(db_url, node_id="web")
    await old.open()
    try:
        seen = watched(old, "*")
        await old.service_registry.register("svc", "http://old")
        await old.service_registry.join("workers", "http://old")
        await freeze(old)
        async with anode(db_url, node_id="web"):
            with pytest.raises(ConfigError):
                await old.service_registry.heartbeat()
            await async_wait_for(lambda: len(seen) >= 5)
            await asyncio.sleep(0.3)  # nothing more is told
            assert kinds(seen, "svc") == ["register", "expired", "lost"]
            assert kinds(seen, "workers") == ["join", "expired"]
    finally:
        await old.close()
