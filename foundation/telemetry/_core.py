"""The handler table and dispatch of :class:`Telemetry`, after Erlang's ``:telemetry``.

An event name is a dotted string (``"foundation.config.set"``) or a tuple of strings
(``("foundation", "config", "set")``); both spell the same event, and handlers always
receive the tuple. Segments are non-empty and, so that the two spellings map one to one,
contain no dot.

Emitting an event nobody listens to must be almost free, because library code emits
on hot paths whether or not anyone is listening. So :meth:`Telemetry.execute` does one
dict lookup on the name exactly as the caller passed it, before any normalisation, in a
table keyed by both spellings. Attach and detach rebuild that table and swap it in
whole (copy-on-write), so ``execute`` never takes a lock and never sees a half-built
table.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from foundation._text import shown
from foundation.correlation import current_correlation_id
from foundation.errors import ValidationError
from foundation.telemetry._span import Span, exception_type_name

__all__ = [
    "HANDLER_FAILURE_EVENT",
    "EventName",
    "EventNameLike",
    "Handler",
    "HandlerInfo",
    "Telemetry",
    "normalise_event_name",
]

EventName: TypeAlias = tuple[str, ...]
"""The canonical form of an event name, as handlers receive it."""

EventNameLike: TypeAlias = str | tuple[str, ...]
"""What callers may pass as an event name: dotted string or tuple of segments."""

Handler: TypeAlias = Callable[[EventName, Mapping[str, Any], Mapping[str, Any], Any], object]
"""``handler(event_name, measurements, metadata, config)``; the return value is ignored."""

HANDLER_FAILURE_EVENT: Final[EventName] = ("foundation", "telemetry", "handler_failure")
"""Emitted (measurements ``{"count": 1}``) after a handler raised and was detached."""

_log = logging.getLogger("foundation.telemetry")

# Set while this thread dispatches a handler-failure event (the recursion guard).
# Per thread because dispatch is synchronous: a report runs entirely on one thread.
_reporting = threading.local()

# One table row per handler attached to a name. The normalised name is stored in each
# row so that the hot path needs nothing but the row tuple.
# (name, handler, config, the attachment itself)
_Row: TypeAlias = tuple[EventName, Handler, Any, "HandlerInfo"]

# Names that were validated but have no handler map to the empty tuple, so that a
# repeated emit of an unheard event stays a single lookup. The cap keeps a program that
# builds names dynamically from growing the table without bound; past it, such names
# are simply validated on every call.
_KNOWN_NAMES_LIMIT: Final = 4096


@dataclass(frozen=True, slots=True)
class HandlerInfo:
    """One attached handler, as :meth:`Telemetry.list_handlers` reports it."""

    id: str
    event_names: tuple[EventName, ...]
    handler: Handler
    config: Any


def _invalid_name(name: object, why: str) -> ValidationError:
    return ValidationError(
        f"invalid telemetry event name {shown(name)}: {why}",
        context={"event_name": shown(name)},
    )


def normalise_event_name(name: object) -> EventName:
    """Return ``name`` as a tuple of segments, or raise :class:`ValidationError`.

    ``"a.b"`` and ``("a", "b")`` both give ``("a", "b")``. Rejected: anything but a
    ``str`` or a ``tuple`` of ``str``, the empty name, empty segments (``"a..b"``), and
    tuple segments containing a dot (``("a.b",)`` would collide with ``("a", "b")``).
    """
    if isinstance(name, str):
        parts = tuple(name.split("."))
    elif isinstance(name, tuple):
        for part in name:
            if not isinstance(part, str):
                raise _invalid_name(name, "every segment must be a string")
            if "." in part:
                raise _invalid_name(name, "a tuple segment must not contain a dot")
        parts = name
    else:
        raise _invalid_name(name, "expected a dotted string or a tuple of strings")
    if not parts:
        raise _invalid_name(name, "the name is empty")
    if not all(parts):
        raise _invalid_name(name, "segments must be non-empty")
    return parts


class Telemetry:
    """A registry of event handlers and the means to emit events to them.

    Most code uses the process-wide instance through the module-level functions of
    :mod:`foundation.telemetry`; separate instances are useful for isolation in tests.

    Handlers run synchronously in the emitting thread, in attachment order. They
    receive the caller's ``measurements`` and ``metadata`` mappings (shared between
    handlers, so handlers must not mutate them). A handler that raises an
    :class:`Exception` is detached, logged, and reported as a
    :data:`HANDLER_FAILURE_EVENT`; the emitter never sees the error.
    """

    __slots__ = ("_handlers", "_lock", "_table")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Both dicts are replaced, never mutated in place, once published; readers
        # take a reference and iterate it without locking. The one exception is the
        # "known name, no handlers" cache entries that execute() adds to _table, which
        # are a single atomic dict store and are dropped on every rebuild.
        self._handlers: dict[str, HandlerInfo] = {}
        self._table: dict[object, tuple[_Row, ...]] = {}

    # -- emitting ---------------------------------------------------------------------

    def execute(
        self,
        event_name: EventNameLike,
        measurements: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Emit ``event_name`` to every handler attached to it.

        ``measurements`` are the numbers (durations, counts, sizes); ``metadata`` the
        context (keys, ids). If there is a handler, ``metadata`` lacks a
        ``"correlation_id"`` and one is set for the running context, it is added to a
        copy. Raises :class:`ValidationError` for an invalid name.
        """
        table = self._table
        try:
            rows = table.get(event_name)
        except TypeError:  # an unhashable name (a list, say) is never valid
            raise _invalid_name(
                event_name, "expected a dotted string or a tuple of strings"
            ) from None
        # Checked with no handler attached too: a call that works until a metric is
        # attached, and raises from then on, would fail in production only. The exact-type
        # test first: an ABC isinstance check costs several times more.
        if (
            measurements is not None
            and type(measurements) is not dict
            and not isinstance(measurements, Mapping)
        ):
            raise ValidationError(
                "telemetry measurements must be a mapping",
                context={"measurements": shown(measurements)},
            )
        if (
            metadata is not None
            and type(metadata) is not dict
            and not isinstance(metadata, Mapping)
        ):
            raise ValidationError(
                "telemetry metadata must be a mapping", context={"metadata": shown(metadata)}
            )
        if not rows:
            if rows is None:
                self._remember_unheard(table, event_name)
            return

        if measurements is None:
            measurements = {}
        if metadata is None:
            metadata = {}
        if "correlation_id" not in metadata:
            correlation_id = current_correlation_id()
            if correlation_id is not None:
                metadata = {**metadata, "correlation_id": correlation_id}

        for name, handler, config, info in rows:
            try:
                result: Any = handler(name, measurements, metadata, config)
                if result is not None and _unrun(result):
                    if not inspect.isasyncgen(result):  # (one never started warns not)
                        result.close()  # its body never ran (nor will: no warning either)
                    raise TypeError(
                        f"it returned a {type(result).__name__}, which nothing here runs"
                    )
            except Exception as exc:  # BaseException (KeyboardInterrupt...) propagates
                self._handler_failed(info, name, exc)

    def _remember_unheard(self, table: dict[object, tuple[_Row, ...]], event_name: object) -> None:
        """Validate a name with no handlers and cache it so the next emit is one lookup."""
        normalise_event_name(event_name)
        # Stored into the table this execute() read, not self._table: if an attach
        # swapped in a new table meanwhile, the store lands in the discarded one and
        # cannot hide the new handler.
        if len(table) < _KNOWN_NAMES_LIMIT:
            table[event_name] = ()

    def _handler_failed(self, info: HandlerInfo, event_name: EventName, exc: Exception) -> None:
        """Detach a handler that raised, log it, and report it as an event: once, by the
        call that detached it. Another thread's call that failed meanwhile, or one that
        ends after the id was attached anew (a reporter healed), detaches nothing more."""
        handler_id = info.id
        with self._lock:
            if self._handlers.get(handler_id) is not info:
                return
            handlers = dict(self._handlers)
            del handlers[handler_id]
            self._publish(handlers)
        _log.exception(
            "telemetry handler %r failed on event %s and was detached",
            handler_id,
            ".".join(event_name),
            exc_info=exc,
        )
        # A failure that happens while a failure is being reported (a failure handler
        # that raises, or emits an event whose handler raises) is only logged:
        # reporting it would dispatch the failure event again from within its own
        # dispatch, and could do so without end.
        if getattr(_reporting, "active", False):
            return
        _reporting.active = True
        try:
            self.execute(
                HANDLER_FAILURE_EVENT,
                {"count": 1},
                {
                    "handler_id": handler_id,
                    "event_name": event_name,
                    "exception": shown(exc),
                    "exception_type": exception_type_name(exc),
                },
            )
        finally:
            _reporting.active = False

    def span(self, prefix: EventNameLike, metadata: Mapping[str, Any] | None = None) -> Span:
        """Time a block or a function as ``prefix.start`` / ``.stop`` / ``.exception``.

        Use as ``with``/``async with`` (binding a mutable dict whose contents go into
        the stop metadata) or as a decorator on a sync or async function. See
        :class:`foundation.telemetry.Span`.
        """
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ValidationError(
                "telemetry span metadata must be a mapping", context={"metadata": shown(metadata)}
            )
        return Span(self.execute, normalise_event_name(prefix), metadata)

    # -- attaching --------------------------------------------------------------------

    def attach(
        self,
        handler_id: str,
        event_names: EventNameLike | list[EventNameLike],
        handler: Handler,
        config: Any = None,
    ) -> None:
        """Attach ``handler`` under the unique ``handler_id`` to one name or a list of names.

        ``config`` is passed to every call of the handler as its fourth argument.
        Raises :class:`ValidationError` for a non-string or empty id, an id already
        attached (``context["handler_id"]``), an invalid or empty list of names, or a
        handler that is not callable or is async (it would never run).
        """
        if not isinstance(handler_id, str) or not handler_id:
            raise ValidationError(
                "a telemetry handler id must be a non-empty string",
                context={"handler_id": shown(handler_id)},
            )
        if not callable(handler):
            raise ValidationError(
                "a telemetry handler must be callable",
                context={"handler_id": handler_id, "handler": shown(handler)},
            )
        if _is_async(handler):
            raise ValidationError(
                "a telemetry handler must be a plain function, not async nor a generator: "
                "handlers are called in the thread that emits, which awaits and iterates "
                "nothing, so its body would never run (hand the event to a queue or "
                "loop.call_soon_threadsafe from a plain handler)",
                context={"handler_id": handler_id, "handler": shown(handler, 100)},
            )
        if isinstance(event_names, list):
            if not event_names:
                raise ValidationError(
                    "a telemetry handler needs at least one event name",
                    context={"handler_id": handler_id},
                )
            raw_names: list[object] = list(event_names)
        else:
            raw_names = [event_names]
        # dict.fromkeys drops repeats but keeps the order they were given in.
        names = tuple(dict.fromkeys(normalise_event_name(n) for n in raw_names))
        info = HandlerInfo(id=handler_id, event_names=names, handler=handler, config=config)

        with self._lock:
            if handler_id in self._handlers:
                raise ValidationError(
                    f"a telemetry handler with id {handler_id!r} is already attached",
                    context={"handler_id": handler_id},
                )
            self._publish({**self._handlers, handler_id: info})

    def detach(self, handler_id: str) -> bool:
        """Detach the handler ``handler_id``; ``False`` if no such handler was attached."""
        if not isinstance(handler_id, str):
            raise ValidationError(
                "a telemetry handler id must be a string", context={"handler_id": shown(handler_id)}
            )
        with self._lock:
            if handler_id not in self._handlers:
                return False
            handlers = dict(self._handlers)
            del handlers[handler_id]
            self._publish(handlers)
            return True

    def list_handlers(self, prefix: EventNameLike | None = None) -> list[HandlerInfo]:
        """The attached handlers, in attachment order.

        With ``prefix`` (a name, string or tuple), only handlers attached to an event
        whose name starts with those whole segments: ``"foundation.config"`` matches
        ``foundation.config.set`` and ``foundation.config`` itself, but not
        ``foundation.configx.set``. ``None`` or ``()`` lists every handler.
        """
        handlers = self._handlers  # a published snapshot, safe to iterate unlocked
        if prefix is None or prefix == ():
            return list(handlers.values())
        segments = normalise_event_name(prefix)
        size = len(segments)
        return [
            info
            for info in handlers.values()
            if any(name[:size] == segments for name in info.event_names)
        ]

    def _publish(self, handlers: dict[str, HandlerInfo]) -> None:
        """Rebuild the lookup table from ``handlers`` and swap both in. Caller holds the lock."""
        table: dict[object, tuple[_Row, ...]] = {}
        for info in handlers.values():
            for name in info.event_names:
                row: _Row = (name, info.handler, info.config, info)
                rows = (*table.get(name, ()), row)
                table[name] = rows
                table[".".join(name)] = rows
        # Handlers before table: a reader of the new table may look a handler up by id.
        self._handlers = handlers
        self._table = table


def _is_async(handler: Any) -> bool:
    """An ``async def`` or generator function or method (``functools.partial`` of one
    too), or an object whose ``__call__`` is one: calling it runs none of its body."""
    call = (
        None
        if inspect.isroutine(handler)
        else inspect.getattr_static(type(handler), "__call__", None)
    )
    return any(_unrun_function(f) for f in (handler, call) if f is not None)


def _unrun_function(fn: Any) -> bool:
    return (
        inspect.iscoroutinefunction(fn)
        or inspect.isasyncgenfunction(fn)
        or inspect.isgeneratorfunction(fn)
    )


def _unrun(result: Any) -> bool:
    """What an ``async def`` or generator function returns: its body has not run."""
    return inspect.iscoroutine(result) or inspect.isgenerator(result) or inspect.isasyncgen(result)
