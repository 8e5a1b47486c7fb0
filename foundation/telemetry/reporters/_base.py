"""What every reporter shares: turning one event into values for each metric definition.

A reporter attaches one handler to the events its definitions name. For each event and
each definition it applies ``keep``/``drop``, reads the measurement, converts the unit,
reads the tags and hands ``(value, tag values)`` to a *sink*, the one backend call that
the subclass supplies. Everything that can go wrong with the *input* is skipped and
counted here and never reaches the caller or the backend:

- a measurement that is missing, or a measurement callable that raises: ``missing``;
- a value that is not a real number (``bool`` included), NaN or infinite, beyond a
  float's range, or a negative value for a monotonic sum: ``invalid``; a ``keep``/``drop``/
  ``tag_values`` callable that raises counts here too;
- a tag-value set beyond ``max_tag_sets`` distinct sets for the metric: ``overflow``.

Each kind of skip is logged once per metric (``foundation.telemetry.reporters``), then
only counted; :meth:`Reporter.stats` returns the counts. An exception from the *sink*
(the backend) is not caught: the core detaches the reporter's handler and emits
``foundation.telemetry.handler_failure``, as for any handler that raises.
"""

from __future__ import annotations

import decimal
import logging
import math
import numbers
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, TypeAlias

from foundation._text import is_utf8, shown
from foundation.errors import ValidationError
from foundation.telemetry._core import EventName, Telemetry
from foundation.telemetry.metrics import Metric, Sum

__all__ = ["DEFAULT_MAX_TAG_SETS", "MetricStats", "Reporter", "Sink"]

_log = logging.getLogger("foundation.telemetry.reporters")

DEFAULT_MAX_TAG_SETS: Final = 1000
"""Distinct tag-value sets one metric may record before new sets are dropped."""

Sink: TypeAlias = Callable[[float, tuple[str, ...]], None]
"""``sink(value, tag_values)``: record one value in the backend."""

_MISSING: Final = object()
_FLOAT_MAX: Final = int(sys.float_info.max)


@dataclass(frozen=True, slots=True)
class MetricStats:
    """What a reporter skipped for one metric, and how many tag-value sets it holds."""

    missing: int = 0
    invalid: int = 0
    overflow: int = 0
    series: int = 0


def _label(value: object) -> str:
    text = "" if value is None else value if type(value) is str else str(value)
    if not text.isascii() and not is_utf8(text):
        # A lone surrogate (a path decoded with surrogateescape, say): no exposition
        # format can carry it, and Prometheus would fail every scrape from then on.
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


class _Series:
    """One metric inside one reporter: the per-event work and the skip counters."""

    __slots__ = (
        "_lock",
        "arity",
        "drop",
        "invalid",
        "keep",
        "key",
        "limit",
        "metric",
        "missing",
        "nonnegative",
        "overflow",
        "scale",
        "seen",
        "sink",
        "tag_values",
        "tags",
        "value_fn",
        "warned",
    )

    def __init__(self, metric: Metric, sink: Sink, limit: int) -> None:
        self.metric = metric
        self.sink = sink
        self.limit = limit
        if not metric.needs_measurement:
            self.key: str | None = None
            self.value_fn: Callable[..., Any] | None = None
        elif isinstance(metric.measurement, str):
            self.key = metric.measurement
            self.value_fn = None
        else:
            self.key = None
            self.value_fn = metric.measurement
        self.arity = metric.measurement_arity
        self.scale = metric.scale
        self.tags = metric.tags
        self.tag_values = metric.tag_values
        self.keep = metric.keep
        self.drop = metric.drop
        self.nonnegative = isinstance(metric, Sum) and metric.monotonic
        self.seen: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()
        self.missing = 0
        self.invalid = 0
        self.overflow = 0
        self.warned: set[str] = set()

    def _skip(self, reason: str, detail: str) -> None:
        if reason == "missing":
            self.missing += 1
        elif reason == "invalid":
            self.invalid += 1
        else:
            self.overflow += 1
        if reason not in self.warned:
            self.warned.add(reason)
            _log.warning(
                "metric %s: %s; skipped (counted in the reporter's stats, logged once)",
                self.metric.dotted_name,
                detail,
                extra={"metric": self.metric.dotted_name, "skip_reason": reason},
            )

    def record(self, measurements: Mapping[str, Any], metadata: Mapping[str, Any]) -> None:
        """Record one event. Only the sink may raise."""
        if self.keep is not None or self.drop is not None:
            try:
                if self.keep is not None and not self.keep(metadata):
                    return
                if self.drop is not None and self.drop(metadata):
                    return
            except Exception as exc:
                self._skip("invalid", f"keep/drop raised {exc!r}")
                return

        if self.key is not None:
            value: Any = measurements.get(self.key, _MISSING)
            if value is _MISSING:
                self._skip("missing", f"measurement {self.key!r} missing from the event")
                return
        elif self.value_fn is not None:
            try:
                if self.arity == 2:
                    value = self.value_fn(measurements, metadata)
                else:
                    value = self.value_fn(measurements)
            except Exception as exc:
                self._skip("missing", f"the measurement callable raised {exc!r}")
                return
        else:  # a counter: one per event
            value = 1

        kind = type(value)
        if kind is not int and kind is not float:
            # numpy's float64, a Fraction, an int subclass: a plain float from here on.
            # (A Decimal is a number too, not a Real: what psycopg gives for a NUMERIC.)
            if kind is bool or not isinstance(value, numbers.Real | decimal.Decimal):
                self._skip("invalid", f"non-numeric measurement {shown(value, 40)}")
                return
            try:
                value = float(value)
            except (OverflowError, ValueError, TypeError):
                self._skip("invalid", f"measurement {shown(value, 40)} is beyond a float's range")
                return
            kind = float
        if kind is float and not math.isfinite(value):
            self._skip("invalid", f"measurement is {value}")
            return
        if kind is int and not -_FLOAT_MAX <= value <= _FLOAT_MAX:
            # No backend can hold it (a float overflows): the input's fault, not the sink's.
            self._skip("invalid", f"measurement {shown(value, 40)}… is beyond a float's range")
            return
        if self.scale != 1.0:
            value = value * self.scale
            if not math.isfinite(value):  # finite as given, not in the metric's unit
                self._skip("invalid", f"measurement is {value} in the metric's unit")
                return
        if self.nonnegative and value < 0:
            self._skip("invalid", f"negative value {value!r} for a monotonic sum")
            return

        if self.tags:
            try:
                source = metadata if self.tag_values is None else self.tag_values(metadata)
                labels = tuple([_label(source.get(tag)) for tag in self.tags])
            except Exception as exc:
                self._skip("invalid", f"reading the tags raised {exc!r}")
                return
            if labels not in self.seen and not self._admit(labels):
                return
        else:
            labels = ()
        self.sink(value, labels)

    def _admit(self, labels: tuple[str, ...]) -> bool:
        """Take a new tag-value set if the metric has room for it (the label guard)."""
        with self._lock:
            if labels in self.seen:
                return True
            if len(self.seen) >= self.limit:
                self._skip(
                    "overflow",
                    f"more than {self.limit} distinct tag-value sets (label explosion guard; "
                    f"first refused: {dict(zip(self.tags, labels, strict=True))!r})",
                )
                return False
            # Copy-on-write so that record() may test membership without the lock.
            self.seen = self.seen | {labels}
            return True

    def stats(self) -> MetricStats:
        return MetricStats(
            missing=self.missing,
            invalid=self.invalid,
            overflow=self.overflow,
            series=len(self.seen) if self.tags else 0,
        )


class Reporter:
    """Base of the reporters: validates definitions, attaches, dispatches, counts skips.

    Subclasses implement :meth:`_sink` (and may extend :meth:`detach`). A reporter is
    attached from construction until :meth:`detach` (or the end of a ``with`` block).
    """

    _kind: ClassVar[str] = "reporter"

    def __init__(
        self,
        telemetry: Telemetry,
        metrics: Iterable[Metric],
        *,
        max_tag_sets: int = DEFAULT_MAX_TAG_SETS,
        handler_id: str | None = None,
    ) -> None:
        if not isinstance(telemetry, Telemetry):
            raise ValidationError(
                "a reporter needs a foundation.telemetry.Telemetry instance",
                context={"telemetry": shown(telemetry)},
            )
        if isinstance(metrics, Metric):
            metrics = [metrics]
        try:
            defs = list(metrics)
        except TypeError:
            raise ValidationError(
                "metrics must be an iterable of metric definitions",
                context={"metrics": shown(metrics)},
            ) from None
        for metric in defs:
            if not isinstance(metric, Metric):
                raise ValidationError(
                    "metrics must be definitions from foundation.telemetry.metrics",
                    context={"metric": shown(metric)},
                )
        names = [m.dotted_name for m in defs]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValidationError(
                f"metric names must be unique within a reporter: {', '.join(repeated)}",
                context={"metrics": repeated},
            )
        if isinstance(max_tag_sets, bool) or not isinstance(max_tag_sets, int) or max_tag_sets < 1:
            raise ValidationError(
                "max_tag_sets must be a positive int", context={"max_tag_sets": shown(max_tag_sets)}
            )
        if handler_id is None:
            handler_id = f"foundation.telemetry.{self._kind}.{id(self):x}"
        self.telemetry = telemetry
        self.metrics: tuple[Metric, ...] = tuple(defs)
        self.max_tag_sets = max_tag_sets
        self.handler_id = handler_id
        self._series: list[_Series] = []
        by_event: dict[EventName, list[_Series]] = {}
        for metric in self.metrics:
            series = _Series(metric, self._sink(metric), max_tag_sets)
            self._series.append(series)
            by_event.setdefault(metric.event_name, []).append(series)
        self._by_event: dict[EventName, tuple[_Series, ...]] = {
            name: tuple(series) for name, series in by_event.items()
        }
        if self._by_event:
            telemetry.attach(handler_id, list(self._by_event), self._handle)

    # -- subclass hook ---------------------------------------------------------------

    def _sink(self, metric: Metric) -> Sink:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- the handler -----------------------------------------------------------------

    def _handle(
        self,
        event: EventName,
        measurements: Mapping[str, Any],
        metadata: Mapping[str, Any],
        config: Any,
    ) -> None:
        for series in self._by_event[event]:
            series.record(measurements, metadata)

    # -- lifecycle -------------------------------------------------------------------

    @property
    def attached(self) -> bool:
        """Whether the metrics handler is still attached (it is not after a backend failure)."""
        return any(info.id == self.handler_id for info in self.telemetry.list_handlers())

    def detach(self) -> None:
        """Stop reporting. Idempotent."""
        self.telemetry.detach(self.handler_id)

    def stats(self) -> dict[str, MetricStats]:
        """Skip counters and tag-set counts per metric name (dotted)."""
        return {s.metric.dotted_name: s.stats() for s in self._series}

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.detach()
