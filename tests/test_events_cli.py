"""``foundation events query | tail | export | import`` on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from foundation import Foundation
from foundation.cli import main


def run(url: str, *args: str) -> Result:
    result = CliRunner().invoke(main, ["-d", url, *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def ok(url: str, *args: str) -> Result:
    result = run(url, *args)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def _fill(url: str, n: int = 5) -> None:
    with Foundation(url, migrate="check") as fdn:
        fdn.events.store_many(
            [
                {
                    "type": "order_placed" if i % 2 == 0 else "order_paid",
                    "stream_id": f"order-{i // 2}",
                    "data": {"order_id": i // 2, "n": i},
                }
                for i in range(n)
            ]
        )


def test_query(db_url: str) -> None:
    _fill(db_url)
    rows = json.loads(ok(db_url, "events", "query", "--json").stdout)
    assert [r["position"] for r in rows] == [1, 2, 3, 4, 5]
    rows = json.loads(ok(db_url, "events", "query", "--type", "order_paid", "--json").stdout)
    assert [r["data"]["n"] for r in rows] == [1, 3]
    rows = json.loads(
        ok(
            db_url, "events", "query", "--stream", "order-1", "--after-position", "3", "--json"
        ).stdout
    )
    assert [(r["type"], r["stream_version"]) for r in rows] == [("order_paid", 2)]
    rows = json.loads(ok(db_url, "events", "query", "--limit", "2", "--desc", "--json").stdout)
    assert [r["position"] for r in rows] == [5, 4]
    table = ok(db_url, "events", "query", "--type", "order_placed").stdout
    assert "order_placed" in table and "order_paid" not in table
    bad = run(db_url, "events", "query", "--limit", "0")
    assert bad.exit_code == 2


def test_tail_and_follow(db_url: str) -> None:
    _fill(db_url)
    lines = ok(db_url, "events", "tail", "-n", "2", "--json").stdout.splitlines()
    assert [json.loads(line)["position"] for line in lines] == [4, 5]
    plain = ok(db_url, "events", "tail", "-n", "1").stdout
    assert plain.startswith("5 ") and "order_placed order-2@1" in plain

    def later() -> None:
        time.sleep(0.5)
        with Foundation(db_url, migrate="check") as fdn:
            for i in range(3):
                fdn.events.store({"type": "live", "data": {"i": i}})

    writer = threading.Thread(target=later)
    writer.start()
    result = ok(
        db_url, "events", "tail", "-n", "0", "--follow", "--max-events", "3", "--json",
        "--type", "live", "--idle-timeout", "20",
    )  # fmt: skip
    writer.join()
    assert [json.loads(line)["data"]["i"] for line in result.stdout.splitlines()] == [0, 1, 2]
    idle = ok(db_url, "events", "tail", "-n", "0", "--follow", "--idle-timeout", "0.2")
    assert idle.stdout == ""


def test_export_import_round_trip_is_idempotent(
    db_url: str, tmp_path: Path, backend: str, request: Any
) -> None:
    _fill(db_url, 1_200)  # long enough for the progress bar
    with Foundation(db_url, migrate="check") as fdn:
        fdn.config.set("port", 4000)
    out = tmp_path / "log.jsonl"
    result = ok(db_url, "events", "export", str(out))
    assert "exported 1201 events" in result.stdout
    lines = out.read_text().splitlines()
    assert len(lines) == 1201
    assert json.loads(lines[-1])["type"] == "foundation.config.changed"
    # Into the same log: everything is already there.
    assert "imported 0 events, skipped 1201" in ok(db_url, "events", "import", str(out)).stdout
    # Into a fresh database of the same kind: everything once, then nothing.
    fresh = request.getfixturevalue("empty_db_url")
    ok(fresh, "db", "upgrade")
    assert "imported 1201 events, skipped 0" in ok(fresh, "events", "import", str(out)).stdout
    assert "imported 0 events, skipped 1201" in ok(fresh, "events", "import", str(out)).stdout
    with Foundation(db_url, migrate="check") as a, Foundation(fresh, migrate="check") as b:
        left = [(e.id, e.type, e.stream_id, e.stream_version, e.data) for e in a.events.iter()]
        right = [(e.id, e.type, e.stream_id, e.stream_version, e.data) for e in b.events.iter()]
        assert left == right


def test_import_reports_bad_lines(db_url: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "ok", "data": 1}\nnot json\n')
    result = run(db_url, "events", "import", str(bad))
    assert result.exit_code == 1
    assert "error [event_error]: line 2 is not JSON" in result.stderr
    conflicting = tmp_path / "conflict.jsonl"
    with Foundation(db_url, migrate="check") as fdn:
        first = fdn.events.store({"type": "x", "data": 1})
    conflicting.write_text(json.dumps({"id": str(first.id), "type": "x", "data": 2}) + "\n")
    result = run(db_url, "events", "import", str(conflicting))
    assert result.exit_code == 1 and "different content" in result.stderr
    for name, content, message in (
        ("latin1.jsonl", b'{"type": "ok"}\n\xff\xfe{"type": "x"}\n', "line 2 is not UTF-8 text"),
        ("untyped.jsonl", b'{"type": "ok"}\n{"data": 1}\n', "line 2: event field 'type'"),
        ("nan.jsonl", b'{"type": "ok"}\n{"type": "x", "data": NaN}\n', "line 2: the data"),
    ):
        (tmp_path / name).write_bytes(content)
        result = run(db_url, "events", "import", str(tmp_path / name))
        assert result.exit_code == 1, result.output
        assert f"error [event_error]: {message}" in result.stderr
        assert "Traceback" not in result.output + result.stderr
    with Foundation(db_url, migrate="check") as fdn:
        assert [e.type for e in fdn.events.get()] == ["x"]  # nothing from the bad files
