"""Review 18: what a paused holder tells when its node id was taken.

* A holder paused past its TTL while a new process of its node id started and registered
  one of its names again told that name ``lost`` with no new owner (``None``): its watchers
  ended on "nobody holds it" while ``lookup`` gave the new instance's entry.
* A ``lost`` named a new owner already dead (a taker killed since): watchers ended on an
  owner ``lookup`` did not give. A closing instance whose release waited past its TTL
  deleted the members a new instance of its node id had joined meanwhile (PostgreSQL).
  ``join`` called a bad group "a registry name".
* A retry of a recorded event id with ``causation_id`` None (or left out) returned the
  original, whose causation is another (an import said such a line already recorded);
  ``get`` with 101 types said "not list".
* A shared rate-limit decision that waited for a lock (SQLite's write lock, a PostgreSQL
  row lock) was judged at the time before the wait: a key whose window ended meanwhile was
  refused, with a ``reset_at`` already past.
* PostgreSQL: a time of ``-infinity`` written with plain SQL in a group member's row took
  a running node's change feed down for good (the driver cannot load it; the feed took it
  for a lost connection), and stopped every new node; tables took such times, and a config
  row of revision 0 no node ever read (migration 0023 refuses both).
* SQLite keeps text written by hand in an INTEGER or DATETIME column: a node's start, a
  shared limit and ``subscribe`` then raised a raw ``ValueError`` (every CLI command a
  traceback); a checkpoint below 0 failed the subscription with a message about a query.
* Plain ``alembic upgrade head`` with a mistyped URL or setting, or a server it could not
  reach, printed a traceback.

Each test failed on the commit before its fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from foundation import (
    AlreadyRegisteredError,
    AsyncFoundation,
    ConfigError,
    EventError,
    Foundation,
    StorageError,
    ValidationError,
)
from foundation.database import migrate as migrations
from foundation.database.url import DatabaseURL
from tests.helpers import async_wait_for, wait_for
from tests.test_cli import fails
from tests.test_core_review import plain_sql
from tests.test_migrations import run_alembic
from tests.test_registry import drain, node, stop_heartbeat
from tests.test_registry_async import freeze
from tests.test_registry_review3 import anode, kinds, watched


def test_a_name_the_new_instance_of_the_node_id_took_is_lost_to_it(db_url: str) -> None:
    old = node(db_url, node_id="web")
    try:
        seen = watched(old, "svc")
        old.service_registry.register("svc", "http://old")
        stop_heartbeat(old)  # paused past its TTL; a new process of the same id starts
        with node(db_url, node_id="web") as new:
            taken = new.service_registry.register("svc", "http://new")
            wait_for(lambda: kinds(seen)[-1:] == ["register"] and len(seen) > 2)
            with pytest.raises(ConfigError):
                old.service_registry.heartbeat()
            wait_for(lambda: kinds(seen)[-1:] == ["lost"])
            assert kinds(seen) == ["register", "expired", "register", "lost"]
            assert seen[-1].entry is not None and seen[-1].entry.epoch == taken.epoch
            assert seen[-1].entry == old.service_registry.lookup("svc")
            assert old.service_registry.lookup("svc").address == "http://new"
    finally:
        old.close()


async def test_async_a_name_the_new_instance_of_the_node_id_took_is_lost_to_it(
    db_url: str,
) -> None:
    old = anode(db_url, node_id="web")
    await old.open()
    try:
        seen = watched(old, "svc")
        await old.service_registry.register("svc", "http://old")
        await freeze(old)
        async with anode(db_url, node_id="web") as new:
            taken = await new.service_registry.register("svc", "http://new")
            await async_wait_for(lambda: kinds(seen)[-1:] == ["register"] and len(seen) > 2)
            with pytest.raises(ConfigError):
                await old.service_registry.heartbeat()
            await async_wait_for(lambda: kinds(seen)[-1:] == ["lost"])
            await asyncio.sleep(0.1)  # nothing more is told
            assert kinds(seen) == ["register", "expired", "register", "lost"]
            assert seen[-1].entry is not None and seen[-1].entry.epoch == taken.epoch
            assert seen[-1].entry == old.service_registry.lookup("svc")
    finally:
        await old.close()


# -- events: the causation of a retry --------------------------------------------------


def test_a_retry_without_the_recorded_causation_is_refused(fdn: Foundation) -> None:
    first = fdn.events.store({"type": "paid", "data": {}, "causation_id": "order-1"})
    for retry in ({"causation_id": None}, {}, {"causation_id": "order-2"}):
        with pytest.raises(EventError) as caught:
            fdn.events.store({"id": first.id, "type": "paid", "data": {}, **retry})
        assert caught.value.context["fields"] == ["causation_id"]
    again = {"id": first.id, "type": "paid", "data": {}, "causation_id": "order-1"}
    assert fdn.events.store(again) == first
    plain = fdn.events.store({"type": "paid", "data": {}})
    with pytest.raises(EventError):
        fdn.events.store({"id": plain.id, "type": "paid", "data": {}, "causation_id": "x"})
    assert fdn.events.store({"id": plain.id, "type": "paid", "data": {}, "causation_id": None})
    assert len(fdn.events.get()) == 2


async def test_async_a_retry_without_the_recorded_causation_is_refused(db_url: str) -> None:
    async with AsyncFoundation(db_url, migrate="skip") as fdn:
        first = await fdn.events.store({"type": "paid", "data": {}, "causation_id": "c"})
        with pytest.raises(EventError):
            await fdn.events.store_many([{"id": first.id, "type": "paid", "data": {}}])
        assert len(await fdn.events.get()) == 1


def test_an_import_line_without_the_recorded_causation_is_refused(
    db_url: str, tmp_path: Path
) -> None:
    with Foundation(db_url, migrate="skip") as fdn:
        first = fdn.events.store({"type": "paid", "data": {}, "causation_id": "order-1"})
    line = {"id": str(first.id), "type": "paid", "data": {}, "causation_id": None}
    lines = tmp_path / "events.jsonl"
    lines.write_text(json.dumps(line) + "\n")
    fails(db_url, "event_error", "events", "import", str(lines))


def test_too_many_types_are_counted(fdn: Foundation) -> None:
    with pytest.raises(EventError, match="not a list of 101"):
        fdn.events.get(type=[str(uuid.uuid4()) for _ in range(101)])
    with pytest.raises(EventError, match="not an empty list"):
        fdn.events.get(type=[])


# -- plain alembic: a setting or a database it cannot use --------------------------------


@pytest.mark.parametrize(
    ("env", "said"),
    [
        ({"FOUNDATION_DATABASE_URL": "bogus://x"}, "[config_error] unsupported database"),
        (
            {"FOUNDATION_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/x"},
            "[storage_unavailable] the database at",
        ),
        ({"FOUNDATION_POOL_MAX_SIZE": "many"}, "[config_error] invalid Foundation setting"),
    ],
)
def test_plain_alembic_says_what_it_cannot_use_in_one_line(
    tmp_path: Path, env: dict[str, str], said: str
) -> None:
    env = {"FOUNDATION_DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}", **env}
    done = run_alembic("upgrade", "head", **env)
    assert done.returncode != 0
    assert f"FAILED: {said}" in done.stdout + done.stderr  # as alembic tells its own
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / "app.db").exists()


# -- the limiter: a decision that waited for a lock --------------------------------------


@contextlib.contextmanager
def key_locked(db_url: str, key: str, seconds: float) -> Iterator[None]:
    """Another client holds what a decision on ``key`` waits for, ``seconds`` long."""
    url = DatabaseURL.parse(db_url)
    ready = threading.Event()

    def hold() -> None:
        if url.backend == "sqlite":
            db = sqlite3.connect(url.sqlite_path, isolation_level=None)
            db.execute("BEGIN IMMEDIATE")
            ready.set()
            time.sleep(seconds)
            db.execute("COMMIT")
            db.close()
        else:
            with psycopg.connect(url.conninfo) as db:
                db.execute("SELECT 1 FROM foundation_rate_limits WHERE key = %s FOR UPDATE", [key])
                ready.set()
                time.sleep(seconds)

    holder = threading.Thread(target=hold)
    holder.start()
    assert ready.wait(10)
    try:
        yield
    finally:
        holder.join()


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_window", "token_bucket"])
def test_a_window_that_ended_while_the_decision_waited_admits(
    fdn: Foundation, db_url: str, algorithm: str
) -> None:
    rl = fdn.rate_limiter
    while rl.try_acquire("k", 1, 200, algorithm).allowed:
        pass
    with key_locked(db_url, "k", 0.9):  # longer than the window and the one before it
        decision = rl.try_acquire("k", 1, 200, algorithm)
    assert decision.allowed and decision.retry_after == 0
    assert decision.remaining == 0  # counted, once


async def test_async_a_window_that_ended_while_the_decision_waited_admits(
    afdn: AsyncFoundation, db_url: str
) -> None:
    rl = afdn.rate_limiter
    while (await rl.try_acquire("k", 1, 200)).allowed:
        pass
    with key_locked(db_url, "k", 0.9):
        decision = await rl.try_acquire("k", 1, 200)
    assert decision.allowed


# -- rows no reader can load ------------------------------------------------------------


def test_a_row_the_driver_cannot_load_does_not_take_the_feed_down(pg_url: str) -> None:
    with Foundation(pg_url, migrate="check", poll_interval_ms=5) as fdn:
        fdn.config.set("port", 1)
        fdn.service_registry.join("workers", "http://w")
        # As a database before 0023 took it:
        plain_sql(
            pg_url,
            "ALTER TABLE foundation_registry_members"
            " DISABLE TRIGGER foundation_registry_members_times_readable",
        )
        plain_sql(pg_url, "UPDATE foundation_registry_members SET joined_at = '-infinity'")
        plain_sql(pg_url, "UPDATE foundation_config SET value = '2' WHERE key = 'port'")
        wait_for(lambda: fdn.config.get("port") == 2)
        assert fdn.feed.connected


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE foundation_leases SET expires_at = 'infinity'",
        "UPDATE foundation_leases SET renewed_at = '-infinity'",
        "UPDATE foundation_registry SET registered_at = 'infinity'",
        "UPDATE foundation_registry SET expires_at = '-infinity'",
        "UPDATE foundation_registry_members SET joined_at = '-infinity'",
        "UPDATE foundation_registry_members SET joined_at = '10000-01-01+00'",
        "UPDATE foundation_registry SET updated_at = '0001-06-01 BC'",
        "UPDATE foundation_leases SET started_at = '9999-12-31+00'",
        # (an UPDATE by hand is stamped now())
        "INSERT INTO foundation_config (key, value, deleted, revision, updated_at, updated_by)"
        " VALUES ('k', '1', false, 1, 'infinity', 'ops')",
        "UPDATE foundation_subscriptions SET lease_expires_at = 'infinity'",
    ],
)
def test_postgres_refuses_times_no_reader_can_load(pg_url: str, statement: str) -> None:
    with Foundation(pg_url, migrate="check") as fdn:
        fdn.service_registry.register("svc", "http://a", ttl=60_000)
        fdn.service_registry.join("workers", "http://a")
        fdn.config.set("port", 1)
        fdn.events.subscribe("projector", lambda event: None)
        with pytest.raises(
            psycopg.errors.CheckViolation, match="must be times between the years 2 and 9998"
        ):
            plain_sql(pg_url, statement)
        assert fdn.service_registry.lookup("svc").address == "http://a"


@pytest.mark.parametrize("revision", ["0", "-3"])
def test_a_config_row_must_count_from_revision_one(db_url: str, revision: str) -> None:
    insert = (
        "INSERT INTO foundation_config (key, value, deleted, revision, updated_at, updated_by)"
        f" VALUES ('port', '8080', false, {revision}, CURRENT_TIMESTAMP, 'ops')"
    )
    with pytest.raises((psycopg.errors.CheckViolation, sqlite3.IntegrityError)):
        plain_sql(db_url, insert)
    with Foundation(db_url, migrate="check") as fdn:
        fdn.config.set("port", 1)
        with pytest.raises((psycopg.errors.CheckViolation, sqlite3.IntegrityError)):
            plain_sql(db_url, f"UPDATE foundation_config SET revision = {revision}")
        assert fdn.config.get("port") == 1
        assert [h.revision for h in fdn.config.history("port")] == [1]
    if DatabaseURL.parse(db_url).backend == "sqlite":  # any type goes in, else
        with pytest.raises(sqlite3.IntegrityError):
            plain_sql(db_url, "UPDATE foundation_config SET revision = 'abc'")


# -- registry: the dead, the closing, and groups ------------------------------------------


def test_a_name_taken_by_a_node_since_dead_is_lost_to_nobody(db_url: str) -> None:
    with node(db_url) as a, node(db_url) as b:
        seen = watched(a, "svc")
        a.service_registry.register("svc", "http://a")
        stop_heartbeat(a)  # paused past its TTL

        def taken() -> bool:
            with contextlib.suppress(AlreadyRegisteredError):  # the table's clock decides
                return b.service_registry.register("svc", "http://b") is not None
            return False

        wait_for(taken, timeout=5)
        stop_heartbeat(b)  # killed: its lease runs out too
        wait_for(lambda: a.service_registry.find("svc") is None and len(seen) >= 3, timeout=5)
        assert a.service_registry.heartbeat() is False  # back: a recovery
        wait_for(lambda: "lost" in kinds(seen))
        drain(a.service_registry)
        (lost,) = [c for c in seen if c.kind == "lost"]
        assert lost.entry is None
        assert a.service_registry.find("svc") is None


@contextlib.contextmanager
def row_locked(pg_url: str, name: str) -> Iterator[Any]:
    """Another session holds the row of ``name``: a release of it waits until the end."""
    with psycopg.connect(DatabaseURL.parse(pg_url).conninfo) as db:
        db.execute("SELECT 1 FROM foundation_registry WHERE name = %s FOR UPDATE", [name])
        yield db


def test_a_release_that_waited_past_the_ttl_leaves_the_next_instances_members(
    pg_url: str,
) -> None:
    old = node(pg_url, node_id="C")
    old.service_registry.register("svc", "http://old")
    old.service_registry.join("workers", "http://old", member_id="old")
    with row_locked(pg_url, "svc") as lock:
        closer = threading.Thread(target=old.close)
        closer.start()
        with node(pg_url, node_id="C") as new:  # takes the lease once the old one lapsed
            new.service_registry.join("workers", "http://new", member_id="new")
            lock.commit()
            closer.join()
            assert [m.member_id for m in new.service_registry.members("workers")] == ["new"]
            rows = plain_sql(pg_url, "SELECT member_id FROM foundation_registry_members")
            assert rows == [("new",)]


def test_join_names_the_group_in_its_refusals(fdn: Foundation) -> None:
    with pytest.raises(ValidationError, match="a group name must not be empty"):
        fdn.service_registry.join("", "http://a")
    with pytest.raises(ValidationError, match="address of a member of group 'g'"):
        fdn.service_registry.join("g", None)


# -- SQLite: a value of another type, written by hand --------------------------------------


@pytest.mark.parametrize(
    ("statement", "tables"),
    [
        ("UPDATE foundation_registry SET epoch = 'abc'", "foundation_registry"),
        ("UPDATE foundation_leases SET expires_at = 'never'", "foundation_leases"),
        ("UPDATE foundation_breakers SET failures = 'many'", "foundation_breakers"),
    ],
)
def test_sqlite_a_value_no_reader_can_convert_is_named_at_start(
    tmp_path: Path, statement: str, tables: str
) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with Foundation(url, node_id="a") as fdn:
        fdn.service_registry.register("svc", "http://a")
        with contextlib.suppress(ZeroDivisionError):
            fdn.circuit_breaker.execute(lambda: 1 / 0, name="flaky", max_failures=1)
        plain_sql(url, statement)
        with pytest.raises(StorageError, match=f"a row of .*{tables}.* cannot read"):
            Foundation(url, node_id="b")
        fails(url, "storage_error", "config", "get", "port")  # one line, no traceback


def test_sqlite_a_count_no_reader_can_convert_is_named(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with Foundation(url) as fdn:
        fdn.rate_limiter.try_acquire("api", 5, 60_000)
        plain_sql(url, "UPDATE foundation_rate_limits SET count = 'x'")
        with pytest.raises(StorageError, match="foundation_rate_limits"):
            fdn.rate_limiter.try_acquire("api", 5, 60_000)


def test_a_checkpoint_that_is_no_position_is_named_before_anything_is_written(
    db_url: str,
) -> None:
    checkpoints = ["-7"]
    if DatabaseURL.parse(db_url).backend == "sqlite":
        checkpoints.append("'x'")  # (PostgreSQL's bigint takes no text)
    with Foundation(db_url, migrate="check") as fdn:
        fdn.events.subscribe("shipping", lambda event: None).stop()
        for checkpoint in checkpoints:
            plain_sql(db_url, f"UPDATE foundation_subscriptions SET checkpoint = {checkpoint}")
            before = plain_sql(db_url, "SELECT * FROM foundation_subscriptions")
            with pytest.raises(StorageError, match=r"checkpoint of .* in foundation_subscr"):
                fdn.events.subscribe("shipping", lambda event: None)
            assert plain_sql(db_url, "SELECT * FROM foundation_subscriptions") == before


MEMBERS = "foundation_registry_members"


def test_a_paused_instance_leaves_nothing_of_the_next_instance_of_its_node_id(
    db_url: str,
) -> None:
    old = node(db_url, node_id="C")
    try:
        old.service_registry.join("workers", "http://old", member_id="m")
        stop_heartbeat(old)  # paused past its TTL
        with node(db_url, node_id="C") as new:  # takes the node id's lease once it lapsed
            new.service_registry.join("workers", "http://new", member_id="m")
            old.service_registry.leave("workers", "m")  # back: leaves its own, if any
            assert [m.address for m in new.service_registry.members("workers")] == ["http://new"]
            rows = plain_sql(
                db_url, "SELECT CAST(address AS TEXT) FROM foundation_registry_members"
            )
            assert rows == [('"http://new"',)]
    finally:
        old.close()


def test_a_config_row_below_revision_one_is_read_once_upgraded(empty_db_url: str) -> None:
    migrations.upgrade(empty_db_url, "0022")
    plain_sql(
        empty_db_url,
        "INSERT INTO foundation_config (key, value, deleted, revision, updated_at, updated_by)"
        " VALUES ('port', '8080', false, -3, CURRENT_TIMESTAMP, 'ops')",
    )
    migrations.upgrade(empty_db_url)
    with Foundation(empty_db_url, migrate="check") as fdn:
        assert fdn.config.get("port") == 8080
        repaired = fdn.config.history("port")[0]  # newest first: by the upgrade, now
        assert repaired.revision == 1 and repaired.changed_by.startswith("sql")
        assert repaired.changed_at.year >= 2026
        fdn.config.set("port", 9090)
        assert fdn.config.history("port")[0].revision == 2  # newest first


def test_a_cache_whose_resync_failed_on_a_row_catches_up_once_it_is_put_right(
    pg_url: str,
) -> None:
    with (
        Foundation(pg_url, migrate="check", node_id="a") as a,
        Foundation(pg_url, migrate="check", node_id="b") as b,
    ):
        a.feed.RESYNC_RETRY_S = 0.2  # type: ignore[misc]
        b.service_registry.register("x", "http://x")
        b.service_registry.register("y", "http://y")
        wait_for(lambda: a.service_registry.find("y") is not None)
        plain_sql(
            pg_url,
            "ALTER TABLE foundation_registry DISABLE TRIGGER foundation_registry_times_readable",
        )  # as a database before 0023
        plain_sql(
            pg_url, "UPDATE foundation_registry SET registered_at = 'infinity' WHERE name = 'y'"
        )
        # A's feed reconnects and resyncs, and meets the row (its NOTIFY of the update too)
        plain_sql(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'foundation-listen:a'",
        )
        b.service_registry.unregister("x")
        wait_for(lambda: a.feed.resyncs >= 2 and a.feed.connected)
        plain_sql(pg_url, "UPDATE foundation_registry SET registered_at = now() WHERE name = 'y'")
        wait_for(lambda: a.service_registry.find("x") is None)
        assert a.service_registry.lookup("y").address == "http://y"


def test_sqlite_rows_read_back_or_listed_name_what_they_cannot_convert(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with Foundation(url) as fdn:
        fdn.service_registry.join("g", "http://m", member_id="m1")
        plain_sql(url, "UPDATE foundation_registry_members SET joined_at = 'yesterday'")
        with pytest.raises(StorageError, match=r"foundation_registry_members \(group 'g'"):
            fdn.service_registry.join("g", "http://m2", member_id="m1")
        fdn.rate_limiter.try_acquire("api", 5, 60_000)
        plain_sql(url, "UPDATE foundation_rate_limits SET window_start_ms = 'x'")
        fails(url, "storage_error", "limits")  # one line, no traceback


def test_a_run_built_in_code_raises_the_foundation_error(tmp_path: Path) -> None:
    from alembic import command

    from foundation import StorageUnavailableError

    with pytest.raises(StorageUnavailableError):
        command.upgrade(
            migrations.alembic_config("postgresql+psycopg://postgres@127.0.0.1:1/x"), "head"
        )
