"""Core defects found by the new-user review: the facade, settings, CLI, migrations, README."""

from __future__ import annotations

import logging
import re
import sqlite3
from datetime import timedelta
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner

from foundation import AsyncFoundation, Foundation, FoundationError
from foundation.cli import main
from foundation.database.url import DatabaseURL
from foundation.errors import ConfigError, SchemaOutdatedError
from foundation.telemetry import default_metrics
from foundation.telemetry.reporters import LoggingReporter

ROOT = Path(__file__).resolve().parent.parent


def plain_sql(url: str, statement: str) -> list[tuple[object, ...]]:
    parsed = DatabaseURL.parse(url)
    if parsed.backend == "sqlite":
        with sqlite3.connect(parsed.sqlite_path) as conn:
            return conn.execute(statement).fetchall()
    with psycopg.connect(parsed.conninfo, autocommit=True) as pg:
        cur = pg.execute(statement)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


# -- 4. AsyncFoundation before open() and after close() ----------------------------------


async def test_async_before_open_says_how_to_open(db_url: str) -> None:
    fdn = AsyncFoundation(db_url, migrate="check")
    with pytest.raises(FoundationError, match=r"await fdn.open\(\)"):
        await fdn.config.set("x", 1)
    with pytest.raises(FoundationError, match="async with"):
        fdn.config.get("x")
    async with fdn:
        await fdn.config.set("x", 1)
        assert fdn.config.get("x") == 1
    with pytest.raises(FoundationError, match="closed"):
        await fdn.open()
    with pytest.raises(FoundationError, match="closed"):
        await fdn.config.set("x", 2)


# -- 7. bad constructor arguments ------------------------------------------------------------


def test_bad_constructor_arguments_are_config_errors_before_any_work(tmp_path: Path) -> None:
    path = tmp_path / "none.db"
    url = f"sqlite:///{path}"
    with pytest.raises(ConfigError, match="Settings") as info:
        Foundation(url, settings={"database_url": url})  # type: ignore[arg-type]
    assert info.value.context["setting"] == "settings"
    with pytest.raises(ConfigError, match="telemetry"):
        Foundation(url, telemetry=5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="telemetry"):
        AsyncFoundation(url, telemetry=5)  # type: ignore[arg-type]
    assert not path.exists()  # nothing was created or migrated


# -- 8. setting errors name the setting, and the variable ----------------------------------


def test_cross_field_setting_errors_name_the_field(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a.db'}"
    with pytest.raises(ConfigError) as info:
        Foundation(url, pool_min_size=5, pool_max_size=2)
    assert info.value.context["setting"] == "pool_min_size"
    assert "'pool_min_size'" in info.value.message and "(5)" in info.value.message
    with pytest.raises(ConfigError) as info:
        Foundation(url, registry_ttl_ms=1000, registry_heartbeat_ms=1000)
    assert info.value.context["setting"] == "registry_heartbeat_ms"
    # Just under the TTL, every late beat let the lease lapse (the names flapped): at most
    # half of it.
    with pytest.raises(ConfigError, match="at most half of registry_ttl_ms"):
        Foundation(url, registry_ttl_ms=1000, registry_heartbeat_ms=501)
    Foundation(url, registry_ttl_ms=1000, registry_heartbeat_ms=500, migrate="upgrade").close()


def test_setting_errors_name_the_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOUNDATION_POLL_INTERVAL_MS", "soon")
    with pytest.raises(ConfigError, match="FOUNDATION_POLL_INTERVAL_MS") as info:
        Foundation(f"sqlite:///{tmp_path / 'a.db'}")
    assert info.value.context["setting"] == "poll_interval_ms"
    assert info.value.context["env"] == "FOUNDATION_POLL_INTERVAL_MS"
    with pytest.raises(ConfigError) as given:  # a keyword argument is not the environment
        Foundation(f"sqlite:///{tmp_path / 'a.db'}", poll_interval_ms=0)
    assert "env" not in given.value.context


def test_millisecond_settings_accept_a_timedelta(tmp_path: Path) -> None:
    with Foundation(
        f"sqlite:///{tmp_path / 'a.db'}",
        poll_interval_ms=timedelta(milliseconds=40),
        registry_ttl_ms=timedelta(seconds=20),
        connect_timeout_s=timedelta(seconds=2),
    ) as fdn:
        assert fdn.settings.poll_interval_ms == 40
        assert fdn.settings.registry_ttl_ms == 20_000
        assert fdn.settings.connect_timeout_s == 2.0


def test_number_settings_refuse_booleans(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'b.db'}"
    for name in ("poll_interval_ms", "max_value_bytes", "connect_timeout_s"):
        with pytest.raises(ConfigError, match=f"'{name}': must be a number, not True or False"):
            Foundation(url, **{name: True})
    assert not (tmp_path / "b.db").exists()  # refused before any work
    with Foundation(url, rate_limiter_fast_commit=False, poll_interval_ms="50") as fdn:
        assert fdn.settings.poll_interval_ms == 50  # text, as an environment variable is


def test_not_a_url_is_shown_without_a_made_up_scheme() -> None:
    with pytest.raises(ConfigError) as info:
        Foundation("not a url")
    assert "'not a url'" in info.value.message and "://***" not in info.value.message
    with pytest.raises(ConfigError) as secret:
        Foundation("host=db password=hunter2")
    assert "hunter2" not in secret.value.message


# -- 9. the CLI on a database a newer release wrote --------------------------------------


def test_cli_on_a_newer_database_says_schema_outdated(db_url: str) -> None:
    plain_sql(db_url, "UPDATE foundation_alembic_version SET version_num = '0099'")
    runner = CliRunner()
    for args in (["db", "current"], ["db", "current", "--json"], ["db", "upgrade"]):
        result = runner.invoke(main, ["-d", db_url, *args])
        assert result.exit_code == 1, result.output
        assert "error [schema_outdated]" in result.stderr
        assert "0099, which a newer release of Foundation wrote" in result.stderr
    with pytest.raises(SchemaOutdatedError):
        Foundation(db_url)


# -- 11. the poller and default_metrics agree -----------------------------------------------


def test_poller_emits_nothing_default_metrics_misses(
    fdn: Foundation, caplog: pytest.LogCaptureFixture
) -> None:
    reporter = LoggingReporter(fdn.telemetry, default_metrics(), logger="t.metrics")
    try:
        with caplog.at_level(logging.INFO), fdn.poller(interval_ms=60_000):
            pass
        assert not [r for r in caplog.records if "missing" in r.getMessage()]
        assert any(
            "foundation.poller.event_log.tail_position" in r.getMessage() for r in caplog.records
        )
    finally:
        reporter.detach()


# -- 12. the README's auditor queries agree -------------------------------------------------


def _readme_query(marker: str) -> str:
    text = (ROOT / "README.md").read_text()
    block = text.split(f"-- {marker}: one order's history", 1)[1]
    return block.split(";", 1)[0].split("\n", 1)[1]


def test_readme_order_queries_match_the_same_events(db_url: str) -> None:
    with Foundation(db_url, migrate="check") as fdn:
        for order_id in (123, "123", 124):
            fdn.events.store({"type": "order_placed", "data": {"order_id": order_id, "amount": 5}})
        fdn.events.store({"type": "order_paid", "data": {"order_id": 123}})
    marker = "sqlite3" if db_url.startswith("sqlite") else "psql"
    rows = plain_sql(db_url, _readme_query(marker))
    assert [row[2] for row in rows] == ["order_placed", "order_paid"]


# -- 13. config history at 80 columns ---------------------------------------------------------


def test_config_history_fits_80_columns(db_url: str) -> None:
    runner = CliRunner()
    long_key = "service.payments.gateway.timeout_ms"
    runner.invoke(main, ["-d", db_url, "config", "set", long_key, '{"a": [1, 2, 3]}'])
    result = runner.invoke(main, ["-d", db_url, "config", "history"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert all(len(line) <= 80 for line in lines)
    header = next(line for line in lines if "when" in line)
    assert re.search(r"id\s+when \(UTC\)\s+key\s+op\s+old\s+new\s+by", header)
    assert "service.pay" in result.output
