"""A reporter that writes each metric value to :mod:`logging`, with structured fields.

For services that run neither OpenTelemetry nor Prometheus. Every recorded value is one
log record whose ``extra`` fields a structured formatter (JSON logging) can pick up:

``metric``        the metric name, dotted (``foundation.events.store.duration``)
``metric_kind``   ``counter``, ``sum``, ``last_value``, ``summary`` or ``distribution``
``metric_value``  the value after unit conversion (``1`` for a counter)
``metric_unit``   the unit after conversion, or ``None``
``metric_tags``   a dict of tag name to tag value
``event_name``    the event, dotted

No aggregation happens here: a counter logs ``1`` per event, as the console reporter of
``telemetry_metrics`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

from foundation._text import shown
from foundation.errors import ValidationError
from foundation.telemetry._core import Telemetry
from foundation.telemetry.metrics import Metric
from foundation.telemetry.reporters._base import DEFAULT_MAX_TAG_SETS, Reporter, Sink

__all__ = ["LoggingReporter"]


class LoggingReporter(Reporter):
    """``LoggingReporter(telemetry, metrics, logger=..., level=logging.INFO)``.

    ``logger`` is a :class:`logging.Logger` or a name (default
    ``"foundation.telemetry.metrics"``).
    """

    _kind = "logging_reporter"

    def __init__(
        self,
        telemetry: Telemetry,
        metrics: Iterable[Metric],
        *,
        logger: logging.Logger | str | None = None,
        level: int = logging.INFO,
        max_tag_sets: int = DEFAULT_MAX_TAG_SETS,
        handler_id: str | None = None,
    ) -> None:
        if logger is None:
            logger = "foundation.telemetry.metrics"
        if isinstance(logger, str):
            logger = logging.getLogger(logger)
        if not isinstance(logger, logging.Logger):
            raise ValidationError(
                "logger must be a logging.Logger or a logger name",
                context={"logger": shown(logger)},
            )
        if isinstance(level, bool) or not isinstance(level, int):
            raise ValidationError("level must be a logging level (int)", context={"level": level})
        self.logger = logger
        self.level = level
        super().__init__(telemetry, metrics, max_tag_sets=max_tag_sets, handler_id=handler_id)

    def _sink(self, metric: Metric) -> Sink:
        logger = self.logger
        level = self.level
        name = metric.dotted_name
        kind = metric.kind
        unit = metric.unit
        tags = metric.tags
        event = ".".join(metric.event_name)
        suffix = f" {unit}" if unit else ""

        def sink(value: float, labels: tuple[str, ...]) -> None:
            if not logger.isEnabledFor(level):
                return
            extra: dict[str, Any] = {
                "metric": name,
                "metric_kind": kind,
                "metric_value": value,
                "metric_unit": unit,
                "metric_tags": dict(zip(tags, labels, strict=True)),
                "event_name": event,
            }
            logger.log(level, "%s %s=%s%s", kind, name, value, suffix, extra=extra)

        return sink
