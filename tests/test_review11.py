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
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from typing import Any

import psycopg
import pydantic
import pytest

from foundation import AsyncFoundation, Foundation, FoundationError
from foundation.database.url import DatabaseURL
from tests.cut_proxy import cut_proxy
from tests.helpers import async_wait_for, wait_for
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
