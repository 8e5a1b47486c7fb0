"""The event log, sync face: store, idempotency, concurrency, queries, append-only."""

from __future__ import annotations

import dataclasses
import math
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pydantic
import pytest

import foundation
from foundation import ConcurrencyError, EventError, Foundation
from foundation.database.url import DatabaseURL
from foundation.events import RecordedEvent, uuid7


class OrderPlaced(pydantic.BaseModel):
    type: str = "order_placed"
    data: dict[str, Any]
    stream_id: str | None = None


@dataclasses.dataclass
class Shipped:
    type: str
    data: Any
    stream_id: str | None = None


def _count(fdn: Foundation) -> int:
    return len(fdn.events.get(limit=10_000))


def test_store_round_trip_from_dict_model_and_dataclass(fdn: Foundation) -> None:
    with foundation.correlation("req-1"):
        first = fdn.events.store(
            {"type": "order_placed", "data": {"order_id": 123, "items": [1, 2]}, "stream_id": "o1"}
        )
    second = fdn.events.store(OrderPlaced(data={"order_id": 124}, stream_id="o1"))
    third = fdn.events.store(Shipped(type="shipped", data=[1, "x", None], stream_id="o1"))
    assert isinstance(first, RecordedEvent)
    assert first.correlation_id == "req-1" and second.correlation_id is None
    assert [e.stream_version for e in (first, second, third)] == [1, 2, 3]
    assert first.position < second.position < third.position
    assert first.id.version == 7 and first.id < second.id < third.id
    stored = fdn.events.get()
    assert stored == [first, second, third]  # what store returned is what the log holds
    assert stored[0].data == {"order_id": 123, "items": [1, 2]}
    assert stored[0].recorded_at.tzinfo is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.type = "x"  # type: ignore[misc]


def test_uuid7_is_time_ordered_and_unique() -> None:
    ids = [uuid7() for _ in range(2000)]
    assert ids == sorted(ids) and len(set(ids)) == 2000
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)


def test_store_many_is_all_or_nothing(fdn: Foundation) -> None:
    fdn.events.store({"type": "seed", "stream_id": "s"})
    with pytest.raises(EventError, match="not JSON"):
        fdn.events.store_many([{"type": "a", "data": 1}, {"type": "b", "data": {1, 2}}])
    with pytest.raises(ConcurrencyError):  # the second event's precondition fails
        fdn.events.store_many(
            [
                {"type": "a", "stream_id": "t"},
                {"type": "b", "stream_id": "s", "expected_version": 5},
            ]
        )
    assert [e.type for e in fdn.events.get()] == ["seed"]
    done = fdn.events.store_many([{"type": "a", "stream_id": "s"}, {"type": "b", "stream_id": "s"}])
    assert [e.stream_version for e in done] == [2, 3]
    assert fdn.events.store_many([]) == []


def test_same_id_same_content_is_idempotent(fdn: Foundation) -> None:
    event_id = uuid.uuid4()
    event = {"id": event_id, "type": "paid", "data": {"amount": 5}, "stream_id": "p"}
    first = fdn.events.store(event)
    again = fdn.events.store({**event, "id": str(event_id)})
    assert again == first and _count(fdn) == 1
    # Within one batch too, and a retry of a stream write does not trip its precondition.
    retry = fdn.events.store({**event, "expected_version": "no_stream"})
    assert retry == first and _count(fdn) == 1
    batch = fdn.events.store_many([event, {"type": "next", "stream_id": "p"}])
    assert batch[0] == first and batch[1].stream_version == 2 and _count(fdn) == 2


def test_an_id_given_twice_in_one_batch(fdn: Foundation) -> None:
    event = {"id": uuid.uuid4(), "type": "paid", "data": {"amount": 5}, "stream_id": "p"}
    a, b, c = fdn.events.store_many([event, {"type": "other"}, dict(event)])
    assert a == c and b.position == a.position + 1 and _count(fdn) == 2
    fresh = uuid.uuid4()
    with pytest.raises(EventError, match="twice in one batch"):
        fdn.events.store_many([{**event, "id": fresh}, {**event, "id": fresh, "data": {}}])
    assert _count(fdn) == 2


def test_batches_across_streams_get_contiguous_versions(fdn: Foundation) -> None:
    fdn.events.store({"type": "seed", "stream_id": "a"})
    batch = [
        {"type": "x", "stream_id": "a", "expected_version": 1},
        {"type": "x", "stream_id": "b", "expected_version": "no_stream"},
        {"type": "x"},
        {"type": "x", "stream_id": "a", "expected_version": 2},
        {"type": "x", "stream_id": "b", "expected_version": "exists"},
    ]
    stored = fdn.events.store_many(batch)
    assert [(e.stream_id, e.stream_version) for e in stored] == [
        ("a", 2),
        ("b", 1),
        (None, None),
        ("a", 3),
        ("b", 2),
    ]
    positions = [e.position for e in stored]
    assert positions == sorted(positions) and fdn.events.get(after_position=1) == stored
    with pytest.raises(ConcurrencyError) as info:  # the fourth expects a's version 2 again
        fdn.events.store_many([*batch[:1], {"type": "y"}, *batch[3:4]])
    assert info.value.context == {
        "stream_id": "a",
        "expected": 1,
        "actual": 3,
        "id": info.value.context["id"],
        "index": 0,  # the first of the three: a is at 3 since the batch above
    }
    assert _count(fdn) == 6


def test_same_id_different_content_is_refused(fdn: Foundation) -> None:
    event_id = uuid7()
    first = fdn.events.store({"id": event_id, "type": "paid", "data": {"amount": 5}})
    for changed in ({"data": {"amount": 6}}, {"type": "refunded"}, {"stream_id": "x"}):
        with pytest.raises(EventError, match="different content") as info:
            fdn.events.store({"id": event_id, "type": "paid", "data": {"amount": 5}, **changed})
        assert info.value.code == "event_error"
        assert info.value.context["position"] == first.position
    assert fdn.events.get() == [first]


def test_the_refusal_names_the_fields_that_differ(fdn: Foundation) -> None:
    event_id = uuid7()
    fdn.events.store({"id": event_id, "type": "paid", "data": {"amount": 5}})
    with pytest.raises(EventError, match=r"different content \(type, data\)") as info:
        fdn.events.store({"id": event_id, "type": "refunded", "data": {"amount": 6}})
    assert info.value.context["fields"] == ["type", "data"]


@dataclasses.dataclass
class _Paid:
    type: str
    data: dict[str, Any]
    id: uuid.UUID
    correlation_id: str | None = None
    causation_id: str | None = None


class _PaidModel(pydantic.BaseModel):
    type: str
    data: dict[str, Any]
    id: uuid.UUID
    correlation_id: str | None = None
    causation_id: str | None = None


def test_a_retry_outside_the_original_correlation_returns_the_original(
    fdn: Foundation,
) -> None:
    """A retry often runs where the first call's correlation context is gone. A dataclass
    or a model always carries the fields, None when not set: None is "not given", as a
    dict without the key is, so the retry is the same event."""
    event_id = uuid7()
    with foundation.correlation("request-1"):
        first = fdn.events.store({"id": event_id, "type": "paid", "data": {"amount": 5}})
    assert first.correlation_id == "request-1"
    retries: list[Any] = [
        {"id": event_id, "type": "paid", "data": {"amount": 5}},
        {"id": event_id, "type": "paid", "data": {"amount": 5}, "correlation_id": None},
        _Paid("paid", {"amount": 5}, event_id),
        _PaidModel(type="paid", data={"amount": 5}, id=event_id),
    ]
    for retry in retries:
        assert fdn.events.store(retry) == first
    with foundation.correlation("request-2"):  # a new context is not a new content either
        assert fdn.events.store(_Paid("paid", {"amount": 5}, event_id)) == first
    # Given explicitly, a correlation or causation id is part of the content.
    with pytest.raises(EventError, match=r"\(correlation_id\)"):
        fdn.events.store(_Paid("paid", {"amount": 5}, event_id, correlation_id="other"))
    with pytest.raises(EventError, match=r"\(causation_id\)"):
        fdn.events.store(_PaidModel(type="paid", data={"amount": 5}, id=event_id, causation_id="c"))
    assert fdn.events.get() == [first]


def test_causation_id_is_an_event_id_in_store_and_in_get(fdn: Foundation) -> None:
    cause = fdn.events.store({"type": "order_placed"})
    effect = fdn.events.store({"type": "invoice_sent", "causation_id": cause.id})
    assert effect.causation_id == str(cause.id)
    assert fdn.events.get(causation_id=cause.id) == [effect]
    assert fdn.events.get(causation_id=str(cause.id)) == [effect]


def test_a_store_many_error_names_the_event_by_its_index(fdn: Foundation) -> None:
    batch: list[Any] = [{"type": "row", "data": i} for i in range(50)]
    batch[31] = {"type": "row", "data": float("nan")}
    with pytest.raises(EventError, match=r"^\[event_error\] event 31 of the batch") as info:
        fdn.events.store_many(batch)
    assert info.value.context["index"] == 31
    assert _count(fdn) == 0


def test_negative_zero_reads_back_the_same_from_cache_and_database(db_url: str) -> None:
    """JSONB's numeric has no -0.0 (PostgreSQL gives back 0.0, SQLite "-0.0"): stored as
    0.0, so the record returned, the tail cache and the database agree on both."""
    with (
        Foundation(db_url, migrate="check") as cached,
        Foundation(db_url, migrate="check", events_tail_size=0) as direct,
    ):
        stored = cached.events.store({"type": "z", "data": {"x": -0.0, "y": [-0.0]}})
        assert math.copysign(1, stored.data["x"]) == 1.0
        for read in (cached.events.get(type="z")[0], direct.events.get(type="z")[0]):
            assert read.data == stored.data
            assert math.copysign(1, read.data["x"]) == math.copysign(1, read.data["y"][0]) == 1


def test_expected_version(fdn: Foundation) -> None:
    ev = fdn.events
    with pytest.raises(ConcurrencyError) as info:
        ev.store({"type": "a", "stream_id": "s", "expected_version": "exists"})
    assert info.value.code == "concurrency_error"
    assert info.value.context["expected"] == "exists" and info.value.context["actual"] == 0
    assert (
        ev.store({"type": "a", "stream_id": "s", "expected_version": "no_stream"}).stream_version
        == 1
    )
    with pytest.raises(ConcurrencyError):
        ev.store({"type": "a", "stream_id": "s", "expected_version": "no_stream"})
    assert (
        ev.store({"type": "a", "stream_id": "s", "expected_version": "exists"}).stream_version == 2
    )
    assert ev.store({"type": "a", "stream_id": "s", "expected_version": 2}).stream_version == 3
    with pytest.raises(ConcurrencyError) as info:
        ev.store({"type": "a", "stream_id": "s", "expected_version": 1})
    assert (info.value.context["expected"], info.value.context["actual"]) == (1, 3)
    assert ev.store({"type": "a", "stream_id": "s", "expected_version": "any"}).stream_version == 4
    assert ev.store({"type": "a", "stream_id": "other", "expected_version": 0}).stream_version == 1
    assert len(ev.read_stream("s")) == 4


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"data": 1}, "'type' must be a non-empty string"),
        ({"type": ""}, "'type' must be a non-empty string"),
        ({"type": 5}, "'type' must be a non-empty string"),
        ({"type": "a", "data": float("nan")}, "NaN"),
        ({"type": "a", "data": object()}, "not JSON"),
        ({"type": "a", "data": "a\x00b"}, "NUL"),
        # json.dumps would write 1 as "1" (here losing "a" to the collision) and None as
        # "null": what reads back is not what was stored.
        ({"type": "a", "data": {1: "a", "1": "b"}}, r"key that is not a string \(1\)"),
        ({"type": "a", "data": {"lines": [{None: 1}]}}, r"not a string \(None\)"),
        ({"type": "a", "metadata": {"n": {True: 1}}}, r"not a string \(True\)"),
        ({"type": "a", "metadata": [1]}, "'metadata' must be a dict"),
        ({"type": "a", "id": "not-a-uuid"}, "'id' must be a UUID"),
        ({"type": "a", "stream_id": "s", "expected_version": -1}, "expected_version"),
        ({"type": "a", "stream_id": "s", "expected_version": "maybe"}, "expected_version"),
        ({"type": "a", "expected_version": 0}, "needs a stream_id"),
        ({"type": "a", "colour": "red"}, "unknown event field 'colour'"),
        ("order_placed", "must be a dict, a pydantic model or a dataclass"),
    ],
)
def test_bad_events_are_refused_and_nothing_is_written(
    fdn: Foundation, event: Any, message: str
) -> None:
    with pytest.raises(EventError, match=message):
        fdn.events.store(event)
    assert _count(fdn) == 0


def test_size_limit_is_a_setting(db_url: str) -> None:
    with Foundation(db_url, migrate="check", max_value_bytes=64) as small:
        small.events.store({"type": "a", "data": "x" * 50})
        with pytest.raises(EventError, match="over the limit of 64 bytes"):
            small.events.store({"type": "a", "data": "x" * 100})
        with pytest.raises(EventError, match="over the limit"):
            small.events.store({"type": "a", "metadata": {"k": "x" * 100}})
        assert len(small.events.get()) == 1


def test_get_filters(fdn: Foundation) -> None:
    ev = fdn.events
    before = datetime.now(UTC) - timedelta(seconds=1)
    a = ev.store({"type": "a", "stream_id": "s1", "correlation_id": "c1"})
    b = ev.store(
        {"type": "b", "stream_id": "s2", "correlation_id": "c1", "causation_id": str(a.id)}
    )
    c = ev.store({"type": "c", "correlation_id": "c2", "metadata": {"by": "me"}})
    after = datetime.now(UTC) + timedelta(seconds=1)
    assert ev.get(type="a") == [a]
    assert ev.get({"type": ["a", "c"]}) == [a, c]
    assert ev.get(stream_id="s2") == [b]
    assert ev.get(correlation_id="c1") == [a, b]
    assert ev.get(causation_id=str(a.id)) == [b]
    assert ev.get(after_position=a.position) == [b, c]
    assert ev.get(after=before, before=after) == [a, b, c]
    assert ev.get(after=after) == [] and ev.get(before=before) == []
    with pytest.raises(EventError, match="aware datetime"):  # not guessed: see test_review5
        ev.get(after=before.replace(tzinfo=None))
    assert ev.get(order="desc", limit=2) == [c, b]
    assert ev.get({"type": ["a", "b"]}, order="desc") == [b, a]  # kwargs merge with the map
    assert ev.get(type="a", stream_id="s2") == []
    assert c.metadata == {"by": "me"}
    assert ev.correlation_chain("c1") == [a, b]


@pytest.mark.parametrize(
    ("criteria", "named"),
    [
        ({"typ": "a"}, "'typ'"),
        ({"type": 5}, "'type'"),
        ({"type": []}, "'type'"),
        ({"type": ["a", 5]}, "'type'"),
        ({"stream_id": 5}, "'stream_id'"),
        ({"after": "2024-01-01"}, "'after'"),
        ({"before": 5}, "'before'"),
        ({"after_position": -1}, "'after_position'"),
        ({"after_position": "5"}, "'after_position'"),
        ({"correlation_id": 1.5}, "'correlation_id'"),
        ({"limit": 0}, "'limit'"),
        ({"limit": 10_001}, "'limit'"),
        ({"limit": True}, "'limit'"),
        ({"order": "sideways"}, "'order'"),
    ],
)
def test_bad_criteria_name_the_criterion(
    fdn: Foundation, criteria: dict[str, Any], named: str
) -> None:
    with pytest.raises(EventError, match=named) as info:
        fdn.events.get(criteria)
    assert info.value.code == "event_error"
    if criteria != {"limit": 10_001}:  # iter's limit is a total, not a page (tested below)
        with pytest.raises(EventError):
            list(fdn.events.iter(criteria))


def test_criteria_must_be_a_mapping(fdn: Foundation) -> None:
    with pytest.raises(EventError, match="criteria must be a dict"):
        fdn.events.get("type = 'a'")  # type: ignore[arg-type]


def test_sql_looking_strings_are_values(fdn: Foundation) -> None:
    sneaky = "a' OR '1'='1"
    fdn.events.store({"type": "a"})
    weird = fdn.events.store({"type": sneaky, "stream_id": "x'; DROP TABLE foundation_events; --"})
    assert fdn.events.get(type=sneaky) == [weird]
    assert fdn.events.get(type="a' OR 1=1 --") == []
    assert fdn.events.get(stream_id="x'; DROP TABLE foundation_events; --") == [weird]
    assert _count(fdn) == 2


def test_iter_paginates_by_position(fdn: Foundation) -> None:
    stored = fdn.events.store_many([{"type": "t" if i % 2 else "u", "data": i} for i in range(25)])
    assert list(fdn.events.iter(batch_size=7)) == stored
    assert list(fdn.events.iter({"order": "desc"}, batch_size=4)) == stored[::-1]
    assert list(fdn.events.iter(type="t", batch_size=3)) == [e for e in stored if e.type == "t"]
    assert list(fdn.events.iter(limit=10, batch_size=3)) == stored[:10]
    assert list(fdn.events.iter(after_position=stored[19].position, batch_size=2)) == stored[20:]
    with pytest.raises(EventError, match="batch_size"):
        fdn.events.iter(batch_size=0)
    assert list(fdn.events.iter(limit=20_000)) == stored  # the total, not a page: no maximum
    for bad in (0, True, "10"):
        with pytest.raises(EventError, match="'limit' of iter"):
            fdn.events.iter(limit=bad)
    with pytest.raises(EventError, match="unknown"):
        fdn.events.iter(limit=5, bogus=1)


def test_read_stream_and_from_version(fdn: Foundation) -> None:
    fdn.events.store_many([{"type": "x", "stream_id": "s", "data": i} for i in range(5)])
    fdn.events.store({"type": "y", "stream_id": "other"})
    assert [e.data for e in fdn.events.read_stream("s")] == [0, 1, 2, 3, 4]
    assert [e.stream_version for e in fdn.events.read_stream("s", from_version=4)] == [4, 5]
    assert fdn.events.read_stream("missing") == []
    with pytest.raises(EventError, match="from_version"):
        fdn.events.read_stream("s", from_version=-1)


@pytest.mark.parametrize("other", [True, 1.5, "1", [1], {"x": 1}, None])
def test_a_retry_is_the_same_only_as_the_same_json(fdn: Foundation, other: Any) -> None:
    # Python says True == 1 and 1.0 == 1; JSON tells a boolean from a number.
    event_id = str(uuid.uuid4())
    original = fdn.events.store({"id": event_id, "type": "t", "data": {"x": 1}})
    assert fdn.events.store({"id": event_id, "type": "t", "data": {"x": 1.0}}) == original
    with pytest.raises(EventError, match="already recorded with different content"):
        fdn.events.store({"id": event_id, "type": "t", "data": {"x": other}})
    with pytest.raises(EventError, match="twice in one batch with different content"):
        fdn.events.store_many(
            [
                {"id": (twice := str(uuid.uuid4())), "type": "t", "data": [True]},
                {"id": twice, "type": "t", "data": [1]},
            ]
        )
    assert fdn.events.get() == [original]


def test_versions_and_positions_beyond_bigint_are_refused(fdn: Foundation) -> None:
    too_big = 2**63
    with pytest.raises(EventError, match="expected_version must be a version"):
        fdn.events.store({"type": "t", "stream_id": "s", "expected_version": too_big})
    with pytest.raises(EventError, match=f"not {too_big}"):
        fdn.events.get(after_position=too_big)
    with pytest.raises(EventError, match="from 1 to 10000, not 0"):
        fdn.events.get(limit=0)
    assert fdn.events.get() == []


def test_the_log_is_append_only_in_the_database(fdn: Foundation, db_url: str) -> None:
    fdn.events.store({"type": "a", "data": 1})
    url = DatabaseURL.parse(db_url)
    if url.backend == "sqlite":
        conn = sqlite3.connect(url.sqlite_path)
        try:
            rewrite = (
                "SELECT position, id, 'b', NULL, NULL, '\"x\"', '{}', '{}', recorded_at "
                "FROM foundation_events"
            )
            columns = (
                "(position, id, type, stream_id, stream_version, data, metadata, "
                "correlation_id, recorded_at)"
            )
            for sql in (
                "UPDATE foundation_events SET type = 'b'",
                "DELETE FROM foundation_events",
                # REPLACE deletes the row it conflicts with without firing DELETE triggers.
                f"REPLACE INTO foundation_events {columns} {rewrite}",
                f"INSERT OR REPLACE INTO foundation_events {columns} {rewrite}",
                "INSERT OR REPLACE INTO foundation_events (id, type, data, metadata, "
                "recorded_at) SELECT id, 'b', '\"x\"', '{}', recorded_at FROM foundation_events",
            ):  # valid rows (JSON data): refused as rewrites, not by migration 0014
                with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                    conn.execute(sql)
        finally:
            conn.close()
    else:
        with psycopg.connect(url.conninfo, autocommit=True) as conn:
            for sql in (
                "UPDATE foundation_events SET type = 'b'",
                "DELETE FROM foundation_events",
                "TRUNCATE foundation_events",
            ):
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                    conn.execute(sql)
    assert [(e.type, e.data) for e in fdn.events.get()] == [("a", 1)]


def test_store_and_get_emit_telemetry(fdn: Foundation) -> None:
    seen: list[tuple[Any, dict[str, Any]]] = []
    fdn.telemetry.attach(
        "test-events",
        [("foundation", "events", "store"), ("foundation", "events", "get")],
        lambda name, measurements, metadata, config: seen.append((name, dict(measurements))),
    )
    fdn.events.store_many([{"type": "a"}, {"type": "b"}])
    fdn.events.get()
    store, get = seen
    assert store[0] == ("foundation", "events", "store") and store[1]["count"] == 2
    assert get[0] == ("foundation", "events", "get") and get[1]["count"] == 2
    assert store[1]["duration"] > 0 and get[1]["duration"] > 0
    # iter, read_stream and correlation_chain read the database page by page: one get each.
    seen.clear()
    fdn.events.store_many([{"type": "s", "stream_id": "s1"} for _ in range(3)])
    assert len(list(fdn.events.iter(type="a", batch_size=1))) == 1
    assert len(fdn.events.read_stream("s1")) == 3
    assert fdn.events.correlation_chain("none") == []
    gets = [m["count"] for name, m in seen if name == ("foundation", "events", "get")]
    assert gets == [1, 0, 3, 0]  # iter: a page of 1, then an empty one; then one page each


def test_module_level_functions_use_the_default_instance(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foundation import _default

    with Foundation(db_url, migrate="check") as instance:
        monkeypatch.setattr(_default, "_instance", instance)
        recorded = foundation.events.store({"type": "module", "stream_id": "m"})
        assert foundation.events.get(type="module") == [recorded]
        assert list(foundation.events.iter(type="module")) == [recorded]
        assert foundation.events.read_stream("m") == [recorded]
        monkeypatch.setattr(_default, "_instance", None)


def test_concurrent_writers_to_one_stream_exactly_one_wins(fdn: Foundation) -> None:
    import threading

    results: list[str] = []
    start = threading.Barrier(8)

    def write(i: int) -> None:
        start.wait()
        try:
            fdn.events.store(
                {"type": "claim", "stream_id": "seat-1", "expected_version": 0, "data": i}
            )
            results.append("won")
        except ConcurrencyError:
            results.append("lost")

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["lost"] * 7 + ["won"]
    assert len(fdn.events.read_stream("seat-1")) == 1


def test_pydantic_model_with_id_and_uuid_causation(fdn: Foundation) -> None:
    class Paid(pydantic.BaseModel):
        id: uuid.UUID
        type: str = "paid"
        data: dict[str, int]
        causation_id: uuid.UUID | None = None

    cause = fdn.events.store({"type": "ordered"})
    event = Paid(id=uuid.uuid4(), data={"cents": 100}, causation_id=cause.id)
    first = fdn.events.store(event)
    assert first.id == event.id and first.causation_id == str(cause.id)
    assert fdn.events.store(event) == first  # a retried model is idempotent too
    assert fdn.events.get(causation_id=str(cause.id)) == [first]
