"""Auditing: the README's audit queries run as typed, and config changes join the log."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from foundation import Foundation
from foundation.database.url import DatabaseURL

README = Path(__file__).resolve().parent.parent / "README.md"


def _audit_queries(tool: str) -> list[str]:
    section = README.read_text().split("## For auditors", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sql\n(.*?)```", section, flags=re.S)
    [block] = [b for b in blocks if b.startswith(f"-- {tool}")]
    return [q.strip() for q in block.split(";") if q.strip()]


def _run(db_url: str, backend: str, query: str) -> list[tuple[Any, ...]]:
    url = DatabaseURL.parse(db_url)
    if backend == "sqlite":
        with sqlite3.connect(url.url.database or "") as conn:
            return conn.execute(query).fetchall()
    with psycopg.connect(url.conninfo) as conn:
        return conn.execute(query).fetchall()


def test_readme_audit_queries(fdn: Foundation, db_url: str, backend: str) -> None:
    fdn.events.store(
        {"type": "order_placed", "stream_id": "order-123", "data": {"order_id": 123, "amount": 5}}
    )
    fdn.events.store({"type": "order_placed", "data": {"order_id": 124, "amount": 7}})
    fdn.events.store({"type": "order_shipped", "stream_id": "order-123", "data": {"order_id": 123}})
    fdn.config.set("port", 4000)
    fdn.config.set("port", 4001)
    history, changes = _audit_queries("psql" if backend == "postgresql" else "sqlite3")
    rows = _run(db_url, backend, history)
    assert [(r[0], r[2], r[3]) for r in rows] == [
        (1, "order_placed", "order-123"),
        (3, "order_shipped", "order-123"),
    ]
    assert str(rows[0][4]) == "5" and rows[1][4] is None
    rows = _run(db_url, backend, changes)
    assert len(rows) == 2
    newest = rows[0]
    assert newest[1] == "port"
    assert str(newest[2]) == "4000" and str(newest[3]) == "4001"
    assert newest[4] == fdn.settings.node_id


def test_config_changes_are_events_in_order(fdn: Foundation) -> None:
    fdn.events.store({"type": "before"})
    fdn.config.set("feature.x", {"on": True})
    fdn.config.delete("feature.x")
    fdn.events.store({"type": "after"})
    log = fdn.events.get(limit=100)
    assert [e.type for e in log] == [
        "before",
        "foundation.config.changed",
        "foundation.config.changed",
        "after",
    ]
    positions = [e.position for e in log]
    assert positions == sorted(positions)
    set_, delete = log[1].data, log[2].data
    assert set_["key"] == "feature.x" and set_["old"] is None and set_["new"] == {"on": True}
    assert set_["operation"] == "set" and set_["by"] == fdn.settings.node_id
    assert delete["operation"] == "delete" and delete["old"] == {"on": True}
    assert delete["new"] is None


def test_config_events_have_time_ordered_ids_and_exact_times(fdn: Foundation) -> None:
    first = fdn.events.store({"type": "before"})
    fdn.config.set("feature.y", 1)
    last = fdn.events.store({"type": "after"})
    [changed] = fdn.events.get(type="foundation.config.changed")
    assert changed.id.version == 7  # as the ids store() generates (migration 0009)
    millis = [e.id.int >> 80 for e in (first, changed, last)]  # ordered to the millisecond
    assert millis == sorted(millis)
    # ``before`` is strict for trigger-written events too (SQLite once stored them with
    # milliseconds, which compared below the same instant written with microseconds).
    assert fdn.events.get(before=changed.recorded_at, type="foundation.config.changed") == []
    assert fdn.events.get(after=changed.recorded_at, type="foundation.config.changed") == []


def test_config_event_carries_the_correlation_id(fdn: Foundation) -> None:
    import foundation

    with foundation.correlation("audit-1"):
        fdn.config.set("limit", 3)
    [event] = fdn.events.correlation_chain("audit-1")
    assert event.type == "foundation.config.changed"


def test_audit_views_are_read_only_views(db_url: str, backend: str) -> None:
    with pytest.raises((sqlite3.Error, psycopg.Error)):
        _run(db_url, backend, "DELETE FROM foundation_audit_events")


def test_config_events_keep_commit_order_for_followers(fdn: Foundation, db_url: str) -> None:
    """Config writers and event writers at once: a follower by position misses nothing."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def config_writer(n: int) -> None:
        try:
            with Foundation(db_url, migrate="skip") as other:
                for i in range(25):
                    other.config.set(f"k{n}", i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def event_writer(n: int) -> None:
        try:
            with Foundation(db_url, migrate="skip") as other:
                for i in range(25):
                    other.events.store_many([{"type": "w", "data": [n, i, j]} for j in range(2)])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    seen: list[int] = []

    def follower() -> None:
        position = 0
        while True:
            last_round = stop.is_set()
            sql, params = fdn.events._read(
                fdn.events._criteria({"after_position": position, "limit": 1000}, {})
            )
            for row in fdn.events._db.fetchall(sql, params):
                seen.append(int(row[0]))
                position = int(row[0])
            if last_round:
                return
            time.sleep(0.001)

    reader = threading.Thread(target=follower)
    reader.start()
    writers = [threading.Thread(target=config_writer, args=(n,)) for n in range(3)]
    writers += [threading.Thread(target=event_writer, args=(n,)) for n in range(3)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    stop.set()
    reader.join()
    assert not errors, errors
    final = [e.position for e in fdn.events.iter()]
    assert len(final) == 3 * 25 + 3 * 25 * 2
    assert seen == final  # every event exactly once, in order, nothing skipped
