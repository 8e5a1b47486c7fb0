"""Review 16: a new user with the docs, and a platform team's deploys.

* A PostgreSQL URL whose port is not a number reached the user as a raw ``ValueError``;
  a misspelt libpq option (``?sslmod=``) was a ``storage_error`` from the server; a
  password in the URL's query was shown in errors; a SQLite URL's options were ignored
  (``?mode=ro`` wrote).
* A closed instance took ``config.watch`` (never called) and started a ``poller()``.
* ``telemetry.execute`` took measurements that are no mapping while no handler was
  attached, and raised once one was; ``correlation(uuid)`` was refused while events take
  a UUID correlation id.
* A misspelt ``FOUNDATION_*`` variable was ignored without a word.
* ``migrate="check"`` on a missing SQLite path refused, and left the file and its
  directories behind; so did ``foundation config set`` of a bad key, and ``config
  delete`` created a database to say there was nothing to delete.
* Migration 0022: 0019's member revision function found its sequence through the
  caller's ``search_path`` (plain SQL on a schema's members failed, or took another
  install's sequence and went back).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

import foundation
from foundation import AsyncFoundation, Foundation, FoundationError
from foundation.database import migrate
from foundation.database.engine import create_engine
from foundation.database.url import DatabaseURL, mask_url
from foundation.telemetry import Telemetry
from tests.helpers import wait_for
from tests.test_cli import fails

BAD_URLS = ["postgresql+psycopg://u@127.0.0.1:54x2/db", "postgresql://u@[::1/x"]


@pytest.mark.parametrize("url", BAD_URLS)
def test_an_unreadable_host_or_port_is_a_config_error(url: str) -> None:
    with pytest.raises(FoundationError) as sync_err:
        Foundation(url)
    with pytest.raises(FoundationError) as async_err:
        AsyncFoundation(url)
    for err in (sync_err.value, async_err.value):
        assert err.code == "config_error"
        assert "host or port" in err.message
    result = fails(url, "config_error", "db", "current")
    assert "Traceback" not in result.stderr


def test_a_misspelt_libpq_option_is_a_config_error() -> None:
    with pytest.raises(FoundationError) as err:
        Foundation("postgresql+psycopg://postgres@127.0.0.1:5432/test?sslmod=disable")
    assert err.value.code == "config_error"
    assert "sslmod" in err.value.message


def test_a_password_in_the_query_is_masked() -> None:
    raw = "postgresql://a:b@h/d?password=hunter2&sslpassword=s3cret&sslmode=require"
    shown = mask_url(raw)
    assert "hunter2" not in shown and "s3cret" not in shown
    assert "password=***" in shown and "sslmode=require" in shown
    parsed = DatabaseURL.parse(raw)
    for text in (parsed.masked, str(parsed), repr(parsed)):
        assert "hunter2" not in text and "s3cret" not in text
    assert conninfo_to_dict(parsed.conninfo)["password"] == "hunter2"  # psycopg's, kept


def test_libpq_is_given_the_urls_values_as_they_were_meant() -> None:
    """The URL rendered again for libpq wrote a space as '+' (a password with a space
    was refused, and its refusal quoted it), and a key given twice lost its first value."""
    url = (
        "postgresql+psycopg://me:my%20secret@127.0.0.1:5432/db"
        "?sslrootcert=/etc/my%20certs/ca.pem&host=db1&host=db2"
    )
    params = conninfo_to_dict(DatabaseURL.parse(url).conninfo)
    assert params["password"] == "my secret"
    assert params["sslrootcert"] == "/etc/my certs/ca.pem"
    assert params["host"] == "db1,db2"
    assert params["keepalives"] == "1"  # Foundation's own, as before
    # Another key given twice: the last wins, as libpq has it.
    again = conninfo_to_dict(DatabaseURL.parse(f"{url}&sslmode=disable&sslmode=prefer").conninfo)
    assert again["sslmode"] == "prefer"
    # SQLAlchemy's multi-host form, and a socket's folder or an IPv6 zone in the host.
    listed = "postgresql://u@/d?host=h1:5432&host=[::1]:5433&host=h3"
    assert conninfo_to_dict(DatabaseURL.parse(listed).conninfo)["host"] == "h1,::1,h3"
    assert conninfo_to_dict(DatabaseURL.parse(listed).conninfo)["port"] == "5432,5433,"
    socket = "postgresql://u@%2Fvar%2Frun%2Fpostgresql/d"
    assert conninfo_to_dict(DatabaseURL.parse(socket).conninfo)["host"] == "/var/run/postgresql"
    zoned = "postgresql://u@[fe80::1%25eth0]:5432/d"
    assert conninfo_to_dict(DatabaseURL.parse(zoned).conninfo)["host"] == "fe80::1%eth0"


@pytest.mark.parametrize("url", ["postgresql://u@h:99999/d", "postgresql://u@h/d?port=abc"])
def test_a_port_out_of_range_is_a_config_error(url: str) -> None:
    with pytest.raises(FoundationError) as err:
        DatabaseURL.parse(url)
    assert err.value.code == "config_error"
    assert "port" in err.value.message


def test_the_urls_own_options_are_kept(pg_url: str) -> None:
    url = f"{pg_url}?options=-c%20statement_timeout%3D4321"
    with Foundation(url) as fdn:
        assert fdn.database.fetchone("SHOW statement_timeout") == ("4321ms",)
        assert fdn.database.fetchone("SHOW TimeZone") == ("UTC",)  # and Foundation's
    # The engine the migrations use connects the same way, whatever the settings say.
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW statement_timeout").scalar() == "4321ms"
    finally:
        engine.dispose()


def test_a_sockets_folder_in_the_urls_host_connects(pg_url: str) -> None:
    folder = Path("/var/run/postgresql")
    if not (folder / ".s.PGSQL.5432").exists():
        pytest.skip("this machine's PostgreSQL has no socket in /var/run/postgresql")
    name = DatabaseURL.parse(pg_url).url.database
    url = f"postgresql+psycopg://postgres@%2Fvar%2Frun%2Fpostgresql/{name}"
    migrate.upgrade(url)  # SQLAlchemy's engine
    with Foundation(url) as fdn:  # Foundation's own connections
        assert fdn.database.fetchone("SELECT current_database()") == (name,)


def test_a_sqlite_url_with_options_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with pytest.raises(FoundationError) as err:
        Foundation(f"sqlite:///{path}?mode=ro")
    assert err.value.code == "config_error"
    assert "mode" in err.value.message
    assert not path.exists()


def test_a_closed_instance_refuses_watches_and_pollers_and_still_reads_config(
    db_url: str,
) -> None:
    fdn = Foundation(db_url)
    fdn.config.set("port", 1)
    fdn.close()
    with pytest.raises(FoundationError) as err:
        fdn.config.watch("port", lambda change: None)
    assert err.value.code == "storage_unavailable"
    with pytest.raises(FoundationError) as err:
        fdn.poller()
    assert err.value.code == "storage_unavailable"
    assert fdn.config.get("port") == 1  # documented: as the cache held it at the close


def test_a_closed_async_instance_refuses_watches(db_url: str) -> None:
    async def scenario() -> None:
        fdn = await AsyncFoundation(db_url)
        await fdn.config.set("port", 1)
        await fdn.close()
        with pytest.raises(FoundationError) as err:
            fdn.config.watch("port", lambda change: None)
        assert err.value.code == "storage_unavailable"
        assert fdn.config.get("port") == 1

    asyncio.run(scenario())


def test_measurements_are_checked_with_no_handler_attached() -> None:
    telemetry = Telemetry()
    for measurements, metadata in ((5, None), (None, ["a"])):
        with pytest.raises(FoundationError) as err:
            telemetry.execute("myapp.job.done", measurements, metadata)  # type: ignore[arg-type]
        assert err.value.code == "validation_error"
    telemetry.execute("myapp.job.done", {"count": 1}, {"job": "a"})


def test_correlation_takes_a_uuid_as_events_do(db_url: str) -> None:
    cid = uuid.uuid4()
    with Foundation(db_url) as fdn, foundation.correlation(cid) as current:
        assert current == str(cid)
        stored = fdn.events.store({"type": "t"})
    explicit = Foundation(db_url)
    try:
        again = explicit.events.store({"type": "t", "correlation_id": cid})
    finally:
        explicit.close()
    assert stored.correlation_id == again.correlation_id == str(cid)


def test_a_misspelt_setting_variable_is_named_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setenv("FOUNDATION_SQLITE_SYNCRONOUS", "FULL")
    monkeypatch.setenv("FOUNDATION_CONFIG__ANYTHING", "1")  # a config value: any name
    monkeypatch.setenv("FOUNDATION_SVC2__COLOR", "blue")  # another instance's prefix
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with caplog.at_level(logging.WARNING, logger="foundation.settings"):
        Foundation(url).close()
        Foundation(url).close()
    warned = [r.getMessage() for r in caplog.records if r.name == "foundation.settings"]
    assert len(warned) == 1
    assert "FOUNDATION_SQLITE_SYNCRONOUS" in warned[0]
    assert "did you mean FOUNDATION_SQLITE_SYNCHRONOUS" in warned[0]


def test_check_on_a_missing_sqlite_path_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "typo" / "dir" / "app.db"
    for make in (Foundation, AsyncFoundation):
        with pytest.raises(FoundationError) as err:
            make(f"sqlite:///{path}", migrate="check")
        assert err.value.code == "schema_outdated"
        assert err.value.context["current"] is None
    assert not (tmp_path / "typo").exists()


def test_cli_config_writes_that_fail_leave_no_new_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'new' / 'app.db'}"
    fails(url, "config_error", "config", "set", " ", "1")
    fails(url, "config_error", "config", "set", "k", "[1e999]")
    fails(url, "not_found", "config", "delete", "port")
    assert not (tmp_path / "new").exists()


def test_member_revisions_come_from_the_schemas_own_sequence(postgres_server: str) -> None:
    """Plain SQL on a member of Foundation in schema fdn_app, from a session whose
    search_path is public (where another install lives): the revision comes from
    fdn_app's sequence (it grows), and the running node reads the change."""
    from tests.conftest import fresh_postgres

    with fresh_postgres(postgres_server) as url:
        Foundation(url, migrate="upgrade").close()  # another install, in public
        with Foundation(url, migrate="upgrade", postgres_schema="fdn_app") as fdn:
            member = fdn.service_registry.join("workers", "http://a", {"v": 1}, member_id="m1")
            conninfo = DatabaseURL.parse(url).conninfo
            with psycopg.connect(conninfo, autocommit=True) as psql:
                psql.execute(
                    "UPDATE fdn_app.foundation_registry_members"
                    " SET metadata = '{\"drain\": true}' WHERE member_id = 'm1'"
                )
                row = psql.execute(
                    "SELECT revision FROM fdn_app.foundation_registry_members"
                    " WHERE member_id = 'm1'"
                ).fetchone()
            assert row is not None and row[0] > member.revision
            wait_for(
                lambda: (
                    [m.metadata for m in fdn.service_registry.members("workers")]
                    == [{"drain": True}]
                )
            )


def test_an_async_stop_that_times_out_during_the_release_still_releases(db_url: str) -> None:
    """stop(timeout) cancelled the subscription's task while it was releasing the name
    (its statement waiting for the connection, here held by a transaction): the status
    said stopped, the row stayed running, and the name was held for its lease."""

    async def scenario() -> None:
        async with AsyncFoundation(db_url, pool_max_size=1) as fdn:
            sub = await fdn.events.subscribe("projector", lambda event: None)
            await fdn.events.store({"type": "t"})
            await wait_until(lambda: sub.checkpoint == 1)
            held, hold = asyncio.Event(), asyncio.Event()

            async def hold_the_connection() -> None:
                async with fdn.database.transaction():
                    held.set()
                    await hold.wait()

            holder = asyncio.create_task(hold_the_connection())
            await held.wait()
            stopping = asyncio.create_task(sub.stop(timeout=0.05))
            await asyncio.sleep(0.3)  # the stop's timeout has passed, its release waits
            hold.set()
            await holder
            await stopping
            assert sub.status.state == "stopped"
            row = await fdn.database.fetchone(
                "SELECT status FROM foundation_subscriptions WHERE name = 'projector'"
            )
            assert row is not None and row[0] == "stopped"
            again = await fdn.events.subscribe("projector", lambda event: None)
            await again.stop()

    asyncio.run(scenario())


async def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "never became true"
        await asyncio.sleep(0.005)


def test_an_open_cancelled_while_sqlite_connects_closes_the_connection(tmp_path: Path) -> None:
    """The connection made as open() was cancelled was not the instance's: close() did
    not close it (its thread lived on, until the collector) and the cancellation waited
    5 s for that thread first."""
    url = f"sqlite:///{tmp_path / 'app.db'}"

    def workers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}

    async def scenario() -> None:
        async with AsyncFoundation(url):
            pass  # the schema, made
        before = workers()
        fdn = AsyncFoundation(url)
        opening = asyncio.create_task(fdn.open())
        await asyncio.sleep(0)  # open() is in aiosqlite's connect
        opening.cancel()
        with pytest.raises(asyncio.CancelledError):
            await opening
        await fdn.close()
        assert {t for t in workers() - before if t.is_alive()} == set()

    asyncio.run(scenario())


def test_a_cut_during_the_tail_reload_does_not_keep_the_registry_from_resyncing(
    pg_url: str,
) -> None:
    """After a reconnect the feed resynced the event log's tail (the longest read) before
    the registry: connections cut during every tail reload kept the registry's leases
    unread, and it reported live names of other nodes expired."""
    with Foundation(pg_url, listen_reconnect_max_ms=50) as fdn:
        fdn.feed.wait_connected(10)
        resync = fdn.events.resync
        seen: list[int] = []

        def cut_during_the_reload(reader: Any) -> None:
            if len(seen) < 3:
                seen.append(fdn.service_registry.resyncs)
                reader.fetchone("SELECT pg_terminate_backend(pg_backend_pid())")
            resync(reader)

        fdn.events.resync = cut_during_the_reload  # type: ignore[method-assign]
        with psycopg.connect(DatabaseURL.parse(pg_url).conninfo, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database()"
                " AND application_name LIKE 'foundation-listen:%'"
            )
        wait_for(lambda: len(seen) == 3)
        # Each cut reload came after a registry resync of its own round.
        assert seen[1] > seen[0] and seen[2] > seen[1]


@pytest.mark.parametrize("expected", ["exists", 1])
def test_sqlite_a_store_refused_then_expected_again_runs_after_the_other_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, expected: Any
) -> None:
    """SQLite reads a stream's version after its checked insert was refused: another
    process that wrote the stream in between made the error say ``expected 1, actual 1``
    (or ``exists``, at version 1). The store now runs again, after that writer's."""
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with Foundation(url) as fdn, Foundation(url) as other:
        db = fdn.events._db
        read_version = db.fetchone
        raced: list[bool] = []

        def another_writer_first(sql: str, params: Any = None) -> Any:
            if sql == fdn.events._sql.stream_version and not raced:
                raced.append(True)
                other.events.store({"type": "t", "stream_id": "s", "expected_version": 0})
            return read_version(sql, params)

        monkeypatch.setattr(db, "fetchone", another_writer_first)
        stored = fdn.events.store({"type": "t", "stream_id": "s", "expected_version": expected})
        assert raced and stored.stream_version == 2
        assert [e.stream_version for e in fdn.events.read_stream("s")] == [1, 2]


def test_0022_takes_the_schema_the_function_lives_in(postgres_server: str) -> None:
    """0022 set the function's search_path to the migrating session's current_schema():
    a schema named after the role, made after the install (whose tables are in public),
    came first, and every join then failed."""
    from tests.conftest import fresh_postgres

    with fresh_postgres(postgres_server) as url:
        migrate.upgrade(url, "0021")
        with psycopg.connect(DatabaseURL.parse(url).conninfo, autocommit=True) as admin:
            admin.execute("CREATE SCHEMA postgres")  # the role's: first in "$user", public
        migrate.upgrade(url, "head")
        with Foundation(url) as fdn:
            member = fdn.service_registry.join("workers", "http://a")
            assert fdn.service_registry.members("workers") == [member]


def test_limiter_keys_and_breaker_names_fit_their_columns(db_url: str) -> None:
    """max_key_length allows config's keys up to 1024 characters; a limiter key or a
    breaker name past its 255-character column was taken: PostgreSQL refused the write,
    and the limiter failed open (every call admitted), the breaker never opened."""
    with Foundation(db_url, max_key_length=1000) as fdn:
        for call in (
            lambda: fdn.rate_limiter.try_acquire("k" * 300, 2, 60_000),
            lambda: fdn.circuit_breaker.execute(lambda: 1, name="b" * 300),
            lambda: fdn.circuit_breaker.force_open("b" * 300),
        ):
            with pytest.raises(FoundationError) as err:
                call()
            assert err.value.code == "validation_error"
            assert "255" in err.value.message
        assert fdn.rate_limiter.try_acquire("k" * 255, 2, 60_000).allowed


def test_a_breaker_of_a_node_with_a_long_id_probes_again(db_url: str) -> None:
    """A probe token is the node id and a counter, in a column as wide as a node id: a
    255-character node id made every claim fail, and the breaker stayed open for good
    (said to be "forced open")."""

    def fail() -> None:
        raise ValueError("down")

    with Foundation(db_url, node_id="n" * 255) as fdn:
        with pytest.raises(ValueError):
            fdn.circuit_breaker.execute(fail, name="pay", max_failures=1, reset_timeout=100)
        assert fdn.circuit_breaker.state("pay") == "open"

        def probe() -> bool:
            try:
                return fdn.circuit_breaker.execute(lambda: True, name="pay") is True
            except FoundationError as err:
                assert "forced" not in err.message
                return False

        wait_for(probe)
        assert fdn.circuit_breaker.state("pay") == "closed"


def test_a_subscription_of_a_node_with_a_long_id(db_url: str) -> None:
    """Its consumer ("<node>#<random>") did not fit its column: subscribe() failed with
    PostgreSQL's "value too long"."""
    with Foundation(db_url, node_id="n" * 255) as fdn:
        sub = fdn.events.subscribe("projector", lambda event: None)
        with pytest.raises(FoundationError) as err:
            fdn.events.subscribe("projector", lambda event: None)
        assert "another subscription of this node" in err.value.message
        sub.stop()


def test_a_remote_value_this_nodes_type_refuses_falls_back_to_the_next_layer(
    db_url: str,
) -> None:
    """Node B types the key int; node A (untyped) sets 5, then "abc": B kept 5 for good,
    told its watchers nothing, and explain() named a revision no longer in the table."""
    with Foundation(db_url) as a, Foundation(db_url) as b:
        b.config.register("limit", int, default=1)
        seen: list[tuple[Any, Any]] = []
        b.config.watch("limit", lambda change: seen.append((change.old, change.new)))
        a.config.set("limit", 5)
        wait_for(lambda: b.config.get("limit") == 5)
        a.config.set("limit", "abc")
        wait_for(lambda: b.config.get("limit") == 1)
        assert b.config.explain("limit").source == "default"
        wait_for(lambda: seen == [(1, 5), (5, 1)])
        b.config.reload()
        assert b.config.get("limit") == 1
        b.config.register("limit", int, default=2)  # again: the refused value is not held
        assert b.config.get("limit") == 2
        a.config.set("limit", 7)  # a value of its type: read again
        wait_for(lambda: b.config.get("limit") == 7)


def test_a_toml_date_reads_as_its_iso_text_and_as_a_typed_datetime(
    tmp_path: Path,
) -> None:
    config = tmp_path / "app.toml"
    config.write_text("starts = 2026-12-01T08:30:00Z\nday = 2026-12-24\n[window]\nat = 07:00:00\n")
    url = f"sqlite:///{tmp_path / 'app.db'}"
    with Foundation(url, config_file=str(config)) as fdn:
        assert fdn.config.get("day") == "2026-12-24"
        assert fdn.config.get("window") == {"at": "07:00:00"}
        fdn.config.register("starts", datetime)
        assert fdn.config.get("starts") == datetime(2026, 12, 1, 8, 30, tzinfo=UTC)


def test_explain_shows_a_typed_keys_layers_as_the_key_reads_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FOUNDATION_CONFIG__VERSION", "1.10")
    with Foundation(f"sqlite:///{tmp_path / 'app.db'}") as fdn:
        fdn.config.register("version", str)
        explained = fdn.config.explain("version")
        assert explained.value == "1.10"
        assert explained.layers == {"env:FOUNDATION_CONFIG__VERSION": "1.10"}


def test_store_many_names_the_first_event_recorded_with_other_content(db_url: str) -> None:
    """SQLite named the conflicting event whose id sorts first, PostgreSQL the one
    recorded first: neither was reliably the batch's first."""
    ids = sorted((str(uuid.uuid4()) for _ in range(4)), reverse=True)
    with Foundation(db_url) as fdn:
        for event_id in ids:
            fdn.events.store({"type": "t", "id": event_id, "data": {"v": 1}})
        for order in (ids, ids[::-1], [ids[3], ids[0]]):
            with pytest.raises(FoundationError) as err:
                fdn.events.store_many([{"type": "t", "id": i, "data": {"v": 2}} for i in order])
            assert err.value.context["index"] == 0
            assert err.value.context["id"] == order[0]


def test_a_node_id_restarted_before_this_node_saw_its_lease_lapse_is_reported_expired(
    db_url: str,
) -> None:
    """The observer replaced the dead generation's lease with the restarted one's, and its
    sweeps, which read only the current leases, never reported the names and members
    still hanging off the dead one: its watchers ended on them registered."""
    from tests.test_registry import stop_heartbeat
    from tests.test_review13_registry import _resume

    def node(node_id: str) -> Foundation:
        return Foundation(db_url, node_id=node_id, registry_ttl_ms=1000, poll_interval_ms=5)

    with node("observer") as obs, node("web") as first:
        first.service_registry.register("svc", "http://a")
        first.service_registry.join("grp", "http://a", member_id="m1")
        seen: list[tuple[str, str]] = []
        obs.service_registry.watch("*", lambda change: seen.append((change.name, change.kind)))
        wait_for(lambda: obs.service_registry.members("grp") != [])
        generation = first.service_registry.lease_generation
        assert generation is not None
        stop_heartbeat(obs)  # its sweeps wait, as a busy node's may
        stop_heartbeat(first)  # killed: its lease lapses
        with node("web") as restarted:  # takes the node id's lease once it lapsed
            now = restarted.service_registry.lease_generation
            assert now is not None and now > generation
            wait_for(lambda: obs.service_registry.nodes()["web"][0] == now)
            _resume(obs.service_registry)
            wait_for(lambda: {("svc", "expired"), ("grp", "expired")} <= set(seen))
            assert restarted.service_registry.find("svc") is None
