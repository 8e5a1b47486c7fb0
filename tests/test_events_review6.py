"""Found by a reviewer using the log as a new user would (SQLite and PostgreSQL).

* An ``async def`` handler given to the sync face is refused: its coroutine would never
  run, and every event would be checkpointed unhandled. A plain function that returns
  an awaitable fails the subscription visibly; nothing is checkpointed.
* A consumer whose lease ran out (paused past it) delivers nothing more once another
  consumer took the name: it renews before it hands an event to its handler, finds the
  name taken, and stops as ``failed``. Both faces.
* SQLite: a config change's event is recorded with microseconds, as ``store``'s are, so
  it never reads as earlier than an event this process stored just before it
  (``get(after=...)`` found it missing).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import inspect
import math
import uuid
from typing import Any

import pydantic
import pytest

from foundation import AlreadyRegisteredError, AsyncFoundation, EventError, Foundation
from foundation.events import RecordedEvent
from tests.helpers import async_wait_for, wait_for

FAST = {"poll_interval_ms": 20, "retry_backoff_ms": 1, "max_retries": 1}


def _checkpoint(fdn: Foundation, name: str) -> int:
    row = fdn.database.fetchone(fdn.events._sql.sub_read, {"name": name})
    assert row is not None
    return int(row[0])


# -- async handlers on the sync face --------------------------------------------------------


async def _handler(event: RecordedEvent) -> None:  # pragma: no cover - never awaited
    pass


class _AsyncCallable:
    async def __call__(self, event: RecordedEvent) -> None:  # pragma: no cover
        pass


@pytest.mark.parametrize(
    "handler",
    [_handler, functools.partial(_handler), _AsyncCallable()],
    ids=["function", "partial", "callable-object"],
)
def test_sync_subscribe_refuses_an_async_handler(fdn: Foundation, handler: Any) -> None:
    fdn.events.store({"type": "a"})
    with pytest.raises(EventError, match="AsyncFoundation") as info:
        fdn.events.subscribe("async-on-sync", handler, **FAST)
    assert info.value.code == "event_error"
    assert fdn.database.fetchone(fdn.events._sql.sub_read, {"name": "async-on-sync"}) is None


def test_a_sync_handler_returning_a_coroutine_fails_and_checkpoints_nothing(
    fdn: Foundation,
) -> None:
    fdn.events.store_many([{"type": "a", "data": i} for i in range(3)])
    sub = fdn.events.subscribe("returns-coroutine", lambda e: _handler(e), **FAST)
    wait_for(lambda: sub.status.state == "failed", timeout=5)
    assert "awaitable" in (sub.status.last_error or "")
    assert sub.status.checkpoint == 0 and _checkpoint(fdn, "returns-coroutine") == 0
    sub.stop()


# -- a consumer past its lease ----------------------------------------------------------------

LEASE = {"lease_ms": 300, **FAST}


def _paused(monkeypatch: pytest.MonkeyPatch, cls: type) -> None:
    """Subscriptions of ``cls`` keep no lease between events: as a process paused past
    its lease (SIGSTOP, a frozen VM), whose keeper renews nothing meanwhile."""

    async def no_keeper_async(self: Any) -> None:
        return None

    def no_keeper(self: Any) -> None:
        return None

    is_async = inspect.iscoroutinefunction(cls._keep_lease)
    monkeypatch.setattr(cls, "_keep_lease", no_keeper_async if is_async else no_keeper)


def _take_over(other: Foundation, seen: list[Any]) -> Any:
    try:
        return other.events.subscribe("leased", lambda e: seen.append(e.data), **LEASE)
    except AlreadyRegisteredError:
        return None


def test_a_consumer_past_its_lease_delivers_nothing_once_the_name_is_taken(
    fdn: Foundation, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foundation.events._subscription_sync import Subscription

    _paused(monkeypatch, Subscription)
    old: list[Any] = []
    stale = fdn.events.subscribe("leased", lambda e: old.append(e.data), **LEASE)
    monkeypatch.undo()
    with Foundation(db_url, migrate="check", poll_interval_ms=5) as other:
        new: list[Any] = []
        taker = wait_for(lambda: _take_over(other, new), timeout=5)
        fdn.events.store({"type": "after", "data": "taken"})
        wait_for(lambda: new == ["taken"], timeout=5)
        wait_for(lambda: stale.status.state == "failed", timeout=5)
        assert old == []  # never beside the new owner
        assert "taken over" in (stale.status.last_error or "")
        taker.stop()
    stale.stop()


async def test_async_consumer_past_its_lease_delivers_nothing_once_the_name_is_taken(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foundation.events._subscription_aio import AsyncSubscription

    async with AsyncFoundation(db_url, migrate="check", poll_interval_ms=5) as afdn:
        _paused(monkeypatch, AsyncSubscription)
        old: list[Any] = []
        stale = await afdn.events.subscribe("leased", lambda e: old.append(e.data), **LEASE)
        monkeypatch.undo()
        with Foundation(db_url, migrate="check", poll_interval_ms=5) as other:
            new: list[Any] = []
            deadline = asyncio.get_running_loop().time() + 5
            taker = None
            while taker is None and asyncio.get_running_loop().time() < deadline:
                taker = _take_over(other, new)
                await asyncio.sleep(0.02)
            assert taker is not None
            await afdn.events.store({"type": "after", "data": "taken"})
            await async_wait_for(lambda: new == ["taken"], timeout=5)
            await async_wait_for(lambda: stale.status.state == "failed", timeout=5)
            assert old == []
            assert "taken over" in (stale.status.last_error or "")
            taker.stop()
        await stale.stop()


# -- config changes' time in the log ----------------------------------------------------------


def test_a_config_change_is_never_recorded_before_an_event_stored_just_earlier(
    fdn: Foundation,
) -> None:
    for i in range(30):
        mine = fdn.events.store({"type": "mine", "data": i})
        fdn.config.set("k", i)
        later = fdn.events.get(after_position=mine.position)
        assert [e.type for e in later] == ["foundation.config.changed"]
        assert later[0].recorded_at >= mine.recorded_at
        by_time = fdn.events.get(after=mine.recorded_at, limit=10_000)
        assert later[0].id in {e.id for e in by_time} or later[0].recorded_at == mine.recorded_at


# -- values that read back as plain JSON ------------------------------------------------------


class Level(enum.IntEnum):
    HIGH = 3


class Kind(enum.StrEnum):
    PLACED = "order.placed"


def test_enum_values_come_back_as_the_database_gives_them(fdn: Foundation) -> None:
    stored = fdn.events.store({"type": Kind.PLACED, "data": Level.HIGH, "stream_id": Kind.PLACED})
    for record in (stored, fdn.events.get(type="order.placed")[0]):  # from the tail cache
        assert type(record.data) is int and record.data == 3
        assert type(record.type) is str and type(record.stream_id) is str
    read = fdn.events.get(type="order.placed", after_position=0, limit=1)[0]
    assert (type(read.data), type(read.type)) == (int, str)
    assert read == stored


def test_correlation_ids_may_be_uuids_as_causation_ids_are(fdn: Foundation) -> None:
    cid, cause = uuid.uuid4(), uuid.uuid4()
    stored = fdn.events.store({"type": "a", "correlation_id": cid, "causation_id": cause})
    assert (stored.correlation_id, stored.causation_id) == (str(cid), str(cause))
    assert fdn.events.get(correlation_id=cid, causation_id=cause) == [stored]
    assert fdn.events.correlation_chain(cid) == [stored]
    with pytest.raises(EventError):
        fdn.events.get(stream_id=cid)  # a stream id is text: store() refuses a UUID too


class Ratio(pydantic.BaseModel):
    value: float


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "infinity"])
def test_a_typed_event_with_nan_says_so(fdn: Foundation, bad: float) -> None:
    fdn.events.register_type("ratio", Ratio)
    with pytest.raises(EventError, match="NaN and Infinity are not JSON"):
        fdn.events.store({"type": "ratio", "data": Ratio(value=bad)})
    assert fdn.events.get(type="ratio") == []


class AliasedEvent(pydantic.BaseModel):
    kind: str = pydantic.Field(alias="type")
    payload: dict[str, Any] = pydantic.Field(alias="data")


class PlainEvent(pydantic.BaseModel):
    type: str
    data: dict[str, Any]
    extra_field: int = 0


def test_a_pydantic_event_may_name_its_fields_by_alias(fdn: Foundation) -> None:
    stored = fdn.events.store(AliasedEvent(type="order.placed", data={"n": 1}))
    assert (stored.type, stored.data) == ("order.placed", {"n": 1})
    with pytest.raises(EventError, match="unknown event field 'extra_field'"):
        fdn.events.store(PlainEvent(type="t", data={}))  # neither form fits: named as before
