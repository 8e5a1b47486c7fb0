"""Found in the eleventh round of review.

* PostgreSQL: a registry write whose connection was cut while its statement still ran on
  the server (waiting for a lock: a migration's non-concurrent ``CREATE INDEX``, another
  session's ``LOCK TABLE``) was judged by a read made at once, before the statement
  committed. The read said "not written", so nothing was left in doubt, and then the
  statement committed: a ``register`` left a row of this node's lease it did not hold
  (renewed for ever, ``unregister`` ``not_found``), a ``join`` a member ``leave`` could
  not remove (a retry made two), an ``unregister`` reached the node's watchers as
  ``remote`` then ``lost``. Such a read is trusted now only once the server process of
  the cut connection is idle or gone; until then the write is in doubt, and the
  heartbeat settles it once that process has ended.
* ``read_stream(stream_id, from_version=N)`` read the whole stream and kept versions from N
  in Python (a 20,000-event stream read 41 pages to return 2 events); ``from_version``
  past the largest version was taken, where other arguments are capped.
* ``expected_version=None`` was refused, where None means "not given" for every other
  optional field of an event (an envelope dataclass or model with
  ``expected_version: int | None = None`` could store nothing).
* A pydantic envelope naming the event's fields by alias, with one field more, was refused
  naming its aliased field (``kind``) instead of the extra one.
* ``get({"type": "a"}, type="b")`` answered for ``b`` without a word; a criterion given
  both ways is refused (``get``, ``iter``, ``tail``).
* The registry handed out its cache's own dicts and lists: ``lookup(n).metadata["x"] = 1``
  (or a watcher's, a member's) changed what every later read in the process returned,
  while the database and other nodes kept the real value. They are read-only now, as
  config's values and the event log's cached records are.
* A closed instance's registry answered reads from a cache nothing kept fresh any more
  (another node's old address, after it had moved); an ``AsyncFoundation`` never opened
  answered ``not_found`` for a name another node held (a forgotten ``open()`` looked
  like a missing service). Both raise ``storage_unavailable`` saying why.
* An ``AsyncFoundation`` opened in one event loop and used in another (two
  ``asyncio.run``) registered names its heartbeat, dead with the first loop, never
  renewed: they vanished after the TTL without a word. Its calls raise now; closing it
  from another loop raised a bare ``RuntimeError`` (PostgreSQL), and releases its names.
* Found in review of those fixes: a read method taken before ``open()`` refused for good;
  a cut write whose server process id had gone to another process (a restart) was never
  judged (the heartbeat settled no doubt again while that process lived).
* PostgreSQL: a server that stopped answering (a partition, no reset) held a ``register``
  until the kernel gave up on the connection, about 15 minutes: far past every lease.
  Connections now carry libpq's keepalive and ``tcp_user_timeout`` options, unless the URL
  sets them.
* ``foundation events import`` of a file that begins with a byte order mark (an editor's,
  on Windows) refused its first line as not JSON.
* A URL naming a ``service=`` of ``pg_service.conf`` had its settings overridden by the
  keepalive defaults added in this round.
* Found in the last review: a close in another loop with a subscription raised
  ``RuntimeError`` (PostgreSQL) or hung for good (SQLite: the connection's thread died
  answering what the first loop left in flight); the check of a cut connection's server
  process compared it with ``current_user``, which a session that switched roles does not
  log in as (the check was off); a ``close()`` interrupted (Ctrl-C) left the cache
  answering; ``PGSERVICE`` had its service's settings overridden.
* ``foundation.registry.conflict`` was not emitted for a name held by a local entry, and
  lacked ``epoch`` for a local ``register`` refused by a cluster owner.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
import threading
from typing import Any

import psycopg
import pydantic
import pytest
from psycopg.conninfo import conninfo_to_dict

from foundation import AsyncFoundation, Foundation, FoundationError, StorageUnavailableError
from foundation.database.codec import codec_for
from foundation.database.url import DatabaseURL
from foundation.service_registry._store import RegistrySQL
from tests.cut_proxy import cut_proxy
from tests.helpers import async_wait_for, wait_for
from tests.test_events_cli import ok
from tests.test_registry import node
from tests.test_registry_async import anode
from tests.test_registry_review3 import kinds, watched


class _LockedTable:
    """Another session's lock on a table: Foundation's writes to it wait on the server."""

    def __init__(self, url: str, table: str) -> None:
        self._conninfo = DatabaseURL.parse(url).conninfo
        self._conn = psycopg.connect(self._conninfo)
        self._conn.execute(f"LOCK TABLE {table} IN SHARE MODE")  # a test's constant

    def cut_the_waiting_write(self, proxy: Any) -> None:
        """Cut the connection of the write waiting for this lock (its reply is lost)."""
        query = (
            "SELECT client_port FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND datname = current_database() AND pid <> pg_backend_pid()"
        )
        with psycopg.connect(self._conninfo, autocommit=True) as admin:
            port = wait_for(lambda: admin.execute(query).fetchone())[0]
        assert proxy.cut(port) == 1

    def release(self) -> None:
        if not self._conn.closed:
            self._conn.commit()  # the waiting write goes on, and commits
            self._conn.close()

    def __enter__(self) -> _LockedTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()  # a failed test's too: the nodes could not close behind it


def _in_thread(call: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(call())
        except FoundationError as exc:
            out.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def _lost(thread: threading.Thread, out: list[Any]) -> FoundationError:
    thread.join(30)
    assert len(out) == 1 and isinstance(out[0], FoundationError), out
    assert out[0].code == "storage_unavailable"
    assert isinstance(out[0].context.get("backend_pid"), int)  # the server process it ran in
    return out[0]


def test_a_register_cut_while_it_waits_is_settled_once_it_lands(pg_url: str) -> None:
    with cut_proxy(pg_url) as (proxy, via), node(via) as fdn, node(pg_url) as other:
        reg = fdn.service_registry
        with _LockedTable(pg_url, "foundation_registry") as lock:
            thread, out = _in_thread(lambda: reg.register("svc", "http://a"))
            lock.cut_the_waiting_write(proxy)
            _lost(thread, out)
            assert not reg.owns("svc")
        wait_for(lambda: other.service_registry.find("svc") is not None)  # it landed
        # The call said nothing was written: the heartbeat releases the row.
        wait_for(lambda: reg.heartbeat() and other.service_registry.find("svc") is None)
        entry = reg.register("svc", "http://a")  # the caller's retry: the name is free
        assert reg.owns("svc")
        wait_for(lambda: other.service_registry.find("svc") == entry)


def test_an_unregister_cut_while_it_waits_is_told_local(pg_url: str) -> None:
    with cut_proxy(pg_url) as (proxy, via), node(via) as fdn, node(pg_url) as other:
        reg = fdn.service_registry
        reg.register("svc", "http://a")
        wait_for(lambda: other.service_registry.find("svc") is not None)
        seen = watched(fdn, "svc")
        with _LockedTable(pg_url, "foundation_registry") as lock:
            thread, out = _in_thread(lambda: reg.unregister("svc"))
            lock.cut_the_waiting_write(proxy)
            _lost(thread, out)
            assert not reg.owns("svc")
        wait_for(lambda: other.service_registry.find("svc") is None)
        reg.heartbeat()
        wait_for(lambda: kinds(seen) == ["unregister"])
        assert [c.source for c in seen] == ["local"]
        assert reg.find("svc") is None


async def test_a_join_cut_while_it_waits_is_removed_once_it_lands(pg_url: str) -> None:
    with cut_proxy(pg_url) as (proxy, via):
        async with anode(via) as fdn, anode(pg_url) as other:
            reg = fdn.service_registry
            with _LockedTable(pg_url, "foundation_registry_members") as lock:
                task = asyncio.ensure_future(reg.join("workers", "http://a"))
                await asyncio.to_thread(lock.cut_the_waiting_write, proxy)
                with pytest.raises(FoundationError) as err:
                    await task
                assert err.value.code == "storage_unavailable"
            await async_wait_for(lambda: len(other.service_registry.members("workers")) == 1)
            for _ in range(200):  # the heartbeat removes it once the cut write has ended
                await reg.heartbeat()
                if other.service_registry.members("workers") == []:
                    break
            await async_wait_for(lambda: other.service_registry.members("workers") == [])
            member = await reg.join("workers", "http://a")  # a retry: one member
            await async_wait_for(lambda: other.service_registry.members("workers") == [member])


# -- events -------------------------------------------------------------------------------


def _rows_read(fdn: Any) -> list[int]:
    """The rows each page of a read fetched (``foundation.events.get``'s count)."""
    counts: list[int] = []
    fdn.telemetry.attach(
        "review11-rows", "foundation.events.get", lambda _n, m, _meta, _c: counts.append(m["count"])
    )
    return counts


def _a_stream(n: int) -> list[dict[str, Any]]:
    return [{"type": "step", "stream_id": "s", "data": {"i": i}} for i in range(n)]


def test_read_stream_reads_from_the_version_on(fdn: Foundation) -> None:
    fdn.events.store_many(_a_stream(1200))
    fdn.events.store({"type": "other", "stream_id": "t", "data": {}})
    counts = _rows_read(fdn)
    tail = fdn.events.read_stream("s", from_version=1199)
    assert [e.stream_version for e in tail] == [1199, 1200]
    assert sum(counts) == 2  # not the 1,200 rows of the stream
    assert [e.stream_version for e in fdn.events.read_stream("s", from_version=0)][-1] == 1200
    assert len(fdn.events.read_stream("s", from_version=1)) == 1200
    assert fdn.events.read_stream("s", from_version=1201) == []
    assert fdn.events.read_stream("nope", from_version=5) == []
    with pytest.raises(FoundationError) as err:
        fdn.events.read_stream("s", from_version=2**70)
    assert err.value.code == "event_error" and "from_version" in err.value.message


async def test_read_stream_reads_from_the_version_on_async(afdn: AsyncFoundation) -> None:
    await afdn.events.store_many(_a_stream(600))
    counts = _rows_read(afdn)
    tail = await afdn.events.read_stream("s", from_version=600)
    assert [e.stream_version for e in tail] == [600] and sum(counts) == 1
    assert len(await afdn.events.read_stream("s", from_version=2)) == 599
    assert await afdn.events.read_stream("s", from_version=601) == []


@dataclasses.dataclass
class _Envelope:
    type: str
    data: dict[str, Any]
    stream_id: str | None = None
    expected_version: int | str | None = None


def test_expected_version_none_is_not_given(fdn: Foundation) -> None:
    first = fdn.events.store(_Envelope("opened", {}, "acct-1"))
    second = fdn.events.store({"type": "x", "data": {}, "expected_version": None})
    assert (first.stream_version, second.stream_version) == (1, None)
    with pytest.raises(FoundationError) as err:  # a version still holds to its stream
        fdn.events.store(_Envelope("closed", {}, "acct-1", expected_version=0))
    assert err.value.code == "concurrency_error"


async def test_expected_version_none_is_not_given_async(afdn: AsyncFoundation) -> None:
    recorded = await afdn.events.store(_Envelope("opened", {}, "acct-1"))
    assert recorded.stream_version == 1


class _Aliased(pydantic.BaseModel):
    kind: str = pydantic.Field(alias="type")
    data: dict[str, Any]
    note: str = "x"


def test_an_aliased_envelope_with_a_field_more_names_that_field(fdn: Foundation) -> None:
    with pytest.raises(FoundationError) as err:
        fdn.events.store(_Aliased(type="t", data={}))
    assert err.value.code == "event_error" and err.value.context["field"] == "note"
    assert fdn.events.get() == []


@pytest.mark.parametrize("read", ["get", "iter", "tail"])
def test_a_criterion_given_twice_is_refused(fdn: Foundation, read: str) -> None:
    fdn.events.store({"type": "a", "data": {}})
    with pytest.raises(FoundationError) as err:
        list(getattr(fdn.events, read)({"type": "a"}, type="b"))
    assert err.value.code == "event_error" and err.value.context == {"criterion": "type"}
    assert len(fdn.events.get({"type": "a"}, limit=5)) == 1  # distinct keys still merge


# -- registry: what reads hand out, and when they answer ----------------------------------


def _refuses_changes(value: Any) -> None:
    with pytest.raises(TypeError, match="read-only"):
        value["x"] = 1 if isinstance(value, dict) else value.append(1)


def test_registry_values_are_read_only(db_url: str) -> None:
    with node(db_url) as fdn, node(db_url) as other:
        reg = fdn.service_registry
        seen = watched(other, "svc")
        entry = reg.register("svc", {"host": "h", "ports": [1]}, {"tags": ["a"], "n": {"k": 1}})
        member = reg.join("workers", ["h", 1], {"zone": "a"})
        for value in (entry.address, entry.metadata, entry.metadata["tags"], member.metadata):
            _refuses_changes(value)
        _refuses_changes(reg.lookup("svc").metadata["n"])
        wait_for(lambda: other.service_registry.find("svc") is not None and seen)
        theirs = other.service_registry.lookup("svc")
        for value in (theirs.address["ports"], seen[0].entry.metadata, theirs.metadata):
            _refuses_changes(value)
        _refuses_changes(wait_for(lambda: other.service_registry.members("workers"))[0].address)
        copied = copy.deepcopy(theirs.metadata)
        copied["tags"].append("b")  # a private copy is the caller's
        assert reg.lookup("svc").metadata == {"tags": ["a"], "n": {"k": 1}}
        assert json.loads(json.dumps(theirs.metadata)) == {"tags": ["a"], "n": {"k": 1}}
        updated = reg.update_metadata("svc", {"v": [2]})
        _refuses_changes(updated.metadata["v"])
        obj = {"any": "object"}  # a local entry's address is the object given, as it is
        assert reg.register("here", obj, local=True).address is obj


def test_reads_of_a_closed_instance_raise(db_url: str) -> None:
    with node(db_url) as other:
        other.service_registry.register("svc", "http://b")
        fdn = node(db_url)
        assert fdn.service_registry.lookup("svc").address == "http://b"
        fdn.close()
        for read in (
            lambda: fdn.service_registry.lookup("svc"),
            lambda: fdn.service_registry.find("svc"),
            lambda: fdn.service_registry.list(),
            lambda: fdn.service_registry.members("g"),
        ):
            with pytest.raises(FoundationError) as err:
                read()
            assert err.value.code == "storage_unavailable" and "closed" in err.value.message


async def test_reads_before_open_and_after_close_raise_async(db_url: str) -> None:
    with node(db_url) as other:
        other.service_registry.register("svc", "http://b")
        fdn = anode(db_url)
        with pytest.raises(FoundationError) as err:
            fdn.service_registry.lookup("svc")
        assert err.value.code == "storage_unavailable" and "not open" in err.value.message
        with pytest.raises(FoundationError):
            fdn.service_registry.list()
        async with fdn:
            assert fdn.service_registry.lookup("svc").address == "http://b"
        with pytest.raises(FoundationError) as err:
            fdn.service_registry.find("svc")
        assert "closed" in err.value.message


def test_an_async_instance_used_in_another_loop_says_so(db_url: str) -> None:
    fdn = anode(db_url)
    asyncio.run(fdn.open())

    async def second() -> None:
        with pytest.raises(FoundationError) as err:
            await fdn.service_registry.register("svc", "http://a")
        assert err.value.code == "storage_unavailable" and "event loop" in err.value.message
        with pytest.raises(FoundationError):
            await fdn.events.store({"type": "t", "data": {}})

    asyncio.run(second())
    asyncio.run(fdn.close())  # from yet another loop: closed all the same, no RuntimeError
    with node(db_url) as other:
        assert other.service_registry.find("svc") is None


def test_close_in_another_loop_releases_the_names(db_url: str) -> None:
    fdn = anode(db_url)

    async def first() -> None:
        await fdn.open()
        await fdn.service_registry.register("svc", "http://a")

    asyncio.run(first())
    asyncio.run(fdn.close())
    with node(db_url) as other:  # released at once, not left for the lease to run out
        row = other.database.fetchone("SELECT node_id FROM foundation_registry WHERE name = 'svc'")
        assert row is not None and row[0] is None


async def test_a_read_method_taken_before_open_answers_once_open(db_url: str) -> None:
    with node(db_url) as other:
        other.service_registry.register("svc", "http://b")
        fdn = anode(db_url)
        lookup, find = fdn.service_registry.lookup, fdn.service_registry.find
        async with fdn:
            assert lookup("svc").address == "http://b" and find("nope") is None
        with pytest.raises(FoundationError) as err:
            lookup("svc")
        assert "closed" in err.value.message


def test_a_lost_write_whose_process_id_is_another_s_is_judged_at_once(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cut connection's server process is gone and its pid names another process (a
    restart gave it away): not the write's, so the read is trusted."""
    with node(pg_url) as fdn:
        reg = fdn.service_registry
        row = fdn.database.fetchone(
            "SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'"
        )
        assert row is not None
        real = reg._db.fetchone
        lost_once: list[str] = []

        def lost(sql: str, params: Any = None) -> Any:
            done = real(sql, params)
            if sql == reg._sql.register:  # PostgreSQL's register: one upsert
                lost_once.append(sql)
                raise StorageUnavailableError("reply lost", context={"backend_pid": row[0]})
            return done

        monkeypatch.setattr(reg._db, "fetchone", lost)
        entry = reg.register("svc", "http://a")  # landed: adopted, not left in doubt
        monkeypatch.undo()
        assert lost_once and reg.owns("svc") and entry.address == "http://a"
        assert reg._in_doubt == set() and reg._cut_backends == set()


def test_conflicts_with_local_entries_are_told(db_url: str) -> None:
    with node(db_url) as fdn, node(db_url) as other:
        told: list[dict[str, Any]] = []
        fdn.telemetry.attach(
            "review11-conflict",
            "foundation.registry.conflict",
            lambda _n, _m, meta, _c: told.append(meta),
        )
        fdn.service_registry.register("mine", object(), local=True)
        for local in (False, True):
            with pytest.raises(FoundationError):
                fdn.service_registry.register("mine", "http://a", local=local)
        assert [t.get("local") for t in told] == [True, True]
        entry = other.service_registry.register("theirs", "http://b")
        wait_for(lambda: fdn.service_registry.find("theirs") is not None)
        with pytest.raises(FoundationError) as err:
            fdn.service_registry.register("theirs", object(), local=True)
        assert told[-1]["epoch"] == entry.epoch == err.value.context["epoch"]


def test_connections_notice_a_server_that_stops_answering(pg_url: str) -> None:
    given = DatabaseURL.parse(pg_url + "?tcp_user_timeout=5000")
    options = conninfo_to_dict(given.conninfo)
    assert options["tcp_user_timeout"] == "5000"  # the URL's own wins
    assert "keepalives" not in options  # and a URL that tunes one adds no other (review 12)
    with Foundation(pg_url, migrate="skip") as fdn:
        with fdn.database.connection() as conn:  # what a pooled connection was opened with
            used = {o.keyword.decode(): o.val for o in conn.pgconn.info if o.val is not None}
        assert used["keepalives"] == b"1" and int(used["tcp_user_timeout"]) > 0


def test_an_import_file_may_begin_with_a_byte_order_mark(db_url: str, tmp_path: Any) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text('{"type": "a", "data": {}}\n', encoding="utf-8-sig")
    ok(db_url, "events", "import", str(path))
    with Foundation(db_url, migrate="skip") as fdn:
        assert [e.type for e in fdn.events.get()] == ["a"]


def test_a_service_file_entry_keeps_its_own_settings() -> None:
    named = DatabaseURL.parse("postgresql+psycopg:///?service=app")
    assert "keepalives" not in named.conninfo and "tcp_user_timeout" not in named.conninfo


# aiosqlite's thread dies answering a statement the first loop left in flight (its own
# "Event loop is closed"): the first asyncio.run's doing, not the close's.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_close_in_another_loop_releases_a_subscription_too(db_url: str) -> None:
    fdn = anode(db_url)

    async def handler(event: Any) -> None:
        pass

    async def first() -> None:
        await fdn.open()
        await fdn.service_registry.register("svc", "http://a")
        await fdn.events.subscribe("projector", handler)

    asyncio.run(first())
    asyncio.run(fdn.close())  # returns, in that loop, and releases all
    with node(db_url) as other:
        rows = other.database.fetchall(
            "SELECT status, owner FROM foundation_subscriptions WHERE name = 'projector'"
        )
        assert rows == [("stopped", None)]
        assert other.service_registry.find("svc") is None


def test_the_busy_check_goes_by_the_login_role(pg_url: str) -> None:
    conninfo = DatabaseURL.parse(pg_url).conninfo
    busy = RegistrySQL.build("postgresql", codec_for("postgresql")).backend_busy
    with (
        psycopg.connect(conninfo, autocommit=True) as sleeper,
        psycopg.connect(conninfo, autocommit=True) as checker,
    ):
        pid = sleeper.info.backend_pid
        thread = threading.Thread(target=lambda: sleeper.execute("SELECT pg_sleep(1)"))
        thread.start()
        state = "SELECT state FROM pg_stat_activity WHERE pid = %(pid)s"
        wait_for(lambda: checker.execute(state, {"pid": pid}).fetchone() == ("active",))
        checker.execute("SET ROLE pg_read_all_stats")  # a session that switched roles
        assert checker.execute(busy, {"pid": pid}).fetchone() is not None
        thread.join()
        wait_for(lambda: checker.execute(busy, {"pid": pid}).fetchone() is None)


def test_an_interrupted_close_still_refuses_reads(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fdn = node(db_url)
    reg = fdn.service_registry

    def interrupted(timeout: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(reg._dispatcher, "close", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fdn.close()
    monkeypatch.undo()
    fdn.close()  # again: returns at once
    with pytest.raises(FoundationError) as err:
        reg.find("svc")
    assert err.value.code == "storage_unavailable"


def test_pgservice_keeps_its_service_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGSERVICE", "app")
    assert "keepalives" not in DatabaseURL.parse("postgresql+psycopg://h/db").conninfo
