"""In-process telemetry: named events with measurements and metadata, after ``:telemetry``.

Library code emits events; applications attach handlers to the ones they care about::

    from foundation import telemetry

    def log_set(event, measurements, metadata, config):
        config.info("%s took %d ns", metadata["key"], measurements["duration"])

    telemetry.attach("log-config-set", "foundation.config.set", log_set, logger)

    with telemetry.span("checkout", {"order": 7}) as meta:
        meta["result"] = "ok"   # goes into checkout.stop's metadata

The module-level functions act on one process-wide :class:`Telemetry`, returned by
:func:`default`. An event nobody is attached to costs one dict lookup, so emitting is
always allowed, even on hot paths.
"""

from __future__ import annotations

from typing import Final

from foundation.telemetry._core import (
    HANDLER_FAILURE_EVENT,
    EventName,
    EventNameLike,
    Handler,
    HandlerInfo,
    Telemetry,
    normalise_event_name,
)
from foundation.telemetry._span import Span, SpanContext
from foundation.telemetry.catalogue import default_metrics
from foundation.telemetry.poller import AsyncPoller, Poller

__all__ = [
    "HANDLER_FAILURE_EVENT",
    "AsyncPoller",
    "EventName",
    "EventNameLike",
    "Handler",
    "HandlerInfo",
    "Poller",
    "Span",
    "SpanContext",
    "Telemetry",
    "attach",
    "default",
    "default_metrics",
    "detach",
    "execute",
    "list_handlers",
    "normalise_event_name",
    "span",
]

_default: Final = Telemetry()


def default() -> Telemetry:
    """The process-wide :class:`Telemetry` that the module-level functions act on."""
    return _default


# Bound methods rather than wrapper functions: a wrapper would add a Python call to
# every emit, and execute() is meant to cost one dict lookup when nobody listens.
execute: Final = _default.execute
attach: Final = _default.attach
detach: Final = _default.detach
list_handlers: Final = _default.list_handlers
span: Final = _default.span
