"""Spans: a timed block or call reported as ``start`` / ``stop`` / ``exception`` events.

Mirrors ``:telemetry.span/3``. A span emits ``prefix + ("start",)`` with
``{"system_time", "monotonic_time"}``, then either ``prefix + ("stop",)`` with
``{"duration", "monotonic_time"}`` or ``prefix + ("exception",)`` with the same
measurements and ``kind``/``reason``/``exception_type`` added to the metadata. Times
are integer nanoseconds; ``duration`` comes from :func:`time.perf_counter_ns`, which is
monotonic. The three events of one span carry the same ``telemetry_span_context``
object in their metadata so that handlers can pair them.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final, TypeVar, cast

from foundation._text import shown
from foundation.errors import ValidationError

__all__ = ["Span", "SpanContext", "exception_type_name"]

F = TypeVar("F", bound=Callable[..., Any])

# The signature of Telemetry.execute, spelled out so this module need not import _core.
_Execute = Callable[[Any, Mapping[str, Any] | None, Mapping[str, Any] | None], None]


def exception_type_name(exc: BaseException) -> str:
    """``ValueError`` for builtins, ``package.module.Class`` for everything else."""
    cls = type(exc)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


class SpanContext:
    """The identity shared by the start, stop and exception events of one span.

    Compared by identity; usable as a dict key by handlers that pair start with stop.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<SpanContext {id(self):#x}>"


class _Active:
    """The state of one running span: its metadata and its start time."""

    __slots__ = ("metadata", "start")

    def __init__(self, metadata: dict[str, Any], start: int) -> None:
        self.metadata = metadata
        self.start = start


class Span:
    """A span definition: a context manager (sync and async) and a function decorator.

    ``with tel.span("db.query", {"table": "t"}) as meta:`` binds ``meta``, a fresh dict
    holding the span's metadata; what the block adds to it is reported in the stop (or
    exception) event. As ``@tel.span("db.query")`` each call of the function is its own
    span. One ``Span`` object may be entered again after it exits, and nested within
    itself, but must not be entered concurrently from several tasks or threads: create
    one per use there (``tel.span(...)`` is cheap), or decorate.
    """

    __slots__ = (
        "_exception_name",
        "_execute",
        "_metadata",
        "_running",
        "_start_name",
        "_stop_name",
    )

    def __init__(
        self, execute: _Execute, prefix: tuple[str, ...], metadata: Mapping[str, Any] | None
    ) -> None:
        self._execute: Final = execute
        self._start_name: Final = (*prefix, "start")
        self._stop_name: Final = (*prefix, "stop")
        self._exception_name: Final = (*prefix, "exception")
        self._metadata: Final = dict(metadata) if metadata else {}
        self._running: list[_Active] = []  # a stack, for a span nested in itself

    # -- the three events -------------------------------------------------------------

    def _begin(self) -> _Active:
        metadata = dict(self._metadata)
        metadata["telemetry_span_context"] = SpanContext()
        # As in :telemetry, the duration includes the time the start handlers take.
        start = time.perf_counter_ns()
        self._execute(
            self._start_name,
            {"system_time": time.time_ns(), "monotonic_time": start},
            dict(metadata),  # a snapshot: the block may still change `metadata`
        )
        return _Active(metadata, start)

    def _end(self, active: _Active, exc: BaseException | None) -> None:
        stop = time.perf_counter_ns()
        measurements = {"duration": stop - active.start, "monotonic_time": stop}
        if exc is None:
            self._execute(self._stop_name, measurements, dict(active.metadata))
            return
        self._execute(
            self._exception_name,
            measurements,
            {
                **active.metadata,
                # "exit" for KeyboardInterrupt, SystemExit, CancelledError and the like:
                # the block was stopped rather than failed.
                "kind": "error" if isinstance(exc, Exception) else "exit",
                "reason": exc,
                "exception_type": exception_type_name(exc),
            },
        )

    # -- context manager --------------------------------------------------------------

    def __enter__(self) -> dict[str, Any]:
        active = self._begin()
        self._running.append(active)
        return active.metadata

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        # Returning None lets the exception, if any, propagate unchanged.
        self._end(self._running.pop(), exc)

    async def __aenter__(self) -> dict[str, Any]:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)

    # -- decorator --------------------------------------------------------------------

    def __call__(self, fn: F) -> F:
        """Wrap ``fn`` (sync or ``async def``) so that every call is a span.

        Generator functions are refused: only their creation would be timed, not the
        iteration, which is rarely what is meant; use ``with`` inside them instead.
        """
        if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
            raise ValidationError(
                "span cannot decorate a generator function; use it as a context manager inside",
                context={"function": getattr(fn, "__qualname__", shown(fn))},
            )
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                active = self._begin()
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    self._end(active, exc)
                    raise
                self._end(active, None)
                return result

            return cast(F, async_wrapper)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            # A fresh state per call (not the _running stack), so concurrent calls from
            # several threads are independent spans.
            active = self._begin()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                self._end(active, exc)
                raise
            self._end(active, None)
            return result

        return cast(F, wrapper)
