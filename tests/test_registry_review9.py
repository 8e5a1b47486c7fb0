"""Found in the ninth round of review.

* ``close()`` released the node's cluster names but kept its local entries: ``lookup``,
  ``find`` and ``list`` still gave them after close, no watcher heard of their end, and a
  local ``register`` after close succeeded (a cluster one raised ``storage_unavailable``).
* An ``AsyncFoundation`` on SQLite that the program never closed kept the interpreter from
  exiting for ever: aiosqlite's thread is not a daemon (the sync face's threads are).
* A registration whose own TTL ran out before its row reached the cache (a TTL shorter
  than the round trip) was returned by ``register`` but never told to the node's own
  watchers, neither ``register`` nor ``expired``.
* An ``expired`` found by a write's own answer or a recovery reached watchers without the
  ``foundation.registry.expired`` telemetry event (only the feed's and the sweep's had it).
* SQLite: another node's joins, read by a poll, reached watchers in member id order, not
  in the order they happened.
* Found in review of those fixes: a local entry whose own TTL ran out unswept was dropped
  by ``close()`` untold; an ``update_metadata`` answered as the registration's TTL ended
  told it ``register, expired`` a second time.
* PostgreSQL: a ``register`` whose reply was lost (the connection cut after its commit)
  raised ``storage_unavailable`` and left a row of this node's lease that the node did not
  hold: ``owns()`` False, ``unregister`` ``not_found``, a retry ``already_registered`` by
  itself, and the heartbeat kept it alive. Forced here by a reply dropped after the
  statement ran.
"""

from __future__ import annotations

import asyncio
import collections
import os
import subprocess
import sys
import textwrap
import time
from typing import Any

import pytest

from foundation import AsyncFoundation, Foundation, FoundationError
from tests.helpers import async_wait_for, wait_for
from tests.test_registry import drain, node, stop_heartbeat
from tests.test_registry_async import anode
from tests.test_registry_review3 import kinds, watched


def _reads_refused(reg: Any) -> None:
    for read in (lambda: reg.find("cache"), reg.list):
        with pytest.raises(FoundationError) as err:
            read()
        assert err.value.code == "storage_unavailable"


def test_close_drops_local_entries_and_reports_them(db_url: str) -> None:
    fdn = node(db_url)
    reg = fdn.service_registry
    seen = watched(fdn, "*")
    reg.register("cache", {"any": object()}, local=True)
    reg.register("cluster", "http://10.0.0.1")
    fdn.close()
    _reads_refused(reg)  # gone from the cache, which answers no more (review 11)
    assert sorted(kinds(seen)) == ["register", "register", "unregister", "unregister"]
    assert [c.source for c in seen if c.name == "cache"] == ["local", "local"]
    with pytest.raises(FoundationError) as err:
        reg.register("late", object(), local=True)
    assert err.value.code == "storage_unavailable" and err.value.context["name"] == "late"
    _reads_refused(reg)


async def test_close_drops_local_entries_and_reports_them_async(db_url: str) -> None:
    fdn = anode(db_url)
    await fdn.open()
    reg = fdn.service_registry
    seen = watched(fdn, "*")
    await reg.register("cache", object(), local=True, ttl=60_000)
    await fdn.close()
    _reads_refused(reg)
    assert kinds(seen, "cache") == ["register", "unregister"]
    with pytest.raises(FoundationError) as err:
        await reg.register("late", object(), local=True)
    assert err.value.code == "storage_unavailable"
    with pytest.raises(FoundationError) as err:
        await reg.update_metadata("cache", {"v": 2})
    assert err.value.code in {"storage_unavailable", "not_found"}


_UNCLOSED_APP = textwrap.dedent(
    """
    import asyncio, sys
    from foundation import AsyncFoundation

    async def main():
        fdn = await AsyncFoundation(sys.argv[1], migrate="check")
        await fdn.service_registry.register("svc", "http://a")
        raise RuntimeError("a bug before close()")

    try:
        asyncio.run(main())
    except RuntimeError:
        print("ended", flush=True)
    """
)


def test_an_unclosed_async_instance_does_not_keep_the_process_alive(db_url: str) -> None:
    app = subprocess.run(
        [sys.executable, "-c", _UNCLOSED_APP, db_url],
        capture_output=True,
        text=True,
        timeout=60,  # the defect: it never exited
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert (app.returncode, app.stdout) == (0, "ended\n"), app.stderr


def _told(fdn: Foundation | AsyncFoundation) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """What this node's watchers and its telemetry were told, by name."""
    watched_: dict[str, list[str]] = collections.defaultdict(list)
    telemetry: dict[str, list[str]] = collections.defaultdict(list)
    fdn.service_registry.watch("short.*", lambda c: watched_[c.name].append(c.kind))
    fdn.telemetry.attach(
        "review9-told",
        [("foundation", "registry", "register"), ("foundation", "registry", "expired")],
        lambda event, _m, meta, _c: telemetry[meta["name"]].append(event[-1]),
    )
    return watched_, telemetry


def _all_told(names: list[str], watched_: dict[str, list[str]]) -> bool:
    return all(watched_.get(n) == ["register", "expired"] for n in names)


def test_a_registration_dead_on_arrival_is_told_register_then_expired(db_url: str) -> None:
    with node(db_url) as fdn:
        watched_, telemetry = _told(fdn)
        names = [f"short.{i}" for i in range(20)]
        for name in names:
            fdn.service_registry.register(name, "addr", ttl=1)  # 1 ms: gone on arrival
        wait_for(lambda: _all_told(names, watched_))
        time.sleep(0.2)  # a sweep or a late feed read would report it twice
        assert {n: watched_[n] for n in names} == {n: ["register", "expired"] for n in names}
        assert {n: sorted(telemetry[n]) for n in names} == {
            n: ["expired", "register"] for n in names
        }


async def test_a_registration_dead_on_arrival_is_told_register_then_expired_async(
    db_url: str,
) -> None:
    fdn = await anode(db_url).open()
    try:
        watched_, telemetry = _told(fdn)
        names = [f"short.{i}" for i in range(20)]
        for name in names:
            await fdn.service_registry.register(name, "addr", ttl=1)
        await async_wait_for(lambda: _all_told(names, watched_))
        await asyncio.sleep(0.2)
        assert {n: watched_[n] for n in names} == {n: ["register", "expired"] for n in names}
        assert {n: sorted(telemetry[n]) for n in names} == {
            n: ["expired", "register"] for n in names
        }
    finally:
        await fdn.close()


def test_an_expiry_found_by_a_write_has_its_telemetry(db_url: str) -> None:
    with node(db_url) as fdn:
        reg = fdn.service_registry
        stop_heartbeat(fdn)  # no sweep: the next register finds the old one dead
        watched_, telemetry = _told(fdn)
        reg.register("short.again", "addr", ttl=50)
        time.sleep(0.1)
        reg.register("short.again", "addr")
        drain(reg)
        assert watched_["short.again"] == ["register", "expired", "register"]
        assert telemetry["short.again"] == ["register", "expired", "register"]


def test_a_poll_reports_another_nodes_joins_in_their_order(db_url: str) -> None:
    if not db_url.startswith("sqlite"):
        pytest.skip("PostgreSQL tells each join by NOTIFY; a listener's resync, by member id")
    with node(db_url, poll_interval_ms=200) as a, node(db_url, poll_interval_ms=200) as b:
        seen: list[tuple[str, str]] = []
        b.service_registry.register("warm", "x")  # b's next reads are polls, not a resync
        wait_for(lambda: a.service_registry.find("warm") is not None)
        b.service_registry.watch("grp", lambda c: seen.append((c.kind, c.entry.member_id)))
        for member in ("m3", "m1", "m2"):  # within one poll interval
            a.service_registry.join("grp", f"h:{member}", member_id=member)
        wait_for(lambda: len(seen) == 3)
        assert seen == [("join", "m3"), ("join", "m1"), ("join", "m2")]


def test_close_tells_the_expiry_of_a_local_entry_not_yet_swept(db_url: str) -> None:
    fdn = node(db_url)
    stop_heartbeat(fdn)  # no sweep: only close() can tell it
    seen = watched(fdn, "*")
    fdn.service_registry.register("brief", object(), local=True, ttl=20)
    time.sleep(0.05)
    fdn.close()
    assert kinds(seen) == ["register", "expired"]


def test_an_update_answered_as_its_ttl_ends_is_told_once(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foundation.service_registry import _model, _state

    with node(db_url) as fdn:
        reg = fdn.service_registry
        stop_heartbeat(fdn)
        watched_, telemetry = _told(fdn)
        reg.register("short.update", "addr", ttl=60_000)
        installed = reg._metadata_updated

        def late(*args: object) -> object:
            # The row comes back after the registration's own TTL ran out.
            later = lambda: time.time() + 120  # noqa: E731
            monkeypatch.setattr(_state, "_time", later)
            monkeypatch.setattr(_model, "_time", later)
            return installed(*args)  # type: ignore[arg-type]

        monkeypatch.setattr(reg, "_metadata_updated", late)
        reg.update_metadata("short.update", {"v": 2})
        reg._sweep()
        drain(reg)
        assert watched_["short.update"] == ["register", "expired"]
        assert telemetry["short.update"] == ["register", "expired"]


def _lose_register_replies(
    fdn: Foundation | AsyncFoundation,
    monkeypatch: pytest.MonkeyPatch,
    reads_fail: bool,
    aio: bool = False,
    meanwhile: Any = None,
    statement: str = "register",
) -> None:
    """The ``statement``'s (``register``, ``join``, ``unregister``, ``update_metadata``,
    ``leave``) writes commit, then
    their reply is lost (and, with ``reads_fail``, the database stays away for the read
    that follows)."""
    from foundation import StorageUnavailableError

    reg, db = fdn.service_registry, fdn.service_registry._db
    sql_ = reg._sql
    writes = {
        "register": {sql_.register, sql_.register_new},
        "join": {sql_.join},
        "unregister": {sql_.unregister, sql_.unregister_force},
        "update_metadata": {sql_.update_metadata},
        "leave": {sql_.leave},
    }[statement]
    read = sql_.select_member if statement == "join" else sql_.select_entry
    down = {"read": reads_fail}

    def before(sql: str) -> None:
        if sql == read and down["read"]:
            down["read"] = False  # back for the heartbeat
            raise StorageUnavailableError("still down (simulated)")

    def after(sql: str) -> None:
        if sql in writes:
            if meanwhile is not None:
                meanwhile()
            raise StorageUnavailableError("the reply was lost (simulated)")

    for method in ("execute", "fetchone"):
        real = getattr(db, method)

        async def acall(sql: str, params: Any = None, _real: Any = real) -> Any:
            before(sql)
            result = await _real(sql, params)
            after(sql)
            return result

        def call(sql: str, params: Any = None, _real: Any = real) -> Any:
            before(sql)
            result = _real(sql, params)
            after(sql)
            return result

        monkeypatch.setattr(db, method, acall if aio else call)


def _recovered(reg: Any) -> None:
    """The cut that lost the reply also cost the lease: recovered under a new one."""
    reg._lost_locally()
    reg._recover()


def test_a_register_whose_reply_was_lost_is_adopted(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as fdn:
        reg = fdn.service_registry
        _lose_register_replies(fdn, monkeypatch, reads_fail=False)
        entry = reg.register("svc", "http://a")  # written: the read after says so
        monkeypatch.undo()
        assert reg.owns("svc") and reg.lookup("svc").epoch == entry.epoch
        reg.unregister("svc")
        assert reg.find("svc") is None


def test_a_lost_register_left_alone_is_released_by_the_heartbeat(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as fdn, node(db_url) as other:
        reg = fdn.service_registry
        _lose_register_replies(fdn, monkeypatch, reads_fail=True)
        with pytest.raises(FoundationError) as err:
            reg.register("svc", "http://a")
        monkeypatch.undo()
        assert err.value.code == "storage_unavailable" and not reg.owns("svc")
        reg.heartbeat()  # the failed call said nothing was written: so it is
        wait_for(lambda: other.service_registry.find("svc") is None)
        other.service_registry.register("svc", "http://b")


@pytest.mark.parametrize(
    ("first", "retry"),
    [
        ({"address": "http://a"}, {"address": "http://b"}),  # another address
        ({"address": "http://a", "ttl": 1000}, {"address": "http://a", "ttl": 60_000}),
    ],
)
def test_a_retry_with_other_values_replaces_a_lost_register(
    db_url: str, monkeypatch: pytest.MonkeyPatch, first: dict[str, Any], retry: dict[str, Any]
) -> None:
    with node(db_url) as fdn:
        reg = fdn.service_registry
        _lose_register_replies(fdn, monkeypatch, reads_fail=True)
        with pytest.raises(FoundationError):
            reg.register("svc", **first)
        monkeypatch.undo()
        entry = reg.register("svc", **retry)
        assert entry.epoch == 2  # written anew, with the retry's values
        assert reg.owns("svc") and reg.lookup("svc").address == retry["address"]
        if "ttl" in retry:  # the row's own expiry is the retry's
            assert entry.until - entry.registered_at.timestamp() > 50


async def test_a_register_whose_reply_was_lost_is_adopted_async(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fdn = await anode(db_url).open()
    try:
        reg = fdn.service_registry
        _lose_register_replies(fdn, monkeypatch, reads_fail=False, aio=True)
        await reg.register("svc", "http://a")
        monkeypatch.undo()
        assert reg.owns("svc")
        await reg.unregister("svc")
        _lose_register_replies(fdn, monkeypatch, reads_fail=True, aio=True)
        with pytest.raises(FoundationError):
            await reg.register("again", "http://a")
        monkeypatch.undo()
        assert await reg.heartbeat()
        await async_wait_for(lambda: reg.find("again") is None)
    finally:
        await fdn.close()


def test_a_lost_register_is_not_adopted_under_a_lease_recovered_since(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as fdn, node(db_url) as other:
        reg = fdn.service_registry
        _lose_register_replies(
            fdn, monkeypatch, reads_fail=False, meanwhile=lambda: _recovered(reg)
        )
        with pytest.raises(FoundationError):
            reg.register("svc", "http://a")
        monkeypatch.undo()
        assert not reg.owns("svc")
        wait_for(lambda: other.service_registry.find("svc") is None)
        other.service_registry.register("svc", "http://b")  # free: its row's lease is dead
