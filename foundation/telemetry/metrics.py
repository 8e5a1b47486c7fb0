"""Metric definitions over telemetry events, after Elixir's ``telemetry_metrics``.

A definition says *what* to aggregate; a reporter (:mod:`foundation.telemetry.reporters`)
says *where*. Nothing here imports a metrics backend::

    from foundation.telemetry import metrics

    defs = [
        metrics.counter("foundation.events.store.count", tags=["node"]),
        metrics.distribution(
            "foundation.events.store.duration",
            unit=("native", "millisecond"),
            buckets=[1, 5, 10, 50, 100],
        ),
        metrics.last_value("foundation.poller.memory.rss", unit="byte"),
    ]

As in ``telemetry_metrics``, the metric name is the event name followed by the
measurement: ``"foundation.events.store.duration"`` reads the ``duration`` measurement
of the ``foundation.events.store`` event. Pass ``event_name=`` and ``measurement=``
to name the metric freely, and a callable as ``measurement`` to compute the value from
the measurements (``fn(measurements)``) or from both mappings
(``fn(measurements, metadata)``).

The five kinds and what each reporter makes of them:

==================  ===========================  ======================  ===================
kind                meaning                      OpenTelemetry           Prometheus
==================  ===========================  ======================  ===================
``counter``         number of events             Counter                 Counter
``sum``             sum of the measurement       Counter / UpDownCounter Counter / Gauge
``last_value``      latest measurement           Gauge                   Gauge
``summary``         count and sum (statistics)   Histogram               Summary
``distribution``    histogram over ``buckets``   Histogram (buckets)     Histogram (buckets)
==================  ===========================  ======================  ===================

Durations that Foundation emits are integer nanoseconds, the ``native`` time unit;
``unit=("native", "millisecond")`` converts them, as ``{:native, :millisecond}`` does
in Elixir. Byte sizes convert the same way (``("byte", "megabyte")``).
"""

from __future__ import annotations

import inspect
import itertools
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, ClassVar, Final, Literal, TypeAlias

from foundation._text import shown
from foundation.errors import ValidationError
from foundation.telemetry._core import EventName, EventNameLike, normalise_event_name

_FLOAT_MAX = sys.float_info.max  # buckets are floats: past it, not a bound
__all__ = [
    "DEFAULT_BUCKETS",
    "Counter",
    "Distribution",
    "LastValue",
    "Measurement",
    "Metric",
    "MetricKind",
    "Sum",
    "Summary",
    "counter",
    "distribution",
    "last_value",
    "sum",
    "summary",
]

MetricKind: TypeAlias = Literal["counter", "sum", "last_value", "summary", "distribution"]

Measurement: TypeAlias = (
    str | Callable[[Mapping[str, Any]], Any] | Callable[[Mapping[str, Any], Mapping[str, Any]], Any]
)
"""A measurement key, ``fn(measurements)`` or ``fn(measurements, metadata)``."""

DEFAULT_BUCKETS: Final[tuple[float, ...]] = (
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1000.0,
    2500.0,
    5000.0,
    10000.0,
)
"""Upper bounds for a distribution without ``buckets`` (milliseconds in mind)."""

# Units that convert into one another: a family and each unit's size in its base unit.
# "native" is the unit of Foundation's durations: nanoseconds from perf_counter_ns().
_TIME: Final = {
    "native": 1.0,
    "nanosecond": 1.0,
    "microsecond": 1e3,
    "millisecond": 1e6,
    "second": 1e9,
}
_BYTES: Final = {
    "byte": 1.0,
    "kilobyte": 1e3,
    "megabyte": 1e6,
    "gigabyte": 1e9,
    "kibibyte": 1024.0,
    "mebibyte": 1024.0**2,
    "gibibyte": 1024.0**3,
}
_UNIT_FAMILIES: Final = (_TIME, _BYTES)


def _invalid(message: str, **context: Any) -> ValidationError:
    return ValidationError(message, context={k: shown(v) for k, v in context.items()})


def _unit_scale(unit: object) -> tuple[str | None, float]:
    """``(reported unit, factor)`` for a ``unit`` argument: a name or a ``(from, to)`` pair."""
    if unit is None:
        return None, 1.0
    if isinstance(unit, str):
        if not unit:
            raise _invalid("a metric unit must be a non-empty string", unit=unit)
        # "native" alone is reported as what it is.
        return ("nanosecond" if unit == "native" else unit), 1.0
    if isinstance(unit, tuple) and len(unit) == 2 and all(isinstance(u, str) for u in unit):
        source, target = unit
        for family in _UNIT_FAMILIES:
            if source in family and target in family:
                if target == "native":
                    target = "nanosecond"
                return target, family[source] / family[target]
        raise _invalid(
            f"cannot convert unit {source!r} to {target!r}; known units: "
            + ", ".join([*_TIME, *_BYTES]),
            unit=unit,
        )
    raise _invalid("a metric unit is a name or a (from, to) pair of names", unit=unit)


def _arity(fn: Callable[..., Any]) -> int:
    """How many positional arguments a measurement/tag callable takes (1 or 2)."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: assume one mapping
        return 1
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    if any(p.kind is p.VAR_POSITIONAL for p in params) or len(positional) >= 2:
        return 2
    return 1


@dataclass(frozen=True, slots=True)
class Metric:
    """A metric definition; build one with :func:`counter`, :func:`sum` and the others.

    Immutable and validated on construction. Reporters read these fields:

    ``name``
        the metric's name as a tuple of segments (``("foundation", "events", "store",
        "duration")``); ``dotted_name`` joins them.
    ``event_name``
        the event it listens to.
    ``measurement``
        the key in the event's measurements, or a callable (see :data:`Measurement`).
    ``tags``
        metadata keys whose values label the series.
    ``tag_values``
        ``fn(metadata) -> mapping`` the tags are read from instead of the metadata.
    ``keep`` / ``drop``
        ``fn(metadata) -> bool``: record only events ``keep`` accepts / ``drop`` refuses.
    ``unit``
        the reported unit (after conversion), or ``None``.
    ``scale``
        the factor applied to every value (``1e-6`` for native → millisecond).
    ``description``
        help text for the backend.
    ``reporter_options``
        free-form options for one reporter, read-only.
    """

    kind: ClassVar[MetricKind]

    name: EventName
    event_name: EventName
    measurement: Measurement
    tags: tuple[str, ...] = ()
    tag_values: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None
    keep: Callable[[Mapping[str, Any]], bool] | None = None
    drop: Callable[[Mapping[str, Any]], bool] | None = None
    unit: str | None = None
    scale: float = 1.0
    description: str | None = None
    reporter_options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    measurement_arity: int = 1

    @property
    def dotted_name(self) -> str:
        return ".".join(self.name)

    @property
    def needs_measurement(self) -> bool:
        """False for a counter, which counts events whatever their measurements."""
        return True


@dataclass(frozen=True, slots=True)
class Counter(Metric):
    """Counts the events (the measurement is not read, as in ``telemetry_metrics``)."""

    kind: ClassVar[MetricKind] = "counter"

    @property
    def needs_measurement(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Sum(Metric):
    """Adds up the measurement. ``monotonic`` sums refuse negative values (skipped)."""

    kind: ClassVar[MetricKind] = "sum"
    monotonic: bool = True


@dataclass(frozen=True, slots=True)
class LastValue(Metric):
    """Keeps the latest measurement."""

    kind: ClassVar[MetricKind] = "last_value"


@dataclass(frozen=True, slots=True)
class Summary(Metric):
    """Count and sum of the measurement (min/max/percentiles where the backend has them)."""

    kind: ClassVar[MetricKind] = "summary"


@dataclass(frozen=True, slots=True)
class Distribution(Metric):
    """A histogram of the measurement over ``buckets`` (sorted upper bounds)."""

    kind: ClassVar[MetricKind] = "distribution"
    buckets: tuple[float, ...] = DEFAULT_BUCKETS


def _callable_or_none(value: object, what: str, metric: str) -> Any:
    if value is not None and not callable(value):
        raise _invalid(f"{what} of metric {metric!r} must be callable", **{what: value})
    return value


def _build(
    cls: type[Metric],
    name: EventNameLike,
    *,
    event_name: EventNameLike | None,
    measurement: Measurement | None,
    tags: Iterable[str] | None,
    tag_values: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None,
    keep: Callable[[Mapping[str, Any]], bool] | None,
    drop: Callable[[Mapping[str, Any]], bool] | None,
    unit: str | tuple[str, str] | None,
    description: str | None,
    reporter_options: Mapping[str, Any] | None,
    **extra: Any,
) -> Any:
    metric_name = normalise_event_name(name)
    dotted = ".".join(metric_name)
    if event_name is None:
        if len(metric_name) < 2:
            raise _invalid(
                f"metric {dotted!r} needs event_name=: a one-segment name has no event part",
                name=name,
            )
        event = metric_name[:-1]
    else:
        event = normalise_event_name(event_name)
    if measurement is None:
        measurement = metric_name[-1]
    if isinstance(measurement, str):
        if not measurement:
            raise _invalid(f"the measurement of metric {dotted!r} is empty", measurement="")
        arity = 1
    elif callable(measurement):
        arity = _arity(measurement)
    else:
        raise _invalid(
            f"the measurement of metric {dotted!r} must be a key or a callable",
            measurement=measurement,
        )
    if tags is None:
        tag_tuple: tuple[str, ...] = ()
    elif isinstance(tags, str):
        raise _invalid(f"tags of metric {dotted!r} must be a list of keys, not a string", tags=tags)
    else:
        tag_tuple = tuple(tags)
        if not all(isinstance(t, str) and t for t in tag_tuple):
            raise _invalid(f"tags of metric {dotted!r} must be non-empty strings", tags=tags)
        if len(set(tag_tuple)) != len(tag_tuple):
            raise _invalid(f"tags of metric {dotted!r} repeat a key", tags=tags)
    _callable_or_none(tag_values, "tag_values", dotted)
    _callable_or_none(keep, "keep", dotted)
    _callable_or_none(drop, "drop", dotted)
    reported_unit, scale = _unit_scale(unit)
    if description is not None and not isinstance(description, str):
        raise _invalid(
            f"description of metric {dotted!r} must be a string", description=description
        )
    if reporter_options is None:
        options: Mapping[str, Any] = MappingProxyType({})
    elif isinstance(reporter_options, Mapping):
        options = MappingProxyType(dict(reporter_options))
    else:
        raise _invalid(
            f"reporter_options of metric {dotted!r} must be a mapping", options=reporter_options
        )
    return cls(
        name=metric_name,
        event_name=event,
        measurement=measurement,
        tags=tag_tuple,
        tag_values=tag_values,
        keep=keep,
        drop=drop,
        unit=reported_unit,
        scale=scale,
        description=description,
        reporter_options=options,
        measurement_arity=arity,
        **extra,
    )


def counter(
    name: EventNameLike,
    *,
    event_name: EventNameLike | None = None,
    measurement: Measurement | None = None,
    tags: Iterable[str] | None = None,
    tag_values: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    keep: Callable[[Mapping[str, Any]], bool] | None = None,
    drop: Callable[[Mapping[str, Any]], bool] | None = None,
    unit: str | tuple[str, str] | None = None,
    description: str | None = None,
    reporter_options: Mapping[str, Any] | None = None,
) -> Counter:
    """A count of the events named by ``name`` minus its last segment (or ``event_name``)."""
    if isinstance(unit, tuple):
        # It records 1 per event: a conversion (native -> millisecond) would scale the 1.
        raise _invalid("a counter counts events: its unit cannot be a conversion", unit=unit)
    result: Counter = _build(
        Counter,
        name,
        event_name=event_name,
        measurement=measurement,
        tags=tags,
        tag_values=tag_values,
        keep=keep,
        drop=drop,
        unit=unit,
        description=description,
        reporter_options=reporter_options,
    )
    return result


def sum(  # the telemetry_metrics name; shadows the builtin in this module only
    name: EventNameLike,
    *,
    event_name: EventNameLike | None = None,
    measurement: Measurement | None = None,
    tags: Iterable[str] | None = None,
    tag_values: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    keep: Callable[[Mapping[str, Any]], bool] | None = None,
    drop: Callable[[Mapping[str, Any]], bool] | None = None,
    unit: str | tuple[str, str] | None = None,
    description: str | None = None,
    reporter_options: Mapping[str, Any] | None = None,
    monotonic: bool = True,
) -> Sum:
    """The running sum of a measurement; ``monotonic=False`` allows negative values."""
    if not isinstance(monotonic, bool):
        raise _invalid("monotonic must be a bool", monotonic=monotonic)
    result: Sum = _build(
        Sum,
        name,
        event_name=event_name,
        measurement=measurement,
        tags=tags,
        tag_values=tag_values,
        keep=keep,
        drop=drop,
        unit=unit,
        description=description,
        reporter_options=reporter_options,
        monotonic=monotonic,
    )
    return result


def last_value(
    name: EventNameLike,
    *,
    event_name: EventNameLike | None = None,
    measurement: Measurement | None = None,
    tags: Iterable[str] | None = None,
    tag_values: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    keep: Callable[[Mapping[str, Any]], bool] | None = None,
    drop: Callable[[Mapping[str, Any]], bool] | None = None,
    unit: str | tuple[str, str] | None = None,
    description: str | None = None,
    reporter_options: Mapping[str, Any] | None = None,
) -> LastValue:
    """The latest value of a measurement (a gauge)."""
    result: LastValue = _build(
        LastValue,
        name,
        event_name=event_name,
        measurement=measurement,
        tags=tags,
        tag_values=tag_values,
        keep=keep,
        drop=drop,
        unit=unit,
        description=description,
        reporter_options=reporter_options,
    )
    return result


def summary(
    name: EventNameLike,
    *,
    event_name: EventNameLike | None = None,
    measurement: Measurement | None = None,
    tags: Iterable[str] | None = None,
    tag_values: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    keep: Callable[[Mapping[str, Any]], bool] | None = None,
    drop: Callable[[Mapping[str, Any]], bool] | None = None,
    unit: str | tuple[str, str] | None = None,
    description: str | None = None,
    reporter_options: Mapping[str, Any] | None = None,
) -> Summary:
    """Statistics (count, sum) of a measurement."""
    result: Summary = _build(
        Summary,
        name,
        event_name=event_name,
        measurement=measurement,
        tags=tags,
        tag_values=tag_values,
        keep=keep,
        drop=drop,
        unit=unit,
        description=description,
        reporter_options=reporter_options,
    )
    return result


def distribution(
    name: EventNameLike,
    *,
    event_name: EventNameLike | None = None,
    measurement: Measurement | None = None,
    tags: Iterable[str] | None = None,
    tag_values: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    keep: Callable[[Mapping[str, Any]], bool] | None = None,
    drop: Callable[[Mapping[str, Any]], bool] | None = None,
    unit: str | tuple[str, str] | None = None,
    description: str | None = None,
    reporter_options: Mapping[str, Any] | None = None,
    buckets: Sequence[float] | None = None,
) -> Distribution:
    """A histogram of a measurement over ``buckets``: strictly increasing finite bounds."""
    if buckets is None:
        bounds = DEFAULT_BUCKETS
    else:
        if isinstance(buckets, str | bytes) or not isinstance(buckets, Sequence):
            raise _invalid("buckets must be a sequence of numbers", buckets=buckets)
        if not buckets:
            raise _invalid("buckets must not be empty", buckets=buckets)
        if not all(
            # Compared, not math.isfinite(): an int past a float's range overflows that.
            isinstance(b, int | float)
            and not isinstance(b, bool)
            and -_FLOAT_MAX <= b <= _FLOAT_MAX
            for b in buckets
        ):
            raise _invalid("buckets must be finite numbers", buckets=buckets)
        bounds = tuple(float(b) for b in buckets)
        if any(a >= b for a, b in itertools.pairwise(bounds)):
            raise _invalid("buckets must be strictly increasing", buckets=buckets)
    result: Distribution = _build(
        Distribution,
        name,
        event_name=event_name,
        measurement=measurement,
        tags=tags,
        tag_values=tag_values,
        keep=keep,
        drop=drop,
        unit=unit,
        description=description,
        reporter_options=reporter_options,
        buckets=bounds,
    )
    return result
