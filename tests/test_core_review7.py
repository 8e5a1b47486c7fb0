"""Found by a reviewer using config, breakers and telemetry as a new user would.

* A typed key registered after the instance loaded its values (every restart) kept the
  stored value untyped: a str for a datetime, a dict for a model.
* A change from 1 to True (or [1] to [True]) reached no watcher: ``==`` said "no change".
* A typed ``bytes`` key set to bytes that are not UTF-8 raised pydantic's
  ``UnicodeDecodeError``; a breaker's ``max_failures`` beyond a BIGINT let SQLite's
  ``OverflowError`` replace the function's own error.
* One measurement too large for a float detached a whole reporter.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pydantic
import pytest

from foundation import ConfigError, Foundation, ValidationError
from foundation.config import ConfigChange
from foundation.telemetry import Telemetry, metrics
from foundation.telemetry.reporters import LoggingReporter
from tests.helpers import wait_for


class DB(pydantic.BaseModel):
    host: str
    port: int


def test_a_type_registered_after_load_types_the_stored_value(db_url: str) -> None:
    with Foundation(db_url, migrate="skip") as first:
        first.config.register("deploy_at", datetime)
        first.config.register("db", DB)
        first.config.set("deploy_at", datetime(2024, 5, 1, 12))
        first.config.set("db", DB(host="h", port=1))
        first.config.set("port", "4000")  # untyped yet: a str
    with Foundation(db_url, migrate="skip") as restarted:  # loads, then registers
        changes: list[ConfigChange] = []
        restarted.config.watch("port", changes.append)
        restarted.config.register("deploy_at", datetime)
        restarted.config.register("db", DB)
        restarted.config.register("port", int)
        assert restarted.config.get("deploy_at") == datetime(2024, 5, 1, 12)
        assert restarted.config.get("db") == DB(host="h", port=1)
        assert isinstance(restarted.config.get("db"), DB)
        assert restarted.config.get("port") == 4000
        wait_for(lambda: [(c.old, c.new) for c in changes] == [("4000", 4000)])
        restarted.config.reload()
        assert restarted.config.get("port") == 4000
        with pytest.raises(ConfigError, match="expected list"):
            restarted.config.register("port", list[int])  # 4000 is no list: refused
        assert restarted.config.get("port") == 4000  # and nothing changed


def test_watchers_see_a_change_between_values_python_calls_equal(db_url: str) -> None:
    with Foundation(db_url, migrate="skip") as fdn:
        seen: list[tuple[Any, Any]] = []
        fdn.config.watch("flag", lambda c: seen.append((c.old, c.new)))
        for value in (1, True, 1.0, [1], [True]):
            fdn.config.set("flag", value)
        wait_for(lambda: len(seen) == 5)
        assert [type(new) for _, new in seen[:3]] == [int, bool, float]
        assert [list(new) for _, new in seen[3:]] == [[1], [True]]
        assert [type(new[0]) for _, new in seen[3:]] == [int, bool]


def test_bytes_that_are_not_utf8_are_a_config_error(db_url: str) -> None:
    with Foundation(db_url, migrate="skip") as fdn:
        fdn.config.register("blob", bytes)
        with pytest.raises(ConfigError, match="cannot be stored as JSON"):
            fdn.config.set("blob", b"\xff\xfe")
        assert fdn.config.history("blob") == []
        fdn.config.set("blob", b"ok")
        assert fdn.config.get("blob") == b"ok"


def test_max_failures_is_bounded(fdn: Foundation) -> None:
    with pytest.raises(ValidationError, match="from 1 to 10,000,000"):
        fdn.circuit_breaker.execute(lambda: 1, name="b", max_failures=2**63)
    assert fdn.circuit_breaker.execute(lambda: 1, name="b", max_failures=10_000_000) == 1


def test_a_measurement_beyond_a_float_is_skipped_not_the_reporter(
    caplog: pytest.LogCaptureFixture,
) -> None:
    telemetry = Telemetry()
    reporter = LoggingReporter(
        telemetry,
        [
            metrics.summary("app.req.duration", unit=("native", "millisecond")),
            metrics.last_value("app.req.size"),
        ],
        logger="t.review7",
        level=logging.INFO,
    )
    with caplog.at_level(logging.INFO, logger="t.review7"):
        telemetry.execute("app.req", {"duration": 10**400, "size": -(10**400)})
        telemetry.execute("app.req", {"duration": 5, "size": 7})
    assert reporter.attached
    stats = reporter.stats()
    assert stats["app.req.duration"].invalid == 1 and stats["app.req.size"].invalid == 1
    logged = [r.getMessage() for r in caplog.records if r.name == "t.review7"]
    assert logged == [
        "summary app.req.duration=4.9999999999999996e-06 millisecond",
        "last_value app.req.size=7",
    ]


def test_nan_and_infinity_are_not_json_in_files_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'nan.db'}"
    monkeypatch.setenv("FOUNDATION_CONFIG__RATIO", "NaN")
    monkeypatch.setenv("FOUNDATION_CONFIG__LIMIT", "-Infinity")
    with Foundation(url, migrate="upgrade") as fdn:  # not JSON: the text, as any other
        assert (fdn.config.get("ratio"), fdn.config.get("limit")) == ("NaN", "-Infinity")
    for name, text in (("app.json", '{"ratio": NaN}'), ("app.toml", "[x]\nratio = nan\n")):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError, match=r"NaN is not JSON|NaN and Infinity are not JSON"):
            Foundation(url, config_file=path)


def test_a_database_that_cannot_be_opened_is_a_clean_foundation_error() -> None:
    """A SQLite path in a directory that cannot be made raised FileNotFoundError; on the
    async face, aiosqlite's thread, stopped after a failed connect, answered on a loop
    that had closed meanwhile: a RuntimeError traceback on stderr, after the error."""
    script = textwrap.dedent(
        """
        import asyncio
        from foundation import AsyncFoundation, Foundation, FoundationError
        async def main(url):
            try:
                async with AsyncFoundation(url):
                    pass
            except FoundationError as exc:
                print(exc.code)
        for url in ("sqlite:////proc/no/such.db", "sqlite:////proc/such.db"):
            try:
                Foundation(url)
            except FoundationError as exc:
                print(exc.code)
            asyncio.run(main(url))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.stdout == "storage_unavailable\n" * 4, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr


def test_local_limits_of_keys_gone_quiet_are_dropped(fdn: Foundation) -> None:
    limiter = fdn.rate_limiter
    for algorithm in ("fixed_window", "sliding_window", "token_bucket"):
        for i in range(300):
            limiter.execute(
                lambda: None,
                key=f"user-{i}",
                max_requests=5,
                interval=20,
                scope="local",
                algorithm=algorithm,
            )
    assert len(limiter._local) == 900
    time.sleep(0.1)  # every window has passed, every bucket refilled
    limiter._local_sweep_at = 0  # the sweep is due (every 30 s)
    limiter.execute(lambda: None, key="now", max_requests=5, interval=20, scope="local")
    assert list(limiter._local) == [("now", "fixed_window")]
