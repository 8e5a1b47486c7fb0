"""Every telemetry event Foundation emits, and a default set of metrics over them.

:data:`CATALOGUE` lists each event: its name, measurements, metadata and when it is
emitted. A test (``tests/test_telemetry_catalogue.py``) scans ``foundation/**/*.py`` for
event names and fails, naming what to add or remove, whenever the code and this list
disagree; ``docs/telemetry.md`` holds :func:`markdown_table` and is checked the same way.

Every event's metadata also carries ``correlation_id`` when one is set for the running
context (see :func:`foundation.correlation`); the core adds it.

Turning Foundation's own metrics on is one line with any reporter::

    from foundation.telemetry.catalogue import default_metrics
    PrometheusReporter(foundation.telemetry.default(), default_metrics())

:data:`PENDING` is for events :func:`default_metrics` covers before the component that
emits them has landed (each entry's ``component`` names the package expected to emit it).
The drift test asks for an entry to move into :data:`CATALOGUE` once the component emits
it, and fails if the component lands emitting other names. It is empty now: every
component is in the tree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from foundation.telemetry import metrics
from foundation.telemetry._core import EventName, normalise_event_name

__all__ = [
    "CATALOGUE",
    "PENDING",
    "EventSpec",
    "default_metrics",
    "emitted_names",
    "lookup",
    "markdown_table",
]


@dataclass(frozen=True, slots=True)
class EventSpec:
    """One event Foundation emits.

    ``kind="span"`` means ``name`` is a span prefix: the code emits ``name.start``,
    ``name.stop`` and ``name.exception`` through :meth:`Telemetry.span`.
    ``measurements`` and ``metadata`` map each key to what it holds.
    """

    name: EventName
    measurements: Mapping[str, str]
    metadata: Mapping[str, str]
    when: str
    component: str
    kind: Literal["event", "span"] = "event"

    @property
    def dotted_name(self) -> str:
        return ".".join(self.name)

    def event_names(self) -> tuple[EventName, ...]:
        """The names actually emitted (three for a span)."""
        if self.kind == "span":
            return tuple((*self.name, end) for end in ("start", "stop", "exception"))
        return (self.name,)


def _spec(
    name: str,
    component: str,
    when: str,
    measurements: dict[str, str],
    metadata: dict[str, str],
    kind: Literal["event", "span"] = "event",
) -> EventSpec:
    return EventSpec(
        name=normalise_event_name(name),
        measurements=MappingProxyType(measurements),
        metadata=MappingProxyType(metadata),
        when=when,
        component=component,
        kind=kind,
    )


_NS = "nanoseconds (the native unit)"

CATALOGUE: Final[tuple[EventSpec, ...]] = (
    # -- config -------------------------------------------------------------------------
    _spec(
        "foundation.config.set",
        "config",
        "after `config.set` wrote a runtime value (sync and async)",
        {"duration": _NS},
        {"node": "node id", "key": "config key", "revision": "the row's new revision"},
    ),
    _spec(
        "foundation.config.delete",
        "config",
        "after `config.delete` removed a runtime value",
        {"duration": _NS},
        {"node": "node id", "key": "config key", "revision": "the row's revision"},
    ),
    _spec(
        "foundation.config.reload",
        "config",
        "after `config.reload` re-read file, environment and database",
        {"duration": _NS},
        {"node": "node id", "changed": "number of keys whose value changed"},
    ),
    _spec(
        "foundation.config.changed",
        "config",
        "for each key changed by another node (change feed) or by a reload, not by a local set",
        {"count": "always 1"},
        {"node": "node id", "key": "config key", "source": "`remote` or `reload`"},
    ),
    # -- events -------------------------------------------------------------------------
    _spec(
        "foundation.events.store",
        "events",
        "after a `store` or `store_many` returned its records",
        {
            "duration": _NS,
            "count": "events the call stored or, for an id already recorded, returned (an "
            "idempotent replay counts; `foundation.config.changed` events, appended by the "
            "database, count under `foundation.config.set`)",
        },
        {"node": "node id"},
    ),
    _spec(
        "foundation.events.get",
        "events",
        "after a query on the log returned",
        {"duration": _NS, "count": "events returned"},
        {"node": "node id"},
    ),
    _spec(
        "foundation.events.subscription.failed",
        "events",
        "when a subscription stopped `failed`: its handler failed past its retries, its "
        "lease was taken over, or it met a row it cannot read",
        {
            "count": "always 1",
            "position": "log position of the failing event (absent for a lease loss)",
        },
        {"name": "subscription name", "error": "exception class name, or `lease_lost`"},
    ),
    _spec(
        "foundation.events.subscription.lag",
        "events",
        "after a subscription handled a batch of events, and when it has caught up",
        {
            "count": "events handled in the batch",
            "lag": "positions between the subscription's checkpoint and the log's head "
            "(0 once it read all of its events: then told once, with `count` 0)",
        },
        {"name": "subscription name", "node": "the node running it"},
    ),
    # -- change feed --------------------------------------------------------------------
    _spec(
        "foundation.feed.connected",
        "database",
        "when the PostgreSQL LISTEN connection is (re)established and resynced",
        {"count": "always 1"},
        {"backend": "`postgresql`"},
    ),
    _spec(
        "foundation.feed.disconnected",
        "database",
        "when the PostgreSQL LISTEN connection is lost (it reconnects with backoff)",
        {"count": "always 1"},
        {"backend": "`postgresql`", "error": "exception class name"},
    ),
    # -- telemetry ----------------------------------------------------------------------
    _spec(
        "foundation.telemetry.handler_failure",
        "telemetry",
        "after a telemetry handler (a reporter included) raised and was detached",
        {"count": "always 1"},
        {
            "handler_id": "the detached handler's id",
            "event_name": "the event it failed on (tuple)",
            "exception": "repr of the exception",
            "exception_type": "exception class name",
        },
    ),
    # -- circuit breaker ----------------------------------------------------------------
    _spec(
        "foundation.circuit_breaker.state_change",
        "circuit_breaker",
        "on every breaker transition this node makes or sees (closed, open, half_open)",
        {"count": "always 1", "failures": "failures counted in the new state"},
        {
            "name": "breaker name",
            "from": "previous state",
            "to": "new state",
            "scope": "`shared` or `local`",
            "source": "`local` (this node made it) or `remote` (seen on the change feed)",
        },
    ),
    _spec(
        "foundation.circuit_breaker.rejected",
        "circuit_breaker",
        "when an open (or half-open, probe taken) breaker refused a call",
        {"count": "always 1"},
        {
            "name": "breaker name",
            "state": "the breaker's state",
            "retry_after": "ms to the next probe; `None` when forced open",
        },
    ),
    _spec(
        "foundation.circuit_breaker.timeout",
        "circuit_breaker",
        "when a call through a breaker ran past its timeout (counted as a failure)",
        {"count": "always 1", "duration_ms": "elapsed ms"},
        {"name": "breaker name"},
    ),
    _spec(
        "foundation.circuit_breaker.failure",
        "circuit_breaker",
        "when a call through a breaker failed",
        {"count": "always 1"},
        {"name": "breaker name"},
    ),
    _spec(
        "foundation.circuit_breaker.storage_error",
        "circuit_breaker",
        "when a shared breaker could not record an outcome in the database",
        {"count": "always 1"},
        {"name": "breaker name", "error": "error code"},
    ),
    # -- rate limiter -------------------------------------------------------------------
    _spec(
        "foundation.rate_limiter.allow",
        "rate_limiter",
        "when a limiter admitted a call",
        {"count": "always 1", "remaining": "calls left in the window"},
        {"key": "limiter key", "algorithm": "limiter algorithm", "scope": "`shared` or `local`"},
    ),
    _spec(
        "foundation.rate_limiter.deny",
        "rate_limiter",
        "when a limiter refused a call",
        {"count": "always 1", "retry_after": "ms until a call may succeed"},
        {"key": "limiter key", "algorithm": "limiter algorithm", "scope": "`shared` or `local`"},
    ),
    _spec(
        "foundation.rate_limiter.storage_error",
        "rate_limiter",
        "when a shared limiter could not reach the database (then fails open or closed)",
        {"count": "always 1"},
        {
            "key": "limiter key",
            "error": "error code",
            "policy": "`open` or `closed`",
            "node": "node id",
        },
    ),
    # -- service registry ---------------------------------------------------------------
    _spec(
        "foundation.registry.register",
        "service_registry",
        "after this node registered a name (not a `local=True` one: none of the "
        "registry's events is about those)",
        {"duration": _NS},
        {"node": "node id", "name": "registered name", "epoch": "fencing epoch"},
    ),
    _spec(
        "foundation.registry.unregister",
        "service_registry",
        "after this node unregistered a name",
        {"duration": _NS},
        {"node": "node id", "name": "registered name"},
    ),
    _spec(
        "foundation.registry.expired",
        "service_registry",
        "on each node, once per registration, when it sees a name or group member die "
        "(its owner's lease expired, or the name's own ttl passed); from the heartbeat, "
        "as `lease_lost` and `heartbeat_failed`, handed to a thread of its own (sync "
        "face): a slow handler never delays a renewal",
        {"count": "always 1"},
        {
            "name": "registered name (the group's, for a member)",
            "node": "observing node id",
            "owner": "the owner node",
            "member_id": "the member (group members only)",
        },
    ),
    _spec(
        "foundation.registry.lease_lost",
        "service_registry",
        "when this node finds its own lease expired and re-registers what it can, or "
        "finds a name it holds removed or taken by another node (kept is then empty)",
        {"lost": "names taken by other nodes", "kept": "names re-registered"},
        {"node": "node id", "lost": "sorted lost names", "kept": "sorted kept names"},
    ),
    _spec(
        "foundation.registry.conflict",
        "service_registry",
        "when a register met a live owner (`already_registered`)",
        {"count": "always 1"},
        {
            "node": "node id",
            "name": "registered name",
            "owner": "owner node (when known)",
            "address": "owner's address (when known)",
            "epoch": "the owner's epoch (when known)",
            "local": "true when the holder is a local entry of this process (no address)",
        },
    ),
    _spec(
        "foundation.registry.heartbeat_failed",
        "service_registry",
        "when a lease heartbeat failed (retried on the next tick)",
        {"count": "always 1"},
        {"node": "node id", "error": "error code"},
    ),
    # -- poller -------------------------------------------------------------------------
    _spec(
        "foundation.poller.memory",
        "telemetry.poller",
        "each poll of `process_memory()`",
        {"rss": "bytes resident", "peak_rss": "bytes, peak resident", "vms": "bytes virtual"},
        {},
    ),
    _spec(
        "foundation.poller.event_log",
        "telemetry.poller",
        "each poll of `event_log(size=…, tail_position=…)`",
        {"size": "events in the log", "tail_position": "position of the last event"},
        {},
    ),
    _spec(
        "foundation.poller.subscription_lag",
        "telemetry.poller",
        "each poll of `subscription_lag(…)`, once per subscription",
        {"lag": "events between the subscription's checkpoint and the log's tail"},
        {"subscription": "subscription name"},
    ),
    _spec(
        "foundation.poller.circuit_breakers",
        "telemetry.poller",
        "each poll of `open_breakers(…)`",
        {"open": "breakers open now", "total": "breakers known (when given)"},
        {},
    ),
)

PENDING: Final[tuple[EventSpec, ...]] = ()
"""Events :func:`default_metrics` covers for components still being written.

Each one's ``component`` is the package (``foundation/<component>/``) expected to emit it.
"""

_BY_NAME: Final = {spec.name: spec for spec in (*CATALOGUE, *PENDING)}


def lookup(name: str | tuple[str, ...]) -> EventSpec | None:
    """The catalogue entry for an event name (or span prefix), or ``None``."""
    return _BY_NAME.get(normalise_event_name(name))


def emitted_names(specs: Iterable[EventSpec] = CATALOGUE) -> list[str]:
    """Every dotted event name the entries emit, spans expanded."""
    return [".".join(n) for spec in specs for n in spec.event_names()]


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _pairs(mapping: Mapping[str, str]) -> str:
    return "<br>".join(f"`{k}`: {_cell(v)}" for k, v in mapping.items()) or "—"


def markdown_table(specs: Iterable[EventSpec] = CATALOGUE) -> str:
    """The catalogue as a Markdown table (what ``docs/telemetry.md`` shows)."""
    lines = [
        "| event | measurements | metadata | emitted |",
        "|---|---|---|---|",
    ]
    for spec in specs:
        name = f"`{spec.dotted_name}`" + (" (span)" if spec.kind == "span" else "")
        lines.append(
            f"| {name} | {_pairs(spec.measurements)} | {_pairs(spec.metadata)} "
            f"| {_cell(spec.when)} |"
        )
    return "\n".join(lines)


def _made_here(metadata: Mapping[str, object]) -> bool:
    return metadata.get("source") == "local"


def default_metrics(
    *, duration_unit: str = "millisecond", key_tags: bool = True
) -> list[metrics.Metric]:
    """Metric definitions for Foundation's own events, for any reporter.

    Store and query latency, config writes and changes, subscription failures and lag,
    feed disconnects, handler failures, memory, event-log size, open breakers, breaker
    transitions and rejections, limiter decisions and registry expiries. Durations are
    converted from native nanoseconds to ``duration_unit``. ``key_tags=False`` drops
    the tags whose values are user keys (config key, limiter key), for those who want no
    per-key series at all; otherwise the reporter's ``max_tag_sets`` guard bounds them.
    """
    unit = ("native", duration_unit)
    latency_buckets = [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 1000]
    if duration_unit != "millisecond":
        scale = metrics._unit_scale(("millisecond", duration_unit))[1]
        latency_buckets = [b * scale for b in latency_buckets]
    key_tag_names: list[str] = ["key"] if key_tags else []
    return [
        # event log
        metrics.distribution(
            "foundation.events.store.duration",
            unit=unit,
            buckets=latency_buckets,
            description="Time to commit a batch of events to the log",
        ),
        metrics.sum(
            "foundation.events.store.count",
            description="Events stored by store and store_many (idempotent replays included)",
        ),
        metrics.distribution(
            "foundation.events.get.duration",
            unit=unit,
            buckets=latency_buckets,
            description="Time to run a query on the event log",
        ),
        metrics.counter(
            "foundation.events.subscription.failed.count",
            tags=["name"],
            description="Subscriptions stopped by a failing handler",
        ),
        metrics.last_value(
            "foundation.events.subscription.lag.lag",
            tags=["name"],
            description="Events a subscription is behind the log's head",
        ),
        metrics.sum(
            "foundation.events.subscription.lag.count",
            tags=["name"],
            description="Events handled by a subscription",
        ),
        metrics.last_value(
            "foundation.poller.subscription_lag.lag",
            tags=["subscription"],
            description="Events a subscription is behind (from the poller's probe)",
        ),
        # No foundation.poller.event_log.size: fdn.poller() reports the tail position only
        # (counting a large log every poll is a full scan). A poller built with
        # event_log(size=…) adds metrics.last_value("foundation.poller.event_log.size").
        metrics.last_value(
            "foundation.poller.event_log.tail_position", description="Position of the last event"
        ),
        # config
        metrics.distribution(
            "foundation.config.set.duration",
            unit=unit,
            buckets=latency_buckets,
            description="Time to write a runtime config value",
        ),
        metrics.counter(
            "foundation.config.changed.count",
            tags=["source", *key_tag_names],
            description="Config values changed by another node or a reload",
        ),
        # infrastructure
        metrics.counter(
            "foundation.feed.disconnected.count", description="Change-feed connections lost"
        ),
        metrics.counter(
            "foundation.telemetry.handler_failure.count",
            tags=["handler_id"],
            description="Telemetry handlers detached after raising",
        ),
        metrics.last_value(
            "foundation.poller.memory.rss", unit="byte", description="Resident memory"
        ),
        metrics.last_value(
            "foundation.poller.memory.peak_rss", unit="byte", description="Peak resident memory"
        ),
        metrics.last_value(
            "foundation.poller.memory.vms", unit="byte", description="Virtual memory size"
        ),
        # circuit breakers
        metrics.last_value(
            "foundation.poller.circuit_breakers.open", description="Circuit breakers open now"
        ),
        metrics.last_value(
            "foundation.poller.circuit_breakers.total",
            description="Circuit breakers with a stored state",
        ),
        metrics.counter(
            "foundation.circuit_breaker.state_change.count",
            tags=["name", "to"],
            # Every node reports the transitions it sees; counting only the node that
            # made one counts each once across the cluster.
            keep=_made_here,
            description="Circuit breaker transitions, by new state",
        ),
        metrics.counter(
            "foundation.circuit_breaker.rejected.count",
            tags=["name"],
            description="Calls refused by an open breaker",
        ),
        metrics.counter(
            "foundation.circuit_breaker.failure.count",
            tags=["name"],
            description="Calls through a breaker that failed (timeouts included)",
        ),
        # rate limiters
        metrics.counter(
            "foundation.rate_limiter.deny.count",
            tags=key_tag_names,
            description="Calls refused by a rate limiter",
        ),
        metrics.counter(
            "foundation.rate_limiter.allow.count",
            tags=key_tag_names,
            description="Calls admitted by a rate limiter",
        ),
        metrics.counter(
            "foundation.rate_limiter.storage_error.count",
            description="Limiter decisions made without the database",
        ),
        # service registry
        metrics.counter(
            "foundation.registry.expired.count",
            description="Registry entries removed by lease expiry (seen by this node)",
        ),
        metrics.sum(
            "foundation.registry.lease_lost.lost",
            description="Names this node lost when its lease expired",
        ),
        metrics.counter(
            "foundation.registry.conflict.count",
            description="Registrations refused because a live owner held the name",
        ),
        metrics.counter(
            "foundation.registry.heartbeat_failed.count",
            description="Lease heartbeats that failed",
        ),
        metrics.distribution(
            "foundation.registry.register.duration",
            unit=unit,
            buckets=latency_buckets,
            description="Time to register a name",
        ),
    ]
