"""Found by a reviewer building an event-sourced app.

* A retry sent while its original was still in flight (same id, same content, an
  ``expected_version``) was told ``concurrency_error`` on PostgreSQL, when the original
  committed between the retry's id lookup and its insert: the stream's version is checked
  before the id, so the retry read as a writer that lost the race. It now gets the
  original record, as a retry after the original does.
* ``foundation events tail -n N --follow`` printed an event twice when it committed
  between the log's last position and the read of the last N.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Generator, Iterator
from typing import Any

import pytest

import foundation.events._aio as aio_events
import foundation.events._service as sync_events
from foundation import AsyncFoundation, ConcurrencyError, Foundation
from foundation.events._plan import known_ids

from .test_events_cli import ok


@pytest.fixture
def pg_url(postgres_server: str, postgres_template: str) -> Iterator[str]:
    # SQLite looks the ids up inside its write transaction: no window to force there.
    from tests.conftest import fresh_postgres

    with fresh_postgres(postgres_server, postgres_template) as url:
        yield url


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

    def last_then_store(self: Any) -> int:
        position = real(self)
        with Foundation(db_url, migrate="check") as other:
            other.events.store({"type": "t", "data": {"n": 3}})
        return position

    monkeypatch.setattr(sync_events.Events, "last_position", last_then_store)
    out = ok(db_url, "events", "tail", "-n", "5", "--follow", "--idle-timeout", "0.3", "--json")
    positions = [json.loads(line)["position"] for line in out.stdout.splitlines()]
    assert positions == [1, 2, 3, 4]
