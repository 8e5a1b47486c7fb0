"""Review 17: subscriptions meeting database faults, the CLI's export and import, the
registry's node ids across restarts, telemetry, enums as names, typed envelopes.

* A subscription whose checkpoint the database refused ran its handler again every poll
  interval, for good, said ``running``; an async one cancelled from outside said
  ``running`` with its name held.
* An export that stopped left FILE cut short (every line valid); a refused import left a
  new empty SQLite file; ``config set k 1e999`` spoke of NaN.
* A node id restarted after a clean close numbers its lease from 1 again: other nodes took
  that instance's names and members as dead for good (PostgreSQL), also when their feed
  had fallen behind. A paused holder whose node id was taken told ``lost`` before
  ``expired``, and took the new instance's changes for its own.
* A breaker's own transition read back by the feed first was ``remote``; a handler failing
  on many threads was reported as many times; a restarted Poller ran twice.
* Breakers, limiters and events refused an enum as a name; an envelope holding the
  registered model's instance was validated again from its JSON.

Each test failed on the commit before its fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pydantic
import pytest

from foundation import (
    AlreadyRegisteredError,
    AsyncFoundation,
    ConfigError,
    Foundation,
    FoundationError,
    StorageUnavailableError,
)
from foundation.database.errors import translate
from foundation.database.url import DatabaseURL
from foundation.telemetry import HANDLER_FAILURE_EVENT, Poller, Telemetry
from foundation.telemetry.poller import measurement
from tests.helpers import async_wait_for, wait_for
from tests.test_cli import fails, ok, run
from tests.test_registry import node, stop_heartbeat
from tests.test_registry_async import freeze
from tests.test_registry_review3 import anode, kinds, watched


def test_a_refused_import_into_a_new_file_leaves_no_database(tmp_path: Path) -> None:
    lines = tmp_path / "events.jsonl"
    lines.write_text('{"type": 5}\n')
    url = f"sqlite:///{tmp_path / 'restore' / 'app.db'}"
    fails(url, "event_error", "events", "import", str(lines))
    assert not (tmp_path / "restore").exists()


def test_an_import_keeps_a_file_that_holds_anything(tmp_path: Path) -> None:
    """A database that existed, or one the import wrote to before its error, stays."""
    first, bad = tmp_path / "first.jsonl", tmp_path / "bad.jsonl"
    first.write_text('{"type": "a"}\n')
    bad.write_text('{"type": 5}\n')
    url = f"sqlite:///{tmp_path / 'app.db'}"
    ok(url, "db", "upgrade")
    fails(url, "event_error", "events", "import", str(bad))
    assert (tmp_path / "app.db").exists()  # existed (empty) before the command

    many = tmp_path / "many.jsonl"
    many.write_text('{"type": "a"}\n' * 600 + '{"type": 5}\n')  # a first batch commits
    url = f"sqlite:///{tmp_path / 'new.db'}"
    fails(url, "event_error", "events", "import", str(many))
    with sqlite3.connect(tmp_path / "new.db") as db:
        assert db.execute("SELECT count(*) FROM foundation_events").fetchone() == (500,)


def test_a_paused_holder_whose_node_id_was_taken_reports_each_registration_expired_then_lost(
    db_url: str,
) -> None:
    """Its names hung off its dead lease: each is reported expired (once), then lost; a
    name the new instance registers again is a new registration after that."""
    old = node(db_url, node_id="web")
    try:
        seen = watched(old, "*")
        old.service_registry.register("svc", "http://old")
        old.service_registry.register("other", "http://old")
        old.service_registry.join("workers", "http://old")
        stop_heartbeat(old)  # paused past its TTL; a new process of the same id starts
        with node(db_url, node_id="web") as new:
            with pytest.raises(ConfigError):
                old.service_registry.heartbeat()
            new.service_registry.register("svc", "http://new")
            wait_for(lambda: kinds(seen, "svc")[-1:] == ["register"] and len(seen) > 6)
            time.sleep(0.3)  # nothing more is told
            assert kinds(seen, "svc") == ["register", "expired", "lost", "register"]
            # The last, the new instance's (of this node id), is not this one's own.
            assert [c.source for c in seen if c.name == "svc"] == ["local"] * 3 + ["remote"]
            assert kinds(seen, "other") == ["register", "expired", "lost"]
            assert kinds(seen, "workers") == ["join", "expired"]
    finally:
        old.close()


async def test_async_a_paused_holder_whose_node_id_was_taken_reports_expired_then_lost(
    db_url: str,
) -> None:
    old = anode(db_url, node_id="web")
    await old.open()
    try:
        seen = watched(old, "*")
        await old.service_registry.register("svc", "http://old")
        await old.service_registry.join("workers", "http://old")
        await freeze(old)
        async with anode(db_url, node_id="web"):
            with pytest.raises(ConfigError):
                await old.service_registry.heartbeat()
            await async_wait_for(lambda: len(seen) >= 5)
            await asyncio.sleep(0.3)  # nothing more is told
            assert kinds(seen, "svc") == ["register", "expired", "lost"]
            assert kinds(seen, "workers") == ["join", "expired"]
    finally:
        await old.close()


# -- subscriptions: a checkpoint the database will not take ------------------------------

SUB = {"poll_interval_ms": 20, "retry_backoff_ms": 1, "max_retries": 2}


def _refuse_checkpoints(db_url: str) -> None:
    """The database refuses every checkpoint write (as a missing UPDATE grant would)."""
    if db_url.startswith("sqlite"):
        with sqlite3.connect(db_url.removeprefix("sqlite:///")) as db:
            db.execute(
                "CREATE TRIGGER refuse BEFORE UPDATE OF checkpoint ON foundation_subscriptions "
                "WHEN NEW.checkpoint <> OLD.checkpoint "
                "BEGIN SELECT RAISE(ABORT, 'permission denied'); END"
            )
        return
    with psycopg.connect(DatabaseURL.parse(db_url).conninfo, autocommit=True) as db:
        db.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF NEW.checkpoint <> OLD.checkpoint THEN RAISE EXCEPTION 'permission denied' "
            "USING ERRCODE = '42501'; END IF; RETURN NEW; END $$"
        )
        db.execute(
            "CREATE TRIGGER refuse BEFORE UPDATE ON foundation_subscriptions "
            "FOR EACH ROW EXECUTE FUNCTION refuse()"
        )


def _failures(fdn: Foundation | AsyncFoundation) -> list[dict[str, Any]]:
    failed: list[dict[str, Any]] = []
    fdn.telemetry.attach(
        "failed",
        ("foundation", "events", "subscription", "failed"),
        lambda _e, measurements, _m, _c: failed.append(measurements),
    )
    return failed


def test_a_refused_checkpoint_fails_the_subscription_without_running_the_handler_again(
    fdn: Foundation, db_url: str
) -> None:
    """It was retried with the handler, every poll interval, for good, said running."""
    _refuse_checkpoints(db_url)
    failed = _failures(fdn)
    calls: list[int] = []
    fdn.events.store({"type": "charge"})
    sub = fdn.events.subscribe("billing", lambda e: calls.append(e.position), **SUB)
    wait_for(lambda: sub.status.state == "failed")
    assert calls == [1]
    assert sub.status.checkpoint == 0
    assert "could not write its checkpoint" in (sub.status.last_error or "")
    assert "refused 3 times in a row" in (sub.status.last_error or "")
    assert failed == [{"count": 1, "position": 1}]


async def test_async_a_refused_checkpoint_fails_the_subscription(
    afdn: AsyncFoundation, db_url: str
) -> None:
    _refuse_checkpoints(db_url)
    failed = _failures(afdn)
    calls: list[int] = []
    await afdn.events.store({"type": "charge"})
    sub = await afdn.events.subscribe("billing", lambda e: calls.append(e.position), **SUB)
    await async_wait_for(lambda: sub.status.state == "failed")
    assert calls == [1]
    assert "could not write its checkpoint" in (sub.status.last_error or "")
    assert failed == [{"count": 1, "position": 1}]


def test_a_checkpoint_out_of_reach_is_retried_alone_and_said_meanwhile(
    fdn: Foundation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outage while the checkpoint is written: the handler is not run again for it,
    ``last_error`` says what is retried, and is cleared once it went through."""
    calls: list[int] = []
    real = fdn.database.execute
    outage = threading.Event()
    outage.set()
    errors: list[str | None] = []

    def execute(sql: str, params: Any = None) -> Any:
        if "checkpoint" in sql and params and params.get("checkpoint") and outage.is_set():
            raise StorageUnavailableError("the database is down (simulated)")
        return real(sql, params)

    monkeypatch.setattr(fdn.database, "execute", execute)
    fdn.events.store({"type": "charge"})
    sub = fdn.events.subscribe("billing", lambda e: calls.append(e.position), **SUB)
    wait_for(lambda: sub.status.last_error is not None)
    errors.append(sub.status.last_error)
    time.sleep(0.2)  # many retries
    outage.clear()
    wait_for(lambda: sub.status.checkpoint == 1)
    assert calls == [1]
    assert sub.status.state == "running" and sub.status.last_error is None
    assert "could not write its checkpoint" in (errors[0] or "")
    sub.stop()


async def test_async_a_subscription_whose_task_is_cancelled_stops_and_gives_up_its_name(
    afdn: AsyncFoundation,
) -> None:
    """A shutdown that cancels every task left it 'running', its name held to its lease."""
    sub = await afdn.events.subscribe("projector", lambda e: None, **SUB)
    assert sub._task is not None
    sub._task.cancel()
    await async_wait_for(lambda: sub.status.state == "stopped")
    again = await afdn.events.subscribe("projector", lambda e: None, **SUB)  # at once
    await again.stop()


# -- enum names everywhere a name or key is taken ------------------------------------------


class Svc(enum.Enum):
    PAYMENTS = "payments"
    SHIPPING = 2  # not text: its name is


def test_an_enum_is_a_name_for_every_service(fdn: Foundation) -> None:
    """Config and the registry took an enum for a key or name; breakers, limiters and
    events refused one (DESIGN: keys may be str or enum-like names, stored as text)."""
    assert fdn.circuit_breaker.execute(lambda: 1, name=Svc.PAYMENTS) == 1
    fdn.circuit_breaker.force_open(Svc.PAYMENTS)
    assert fdn.circuit_breaker.state("payments") == "open"
    fdn.rate_limiter.execute(lambda: None, key=Svc.SHIPPING, max_requests=5, interval=60_000)
    assert [u.key for u in fdn.rate_limiter.usage()] == ["SHIPPING"]
    record = fdn.events.store({"type": Svc.PAYMENTS, "stream_id": Svc.SHIPPING})
    assert (record.type, record.stream_id) == ("payments", "SHIPPING")
    assert fdn.events.get(type=Svc.PAYMENTS) == [record]
    assert fdn.events.get(type=[Svc.PAYMENTS], stream_id=Svc.SHIPPING) == [record]
    seen: list[str] = []
    sub = fdn.events.subscribe("enum", lambda e: seen.append(e.type), types=Svc.PAYMENTS)
    wait_for(lambda: seen == ["payments"])
    sub.stop()


# -- the CLI's export ----------------------------------------------------------------------


def test_an_export_that_stops_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    """It was cut to the events read before the error, every line valid JSON (a backup
    overwritten by a shorter one, which imports without a word)."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with Foundation(url) as fdn:
        fdn.events.store_many([{"type": "t", "data": {"i": i}} for i in range(1500)])
    with sqlite3.connect(tmp_path / "app.db") as db:  # a row no reader can make a record of
        db.execute("DROP TRIGGER foundation_events_valid_row")
        db.execute(
            "INSERT INTO foundation_events (id, type, data, metadata, recorded_at) "
            "VALUES ('order-42', 'bad', '{}', '{}', '2026-01-01 00:00:00.000000')"
        )
    backup = tmp_path / "backup.jsonl"
    backup.write_text('{"precious": true}\n')
    backup.chmod(0o640)
    result = fails(url, "event_error", "events", "export", str(backup))
    assert f"nothing was exported ({backup} is as it was)" in result.stderr
    assert backup.read_text() == '{"precious": true}\n'
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")]

    events = tmp_path / "events.jsonl"
    ok(url, "events", "export", "--type", "t", str(backup))  # whole: it takes the file's place
    assert len(backup.read_text().splitlines()) == 1500
    assert backup.stat().st_mode & 0o777 == 0o640
    ok(url, "events", "export", "--type", "t", str(events))  # a new file: open()'s mode
    assert events.read_text() == backup.read_text()
    link = tmp_path / "link.jsonl"
    link.symlink_to(backup)
    ok(url, "events", "export", "--type", "t", "--after-position", "1499", str(link))
    assert link.is_symlink() and len(backup.read_text().splitlines()) == 1  # its target's


def test_config_set_of_a_number_past_a_floats_range_says_so(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    result = fails(url, "config_error", "config", "set", "k", "1e999")
    assert "beyond a float's range; pass --string" in result.stderr  # (not "NaN … not JSON")
    assert not (tmp_path / "app.db").exists()
    ok(url, "config", "set", "k", "1e999", "--string")


def test_a_cache_that_cannot_resync_is_named_in_the_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The log line showed ``<foundation.events._service.Events object at 0x…>``."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    Foundation(url).close()
    with sqlite3.connect(tmp_path / "app.db") as db:
        db.execute("DROP TRIGGER foundation_events_valid_row")
        db.execute(
            "INSERT INTO foundation_events (id, type, data, metadata, recorded_at) "
            "VALUES ('order-42', 'bad', '{}', '{}', '2026-01-01 00:00:00.000000')"
        )
    with caplog.at_level(logging.ERROR, logger="foundation.feed"), Foundation(url):
        pass
    lines = [r.getMessage() for r in caplog.records if r.name == "foundation.feed"]
    assert lines and all(" object at 0x" not in line for line in lines)
    assert any(line.startswith("the events cache could not") for line in lines)


# -- telemetry -------------------------------------------------------------------------------


def test_a_breakers_own_transitions_are_local_whichever_path_applies_them(db_url: str) -> None:
    """On PostgreSQL the feed could apply this node's own write before the write's answer
    came back, and said it "remote" (default_metrics() counts local ones only: lost)."""
    telemetry = Telemetry()
    seen: list[tuple[str, str, str]] = []
    telemetry.attach(
        "sc",
        "foundation.circuit_breaker.state_change",
        lambda _n, _m, meta, _c: seen.append((meta["from"], meta["to"], meta["source"])),
    )

    def fail() -> None:
        raise RuntimeError("down")

    options: dict[str, Any] = {"max_failures": 2, "reset_timeout": 50}
    with Foundation(db_url, migrate="check", telemetry=telemetry) as fdn:
        for i in range(25):
            for _ in range(2):
                with pytest.raises(RuntimeError):
                    fdn.circuit_breaker.execute(fail, name=f"b{i}", **options)
            time.sleep(0.07)
            fdn.circuit_breaker.execute(lambda: 1, name=f"b{i}", **options)
        time.sleep(0.3)  # notifications still on their way
    assert len(seen) == 75
    assert {source for _, _, source in seen} == {"local"}


def test_a_handler_that_fails_on_many_threads_is_detached_and_reported_once() -> None:
    telemetry = Telemetry()
    inside = threading.Barrier(8)
    reports: list[dict[str, Any]] = []

    def broken(_n: Any, _m: Any, _md: Any, _c: Any) -> None:
        inside.wait(5)  # all 8 threads inside it before the first one fails
        raise RuntimeError("backend broken")

    telemetry.attach("metrics", "app.ev", broken)
    telemetry.attach("alert", HANDLER_FAILURE_EVENT, lambda _n, _m, md, _c: reports.append(md))
    threads = [threading.Thread(target=telemetry.execute, args=("app.ev",)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r["handler_id"] for r in reports] == ["metrics"]


def test_a_late_failure_does_not_detach_the_handler_attached_anew_under_its_id() -> None:
    telemetry = Telemetry()
    healed = threading.Event()
    calls: list[int] = []

    def old(_n: Any, _m: Any, _md: Any, _c: Any) -> None:
        if threading.current_thread().name == "late":
            healed.wait(5)  # still inside the old handler when it is replaced
        raise RuntimeError("old backend broken")

    def heal(_n: Any, _m: Any, _md: Any, _c: Any) -> None:
        if not healed.is_set():
            telemetry.attach("metrics", "app.ev", lambda *_: calls.append(1))
            healed.set()

    telemetry.attach("metrics", "app.ev", old)
    telemetry.attach("heal", HANDLER_FAILURE_EVENT, heal)
    late = threading.Thread(target=telemetry.execute, args=("app.ev",), name="late")
    late.start()
    first = threading.Thread(target=telemetry.execute, args=("app.ev",))
    first.start()
    first.join()
    late.join()
    telemetry.execute("app.ev")
    assert calls == [1]


def test_a_poller_started_again_after_a_stop_that_gave_up_polls_once_per_interval() -> None:
    telemetry = Telemetry()
    slow = threading.Event()
    slow.set()

    def probe() -> dict[str, int]:
        if slow.is_set():
            time.sleep(0.4)  # a query stuck in an outage
        return {"v": 1}

    poller = Poller(telemetry, [measurement("app.poll", probe)], interval_ms=50, name="r17")
    poller.start()
    time.sleep(0.05)
    poller.stop(timeout=0.05)  # gives up waiting for the probe
    slow.clear()
    poller.start()
    try:
        time.sleep(0.6)  # the old thread's probe has returned
        alive = [t for t in threading.enumerate() if t.name == "r17"]
        assert len(alive) == 1
    finally:
        poller.stop()


# -- the registry: a node id whose lease generation starts again ---------------------------


def test_a_node_id_that_numbers_its_lease_from_1_again_is_seen_by_the_other_nodes(
    db_url: str,
) -> None:
    """b crashes, restarts (generation 2) and closes (its lease row deleted, nothing left
    to number from): its next instance was generation 1 again. On PostgreSQL the other
    node took everything of generation 1 as dead, for good (find() None, register()
    already_registered). Generations are never given twice since (review 19): the
    other node sees each instance's, higher each time."""
    with node(db_url) as a:
        seen = watched(a, "*")
        crashed = node(db_url, node_id="b")
        stop_heartbeat(crashed)  # killed
        with node(db_url, node_id="b") as restarted:  # waits for the lapse
            first = crashed.service_registry.lease_generation or 0
            second = restarted.service_registry.lease_generation or 0
            assert second > first
            crashed.close()
        with node(db_url, node_id="b") as again:
            assert (again.service_registry.lease_generation or 0) > second
            again.service_registry.register("svc", "http://b")
            again.service_registry.join("grp", "http://b", member_id="m")
            wait_for(lambda: a.service_registry.find("svc") is not None)
            wait_for(lambda: len(a.service_registry.members("grp")) == 1)
            # Ends registered (on a loaded machine SQLite's poll may bring the renewal of
            # generation 1 after its row: a sweep between tells it expired first).
            wait_for(lambda: kinds(seen, "svc")[-1:] == ["register"])


def test_a_full_sqlite_disk_is_unavailable_as_postgresqls_is(tmp_path: Path) -> None:
    """It was a refusal: a subscription whose checkpoint met a disk full for a moment
    failed for good (PostgreSQL's disk full, class 53, was retried)."""
    db = sqlite3.connect(tmp_path / "small.db")
    db.execute("CREATE TABLE t (x TEXT)")
    db.execute("PRAGMA max_page_count = 3")  # SQLite's own "database or disk is full"
    with pytest.raises(sqlite3.OperationalError) as full:
        for _ in range(100):
            db.execute("INSERT INTO t VALUES (?)", ("x" * 4000,))
    db.close()
    error = translate(full.value, "sqlite:///small.db")
    assert isinstance(error, StorageUnavailableError), error


def test_a_stopped_subscription_forgets_the_fault_it_was_retrying(
    fdn: Foundation, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = fdn.database.execute

    def execute(sql: str, params: Any = None) -> Any:
        if "checkpoint" in sql and params and params.get("checkpoint"):
            raise StorageUnavailableError("the database is down (simulated)")
        return real(sql, params)

    monkeypatch.setattr(fdn.database, "execute", execute)
    fdn.events.store({"type": "charge"})
    sub = fdn.events.subscribe("billing", lambda e: None, **SUB)
    wait_for(lambda: sub.status.last_error is not None)
    sub.stop()
    assert sub.status.state == "stopped" and sub.status.last_error is None


def test_an_int_enum_breaker_is_not_the_int_it_equals(fdn: Foundation) -> None:
    class P(enum.IntEnum):
        A = 1

    fdn.circuit_breaker.get(P.A)
    with pytest.raises(FoundationError) as refused:
        fdn.circuit_breaker.get(1)  # no name (it was the breaker "A", from the cache)
    assert refused.value.code == "validation_error"


def test_an_export_keeps_what_the_file_was_hard_links_owner_long_names(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with Foundation(url) as fdn:
        fdn.events.store({"type": "t"})
    linked, other = tmp_path / "backup.jsonl", tmp_path / "same.jsonl"
    linked.write_text("old\n")
    os.link(linked, other)
    ok(url, "events", "export", str(linked))  # written in place: both names see it
    assert other.read_text() == linked.read_text() != "old\n"

    long = tmp_path / ("e" * 250 + ".jsonl")[:255]  # a name as long as names go
    ok(url, "events", "export", str(long))
    assert long.read_text() == linked.read_text()

    if os.getuid() == 0:  # only root may give a file to another owner
        owned = tmp_path / "owned.jsonl"
        owned.write_text("old\n")
        os.chown(owned, 65534, 65534)
        ok(url, "events", "export", str(owned))
        assert (owned.stat().st_uid, owned.stat().st_gid) == (65534, 65534)
        assert owned.read_text() == linked.read_text()


def test_an_export_in_place_touches_nothing_until_it_has_events(tmp_path: Path) -> None:
    """FILE written as it is (here: hard links) was emptied before the database was even
    reached; a descriptor's file (/proc/self/fd/N, /dev/stdout) was replaced by a rename
    (or refused, for a pipe), and the summary went into it."""
    backup = tmp_path / "backup.jsonl"
    backup.write_text("old\n")
    os.link(backup, tmp_path / "other-name.jsonl")
    missing = f"sqlite:///{tmp_path / 'missing.db'}"
    result = fails(missing, "not_found", "events", "export", str(backup))
    assert f"nothing was exported ({backup} is as it was)" in result.stderr
    assert backup.read_text() == "old\n"

    url = f"sqlite:///{tmp_path / 'app.db'}"
    with Foundation(url) as fdn:
        fdn.events.store_many([{"type": "t"}, {"type": "t"}])
    log = tmp_path / "app.log"
    with log.open("a") as appended:
        appended.write("kept\n")
        appended.flush()
        result = run(url, "events", "export", f"/proc/self/fd/{appended.fileno()}")
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr.startswith("exported 2 events to")  # (not into the file)
    lines = log.read_text().splitlines()
    assert lines[0] == "kept" and len(lines) == 3


def test_a_node_ids_new_instance_read_before_the_old_ones_release_is_live() -> None:
    """The cache, as a feed that fell behind drives it: rows read now belong to node id X's
    new instance (lease generation 1 again), while the old one's (generation 2) release
    and renewals are still to be applied. Its names were taken as dead for good."""
    from foundation.service_registry._state import RegistryState

    now = time.time()
    at = datetime.fromtimestamp(now, UTC)

    def entry(state: RegistryState, generation: int, epoch: int) -> Any:
        row = ("n", '"addr"', "{}", "X", generation, epoch, epoch, at, None)
        return state.make_entry(row, json.loads, lambda value: value)

    for backend in ("postgresql", "sqlite"):
        state = RegistryState("observer")
        state.refusal = None
        state.apply_leases([("X", 2, now + 10)])
        state.apply_entry(entry(state, 2, 1), "n", 1, "remote")
        # The close's notification reads the new instance's row, and its lease with it
        # (PostgreSQL), or a poll reads the lease table as it is now (SQLite).
        if backend == "postgresql":
            assert state.generation_behind("X", 1)
        state.apply_leases([("X", 1, now + 10)])
        changes = state.apply_entry(entry(state, 1, 2), "n", 2, "remote")
        assert [c.kind for c in changes] == ["register"]
        if backend == "postgresql":  # what the old instance's notifications still say
            state.apply_lease("X", 2, now + 20)
            state.apply_lease("X", 2, 0.0)
        else:
            state.replace_leases([("X", 1, now + 10)])
        assert state.lookup("n").epoch == 2, backend
        assert state.leases()["X"] == (1, now + 10)
        assert not [c for c in state.sweep() if c.kind == "expired"]


def test_an_envelope_holding_the_registered_models_instance_is_taken_as_a_dict_is(
    fdn: Foundation,
) -> None:
    """Its JSON form by field name was validated again: refused by a model read by alias
    ("orderId: Field required") or a strict one."""

    class OrderPlaced(pydantic.BaseModel):
        order_id: str = pydantic.Field(alias="orderId")
        at: datetime

        model_config = pydantic.ConfigDict(strict=True)

    class Envelope(pydantic.BaseModel):
        type: str
        data: OrderPlaced

    fdn.events.register_type("order_placed", OrderPlaced)
    placed = OrderPlaced(orderId="7", at=datetime(2024, 1, 1, tzinfo=UTC))
    record = fdn.events.store(Envelope(type="order_placed", data=placed))
    assert record.data == fdn.events.store({"type": "order_placed", "data": placed}).data
    assert fdn.events.decode(record) == placed


def test_a_new_instance_under_the_same_generation_number_is_taken_at_the_next_resync() -> None:
    """PostgreSQL, a feed that fell behind several restarts of node id X: the old
    instance's release read the new one's rows (the same generation number), and their
    entries hung off the old, released lease for good."""
    from foundation.service_registry._state import RegistryState

    now = time.time()
    at = datetime.fromtimestamp(now, UTC)

    def entry(state: RegistryState, epoch: int) -> Any:
        row = ("n", '"addr"', "{}", "X", 3, epoch, epoch, at, None)
        return state.make_entry(row, json.loads, lambda value: value)

    state = RegistryState("observer")
    state.refusal = None
    state.apply_leases([("X", 3, now + 10)])
    state.apply_entry(entry(state, 1), "n", 1, "remote")
    state.apply_entry(entry(state, 4), "n", 4, "remote")  # the new instance's row, read late
    state.apply_lease("X", 3, 0.0)  # the old one's release: a name still on its lease
    assert state.released_holding is not None  # (the feed reads X's lease: a resync here)
    for generation in (1, 2, 3):  # the instances since: crashed, crashed, live
        state.apply_lease("X", generation, now + 10)
    mark = state.mark()  # the resync the feed was asked for
    state.apply_leases([("X", 3, now + 10)])
    changes = state.replace_entries([entry(state, 4)], [], mark)
    changes += state.replace_leases([("X", 3, now + 10)])
    assert [c.kind for c in changes] == ["register"]
    assert state.lookup("n").epoch == 4


def test_a_regular_file_under_dev_is_replaced_not_appended_to(tmp_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm here: the case needs a regular file under /dev")
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with Foundation(url) as fdn:
        fdn.events.store_many([{"type": "t"}, {"type": "t"}])
    backup = shm / f"foundation-r17-{uuid.uuid4().hex}.jsonl"
    try:
        ok(url, "events", "export", str(backup))
        ok(url, "events", "export", str(backup))
        assert len(backup.read_text().splitlines()) == 2
    finally:
        backup.unlink(missing_ok=True)


def test_a_released_lease_read_again_as_the_next_instances_tells_its_names_live() -> None:
    """The observer stood still past the old instance's lease (its names told expired),
    then read the new instance's rows, under the same generation number, on that lease:
    once the lease is read again as the new instance's, its names are told registered."""
    from foundation.service_registry._state import RegistryState

    now = time.time()
    at = datetime.fromtimestamp(now, UTC)
    state = RegistryState("observer")
    state.refusal = None
    state.apply_leases([("X", 3, now - 1)])  # lapsed while this node stood still
    row = ("n", '"addr"', "{}", "X", 3, 4, 4, at, None)
    state.apply_entry(state.make_entry(row, json.loads, lambda v: v), "n", 4, "remote")
    state.apply_lease("X", 3, 0.0)  # the old instance's release
    assert state.released_holding is not None
    changes = state.apply_lease("X", 3, now + 10)  # the table: the new instance's lease
    assert [(c.kind, c.name) for c in changes] == [("register", "n")]
    assert state.lookup("n").epoch == 4


def test_a_name_taken_over_after_its_holders_close_costs_no_resync(db_url: str) -> None:
    """The waiting node's own register of the name was in flight when the holder's lease
    deletion came: taken for a lease read late, it resynced every cache on most handovers."""
    with node(db_url) as standby:
        holder = node(db_url)
        holder.service_registry.register("leader", "http://holder")
        before = standby.feed.resyncs
        taken = threading.Event()

        def take() -> None:
            while not taken.is_set():
                with contextlib.suppress(AlreadyRegisteredError):
                    standby.service_registry.register("leader", "http://standby")
                    taken.set()

        thread = threading.Thread(target=take)
        thread.start()
        time.sleep(0.05)
        holder.close()
        thread.join(10)
        assert taken.is_set() and standby.service_registry.owns("leader")
        time.sleep(0.3)
        assert standby.feed.resyncs == before


def test_a_lease_notification_older_than_the_lease_read_since_is_stale(db_url: str) -> None:
    """A watcher a few restarts behind read node id X's lease (its next instance's) and
    then applied the older notifications queued before that read: a generation the
    table no longer holds replaced the live one, whose names were dead for good."""
    with node(db_url) as observer, node(db_url, node_id="X") as x:
        generation = x.service_registry.lease_generation
        reg = observer.service_registry
        wait_for(lambda: reg._state.live_generation("X") == generation)
        assert reg._stale_lease(observer.database, "X", generation + 1)  # the table: not so
        assert not reg._stale_lease(observer.database, "X", generation)
