"""Typed events: validation at store, schema version stored, decode and upcast on read."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from foundation import AsyncFoundation, EventError, Foundation
from foundation.events import SCHEMA_VERSION


class OrderPlacedV1(pydantic.BaseModel):
    order_id: int
    amount: float


class OrderPlacedV2(pydantic.BaseModel):
    order_id: int
    amount_cents: int
    currency: str


def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "order_id": data["order_id"],
        "amount_cents": round(data["amount"] * 100),
        "currency": "EUR",
    }


def test_store_validates_and_records_the_schema_version(fdn: Foundation) -> None:
    fdn.events.register_type("order_placed", OrderPlacedV1)
    record = fdn.events.store({"type": "order_placed", "data": {"order_id": "7", "amount": 2}})
    assert record.data == {"order_id": 7, "amount": 2.0}  # the model's dump is stored
    assert record.metadata[SCHEMA_VERSION] == 1
    [read] = fdn.events.get(type="order_placed")
    assert read.metadata == {SCHEMA_VERSION: 1}
    decoded = fdn.events.decode(read)
    assert decoded == OrderPlacedV1(order_id=7, amount=2.0)
    # the model instance itself is accepted as data
    again = fdn.events.store({"type": "order_placed", "data": OrderPlacedV1(order_id=8, amount=1)})
    assert fdn.events.decode(again).order_id == 8  # type: ignore[attr-defined]


def test_invalid_data_is_refused_and_nothing_is_written(fdn: Foundation) -> None:
    fdn.events.register_type("order_placed", OrderPlacedV1)
    with pytest.raises(EventError) as err:
        fdn.events.store({"type": "order_placed", "data": {"order_id": "x"}})
    assert err.value.code == "event_error"
    assert "OrderPlacedV1" in err.value.message
    with pytest.raises(EventError):
        fdn.events.store_many(
            [
                {"type": "fine", "data": 1},
                {"type": "order_placed", "data": {"order_id": 1}},  # amount missing
            ]
        )
    assert fdn.events.get(limit=100) == []
    # untyped events are untouched
    plain = fdn.events.store({"type": "fine", "data": {"anything": True}})
    assert plain.metadata == {}


def test_upcasters_apply_on_read(fdn: Foundation, db_url: str) -> None:
    fdn.events.register_type("order_placed", OrderPlacedV1)
    old = fdn.events.store({"type": "order_placed", "data": {"order_id": 1, "amount": 12.5}})
    before_registration = fdn.events.store(
        {"type": "order_placed", "data": {"order_id": 2, "amount": 1}}
    )
    # A later release, another node: version 2 with an upcaster from version 1.
    with Foundation(db_url, migrate="skip") as later:
        later.events.register_type(
            "order_placed", OrderPlacedV2, version=2, upcasters={1: v1_to_v2}
        )
        new = later.events.store(
            {
                "type": "order_placed",
                "data": {"order_id": 3, "amount_cents": 99, "currency": "USD"},
            }
        )
        assert new.metadata[SCHEMA_VERSION] == 2
        decoded = [later.events.decode(e) for e in later.events.get(type="order_placed")]
        assert decoded == [
            OrderPlacedV2(order_id=1, amount_cents=1250, currency="EUR"),
            OrderPlacedV2(order_id=2, amount_cents=100, currency="EUR"),
            OrderPlacedV2(order_id=3, amount_cents=99, currency="USD"),
        ]
        # the log itself keeps what was written
        assert later.events.get(type="order_placed")[0].data == old.data
    assert before_registration.metadata[SCHEMA_VERSION] == 1


def test_a_failing_upcaster_is_an_event_error(fdn: Foundation) -> None:
    old = fdn.events.store({"type": "order_placed", "data": {"order_id": 1, "amount": 2}})
    fdn.events.register_type(
        "order_placed", OrderPlacedV2, version=2, upcasters={1: lambda data: data["nope"]}
    )
    with pytest.raises(EventError, match="upcaster of 'order_placed' from version 1") as info:
        fdn.events.decode(old)
    assert info.value.context == {"type": "order_placed", "position": old.position, "from": 1}
    assert isinstance(info.value.__cause__, KeyError)  # the upcaster's own traceback


def test_registration_errors(fdn: Foundation) -> None:
    with pytest.raises(EventError):
        fdn.events.register_type("t", dict)  # type: ignore[arg-type]
    for name in ("", "a\x00", "x" * 256, 5):  # what store() would refuse as a type
        with pytest.raises(EventError, match="event field 'type'"):
            fdn.events.register_type(name, OrderPlacedV1)  # type: ignore[arg-type]
    with pytest.raises(EventError):
        fdn.events.register_type("t", OrderPlacedV2, version=2)  # no upcaster for v1
    record = fdn.events.store({"type": "untyped", "data": 1})
    with pytest.raises(EventError):
        fdn.events.decode(record)


async def test_async_typed_events(afdn: AsyncFoundation) -> None:
    afdn.events.register_type("order_placed", OrderPlacedV2, version=2, upcasters={1: v1_to_v2})
    with pytest.raises(EventError):
        await afdn.events.store({"type": "order_placed", "data": {"order_id": 1}})
    record = await afdn.events.store(
        {"type": "order_placed", "data": {"order_id": 1, "amount_cents": 5, "currency": "EUR"}}
    )
    [read] = await afdn.events.get(type="order_placed")
    assert afdn.events.decode(read) == afdn.events.decode(record)
