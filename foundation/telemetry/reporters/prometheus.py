"""Prometheus reporter: metric definitions as ``prometheus_client`` collectors.

Needs the ``prometheus`` extra (``pip install foundation[prometheus]``). Importing this
module imports ``prometheus_client``; nothing else in Foundation does.

==================  ==========================================================
definition          collector
==================  ==========================================================
``counter``         ``Counter`` (+1 per event; exposed as ``<name>_total``)
``sum``             ``Counter``; ``Gauge`` (``inc``) when ``monotonic=False``
``last_value``      ``Gauge`` (``set``)
``summary``         ``Summary`` (``_count`` and ``_sum``)
``distribution``    ``Histogram`` with the definition's buckets
==================  ==========================================================

Names: the dotted metric name with ``.`` and ``-`` replaced by ``_``, then the unit in
the plural when the definition has one and the name does not already end with it
(``foundation.events.store.duration`` in milliseconds →
``foundation_events_store_duration_milliseconds``). ``reporter_options={"prometheus_name":
"..."}`` on a definition overrides it. Tags become label names the same way.

Multi-process (gunicorn and the like): set ``PROMETHEUS_MULTIPROC_DIR`` before anything
imports ``prometheus_client`` in the workers; the collectors then write to files there
and a ``MultiProcessCollector`` aggregates them. See ``docs/telemetry.md``. Gauges from
``last_value`` use ``multiprocess_mode="mostrecent"`` and those from a non-monotonic
``sum`` ``"livesum"``; change them with ``gauge_multiprocess_mode`` /
``sum_multiprocess_mode``.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from typing import Any, Final, Literal, TypeAlias

import prometheus_client
from prometheus_client import CollectorRegistry

from foundation.errors import ValidationError
from foundation.telemetry._core import Telemetry
from foundation.telemetry.metrics import Counter, Distribution, LastValue, Metric, Sum, Summary
from foundation.telemetry.reporters._base import DEFAULT_MAX_TAG_SETS, Reporter, Sink

__all__ = ["PrometheusReporter", "prometheus_name"]

_PLURAL: Final = {
    "nanosecond": "nanoseconds",
    "microsecond": "microseconds",
    "millisecond": "milliseconds",
    "second": "seconds",
    "byte": "bytes",
    "kilobyte": "kilobytes",
    "megabyte": "megabytes",
    "gigabyte": "gigabytes",
    "kibibyte": "kibibytes",
    "mebibyte": "mebibytes",
    "gibibyte": "gibibytes",
}
MultiprocessMode: TypeAlias = Literal[
    "all",
    "liveall",
    "min",
    "livemin",
    "max",
    "livemax",
    "sum",
    "livesum",
    "mostrecent",
    "livemostrecent",
]
_NAME_RE: Final = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE: Final = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _sanitise(text: str) -> str:
    out = re.sub(r"[^a-zA-Z0-9_]", "_", text)
    return f"_{out}" if out[:1].isdigit() else out


def prometheus_name(metric: Metric) -> str:
    """The name a metric gets in Prometheus (before ``_total`` / ``_bucket`` suffixes)."""
    override = metric.reporter_options.get("prometheus_name")
    if override is not None:
        return str(override)
    name = _sanitise("_".join(metric.name))
    unit = _PLURAL.get(metric.unit or "", metric.unit and _sanitise(metric.unit))
    if unit and not name.endswith(f"_{unit}"):
        name = f"{name}_{unit}"
    return name


class PrometheusReporter(Reporter):
    """``PrometheusReporter(telemetry, metrics, registry=…)``.

    ``registry`` defaults to ``prometheus_client.REGISTRY``. A name already registered
    there raises :class:`ValidationError` and registers nothing. :meth:`close` detaches
    and unregisters the collectors.
    """

    _kind = "prometheus_reporter"

    def __init__(
        self,
        telemetry: Telemetry,
        metrics: Iterable[Metric],
        *,
        registry: CollectorRegistry | None = None,
        max_tag_sets: int = DEFAULT_MAX_TAG_SETS,
        handler_id: str | None = None,
        gauge_multiprocess_mode: MultiprocessMode = "mostrecent",
        sum_multiprocess_mode: MultiprocessMode = "livesum",
    ) -> None:
        self.registry = prometheus_client.REGISTRY if registry is None else registry
        self._gauge_mode = gauge_multiprocess_mode
        self._sum_mode = sum_multiprocess_mode
        self.collectors: list[Any] = []
        try:
            super().__init__(telemetry, metrics, max_tag_sets=max_tag_sets, handler_id=handler_id)
        except BaseException:
            self._unregister()
            raise

    def _sink(self, metric: Metric) -> Sink:
        name = prometheus_name(metric)
        if not _NAME_RE.match(name):
            raise ValidationError(
                f"{name!r} is not a valid Prometheus metric name",
                context={"metric": metric.dotted_name},
            )
        labels = [_sanitise(tag) for tag in metric.tags]
        if len(set(labels)) != len(labels) or not all(_LABEL_RE.match(label) for label in labels):
            raise ValidationError(
                f"the tags of {metric.dotted_name} do not make distinct Prometheus label names",
                context={"tags": list(metric.tags), "labels": labels},
            )
        documentation = metric.description or f"{metric.kind} of {metric.dotted_name}"
        common: dict[str, Any] = {"labelnames": labels, "registry": self.registry}
        collector: Any
        try:
            if isinstance(metric, Counter) or (isinstance(metric, Sum) and metric.monotonic):
                collector = prometheus_client.Counter(name, documentation, **common)
                method = "inc"
            elif isinstance(metric, Sum):
                collector = prometheus_client.Gauge(
                    name, documentation, multiprocess_mode=self._sum_mode, **common
                )
                method = "inc"
            elif isinstance(metric, LastValue):
                collector = prometheus_client.Gauge(
                    name, documentation, multiprocess_mode=self._gauge_mode, **common
                )
                method = "set"
            elif isinstance(metric, Distribution):
                collector = prometheus_client.Histogram(
                    name, documentation, buckets=list(metric.buckets), **common
                )
                method = "observe"
            elif isinstance(metric, Summary):
                collector = prometheus_client.Summary(name, documentation, **common)
                method = "observe"
            else:  # pragma: no cover - the five kinds are closed
                raise ValidationError(f"unknown metric kind {metric.kind!r}")
        except ValueError as exc:  # a duplicate name in the registry, a bad mode
            raise ValidationError(
                f"cannot register {name!r} for {metric.dotted_name}: {exc}",
                context={"metric": metric.dotted_name, "prometheus_name": name},
            ) from exc
        self.collectors.append(collector)

        if not labels:
            record = getattr(collector, method)

            def plain(value: float, labels: tuple[str, ...]) -> None:
                record(value)

            return plain

        # Bound children cached per tag-value set (the base caps how many there are):
        # collector.labels() costs more than the increment itself.
        children: dict[tuple[str, ...], Any] = {}

        def tagged(value: float, labels: tuple[str, ...]) -> None:
            record = children.get(labels)
            if record is None:
                record = children[labels] = getattr(collector.labels(*labels), method)
            record(value)

        return tagged

    def _unregister(self) -> None:
        for collector in self.collectors:
            with contextlib.suppress(KeyError):
                self.registry.unregister(collector)
        self.collectors = []

    def close(self) -> None:
        """Detach and unregister the collectors from the registry. Idempotent."""
        self.detach()
        self._unregister()
