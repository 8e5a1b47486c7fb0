"""Tests of foundation.telemetry: names, handlers, failures, spans, correlation, threads."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import foundation.telemetry as telemetry
from foundation.correlation import correlation
from foundation.errors import FoundationError, ValidationError
from foundation.telemetry import (
    HANDLER_FAILURE_EVENT,
    EventName,
    HandlerInfo,
    SpanContext,
    Telemetry,
)

Call = tuple[EventName, Mapping[str, Any], Mapping[str, Any], Any]


class Recorder:
    """A handler that records every call it receives."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def __call__(
        self,
        event: EventName,
        measurements: Mapping[str, Any],
        metadata: Mapping[str, Any],
        config: Any,
    ) -> None:
        self.calls.append((event, measurements, metadata, config))

    @property
    def events(self) -> list[EventName]:
        return [call[0] for call in self.calls]


def failing(
    event: EventName, measurements: Mapping[str, Any], metadata: Mapping[str, Any], config: Any
) -> None:
    raise RuntimeError("boom")


@pytest.fixture
def tel() -> Telemetry:
    return Telemetry()


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


# -- names --------------------------------------------------------------------------


def test_string_and_tuple_names_are_the_same_event(tel: Telemetry) -> None:
    by_string, by_tuple = Recorder(), Recorder()
    tel.attach("s", "foundation.config.set", by_string)
    tel.attach("t", ("foundation", "config", "set"), by_tuple)

    tel.execute("foundation.config.set", {"n": 1})
    tel.execute(("foundation", "config", "set"), {"n": 2})

    expected = [("foundation", "config", "set")] * 2
    assert by_string.events == expected
    assert by_tuple.events == expected
    assert [c[1]["n"] for c in by_string.calls] == [1, 2]


@given(st.lists(st.text(min_size=1).filter(lambda s: "." not in s), min_size=1, max_size=5))
def test_any_valid_tuple_and_its_dotted_string_reach_the_same_handler(parts: list[str]) -> None:
    tel = Telemetry()
    rec = Recorder()
    name = tuple(parts)
    tel.attach("h", ".".join(parts), rec)
    tel.execute(name)
    tel.execute(".".join(parts))
    assert rec.events == [name, name]


def test_handlers_only_receive_their_own_events(tel: Telemetry, rec: Recorder) -> None:
    tel.attach("h", "a.b", rec)
    tel.execute("a.b.c")
    tel.execute("a")
    tel.execute("a.b")
    assert rec.events == [("a", "b")]


@pytest.mark.parametrize(
    "bad",
    ["", "a..b", ".a", "a.", (), ("a", ""), ("a", 1), ("a.b", "c"), 123, None, b"a", [["a"]]],
)
def test_bad_names_raise_validation_error_everywhere(
    tel: Telemetry, rec: Recorder, bad: Any
) -> None:
    with pytest.raises(ValidationError) as attach_err:
        tel.attach("h", bad, rec)
    assert attach_err.value.code == "validation_error"
    # With no handler attached at all (the fast path) and with one attached elsewhere.
    with pytest.raises(ValidationError):
        tel.execute(bad)
    tel.attach("other", "some.event", rec)
    with pytest.raises(ValidationError):
        tel.execute(bad)
    with pytest.raises(ValidationError):
        tel.span(bad)
    assert [info.id for info in tel.list_handlers()] == ["other"]


def test_a_list_is_a_list_of_names_not_a_name(tel: Telemetry, rec: Recorder) -> None:
    # attach takes a list of names; execute and span take exactly one name.
    tel.attach("h", ["a", "b"], rec)
    assert tel.list_handlers()[0].event_names == (("a",), ("b",))
    with pytest.raises(ValidationError):
        tel.execute(["a", "b"])  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        tel.span(["a", "b"])  # type: ignore[arg-type]
    assert rec.calls == []


def test_bad_name_inside_a_list_is_rejected_and_nothing_is_attached(
    tel: Telemetry, rec: Recorder
) -> None:
    with pytest.raises(ValidationError):
        tel.attach("h", ["ok.name", "bad..name"], rec)
    assert tel.list_handlers() == []


def test_executing_an_unheard_name_then_attaching_still_delivers(
    tel: Telemetry, rec: Recorder
) -> None:
    # The first execute caches "late.event" as known-but-unheard; attach must undo that.
    tel.execute("late.event")
    tel.execute(("late", "event"))
    tel.attach("h", "late.event", rec)
    tel.execute("late.event", {"v": 1})
    tel.execute(("late", "event"), {"v": 2})
    assert [c[1]["v"] for c in rec.calls] == [1, 2]


# -- attach, detach, delivery -------------------------------------------------------


def test_measurements_metadata_and_config_are_delivered(tel: Telemetry, rec: Recorder) -> None:
    config = {"level": "debug"}
    tel.attach("h", "db.query", rec, config)
    tel.execute("db.query", {"duration": 42}, {"table": "users"})

    assert rec.calls == [(("db", "query"), {"duration": 42}, {"table": "users"}, config)]
    assert rec.calls[0][3] is config


def test_missing_measurements_and_metadata_become_empty_mappings(
    tel: Telemetry, rec: Recorder
) -> None:
    tel.attach("h", "x", rec)
    tel.execute("x")
    assert rec.calls == [(("x",), {}, {}, None)]


def test_non_mapping_measurements_are_rejected(tel: Telemetry, rec: Recorder) -> None:
    tel.attach("h", "x", rec)
    with pytest.raises(ValidationError):
        tel.execute("x", [1, 2])  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        tel.execute("x", {}, "meta")  # type: ignore[arg-type]
    assert rec.calls == []


def test_handlers_run_in_attachment_order(tel: Telemetry) -> None:
    order: list[str] = []
    for handler_id in ["first", "second", "third"]:
        tel.attach(handler_id, "x", lambda *_a, hid=handler_id: order.append(hid))
    tel.execute("x")
    assert order == ["first", "second", "third"]


def test_one_handler_for_a_list_of_names(tel: Telemetry, rec: Recorder) -> None:
    tel.attach("h", ["a.start", ("a", "stop"), "a.start"], rec)
    tel.execute("a.start")
    tel.execute("a.stop")
    tel.execute("a.other")
    assert rec.events == [("a", "start"), ("a", "stop")]
    (info,) = tel.list_handlers()
    assert info.event_names == (("a", "start"), ("a", "stop"))  # the repeat is dropped


def test_detach(tel: Telemetry, rec: Recorder) -> None:
    tel.attach("h", ["x", "y"], rec)
    tel.execute("x")
    assert tel.detach("h") is True
    tel.execute("x")
    tel.execute("y")
    assert rec.events == [("x",)]
    assert tel.detach("h") is False
    assert tel.detach("never-attached") is False
    assert tel.list_handlers() == []


def test_an_id_can_be_reused_after_detach(tel: Telemetry, rec: Recorder) -> None:
    tel.attach("h", "x", rec, "first")
    tel.detach("h")
    tel.attach("h", "x", rec, "second")
    tel.execute("x")
    assert [c[3] for c in rec.calls] == ["second"]


def test_duplicate_handler_id_is_a_validation_error(tel: Telemetry, rec: Recorder) -> None:
    tel.attach("dup", "x", rec)
    with pytest.raises(ValidationError) as err:
        tel.attach("dup", "y", rec)
    assert isinstance(err.value, FoundationError)
    assert err.value.code == "validation_error"
    assert err.value.context["handler_id"] == "dup"
    # The original attachment is untouched and the second never happened.
    tel.execute("y")
    tel.execute("x")
    assert rec.events == [("x",)]


@pytest.mark.parametrize("handler_id", ["", 7, None])
def test_bad_handler_id_is_rejected(tel: Telemetry, rec: Recorder, handler_id: Any) -> None:
    with pytest.raises(ValidationError):
        tel.attach(handler_id, "x", rec)
    assert tel.list_handlers() == []


def test_non_callable_handler_and_empty_name_list_are_rejected(tel: Telemetry) -> None:
    with pytest.raises(ValidationError):
        tel.attach("h", "x", "not callable")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        tel.attach("h", [], lambda *_a: None)
    assert tel.list_handlers() == []


def test_list_handlers_prefix_matches_whole_segments(tel: Telemetry) -> None:
    def noop(*_a: Any) -> None:
        return None

    tel.attach("set", "foundation.config.set", noop, {"c": 1})
    tel.attach("root", "foundation.config", noop)
    tel.attach("configx", "foundation.configx.set", noop)
    tel.attach("events", ["foundation.events.append", "other.thing"], noop)

    def ids(prefix: Any = None) -> list[str]:
        return [info.id for info in tel.list_handlers(prefix)]

    assert ids() == ["set", "root", "configx", "events"]
    assert ids(()) == ids()
    assert ids("foundation.config") == ["set", "root"]
    assert ids(("foundation", "config")) == ["set", "root"]
    assert ids("foundation.config.set") == ["set"]
    assert ids("foundation.config.set.stop") == []
    assert ids("foundation") == ["set", "root", "configx", "events"]
    assert ids("other") == ["events"]
    assert ids("nothing") == []

    info = tel.list_handlers("foundation.config.set")[0]
    assert info == HandlerInfo(
        id="set", event_names=(("foundation", "config", "set"),), handler=noop, config={"c": 1}
    )
    with pytest.raises(AttributeError):
        info.id = "changed"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        tel.list_handlers("foundation..config")


# -- failing handlers ---------------------------------------------------------------


def test_failing_handler_is_detached_logged_and_reported(
    tel: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    failures, survivor = Recorder(), Recorder()
    tel.attach("failures", HANDLER_FAILURE_EVENT, failures)
    tel.attach("bad", ["x", "y"], failing)
    tel.attach("good", "x", survivor)

    with caplog.at_level(logging.ERROR, logger="foundation.telemetry"):
        tel.execute("x", {"n": 1})  # must not raise
        tel.execute("x", {"n": 2})
        tel.execute("y")

    # The handler after the failing one still ran, both times.
    assert [c[1]["n"] for c in survivor.calls] == [1, 2]
    # Detached from every one of its events.
    assert [info.id for info in tel.list_handlers()] == ["failures", "good"]
    # Reported exactly once, with the documented shape.
    assert len(failures.calls) == 1
    event, measurements, metadata, _ = failures.calls[0]
    assert event == ("foundation", "telemetry", "handler_failure")
    assert measurements == {"count": 1}
    assert metadata["handler_id"] == "bad"
    assert metadata["event_name"] == ("x",)
    assert metadata["exception"] == repr(RuntimeError("boom"))
    assert metadata["exception_type"] == "RuntimeError"
    # Logged with the traceback.
    records = [r for r in caplog.records if r.name == "foundation.telemetry"]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert records[0].exc_info[0] is RuntimeError
    assert "'bad'" in records[0].getMessage()


def test_failure_event_is_reachable_by_dotted_name(tel: Telemetry, rec: Recorder) -> None:
    tel.attach("failures", "foundation.telemetry.handler_failure", rec)
    tel.attach("bad", "x", failing)
    tel.execute("x")
    assert rec.events == [HANDLER_FAILURE_EVENT]


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_base_exceptions_propagate_untouched(
    tel: Telemetry, rec: Recorder, exc_type: type[BaseException]
) -> None:
    raised = exc_type()

    def interrupting(*_a: Any) -> None:
        raise raised

    tel.attach("failures", HANDLER_FAILURE_EVENT, rec)
    tel.attach("interrupting", "x", interrupting)
    with pytest.raises(exc_type) as err:
        tel.execute("x")
    assert err.value is raised
    # Not treated as a handler failure: not reported, not detached.
    assert rec.calls == []
    assert [info.id for info in tel.list_handlers()] == ["failures", "interrupting"]


def test_failing_failure_handler_does_not_recurse(
    tel: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    failures = Recorder()
    tel.attach("failures", HANDLER_FAILURE_EVENT, failures)
    tel.attach("bad-failure-handler", HANDLER_FAILURE_EVENT, failing)
    tel.attach("bad", "x", failing)

    with caplog.at_level(logging.ERROR, logger="foundation.telemetry"):
        tel.execute("x")  # must neither raise nor recurse

    # Only the original failure is reported; the failure handler's own failure is logged.
    assert [c[2]["handler_id"] for c in failures.calls] == ["bad"]
    assert [info.id for info in tel.list_handlers()] == ["failures"]
    logged = [r for r in caplog.records if r.name == "foundation.telemetry"]
    assert len(logged) == 2


def test_failure_inside_a_failure_report_is_logged_not_reported(
    tel: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    reports: list[str] = []

    def emitting_failure_handler(
        event: EventName, measurements: Any, metadata: Mapping[str, Any], config: Any
    ) -> None:
        reports.append(metadata["handler_id"])
        tel.execute("y")  # whose handler fails, while "bad-x" is being reported

    tel.attach("reporter", HANDLER_FAILURE_EVENT, emitting_failure_handler)
    tel.attach("bad-x", "x", failing)
    tel.attach("bad-y", "y", failing)

    with caplog.at_level(logging.ERROR, logger="foundation.telemetry"):
        tel.execute("x")

    assert reports == ["bad-x"]
    assert [info.id for info in tel.list_handlers()] == ["reporter"]
    logged = [r.getMessage() for r in caplog.records if r.name == "foundation.telemetry"]
    assert len(logged) == 2
    assert "'bad-y'" in logged[1]
    # The guard is released afterwards: a later failure is reported again.
    tel.attach("bad-z", "z", failing)
    tel.execute("z")
    assert reports == ["bad-x", "bad-z"]


# -- correlation ids ----------------------------------------------------------------


def test_correlation_id_is_added_to_a_copy_of_the_metadata(tel: Telemetry, rec: Recorder) -> None:
    tel.attach("h", "x", rec)
    metadata = {"k": "v"}
    with correlation("cid-123"):
        tel.execute("x", {}, metadata)
    assert rec.calls[0][2] == {"k": "v", "correlation_id": "cid-123"}
    assert metadata == {"k": "v"}  # the caller's dict is not mutated


def test_explicit_correlation_id_wins_and_none_is_added_without_one(
    tel: Telemetry, rec: Recorder
) -> None:
    tel.attach("h", "x", rec)
    with correlation("ambient"):
        tel.execute("x", {}, {"correlation_id": "explicit"})
    tel.execute("x", {}, {"k": 1})
    assert rec.calls[0][2] == {"correlation_id": "explicit"}
    assert rec.calls[1][2] == {"k": 1}


# -- spans --------------------------------------------------------------------------


@pytest.fixture
def span_rec(tel: Telemetry) -> Recorder:
    rec = Recorder()
    tel.attach("span", ["op.run.start", "op.run.stop", "op.run.exception"], rec)
    return rec


def assert_span_pair(rec: Recorder, last: str) -> None:
    """Two events, start then ``last``, sharing one span context, with sane times."""
    assert rec.events == [("op", "run", "start"), ("op", "run", last)]
    (_, start_m, start_md, _), (_, end_m, end_md, _) = rec.calls
    assert isinstance(start_md["telemetry_span_context"], SpanContext)
    assert start_md["telemetry_span_context"] is end_md["telemetry_span_context"]
    assert set(start_m) == {"system_time", "monotonic_time"}
    assert isinstance(start_m["system_time"], int)
    assert start_m["system_time"] > 0
    assert set(end_m) == {"duration", "monotonic_time"}
    assert isinstance(end_m["duration"], int)
    assert end_m["duration"] > 0
    assert end_m["monotonic_time"] - start_m["monotonic_time"] == end_m["duration"]


def test_span_context_manager_stop(tel: Telemetry, span_rec: Recorder) -> None:
    with tel.span("op.run", {"key": "x"}) as meta:
        meta["result"] = "ok"
    assert_span_pair(span_rec, "stop")
    start_md, stop_md = span_rec.calls[0][2], span_rec.calls[1][2]
    assert start_md["key"] == "x"
    assert "result" not in start_md
    assert stop_md["key"] == "x"
    assert stop_md["result"] == "ok"


def test_span_context_manager_exception(tel: Telemetry, span_rec: Recorder) -> None:
    error = ValueError("bad value")
    with (
        pytest.raises(ValueError, match="bad value") as raised,
        tel.span(("op", "run"), {"key": "x"}),
    ):
        raise error
    assert raised.value is error
    assert_span_pair(span_rec, "exception")
    metadata = span_rec.calls[1][2]
    assert metadata["kind"] == "error"
    assert metadata["reason"] is error
    assert metadata["exception_type"] == "ValueError"
    assert metadata["key"] == "x"


def test_span_exit_kind_for_keyboard_interrupt(tel: Telemetry, span_rec: Recorder) -> None:
    with pytest.raises(KeyboardInterrupt), tel.span("op.run"):
        raise KeyboardInterrupt
    assert_span_pair(span_rec, "exception")
    assert span_rec.calls[1][2]["kind"] == "exit"
    assert span_rec.calls[1][2]["exception_type"] == "KeyboardInterrupt"


def test_foundation_error_type_is_qualified(tel: Telemetry, span_rec: Recorder) -> None:
    with pytest.raises(ValidationError), tel.span("op.run"):
        raise ValidationError("nope")
    assert span_rec.calls[1][2]["exception_type"] == "foundation.errors.ValidationError"


def test_each_span_has_its_own_context(tel: Telemetry, span_rec: Recorder) -> None:
    span = tel.span("op.run")
    with span, span:  # reentered and nested within itself
        pass
    with span:
        pass
    contexts = [c[2]["telemetry_span_context"] for c in span_rec.calls]
    # outer start, inner start, inner stop, outer stop, then the third span.
    assert contexts[0] is contexts[3]
    assert contexts[1] is contexts[2]
    assert contexts[4] is contexts[5]
    assert len({id(c) for c in contexts}) == 3


def test_span_decorator_sync(tel: Telemetry, span_rec: Recorder) -> None:
    @tel.span("op.run", {"fn": "add"})
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    assert add(2, 3) == 5
    assert add.__name__ == "add"
    assert add.__doc__ == "Add two numbers."
    assert_span_pair(span_rec, "stop")
    assert span_rec.calls[1][2]["fn"] == "add"

    add(1, 1)
    assert (
        span_rec.calls[2][2]["telemetry_span_context"]
        is not span_rec.calls[0][2]["telemetry_span_context"]
    )


def test_span_decorator_sync_exception(tel: Telemetry, span_rec: Recorder) -> None:
    @tel.span("op.run")
    def explode() -> None:
        raise LookupError("missing")

    with pytest.raises(LookupError, match="missing"):
        explode()
    assert_span_pair(span_rec, "exception")
    assert span_rec.calls[1][2]["kind"] == "error"
    assert isinstance(span_rec.calls[1][2]["reason"], LookupError)


def test_span_refuses_generator_functions(tel: Telemetry) -> None:
    def gen() -> Iterator[int]:
        yield 1

    with pytest.raises(ValidationError):
        tel.span("op.run")(gen)


@pytest.mark.asyncio
async def test_span_async_context_manager(tel: Telemetry, span_rec: Recorder) -> None:
    async with tel.span("op.run", {"key": "a"}) as meta:
        await asyncio.sleep(0)
        meta["rows"] = 3
    assert_span_pair(span_rec, "stop")
    assert span_rec.calls[1][2]["rows"] == 3

    span_rec.calls.clear()
    with pytest.raises(RuntimeError):
        async with tel.span("op.run"):
            raise RuntimeError("async boom")
    assert_span_pair(span_rec, "exception")
    assert span_rec.calls[1][2]["kind"] == "error"


@pytest.mark.asyncio
async def test_span_decorator_async(tel: Telemetry, span_rec: Recorder) -> None:
    @tel.span("op.run")
    async def fetch(x: int) -> int:
        await asyncio.sleep(0.001)
        return x * 2

    assert await fetch(21) == 42
    assert_span_pair(span_rec, "stop")
    assert span_rec.calls[1][1]["duration"] >= 1_000_000  # slept at least 1 ms


@pytest.mark.asyncio
async def test_span_decorator_async_exception_and_cancellation(
    tel: Telemetry, span_rec: Recorder
) -> None:
    @tel.span("op.run")
    async def fail() -> None:
        await asyncio.sleep(0)
        raise ValueError("async")

    with pytest.raises(ValueError, match="async"):
        await fail()
    assert_span_pair(span_rec, "exception")
    assert span_rec.calls[1][2]["kind"] == "error"

    span_rec.calls.clear()

    @tel.span("op.run")
    async def hang() -> None:
        await asyncio.sleep(10)

    task = asyncio.ensure_future(hang())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_span_pair(span_rec, "exception")
    assert span_rec.calls[1][2]["kind"] == "exit"


@pytest.mark.asyncio
async def test_concurrent_decorated_calls_are_separate_spans(
    tel: Telemetry, span_rec: Recorder
) -> None:
    @tel.span("op.run")
    async def work(delay: float) -> None:
        await asyncio.sleep(delay)

    await asyncio.gather(work(0.02), work(0.001), work(0.01))
    starts = [c[2]["telemetry_span_context"] for c in span_rec.calls if c[0][-1] == "start"]
    stops = [c[2]["telemetry_span_context"] for c in span_rec.calls if c[0][-1] == "stop"]
    assert len(starts) == len(stops) == 3
    assert {id(c) for c in starts} == {id(c) for c in stops}


def test_span_adds_correlation_id(tel: Telemetry, span_rec: Recorder) -> None:
    with correlation("span-cid"), tel.span("op.run"):
        pass
    assert [c[2]["correlation_id"] for c in span_rec.calls] == ["span-cid", "span-cid"]


# -- threads ------------------------------------------------------------------------


def test_concurrent_attach_detach_execute(tel: Telemetry) -> None:
    threads, rounds = 8, 300
    counted = 0
    count_lock = threading.Lock()

    def counter(*_a: Any) -> None:
        nonlocal counted
        with count_lock:
            counted += 1

    tel.attach("counter", "stress.event", counter)
    barrier = threading.Barrier(threads)
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            barrier.wait()
            for i in range(rounds):
                handler_id = f"t{n}-{i}"
                # Churn the table for the same event and for others while executing.
                tel.attach(handler_id, ["stress.event", f"stress.other.{n}"], lambda *_a: None)
                tel.execute("stress.event", {"i": i})
                tel.execute(("stress", "other", str(n)))
                tel.list_handlers("stress")
                assert tel.detach(handler_id) is True
                tel.execute(f"stress.unheard.{n}.{i % 10}")
        except BaseException as exc:  # collected so the main thread can fail the test
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=60)

    assert errors == []
    assert not any(thread.is_alive() for thread in pool)
    assert counted == threads * rounds
    assert [info.id for info in tel.list_handlers()] == ["counter"]


# -- module-level default -----------------------------------------------------------


def test_module_level_functions_use_the_default_instance(rec: Recorder) -> None:
    assert isinstance(telemetry.default(), Telemetry)
    assert telemetry.default() is telemetry.default()
    handler_id = "test_telemetry.module-level"
    telemetry.attach(handler_id, "tests.telemetry.module", rec, "cfg")
    try:
        assert [i.id for i in telemetry.default().list_handlers("tests.telemetry")] == [handler_id]
        assert [i.id for i in telemetry.list_handlers("tests.telemetry")] == [handler_id]
        telemetry.execute("tests.telemetry.module", {"n": 1}, {"m": 2})
        with telemetry.span("tests.telemetry.module"):
            pass
    finally:
        assert telemetry.detach(handler_id) is True
    assert rec.calls == [(("tests", "telemetry", "module"), {"n": 1}, {"m": 2}, "cfg")]
    assert telemetry.list_handlers("tests.telemetry") == []
    assert set(telemetry.__all__) >= {
        "Telemetry",
        "HandlerInfo",
        "default",
        "execute",
        "attach",
        "detach",
        "list_handlers",
        "span",
    }
