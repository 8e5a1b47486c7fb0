"""``foundation events export | import`` and ``registry unregister`` after review 11: large
events import back, what Ctrl-C leaves committed, progress bars only on a terminal and
complete at the end, counts in the singular (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from foundation import Foundation
from foundation.cli import main
from foundation.events import _base
from foundation.events._service import Events

BATCH = 500  # the import's lines per commit at most (its help says so)


@pytest.fixture(autouse=True)
def _no_forced_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """stderr is not a terminal here, whatever the environment running the tests says."""
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


def run(url: str, *args: str, env: dict[str, str] | None = None) -> Result:
    result = CliRunner().invoke(main, ["-d", url, *args], env=env)
    # Only clean exits: anything else is a bug in the command, not an outcome.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def ok(url: str, *args: str, env: dict[str, str] | None = None) -> Result:
    result = run(url, *args, env=env)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result


def uuid(n: int) -> str:
    return f"00000000-0000-0000-0000-{n:012d}"


def write_lines(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def logged(url: str) -> list[Any]:
    with Foundation(url, migrate="check") as fdn:
        return [e.data for e in fdn.events.iter()]


def _no_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


# -- large events ---------------------------------------------------------------------


def test_events_over_32_mib_in_all_import_back(db_url: str, tmp_path: Path) -> None:
    # 35 events of 1,000,000 bytes (each under max_value_bytes, 1 MiB): over the 32 MiB of
    # JSON one store_many takes, which 500 lines in one call asked for.
    rows = [{"id": uuid(i), "type": "blob", "data": f"{i:06d}" + "x" * 999_994} for i in range(35)]
    file = write_lines(tmp_path / "big.jsonl", rows)
    assert file.stat().st_size > _base.MAX_BATCH_JSON
    assert ok(db_url, "events", "import", str(file)).stdout == (
        "imported 35 events, skipped 0 already recorded\n"
    )
    assert [data[:6] for data in logged(db_url)] == [f"{i:06d}" for i in range(35)]
    assert ok(db_url, "events", "import", str(file)).stdout == (
        "imported 0 events, skipped 35 already recorded\n"
    )


def test_large_lines_make_smaller_batches_and_an_error_names_what_they_committed(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The byte budget scaled down: lines of about 10 kB, at most 50 kB of lines a batch.
    monkeypatch.setattr("foundation.cli_events.IMPORT_BATCH_BYTES", 50_000, raising=False)
    rows: list[dict[str, Any]] = [
        {"id": uuid(i), "type": "x", "data": {"n": i, "pad": "p" * (9_000 + 97 * i)}}
        for i in range(1, 23)
    ]
    rows.append({"id": uuid(23), "type": "x", "data": {"n": 23}, "dta": 1})  # line 23: bad
    file = write_lines(tmp_path / "f.jsonl", rows)
    # The lines of the batches committed before line 23, as cut by the budget.
    committed, size = 0, 0
    for number, line in enumerate(file.read_bytes().splitlines(keepends=True)[:22], start=1):
        if size + len(line) > 50_000:
            committed, size = number - 1, 0
        size += len(line)
    assert 10 < committed < 22  # several batches committed, some lines pending
    result = run(db_url, "events", "import", str(file))
    assert result.exit_code == 1, result.stdout
    assert result.stderr.startswith("error [event_error]: line 23: unknown field 'dta'")
    assert (
        f"lines 1-{committed} before it were imported and stay committed "
        f"({committed} new events, 0 already recorded)"
    ) in result.stderr
    assert [data["n"] for data in logged(db_url)] == list(range(1, committed + 1))


def test_a_batch_whose_json_outgrows_its_lines_is_split(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # store_many's limit scaled down to 40 kB: 1e5 is stored as 100000.0, so lines of
    # 4 kB carry 9 kB of JSON, and a batch under the line budget is refused all the same.
    monkeypatch.setattr(_base, "MAX_BATCH_JSON", 40_000)
    monkeypatch.setattr("foundation.cli_events.IMPORT_BATCH_BYTES", 30_000, raising=False)
    rows = [
        {"id": uuid(i), "type": "floats", "data": {"n": i, "values": [1e5] * 1_000}}
        for i in range(20)
    ]
    file = tmp_path / "floats.jsonl"
    file.write_text("".join(json.dumps(r).replace("100000.0", "1e5") + "\n" for r in rows))
    assert ok(db_url, "events", "import", str(file)).stdout == (
        "imported 20 events, skipped 0 already recorded\n"
    )
    assert [data["n"] for data in logged(db_url)] == list(range(20))


# -- Ctrl-C ---------------------------------------------------------------------------


def _rows(n: int, *, ids: bool = True) -> list[dict[str, Any]]:
    return [{"type": "x", "data": i} | ({"id": uuid(i)} if ids else {}) for i in range(1, n + 1)]


@pytest.fixture
def _default_sigint() -> Iterator[None]:
    # The import takes Ctrl-C over from Python's own handler only (and gives it back).
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    yield
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize("ids", [True, False])
def test_ctrl_c_says_what_stays_committed(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ids: bool
) -> None:
    file = write_lines(tmp_path / "f.jsonl", _rows(BATCH + 300, ids=ids))
    import foundation.cli_events as cli_events

    read = cli_events._import_event

    def ctrl_c_at_line(line: str, number: int) -> dict[str, Any]:
        if number == BATCH + 200:
            raise KeyboardInterrupt
        return read(line, number)

    monkeypatch.setattr(cli_events, "_import_event", ctrl_c_at_line)
    result = run(db_url, "events", "import", str(file))
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"interrupted: lines 1-{BATCH} were imported and stay committed "
        f"({BATCH} new events, 0 already recorded); "
    ), result.stderr
    if ids:
        assert "run the same import again: it skips the events already recorded" in result.stderr
    else:
        assert f"{BATCH} of them have no id and would be recorded twice" in result.stderr
        assert f"tail -n +{BATCH + 1} {file} | foundation events import -" in result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert logged(db_url) == list(range(1, BATCH + 1))


def test_ctrl_c_before_anything_is_committed_says_so(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write_lines(tmp_path / "f.jsonl", _rows(10))
    import foundation.cli_events as cli_events

    def ctrl_c(line: str, number: int) -> dict[str, Any]:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_events, "_import_event", ctrl_c)
    result = run(db_url, "events", "import", str(file))
    assert result.exit_code == 1
    assert result.stderr.startswith("interrupted: nothing was imported\n"), result.stderr
    assert logged(db_url) == []


def _ctrl_c_in_store_many(monkeypatch: pytest.MonkeyPatch, call: int, presses: int) -> None:
    """Ctrl-C pressed ``presses`` times during the ``call``-th store_many: once just after
    it has committed, twice before it commits (the second press stops at once)."""
    store_many = Events.store_many
    calls = [0]

    def pressing(self: Events, events: list[Any]) -> Any:
        calls[0] += 1
        if calls[0] == call and presses == 2:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        records = store_many(self, events)
        if calls[0] == call and presses == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return records

    monkeypatch.setattr(Events, "store_many", pressing)


@pytest.mark.usefixtures("_default_sigint")
def test_ctrl_c_while_a_batch_commits_waits_for_it_and_counts_it(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write_lines(tmp_path / "f.jsonl", _rows(3 * BATCH, ids=False))
    _ctrl_c_in_store_many(monkeypatch, call=2, presses=1)
    result = run(db_url, "events", "import", str(file))
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"interrupted: lines 1-{2 * BATCH} were imported and stay committed "
        f"({2 * BATCH} new events, 0 already recorded); "
        f"{2 * BATCH} of them have no id and would be recorded twice if imported again: "
        f"import only the lines after line {2 * BATCH} "
    ), result.stderr
    assert logged(db_url) == list(range(1, 2 * BATCH + 1))


@pytest.mark.usefixtures("_default_sigint")
def test_second_ctrl_c_stops_at_once_naming_the_lines_in_doubt(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    file = write_lines(tmp_path / "f.jsonl", _rows(3 * BATCH))
    _ctrl_c_in_store_many(monkeypatch, call=2, presses=2)
    result = run(db_url, "events", "import", str(file))
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"interrupted: lines 1-{BATCH} were imported and stay committed "
        f"({BATCH} new events, 0 already recorded); "
        f"lines {BATCH + 1}-{2 * BATCH} were being committed and may be in the log too"
    ), result.stderr
    assert logged(db_url) == list(range(1, BATCH + 1))  # stopped before it committed


# -- export's summary and the progress bars -------------------------------------------


def _fill(url: str, n: int) -> None:
    with Foundation(url, migrate="check") as fdn:
        for start in range(0, n, 500):
            fdn.events.store_many(
                [
                    {"type": "rare" if i % 7 == 0 else "common", "data": {"i": i, "p": "q" * 150}}
                    for i in range(start, min(n, start + 500))
                ]
            )


def test_export_of_one_event_says_event(db_url: str, tmp_path: Path) -> None:
    with Foundation(db_url, migrate="check") as fdn:
        fdn.events.store({"type": "only", "data": 1})
    out = tmp_path / "one.jsonl"
    assert ok(db_url, "events", "export", str(out)).stdout == f"exported 1 event to {out}\n"
    result = ok(db_url, "events", "export", "-")
    assert result.stderr == "exported 1 event to stdout\n"


def test_no_progress_bar_nor_blank_line_when_stderr_is_not_a_terminal(
    db_url: str, tmp_path: Path
) -> None:
    _fill(db_url, 1_500)  # past the size that shows a bar on a terminal
    out = tmp_path / "log.jsonl"
    result = ok(db_url, "events", "export", str(out))
    assert result.stdout == f"exported 1500 events to {out}\n"
    assert result.stderr == ""
    assert out.stat().st_size > 200_000
    result = ok(db_url, "events", "import", str(out))
    assert result.stdout == "imported 0 events, skipped 1500 already recorded\n"
    assert result.stderr == ""


def test_progress_bars_on_a_terminal_end_complete_and_count_bytes_as_bytes(
    db_url: str, tmp_path: Path
) -> None:
    _fill(db_url, 1_500)
    with Foundation(db_url, migrate="check") as fdn:
        fdn.events.store({"type": "last", "data": 0})  # the log ends past every rare event
    terminal = {"TTY_COMPATIBLE": "1", "COLUMNS": "120"}
    out = tmp_path / "rare.jsonl"
    result = ok(db_url, "events", "export", "--type", "rare", str(out), env=terminal)
    assert result.stdout == f"exported 215 events to {out}\n"
    frames = re.findall(r"exporting .*? (\d+)/(\d+)", _no_ansi(result.stderr))
    assert frames, result.stderr
    assert frames[-1] == ("1501", "1501")  # the whole log read through, not 1499/1501
    result = ok(db_url, "events", "import", str(out), env=terminal)
    assert result.stdout == "imported 0 events, skipped 215 already recorded\n"
    assert result.stderr == ""  # 215 lines, 40 kB: no bar for so little
    whole = tmp_path / "all.jsonl"
    ok(db_url, "events", "export", str(whole))
    result = ok(db_url, "events", "import", str(whole), env=terminal)
    frames = re.findall(r"importing .*? ([\d.]+)/([\d.]+) (kB|MB)", _no_ansi(result.stderr))
    assert frames, result.stderr
    size = whole.stat().st_size
    assert frames[-1][1:] == (f"{size / 1000:.1f}", "kB")
    assert f"/{size}" not in result.stderr  # not a raw count of bytes


# -- registry unregister --force --------------------------------------------------------


def test_registry_unregister_accepts_force_as_a_no_op(db_url: str) -> None:
    help_text = ok(db_url, "registry", "unregister", "--help").stdout
    assert "--force" in help_text
    with Foundation(db_url, migrate="skip") as node:  # holds the name while it runs
        node.service_registry.register("auth_service", "http://10.0.0.5:8000")
        result = ok(db_url, "registry", "unregister", "--force", "auth_service")
        assert result.stdout == "unregistered auth_service\n"
        assert run(db_url, "registry", "show", "auth_service").exit_code == 1
