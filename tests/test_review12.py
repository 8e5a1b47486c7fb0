"""Review 12, on SQLite and PostgreSQL, sync and async: the registry's known loose ends (a
float ttl, a name ending in ``*``, the groups a node sees and the CLI's view of them);
``get(after=…, before=…)`` by time whatever text SQLite holds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sqlite3
import sys
import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import conninfo_to_dict

from foundation import AsyncFoundation, Foundation
from foundation.cli import main
from foundation.database import migrate
from foundation.database.codec import SQLiteCodec
from foundation.database.url import DatabaseURL
from foundation.errors import EventError, StorageUnavailableError, ValidationError
from foundation.events._store import SQLITE_OWN_TIME
from tests.cut_proxy import cut_proxy
from tests.helpers import async_wait_for, wait_for


def test_a_float_ttl_is_milliseconds_as_the_settings_take_them(fdn: Foundation) -> None:
    reg = fdn.service_registry
    entry = reg.register("float.ttl", "a", ttl=2500.4)  # under the lease's 30 s
    assert entry.expires_at is not None
    assert entry.expires_at - entry.registered_at == timedelta(milliseconds=2500)
    tiny = reg.register("float.tiny", "a", ttl=0.2)  # under a millisecond is one
    assert tiny.expires_at - tiny.registered_at == timedelta(milliseconds=1)
    for bad in (0.0, -1.5, float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="ttl must be positive and finite") as err:
            reg.register("float.bad", "a", ttl=bad)
        assert err.value.context["ttl"] == repr(bad)
    assert reg.find("float.bad") is None


async def test_async_a_float_ttl_is_milliseconds(afdn: AsyncFoundation) -> None:
    entry = await afdn.service_registry.register("float.ttl", "a", ttl=1500.0)
    assert entry.expires_at - entry.registered_at == timedelta(milliseconds=1500)
    with pytest.raises(ValidationError, match="positive and finite"):
        await afdn.service_registry.register("float.bad", "a", ttl=float("-inf"))


def test_a_name_or_group_ending_in_a_star_is_refused(fdn: Foundation) -> None:
    """watch("svc*") is the prefix svc: a name "svc*" could never be watched alone."""
    reg = fdn.service_registry
    for call in (
        lambda: reg.register("svc*", "a"),
        lambda: reg.register("svc*", object(), local=True),
        lambda: reg.join("pool*", "a"),
    ):
        with pytest.raises(ValidationError, match=r"must not end in '\*'"):
            call()
    assert reg.list() == [] and reg.groups() == []
    reg.register("a*b", "ok")  # a star elsewhere is text like any other
    assert reg.lookup("a*b").address == "ok"


async def test_async_a_name_ending_in_a_star_is_refused(afdn: AsyncFoundation) -> None:
    with pytest.raises(ValidationError, match=r"must not end in '\*'"):
        await afdn.service_registry.register("svc*", "a")
    with pytest.raises(ValidationError, match=r"must not end in '\*'"):
        await afdn.service_registry.join("pool*", "a")


def test_groups_lists_the_groups_with_a_live_member_on_every_node(db_url: str) -> None:
    with Foundation(db_url) as one, Foundation(db_url) as two:
        one.service_registry.join("pool.b", "b1", {"zone": "x"})
        one.service_registry.join("pool.a", "a1")
        two.service_registry.join("pool.a", "a2")
        two.service_registry.join("other", "o")
        for fdn in (one, two):
            wait_for(lambda fdn=fdn: len(fdn.service_registry.groups()) == 3)
            assert fdn.service_registry.groups() == ["other", "pool.a", "pool.b"]
            assert fdn.service_registry.groups("pool.") == ["pool.a", "pool.b"]
        one.service_registry.leave("pool.b")
        wait_for(lambda: "pool.b" not in two.service_registry.groups())
        assert two.service_registry.groups() == ["other", "pool.a"]
        with pytest.raises(ValidationError, match="prefix must be a string"):
            one.service_registry.groups(1)  # type: ignore[arg-type]


async def test_async_groups(afdn: AsyncFoundation) -> None:
    await afdn.service_registry.join("g.one", "a")
    assert afdn.service_registry.groups() == ["g.one"]
    await afdn.service_registry.leave("g.one")
    assert afdn.service_registry.groups() == []


def test_cli_lists_groups_and_shows_members_with_their_metadata(db_url: str) -> None:
    with Foundation(db_url) as node:
        node.service_registry.register("svc.api", "http://a")
        node.service_registry.join("workers", "w1", {"zone": "eu"}, member_id="m1")
        node.service_registry.join("workers", "w2", member_id="m2")

        def cli(*args: str) -> tuple[str, str]:
            result = CliRunner().invoke(
                main, ["-d", db_url, "registry", *args], env={"COLUMNS": "200"}
            )
            assert result.exit_code == 0, result.output
            return result.stdout, result.stderr

        out, err = cli("list")
        assert "svc.api" in out and "workers" not in out
        assert "1 group has live members: registry list --groups" in err
        groups = json.loads(cli("list", "--groups", "--json")[0])
        assert [g["group"] for g in groups] == ["workers"]
        members = groups[0]["members"]
        assert [(m["member_id"], m["address"], m["metadata"]) for m in members] == [
            ("m1", "w1", {"zone": "eu"}),
            ("m2", "w2", {}),
        ]
        assert all(m["node"] == node.service_registry.node and m["expires_at"] for m in members)
        table = cli("list", "--groups")[0]
        assert "workers" in table and "m1" in table and '{"zone": "eu"}' in table
        shown = json.loads(cli("show", "workers")[0])
        assert shown["members"] == members
        assert json.loads(cli("list", "--groups", "--prefix", "x", "--json")[0]) == []


# -- events: after/before compare times, whatever text SQLite holds ----------------------

# Forms migration 0015 takes from plain SQL, whose text order is not their time order.
OTHER_FORMS = [
    "2026-11-30T12:00:00+05:00",  # 07:00 UTC
    "2026-11-30T06:00:00Z",
    "2026-11-30 02:00:00-05:00",  # 07:00 UTC
    "2026-12-01",  # midnight UTC
    "2026-12-01 00:00:00",  # the same time, CURRENT_TIMESTAMP's form
    "2026-11-30 08:00",
    "2026-11-30 07:59:59.9999999Z",  # 7 digits: the reader keeps 6
    "2026-11-30 23:30:00.5-23:30",  # 2026-12-01 23:00:00.5 UTC
    "2026-11-30 23:59:59.999999+14:00",  # an offset of 14 hours: SQLite's own limit
    "2026-11-30 00:30:00+23:59",  # the largest offsets: a day from the text's own time
    "2026-11-29 23:30:00.25-23:59",
    "2026-11-30T08:00:00.123+01:00",
]


def _plain_rows(url: str) -> None:
    """The forms above, through the driver, between events Foundation stores."""
    backend = DatabaseURL.parse(url).backend
    with Foundation(url) as fdn:
        for i, text in enumerate(OTHER_FORMS):
            fdn.events.store({"type": "own", "data": i})
            row = (str(uuid.uuid4()), f"other.{i % 2}", text)
            if backend == "sqlite":
                with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
                    conn.execute(
                        "INSERT INTO foundation_events (id, type, data, metadata, recorded_at)"
                        " VALUES (?, ?, '{}', '{}', ?)",
                        row,
                    )
            else:  # PostgreSQL takes offsets up to 15:59: the same time, in UTC
                row = (*row[:2], SQLiteCodec.load_ts(text).astimezone(UTC).isoformat())
                with psycopg.connect(DatabaseURL.parse(url).conninfo, autocommit=True) as conn:
                    conn.execute(
                        "INSERT INTO foundation_events (id, type, data, metadata, recorded_at)"
                        " VALUES (%s, %s, '{}', '{}', %s::timestamptz)",
                        row,
                    )


def _bounds() -> list[datetime]:
    utc = [SQLiteCodec.load_ts(text).astimezone(UTC) for text in OTHER_FORMS]
    near = [t + timedelta(microseconds=d) for t in utc for d in (-1, 0, 1)]
    return [*near, datetime(2026, 11, 30, 7, 30, tzinfo=UTC), datetime.now(UTC)]


def _expected(log: list[Any], criteria: dict[str, Any]) -> list[Any]:
    kept = [
        e
        for e in log
        if ("after" not in criteria or e.recorded_at > criteria["after"])
        and ("before" not in criteria or e.recorded_at < criteria["before"])
        and ("type" not in criteria or e.type == criteria["type"])
    ]
    if criteria.get("order") == "desc":
        kept.reverse()
    return [e.position for e in kept[: criteria.get("limit", 100)]]


def _time_criteria() -> list[dict[str, Any]]:
    rng = random.Random(12)
    bounds = _bounds()
    out: list[dict[str, Any]] = []
    for _ in range(150):
        criteria: dict[str, Any] = {}
        if rng.random() < 0.8:
            criteria["after"] = rng.choice(bounds)
        if "after" not in criteria or rng.random() < 0.5:
            criteria["before"] = rng.choice(bounds)
        if rng.random() < 0.3:
            criteria["type"] = rng.choice(["own", "other.0", "other.1"])
        criteria["order"] = rng.choice(["asc", "desc"])
        criteria["limit"] = rng.choice([1, 2, 3, 100])
        out.append(criteria)
    return out


def test_after_and_before_compare_times_whatever_the_text(db_url: str) -> None:
    _plain_rows(db_url)
    with Foundation(db_url, events_tail_size=0) as fdn:
        log = fdn.events.get(limit=1000)
        assert len(log) == 2 * len(OTHER_FORMS)
        for criteria in _time_criteria():
            got = [e.position for e in fdn.events.get(**criteria)]
            assert got == _expected(log, criteria), criteria
        # iter pages by position under the same time bounds
        after = datetime(2026, 11, 30, 7, 30, tzinfo=UTC)
        paged = [e.position for e in fdn.events.iter({"after": after}, batch_size=1)]
        assert paged == _expected(log, {"after": after, "limit": 1000})
        assert len(paged) >= len(OTHER_FORMS)  # every one of Foundation's, and others


async def test_async_after_and_before_compare_times(db_url: str) -> None:
    _plain_rows(db_url)
    async with AsyncFoundation(db_url, events_tail_size=0) as fdn:
        log = await fdn.events.get(limit=1000)
        for criteria in _time_criteria()[:40]:
            got = [e.position for e in await fdn.events.get(**criteria)]
            assert got == _expected(log, criteria), criteria


def test_sqlite_finds_other_forms_by_their_partial_index(tmp_path: Path) -> None:
    """Foundation's own rows stay out of it: the other rows are found without reading
    the log (the partial index of migration 0016)."""
    url = f"sqlite:///{tmp_path / 'forms.db'}"
    _plain_rows(url)
    with sqlite3.connect(tmp_path / "forms.db") as conn:
        indexed = conn.execute(
            "SELECT count(*) FROM foundation_events INDEXED BY ix_foundation_events_other_times"
            f" WHERE NOT ({SQLITE_OWN_TIME})"
        ).fetchone()[0]
    assert indexed == len(OTHER_FORMS)


# -- connections, watchers ---------------------------------------------------------------


def test_a_url_that_turns_keepalives_off_gets_no_other_dead_peer_option() -> None:
    def options(url: str) -> dict[str, str]:
        params = conninfo_to_dict(DatabaseURL.parse(url).conninfo)
        return {k: str(v) for k, v in params.items() if k not in ("host", "user", "dbname")}

    assert options("postgresql+psycopg://u@h/db?keepalives=0") == {"keepalives": "0"}
    assert options("postgresql+psycopg://u@h/db?keepalives_idle=60") == {"keepalives_idle": "60"}
    assert options("postgresql+psycopg://u@h/db")["tcp_user_timeout"] == "15000"


def test_a_sync_watcher_that_calls_sys_exit_stops_no_other(db_url: str, caplog: Any) -> None:
    with Foundation(db_url) as fdn:
        seen: list[str] = []
        fdn.service_registry.watch("x.*", lambda change: sys.exit(3))
        fdn.service_registry.watch("x.*", lambda change: seen.append(change.name))
        fdn.service_registry.register("x.a", "a")
        fdn.service_registry.register("x.b", "b")
        wait_for(lambda: seen == ["x.a", "x.b"])
        assert sum("registry watcher" in r.getMessage() for r in caplog.records) == 2


def test_a_config_watcher_of_another_node_that_calls_sys_exit(db_url: str) -> None:
    """Another node's change is told on the change feed's thread: it must live on."""
    with Foundation(db_url) as one, Foundation(db_url) as two:
        seen: list[Any] = []
        two.config.watch("k", lambda change: sys.exit(1))
        two.config.watch("k", lambda change: seen.append(change.new))
        one.config.set("k", 1)
        wait_for(lambda: seen == [1])
        one.config.set("k", 2)
        wait_for(lambda: seen == [1, 2])


async def test_an_async_watcher_that_awaits_a_cancelled_task_stops_no_other(
    db_url: str, caplog: Any
) -> None:
    async with AsyncFoundation(db_url) as fdn:
        seen: list[str] = []

        async def awaits_a_cancelled_request(change: Any) -> None:
            request = asyncio.ensure_future(asyncio.sleep(10))
            request.cancel()
            await request

        fdn.service_registry.watch("y.*", awaits_a_cancelled_request)
        fdn.service_registry.watch("y.*", lambda change: seen.append(change.name))
        await fdn.service_registry.register("y.a", "a")
        await async_wait_for(lambda: seen == ["y.a"])
        later: list[str] = []
        fdn.service_registry.watch("y.*", lambda change: later.append(change.name))
        await fdn.service_registry.register("y.b", "b")
        await async_wait_for(lambda: later == ["y.b"] and seen == ["y.a", "y.b"])
        assert sum("registry watcher" in r.getMessage() for r in caplog.records) == 2


def test_close_from_two_threads_at_once_returns_once_all_is_released(db_url: str) -> None:
    """A shutdown hook's close() and the main thread's: neither returns before the
    node's names are released (the second closed the database under the first)."""
    for _ in range(8):
        fdn = Foundation(db_url)
        names = [f"closing-{uuid.uuid4().hex[:8]}" for _ in range(3)]
        for name in names:
            fdn.service_registry.register(name, "http://x")
        fdn.events.subscribe(f"closing-{uuid.uuid4().hex[:8]}", lambda event: None)
        barrier = threading.Barrier(2)
        returned: list[list[str]] = []

        def close(
            fdn: Foundation = fdn,
            names: list[str] = names,
            barrier: threading.Barrier = barrier,
            returned: list[list[str]] = returned,
        ) -> None:
            barrier.wait()
            fdn.close()
            with Foundation(db_url, migrate="skip") as other:  # what others see then
                returned.append([n for n in names if other.service_registry.find(n)])

        threads = [threading.Thread(target=close) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert returned == [[], []]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_registry_reads_refuse_once_the_opening_loop_has_ended(db_url: str) -> None:
    async def first() -> AsyncFoundation:
        fdn = AsyncFoundation(db_url)
        await fdn.open()
        await fdn.service_registry.register("mine", "a")
        assert fdn.service_registry.lookup("mine").address == "a"  # its loop runs
        return fdn

    fdn = asyncio.run(first())
    for read in (
        lambda: fdn.service_registry.lookup("mine"),
        lambda: fdn.service_registry.find("mine"),
        lambda: fdn.service_registry.list(),
        lambda: fdn.service_registry.members("g"),
    ):
        with pytest.raises(StorageUnavailableError, match=r"event loop .* has ended"):
            read()

    async def second() -> None:
        await fdn.close()

    asyncio.run(second())
    with Foundation(db_url, migrate="skip") as other:
        assert other.service_registry.find("mine") is None  # released by close()


def test_closing_in_another_loop_ends_the_sqlite_connections_thread(tmp_path: Path) -> None:
    """One loop per job (or per test) opening and closing: no thread is left per close."""
    url = f"sqlite:///{tmp_path / 'loops.db'}"

    def workers() -> int:
        return sum("_connection_worker_thread" in t.name for t in threading.enumerate())

    before = workers()
    for _ in range(3):

        async def open_one() -> AsyncFoundation:
            fdn = AsyncFoundation(url)
            await fdn.open()
            return fdn

        fdn = asyncio.run(open_one())
        asyncio.run(fdn.close())
    wait_for(lambda: workers() == before)


@pytest.mark.parametrize("face", ["sync", "async"])
def test_after_an_outage_past_the_lease_the_new_owner_is_told_before_the_loss(
    pg_url: str, face: str
) -> None:
    """The new owner's lease reached this node with its row, not later by the feed: its
    register came a second after the loss it caused, lookup finding nobody meanwhile."""
    with cut_proxy(pg_url) as (proxy, through), Foundation(pg_url, registry_ttl_ms=1500) as b:
        settings = {"registry_ttl_ms": 1500, "connect_timeout_s": 1}
        told: list[tuple[str, str | None, str | None]] = []

        def on_change(change: Any, registry: Any) -> None:
            now = registry.find(change.name)
            told.append((change.kind, change.entry and change.entry.node, now and now.node))

        def outage() -> None:
            wait_for(lambda: b.service_registry.find("take") is not None)  # A's, seen by B
            proxy.refusing = True
            proxy.cut_all()
            wait_for(lambda: b.service_registry.find("take") is None)
            b.service_registry.register("take", "b")
            proxy.refusing = False

        def lost() -> bool:
            return any(kind == "lost" for kind, _, _ in told)

        if face == "sync":
            with Foundation(through, **settings) as a:
                a.service_registry.watch("take", lambda c: on_change(c, a.service_registry))
                a.service_registry.register("take", "a")
                outage()
                wait_for(lost, 20)
        else:

            async def run() -> None:
                async with AsyncFoundation(through, **settings) as a:
                    a.service_registry.watch("take", lambda c: on_change(c, a.service_registry))
                    await a.service_registry.register("take", "a")
                    await asyncio.to_thread(outage)
                    await async_wait_for(lost, 20)

            asyncio.run(run())
        node_b = b.service_registry.node
        at = told.index(("lost", node_b, node_b))  # lookup said B in the loss's callback
        assert ("register", node_b, node_b) in told[:at]


def test_read_stream_and_correlation_chain_refuse_a_nul(fdn: Foundation) -> None:
    """PostgreSQL's driver refused it (storage_error) for a read_stream from a version."""
    for call in (
        lambda: fdn.events.read_stream("a\x00b", from_version=2),
        lambda: fdn.events.read_stream("a\x00b"),
        lambda: fdn.events.correlation_chain("c\x00"),
    ):
        with pytest.raises(EventError, match="without NUL characters"):
            call()


async def test_async_read_stream_refuses_a_nul(afdn: AsyncFoundation) -> None:
    with pytest.raises(EventError, match="without NUL characters"):
        await afdn.events.read_stream("a\x00b", from_version=2)


# -- foundation db ------------------------------------------------------------------------


def test_two_upgrades_at_once_each_report_what_they_ran(empty_db_url: str) -> None:
    """Under the migration lock one runs every step, the other none: `db upgrade` says
    so (both said "none -> head", read before the lock)."""
    moved: list[Any] = []
    barrier = threading.Barrier(2)

    def upgrade() -> None:
        barrier.wait()
        moved.append(migrate.upgrade(empty_db_url))

    threads = [threading.Thread(target=upgrade) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(moved, key=repr) == [(None, migrate.head_revision()), None]
    assert migrate.upgrade(empty_db_url) is None  # at head: nothing ran
    assert migrate.downgrade(empty_db_url, "-1") == (
        migrate.head_revision(),
        migrate.current_revision(empty_db_url),
    )


def test_db_history_of_a_database_a_newer_release_migrated(db_url: str) -> None:
    with Foundation(db_url, migrate="skip") as fdn:
        fdn.database.execute("UPDATE foundation_alembic_version SET version_num = '9999'")
    result = CliRunner().invoke(main, ["-d", db_url, "db", "history"])
    assert result.exit_code == 1
    assert "error [schema_outdated]" in result.stderr and "9999" in result.stderr


def test_two_instances_of_two_databases_migrating_at_once(tmp_path: Path) -> None:
    """alembic's env.py context is one per process: two upgrades at once mixed them."""
    for round_ in range(3):
        errors: list[BaseException] = []
        barrier = threading.Barrier(2)

        def start(
            name: str,
            round_: int = round_,
            barrier: threading.Barrier = barrier,
            errors: list[BaseException] = errors,
        ) -> None:
            barrier.wait()
            try:
                Foundation(f"sqlite:///{tmp_path / f'{name}-{round_}.db'}").close()
            except BaseException as exc:  # reported below, with its type
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []


def test_close_reentered_on_its_own_thread_returns(db_url: str) -> None:
    """A signal handler calling close() while the main thread's close() runs: it returns
    at once (waiting for that close() would wait for itself)."""
    fdn = Foundation(db_url)
    fdn.service_registry.register("reentered", "a")
    events_close = fdn.events.close
    inner: list[str] = []

    def interrupted() -> None:  # as a signal arriving during the first step
        fdn.close()
        inner.append("returned")
        events_close()

    fdn.events.close = interrupted  # type: ignore[method-assign]
    done = threading.Thread(target=fdn.close, name="app-shutdown")
    done.start()
    done.join(30)
    assert not done.is_alive() and inner == ["returned"]
    with Foundation(db_url, migrate="skip") as other:
        assert other.service_registry.find("reentered") is None


def test_db_marks_head_on_the_revision_that_is_head() -> None:
    """Another deploy moved the schema after this run's steps: each revision shown with
    its own mark (review 12: '0016 -> 0012 (head)')."""
    from foundation.cli import _moved

    url = DatabaseURL.parse("sqlite:////tmp/x.db")
    head = migrate.head_revision()
    said = _moved("downgraded", url, (head, "0012"), head)
    assert said.endswith(f": {head} -> 0012; now at {head} (head): another run moved it since")
    assert _moved("upgraded", url, ("0012", head), head).endswith(f"0012 -> {head} (head)")
    assert _moved("upgraded", url, None, head).endswith(f"already at {head} (head); nothing to do")


@pytest.mark.parametrize("face", ["sync", "async"])
def test_a_register_answered_after_the_lease_ran_out_is_written_again(
    pg_url: str, face: str
) -> None:
    """A stalled server answered a register after the node's lease had run out: the
    entry came back dead (lookup None, owns False) with an epoch replaced a moment
    later. It is written again under a live lease, and what it returns is what lookup
    says."""
    settings = {"registry_ttl_ms": 1500, "connect_timeout_s": 1}
    with cut_proxy(pg_url) as (proxy, through):

        def check(entry: Any, registry: Any) -> None:
            assert entry.expires_at > datetime.now(UTC)
            assert registry.owns("stalled")
            assert registry.lookup("stalled").epoch == entry.epoch

        # The heartbeat stopped first: its own stalled renewal would otherwise recover
        # the lease while the register waits, some of the time.
        if face == "sync":
            with Foundation(through, **settings) as fdn:
                registry = fdn.service_registry
                registry._stop.set()
                assert registry._thread is not None
                registry._thread.join()
                proxy.delay_s = 1.2  # each way: the statement answers after ~2.4 s
                threading.Timer(1.5, lambda: setattr(proxy, "delay_s", 0.0)).start()
                check(registry.register("stalled", "a"), registry)
        else:

            async def run() -> None:
                async with AsyncFoundation(through, **settings) as fdn:
                    registry = fdn.service_registry
                    assert registry._task is not None
                    registry._task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await registry._task
                    proxy.delay_s = 1.2
                    threading.Timer(1.5, lambda: setattr(proxy, "delay_s", 0.0)).start()
                    check(await registry.register("stalled", "a"), registry)

            asyncio.run(run())


def test_an_unregister_that_had_no_connection_leaves_the_name_held(pg_url: str) -> None:
    """No connection could be had: the statement was never sent, nothing is in doubt. The
    name stays this node's (review 12: dropped as if the unregister might have landed, and
    then told to no watcher, expiring nowhere)."""
    with Foundation(pg_url, pool_min_size=1, pool_max_size=1, connect_timeout_s=0.5) as fdn:
        registry = fdn.service_registry
        registry.register("kept", "a")
        seen: list[str] = []
        registry.watch("kept", lambda change: seen.append(change.kind))
        with fdn.database.connection():  # the pool's one connection, held
            with pytest.raises(StorageUnavailableError, match="could be had in time"):
                registry.unregister("kept")
        assert registry.owns("kept") and registry.lookup("kept").address == "a"
        registry.unregister("kept")  # the retry the caller makes
        wait_for(lambda: seen == ["unregister"])
    with Foundation(pg_url, migrate="skip") as other:
        assert other.service_registry.find("kept") is None


def test_a_register_on_a_database_slower_than_the_lease_gives_up(pg_url: str) -> None:
    """Every statement answered after the lease's TTL, the heartbeat running (it recovers
    the lease meanwhile): three writes, then storage_unavailable, not for as long as the
    slowness lasts."""
    with (
        cut_proxy(pg_url) as (proxy, through),
        Foundation(through, registry_ttl_ms=500, connect_timeout_s=5) as fdn,
    ):
        proxy.delay_s = 0.35  # each way: every statement answers after ~0.7 s
        try:
            with pytest.raises(StorageUnavailableError, match="three times"):
                fdn.service_registry.register("slow", "a")
        finally:
            proxy.delay_s = 0.0
