"""Typed events: validation at store, schema version stored, decode and upcast on read."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime
from typing import Any

import pydantic
import pytest

from foundation import AsyncFoundation, EventError, Foundation
from foundation._frozen import freeze, thaw
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


# -- aliases, computed fields, and what the log holds ----------------------------------


class AliasedOrder(pydantic.BaseModel):
    order_id: int = pydantic.Field(alias="orderId")


class ByNameToo(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(populate_by_name=True)
    order_id: int = pydantic.Field(alias="orderId")


class WithComputed(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    a: int

    @pydantic.computed_field  # type: ignore[prop-decorator]
    @property
    def double(self) -> int:
        return self.a * 2


class SplitAliases(pydantic.BaseModel):
    """Dumps ``X`` but validates from ``x_in`` (or the name): no single wire form."""

    x: int = pydantic.Field(0, serialization_alias="X", validation_alias="x_in")


class StrictTimes(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(strict=True, extra="forbid")
    at: datetime
    id: uuid.UUID
    raw: pydantic.Json[dict[str, int]]


def test_aliased_and_computed_models_round_trip(fdn: Foundation) -> None:
    fdn.events.register_type("aliased", AliasedOrder)
    fdn.events.register_type("by_name_too", ByNameToo)
    fdn.events.register_type("computed", WithComputed)
    fdn.events.register_type("split", SplitAliases)
    fdn.events.register_type("strict", StrictTimes)
    at, id_ = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC), uuid.uuid4()
    records = fdn.events.store_many(
        [
            {"type": "aliased", "data": {"orderId": 1}},
            {"type": "by_name_too", "data": {"order_id": 2}},  # in by name, stored by alias
            {"type": "computed", "data": {"a": 3}},
            {"type": "split", "data": {"x_in": 4}},
            {"type": "split", "data": {"x_in": 0}},  # the default: one form per type
            {
                "type": "strict",
                "data": StrictTimes.model_validate({"at": at, "id": id_, "raw": '{"n": 1}'}),
            },
        ]
    )
    # The log holds the wire form: by alias, computed fields left out; by field name for a
    # model whose serialization alias is not a key it validates from.
    assert [r.data for r in records] == [
        {"orderId": 1},
        {"orderId": 2},
        {"a": 3},
        {"x": 4},
        {"x": 0},
        {"at": "2024-05-06T07:08:09Z", "id": str(id_), "raw": '{"n":1}'},
    ]
    expected = [
        AliasedOrder(orderId=1),
        ByNameToo(orderId=2),
        WithComputed(a=3),
        SplitAliases.model_validate({"x_in": 4}),
        SplitAliases.model_validate({"x_in": 0}),
        StrictTimes.model_validate({"at": at, "id": id_, "raw": '{"n": 1}'}),
    ]
    assert [fdn.events.decode(r) for r in records] == expected
    # read back from the database (and the tail cache), not only as written
    assert [fdn.events.decode(r) for r in fdn.events.get(limit=100)] == expected
    assert fdn.events.decode(records[2]).double == 6  # type: ignore[attr-defined]


def test_a_subclass_instance_is_stored_as_the_registered_model(fdn: Foundation) -> None:
    class Detailed(AliasedOrder):
        note: str

    fdn.events.register_type("aliased", AliasedOrder)
    record = fdn.events.store({"type": "aliased", "data": Detailed(orderId=1, note="n")})
    assert record.data == {"orderId": 1}
    assert fdn.events.decode(record) == AliasedOrder(orderId=1)


def test_events_stored_by_field_name_or_with_computed_fields_still_decode(
    fdn: Foundation,
) -> None:
    # What earlier releases wrote: the dump by field name, computed fields included.
    by_name = fdn.events.store({"type": "aliased", "data": {"order_id": 1}})
    computed = fdn.events.store({"type": "computed", "data": {"a": 1, "double": 2}})
    fdn.events.register_type("aliased", AliasedOrder)
    fdn.events.register_type("computed", WithComputed)
    assert fdn.events.decode(by_name) == AliasedOrder(orderId=1)
    assert fdn.events.decode(computed) == WithComputed(a=1)


class Inner(pydantic.BaseModel):
    y: int = pydantic.Field(serialization_alias="Y")  # validates only from "y"


class Outer(pydantic.BaseModel):
    inner: Inner


class OwnSerializer(pydantic.BaseModel):
    a: int

    @pydantic.model_serializer
    def _dump(self) -> dict[str, Any]:
        return {"A": self.a}


class InnerWithDefault(pydantic.BaseModel):
    y: int = pydantic.Field(0, serialization_alias="Y")  # validates only from "y"


class Lossy(pydantic.BaseModel):
    """Its dump validates back, but as other data: ``{"inner": {"Y": 5}}`` reads y=0."""

    inner: InnerWithDefault


class Unserializable(pydantic.BaseModel):
    value: Any = None


def test_a_dump_that_would_not_decode_back_is_refused(fdn: Foundation) -> None:
    fdn.events.register_type("outer", Outer)
    fdn.events.register_type("own", OwnSerializer)
    fdn.events.register_type("unserializable", Unserializable)
    with pytest.raises(EventError, match="dump of Outer would not decode back") as info:
        fdn.events.store({"type": "outer", "data": {"inner": {"y": 1}}})
    assert "inner.y" in info.value.message
    assert info.value.context == {"type": "outer"}
    with pytest.raises(EventError, match="dump of OwnSerializer would not decode back"):
        fdn.events.store({"type": "own", "data": {"a": 1}})
    fdn.events.register_type("lossy", Lossy)
    with pytest.raises(EventError, match="decodes back as different data"):
        fdn.events.store({"type": "lossy", "data": {"inner": {"y": 5}}})
    with pytest.raises(EventError, match="Unserializable does not serialize to JSON") as info:
        fdn.events.store({"type": "unserializable", "data": {"value": object()}})
    assert isinstance(info.value.__cause__, ValueError)  # pydantic's serialization error
    with pytest.raises(EventError, match="would not decode back"):
        fdn.events.store_many([{"type": "fine", "data": 1}, {"type": "own", "data": {"a": 2}}])
    assert fdn.events.get(limit=100) == []  # nothing written


class Picky(pydantic.BaseModel):
    a: int

    @pydantic.field_validator("a")
    @classmethod
    def _check(cls, value: int) -> int:
        if value < 0:
            raise TypeError("a must be >= 0")  # pydantic converts only ValueError
        return value


def test_validator_errors_of_any_kind_are_event_errors(fdn: Foundation) -> None:
    fdn.events.register_type("picky", Picky)
    with pytest.raises(EventError, match="'picky' as Picky") as info:
        fdn.events.store({"type": "picky", "data": {"a": -1}})
    assert info.value.context == {"type": "picky"}
    assert isinstance(info.value.__cause__, TypeError)
    with pytest.raises(EventError, match="TypeError: a must be >= 0"):
        fdn.events.store_many([{"type": "fine", "data": 1}, {"type": "picky", "data": {"a": -1}}])
    assert fdn.events.get(limit=100) == []  # nothing written

    # On read: data that the model's validator refuses with any exception
    bad = fdn.events.store({"type": "picky2", "data": {"a": -1}})
    wrong = fdn.events.store({"type": "picky2", "data": {"a": "x"}})
    fdn.events.register_type("picky2", Picky)
    with pytest.raises(EventError, match="'picky2' at position") as info:
        fdn.events.decode(bad)
    assert info.value.context == {"type": "picky2", "position": bad.position, "version": 1}
    assert isinstance(info.value.__cause__, TypeError)
    assert "TypeError: a must be >= 0" in info.value.message
    with pytest.raises(EventError, match="does not decode as Picky") as info:
        fdn.events.decode(wrong)
    assert info.value.context == {
        "type": "picky2",
        "position": wrong.position,
        "version": 1,
        "field": "a",
    }


class FillsIn(pydantic.BaseModel):
    a: int

    @pydantic.model_validator(mode="before")
    @classmethod
    def _default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data.setdefault("a", 1)  # changes its input, as "before" validators may
        return data


def test_decode_gives_validators_and_upcasters_a_private_copy(fdn: Foundation) -> None:
    fdn.events.register_type("fills_in", FillsIn)
    record = fdn.events.store({"type": "fills_in", "data": {"a": 2}})
    # as the tail cache hands it out: shared and read-only
    shared = dataclasses.replace(record, data=freeze(thaw(record.data)))
    assert fdn.events.decode(shared) == FillsIn(a=2)
    assert shared.data == {"a": 2}
    [read] = fdn.events.get(type="fills_in")
    assert fdn.events.decode(read) == FillsIn(a=2)


@pytest.mark.parametrize(
    ("upcasters", "message"),
    [
        ({"1": v1_to_v2}, r"unexpected keys: '1'"),
        ({True: v1_to_v2}, r"unexpected keys: True"),
        ({1.0: v1_to_v2}, r"unexpected keys: 1\.0"),
        ({1: v1_to_v2, 2: v1_to_v2}, r"unexpected keys: 2"),
        ({1: "v1_to_v2"}, r"the one for version 1 is not callable \(str\)"),
    ],
)
def test_upcaster_keys_and_functions_are_checked(
    fdn: Foundation, upcasters: dict[Any, Any], message: str
) -> None:
    with pytest.raises(EventError, match=message) as info:
        fdn.events.register_type("order_placed", OrderPlacedV2, version=2, upcasters=upcasters)
    assert info.value.context["type"] == "order_placed"
    # nothing registered: events of that type are still stored untyped
    assert fdn.events.store({"type": "order_placed", "data": {"x": 1}}).metadata == {}


async def test_async_aliases_and_validator_errors(afdn: AsyncFoundation) -> None:
    afdn.events.register_type("aliased", AliasedOrder)
    afdn.events.register_type("picky", Picky)
    record = await afdn.events.store({"type": "aliased", "data": {"orderId": 1}})
    assert record.data == {"orderId": 1}
    [read] = await afdn.events.get(type="aliased")
    assert afdn.events.decode(read) == AliasedOrder(orderId=1)
    with pytest.raises(EventError, match="'picky' as Picky") as info:
        await afdn.events.store_many([{"type": "picky", "data": {"a": -1}}])
    assert isinstance(info.value.__cause__, TypeError)
    assert await afdn.events.get(type="picky") == []


def test_schema_version_in_metadata_is_foundations(fdn: Foundation) -> None:
    """The key says which version the data is: a caller's own value there would be lost
    (or decode the data as another version), so it is refused, and nothing written."""
    fdn.events.register_type("order_placed", OrderPlacedV1)
    data = {"order_id": 1, "amount": 2}
    with pytest.raises(EventError, match="'schema_version' of typed event") as info:
        fdn.events.store({"type": "order_placed", "data": data, "metadata": {SCHEMA_VERSION: "x"}})
    assert info.value.context["field"] == "metadata"
    assert fdn.events.get(type="order_placed") == []
    # Its own value (a retry of what was stored, say) is the same event.
    same = {"type": "order_placed", "data": data, "metadata": {SCHEMA_VERSION: 1, "by": "a"}}
    assert fdn.events.store(same).metadata == {SCHEMA_VERSION: 1, "by": "a"}
