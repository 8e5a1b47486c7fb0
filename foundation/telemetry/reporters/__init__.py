"""Reporters: metric definitions sent to OpenTelemetry, Prometheus or :mod:`logging`.

Each reporter lives in its own module and imports its backend only when that module is
imported, so ``import foundation.telemetry.reporters`` costs nothing and needs neither
extra installed::

    from foundation.telemetry.reporters import OTelReporter        # pip install foundation[otel]
    from foundation.telemetry.reporters import PrometheusReporter  # foundation[prometheus]
    from foundation.telemetry.reporters import LoggingReporter     # standard library only
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from foundation.telemetry.reporters._base import DEFAULT_MAX_TAG_SETS, MetricStats, Reporter

if TYPE_CHECKING:
    from foundation.telemetry.reporters.logs import LoggingReporter
    from foundation.telemetry.reporters.otel import OTelReporter
    from foundation.telemetry.reporters.prometheus import PrometheusReporter

__all__ = [
    "DEFAULT_MAX_TAG_SETS",
    "LoggingReporter",
    "MetricStats",
    "OTelReporter",
    "PrometheusReporter",
    "Reporter",
]

_LAZY = {
    "LoggingReporter": "foundation.telemetry.reporters.logs",
    "OTelReporter": "foundation.telemetry.reporters.otel",
    "PrometheusReporter": "foundation.telemetry.reporters.prometheus",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
