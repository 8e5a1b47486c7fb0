"""Found in the ninth round of review.

* ``AsyncFoundation``: a SIGTERM turned into ``SystemExit`` (the advice of
  docs/deployment.md) while a plain handler ran on the loop recorded the subscription as
  ``failed`` ("SystemExit: 0") in its row, with a telemetry ``failed`` and an error in the
  log, at every such shutdown.
* An event given as a pydantic model stored NaN and Infinity as null (a dict with them is
  refused): its JSON dump was taken as it came.
* A refusal of an event's ``data`` or ``metadata`` content, and "expected_version needs a
  stream_id", did not name the field in ``context`` as the other refusals do.
* ``events tail --max-events`` and ``--idle-timeout`` without ``--follow`` were ignored.
* SQLite: a config change made with plain SQL was stamped with milliseconds in its history
  row, its event with microseconds: the two disagreed as text (migration 0013).
* PostgreSQL: ``events import`` into a new database slowed down as the log grew (100,000
  events: 3 minutes), its plans made when the log was empty; it now analyzes the log as
  it grows.
* Found in review of those fixes: a sync ``stop(timeout=0)`` released the name while the
  loop was about to call the handler (it ran after ``stop()`` said ``stopped``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pydantic
import pytest
import sqlalchemy as sa

from foundation import AsyncFoundation, EventError, Foundation
from tests.test_events_cli import run

_SIGTERM_APP = textwrap.dedent(
    """
    import asyncio, signal, sys, time
    from foundation import AsyncFoundation

    def handler(event):
        print("handling", event.position, flush=True)
        time.sleep(5)  # a plain handler, on the loop: SIGTERM lands in it

    async def main():
        async with AsyncFoundation(sys.argv[1], migrate="check") as fdn:
            await fdn.events.store({"type": "job"})
            await fdn.events.subscribe("projector", handler, poll_interval_ms=20)
            await asyncio.sleep(60)

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(main())
    """
)


def test_sigterm_in_a_plain_async_handler_is_a_stop_not_a_failure(db_url: str) -> None:
    app = subprocess.Popen(
        [sys.executable, "-c", _SIGTERM_APP, db_url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    try:
        assert app.stdout is not None
        line = app.stdout.readline()
        assert line.startswith("handling"), line + app.stderr.read() if app.stderr else ""
        app.send_signal(signal.SIGTERM)
        _, err = app.communicate(timeout=60)
    finally:
        app.kill()
    assert app.returncode == 0, err
    assert "failed" not in err and "delivered again" in err
    with Foundation(db_url, migrate="check") as fdn:
        row = fdn.database.fetchone(fdn.events._sql.sub_read, {"name": "projector"})
        assert row is not None
        # Stopped, and the interrupted event (position 1) was not checkpointed.
        assert (row[0], row[1], row[3]) == (0, "stopped", None)
        fdn.events.subscribe("projector", lambda e: None).stop()  # the name is free


class _Measured(pydantic.BaseModel):
    type: str = "measured"
    data: dict[str, Any]
    metadata: dict[str, Any] = {}


@pytest.mark.parametrize(
    ("event", "field"),
    [
        (_Measured(data={"v": float("nan")}), "data"),
        (_Measured(data={"v": [1.0, float("-inf")]}), "data"),
        (_Measured(data={}, metadata={"v": float("inf")}), "metadata"),
    ],
)
def test_a_model_holding_nan_is_refused_as_a_dict_is(
    fdn: Foundation, event: _Measured, field: str
) -> None:
    with pytest.raises(EventError, match="NaN or Infinity") as err:
        fdn.events.store(event)
    assert err.value.context["field"] == field
    with pytest.raises(EventError):
        fdn.events.store_many([_Measured(data={"v": 1}), event])
    assert fdn.events.get() == []


async def test_a_model_holding_nan_is_refused_as_a_dict_is_async(afdn: AsyncFoundation) -> None:
    with pytest.raises(EventError) as err:
        await afdn.events.store(_Measured(data={"v": float("nan")}))
    assert err.value.context["field"] == "data"
    assert await afdn.events.get() == []


@pytest.mark.parametrize(
    ("event", "field"),
    [
        ({"type": "t", "data": {"x": float("nan")}}, "data"),
        ({"type": "t", "data": b"bytes"}, "data"),
        ({"type": "t", "data": {1: "a"}}, "data"),
        ({"type": "t", "data": "x" * (1 << 20)}, "data"),
        ({"type": "t", "metadata": {"x": "\x00"}}, "metadata"),
        ({"type": "t", "metadata": {"x": float("inf")}}, "metadata"),
        ({"type": "t", "expected_version": 0}, "expected_version"),
    ],
)
def test_a_refused_event_names_its_field(fdn: Foundation, event: Any, field: str) -> None:
    with pytest.raises(EventError) as err:
        fdn.events.store(event)
    assert err.value.context["field"] == field
    assert fdn.events.get() == []


@pytest.mark.parametrize("option", [["--max-events", "1"], ["--idle-timeout", "1"]])
def test_tail_refuses_a_follow_option_without_follow(db_url: str, option: list[str]) -> None:
    result = run(db_url, "events", "tail", *option)
    assert result.exit_code == 2
    assert f"{option[0]} applies to --follow only" in result.output


def test_sqlite_plain_sql_config_changes_are_stamped_as_their_events(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path}/stamp.db"
    with Foundation(url, migrate="upgrade") as fdn:
        fdn.config.set("port", 1)
        fdn.config.set("gone", 1)
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # as typed in sqlite3
        conn.execute(sa.text("UPDATE foundation_config SET value = '2' WHERE key = 'port'"))
        conn.execute(sa.text("DELETE FROM foundation_config WHERE key = 'gone'"))
    with engine.connect() as conn:
        by_sql = conn.execute(
            sa.text(
                "SELECT c.changed_at, e.recorded_at FROM foundation_audit_config c "
                "LEFT JOIN foundation_audit_events e ON e.type = 'foundation.config.changed' "
                "AND json_extract(e.data, '$.revision') = c.revision "
                "AND json_extract(e.data, '$.key') = c.key "
                "WHERE c.changed_by = 'sql' ORDER BY c.id"
            )
        ).all()
    engine.dispose()
    assert len(by_sql) == 2
    for changed_at, recorded_at in by_sql:
        assert changed_at == recorded_at and len(changed_at) == len("2026-01-01 00:00:00.000000")


def test_import_analyzes_a_growing_postgresql_log(db_url: str, tmp_path: Any) -> None:
    if not db_url.startswith("postgresql"):
        pytest.skip("SQLite plans each statement anew")
    lines = [f'{{"type": "imported", "stream_id": "s{i % 7}", "data": {i}}}' for i in range(1200)]
    (tmp_path / "log.jsonl").write_text("\n".join(lines) + "\n")
    assert run(db_url, "events", "import", str(tmp_path / "log.jsonl")).exit_code == 0
    with Foundation(db_url, migrate="check") as fdn:
        analyzed = fdn.database.fetchone(
            "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'foundation_events'"
        )
        assert analyzed is not None and analyzed[0] is not None
        assert len(fdn.events.get(type="imported", limit=2000)) == 1200


def test_a_stop_that_times_out_before_the_handler_starts_keeps_the_name(
    fdn: Foundation, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    from foundation.events._subscription_sync import Subscription

    fdn.events.store({"type": "job"})
    about_to_handle = threading.Event()
    handled: list[int] = []
    lapsed = Subscription._lease_lapsed

    def slow(self: Subscription) -> bool:
        about_to_handle.set()
        time.sleep(0.2)  # between the loop's stop check and the handler
        return lapsed(self)

    monkeypatch.setattr(Subscription, "_lease_lapsed", slow)
    sub = fdn.events.subscribe("projector", lambda e: handled.append(e.position))
    assert about_to_handle.wait(10)
    sub.stop(timeout=0)
    assert sub.status.state == "stopping"
    row = fdn.database.fetchone(fdn.events._sql.sub_read, {"name": "projector"})
    assert row is not None and row[1] == "running"  # held while the handler may run
    sub.stop(timeout=None)
    assert sub.status.state == "stopped" and handled == [1]
