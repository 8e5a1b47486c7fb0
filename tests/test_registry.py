"""The service registry (sync) on SQLite and PostgreSQL: names, epochs, groups, watches,
leases, expiry, lease loss and recovery, bad input, and a database that goes away."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from foundation import (
    AlreadyRegisteredError,
    ConfigError,
    Foundation,
    FoundationError,
    NotFoundError,
    Settings,
    StorageUnavailableError,
    ValidationError,
)
from foundation.database.url import DatabaseURL
from foundation.service_registry import (
    RegistryChange,
    RegistryOptions,
    ServiceEntry,
    ServiceRegistry,
)
from tests.helpers import wait_for

TTL = 1000


def node(url: str, **kwargs: Any) -> Foundation:
    options: dict[str, Any] = {"registry_ttl_ms": TTL, "poll_interval_ms": 5}
    options.update(kwargs)
    return Foundation(url, migrate="skip", **options)


@pytest.fixture
def pair(db_url: str) -> Iterator[tuple[Foundation, Foundation]]:
    with node(db_url) as a, node(db_url) as b:
        yield a, b


def count_rows(fdn: Foundation, table: str) -> int:
    row = fdn.database.fetchone(f"SELECT count(*) FROM {table}")
    assert row is not None
    return int(row[0])


def drain(reg: ServiceRegistry) -> None:
    """Wait until the registry's watch thread has called back every change queued so far."""
    assert reg._dispatcher.flush(5), "the watch thread delivered nothing for 5 s"


def stop_heartbeat(fdn: Foundation) -> None:
    """Freeze a node's heartbeat, as if the process were paused."""
    reg = fdn.service_registry
    reg._stop.set()
    assert reg._thread is not None
    reg._thread.join(5)


# -- names ---------------------------------------------------------------------------------


def test_register_lookup_find(fdn: Foundation) -> None:
    reg = fdn.service_registry
    entry = reg.register("auth", "http://10.0.0.5:8000", {"version": "1.0"})
    assert isinstance(entry, ServiceEntry)
    assert (entry.name, entry.address, entry.metadata) == (
        "auth",
        "http://10.0.0.5:8000",
        {"version": "1.0"},
    )
    assert entry.node == fdn.settings.node_id and entry.epoch == 1
    assert entry.expires_at is not None and entry.expires_at > entry.registered_at
    assert reg.lookup("auth") == entry
    assert reg.find("auth") == entry
    assert reg.find("nope") is None
    with pytest.raises(NotFoundError) as info:
        reg.lookup("nope")
    assert info.value.code == "not_found" and info.value.context["name"] == "nope"
    assert reg.owns("auth") and not reg.owns("nope")
    generation, expires = reg.nodes()[fdn.settings.node_id]
    assert generation == reg.lease_generation and expires is not None


def test_json_addresses_and_defaults(fdn: Foundation) -> None:
    reg = fdn.service_registry
    entry = reg.register("db", {"host": "10.0.0.1", "port": 5432}, ttl=timedelta(minutes=5))
    assert entry.address == {"host": "10.0.0.1", "port": 5432} and entry.metadata == {}
    assert reg.lookup("db").address == {"host": "10.0.0.1", "port": 5432}


def test_second_node_sees_the_name_and_is_refused(pair: tuple[Foundation, Foundation]) -> None:
    a, b = pair
    a.service_registry.register("auth", "http://a:1")
    wait_for(lambda: b.service_registry.find("auth") is not None)
    assert b.service_registry.lookup("auth").node == a.settings.node_id
    with pytest.raises(AlreadyRegisteredError) as info:
        b.service_registry.register("auth", "http://b:1")
    err = info.value
    assert err.code == "already_registered"
    assert err.context["owner"] == a.settings.node_id
    assert err.context["address"] == "http://a:1"
    # The owner itself is refused too (a name is held once).
    with pytest.raises(AlreadyRegisteredError):
        a.service_registry.register("auth", "http://a:2")


def test_unregister_only_by_owner_or_force_and_epochs_keep_growing(
    pair: tuple[Foundation, Foundation],
) -> None:
    a, b = pair
    a.service_registry.register("svc", "a")
    wait_for(lambda: b.service_registry.find("svc") is not None)
    with pytest.raises(NotFoundError) as info:
        b.service_registry.unregister("svc")
    assert info.value.context["owner"] == a.settings.node_id
    a.service_registry.unregister("svc")
    assert a.service_registry.find("svc") is None
    wait_for(lambda: b.service_registry.find("svc") is None)
    assert b.service_registry.register("svc", "b").epoch == 2  # the tombstone kept the count
    wait_for(lambda: a.service_registry.find("svc") is not None)
    a.service_registry.unregister("svc", force=True)
    wait_for(lambda: b.service_registry.find("svc") is None)
    assert not b.service_registry.owns("svc")
    assert a.service_registry.register("svc", "a").epoch == 3
    with pytest.raises(NotFoundError):
        a.service_registry.unregister("never")


def test_update_metadata_reaches_every_node_and_watchers(
    pair: tuple[Foundation, Foundation],
) -> None:
    a, b = pair
    seen: list[RegistryChange] = []
    b.service_registry.watch("auth", seen.append)
    a.service_registry.register("auth", "x", {"v": 1})
    wait_for(lambda: [c.kind for c in seen] == ["register"])
    entry = a.service_registry.update_metadata("auth", {"v": 2})
    assert entry.metadata == {"v": 2} and entry.epoch == 1
    wait_for(lambda: b.service_registry.lookup("auth").metadata == {"v": 2})
    wait_for(lambda: [c.kind for c in seen] == ["register", "metadata"])
    assert seen[1].source == "remote" and seen[1].entry is not None
    with pytest.raises(NotFoundError):
        b.service_registry.update_metadata("auth", {"v": 3})
    with pytest.raises(ValidationError):
        a.service_registry.update_metadata("auth", {"bad": float("nan")})
    a.service_registry.unregister("auth")
    wait_for(lambda: [c.kind for c in seen][-1] == "unregister")


def test_list_by_prefix_and_metadata(fdn: Foundation) -> None:
    reg = fdn.service_registry
    reg.register("api.users", "u", {"zone": "eu", "tier": 1})
    reg.register("api.orders", "o", {"zone": "us", "tier": 1})
    reg.register("worker", "w", {"zone": "eu"})
    assert [e.name for e in reg.list()] == ["api.orders", "api.users", "worker"]
    assert [e.name for e in reg.list(prefix="api.")] == ["api.orders", "api.users"]
    assert [e.name for e in reg.list(where={"zone": "eu"})] == ["api.users", "worker"]
    assert [e.name for e in reg.list("api.", lambda m: m["zone"] == "us")] == ["api.orders"]
    with pytest.raises(ValidationError):
        reg.list(where=42)


def test_watch_prefix_and_cancel(fdn: Foundation) -> None:
    reg = fdn.service_registry
    seen: list[tuple[str, str]] = []
    watch = reg.watch("api.*", lambda c: seen.append((c.name, c.kind)))
    reg.register("api.a", 1)
    reg.register("other", 1)
    reg.unregister("api.a")
    # Callbacks run on the registry's watch thread: shortly after, in order.
    wait_for(lambda: seen == [("api.a", "register"), ("api.a", "unregister")])
    watch.cancel()
    reg.register("api.b", 1)
    reg.register("api.c", 1, local=True)
    drain(reg)
    assert len(seen) == 2


def test_telemetry_events(fdn: Foundation) -> None:
    got: list[tuple[str, dict[str, Any]]] = []
    fdn.telemetry.attach(
        "t",
        [
            "foundation.registry.register",
            "foundation.registry.unregister",
            "foundation.registry.conflict",
        ],
        lambda name, _m, meta, _c: got.append((name[-1], dict(meta))),
    )
    fdn.service_registry.register("a", 1)
    with pytest.raises(AlreadyRegisteredError):
        fdn.service_registry.register("a", 2)
    fdn.service_registry.unregister("a")
    assert [g[0] for g in got] == ["register", "conflict", "unregister"]
    assert got[0][1]["name"] == "a" and got[0][1]["epoch"] == 1


# -- groups and local entries ------------------------------------------------------------


def test_groups(pair: tuple[Foundation, Foundation]) -> None:
    a, b = pair
    ma = a.service_registry.join("workers", "a:1", {"cpu": 4})
    mb = b.service_registry.join("workers", "b:1")
    b.service_registry.join("workers", "b:2", member_id="b-second")
    for f in (a, b):
        wait_for(lambda f=f: len(f.service_registry.members("workers")) == 3)
    addresses = {m.address for m in a.service_registry.members("workers")}
    assert addresses == {"a:1", "b:1", "b:2"}
    assert ma.node == a.settings.node_id and mb.node == b.settings.node_id
    with pytest.raises(AlreadyRegisteredError):
        a.service_registry.join("workers", "x", member_id="b-second")
    b.service_registry.leave("workers", "b-second")
    wait_for(lambda: len(a.service_registry.members("workers")) == 2)
    b.service_registry.leave("workers")
    wait_for(lambda: [m.address for m in a.service_registry.members("workers")] == ["a:1"])
    with pytest.raises(NotFoundError):
        b.service_registry.leave("workers")
    assert a.service_registry.members("empty") == []


def test_local_entries_hold_any_object_in_this_process_only(
    pair: tuple[Foundation, Foundation],
) -> None:
    a, b = pair

    class Handler:
        pass

    handler = Handler()
    entry = a.service_registry.register("handler", handler, local=True)
    assert entry.local and entry.address is handler and entry.expires_at is None
    assert a.service_registry.lookup("handler").address is handler
    assert a.service_registry.owns("handler")
    time.sleep(0.05)
    assert b.service_registry.find("handler") is None
    assert count_rows(a, "foundation_registry") == 0
    with pytest.raises(AlreadyRegisteredError):
        a.service_registry.register("handler", "http://x")
    with pytest.raises(AlreadyRegisteredError):
        a.service_registry.register("handler", object(), local=True)
    updated = a.service_registry.update_metadata("handler", {"role": "x"})
    assert updated.metadata == {"role": "x"} and updated.address is handler
    assert [e.name for e in a.service_registry.list(where={"role": "x"})] == ["handler"]
    a.service_registry.unregister("handler")
    assert a.service_registry.find("handler") is None


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (("", "x"), {}),
        (("   ", "x"), {}),
        (("n" * 256, "x"), {}),
        ((42, "x"), {}),
        ((None, "x"), {}),
        (("bad\x00name", "x"), {}),
        (("n", object()), {}),
        (("n", None), {}),
        (("n", float("nan")), {}),
        (("n", "x", {"a": object()}), {}),
        (("n", "x", {"a": "\x00"}), {}),
        (("n", "x"), {"ttl": 0}),
        (("n", "x"), {"ttl": -5}),
        (("n", "x"), {"ttl": timedelta(0)}),
        (("n", "x"), {"ttl": "10s"}),
        (("n", "x"), {"ttl": True}),
    ],
)
def test_bad_input_is_refused_and_nothing_is_written(
    fdn: Foundation, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    with pytest.raises(FoundationError) as info:
        fdn.service_registry.register(*args, **kwargs)
    assert info.value.code == "validation_error"
    assert info.value.message
    assert count_rows(fdn, "foundation_registry") == 0


def test_bad_lookups_and_options(fdn: Foundation) -> None:
    reg = fdn.service_registry
    for bad in ("", 42, ["x"], "x" * 300):
        with pytest.raises(ValidationError):
            reg.lookup(bad)
    with pytest.raises(ValidationError):
        reg.watch("x", "not callable")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        reg.join("", "x")
    with pytest.raises(ConfigError) as bad_ttl:
        Foundation(fdn.url.masked, registry_ttl_ms=0)
    assert bad_ttl.value.context["setting"] == "registry_ttl_ms"
    with pytest.raises(ConfigError):
        Foundation(fdn.url.masked, registry_ttl_ms=1000, registry_heartbeat_ms=1000)
    options = RegistryOptions.from_settings(Settings(registry_ttl_ms=900))
    assert options.heartbeat_ms == 300


# -- leases, expiry, recovery ---------------------------------------------------------------


def test_one_statement_per_heartbeat_whatever_the_number_of_names(fdn: Foundation) -> None:
    reg = fdn.service_registry
    for i in range(50):
        reg.register(f"n{i}", i)
    calls: list[str] = []
    real = fdn.database.fetchone

    def counting(sql: str, params: Any = None) -> Any:
        calls.append(sql)
        return real(sql, params)

    fdn.database.fetchone = counting  # type: ignore[method-assign]
    try:
        assert reg.heartbeat()
    finally:
        del fdn.database.fetchone
    assert len(calls) == 1 and "UPDATE foundation_leases" in calls[0]


def test_entry_ttl_expires_and_the_name_can_be_taken(pair: tuple[Foundation, Foundation]) -> None:
    a, b = pair
    seen: list[str] = []
    b.service_registry.watch("short", lambda c: seen.append(c.kind))
    a.service_registry.register("short", "a", ttl=1000)
    wait_for(lambda: b.service_registry.find("short") is not None)
    wait_for(lambda: a.service_registry.find("short") is None, timeout=5)
    wait_for(lambda: b.service_registry.find("short") is None, timeout=5)
    wait_for(lambda: "expired" in seen)
    assert b.service_registry.register("short", "b").epoch == 2


def test_a_dead_nodes_names_expire_everywhere_and_are_taken_over(
    pair: tuple[Foundation, Foundation],
) -> None:
    a, b = pair
    expired: list[str] = []
    b.telemetry.attach(
        "exp", "foundation.registry.expired", lambda _n, _m, meta, _c: expired.append(meta["name"])
    )
    a.service_registry.register("leader", "a")
    wait_for(lambda: b.service_registry.find("leader") is not None)
    with pytest.raises(AlreadyRegisteredError):
        b.service_registry.register("leader", "b")
    stop_heartbeat(a)
    started = time.monotonic()
    wait_for(lambda: b.service_registry.find("leader") is None, timeout=5)
    assert time.monotonic() - started <= (TTL + TTL / 3) / 1000 + 0.5
    wait_for(lambda: "leader" in expired)
    taken = b.service_registry.register("leader", "b")
    assert taken.epoch == 2 and taken.node == b.settings.node_id
    wait_for(lambda: a.service_registry.find("leader") is not None)
    assert a.service_registry.lookup("leader").node == b.settings.node_id
    assert not a.service_registry.owns("leader")


def test_a_node_that_lost_its_lease_recovers_free_names_and_reports_lost_ones(
    pair: tuple[Foundation, Foundation],
) -> None:
    a, b = pair
    changes: list[RegistryChange] = []
    lost_events: list[dict[str, Any]] = []
    a.service_registry.watch("*", changes.append)
    a.telemetry.attach(
        "lost", "foundation.registry.lease_lost", lambda _n, _m, meta, _c: lost_events.append(meta)
    )
    a.service_registry.register("taken", "a")
    kept = a.service_registry.register("kept", "a")
    a.service_registry.join("grp", "a:1")
    generation = a.service_registry.lease_generation
    wait_for(lambda: b.service_registry.find("taken") is not None)
    stop_heartbeat(a)  # paused past its TTL
    wait_for(lambda: b.service_registry.find("taken") is None, timeout=5)
    assert not a.service_registry.owns("taken")  # it knows from its own clock
    assert a.service_registry.find("taken") is None
    b.service_registry.register("taken", "b")
    assert a.service_registry.heartbeat() is False  # learns of the loss, recovers
    assert (a.service_registry.lease_generation or 0) > (generation or 0)
    assert lost_events and lost_events[-1]["lost"] == ["taken"]
    assert lost_events[-1]["kept"] == ["kept"]
    drain(a.service_registry)
    lost = [c for c in changes if c.kind == "lost"]
    assert [c.name for c in lost] == ["taken"]
    assert lost[0].entry is not None and lost[0].entry.node == b.settings.node_id
    assert not a.service_registry.owns("taken")
    assert a.service_registry.lookup("taken").node == b.settings.node_id
    assert a.service_registry.owns("kept")
    assert a.service_registry.lookup("kept").epoch == kept.epoch + 1
    wait_for(lambda: b.service_registry.find("kept") is not None)
    wait_for(lambda: len(b.service_registry.members("grp")) == 1)
    with pytest.raises(AlreadyRegisteredError):
        a.service_registry.register("taken", "a")


def test_close_releases_names_at_once(db_url: str) -> None:
    with node(db_url) as b:
        a = node(db_url)
        a.service_registry.register("gone", "a")
        a.service_registry.join("grp", "a")
        wait_for(lambda: b.service_registry.find("gone") is not None)
        a.close()
        wait_for(lambda: b.service_registry.find("gone") is None, timeout=0.9)
        wait_for(lambda: b.service_registry.members("grp") == [], timeout=0.9)
        assert b.service_registry.register("gone", "b").epoch == 2


# -- the database goes away --------------------------------------------------------------------


def test_closed_database_lookup_serves_with_expiry_and_register_raises(db_url: str) -> None:
    a = node(db_url)
    try:
        a.service_registry.register("svc", "a")
        stop_heartbeat(a)
        a.database.close()
        assert a.service_registry.lookup("svc").address == "a"
        with pytest.raises(StorageUnavailableError):
            a.service_registry.register("other", "x")
        wait_for(lambda: a.service_registry.find("svc") is None, timeout=5)
    finally:
        a.close()


def test_postgres_down_lookup_keeps_serving_and_register_raises(postgres_server: str) -> None:
    from tests.conftest import _admin, fresh_postgres

    with fresh_postgres(postgres_server) as url:
        Foundation(url, migrate="upgrade").close()
        a = node(url, connect_timeout_s=1)
        name = DatabaseURL.parse(url).url.database
        try:
            a.service_registry.register("svc", "a")
            with _admin(postgres_server) as admin:
                admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS false")
                admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                    (name,),
                )
            assert a.service_registry.lookup("svc").address == "a"
            with pytest.raises(StorageUnavailableError) as info:
                a.service_registry.register("other", "x")
            assert info.value.code == "storage_unavailable"
            # Expiry still holds with no database: the entry goes when the lease would.
            wait_for(lambda: a.service_registry.find("svc") is None, timeout=5)
        finally:
            with _admin(postgres_server) as admin:
                admin.execute(f"ALTER DATABASE {name} ALLOW_CONNECTIONS true")
            a.close()


def test_postgres_registry_triggers_notify(postgres_server: str) -> None:
    from tests.conftest import fresh_postgres

    with fresh_postgres(postgres_server) as url:
        with Foundation(url, migrate="upgrade") as a:
            conn = psycopg.connect(DatabaseURL.parse(url).conninfo, autocommit=True)
            try:
                conn.execute("LISTEN foundation")
                a.service_registry.register("n", "x")
                notes = list(conn.notifies(timeout=2, stop_after=1))
            finally:
                conn.close()
            assert notes and '"topic" : "registry"' in notes[0].payload


def test_module_level_api_acts_on_the_default_instance(db_url: str) -> None:
    import foundation
    import foundation.service_registry as registry
    from foundation import _default

    assert foundation.service_registry is registry
    with node(db_url) as fdn:
        previous = _default._instance
        _default.set_instance(fdn)
        try:
            entry = registry.register("mod", "http://m:1", {"k": 1})
            assert registry.lookup("mod") == entry and registry.find("x") is None
            assert [e.name for e in registry.list()] == ["mod"]
            registry.update_metadata("mod", {"k": 2})
            seen: list[str] = []
            registry.watch("mod", lambda c: seen.append(c.kind))
            registry.unregister("mod")
            wait_for(lambda: seen == ["unregister"])
            registry.join("g", "a")
            assert len(registry.members("g")) == 1
            registry.leave("g")
            assert registry.members("g") == []
        finally:
            _default.set_instance(previous)


def test_a_resync_snapshot_older_than_local_writes_does_not_drop_them(fdn: Foundation) -> None:
    reg = fdn.service_registry
    sql, db = reg._sql, fdn.database
    reg.register("old", 1)
    with reg._resync_lock:  # stand in for the feed's thread during its resync
        mark = reg._state.mark()
        snapshot = (
            db.fetchall(sql.select_leases),
            db.fetchall(sql.select_entries),
            db.fetchall(sql.select_members),
        )
        reg.register("new", 2)  # written by another thread while the feed read its snapshot
        reg.join("grp", "a")
        reg.unregister("old")
        reg._apply_snapshot(*snapshot, mark)
    assert reg.find("new") is not None and reg.find("old") is None
    assert len(reg.members("grp")) == 1
    reg.resync(db)  # a later, complete snapshot agrees
    assert reg.find("new") is not None and reg.find("old") is None
    assert len(reg.members("grp")) == 1
