"""Benchmark rows for telemetry reporters (issue 6): ``execute`` with one counter attached.

Imported by ``scripts/bench.py``. Each row times ``telemetry.execute`` on an event that one
counter definition listens to, the definition attached through a reporter on a real
backend (the OpenTelemetry SDK with an in-memory reader; a private ``prometheus_client``
registry), beside ``execute`` of the same event with no handler attached.
"""

from __future__ import annotations

from typing import Any

from bench_helpers import BenchOutput, Context, Floor, Measured, bench, measure_calls

from foundation.telemetry import Telemetry, metrics

EVENT = ("bench", "request")
MEASUREMENTS = {"duration": 50}
METADATA = {"controller": "UserController"}


def _otel(tel: Telemetry, definition: Any) -> tuple[Any, Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from foundation.telemetry.reporters import OTelReporter

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    reporter = OTelReporter(tel, [definition], meter_provider=provider)

    def counted() -> float:
        data = reader.get_metrics_data()
        total = 0.0
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == definition.dotted_name:
                        total += sum(p.value for p in metric.data.data_points)
        return total

    def close() -> None:
        reporter.detach()
        provider.shutdown()

    return counted, close


def _prometheus(tel: Telemetry, definition: Any) -> tuple[Any, Any]:
    from prometheus_client import CollectorRegistry

    from foundation.telemetry.reporters import PrometheusReporter
    from foundation.telemetry.reporters.prometheus import prometheus_name

    registry = CollectorRegistry()
    reporter = PrometheusReporter(tel, [definition], registry=registry)
    name = prometheus_name(definition)

    def counted() -> float:
        for family in registry.collect():
            for sample in family.samples:
                if sample.name in (name, f"{name}_total"):
                    return float(sample.value)
        return 0.0

    return counted, reporter.close


@bench(
    "telemetry.execute, 1 counter via OpenTelemetry reporter",
    target="median ≤ 5 µs",
    median_us=5.0,
    backend_name="otel",
)
@bench(
    "telemetry.execute, 1 counter via Prometheus reporter",
    target="median ≤ 5 µs",
    median_us=5.0,
    backend_name="prometheus",
)
def reporter_execute(ctx: Context, backend_name: str) -> BenchOutput:
    n, warmup = ctx.n(200_000, 2_000), ctx.n(20_000, 200)
    definition = metrics.counter("bench.request.count")
    tel, bare = Telemetry(), Telemetry()
    counted, close = (_otel if backend_name == "otel" else _prometheus)(tel, definition)
    try:
        args = (EVENT, MEASUREMENTS, METADATA)
        ours, floor = measure_calls([(tel.execute, args), (bare.execute, args)], n, warmup)
        total = counted()
    finally:
        close()
    if total != n + warmup:
        raise RuntimeError(f"the counter reads {total}, expected {n + warmup} events")
    label = (
        "opentelemetry-sdk MeterProvider + InMemoryMetricReader"
        if backend_name == "otel"
        else "prometheus_client, private CollectorRegistry"
    )
    return Measured(
        ours,
        [Floor("telemetry.execute, no handler attached", floor)],
        note=f"{label}; the counter is checked to read every emit afterwards",
    )
