"""Config on both databases, sync face: layers, typing, watchers, history, bad input."""

from __future__ import annotations

import enum
import json
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pydantic import BaseModel

from foundation import ConfigError, Foundation, correlation
from foundation.database.url import DatabaseURL
from tests.helpers import wait_for


class Color(enum.Enum):
    RED = "red"


class Pool(BaseModel):
    size: int
    host: str = "localhost"


def raw_rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    parsed = DatabaseURL.parse(url)
    if parsed.backend == "sqlite":
        with sqlite3.connect(parsed.sqlite_path) as conn:
            return conn.execute(sql).fetchall()
    with psycopg.connect(parsed.conninfo) as conn:
        return conn.execute(sql).fetchall()


def test_set_get_delete_round_trip(fdn: Foundation) -> None:
    assert fdn.config.get("port", 8080) == 8080
    fdn.config.set("port", 4000)
    fdn.config.set("features", {"beta": True, "ratio": 0.5, "tags": ["a", "b"]})
    assert fdn.config.get("port") == 4000
    assert fdn.config.get("features") == {"beta": True, "ratio": 0.5, "tags": ["a", "b"]}
    assert fdn.config.all() == {
        "port": 4000,
        "features": {"beta": True, "ratio": 0.5, "tags": ["a", "b"]},
    }
    assert fdn.config.delete("port") is True
    assert fdn.config.delete("port") is False
    assert fdn.config.get("port", "gone") == "gone"


def test_values_read_back_as_the_database_returns_them(fdn: Foundation, db_url: str) -> None:
    fdn.config.set("t", (1, 2))
    fdn.config.set("big", 12345678901234567890123)
    fdn.config.set("text", "4000")
    assert fdn.config.get("t") == [1, 2]
    with Foundation(db_url, migrate="skip") as other:
        assert other.config.get("t") == [1, 2]
        assert other.config.get("big") == 12345678901234567890123
        assert other.config.get("text") == "4000"


def test_returned_containers_are_read_only_and_copy_to_mutable(fdn: Foundation) -> None:
    import copy

    fdn.config.set("d", {"a": [1]})
    value = fdn.config.get("d")
    assert isinstance(value, dict) and json.dumps(value) == '{"a": [1]}'
    with pytest.raises(TypeError, match="read-only"):
        value["a"].append(2)
    with pytest.raises(TypeError, match="read-only"):
        value["b"] = 1
    mine = copy.deepcopy(value)
    mine["a"].append(2)
    assert fdn.config.get("d") == {"a": [1]}
    everything = fdn.config.all()
    everything["new"] = 1  # all() is a fresh dict of the (read-only) values
    assert "new" not in fdn.config.all()


def test_enum_keys_are_stored_as_text(fdn: Foundation) -> None:
    fdn.config.set(Color.RED, 1)
    assert fdn.config.get("red") == 1
    assert fdn.config.get(Color.RED) == 1


@pytest.mark.parametrize(
    ("key", "fragment"),
    [
        ("", "empty"),
        ("  ", "empty"),
        (42, "string"),
        ("x" * 2000, "at most"),
        ("a\x00b", "control"),
    ],
)
def test_bad_keys_are_refused_and_nothing_is_written(
    fdn: Foundation, db_url: str, key: Any, fragment: str
) -> None:
    with pytest.raises(ConfigError) as info:
        fdn.config.set(key, 1)
    assert info.value.code == "config_error"
    assert fragment in info.value.message
    assert raw_rows(db_url, "SELECT count(*) FROM foundation_config") == [(0,)]


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (object(), "not JSON"),
        (float("nan"), "NaN"),
        ({"a": float("inf")}, "NaN"),
        ({1, 2}, "not JSON"),
        ("nul\x00here", "NUL"),
        ("\ud800", "surrogate"),
        (b"bytes", "not JSON"),
    ],
)
def test_values_that_are_not_json_are_refused(
    fdn: Foundation, db_url: str, value: Any, fragment: str
) -> None:
    fdn.config.set("k", "before")
    with pytest.raises(ConfigError) as info:
        fdn.config.set("k", value)
    assert fragment in info.value.message
    assert fdn.config.get("k") == "before"
    assert raw_rows(db_url, "SELECT count(*) FROM foundation_config_history") == [(1,)]


def test_values_over_the_size_limit_are_refused(db_url: str) -> None:
    with Foundation(db_url, migrate="skip", max_value_bytes=100) as fdn:
        fdn.config.set("ok", "x" * 50)
        with pytest.raises(ConfigError) as info:
            fdn.config.set("big", "x" * 200)
        assert info.value.context["max_bytes"] == 100
        assert fdn.config.get("big") is None


def test_history_records_every_change_with_who_and_correlation(
    fdn: Foundation, db_url: str
) -> None:
    with correlation("req-42"):
        fdn.config.set("port", 1)
    fdn.config.set("port", 2)
    fdn.config.delete("port")
    history = fdn.config.history("port")
    assert [(h.operation, h.old_value, h.new_value, h.revision) for h in history] == [
        ("delete", 2, None, 3),
        ("set", 1, 2, 2),
        ("set", None, 1, 1),
    ]
    assert history[-1].correlation_id == "req-42"
    assert {h.changed_by for h in history} == {fdn.settings.node_id}
    # Auditors read the same with plain SQL.
    rows = raw_rows(
        db_url, "SELECT operation, changed_by FROM foundation_config_history ORDER BY id"
    )
    assert rows == [("set", fdn.settings.node_id)] * 2 + [("delete", fdn.settings.node_id)]


def test_history_is_append_only_in_the_database(fdn: Foundation, db_url: str) -> None:
    fdn.config.set("port", 1)
    parsed = DatabaseURL.parse(db_url)
    if parsed.backend == "sqlite":
        conn = sqlite3.connect(parsed.sqlite_path)
        # REPLACE deletes the row it conflicts with without firing DELETE triggers.
        rewrite = (
            "(id, key, operation, old_value, new_value, revision, changed_at, changed_by) "
            "SELECT id, key, operation, old_value, '9999', revision, changed_at, 'alice' "
            "FROM foundation_config_history"
        )
        for sql in (
            "UPDATE foundation_config_history SET key = 'x'",
            "DELETE FROM foundation_config_history",
            f"REPLACE INTO foundation_config_history {rewrite}",
            f"INSERT OR REPLACE INTO foundation_config_history {rewrite}",
        ):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                conn.execute(sql)
        conn.close()
    else:
        with psycopg.connect(parsed.conninfo, autocommit=True) as conn:
            for sql in (
                "UPDATE foundation_config_history SET key = 'x'",
                "DELETE FROM foundation_config_history",
                "TRUNCATE foundation_config_history",
            ):
                with pytest.raises(psycopg.Error, match="append-only"):
                    conn.execute(sql)
    [change] = fdn.config.history()
    assert (change.new_value, change.changed_by) == (1, fdn.settings.node_id)


def test_history_limit_is_validated(fdn: Foundation) -> None:
    with pytest.raises(ConfigError):
        fdn.config.history(limit=0)
    with pytest.raises(ConfigError):
        fdn.config.history(limit="10")  # type: ignore[arg-type]


def test_precedence_default_file_env_runtime(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = tmp_path / "app.toml"
    config_file.write_text('port = 1000\nname = "from-file"\nonly_file = true\n[db]\nhost = "h"\n')
    monkeypatch.setenv("FOUNDATION_CONFIG__PORT", "2000")
    monkeypatch.setenv("FOUNDATION_CONFIG__NAME", "from-env")
    with Foundation(db_url, migrate="skip", config_file=config_file) as fdn:
        fdn.config.register("timeout", int, default=30)
        assert fdn.config.get("timeout") == 30
        assert fdn.config.get("only_file") is True
        assert fdn.config.get("db") == {"host": "h"}
        assert fdn.config.get("port") == 2000  # env beats file, parsed as JSON
        assert fdn.config.get("name") == "from-env"
        fdn.config.set("port", 3000)  # runtime beats env
        assert fdn.config.get("port") == 3000
        explained = fdn.config.explain("port")
        assert explained.value == 3000
        assert explained.source is not None and explained.source.startswith("runtime")
        assert list(explained.layers.values()) == [1000, 2000, 3000]
        assert "env:FOUNDATION_CONFIG__PORT" in explained.layers
        fdn.config.delete("port")
        assert fdn.config.get("port") == 2000
        assert fdn.config.explain("port").source == "env:FOUNDATION_CONFIG__PORT"


def test_reload_rereads_file_and_env_and_fires_watchers(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file = tmp_path / "app.json"
    config_file.write_text(json.dumps({"level": "info"}))
    with Foundation(db_url, migrate="skip", config_file=config_file) as fdn:
        seen: list[Any] = []
        fdn.config.watch("*", seen.append)
        config_file.write_text(json.dumps({"level": "debug"}))
        monkeypatch.setenv("FOUNDATION_CONFIG__EXTRA", "[1, 2]")
        fdn.config.reload()
        assert fdn.config.get("level") == "debug"
        assert fdn.config.get("extra") == [1, 2]
        assert sorted((c.key, c.old, c.new, c.source) for c in seen) == [
            ("extra", None, [1, 2], "reload"),
            ("level", "info", "debug", "reload"),
        ]


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [("bad.toml", 'a = 1\nb = "unterminated\n', 2), ("bad.json", '{\n  "a": 1,\n}', 3)],
)
def test_corrupt_config_file_names_file_and_line(
    db_url: str, tmp_path: Path, name: str, text: str, line: int
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Foundation(db_url, migrate="skip", config_file=path)
    assert info.value.context["file"] == str(path)
    assert info.value.context["line"] == line
    assert str(path) in info.value.message


def test_corrupt_file_on_reload_keeps_the_last_good_values(db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "app.toml"
    path.write_text("level = 'info'\n")
    with Foundation(db_url, migrate="skip", config_file=path) as fdn:
        path.write_text("level = \n")
        with pytest.raises(ConfigError):
            fdn.config.reload()
        assert fdn.config.get("level") == "info"


def test_typed_keys_validate_on_set_and_load(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FOUNDATION_CONFIG__WORKERS", "8")
    with Foundation(db_url, migrate="skip") as fdn:
        fdn.config.register("workers", int, default=4)
        assert fdn.config.get("workers") == 8
        fdn.config.register("pool", Pool, default={"size": 5})
        assert fdn.config.get("pool") == Pool(size=5)
        fdn.config.set("pool", Pool(size=10, host="db"))
        assert fdn.config.get("pool") == Pool(size=10, host="db")
        with pytest.raises(ConfigError) as info:
            fdn.config.set("pool", {"size": "many"})
        assert info.value.context["key"] == "pool"
        assert fdn.config.get("pool") == Pool(size=10, host="db")
        assert [h.new_value for h in fdn.config.history("pool")] == [{"size": 10, "host": "db"}]
        # A type that the current value does not fit is refused at registration.
        with pytest.raises(ConfigError):
            fdn.config.register("pool", int)
        assert fdn.config.get("pool") == Pool(size=10, host="db")
        monkeypatch.setenv("FOUNDATION_CONFIG__WORKERS", "lots")
        with pytest.raises(ConfigError) as bad_env:
            fdn.config.reload()
        assert "FOUNDATION_CONFIG__WORKERS" in bad_env.value.message
        assert fdn.config.get("workers") == 8


def test_watch_exact_prefix_and_cancel(fdn: Foundation) -> None:
    exact: list[Any] = []
    prefix: list[Any] = []
    watch = fdn.config.watch("db.host", exact.append)
    fdn.config.watch("db.*", prefix.append)
    fdn.config.set("db.host", "a")
    fdn.config.set("db.port", 5432)
    fdn.config.set("other", 1)
    assert [(c.key, c.old, c.new, c.source) for c in exact] == [("db.host", None, "a", "local")]
    assert [c.key for c in prefix] == ["db.host", "db.port"]
    watch.cancel()
    fdn.config.set("db.host", "b")
    assert len(exact) == 1
    assert len(prefix) == 3


def test_a_failing_watcher_does_not_break_set(fdn: Foundation) -> None:
    def broken(_change: Any) -> None:
        raise RuntimeError("boom")

    fdn.config.watch("k", broken)
    fdn.config.set("k", 1)
    assert fdn.config.get("k") == 1


def test_set_and_reload_emit_telemetry(fdn: Foundation) -> None:
    events: list[tuple[Any, ...]] = []
    fdn.telemetry.attach(
        "t",
        ["foundation.config.set", "foundation.config.reload", "foundation.config.delete"],
        lambda name, m, md, _c: events.append((name, m, md)),
    )
    fdn.config.set("k", 1)
    fdn.config.reload()
    fdn.config.delete("k")
    names = [e[0] for e in events]
    assert names == [
        ("foundation", "config", "set"),
        ("foundation", "config", "reload"),
        ("foundation", "config", "delete"),
    ]
    assert events[0][1]["duration"] > 0
    assert events[0][2]["key"] == "k"
    assert events[0][2]["node"] == fdn.settings.node_id


def test_a_value_set_on_one_node_is_read_on_another(db_url: str) -> None:
    with (
        Foundation(db_url, migrate="skip", poll_interval_ms=5) as a,
        Foundation(db_url, migrate="skip", poll_interval_ms=5) as b,
    ):
        seen: list[Any] = []
        b.config.watch("flag", seen.append)
        a.config.set("flag", "on")
        wait_for(lambda: b.config.get("flag") == "on")
        wait_for(lambda: seen)
        assert (seen[0].old, seen[0].new, seen[0].source) == (None, "on", "remote")
        a.config.delete("flag")
        wait_for(lambda: b.config.get("flag") is None)
        b.config.set("flag", "b-wins")
        wait_for(lambda: a.config.get("flag") == "b-wins")


def test_a_change_made_with_plain_sql_reaches_the_cache(fdn: Foundation, db_url: str) -> None:
    fdn.config.set("k", 1)
    parsed = DatabaseURL.parse(db_url)
    if parsed.backend == "sqlite":
        with sqlite3.connect(parsed.sqlite_path) as conn:
            conn.execute("DELETE FROM foundation_config WHERE key = 'k'")
    else:
        with psycopg.connect(parsed.conninfo, autocommit=True) as conn:
            conn.execute("DELETE FROM foundation_config WHERE key = 'k'")
    wait_for(lambda: fdn.config.get("k") is None)
    assert fdn.config.history("k")[0].operation == "delete"


def test_a_node_always_reads_its_own_writes_while_the_feed_resyncs(db_url: str) -> None:
    # `other` keeps writing so this node's feed keeps re-reading the table; every value
    # this node wrote must be what it reads right after, never an older one.
    import threading

    with (
        Foundation(db_url, migrate="skip", poll_interval_ms=1) as fdn,
        Foundation(db_url, migrate="skip") as other,
    ):
        stop = threading.Event()

        def churn() -> None:
            i = 0
            while not stop.is_set():
                other.config.set("noise", i)
                i += 1

        noise = threading.Thread(target=churn)
        noise.start()
        try:
            for i in range(150):
                fdn.config.set("mine", i)
                assert fdn.config.get("mine") == i
        finally:
            stop.set()
            noise.join()
