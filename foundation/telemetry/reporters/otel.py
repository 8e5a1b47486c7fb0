"""OpenTelemetry reporter: metric definitions as OTel instruments, spans as OTel spans.

Needs the ``otel`` extra (``pip install foundation[otel]``). Importing this module imports
``opentelemetry``; nothing else in Foundation does.

Metrics (on the given ``MeterProvider``, meter ``foundation``):

==================  ==============================  =================================
definition          instrument (default)            ``synchronous=True``
==================  ==============================  =================================
``counter``         ``ObservableCounter``           ``Counter`` (+1 per event)
``sum``             ``ObservableCounter``           ``Counter``
``sum``, not        ``ObservableUpDownCounter``     ``UpDownCounter``
monotonic
``last_value``      ``ObservableGauge``             ``Gauge``
``summary``         ``Histogram`` (SDK buckets)     the same
``distribution``    ``Histogram`` (the buckets)     the same
==================  ==============================  =================================

By default counters, sums and last values are added up in this process (a dict update
under a lock, well under a microsecond) and handed to the SDK through observable
instruments when a reader collects: the SDK's own synchronous ``add`` costs several
microseconds per call, more than the whole budget of an emit. The numbers exported are
the same (cumulative sums, last values). ``synchronous=True`` uses the synchronous
instruments instead, for views or exemplars that need each measurement. Histograms have
no observable form and are always synchronous.

The instrument's name is the metric's dotted name; tags become attributes; units are
given in UCUM (``ms``, ``s``, ``us``, ``ns``, ``By``…).

Spans: for every prefix in ``spans``, the ``start`` / ``stop`` / ``exception`` events that
:meth:`Telemetry.span` emits become one OTel span (name: the dotted prefix) on the given
``TracerProvider``. The three events are paired through their shared
``telemetry_span_context``; the OTel span is made current between start and stop, so
nested spans (and other instrumentation) become its children. Metadata becomes
attributes (the ``correlation_id`` included); an ``exception`` event records the
exception on the span and, for an error (not an exit such as cancellation), sets the
status to ``ERROR``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import Status, StatusCode

from foundation.errors import ValidationError
from foundation.telemetry._core import EventName, EventNameLike, Telemetry, normalise_event_name
from foundation.telemetry.metrics import Counter, Distribution, LastValue, Metric, Sum, Summary
from foundation.telemetry.reporters._base import DEFAULT_MAX_TAG_SETS, Reporter, Sink

__all__ = ["OTelReporter"]

# The OpenTelemetry API's rule for instrument names (its SDK raises a bare Exception).
_INSTRUMENT_NAME: Final = re.compile(r"[A-Za-z][A-Za-z0-9_.\-/]{0,254}")
_UCUM: Final = {
    "nanosecond": "ns",
    "microsecond": "us",
    "millisecond": "ms",
    "second": "s",
    "byte": "By",
    "kilobyte": "kBy",
    "megabyte": "MBy",
    "gigabyte": "GBy",
    "kibibyte": "KiBy",
    "mebibyte": "MiBy",
    "gibibyte": "GiBy",
}

# Spans started but never stopped (a start handler that raised, say) are ended and
# forgotten past this many, so a leak cannot grow without bound.
_MAX_OPEN_SPANS: Final = 10_000
_SKIPPED_ATTRIBUTES: Final = frozenset({"telemetry_span_context", "reason"})


def _attribute(value: object) -> Any:
    if isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
        return ".".join(value)  # an event name
    return str(value)[:1024]


def _attributes(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return {
        str(k): _attribute(v)
        for k, v in metadata.items()
        if k not in _SKIPPED_ATTRIBUTES and v is not None
    }


class _Observed:
    """Totals (or last values) per tag-value set, read by the SDK at collection time."""

    __slots__ = ("_attributes", "_lock", "_set_last", "_tags", "_values")

    def __init__(self, tags: tuple[str, ...], *, set_last: bool) -> None:
        self._tags = tags
        self._set_last = set_last
        self._values: dict[tuple[str, ...], float] = {}
        self._attributes: dict[tuple[str, ...], dict[str, str]] = {}
        self._lock = threading.Lock()

    def record(self, value: float, labels: tuple[str, ...]) -> None:
        values = self._values
        if self._set_last:
            values[labels] = value  # a single store: atomic
            return
        with self._lock:  # read-add-store must not lose a concurrent add
            values[labels] = values.get(labels, 0) + value

    def observe(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            items = list(self._values.items())
        out = []
        for labels, value in items:
            attributes = self._attributes.get(labels)
            if attributes is None:
                attributes = self._attributes[labels] = dict(zip(self._tags, labels, strict=True))
            out.append(Observation(value, attributes))
        return out


class OTelReporter(Reporter):
    """``OTelReporter(telemetry, metrics, meter_provider=…, tracer_provider=…, spans=[…])``.

    Without a provider, the global one of ``opentelemetry`` is used. ``spans`` lists the
    span prefixes to trace: a list of names (``["demo.checkout", ("demo", "pay")]``), or
    one name. ``metrics`` may be empty when only spans are wanted.
    """

    _kind = "otel_reporter"

    def __init__(
        self,
        telemetry: Telemetry,
        metrics: Iterable[Metric] = (),
        *,
        meter_provider: otel_metrics.MeterProvider | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        spans: Iterable[EventNameLike] = (),
        max_tag_sets: int = DEFAULT_MAX_TAG_SETS,
        handler_id: str | None = None,
        synchronous: bool = False,
    ) -> None:
        self.synchronous = bool(synchronous)
        provider = meter_provider or otel_metrics.get_meter_provider()
        self._meter = provider.get_meter("foundation")
        if isinstance(spans, str) or (isinstance(spans, tuple) and spans):
            spans = [spans]  # one name in either spelling; pass a list for several
        self._span_prefixes: tuple[EventName, ...] = tuple(
            dict.fromkeys(normalise_event_name(p) for p in spans)
        )
        self._tracer = (
            (tracer_provider or trace.get_tracer_provider()).get_tracer("foundation")
            if self._span_prefixes
            else None
        )
        self._open: dict[object, tuple[Any, Any, int | None]] = {}
        metrics = list(metrics)
        for metric in metrics:  # all checked before any instrument is made
            if not isinstance(metric, Metric) or _INSTRUMENT_NAME.fullmatch(metric.dotted_name):
                continue  # (the base class says what is wrong with a non-metric)
            raise ValidationError(
                f"OpenTelemetry cannot name an instrument {metric.dotted_name[:80]!r}: a "
                "letter, then at most 254 ASCII letters, digits, '_', '.', '-' or '/'",
                context={"metric": metric.dotted_name[:300]},
            )
        super().__init__(telemetry, metrics, max_tag_sets=max_tag_sets, handler_id=handler_id)
        self.span_handler_id = f"{self.handler_id}.spans"
        if self._span_prefixes:
            names: list[EventNameLike] = [
                (*prefix, end)
                for prefix in self._span_prefixes
                for end in ("start", "stop", "exception")
            ]
            telemetry.attach(self.span_handler_id, names, self._on_span)

    # -- metrics ---------------------------------------------------------------------

    def _sink(self, metric: Metric) -> Sink:
        name = metric.dotted_name
        unit = _UCUM.get(metric.unit or "", metric.unit or "")
        description = metric.description or ""
        meter = self._meter
        monotonic = isinstance(metric, Counter) or (isinstance(metric, Sum) and metric.monotonic)
        if not self.synchronous and isinstance(metric, Counter | Sum | LastValue):
            observed = _Observed(metric.tags, set_last=isinstance(metric, LastValue))
            if monotonic:
                create: Any = meter.create_observable_counter
            elif isinstance(metric, Sum):
                create = meter.create_observable_up_down_counter
            else:
                create = meter.create_observable_gauge
            create(name, callbacks=[observed.observe], unit=unit, description=description)
            return observed.record

        instrument: Any
        if monotonic:
            instrument = meter.create_counter(name, unit=unit, description=description)
            record = instrument.add
        elif isinstance(metric, Sum):
            instrument = meter.create_up_down_counter(name, unit=unit, description=description)
            record = instrument.add
        elif isinstance(metric, LastValue):
            instrument = meter.create_gauge(name, unit=unit, description=description)
            record = instrument.set
        elif isinstance(metric, Distribution):
            instrument = meter.create_histogram(
                name,
                unit=unit,
                description=description,
                explicit_bucket_boundaries_advisory=list(metric.buckets),
            )
            record = instrument.record
        elif isinstance(metric, Summary):
            instrument = meter.create_histogram(name, unit=unit, description=description)
            record = instrument.record
        else:  # pragma: no cover - the five kinds are closed
            raise ValidationError(f"unknown metric kind {metric.kind!r}", context={"metric": name})

        tags = metric.tags
        if not tags:

            def plain(value: float, labels: tuple[str, ...]) -> None:
                record(value)

            return plain

        # Attribute dicts built once per tag-value set (the base caps how many there are).
        cache: dict[tuple[str, ...], dict[str, str]] = {}

        def tagged(value: float, labels: tuple[str, ...]) -> None:
            attributes = cache.get(labels)
            if attributes is None:
                attributes = cache[labels] = dict(zip(tags, labels, strict=True))
            record(value, attributes)

        return tagged

    # -- spans -----------------------------------------------------------------------

    def _on_span(
        self,
        event: EventName,
        measurements: Mapping[str, Any],
        metadata: Mapping[str, Any],
        config: Any,
    ) -> None:
        span_context = metadata.get("telemetry_span_context")
        if span_context is None or self._tracer is None:
            return
        phase = event[-1]
        if phase == "start":
            start_time = measurements.get("system_time")
            if not isinstance(start_time, int):
                start_time = None
            span = self._tracer.start_span(
                ".".join(event[:-1]), start_time=start_time, attributes=_attributes(metadata)
            )
            token = otel_context.attach(trace.set_span_in_context(span))
            if len(self._open) >= _MAX_OPEN_SPANS:
                oldest = next(iter(self._open))
                stale = self._open.pop(oldest, None)
                if stale is not None:
                    stale[0].end()
            self._open[span_context] = (span, token, start_time)
            return

        entry = self._open.pop(span_context, None)
        if entry is None:
            return
        span, token, start_time = entry
        span.set_attributes(_attributes(metadata))
        if phase == "exception":
            reason = metadata.get("reason")
            if isinstance(reason, BaseException):
                span.record_exception(reason)
            if metadata.get("kind") == "error":
                span.set_status(Status(StatusCode.ERROR, metadata.get("exception_type")))
        duration = measurements.get("duration")
        end_time = (
            start_time + duration if start_time is not None and isinstance(duration, int) else None
        )
        span.end(end_time=end_time)
        otel_context.detach(token)

    def detach(self) -> None:
        """Stop reporting metrics and spans; spans still open are ended. Idempotent."""
        super().detach()
        self.telemetry.detach(self.span_handler_id)
        while self._open:
            _, (span, _token, _start) = self._open.popitem()
            span.end()
