"""Found by a reviewer wiring the telemetry as an SRE would.

* A NaN in a float subclass (numpy's float64) went to the backend; a Fraction beyond a
  float's range raised in the reporter's handler, which the core then detached.
* A tag value with a lone surrogate made every later Prometheus scrape fail.
* ``fdn.poller()`` dropped its tail-position probe for good after one database error.
* OpenTelemetry's SDK raised a bare ``Exception`` for a name it does not take; a poller
  interval of ``inf`` killed its thread; a counter's unit conversion scaled its 1s.
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from foundation import Foundation, StorageUnavailableError, ValidationError
from foundation.telemetry import Poller, Telemetry, metrics
from foundation.telemetry.reporters import LoggingReporter


class Float(float):
    """As numpy's float64: a float subclass."""


@pytest.mark.parametrize(
    "value", [Float("nan"), Float("inf"), math.inf, Fraction(10**400), Fraction(-(10**400))]
)
def test_odd_numbers_are_skipped_as_invalid(value: object) -> None:
    telemetry = Telemetry()
    reporter = LoggingReporter(telemetry, [metrics.sum("app.req.size")], logger="t.odd")
    telemetry.execute("app.req", {"size": value})
    telemetry.execute("app.req", {"size": Float(2.5)})
    assert reporter.attached
    assert reporter.stats()["app.req.size"].invalid == 1


def test_a_tag_value_with_a_lone_surrogate_leaves_the_scrape_working() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from foundation.telemetry.reporters import PrometheusReporter

    telemetry = Telemetry()
    registry = prometheus_client.CollectorRegistry()
    PrometheusReporter(
        telemetry, [metrics.counter("app.req.count", tags=["path"])], registry=registry
    )
    telemetry.execute("app.req", {}, {"path": "/caf\udce9"})
    telemetry.execute("app.req", {}, {"path": "/ok"})
    text = prometheus_client.generate_latest(registry).decode()
    assert 'app_req_count_total{path="/caf?"} 1.0' in text
    assert 'app_req_count_total{path="/ok"} 1.0' in text


def test_the_nodes_poller_keeps_its_tail_probe_through_an_outage(fdn: Foundation) -> None:
    seen: list[dict[str, int]] = []
    fdn.telemetry.attach(
        "t.tail", "foundation.poller.event_log", lambda _e, m, _md, _c: seen.append(m)
    )
    stored = fdn.events.store({"type": "a"})
    poller = fdn.poller(interval_ms=86_400_000)  # polls once at start, then only by hand
    try:
        db = fdn.events._db

        def down(*args: object) -> None:
            raise StorageUnavailableError("the database is down")

        db.fetchone = down  # type: ignore[method-assign]
        try:
            poller.poll()
        finally:
            del db.fetchone  # the method again
        poller.poll()
        assert len(poller.measurements) == 3
        assert seen[-1] == {"tail_position": stored.position}
    finally:
        poller.stop()


def test_opentelemetry_names_it_cannot_take_are_a_validation_error() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider

    from foundation.telemetry.reporters import OTelReporter

    for name in ("app.ünicode.count", "5xx.errors.count", "a." + "b" * 260 + ".count"):
        with pytest.raises(ValidationError, match="OpenTelemetry cannot name"):
            OTelReporter(Telemetry(), [metrics.counter(name)], meter_provider=MeterProvider())


def test_a_poller_interval_must_be_finite_and_a_counter_unit_no_conversion() -> None:
    for interval in (math.inf, 1e300, 86_400_001):
        with pytest.raises(ValidationError, match="at most a day"):
            Poller(Telemetry(), measurements=[], interval_ms=interval)
    with pytest.raises(ValidationError, match="a counter counts events"):
        metrics.counter("x.y.count", unit=("native", "millisecond"))
    assert metrics.counter("x.y.count", unit="request").unit == "request"
