"""Review 13, on SQLite and PostgreSQL, sync and async: the log's own config changes
import back whatever their size; JSON Python cannot hold (a number of over 4,300 digits,
written with plain SQL) and, on SQLite, a time in a form the log's rules refuse are
named errors of their row; ``subscribe()`` once an ``AsyncFoundation``'s close began."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner

from foundation import AsyncFoundation, Foundation
from foundation.cli import main
from foundation.database import migrate
from foundation.database.url import DatabaseURL
from foundation.errors import ConfigError, EventError, StorageError, StorageUnavailableError
from tests.conftest import fresh_postgres
from tests.helpers import wait_for

HUGE = "1" + "0" * 5000  # jsonb keeps 1e5000 as these digits; int() stops at 4,300


def _cli(url: str, *args: str) -> str:
    env = {"FOUNDATION_MAX_VALUE_BYTES": "10000"}
    result = CliRunner().invoke(main, ["-d", url, *args], env=env)
    assert result.exit_code == 0, (result.stdout, result.stderr)
    return result.stdout


def _plain(url: str, sql: str, params: tuple[Any, ...] = ()) -> None:
    """A statement through the driver, as an auditor's or a script's."""
    parsed = DatabaseURL.parse(url)
    if parsed.backend == "sqlite":
        with sqlite3.connect(str(parsed.sqlite_path)) as conn:
            conn.execute(sql.replace("%s", "?"), params)
        return
    with psycopg.connect(parsed.conninfo, autocommit=True) as conn:
        conn.execute(sql, params)


def _before_0020(url: str) -> None:
    """A database as it was before migration 0020, whose trigger now refuses the values
    these tests write (the rows they read are ones written before it)."""
    if DatabaseURL.parse(url).backend == "sqlite":
        _plain(url, "DROP TRIGGER foundation_config_value_readable_update")
    else:
        trigger = "foundation_config_value_readable"
        _plain(url, f"ALTER TABLE foundation_config DISABLE TRIGGER {trigger}")


def _now(url: str) -> str:
    if DatabaseURL.parse(url).backend == "sqlite":
        return "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
    return "now()"


# -- 1. the log's config changes, exported, import back ------------------------------


def test_a_config_change_of_large_values_imports_back(
    db_url: str, backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    with Foundation(db_url, max_value_bytes=10_000) as fdn:
        fdn.config.set("template", "x" * 9_000)  # each value under the limit
        fdn.config.set("template", "y" * 9_000)  # the change holds both: 18,000 bytes
        logged = fdn.events.get(type="foundation.config.changed")
    assert [len(e.data["new"]) for e in logged] == [9_000, 9_000]
    export = tmp_path / "log.jsonl"
    _cli(db_url, "events", "export", str(export))

    # The same log: nothing written (the same ids).
    out = _cli(db_url, "events", "import", str(export))
    assert "imported 0 events, skipped 2 already recorded" in out, out
    with Foundation(db_url) as fdn:
        assert len(fdn.events.get()) == 2

    # Another log of the same backend, with the same limit.
    if backend == "sqlite":
        target = f"sqlite:///{tmp_path / 'copy.db'}"
        migrate.upgrade(target)
        _import_and_compare(target, export, logged)
    else:
        server = request.getfixturevalue("postgres_server")
        with fresh_postgres(server, request.getfixturevalue("postgres_template")) as target:
            _import_and_compare(target, export, logged)


def _import_and_compare(target: str, export: Path, logged: list[Any]) -> None:
    out = _cli(target, "events", "import", str(export))
    assert "imported 2 events, skipped 0 already recorded" in out, out
    with Foundation(target, max_value_bytes=10_000) as fdn:
        copied = fdn.events.get(type="foundation.config.changed")
    assert [(e.id, e.data) for e in copied] == [(e.id, e.data) for e in logged]


def test_only_a_config_change_may_hold_two_values_worth(fdn: Foundation) -> None:
    limit = fdn.settings.max_value_bytes
    with pytest.raises(EventError, match="over the limit"):
        fdn.events.store({"type": "x", "data": "a" * limit})
    both = {"key": "k", "old": "a" * (limit - 10), "new": "b" * (limit - 10), "by": "n"}
    stored = fdn.events.store({"type": "foundation.config.changed", "data": both})
    assert fdn.events.get(type="foundation.config.changed")[0].data == both
    assert stored.data == both
    with pytest.raises(EventError, match="over the limit") as err:
        fdn.events.store({"type": "foundation.config.changed", "data": "c" * 3 * limit})
    assert err.value.context["field"] == "data"
    # metadata keeps the plain limit, whatever the type
    with pytest.raises(EventError, match="over the limit"):
        fdn.events.store(
            {"type": "foundation.config.changed", "data": 1, "metadata": {"m": "a" * limit}}
        )


# -- 2. JSON Python cannot hold, written with plain SQL --------------------------------


def _huge_event(url: str) -> str:
    event_id = str(uuid.uuid4())
    _plain(
        url,
        "INSERT INTO foundation_events (id, type, data, metadata, recorded_at) "
        f"VALUES (%s, 'huge', '{{\"n\": {HUGE}}}', '{{}}', {_now(url)})",
        (event_id,),
    )
    return event_id


def test_a_number_python_cannot_hold_names_its_event(db_url: str) -> None:
    with Foundation(db_url) as fdn:
        fdn.events.store({"type": "fine"})
    event_id = _huge_event(db_url)
    with Foundation(db_url, events_tail_size=0) as fdn:
        for read in (
            lambda: fdn.events.get(type="huge"),
            lambda: list(fdn.events.iter()),
            lambda: fdn.events.get(order="desc", limit=5),
        ):
            with pytest.raises(EventError, match="4300 digits") as err:
                read()
            assert err.value.context["position"] == 2
            assert err.value.context["id"] == event_id
        assert [e.type for e in fdn.events.get(type="fine")] == ["fine"]


async def test_async_a_number_python_cannot_hold_names_its_event(db_url: str) -> None:
    event_id = _huge_event(db_url)
    async with AsyncFoundation(db_url, events_tail_size=0) as fdn:
        with pytest.raises(EventError, match="4300 digits") as err:
            await fdn.events.get(type="huge")
        assert err.value.context["id"] == event_id


def test_a_number_python_cannot_hold_in_config_or_registry_is_named(db_url: str) -> None:
    with Foundation(db_url) as holder:  # holds the name meanwhile
        holder.config.set("limits", {"n": 1})
        holder.service_registry.register("svc", "http://a", {"v": 1})
        _before_0020(db_url)
        _plain(db_url, f"UPDATE foundation_config SET value = '{{\"n\": {HUGE}}}'")
        with pytest.raises(ConfigError, match="config key 'limits'") as config_err:
            Foundation(db_url)
        assert config_err.value.context == {"key": "limits", "table": "foundation_config"}
        _plain(db_url, "UPDATE foundation_config SET value = '{\"n\": 2}'")
        _plain(db_url, f"UPDATE foundation_registry SET metadata = '{{\"n\": {HUGE}}}'")
        with pytest.raises(StorageError, match="'svc' in foundation_registry") as reg_err:
            Foundation(db_url)
        assert reg_err.value.context == {"name": "svc", "table": "foundation_registry"}


def test_pg_the_feed_tells_a_row_no_reader_can_load_in_one_line(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    with Foundation(pg_url) as fdn:
        fdn.config.set("port", 1)
        _before_0020(pg_url)
        _plain(pg_url, f"UPDATE foundation_config SET value = '{HUGE}' WHERE key = 'port'")

        def told() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == "foundation.feed"]

        wait_for(lambda: len(told()) >= 2)  # the key's notification, and its event's
        assert all(r.exc_info is None for r in told()), [r.getMessage() for r in told()]
        assert any("config key 'port'" in r.getMessage() for r in told())
        assert fdn.config.get("port") == 1  # the cache keeps what it could read


# -- 3. SQLite: a time the log's rules refuse, from before migration 0014 --------------


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-30T12:00:00+05",
        "2026-11-30 12:00:00.123+0500",
        "2026-11-30T12:00:00,5",
        "2026-W01-1 10:00:00.123456",  # a week date, 26 characters as Foundation's own
    ],
)
def test_sqlite_a_time_in_a_form_the_rules_refuse_names_its_event(
    tmp_path: Path, text: str
) -> None:
    """Python reads these, but not as the log's SQL does (``get(after=...)`` by 0016's
    expression): the row is refused by readers, as docs/events.md says."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(url, "0013")  # no rule on recorded_at yet
    event_id = str(uuid.uuid4())
    _plain(
        url,
        "INSERT INTO foundation_events (id, type, data, metadata, recorded_at) "
        "VALUES (%s, 'a', '{}', '{}', %s)",
        (event_id, text),
    )
    migrate.upgrade(url)
    for tail in (0, 1000):
        with pytest.raises(EventError, match="is not a time of the form") as err:
            with Foundation(url, events_tail_size=tail) as fdn:
                fdn.events.get()
        assert err.value.context["id"] == event_id


# -- 4. AsyncFoundation: subscribe() once close() has begun ----------------------------


async def test_async_subscribe_right_after_close_begins_is_refused(db_url: str) -> None:
    fdn = await AsyncFoundation(db_url).open()
    closing = asyncio.create_task(fdn.close())
    await asyncio.sleep(0)  # close() has begun: its steps run in tasks of their own
    with pytest.raises(StorageUnavailableError, match="is closed"):
        await fdn.events.subscribe("during", lambda e: None)
    await closing


# -- 5. SQLite: REPLACE INTO foundation_config records the value it replaced -----------


def _history(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT h.operation, h.old_value, h.new_value, json_extract(e.data, '$.old')"
            " FROM foundation_config_history AS h JOIN foundation_events AS e"
            " ON e.type = 'foundation.config.changed' AND json_extract(e.data, '$.revision')"
            " = h.revision AND json_extract(e.data, '$.key') = h.key ORDER BY h.id"
        ).fetchall()


def test_sqlite_replace_into_config_records_the_old_value(tmp_path: Path) -> None:
    path = tmp_path / "replace.db"
    url = f"sqlite:///{path}"
    with Foundation(url, migrate="upgrade") as fdn:
        fdn.config.set("port", 4000)
        replace = (
            "{} INTO foundation_config (key, value, deleted, revision, updated_at, updated_by)"
            " VALUES ('port', %s, 0, %s, '2026-11-30 12:00:00.000000', 'ops')"
        )
        _plain(url, replace.format("REPLACE"), ("5000", 2))
        _plain(url, replace.format("INSERT OR REPLACE"), ("6000", 3))
        _plain(url, "DELETE FROM foundation_config WHERE key = 'port'")
        _plain(url, replace.format("REPLACE"), ("7000", 5))  # after a delete: nothing held
        fdn.config.set("port", 8000)
    assert _history(path) == [
        ("set", None, "4000", None),
        ("set", "4000", "5000", 4000),
        ("set", "5000", "6000", 5000),
        ("delete", "6000", None, 6000),
        ("set", None, "7000", None),
        ("set", "7000", "8000", 7000),
    ]


def test_sqlite_0018_downgrade_restores_0001s_trigger(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'down.db'}"

    def trigger() -> str:
        with sqlite3.connect(tmp_path / "down.db") as conn:
            row = conn.execute(
                "SELECT sql FROM sqlite_master WHERE name = 'foundation_config_audit_insert'"
            ).fetchone()
        return str(row[0])

    migrate.upgrade(url, "0017")
    before = trigger()
    migrate.upgrade(url)
    assert "ORDER BY h.id DESC LIMIT 1" in trigger()
    migrate.downgrade(url, "0017")
    assert trigger() == before


def test_a_config_key_is_not_renamed_with_plain_sql(db_url: str) -> None:
    """A rename left the old key's history open (a new key of that name read its last value
    as its old one): refused, naming the way to do it."""
    with Foundation(db_url) as fdn:
        fdn.config.set("a", 5)
    driver_error = (sqlite3.Error, psycopg.Error)
    with pytest.raises(driver_error, match="a key is not renamed; delete it and set the new"):
        _plain(db_url, "UPDATE foundation_config SET key = 'z' WHERE key = 'a'")
    _plain(db_url, "UPDATE foundation_config SET key = 'a', value = '6' WHERE key = 'a'")
    with Foundation(db_url) as fdn:
        assert fdn.config.get("a") == 6
        assert (5, 6) in [(h.old_value, h.new_value) for h in fdn.config.history("a")]


def test_0018_downgrade_allows_renames_again(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    migrate.downgrade(empty_db_url, "0017")
    with Foundation(empty_db_url, migrate="skip") as fdn:
        fdn.config.set("a", 5)
    _plain(empty_db_url, "UPDATE foundation_config SET key = 'z' WHERE key = 'a'")
    migrate.upgrade(empty_db_url)


# -- 6. config: a file's or the environment's value is held to set()'s rules ----------


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"ratio": 1e400}', "NaN and Infinity are not JSON"),  # reads as inf
        ('{"name": "\\ud800"}', "lone surrogate"),  # no UTF-8 text: the CLI crashed on it
    ],
)
def test_a_config_file_value_set_would_refuse_is_a_config_error(
    db_url: str, tmp_path: Path, text: str, reason: str
) -> None:
    path = tmp_path / "app.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=reason) as err:
        Foundation(db_url, config_file=str(path))
    assert err.value.context["file"] == str(path)
    assert err.value.context["key"] in ("ratio", "name")


def test_an_environment_value_set_would_refuse_is_a_config_error(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOUNDATION_CONFIG__LIMIT", "1e999")  # JSON, but inf: its text
    monkeypatch.setenv("FOUNDATION_CONFIG__RATIO", "1e99")
    with Foundation(db_url) as fdn:
        assert (fdn.config.get("limit"), fdn.config.get("ratio")) == ("1e999", 1e99)
    # bytes that are not UTF-8 (Python gives them as lone surrogates)
    monkeypatch.setattr(os, "environ", {**os.environ, "FOUNDATION_CONFIG__NAME": "caf\udce9"})
    with pytest.raises(ConfigError, match=r"FOUNDATION_CONFIG__NAME.*lone surrogate") as err:
        Foundation(db_url)
    assert err.value.context["variable"] == "FOUNDATION_CONFIG__NAME"
