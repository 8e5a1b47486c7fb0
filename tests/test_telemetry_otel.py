"""The OpenTelemetry reporter against the real SDK: in-memory metric reader and span exporter."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import metrics as metrics_api
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from foundation.correlation import correlation
from foundation.telemetry import HANDLER_FAILURE_EVENT, Telemetry, metrics
from foundation.telemetry.reporters import OTelReporter


@pytest.fixture
def tel() -> Telemetry:
    return Telemetry()


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    yield InMemorySpanExporter()


@pytest.fixture
def tracer_provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


@pytest.fixture
def meter() -> Iterator[tuple[MeterProvider, InMemoryMetricReader]]:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    yield provider, reader
    provider.shutdown()


def collect(reader: InMemoryMetricReader) -> dict[str, Any]:
    """``{instrument name: metric}`` from one collection."""
    data = reader.get_metrics_data()
    out: dict[str, Any] = {}
    assert data is not None
    for resource_metrics in data.resource_metrics:
        for scope in resource_metrics.scope_metrics:
            for metric in scope.metrics:
                out[metric.name] = metric
    return out


def points(metric: Any) -> dict[tuple[tuple[str, Any], ...], Any]:
    return {tuple(sorted((p.attributes or {}).items())): p for p in metric.data.data_points}


@pytest.mark.parametrize("synchronous", [False, True])
def test_each_kind_becomes_an_instrument(
    tel: Telemetry, meter: tuple[MeterProvider, InMemoryMetricReader], synchronous: bool
) -> None:
    provider, reader = meter
    defs = [
        metrics.counter("shop.order.count", tags=["region"], description="orders"),
        metrics.sum("shop.order.items"),
        metrics.sum("shop.order.delta", monotonic=False),
        metrics.last_value("shop.order.size", unit="byte"),
        metrics.summary("shop.order.latency", measurement="duration", unit=("native", "second")),
        metrics.distribution(
            "shop.order.duration", unit=("native", "millisecond"), buckets=[1, 5, 10]
        ),
    ]
    OTelReporter(tel, defs, meter_provider=provider, synchronous=synchronous)
    tel.execute(
        "shop.order",
        {"items": 2, "delta": -3, "size": 100, "duration": 3_000_000},
        {"region": "eu"},
    )
    tel.execute(
        "shop.order",
        {"items": 5, "delta": 1, "size": 7, "duration": 7_000_000},
        {"region": "us"},
    )
    tel.execute("shop.order", {"items": 1, "duration": 20_000_000}, {"region": "eu"})
    got = collect(reader)

    count = got["shop.order.count"]
    assert count.description == "orders"
    assert count.data.is_monotonic
    assert {k: p.value for k, p in points(count).items()} == {
        (("region", "eu"),): 2,
        (("region", "us"),): 1,
    }
    assert next(iter(points(got["shop.order.items"]).values())).value == 8
    delta = got["shop.order.delta"]
    assert not delta.data.is_monotonic
    assert next(iter(points(delta).values())).value == -2
    size = got["shop.order.size"]
    assert size.unit == "By"
    assert next(iter(points(size).values())).value == 7

    latency = next(iter(points(got["shop.order.latency"]).values()))
    assert got["shop.order.latency"].unit == "s"
    assert latency.count == 3
    assert latency.sum == pytest.approx(0.030)

    duration = got["shop.order.duration"]
    assert duration.unit == "ms"
    dp = next(iter(points(duration).values()))
    assert list(dp.explicit_bounds) == [1, 5, 10]
    assert list(dp.bucket_counts) == [0, 1, 1, 1]
    assert dp.min == pytest.approx(3) and dp.max == pytest.approx(20)


def test_missing_and_non_numeric_never_reach_the_caller(
    tel: Telemetry, meter: tuple[MeterProvider, InMemoryMetricReader]
) -> None:
    provider, reader = meter
    reporter = OTelReporter(
        tel, [metrics.distribution("job.run.duration")], meter_provider=provider
    )
    tel.execute("job.run", {}, {})
    tel.execute("job.run", {"duration": "slow"}, {})
    tel.execute("job.run", {"duration": 4}, {})
    assert reporter.attached
    stats = reporter.stats()["job.run.duration"]
    assert (stats.missing, stats.invalid) == (1, 1)
    dp = next(iter(points(collect(reader)["job.run.duration"]).values()))
    assert dp.count == 1


def test_spans_become_otel_spans(
    tel: Telemetry,
    tracer_provider: TracerProvider,
    exporter: InMemorySpanExporter,
    meter: tuple[MeterProvider, InMemoryMetricReader],
) -> None:
    provider, _ = meter
    reporter = OTelReporter(
        tel,
        [],
        meter_provider=provider,
        tracer_provider=tracer_provider,
        spans=["shop.checkout", "shop.charge"],
    )
    with correlation("req-42"):
        with tel.span("shop.checkout", {"order": 123}) as meta:
            with tel.span("shop.charge", {"amount": 9.5}):
                pass
            meta["result"] = "ok"
        with pytest.raises(ValueError, match="declined"), tel.span("shop.charge"):
            raise ValueError("card declined")

    spans: dict[str, list[ReadableSpan]] = {}
    for span in exporter.get_finished_spans():
        spans.setdefault(span.name, []).append(span)
    (checkout,) = spans["shop.checkout"]
    inner, failed = spans["shop.charge"]

    assert checkout.attributes is not None
    assert checkout.attributes["order"] == 123
    assert checkout.attributes["result"] == "ok"  # from the stop metadata
    assert checkout.attributes["correlation_id"] == "req-42"
    assert "telemetry_span_context" not in checkout.attributes
    assert checkout.end_time is not None and checkout.start_time is not None
    assert checkout.end_time > checkout.start_time
    assert checkout.status.status_code is StatusCode.UNSET

    # The inner span is the checkout's child: the OTel span was current in between.
    assert inner.parent is not None
    assert inner.parent.span_id == checkout.context.span_id
    assert inner.context.trace_id == checkout.context.trace_id
    assert inner.attributes is not None and inner.attributes["amount"] == 9.5

    assert failed.parent is None
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None
    assert failed.attributes["correlation_id"] == "req-42"
    assert failed.attributes["exception_type"] == "ValueError"
    (event,) = failed.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "ValueError"
    assert event.attributes["exception.message"] == "card declined"

    reporter.detach()
    with tel.span("shop.checkout"):
        pass
    assert len(exporter.get_finished_spans()) == 3
    assert tel.list_handlers() == []


class _Boom(Exception):
    pass


class _BrokenInstrument:
    def add(self, amount: float, attributes: Any = None) -> None:
        raise _Boom("exporter down")

    def record(self, amount: float, attributes: Any = None) -> None:
        raise _Boom("exporter down")


class _BrokenMeter:
    def create_counter(self, name: str, unit: str = "", description: str = "") -> Any:
        return _BrokenInstrument()

    def create_histogram(self, name: str, unit: str = "", **kwargs: Any) -> Any:
        return _BrokenInstrument()


class _BrokenMeterProvider(metrics_api.NoOpMeterProvider):
    """A meter provider whose counters raise, as a misbehaving backend would."""

    def get_meter(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return _BrokenMeter()


@pytest.mark.parametrize(
    ("definition", "synchronous"),
    [(metrics.distribution("x.y.duration"), False), (metrics.counter("x.y.count"), True)],
)
def test_a_failing_backend_is_detached_with_a_visible_failure_event(
    tel: Telemetry, definition: metrics.Metric, synchronous: bool
) -> None:
    failures: list[Mapping[str, Any]] = []
    tel.attach("watch", HANDLER_FAILURE_EVENT, lambda e, m, md, c: failures.append(md))
    reporter = OTelReporter(
        tel, [definition], meter_provider=_BrokenMeterProvider(), synchronous=synchronous
    )
    tel.execute("x.y", {"duration": 5}, {})  # does not raise into the caller
    tel.execute("x.y", {"duration": 5}, {})  # detached: not called again
    assert not reporter.attached
    assert len(failures) == 1
    assert failures[0]["handler_id"] == reporter.handler_id
    assert failures[0]["event_name"] == ("x", "y")
    assert failures[0]["exception_type"].endswith("_Boom")
