"""The ``foundation`` command, on SQLite and PostgreSQL (fixtures ``db_url``/``empty_db_url``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic.script import ScriptDirectory
from click.testing import CliRunner, Result

from foundation import Foundation
from foundation.cli import main
from foundation.database import migrate
from foundation.database.url import DatabaseURL

HEAD = migrate.head_revision()
UNREACHABLE = "postgresql+psycopg://u:secret@127.0.0.1:1/x"


def run(url: str | None, *args: str, env: Mapping[str, str | None] | None = None) -> Result:
    argv = ["-d", url, *args] if url is not None else list(args)
    result = CliRunner().invoke(main, argv, env=env)
    # Only clean exits: anything else is a bug in the command, not an outcome.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def ok(url: str, *args: str, env: Mapping[str, str | None] | None = None) -> Result:
    result = run(url, *args, env=env)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    assert result.stderr == ""
    return result


def fails(url: str | None, code: str, *args: str) -> Result:
    result = run(url, *args)
    assert result.exit_code == 1, (result.stdout, result.stderr)
    assert f"error [{code}]: " in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return result


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def stored(url: str, key: str) -> Any:
    """What a separate Foundation reads for ``key`` (the CLI really wrote it)."""
    with Foundation(url, migrate="check") as fdn:
        return fdn.config.get(key, "<unset>")


# -- db -------------------------------------------------------------------------------


def test_db_upgrade_on_empty_database_then_current_is_head(empty_db_url: str) -> None:
    assert ok(empty_db_url, "db", "current").stdout == f"none (not head; head is {HEAD})\n"

    result = ok(empty_db_url, "db", "upgrade")
    masked = DatabaseURL.parse(empty_db_url).masked
    assert result.stdout == f"upgraded {masked}: none -> {HEAD} (head)\n"
    assert migrate.current_revision(empty_db_url) == HEAD

    assert ok(empty_db_url, "db", "current").stdout == f"{HEAD} (head)\n"
    assert as_json(ok(empty_db_url, "db", "current", "--json")) == {
        "url": masked,
        "current": HEAD,
        "head": HEAD,
        "is_head": True,
    }
    again = ok(empty_db_url, "db", "upgrade")
    assert "nothing to do" in again.stdout
    assert migrate.current_revision(empty_db_url) == HEAD


def test_db_downgrade_base_then_current_is_none(db_url: str) -> None:
    assert migrate.current_revision(db_url) == HEAD
    result = ok(db_url, "db", "downgrade", "base", "--yes")
    assert f": {HEAD} -> none" in result.stdout
    assert migrate.current_revision(db_url) is None
    assert ok(db_url, "db", "current").stdout.startswith("none (not head")
    assert as_json(ok(db_url, "db", "current", "--json"))["current"] is None

    # Back up, then a relative step down (a leading "-" is a revision, not an option).
    ok(db_url, "db", "upgrade", HEAD)
    assert migrate.current_revision(db_url) == HEAD
    ok(db_url, "db", "downgrade", "-1", "--yes")
    script = ScriptDirectory.from_config(migrate.alembic_config(db_url))
    assert migrate.current_revision(db_url) == script.get_revision(HEAD).down_revision


def test_db_downgrade_asks_first(db_url: str) -> None:
    """It may drop the event log: without a yes (no terminal, or "n"), nothing happens."""
    for answer in (None, "n\n"):
        result = CliRunner().invoke(main, ["-d", db_url, "db", "downgrade", "base"], input=answer)
        assert result.exit_code == 1 and "0002's event log" in result.stderr
        assert migrate.current_revision(db_url) == HEAD
    kept = CliRunner().invoke(main, ["-d", db_url, "db", "downgrade", "0005"], input="n\n")
    assert kept.exit_code == 1 and "to 0005?" in kept.stderr
    assert "drops" not in kept.stderr  # no table of 0001-0004 is reverted down to 0005
    result = CliRunner().invoke(main, ["-d", db_url, "db", "downgrade", "-1"], input="y\n")
    assert result.exit_code == 0, result.stderr
    assert "drops" not in result.stderr  # -1 from head reverts the newest revision alone
    stepped = CliRunner().invoke(main, ["-d", db_url, "db", "downgrade", "0003"], input="n\n")
    assert "drops 0004's breakers and limits, with every row" in stepped.stderr
    assert "registry" not in stepped.stderr  # 0003 stays
    assert migrate.current_revision(db_url) != HEAD


@pytest.mark.parametrize(
    "args", [["upgrade", "--json"], ["upgrade", "-d", "sqlite:///x.db"], ["downgrade", "-d"]]
)
def test_misplaced_options_of_db_commands_say_so(db_url: str, args: list[str]) -> None:
    result = run(db_url, "db", *args)
    assert result.exit_code == 2
    assert "the database is chosen before the command" in result.stderr
    assert migrate.current_revision(db_url) == HEAD


def test_db_downgrade_needs_a_revision(db_url: str) -> None:
    result = run(db_url, "db", "downgrade")
    assert result.exit_code == 2
    assert "Missing argument 'REVISION'" in result.stderr
    assert migrate.current_revision(db_url) == HEAD


def test_db_downgrade_of_an_empty_database_does_nothing(empty_db_url: str) -> None:
    """Nothing to revert (review 12: alembic's "Relative revision -1 didn't produce 1
    migrations", and a mistyped SQLite path was created, with a version table)."""
    for target in ("-1", "base"):
        said = ok(empty_db_url, "db", "downgrade", target, "--yes").stdout
        assert said.endswith(": no Foundation schema (none); nothing to do\n")
    if empty_db_url.startswith("sqlite"):
        assert not Path(empty_db_url.removeprefix("sqlite:///")).exists()
    else:
        assert migrate.current_revision(empty_db_url) is None
        conninfo = DatabaseURL.parse(empty_db_url).conninfo
        with psycopg.connect(conninfo) as conn:
            query = "SELECT to_regclass('foundation_alembic_version') IS NOT NULL"
            assert conn.execute(query).fetchone() == (False,)


def test_db_downgrade_past_base_is_a_foundation_error(empty_db_url: str) -> None:
    ok(empty_db_url, "db", "upgrade", "0001")
    result = fails(empty_db_url, "validation_error", "db", "downgrade", "-2", "--yes")
    assert "alembic" in result.stderr
    assert migrate.current_revision(empty_db_url) == "0001"


def test_db_history_lists_revisions_marking_current_and_head(
    db_url: str, empty_db_url: str
) -> None:
    rows = as_json(ok(db_url, "db", "history", "--json"))
    assert [row["revision"] for row in rows][-1] == "0001"
    assert rows[0]["revision"] == HEAD and rows[0]["is_head"] and rows[0]["is_current"]
    assert rows[-1]["down_revision"] is None

    empty_rows = as_json(ok(empty_db_url, "db", "history", "--json"))
    assert [r["revision"] for r in empty_rows] == [r["revision"] for r in rows]
    assert not any(r["is_current"] for r in empty_rows)

    table = ok(db_url, "db", "history", env={"COLUMNS": "200"}).stdout
    head_line = next(line for line in table.splitlines() if f" {HEAD} " in line)
    assert "head, current" in head_line
    assert any(" 0001 " in line for line in table.splitlines())
    assert DatabaseURL.parse(db_url).masked in table


# -- config ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "flags", "value"),
    [
        ("4000", (), 4000),
        ("-2.5", (), -2.5),
        ("hello world", (), "hello world"),
        ('{"a": [1, 2], "b": null}', (), {"a": [1, 2], "b": None}),
        ("true", (), True),
        ("5", ("--string",), "5"),
        ("NaN", (), "NaN"),
    ],
)
def test_config_set_get_round_trip(
    db_url: str, raw: str, flags: tuple[str, ...], value: Any
) -> None:
    result = ok(db_url, "config", "set", "some.key", raw, *flags)
    assert result.stdout == f"set some.key = {json.dumps(value)}\n"
    assert stored(db_url, "some.key") == value

    got = ok(db_url, "config", "get", "some.key")
    assert json.loads(got.stdout) == value
    assert got.stdout == json.dumps(value) + "\n"


def test_config_get_missing_key_exits_1(db_url: str) -> None:
    result = fails(db_url, "not_found", "config", "get", "absent")
    assert "'absent'" in result.stderr
    assert result.stdout == ""


def test_config_invalid_key_is_a_config_error(db_url: str) -> None:
    fails(db_url, "config_error", "config", "set", "", "1")
    fails(db_url, "config_error", "config", "get", "")
    fails(db_url, "config_error", "config", "delete", "")
    with Foundation(db_url, migrate="check") as fdn:
        assert fdn.config.all() == {}
        assert fdn.config.history() == []


def test_config_list_shows_keys_with_source(db_url: str) -> None:
    ok(db_url, "config", "set", "svc.port", "4000")
    ok(db_url, "config", "set", "svc.name", "api")
    ok(db_url, "config", "set", "other", '{"x": 1}')
    env = {"FOUNDATION_CONFIG__FROM_ENV": "7"}

    rows = as_json(ok(db_url, "config", "list", "--json", env=env))
    by_key = {row["key"]: row for row in rows}
    assert [row["key"] for row in rows] == sorted(by_key)
    assert by_key["svc.port"]["value"] == 4000
    assert by_key["svc.port"]["source"].startswith("runtime (revision 1, by ")
    assert by_key["other"]["value"] == {"x": 1}
    assert by_key["from_env"] == {
        "key": "from_env",
        "value": 7,
        "source": "env:FOUNDATION_CONFIG__FROM_ENV",
    }

    prefixed = as_json(ok(db_url, "config", "list", "--prefix", "svc.", "--json"))
    assert [row["key"] for row in prefixed] == ["svc.name", "svc.port"]

    table = ok(db_url, "config", "list", env={"COLUMNS": "200", **env}).stdout
    port_line = next(line for line in table.splitlines() if "svc.port" in line)
    assert "4000" in port_line and "runtime (revision 1" in port_line
    env_line = next(line for line in table.splitlines() if "from_env" in line)
    assert "env:FOUNDATION_CONFIG__FROM_ENV" in env_line


def test_config_list_truncates_long_values(db_url: str) -> None:
    ok(db_url, "config", "set", "long", "x" * 500)
    table = ok(db_url, "config", "list", env={"COLUMNS": "200"}).stdout
    assert "…" in table and "x" * 100 not in table
    assert as_json(ok(db_url, "config", "list", "--json"))[0]["value"] == "x" * 500


def test_config_history_shows_set_and_delete(db_url: str) -> None:
    ok(db_url, "config", "set", "port", "4000")
    ok(db_url, "config", "set", "port", "5000")
    assert ok(db_url, "config", "delete", "port").stdout == "deleted port\n"
    assert stored(db_url, "port") == "<unset>"
    assert ok(db_url, "config", "delete", "port").stdout.startswith("port had no runtime value")
    ok(db_url, "config", "set", "other", '"x"')

    rows = as_json(ok(db_url, "config", "history", "port", "--json"))
    assert [(r["operation"], r["old_value"], r["new_value"]) for r in rows] == [
        ("delete", 5000, None),
        ("set", 4000, 5000),
        ("set", None, 4000),
    ]
    assert all(r["key"] == "port" and r["changed_by"] for r in rows)
    assert [r["id"] for r in rows] == sorted((r["id"] for r in rows), reverse=True)

    everything = as_json(ok(db_url, "config", "history", "--json"))
    assert [r["key"] for r in everything] == ["other", "port", "port", "port"]
    assert len(as_json(ok(db_url, "config", "history", "--limit", "2", "--json"))) == 2

    table = ok(db_url, "config", "history", "port", env={"COLUMNS": "250"}).stdout
    lines = [line for line in table.splitlines() if " port " in line]
    assert len(lines) == 3
    assert "delete" in lines[0] and "5000" in lines[0] and "null" in lines[0]
    assert "set" in lines[1] and "4000" in lines[1] and "5000" in lines[1]


def test_config_history_limit_out_of_range_is_a_usage_error(db_url: str) -> None:
    result = run(db_url, "config", "history", "--limit", "0")
    assert result.exit_code == 2
    assert "--limit" in result.stderr


def test_config_delete_reports_the_value_that_remains(db_url: str) -> None:
    env = {"FOUNDATION_CONFIG__LEVEL": '"info"'}
    ok(db_url, "config", "set", "level", "debug", env=env)
    result = ok(db_url, "config", "delete", "level", env=env)
    assert result.stdout == (
        'deleted level\nlevel is now "info" from env:FOUNDATION_CONFIG__LEVEL\n'
    )


def test_config_on_an_unmigrated_database_follows_the_default(
    backend: str, empty_db_url: str
) -> None:
    """SQLite upgrades itself; PostgreSQL says to run `foundation db upgrade`."""
    if backend == "sqlite":
        ok(empty_db_url, "config", "set", "k", "1")
        assert migrate.current_revision(empty_db_url) == HEAD
    else:
        result = fails(empty_db_url, "schema_outdated", "config", "set", "k", "1")
        assert "run `foundation db upgrade` first" in result.stderr
        assert "migrate=" not in result.stderr  # a library option: no use in a shell
        assert migrate.current_revision(empty_db_url) is None


# -- the URL, errors, entry points -----------------------------------------------------


def test_database_url_from_the_environment(db_url: str) -> None:
    env = {"FOUNDATION_DATABASE_URL": db_url}
    result = CliRunner().invoke(main, ["config", "set", "via.env", "1"], env=env)
    assert result.exit_code == 0, result.stderr
    assert stored(db_url, "via.env") == 1
    current = CliRunner().invoke(main, ["db", "current", "--json"], env=env)
    assert json.loads(current.stdout)["url"] == DatabaseURL.parse(db_url).masked


@pytest.mark.parametrize(
    "args",
    [("db", "current"), ("db", "upgrade"), ("db", "history"), ("config", "list")],
)
def test_unreachable_postgres_is_storage_unavailable_without_the_password(
    args: tuple[str, ...],
) -> None:
    result = fails(UNREACHABLE, "storage_unavailable", *args)
    assert "u:***@127.0.0.1:1/x" in result.stderr
    assert "secret" not in result.stdout + result.stderr


def test_unsupported_url_is_a_config_error_without_the_password() -> None:
    result = fails("mysql://u:secret@localhost/x", "config_error", "db", "current")
    assert "secret" not in result.stdout + result.stderr


def test_python_dash_m_foundation(db_url: str) -> None:
    env = {**os.environ, "FOUNDATION_DATABASE_URL": db_url}
    done = subprocess.run(
        [sys.executable, "-m", "foundation", "db", "current"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{HEAD} (head)\n"

    failed = subprocess.run(
        [sys.executable, "-m", "foundation", "-d", db_url, "config", "get", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert failed.returncode == 1
    assert failed.stderr.startswith("error [not_found]: ")
    assert "Traceback" not in failed.stderr
