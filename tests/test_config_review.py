"""Config defects found by the new-user review: each test is one of them, on both databases."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pydantic
import pytest

from foundation import AsyncFoundation, Foundation
from foundation.database.url import DatabaseURL
from foundation.errors import ConfigError
from tests.helpers import async_wait_for, wait_for


def plain_sql(url: str, statement: str) -> None:
    """Run ``statement`` as an operator would in psql or sqlite3: no Foundation involved."""
    parsed = DatabaseURL.parse(url)
    if parsed.backend == "sqlite":
        with sqlite3.connect(parsed.sqlite_path) as conn:
            conn.execute(statement)
        return
    with psycopg.connect(parsed.conninfo, autocommit=True) as pg:
        pg.execute(statement)  # type: ignore[arg-type]


def sql_actor(url: str) -> str:
    return "sql" if url.startswith("sqlite") else "sql:postgres"


# -- 1. a change made with plain SQL ----------------------------------------------------


def test_plain_sql_update_is_a_new_revision_by_its_real_author_and_reaches_nodes(
    db_url: str,
) -> None:
    with (
        Foundation(db_url, migrate="check", poll_interval_ms=5) as old,
        Foundation(db_url, migrate="check", poll_interval_ms=5) as other,
    ):
        old.config.set("mport", 1)
        wait_for(lambda: other.config.get("mport") == 1)
        other.feed.wait_connected(10)
        seen: list[Any] = []
        other.config.watch("mport", seen.append)
        plain_sql(db_url, "UPDATE foundation_config SET value = '2' WHERE key = 'mport'")
        wait_for(lambda: other.config.get("mport") == 2)  # the change feed carried it
        wait_for(lambda: old.config.get("mport") == 2)
        assert [(c.old, c.new, c.source) for c in seen] == [(1, 2, "remote")]
        history = old.config.history("mport")
        assert [(h.revision, h.old_value, h.new_value, h.changed_by) for h in history] == [
            (2, 1, 2, sql_actor(db_url)),
            (1, None, 1, old.settings.node_id),
        ]
        assert history[0].correlation_id is None
        assert old.config.explain("mport").source == f"runtime (revision 2, by {sql_actor(db_url)})"
        events = old.events.get({"type": "foundation.config.changed"})
        trail = [(e.data["revision"], e.data["by"], e.data["old"], e.data["new"]) for e in events]
        assert trail == [
            (1, old.settings.node_id, None, 1),
            (2, sql_actor(db_url), 1, 2),
        ]
        # Foundation's own next write follows on from the stamped revision.
        old.config.set("mport", 3)
        assert old.config.history("mport", limit=1)[0].revision == 3


def test_plain_sql_update_with_recursive_triggers_writes_history_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    with Foundation(url) as fdn:
        fdn.config.set("k", "a")
        with sqlite3.connect(tmp_path / "r.db") as conn:
            conn.execute("PRAGMA recursive_triggers = ON")
            conn.execute("""UPDATE foundation_config SET value = '"b"' WHERE key = 'k'""")
        fdn.config.reload()
        assert fdn.config.get("k") == "b"
        assert [(h.revision, h.new_value) for h in fdn.config.history("k")] == [
            (2, "b"),
            (1, "a"),
        ]
        # Another connection's event: this node's tail cache learns it at its next poll.
        wait_for(lambda: len(fdn.events.get({"type": "foundation.config.changed"})) == 2)


def test_reload_takes_a_hand_edit_even_at_the_same_revision(db_url: str) -> None:
    """A database without revision 0010's trigger: reload() still re-reads the table."""
    with Foundation(db_url, migrate="check") as fdn:
        fdn.config.set("mport", 1)
        trigger = "foundation_config_stamp_sql"
        if db_url.startswith("sqlite"):
            plain_sql(db_url, f"DROP TRIGGER {trigger}")
        else:
            plain_sql(db_url, f"DROP TRIGGER {trigger} ON foundation_config")
        plain_sql(db_url, "UPDATE foundation_config SET value = '2' WHERE key = 'mport'")
        fdn.config.reload()
        assert fdn.config.get("mport") == 2


async def test_plain_sql_update_reaches_an_async_node(afdn: AsyncFoundation, db_url: str) -> None:
    await afdn.config.set("mode", "a")
    plain_sql(db_url, """UPDATE foundation_config SET value = '"b"' WHERE key = 'mode'""")
    await async_wait_for(lambda: afdn.config.get("mode") == "b")
    assert (await afdn.config.history("mode", limit=1))[0].changed_by == sql_actor(db_url)


# -- 2. a typed value handed out by get() cannot be changed ------------------------------


class DB(pydantic.BaseModel):
    host: str
    tags: list[str] = []


class Outer(pydantic.BaseModel):
    db: DB
    extra: dict[str, int] = {}


def test_a_model_value_is_a_read_only_copy(fdn: Foundation) -> None:
    fdn.config.register("dbm2", DB)
    fdn.config.set("dbm2", {"host": "h", "tags": ["a"]})
    value = fdn.config.get("dbm2")
    assert isinstance(value, DB) and value == DB(host="h", tags=["a"])
    assert DB(host="h", tags=["a"]) == value
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        value.host = "MUTATED"
    with pytest.raises(TypeError, match="read-only"):
        value.tags.append("zz")
    assert fdn.config.get("dbm2").host == "h"
    assert fdn.config.get("dbm2").tags == ["a"]
    explained = fdn.config.explain("dbm2")
    assert explained.value == DB(host="h", tags=["a"])
    for layer in explained.layers.values():
        with pytest.raises((pydantic.ValidationError, TypeError)):
            layer.host = "x"
    private = DB.model_validate(value.model_dump())
    private.host = "mine"  # a private copy is an ordinary model
    assert fdn.config.get("dbm2").host == "h"


def test_nested_models_and_defaults_are_read_only(fdn: Foundation) -> None:
    fdn.config.register("outer", Outer, default={"db": {"host": "d"}, "extra": {"a": 1}})
    value = fdn.config.get("outer")
    with pytest.raises(pydantic.ValidationError):
        value.db.host = "x"
    with pytest.raises(TypeError):
        value.extra["b"] = 2
    assert fdn.config.get("outer") == Outer(db=DB(host="d"), extra={"a": 1})


# -- 3. env values for str keys ----------------------------------------------------------


def test_env_text_for_a_str_key_is_kept_as_written(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOUNDATION_CONFIG__VERSION", "1.10")
    monkeypatch.setenv("FOUNDATION_CONFIG__WORKERS", "8")
    monkeypatch.setenv("FOUNDATION_CONFIG__PORTS", "[1, 2]")
    with Foundation(db_url, migrate="check") as fdn:
        assert fdn.config.get("version") == 1.1  # untyped: read as JSON
        fdn.config.register("version", str)
        assert fdn.config.get("version") == "1.10"
        fdn.config.register("workers", int)
        assert fdn.config.get("workers") == 8
        fdn.config.register("ports", list[int])
        assert fdn.config.get("ports") == [1, 2]
        fdn.config.reload()
        assert fdn.config.get("version") == "1.10"


# -- 5. a failed register changes nothing ------------------------------------------------


def test_failed_register_leaves_no_default(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOUNDATION_CONFIG__WORKERS", "abc")
    with Foundation(db_url, migrate="check") as fdn:
        with pytest.raises(ConfigError, match="FOUNDATION_CONFIG__WORKERS"):
            fdn.config.register("workers", int, default=4)
        assert fdn.config.explain("workers").layers == {"env:FOUNDATION_CONFIG__WORKERS": "abc"}
        assert fdn.config.explain("workers").typed is None
        fdn.config.register("limit", int, default=1)
        with pytest.raises(ConfigError):
            fdn.config.register("limit", int, default="nope")
        assert fdn.config.get("limit") == 1


# -- 6. env reaches into the file's tables -----------------------------------------------


def test_env_overrides_an_entry_of_a_file_table(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "app.toml"
    path.write_text('[db]\nhost = "filehost"\nport = 5432\n')
    monkeypatch.setenv("FOUNDATION_CONFIG__DB__HOST", "envhost")
    monkeypatch.setenv("FOUNDATION_CONFIG__CACHE__TTL", "30")
    with Foundation(db_url, migrate="check", config_file=path) as fdn:
        assert fdn.config.get("db") == {"host": "envhost", "port": 5432}
        assert fdn.config.get("db.host") is None  # one key, not two
        assert fdn.config.get("cache") == {"ttl": 30}
        explained = fdn.config.explain("db")
        assert explained.source == "env:FOUNDATION_CONFIG__DB__HOST"
        assert explained.layers[f"file:{path}"] == {"host": "filehost", "port": 5432}
        fdn.config.register("db", DB)  # a typed key takes the text: "envhost"
        assert fdn.config.get("db") == DB(host="envhost")


# -- 13. small ones ------------------------------------------------------------------------


def test_empty_watch_pattern_and_surrogate_keys_are_refused(fdn: Foundation) -> None:
    with pytest.raises(ConfigError, match="empty"):
        fdn.config.watch("", print)
    with pytest.raises(ConfigError, match="UTF-8"):
        fdn.config.set("bad\ud800", 1)
    with pytest.raises(ConfigError, match="control"):
        fdn.config.set("bad\x01", 1)


def test_empty_config_file_variable_means_no_file(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOUNDATION_CONFIG_FILE", "")
    with Foundation(db_url, migrate="check") as fdn:
        assert fdn.settings.config_file is None
        fdn.config.set("k", json.loads("1"))
        assert fdn.config.get("k") == 1
