"""Found by a reviewer building an event-sourced app.

* A retry sent while its original was still in flight (same id, same content, an
  ``expected_version``) was told ``concurrency_error`` on PostgreSQL, when the original
  committed between the retry's id lookup and its insert: the stream's version is checked
  before the id, so the retry read as a writer that lost the race. It now gets the
  original record, as a retry after the original does.
* ``foundation events tail -n N --follow`` printed an event twice when it committed
  between the log's last position and the read of the last N.
* The tail cache answered without an event another node had committed, until the change
  feed brought it (50 of 50 reads right after that store on SQLite, 45 of 50 on
  PostgreSQL): a read after another node's write must see it.
* ``events query`` could not select by correlation, causation or time, nor ``export`` by
  stream (an auditor's first questions).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

import foundation.events._aio as aio_events
import foundation.events._service as sync_events
from foundation import AsyncFoundation, ConcurrencyError, EventError, Foundation
from foundation.events._plan import known_ids
from tests.helpers import async_wait_for, wait_for

from .test_events_cli import ok, run


def _order(stream: str, expected: Any = "no_stream") -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "type": "order_placed",
        "stream_id": stream,
        "expected_version": expected,
        "data": {"total": 42},
    }


def _original_lands_after_lookup(
    monkeypatch: pytest.MonkeyPatch, module: Any, url: str, event: dict[str, Any]
) -> None:
    """The next id lookup of ``module``'s store finds nothing, then ``event`` is stored by
    another instance before the store goes on: its original committed meanwhile."""
    calls = []

    def lookup(sql: Any, batch: Any) -> Generator[Any, Any, Any]:
        known = yield from known_ids(sql, batch)
        if not calls:
            calls.append(1)
            with Foundation(url, migrate="check") as other:
                other.events.store(event)
        return known

    monkeypatch.setattr(module, "known_ids", lookup)


def test_a_retry_overlapping_its_original_gets_the_original_record(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = _order("order-1")
    with Foundation(pg_url, migrate="check") as fdn:
        _original_lands_after_lookup(monkeypatch, sync_events, pg_url, event)
        record = fdn.events.store(event)
        assert (str(record.id), record.stream_version) == (event["id"], 1)
        assert len(fdn.events.read_stream("order-1")) == 1


async def test_a_retry_overlapping_its_original_gets_the_original_record_async(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    event = _order("order-1")
    async with AsyncFoundation(pg_url, migrate="check") as fdn:
        _original_lands_after_lookup(monkeypatch, aio_events, pg_url, event)
        record = await fdn.events.store(event)
        assert (str(record.id), record.stream_version) == (event["id"], 1)
        assert len(await fdn.events.read_stream("order-1")) == 1


def test_a_store_of_other_ids_that_lost_the_version_still_conflicts(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, theirs = _order("order-1"), _order("order-1")
    with Foundation(pg_url, migrate="check") as fdn:
        _original_lands_after_lookup(monkeypatch, sync_events, pg_url, theirs)
        with pytest.raises(ConcurrencyError) as caught:
            fdn.events.store(mine)
        assert caught.value.context["actual"] == 1
        assert caught.value.context["id"] == mine["id"]
        assert [str(e.id) for e in fdn.events.read_stream("order-1")] == [theirs["id"]]


async def test_a_store_of_other_ids_that_lost_the_version_still_conflicts_async(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, theirs = _order("order-1"), _order("order-1")
    async with AsyncFoundation(pg_url, migrate="check") as fdn:
        _original_lands_after_lookup(monkeypatch, aio_events, pg_url, theirs)
        with pytest.raises(ConcurrencyError):
            await fdn.events.store(mine)
        assert [str(e.id) for e in await fdn.events.read_stream("order-1")] == [theirs["id"]]


def test_identical_stores_from_many_threads_all_get_the_one_record(fdn: Foundation) -> None:
    event = _order("order-1")
    outcomes: list[Any] = []

    def store() -> None:
        try:
            outcomes.append(fdn.events.store(event).position)
        except Exception as exc:
            outcomes.append(exc)

    threads = [threading.Thread(target=store) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(outcomes)) == 1 and isinstance(outcomes[0], int), outcomes
    assert len(fdn.events.read_stream("order-1")) == 1


async def test_identical_stores_from_many_tasks_all_get_the_one_record(
    afdn: AsyncFoundation,
) -> None:
    event = _order("order-1")
    outcomes = await asyncio.gather(
        *(afdn.events.store(event) for _ in range(8)), return_exceptions=True
    )
    assert {getattr(o, "position", o) for o in outcomes} == {outcomes[0].position}, outcomes
    assert len(await afdn.events.read_stream("order-1")) == 1


def test_cli_tail_follow_prints_an_event_stored_meanwhile_once(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Foundation(db_url, migrate="check") as fdn:
        fdn.events.store_many([{"type": "t", "data": {"n": n}} for n in range(3)])
    real = sync_events.Events.last_position

    calls: list[int] = []

    def last_then_store(self: Any) -> int:
        position = real(self)
        if not calls:  # the command's first look: then another node stores
            calls.append(position)
            with Foundation(db_url, migrate="check") as other:
                other.events.store({"type": "t", "data": {"n": 3}})
        return position

    monkeypatch.setattr(sync_events.Events, "last_position", last_then_store)
    out = ok(db_url, "events", "tail", "-n", "5", "--follow", "--idle-timeout", "0.3", "--json")
    positions = [json.loads(line)["position"] for line in out.stdout.splitlines()]
    assert positions == [1, 2, 3, 4]


def _blind_cache(monkeypatch: pytest.MonkeyPatch, fdn: Foundation | AsyncFoundation) -> None:
    """The change feed no longer brings other nodes' events to ``fdn``'s tail cache (as
    for the moment between another node's commit and its notification)."""
    monkeypatch.setattr(fdn.events, "on_notify", lambda payload, reader: None)
    monkeypatch.setattr(fdn.events, "poll", lambda reader: None)


def test_the_tail_cache_never_misses_another_nodes_committed_event(
    fdn: Foundation, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert fdn.feed.wait_connected(10)
    wait_for(lambda: fdn.events.tail_cache.window()[0])  # loaded
    mine = fdn.events.store({"type": "t", "data": 1})
    hits = fdn.events.tail_cache.hits
    assert fdn.events.get(type="t", order="desc", limit=1) == [mine]
    assert fdn.events.tail_cache.hits == hits + 1  # the cache answered
    _blind_cache(monkeypatch, fdn)
    with Foundation(db_url, migrate="check") as other:
        theirs = other.events.store({"type": "t", "data": 2})
    assert fdn.events.get(type="t", order="desc", limit=1) == [theirs]
    assert fdn.events.get(type="t") == [mine, theirs]


async def test_the_tail_cache_never_misses_another_nodes_committed_event_async(
    afdn: AsyncFoundation, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert await asyncio.to_thread(afdn.feed.wait_connected, 10)
    await async_wait_for(lambda: afdn.events.tail_cache.window()[0])
    mine = await afdn.events.store({"type": "t", "data": 1})
    hits = afdn.events.tail_cache.hits
    assert await afdn.events.get(type="t", order="desc", limit=1) == [mine]
    assert afdn.events.tail_cache.hits == hits + 1
    _blind_cache(monkeypatch, afdn)
    with Foundation(db_url, migrate="check") as other:
        theirs = other.events.store({"type": "t", "data": 2})
    assert await afdn.events.get(type="t", order="desc", limit=1) == [theirs]


@pytest.mark.parametrize(("field", "value"), [("id", "not-a-uuid"), ("expected_version", "x")])
def test_a_bad_id_or_expected_version_names_its_field(
    fdn: Foundation, field: str, value: str
) -> None:
    with pytest.raises(EventError) as info:
        fdn.events.store({"type": "t", "stream_id": "s", field: value})
    assert info.value.context["field"] == field


def test_cli_query_by_correlation_causation_and_time(db_url: str, tmp_path: Path) -> None:
    with Foundation(db_url, migrate="check") as fdn:
        first = fdn.events.store({"type": "a", "correlation_id": "req-1", "stream_id": "s"})
        second = fdn.events.store(
            {"type": "b", "correlation_id": "req-1", "causation_id": str(first.id)}
        )
        fdn.events.store({"type": "c", "correlation_id": "req-2", "stream_id": "s"})

    def positions(*args: str) -> list[int]:
        rows = json.loads(ok(db_url, "events", "query", "--json", *args).stdout)
        return [r["position"] for r in rows]

    assert positions("--correlation-id", "req-1") == [first.position, second.position]
    assert positions("--causation-id", str(first.id)) == [second.position]
    moment = second.recorded_at.isoformat()
    assert positions("--before", moment) == [first.position]
    bare = second.recorded_at.replace(tzinfo=None).isoformat()  # no offset: UTC
    assert positions("--after", bare) == [second.position + 1]
    assert "not an ISO 8601 time" in run(db_url, "events", "query", "--after", "soon").stderr
    out = tmp_path / "s.jsonl"
    ok(db_url, "events", "export", str(out), "--stream", "s")
    assert [json.loads(line)["type"] for line in out.read_text().splitlines()] == ["a", "c"]
