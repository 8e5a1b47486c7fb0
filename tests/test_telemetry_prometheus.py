"""The Prometheus reporter against the real ``prometheus_client``: scraped text, parsed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("prometheus_client")

import prometheus_client
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from foundation.errors import ValidationError
from foundation.telemetry import HANDLER_FAILURE_EVENT, Telemetry, metrics
from foundation.telemetry.reporters import PrometheusReporter
from foundation.telemetry.reporters.prometheus import prometheus_name

ROOT = Path(__file__).resolve().parents[1]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> tuple[dict[str, str], Samples]:
    """``({family: type}, {(sample name, sorted labels): value})`` from the exposition text."""
    text = generate_latest(registry).decode()
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return types, samples


@pytest.fixture
def tel() -> Telemetry:
    return Telemetry()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def test_each_kind_becomes_a_collector(tel: Telemetry, registry: CollectorRegistry) -> None:
    defs = [
        metrics.counter("shop.order.count", tags=["region"]),
        metrics.sum("shop.order.items"),
        metrics.sum("shop.order.delta", monotonic=False),
        metrics.last_value("shop.order.size", unit="byte", tags=["region"]),
        metrics.summary("shop.order.latency", measurement="duration", unit=("native", "second")),
        metrics.distribution(
            "shop.order.duration", unit=("native", "millisecond"), buckets=[1, 5, 10]
        ),
    ]
    PrometheusReporter(tel, defs, registry=registry)
    tel.execute(
        "shop.order",
        {"items": 2, "delta": -3, "size": 100, "duration": 3_000_000},
        {"region": "eu"},
    )
    tel.execute(
        "shop.order", {"items": 5, "delta": 1, "size": 7, "duration": 7_000_000}, {"region": "us"}
    )
    tel.execute("shop.order", {"items": 1, "duration": 20_000_000}, {"region": "eu"})
    types, samples = scrape(registry)

    assert types["shop_order_count"] == "counter"
    assert samples[("shop_order_count_total", (("region", "eu"),))] == 2
    assert samples[("shop_order_count_total", (("region", "us"),))] == 1
    assert samples[("shop_order_items_total", ())] == 8
    assert types["shop_order_delta"] == "gauge"
    assert samples[("shop_order_delta", ())] == -2
    assert types["shop_order_size_bytes"] == "gauge"
    assert samples[("shop_order_size_bytes", (("region", "eu"),))] == 100
    assert samples[("shop_order_size_bytes", (("region", "us"),))] == 7
    assert types["shop_order_latency_seconds"] == "summary"
    assert samples[("shop_order_latency_seconds_count", ())] == 3
    assert samples[("shop_order_latency_seconds_sum", ())] == pytest.approx(0.030)
    assert types["shop_order_duration_milliseconds"] == "histogram"
    bucket = "shop_order_duration_milliseconds_bucket"
    assert samples[(bucket, (("le", "1.0"),))] == 0
    assert samples[(bucket, (("le", "5.0"),))] == 1
    assert samples[(bucket, (("le", "10.0"),))] == 2
    assert samples[(bucket, (("le", "+Inf"),))] == 3
    assert samples[("shop_order_duration_milliseconds_sum", ())] == pytest.approx(30)


def test_names_and_labels_are_sanitised() -> None:
    m = metrics.counter("my-app.req.count", tags=["http.route"])
    assert prometheus_name(m) == "my_app_req_count"
    assert prometheus_name(metrics.sum("a.b.bytes", unit="byte")) == "a_b_bytes"
    custom = metrics.counter("a.b.c", reporter_options={"prometheus_name": "custom_name"})
    assert prometheus_name(custom) == "custom_name"
    tel, registry = Telemetry(), CollectorRegistry()
    PrometheusReporter(tel, [m], registry=registry)
    tel.execute("my-app.req", {}, {"http.route": "/x"})
    _, samples = scrape(registry)
    assert samples[("my_app_req_count_total", (("http_route", "/x"),))] == 1


def test_duplicate_registration_is_a_validation_error_and_registers_nothing(
    tel: Telemetry, registry: CollectorRegistry
) -> None:
    PrometheusReporter(tel, [metrics.counter("a.b.count")], registry=registry)
    with pytest.raises(ValidationError, match="a_b_count"):
        PrometheusReporter(
            tel, [metrics.counter("z.z.count"), metrics.counter("a.b.count")], registry=registry
        )
    _, samples = scrape(registry)
    assert not any(name.startswith("z_z") for name, _ in samples)
    assert len(tel.list_handlers()) == 1
    with pytest.raises(ValidationError):  # tags that collide once sanitised
        PrometheusReporter(tel, [metrics.counter("q.q.count", tags=["a.b", "a_b"])])


def test_close_unregisters(tel: Telemetry, registry: CollectorRegistry) -> None:
    reporter = PrometheusReporter(tel, [metrics.counter("a.b.count")], registry=registry)
    reporter.close()
    reporter.close()
    assert scrape(registry) == ({}, {})
    PrometheusReporter(tel, [metrics.counter("a.b.count")], registry=registry)  # name free again


def test_label_explosion_guard(
    tel: Telemetry, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    reporter = PrometheusReporter(
        tel,
        [metrics.counter("api.call.count", tags=["user"]), metrics.counter("api.call.all")],
        registry=registry,
        max_tag_sets=5,
    )
    for i in range(1000):
        tel.execute("api.call", {}, {"user": f"user-{i}"})
    _, samples = scrape(registry)
    series = [labels for name, labels in samples if name == "api_call_count_total"]
    assert len(series) == 5
    assert samples[("api_call_all_total", ())] == 1000  # the untagged metric saw everything
    assert reporter.stats()["api.call.count"].overflow == 995
    assert sum("label explosion" in r.getMessage() for r in caplog.records) == 1


def test_label_guard_holds_under_threads(tel: Telemetry, registry: CollectorRegistry) -> None:
    reporter = PrometheusReporter(
        tel, [metrics.counter("api.call.count", tags=["user"])], registry=registry, max_tag_sets=50
    )
    start = threading.Barrier(8)

    def emit(worker: int) -> None:
        start.wait()
        for i in range(200):
            tel.execute("api.call", {}, {"user": f"{worker}-{i % 40}"})

    threads = [threading.Thread(target=emit, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _, samples = scrape(registry)
    series = {labels: v for (name, labels), v in samples.items() if name == "api_call_count_total"}
    stats = reporter.stats()["api.call.count"]
    assert len(series) == stats.series == 50
    assert sum(series.values()) + stats.overflow == 8 * 200


def test_missing_and_non_numeric_are_skipped(tel: Telemetry, registry: CollectorRegistry) -> None:
    reporter = PrometheusReporter(
        tel, [metrics.sum("job.done.items"), metrics.counter("job.done.count")], registry=registry
    )
    tel.execute("job.done", {}, {})
    tel.execute("job.done", {"items": "3"}, {})
    tel.execute("job.done", {"items": -4}, {})  # a Counter cannot go down
    tel.execute("job.done", {"items": 4}, {})
    assert reporter.attached
    _, samples = scrape(registry)
    assert samples[("job_done_items_total", ())] == 4
    assert samples[("job_done_count_total", ())] == 4
    stats = reporter.stats()["job.done.items"]
    assert (stats.missing, stats.invalid) == (1, 2)


def test_a_failing_backend_is_detached_with_a_visible_failure_event(
    tel: Telemetry, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures: list[Mapping[str, Any]] = []
    tel.attach("watch", HANDLER_FAILURE_EVENT, lambda e, m, md, c: failures.append(md))

    def broken(self: Any, amount: float = 1, exemplar: Any = None) -> None:
        raise OSError("mmap file vanished")

    monkeypatch.setattr(prometheus_client.Counter, "inc", broken)
    reporter = PrometheusReporter(
        tel, [metrics.counter("x.y.count", tags=["k"])], registry=registry
    )
    tel.execute("x.y", {}, {"k": "v"})  # the caller sees nothing
    tel.execute("x.y", {}, {"k": "v"})
    assert not reporter.attached
    assert [f["handler_id"] for f in failures] == [reporter.handler_id]
    assert failures[0]["exception_type"] == "OSError"


# -- multi-process: the gunicorn recipe of docs/telemetry.md, with real processes ----

WORKER = textwrap.dedent(
    """
    import sys
    from prometheus_client import CollectorRegistry
    from foundation.telemetry import Telemetry, metrics
    from foundation.telemetry.reporters import PrometheusReporter

    worker, n, size = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    tel = Telemetry()
    PrometheusReporter(
        tel,
        [
            metrics.counter("app.request.count", tags=["route"]),
            metrics.distribution(
                "app.request.duration", unit=("native", "millisecond"), buckets=[1, 10]
            ),
            metrics.summary("app.request.latency", measurement="duration"),
            metrics.last_value("app.request.queue"),
        ],
        registry=CollectorRegistry(),  # private: a worker never serves its own registry
    )
    for i in range(n):
        tel.execute(
            "app.request", {"duration": 5_000_000, "queue": size}, {"route": f"/r{i % 2}"}
        )
    print(worker, "done")
    """
)


@pytest.mark.slow
def test_multiprocess_workers_aggregate_in_the_parent(tmp_path: Path) -> None:
    multiproc_dir = tmp_path / "prom"
    multiproc_dir.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc_dir)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, name, str(n), str(size)],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, n, size in (("a", 30, 3), ("b", 50, 8))
    ]
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        assert out.strip().endswith("done")
    # Two processes wrote their own files.
    assert len({p.name.rsplit("_", 1)[-1] for p in multiproc_dir.glob("*.db")}) == 2

    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiproc_dir))
    types, samples = scrape(registry)
    assert types["app_request_count"] == "counter"
    assert samples[("app_request_count_total", (("route", "/r0"),))] == 15 + 25
    assert samples[("app_request_count_total", (("route", "/r1"),))] == 15 + 25
    bucket = "app_request_duration_milliseconds_bucket"
    assert samples[(bucket, (("le", "1.0"),))] == 0
    assert samples[(bucket, (("le", "10.0"),))] == 80
    assert samples[(bucket, (("le", "+Inf"),))] == 80
    assert samples[("app_request_duration_milliseconds_sum", ())] == pytest.approx(400)
    assert samples[("app_request_latency_count", ())] == 80
    # last_value uses multiprocess_mode="mostrecent": one series, the latest write of either.
    queue = [(labels, v) for (name, labels), v in samples.items() if name == "app_request_queue"]
    assert len(queue) == 1
    assert queue[0][0] == ()
    assert queue[0][1] in (3.0, 8.0)
