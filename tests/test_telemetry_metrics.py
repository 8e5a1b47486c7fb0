"""Metric definitions: names, measurements, tags, units, validation; and the logging reporter."""

from __future__ import annotations

import dataclasses
import logging
import math
import subprocess
import sys
from collections.abc import Mapping
from fractions import Fraction
from typing import Any

import pytest

from foundation.errors import ValidationError
from foundation.telemetry import Telemetry, metrics
from foundation.telemetry.reporters import LoggingReporter, MetricStats


def test_name_splits_into_event_and_measurement() -> None:
    m = metrics.summary("foundation.events.store.duration")
    assert m.name == ("foundation", "events", "store", "duration")
    assert m.event_name == ("foundation", "events", "store")
    assert m.measurement == "duration"
    assert m.kind == "summary"
    assert m.dotted_name == "foundation.events.store.duration"


def test_explicit_event_name_and_callable_measurement() -> None:
    def total(measurements: Mapping[str, Any], metadata: Mapping[str, Any]) -> float:
        return float(measurements["a"])

    m = metrics.sum("app.total", event_name=("app", "thing"), measurement=total)
    assert m.event_name == ("app", "thing")
    assert m.measurement is total
    assert m.measurement_arity == 2
    one = metrics.last_value("app.x", event_name="app.thing", measurement=lambda ms: ms["x"])
    assert one.measurement_arity == 1


@pytest.mark.parametrize(
    ("unit", "reported", "scale"),
    [
        (("native", "millisecond"), "millisecond", 1e-6),
        (("native", "second"), "second", 1e-9),
        (("native", "microsecond"), "microsecond", 1e-3),
        (("millisecond", "second"), "second", 1e-3),
        (("byte", "kilobyte"), "kilobyte", 1e-3),
        (("byte", "mebibyte"), "mebibyte", 1 / 1024**2),
        ("native", "nanosecond", 1.0),
        ("request", "request", 1.0),
        (None, None, 1.0),
    ],
)
def test_units(unit: Any, reported: str | None, scale: float) -> None:
    m = metrics.distribution("a.b.duration", unit=unit)
    assert m.unit == reported
    assert math.isclose(m.scale, scale)


def test_definitions_are_frozen() -> None:
    m = metrics.counter("a.b.count", tags=["x"])
    with pytest.raises(dataclasses.FrozenInstanceError):
        m.tags = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        m.reporter_options["x"] = 1  # type: ignore[index]


@pytest.mark.parametrize(
    "build",
    [
        lambda: metrics.counter("single"),
        lambda: metrics.counter("a..b"),
        lambda: metrics.counter(["a", "b"]),  # type: ignore[arg-type]
        lambda: metrics.sum("a.b", measurement=3),  # type: ignore[arg-type]
        lambda: metrics.sum("a.b", measurement=""),
        lambda: metrics.counter("a.b", tags="node"),
        lambda: metrics.counter("a.b", tags=["node", "node"]),
        lambda: metrics.counter("a.b", tags=[""]),
        lambda: metrics.counter("a.b", tags=[1]),  # type: ignore[list-item]
        lambda: metrics.counter("a.b", keep=True),  # type: ignore[arg-type]
        lambda: metrics.counter("a.b", drop="x"),  # type: ignore[arg-type]
        lambda: metrics.counter("a.b", tag_values={}),  # type: ignore[arg-type]
        lambda: metrics.counter("a.b", unit=("native", "byte")),
        lambda: metrics.counter("a.b", unit=("native", "fortnight")),
        lambda: metrics.counter("a.b", unit=""),
        lambda: metrics.counter("a.b", unit=3),  # type: ignore[arg-type]
        lambda: metrics.counter("a.b", description=3),  # type: ignore[arg-type]
        lambda: metrics.counter("a.b", reporter_options=[1]),  # type: ignore[arg-type]
        lambda: metrics.sum("a.b", monotonic="yes"),  # type: ignore[arg-type]
        lambda: metrics.distribution("a.b", buckets=[]),
        lambda: metrics.distribution("a.b", buckets=[2, 1]),
        lambda: metrics.distribution("a.b", buckets=[1, 1]),
        lambda: metrics.distribution("a.b", buckets=[1, math.inf]),
        lambda: metrics.distribution("a.b", buckets="12"),  # type: ignore[arg-type]
        lambda: metrics.distribution("a.b", buckets=[True, 2]),
    ],
)
def test_bad_definitions_raise_validation_error(build: Any) -> None:
    with pytest.raises(ValidationError):
        build()


def test_reporter_refuses_bad_arguments() -> None:
    tel = Telemetry()
    with pytest.raises(ValidationError):
        LoggingReporter(object(), [])  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        LoggingReporter(tel, ["a.b"])  # type: ignore[list-item]
    with pytest.raises(ValidationError):
        LoggingReporter(tel, [metrics.counter("a.b"), metrics.counter("a.b")])
    with pytest.raises(ValidationError):
        LoggingReporter(tel, [metrics.counter("a.b")], max_tag_sets=0)
    with pytest.raises(ValidationError):
        LoggingReporter(tel, [metrics.counter("a.b")], logger=3)  # type: ignore[arg-type]
    assert tel.list_handlers() == []


# -- the logging reporter, which also exercises the shared engine -----------------------


@pytest.fixture
def tel() -> Telemetry:
    return Telemetry()


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "test.metrics"]


def test_logging_reporter_structured_fields(
    tel: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    defs = [
        metrics.counter("shop.order.count", tags=["region"]),
        metrics.summary("shop.order.duration", unit=("native", "millisecond")),
    ]
    caplog.set_level(logging.INFO, logger="test.metrics")
    with LoggingReporter(tel, defs, logger="test.metrics") as reporter:
        tel.execute("shop.order", {"duration": 2_500_000}, {"region": "eu"})
        assert reporter.attached
    assert not reporter.attached
    tel.execute("shop.order", {"duration": 1}, {"region": "eu"})  # detached: nothing
    records = _records(caplog)
    assert [r.metric for r in records] == [  # type: ignore[attr-defined]
        "shop.order.count",
        "shop.order.duration",
    ]
    count, duration = records
    assert count.metric_kind == "counter"  # type: ignore[attr-defined]
    assert count.metric_value == 1  # type: ignore[attr-defined]
    assert count.metric_tags == {"region": "eu"}  # type: ignore[attr-defined]
    assert count.event_name == "shop.order"  # type: ignore[attr-defined]
    assert duration.metric_value == pytest.approx(2.5)  # type: ignore[attr-defined]
    assert duration.metric_unit == "millisecond"  # type: ignore[attr-defined]
    assert "shop.order.duration=2.5 millisecond" in duration.getMessage()


def test_keep_drop_tag_values(tel: Telemetry, caplog: pytest.LogCaptureFixture) -> None:
    defs = [
        metrics.counter(
            "http.request.count",
            keep=lambda meta: meta.get("status", 0) >= 500,
            tag_values=lambda meta: {"route": meta["path"].split("/")[1]},
            tags=["route"],
        ),
        metrics.counter("http.request.other", drop=lambda meta: meta.get("status") == 200),
    ]
    caplog.set_level(logging.INFO, logger="test.metrics")
    LoggingReporter(tel, defs, logger="test.metrics")
    tel.execute("http.request", {}, {"status": 200, "path": "/users/1"})
    tel.execute("http.request", {}, {"status": 503, "path": "/users/2"})
    got = [(r.metric, r.metric_tags) for r in _records(caplog)]  # type: ignore[attr-defined]
    assert got == [("http.request.count", {"route": "users"}), ("http.request.other", {})]


def test_missing_and_non_numeric_measurements_are_skipped_and_counted(
    tel: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    defs = [
        metrics.sum("job.done.items"),
        metrics.sum("job.done.delta", monotonic=False),
        metrics.last_value("job.done.ratio", measurement=lambda ms: ms["a"] / ms["b"]),
    ]
    caplog.set_level(logging.INFO)
    reporter = LoggingReporter(tel, defs, logger="test.metrics")
    tel.execute("job.done", {}, {})  # everything missing
    tel.execute("job.done", {}, {})
    tel.execute("job.done", {"items": "many", "delta": True, "a": 1, "b": 0}, {})
    tel.execute("job.done", {"items": math.nan, "delta": None}, {})
    tel.execute("job.done", {"items": -1, "delta": -1, "a": 1, "b": 4}, {})  # -1 monotonic: no
    tel.execute("job.done", {"items": Fraction(3, 2), "delta": 2.5}, {})
    assert reporter.attached  # nothing raised into the handler or the caller
    stats = reporter.stats()
    assert stats["job.done.items"] == MetricStats(missing=2, invalid=3, overflow=0)
    assert stats["job.done.delta"] == MetricStats(missing=2, invalid=2, overflow=0)
    # ZeroDivisionError and KeyError from the callable count as missing.
    assert stats["job.done.ratio"] == MetricStats(missing=5, invalid=0, overflow=0)
    values = [(r.metric, r.metric_value) for r in _records(caplog)]  # type: ignore[attr-defined]
    assert values == [
        ("job.done.delta", -1),
        ("job.done.ratio", 0.25),
        ("job.done.items", 1.5),
        ("job.done.delta", 2.5),
    ]
    warnings = [r for r in caplog.records if r.name == "foundation.telemetry.reporters"]
    # Logged once per metric and reason, however many events were skipped.
    assert len(warnings) == 5


def test_label_guard_caps_distinct_tag_sets(
    tel: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    reporter = LoggingReporter(
        tel,
        [metrics.counter("api.call.count", tags=["user"])],
        logger="test.metrics",
        max_tag_sets=3,
    )
    for i in range(10):
        tel.execute("api.call", {}, {"user": f"u{i}"})
    tel.execute("api.call", {}, {"user": "u0"})  # a known set is still recorded
    stats = reporter.stats()["api.call.count"]
    assert stats == MetricStats(missing=0, invalid=0, overflow=7, series=3)
    recorded = [r.metric_tags["user"] for r in _records(caplog)]  # type: ignore[attr-defined]
    assert recorded == ["u0", "u1", "u2", "u0"]
    overflow_logs = [r for r in caplog.records if getattr(r, "skip_reason", "") == "overflow"]
    assert len(overflow_logs) == 1
    assert "label explosion" in overflow_logs[0].getMessage()


def test_failing_user_callables_do_not_detach(tel: Telemetry) -> None:
    def bad(meta: Mapping[str, Any]) -> bool:
        raise RuntimeError("nope")

    reporter = LoggingReporter(
        tel,
        [
            metrics.counter("a.b.c", keep=bad),
            metrics.counter("a.b.d", tags=["x"], tag_values=bad),  # type: ignore[arg-type]
        ],
    )
    tel.execute("a.b", {}, {})
    assert reporter.attached
    assert reporter.stats()["a.b.c"].invalid == 1
    assert reporter.stats()["a.b.d"].invalid == 1


def test_reporters_import_no_backend_until_used() -> None:
    script = (
        "import sys, foundation, foundation.telemetry.reporters as r, "
        "foundation.telemetry.catalogue, foundation.telemetry.poller\n"
        "r.LoggingReporter\n"
        "assert 'opentelemetry' not in sys.modules, 'opentelemetry imported'\n"
        "assert 'prometheus_client' not in sys.modules, 'prometheus_client imported'\n"
        "r.PrometheusReporter\n"
        "assert 'prometheus_client' in sys.modules\n"
        "assert 'opentelemetry' not in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
