"""Periodic measurements emitted as telemetry events, after Erlang's ``telemetry_poller``.

::

    from foundation import telemetry
    from foundation.telemetry.poller import Poller, event_log, process_memory

    poller = Poller(
        telemetry.default(),
        measurements=[process_memory(), event_log(size=count_events, tail_position=tail)],
        interval_ms=5000,
    )
    poller.start()
    ...
    poller.stop()

A measurement is either

- a :class:`Measurement`: an event name and a callable returning the measurements
  mapping (or ``None`` to emit nothing this round); the poller emits the event, or
- any callable taking no argument, which emits whatever events it likes itself (as
  ``{M, F, A}`` in ``telemetry_poller``).

A measurement that raises is logged and removed from the poller, as ``telemetry_poller``
does, so that one broken probe cannot flood the log every interval; the others go on.

Built-in measurements (each emits the event named beside it; see the catalogue):

================================  ====================================================
:func:`process_memory`            ``foundation.poller.memory``: ``rss``, ``peak_rss``,
                                  ``vms`` in bytes (from ``/proc/self/status``; only
                                  ``peak_rss`` elsewhere, from ``resource``)
:func:`event_log`                 ``foundation.poller.event_log``: ``size``,
                                  ``tail_position`` from the callables given
:func:`subscription_lag`          ``foundation.poller.subscription_lag``: ``lag`` per
                                  subscription (metadata ``subscription``)
:func:`open_breakers`             ``foundation.poller.circuit_breakers``: ``open``
                                  (and ``total`` when known)
================================  ====================================================

The event-log, subscription and breaker probes take callables so that the components
plug in without this module importing them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final, TypeAlias

from foundation._text import shown
from foundation.errors import ValidationError
from foundation.telemetry._core import EventName, EventNameLike, Telemetry, normalise_event_name

__all__ = [
    "CIRCUIT_BREAKERS_EVENT",
    "EVENT_LOG_EVENT",
    "MEMORY_EVENT",
    "SUBSCRIPTION_LAG_EVENT",
    "AsyncPoller",
    "Measurement",
    "Poller",
    "event_log",
    "measurement",
    "open_breakers",
    "process_memory",
    "read_process_memory",
    "subscription_lag",
]

_log = logging.getLogger("foundation.telemetry.poller")
_MAX_INTERVAL_S: Final = 86_400.0  # a longer wait overflows Event.wait (inf) or never polls

MEMORY_EVENT: Final[EventName] = ("foundation", "poller", "memory")
EVENT_LOG_EVENT: Final[EventName] = ("foundation", "poller", "event_log")
SUBSCRIPTION_LAG_EVENT: Final[EventName] = ("foundation", "poller", "subscription_lag")
CIRCUIT_BREAKERS_EVENT: Final[EventName] = ("foundation", "poller", "circuit_breakers")

DEFAULT_INTERVAL_MS: Final = 5000


@dataclass(frozen=True, slots=True)
class Measurement:
    """A probe: ``fn()`` returns the measurements of ``event_name`` (or ``None``: skip).

    ``fn`` may also return a list of ``(measurements, metadata)`` pairs to emit the
    event several times in one round (one per subscription, say). ``metadata`` is added
    to every emit.
    """

    event_name: EventName
    fn: Callable[[], Any]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""

    def __post_init__(self) -> None:
        if not callable(self.fn):
            raise ValidationError(
                "a poller measurement needs a callable", context={"fn": shown(self.fn)}
            )

    def run(self, telemetry: Telemetry) -> None:
        result = self.fn()
        if result is None:
            return
        if isinstance(result, Mapping):
            telemetry.execute(self.event_name, result, self.metadata)
            return
        for measurements, metadata in result:
            telemetry.execute(self.event_name, measurements, {**self.metadata, **metadata})


Probe: TypeAlias = Measurement | Callable[[], Any]


def measurement(
    event_name: EventNameLike,
    fn: Callable[[], Any],
    metadata: Mapping[str, Any] | None = None,
) -> Measurement:
    """A :class:`Measurement` from a name in either spelling."""
    return Measurement(normalise_event_name(event_name), fn, dict(metadata or {}))


# -- built-in probes -------------------------------------------------------------------


def read_process_memory() -> dict[str, int]:
    """This process's memory in bytes: ``rss``, ``peak_rss``, ``vms`` where known.

    Linux: ``/proc/self/status`` (no third-party package). Elsewhere on Unix: the peak
    resident size from ``resource.getrusage`` (bytes on macOS, KiB elsewhere). Returns an
    empty dict where neither is available (Windows without psutil).
    """
    fields = {"VmRSS:": "rss", "VmHWM:": "peak_rss", "VmSize:": "vms"}
    try:
        with open("/proc/self/status", "rb") as f:
            out: dict[str, int] = {}
            for raw in f:
                parts = raw.split()
                if parts and (key := fields.get(parts[0].decode())) is not None:
                    out[key] = int(parts[1]) * 1024  # "kB" in /proc is KiB
            if out:
                return out
    except OSError:
        pass
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return {}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"peak_rss": peak if sys.platform == "darwin" else peak * 1024}


def process_memory() -> Measurement:
    """Emit ``foundation.poller.memory`` with :func:`read_process_memory`."""
    return Measurement(MEMORY_EVENT, read_process_memory, name="process_memory")


def event_log(
    *,
    size: Callable[[], int | None] | None = None,
    tail_position: Callable[[], int | None] | None = None,
) -> Measurement:
    """Emit ``foundation.poller.event_log`` with the event count and the last position."""
    probes = {"size": size, "tail_position": tail_position}
    for what, fn in probes.items():
        if fn is not None and not callable(fn):
            raise ValidationError(f"event_log {what} must be callable", context={what: shown(fn)})
    if size is None and tail_position is None:
        raise ValidationError("event_log needs size, tail_position, or both")

    def read() -> dict[str, int] | None:
        out = {}
        for what, fn in probes.items():
            if fn is not None and (value := fn()) is not None:
                out[what] = value
        return out or None

    return Measurement(EVENT_LOG_EVENT, read, name="event_log")


def subscription_lag(lags: Callable[[], Mapping[str, int]]) -> Measurement:
    """Emit ``foundation.poller.subscription_lag`` once per subscription.

    ``lags()`` returns ``{subscription name: events behind the log's tail}``.
    """
    if not callable(lags):
        raise ValidationError("subscription_lag needs a callable", context={"lags": shown(lags)})

    def read() -> list[tuple[dict[str, int], dict[str, str]]]:
        return [({"lag": lag}, {"subscription": name}) for name, lag in lags().items()]

    return Measurement(SUBSCRIPTION_LAG_EVENT, read, name="subscription_lag")


def open_breakers(
    open_count: Callable[[], int], total: Callable[[], int] | None = None
) -> Measurement:
    """Emit ``foundation.poller.circuit_breakers`` with ``open`` (and ``total``)."""
    if not callable(open_count) or (total is not None and not callable(total)):
        raise ValidationError("open_breakers needs callables")

    def read() -> dict[str, int]:
        out = {"open": open_count()}
        if total is not None:
            out["total"] = total()
        return out

    return Measurement(CIRCUIT_BREAKERS_EVENT, read, name="open_breakers")


# -- the pollers -----------------------------------------------------------------------


def _interval_seconds(interval_ms: float | timedelta) -> float:
    if isinstance(interval_ms, timedelta):
        seconds = interval_ms.total_seconds()
    elif isinstance(interval_ms, int | float) and not isinstance(interval_ms, bool):
        seconds = interval_ms / 1000
    else:
        raise ValidationError(
            "interval_ms must be a number of milliseconds or a timedelta",
            context={"interval_ms": shown(interval_ms)},
        )
    if not 0 < seconds <= _MAX_INTERVAL_S:
        raise ValidationError(
            "interval_ms must be positive and at most a day",
            context={"interval_ms": shown(interval_ms)},
        )
    return seconds


class _PollerBase:
    def __init__(
        self,
        telemetry: Telemetry,
        measurements: Iterable[Probe] | None,
        interval_ms: float | timedelta,
        name: str,
    ) -> None:
        if not isinstance(telemetry, Telemetry):
            raise ValidationError(
                "a poller needs a foundation.telemetry.Telemetry instance",
                context={"telemetry": shown(telemetry)},
            )
        probes: list[Probe] = [process_memory()] if measurements is None else list(measurements)
        for probe in probes:
            if not callable(probe) and not isinstance(probe, Measurement):
                raise ValidationError(
                    "a poller measurement is a Measurement or a callable",
                    context={"measurement": shown(probe)},
                )
        self.telemetry = telemetry
        self.interval = _interval_seconds(interval_ms)
        self.name = name
        self._probes: list[Probe] = probes

    @property
    def measurements(self) -> list[Probe]:
        """The probes still polled (a failed one is removed)."""
        return list(self._probes)

    def poll(self) -> None:
        """Run every probe once, now, in the calling thread."""
        for probe in list(self._probes):
            try:
                if isinstance(probe, Measurement):
                    probe.run(self.telemetry)
                else:
                    probe()
            except Exception:
                label = probe.name if isinstance(probe, Measurement) and probe.name else probe
                _log.exception("poller %s: measurement %r failed and was removed", self.name, label)
                with contextlib.suppress(ValueError):
                    self._probes.remove(probe)


class Poller(_PollerBase):
    """``Poller(telemetry, measurements=[...], interval_ms=5000)``; :meth:`start` / :meth:`stop`.

    Polls in a daemon thread: once right after :meth:`start`, then every interval.
    ``measurements=None`` polls :func:`process_memory` only. Also a context manager.
    """

    def __init__(
        self,
        telemetry: Telemetry,
        measurements: Iterable[Probe] | None = None,
        *,
        interval_ms: float | timedelta = DEFAULT_INTERVAL_MS,
        name: str = "foundation-poller",
    ) -> None:
        super().__init__(telemetry, measurements, interval_ms, name)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start polling; a no-op when already running."""
        with self._lock:
            if self.running:
                return
            # An event of its own: a thread a stop() gave up waiting for (a probe stuck in
            # an outage) still ends once its poll returns, beside this one.
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._run, args=(self._stop,), name=self.name, daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop polling and wait for the thread (up to ``timeout`` seconds). Idempotent."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._stop.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self.poll()
            stop.wait(self.interval)

    def __enter__(self) -> Poller:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class AsyncPoller(_PollerBase):
    """The asyncio twin of :class:`Poller`: a task on the running loop.

    Probes are plain callables run on the loop, so they must be quick (cache reads);
    ``await poller.stop()`` cancels the task and waits for it.
    """

    def __init__(
        self,
        telemetry: Telemetry,
        measurements: Iterable[Probe] | None = None,
        *,
        interval_ms: float | timedelta = DEFAULT_INTERVAL_MS,
        name: str = "foundation-poller",
    ) -> None:
        super().__init__(telemetry, measurements, interval_ms, name)
        self._task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start polling on the running event loop; a no-op when already running."""
        if self.running:
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        """Cancel the polling task and wait for it. Idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self) -> None:
        while True:
            self.poll()
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> AsyncPoller:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
