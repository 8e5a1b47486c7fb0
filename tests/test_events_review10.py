"""Found in the tenth round of review.

* PostgreSQL: retries overlapping in flight in a chain (``store_many([A, B])``,
  ``store_many([B, C])`` and ``store_many([C])`` at once, the same content for each id)
  failed with the driver's unique violation (``storage_error``) in 10 to 27 of 30 rounds:
  a store looked its ids up again only once after losing an id race, and lost the next
  race too. It looks them up again as long as each try finds more of them recorded.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Iterator
from typing import Any

import pytest

import foundation.events._aio as aio_events
import foundation.events._service as sync_events
from foundation import AsyncFoundation, Foundation
from foundation.events._plan import known_ids


@pytest.fixture
def pg_url(postgres_server: str, postgres_template: str) -> Iterator[str]:
    # SQLite looks the ids up inside its write transaction: no race to lose there.
    from tests.conftest import fresh_postgres

    with fresh_postgres(postgres_server, postgres_template) as url:
        yield url


def _each_lookup_loses_a_race(
    monkeypatch: pytest.MonkeyPatch, module: Any, url: str, events: list[dict[str, Any]]
) -> None:
    """After the k-th id lookup of ``module``'s store, another instance stores
    ``events[k]`` (an overlapping retry of it commits first), for each of ``events``."""
    landed = iter(events)

    def lookup(sql: Any, batch: Any) -> Generator[Any, Any, Any]:
        known = yield from known_ids(sql, batch)
        event = next(landed, None)
        if event is not None:
            with Foundation(url, migrate="check") as other:
                other.events.store(event)
        return known

    monkeypatch.setattr(module, "known_ids", lookup)


def _batch() -> list[dict[str, Any]]:
    return [{"id": str(uuid.uuid4()), "type": "t", "data": {"i": i}} for i in range(3)]


def test_retries_overlapping_in_a_chain_get_the_original_records(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = _batch()
    with Foundation(pg_url, migrate="check") as fdn:
        _each_lookup_loses_a_race(monkeypatch, sync_events, pg_url, batch[:2])
        records = fdn.events.store_many(batch)
        assert [str(r.id) for r in records] == [e["id"] for e in batch]
        assert sorted(r.data["i"] for r in fdn.events.get()) == [0, 1, 2]  # once each


async def test_retries_overlapping_in_a_chain_get_the_original_records_async(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = _batch()
    async with AsyncFoundation(pg_url, migrate="check") as fdn:
        _each_lookup_loses_a_race(monkeypatch, aio_events, pg_url, batch[:2])
        records = await fdn.events.store_many(batch)
        assert [str(r.id) for r in records] == [e["id"] for e in batch]
        assert len(await fdn.events.get()) == 3
