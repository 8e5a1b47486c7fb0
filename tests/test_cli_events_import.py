"""``foundation events import`` when a file goes wrong part-way, and reading commands on a
SQLite path with no file (SQLite and PostgreSQL where the database is involved)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from foundation import Foundation
from foundation.cli import main
from foundation.cli_events import IMPORT_BATCH


def run(url: str, *args: str, stdin: str | None = None) -> Result:
    result = CliRunner().invoke(main, ["-d", url, *args], input=stdin)
    # Only clean exits: anything else is a bug in the command, not an outcome.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def ok(url: str, *args: str, stdin: str | None = None) -> str:
    result = run(url, *args, stdin=stdin)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    # Nothing but the note on lines without an id (see the test of it below).
    assert result.stderr == "" or result.stderr.startswith("note: "), result.stderr
    return result.stdout


def fails(url: str, code: str, *args: str) -> str:
    """The one-line error of a command that must fail cleanly."""
    result = run(url, *args)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.stderr.startswith(f"error [{code}]: "), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr


def uuid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def write_lines(path: Path, rows: list[dict[str, object] | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def logged(url: str) -> list[tuple[str, object]]:
    """(id, data) of every event a separate Foundation reads from the log."""
    with Foundation(url, migrate="check") as fdn:
        return [(str(e.id), e.data) for e in fdn.events.iter()]


# -- a failure after committed batches ------------------------------------------------


def test_bad_line_after_a_committed_batch_says_what_stays_and_rerun_is_safe(
    db_url: str, tmp_path: Path
) -> None:
    total, bad = IMPORT_BATCH + 100, IMPORT_BATCH + 50
    rows: list[dict[str, object] | str] = [
        {"id": uuid(i), "type": "x", "data": i} for i in range(1, total + 1)
    ]
    rows[bad - 1] = {"id": uuid(bad), "data": "no type"}
    file = write_lines(tmp_path / "log.jsonl", rows)

    err = fails(db_url, "event_error", "events", "import", str(file))
    assert f"line {bad}: event field 'type'" in err
    assert (
        f"lines 1-{IMPORT_BATCH} before it were imported and stay committed "
        f"({IMPORT_BATCH} new events, 0 already recorded)"
    ) in err
    assert f"fix line {bad}, then run the same import again" in err
    assert "skips the events already recorded" in err
    assert [data for _, data in logged(db_url)] == list(range(1, IMPORT_BATCH + 1))

    # As the message says: fixed, the same file again writes only what was missing.
    rows[bad - 1] = {"id": uuid(bad), "type": "x", "data": bad}
    write_lines(file, rows)
    out = ok(db_url, "events", "import", str(file))
    assert out == f"imported 100 events, skipped {IMPORT_BATCH} already recorded\n"
    assert [data for _, data in logged(db_url)] == list(range(1, total + 1))


def test_bad_line_after_committed_events_without_ids_says_to_import_only_the_rest(
    db_url: str, tmp_path: Path
) -> None:
    """Events with no id get a new one on every import: the whole file again would
    record them twice, so the message must not say that is safe."""
    total, bad = IMPORT_BATCH + 10, IMPORT_BATCH + 5
    rows: list[dict[str, object] | str] = [{"type": "x", "data": i} for i in range(total)]
    rows[bad - 1] = "not json"
    file = write_lines(tmp_path / "log.jsonl", rows)

    err = fails(db_url, "event_error", "events", "import", str(file))
    assert f"line {bad} is not JSON" in err
    assert f"lines 1-{IMPORT_BATCH} before it were imported and stay committed" in err
    assert f"{IMPORT_BATCH} of them have no id and would be recorded twice" in err
    assert f"tail -n +{IMPORT_BATCH + 1} {file} | foundation events import -" in err
    assert "run the same import again" not in err
    assert len(logged(db_url)) == IMPORT_BATCH

    # The advice works: the rest of the file, fixed, from stdin.
    rest = file.read_text().splitlines()[IMPORT_BATCH:]
    rest[bad - IMPORT_BATCH - 1] = json.dumps({"type": "x", "data": bad - 1})
    out = ok(db_url, "events", "import", "-", stdin="\n".join(rest) + "\n")
    assert out == "imported 10 events, skipped 0 already recorded\n"
    assert [data for _, data in logged(db_url)] == list(range(total))


def test_bad_line_in_the_first_batch_says_nothing_was_imported(db_url: str, tmp_path: Path) -> None:
    file = write_lines(tmp_path / "log.jsonl", [{"type": "x", "data": 1}, {"data": 2}])
    err = fails(db_url, "event_error", "events", "import", str(file))
    assert "line 2: event field 'type'" in err and err.endswith("; nothing was imported\n")
    assert logged(db_url) == []


# -- nesting ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("depth", "message"),
    [
        (5_000, "line 2 is nested too deeply to read (an event's values may nest at most 100"),
        (150, "line 2: the data of event 'x' is nested more than 100 levels deep"),
    ],
)
def test_deeply_nested_line_is_a_one_line_error_naming_it(
    db_url: str, tmp_path: Path, depth: int, message: str
) -> None:
    """Past the interpreter's recursion limit the JSON cannot even be read; below it,
    the log's own limit refuses it. Either way: the line, in one line, no traceback."""
    deep = '{"type": "x", "data": ' + "[" * depth + "]" * depth + "}"
    file = write_lines(tmp_path / "deep.jsonl", [{"type": "ok", "data": 1}, deep])
    err = fails(db_url, "event_error", "events", "import", str(file))
    assert message in err
    assert logged(db_url) == []


# -- counts and conflicts ---------------------------------------------------------------


def test_a_repeated_id_counts_once_and_a_second_import_counts_none_new(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    same = {"id": uuid(1), "type": "x", "data": 1}
    file = write_lines(tmp_path / "dup.jsonl", [same, same, {"type": "y", "data": 2}])
    out = ok(db_url, "events", "import", str(file))
    assert out == "imported 2 events, skipped 1 already recorded\n"
    assert len(logged(db_url)) == 2
    # The line with no id is a new event each time (the docs' "same ids" rule).
    assert ok(db_url, "events", "import", str(file)) == (
        "imported 1 event, skipped 2 already recorded\n"
    )

    # A repeat in a later batch than its first line is counted as recorded too.
    monkeypatch.setattr("foundation.cli_events.IMPORT_BATCH", 2)
    spread = [{"id": uuid(10 + i), "type": "x", "data": i} for i in range(3)]
    write_lines(file, [*spread, spread[0], spread[2]])
    assert ok(db_url, "events", "import", str(file)) == (
        "imported 3 events, skipped 2 already recorded\n"
    )
    assert ok(db_url, "events", "import", str(file)) == (
        "imported 0 events, skipped 5 already recorded\n"
    )
    assert len(logged(db_url)) == 6


def test_exported_log_imported_again_is_all_already_recorded(db_url: str, tmp_path: Path) -> None:
    with Foundation(db_url, migrate="check") as fdn:
        fdn.events.store_many([{"type": "x", "data": i} for i in range(3)])
    out = tmp_path / "log.jsonl"
    ok(db_url, "events", "export", str(out))
    assert ok(db_url, "events", "import", str(out)) == (
        "imported 0 events, skipped 3 already recorded\n"
    )
    assert len(logged(db_url)) == 3


def test_id_conflict_names_the_line(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Foundation(db_url, migrate="check") as fdn:
        fdn.events.store({"id": uuid(1), "type": "x", "data": 1})
    file = write_lines(
        tmp_path / "conflict.jsonl",
        [{"type": "y", "data": 0}, "", {"id": uuid(1), "type": "x", "data": 2}],
    )
    err = fails(db_url, "event_error", "events", "import", str(file))
    assert f"line 3: event {uuid(1)} is already recorded with different content" in err
    assert err.endswith("; nothing was imported\n")

    # Twice in the file with different content: both lines are named.
    write_lines(
        file,
        [
            {"id": uuid(2), "type": "x", "data": 1},
            {"type": "y"},
            {"id": uuid(2), "type": "x", "data": 2},
        ],
    )
    err = fails(db_url, "event_error", "events", "import", str(file))
    assert f"lines 1, 3: event {uuid(2)} appears twice" in err

    # A conflict in a later batch: its line, and what the batches before it committed.
    monkeypatch.setattr("foundation.cli_events.IMPORT_BATCH", 2)
    write_lines(
        file,
        [
            {"id": uuid(3), "type": "x", "data": 3},
            {"id": uuid(4), "type": "x", "data": 4},
            {"id": uuid(1), "type": "x", "data": "other"},
        ],
    )
    err = fails(db_url, "event_error", "events", "import", str(file))
    assert f"line 3: event {uuid(1)} is already recorded with different content" in err
    assert "lines 1-2 before it were imported and stay committed (2 new events" in err
    assert [data for _, data in logged(db_url)] == [1, 3, 4]


# -- commands that read (or remove) on a SQLite path with no file -------------------------

READING = [
    ("events", "query"),
    ("events", "tail"),
    ("events", "tail", "--follow", "--idle-timeout", "0"),
    ("events", "export", "-"),
    ("config", "get", "port"),
    ("config", "list"),
    ("config", "history"),
    ("registry", "list"),
    ("registry", "show", "auth"),
    ("registry", "unregister", "auth"),  # writes, but to a database that is not there
    ("breakers",),
    ("limits",),
]


@pytest.mark.parametrize("args", READING, ids=" ".join)
def test_reading_command_on_a_missing_sqlite_file_creates_nothing(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    path = tmp_path / "typo" / "sub" / "shop.db"
    err = fails(f"sqlite:///{path}", "not_found", *args)
    assert f"no such database file: {path}; check the path" in err
    assert "foundation db upgrade" in err
    assert not (tmp_path / "typo").exists()


def test_db_current_and_history_on_a_missing_sqlite_file_create_nothing(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'typo' / 'shop.db'}"
    assert ok(url, "db", "current").startswith("none (not head")
    assert json.loads(ok(url, "db", "current", "--json"))["current"] is None
    assert "current: none" in ok(url, "db", "history")
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize(
    "args",
    [("db", "upgrade"), ("config", "set", "port", "4000"), ("events", "import", "-")],
    ids=" ".join,
)
def test_writing_command_still_creates_a_missing_sqlite_file(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    path = tmp_path / "new" / "shop.db"
    ok(f"sqlite:///{path}", *args, stdin='{"type": "x"}\n')
    assert path.is_file()
    with Foundation(f"sqlite:///{path}", migrate="check") as fdn:
        assert fdn.events.last_position() >= 0  # migrated: readable without upgrading


def test_lines_without_an_id_are_pointed_out(db_url: str, tmp_path: Path) -> None:
    """Idempotence rests on ids: a line without one gets a new id on every import."""
    source = tmp_path / "no-ids.jsonl"
    source.write_text('{"type": "a"}\n{"type": "b"}\n')
    result = run(db_url, "events", "import", str(source))
    assert result.exit_code == 0, result.stderr
    assert "imported 2 events" in result.stdout
    assert "2 lines had no id; importing this file again would record them again" in (result.stderr)
