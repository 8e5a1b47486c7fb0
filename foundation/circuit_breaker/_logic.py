"""Circuit breaker state and transitions, free of I/O.

One :class:`BreakerRow` is a breaker's whole state; the functions below are its
transitions. The in-memory (``scope="local"``) breaker applies them directly; the
shared breaker's SQL statements (:mod:`._store`) make exactly the same transitions in
one conditional statement each, and the nodes cache the rows those statements return.

    closed ──(max_failures consecutive failures)──▶ open
    open ──(reset_timeout elapsed; one caller claims the probe)──▶ half_open
    half_open ──(probe succeeds)──▶ closed
    half_open ──(probe fails or times out)──▶ open (for another reset_timeout)

An ``open`` row with no ``open_until_ms`` is forced open: it never probes, only
``reset()`` closes it. A claimed probe holds a lease (``probe_until_ms``): if the
prober dies, another caller may claim the probe once the lease is over.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, Literal

from foundation._text import is_utf8, name_text, shown
from foundation.errors import ValidationError

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "OPEN",
    "OPTION_NAMES",
    "STATES",
    "BreakerOptions",
    "BreakerRow",
    "check_scope",
    "claim_probe",
    "make_options",
    "on_failure",
    "on_success",
    "options_from",
    "probe_done",
]

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, OPEN, HALF_OPEN)
State = Literal["closed", "open", "half_open"]
PROBE_LEASE_MARGIN_MS = 1000
MAX_MS = 366 * 24 * 3600 * 1000
# The failure count is a BIGINT in the shared table; this leaves it room (and is far
# beyond any breaker that would ever open).
MAX_FAILURES = 10_000_000
OPTION_NAMES = ("timeout", "max_failures", "reset_timeout", "failure_exceptions", "scope")


@dataclass(frozen=True, slots=True)
class BreakerRow:
    """A breaker's state as stored (times in epoch milliseconds)."""

    state: str = CLOSED
    failures: int = 0
    opened_at_ms: int | None = None
    open_until_ms: int | None = None
    probe_token: str | None = None
    probe_until_ms: int | None = None
    revision: int = 0


CLOSED_ROW = BreakerRow()


@dataclass(frozen=True, slots=True)
class BreakerOptions:
    """Validated options: ``timeout_ms`` (None: none), ``max_failures``, ``reset_timeout_ms``."""

    timeout_ms: int | None
    max_failures: int
    reset_timeout_ms: int
    failure_exceptions: tuple[type[BaseException], ...]
    scope: Literal["shared", "local"]

    @property
    def timeout_s(self) -> float | None:
        return None if self.timeout_ms is None else self.timeout_ms / 1000

    @property
    def probe_lease_ms(self) -> int:
        return (self.timeout_ms or self.reset_timeout_ms) + PROBE_LEASE_MARGIN_MS


def _ms(value: Any, name: str, minimum: int = 0, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, timedelta):
        value = math.ceil(value.total_seconds() * 1000)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(
            f"{name} must be a whole number of milliseconds or a timedelta, "
            f"not {type(value).__name__}",
            context={"option": name, "value": shown(value, 100)},
        )
    if not minimum <= value <= MAX_MS:
        none = " (or None: no timeout)" if allow_none else ""
        raise ValidationError(
            f"{name} must be from {minimum} to {MAX_MS} ms{none}, got {shown(value)}",
            context={"option": name, "value": value},
        )
    return value


def check_scope(scope: Any) -> Literal["shared", "local"]:
    if scope not in ("shared", "local"):
        raise ValidationError(
            f"scope must be 'shared' or 'local', not {shown(scope, 100)}",
            context={"option": "scope", "value": shown(scope, 100)},
        )
    return scope  # type: ignore[no-any-return]


def options_from(options: dict[str, Any]) -> BreakerOptions:
    """:func:`make_options` from keyword options, naming any it does not know."""
    unknown = sorted(str(name) for name in options if name not in OPTION_NAMES)
    if unknown:
        raise ValidationError(
            f"unknown circuit breaker option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}: the options are {', '.join(OPTION_NAMES)}",
            context={"unknown": unknown, "known": list(OPTION_NAMES)},
        )
    return make_options(**options)


def make_options(
    timeout: Any = 5000,
    max_failures: Any = 5,
    reset_timeout: Any = 10000,
    failure_exceptions: Any = (Exception,),
    scope: Any = "shared",
) -> BreakerOptions:
    """Validate a breaker's options (raises ``validation_error``)."""
    if (
        not isinstance(max_failures, int)
        or isinstance(max_failures, bool)
        or not 1 <= max_failures <= MAX_FAILURES
    ):
        raise ValidationError(
            f"max_failures must be an integer from 1 to {MAX_FAILURES:,}, "
            f"got {shown(max_failures, 40)}",
            context={"option": "max_failures", "value": shown(max_failures, 100)},
        )
    if isinstance(failure_exceptions, type):
        failure_exceptions = (failure_exceptions,)
    if (
        not isinstance(failure_exceptions, tuple | list)
        or not failure_exceptions
        or not all(isinstance(e, type) and issubclass(e, BaseException) for e in failure_exceptions)
    ):
        raise ValidationError(
            "failure_exceptions must be an exception class or a non-empty tuple of them",
            context={"option": "failure_exceptions", "value": shown(failure_exceptions, 100)},
        )
    reset_ms = _ms(reset_timeout, "reset_timeout")
    assert reset_ms is not None
    return BreakerOptions(
        # A timeout of 0 ms would fail every call: None is how to say "no timeout".
        timeout_ms=_ms(timeout, "timeout", minimum=1, allow_none=True),
        max_failures=max_failures,
        reset_timeout_ms=reset_ms,
        failure_exceptions=tuple(failure_exceptions),
        scope=check_scope(scope),
    )


def check_name(name: Any, max_length: int = 255) -> str:
    name = name_text(name)
    if not isinstance(name, str):
        raise ValidationError(
            f"a circuit breaker name must be a string, not {type(name).__name__}",
            context={"name": shown(name, 100)},
        )
    if not name or len(name) > max_length:
        raise ValidationError(
            f"a circuit breaker name must be 1 to {max_length} characters long, got {len(name)}",
            context={"name": name[:100], "length": len(name), "max_length": max_length},
        )
    if "\x00" in name or not is_utf8(name):
        raise ValidationError(
            "a circuit breaker name must not contain NUL characters or lone surrogates",
            context={"name": shown(name, 100)},
        )
    return name


def fn_name(fn: Callable[..., Any]) -> str:
    """The default breaker name of a function: its module and qualified name."""
    module = getattr(fn, "__module__", None) or "?"
    return f"{module}.{getattr(fn, '__qualname__', type(fn).__qualname__)}"


# -- what a caller may do now -----------------------------------------------------------


def admission(row: BreakerRow, now_ms: int) -> tuple[str, int | None]:
    """``("call", None)``, ``("claim", None)`` (try to become the probe), or
    ``("reject", retry_after_ms)`` (None: forced open, no probe planned)."""
    if row.state == CLOSED:
        return "call", None
    if row.state == OPEN:
        if row.open_until_ms is None:
            return "reject", None
        if now_ms < row.open_until_ms:
            return "reject", row.open_until_ms - now_ms
        return "claim", None
    # half_open: a probe is out; wait for its outcome or the end of its lease.
    if row.probe_until_ms is not None and now_ms < row.probe_until_ms:
        return "reject", row.probe_until_ms - now_ms
    return "claim", None


# -- transitions (the SQL in _store makes the same ones) ---------------------------------


def on_failure(row: BreakerRow, now_ms: int, options: BreakerOptions) -> BreakerRow | None:
    """A call failed while closed; None when the row is not closed (nothing changes)."""
    if row.state != CLOSED:
        return None
    failures = row.failures + 1
    if failures >= options.max_failures:
        return replace(
            row,
            state=OPEN,
            failures=failures,
            opened_at_ms=now_ms,
            open_until_ms=now_ms + options.reset_timeout_ms,
            revision=row.revision + 1,
        )
    return replace(row, failures=failures, revision=row.revision + 1)


def on_success(row: BreakerRow) -> BreakerRow | None:
    """A call succeeded while closed: consecutive failures start again from zero."""
    if row.state != CLOSED or row.failures == 0:
        return None
    return replace(row, failures=0, revision=row.revision + 1)


def claim_probe(
    row: BreakerRow, token: str, now_ms: int, options: BreakerOptions
) -> BreakerRow | None:
    """Become the one probe (None: someone else is, or it is not time yet)."""
    due = (row.state == OPEN and row.open_until_ms is not None and row.open_until_ms <= now_ms) or (
        row.state == HALF_OPEN and (row.probe_until_ms or 0) <= now_ms
    )
    if not due:
        return None
    return replace(
        row,
        state=HALF_OPEN,
        probe_token=token,
        probe_until_ms=now_ms + options.probe_lease_ms,
        revision=row.revision + 1,
    )


def extend_probe(
    row: BreakerRow, token: str, now_ms: int, options: BreakerOptions, lease_ms: int | None = None
) -> BreakerRow | None:
    """The probe ``token`` still running: its claim for another lease (None if not held);
    ``lease_ms=0`` gives it back (due again at once)."""
    if row.state != HALF_OPEN or row.probe_token != token:
        return None
    lease = options.probe_lease_ms if lease_ms is None else lease_ms
    return replace(row, probe_until_ms=now_ms + lease, revision=row.revision + 1)


def probe_done(
    row: BreakerRow, token: str, ok: bool, now_ms: int, options: BreakerOptions
) -> BreakerRow | None:
    """The probe's outcome: closed on success, open for another reset_timeout on failure."""
    if row.state != HALF_OPEN or row.probe_token != token:
        return None  # the lease ran out and another probe took over, or a reset happened
    if ok:
        return BreakerRow(revision=row.revision + 1)
    return BreakerRow(
        state=OPEN,
        failures=row.failures + 1,
        opened_at_ms=now_ms,
        open_until_ms=now_ms + options.reset_timeout_ms,
        revision=row.revision + 1,
    )


def reset(row: BreakerRow) -> BreakerRow:
    return BreakerRow(revision=row.revision + 1)


def force_open(row: BreakerRow, now_ms: int) -> BreakerRow:
    return BreakerRow(
        state=OPEN, failures=row.failures, opened_at_ms=now_ms, revision=row.revision + 1
    )
