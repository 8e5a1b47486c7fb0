"""Correlation ids carried by :mod:`contextvars`.

``with foundation.correlation("abc"):`` sets the id for the block; errors, stored events
and telemetry metadata pick it up. A contextvar is copied into each asyncio task when
the task is created and is per thread, so concurrent requests never see each other's id.
To carry an id into a worker thread, use :func:`contextvars.copy_context` (as
``asyncio.to_thread`` and :func:`run_in_context` do).
"""

from __future__ import annotations

import contextvars
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from foundation._text import shown

__all__ = ["correlation", "current_correlation_id", "new_correlation_id", "run_in_context"]

_current: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "foundation_correlation_id", default=None
)

P = ParamSpec("P")
R = TypeVar("R")


def current_correlation_id() -> str | None:
    """The correlation id of the running context, or ``None``."""
    return _current.get()


def new_correlation_id() -> str:
    """A fresh random correlation id."""
    return uuid.uuid4().hex


@contextmanager
def correlation(correlation_id: str | uuid.UUID | None = None) -> Iterator[str]:
    """Set the correlation id for the block (a new one when ``None``) and yield it. A
    :class:`uuid.UUID` is taken as its text (``str(id)``), as ``events.store`` takes it."""
    if correlation_id is None:
        correlation_id = new_correlation_id()
    elif isinstance(correlation_id, uuid.UUID):
        correlation_id = str(correlation_id)
    else:
        _check(correlation_id)
    token = _current.set(correlation_id)
    try:
        yield correlation_id
    finally:
        _current.reset(token)


MAX_LENGTH = 255  # the correlation_id columns of the config, history and events tables


def _check(correlation_id: object) -> None:
    """Refuse an id the tables could not store (each write records the running id)."""
    why = None
    if not isinstance(correlation_id, str) or not correlation_id.strip():
        why = "a non-empty string"
    elif len(correlation_id) > MAX_LENGTH or not correlation_id.isprintable():
        # (printable excludes NUL and lone surrogates, which no text column takes)
        why = f"at most {MAX_LENGTH} printable characters"
    if why is not None:
        from foundation.errors import ValidationError

        raise ValidationError(
            f"a correlation id must be {why}",
            context={"correlation_id": shown(correlation_id)},
        )


def run_in_context(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap ``fn`` so that it runs in a copy of the caller's context (for threads)."""
    ctx = contextvars.copy_context()

    def runner(*args: P.args, **kwargs: P.kwargs) -> R:
        return ctx.run(fn, *args, **kwargs)

    return runner
