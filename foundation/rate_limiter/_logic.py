"""Rate-limit arithmetic, free of I/O: validation, the three algorithms, the decision.

The same functions drive the in-memory (``scope="local"``) limiter and turn the row a
shared (SQL) decision returns into a :class:`Decision`; the SQL statements in
:mod:`._store` compute the very same steps inside the database, in one statement.

Times are integers: epoch milliseconds for the windows, epoch microseconds for the
token bucket's theoretical arrival time (TAT).

fixed_window
    Windows aligned on the epoch (``now - now % interval``); at most ``max_requests``
    admitted per window. Its known edge: a burst at the end of one window and another at
    the start of the next admit up to twice the limit within one interval.
sliding_window
    The weighted two-window estimate (``previous * (1 - elapsed / interval) + current``):
    a request is admitted when the estimate plus one stays within ``max_requests``. No
    aligned window ever admits more than the limit, and bursts across a window boundary
    are smoothed; it assumes the previous window's requests were spread evenly.
token_bucket
    GCRA (the generic cell rate algorithm, a token bucket kept as one timestamp): a
    bucket of ``max_requests`` tokens refilled at ``max_requests / interval``, one token
    per whole microsecond at most (a limit above 1,000 per millisecond refills at that
    rate, never faster). A burst of up to ``max_requests``, then a steady rate; over any
    span ``d`` at most ``max_requests * (1 + d / interval)`` are admitted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, NamedTuple

from foundation._text import is_utf8, name_text, shown
from foundation.errors import ValidationError

__all__ = [
    "ALGORITHMS",
    "MAX_INTERVAL_MS",
    "MAX_REQUESTS",
    "MAX_USAGE_ROWS",
    "Decision",
    "Limit",
    "fixed_window",
    "gcra",
    "sliding_window",
]

Algorithm = Literal["fixed_window", "sliding_window", "token_bucket"]
ALGORITHMS: tuple[str, ...] = ("fixed_window", "sliding_window", "token_bucket")
MAX_REQUESTS = 10_000_000
MAX_INTERVAL_MS = 366 * 24 * 3600 * 1000  # a year: keeps every product inside 64 bits
MAX_USAGE_ROWS = 100_000


class Decision(NamedTuple):
    """The answer for one request (immutable; ``bool(decision)`` is ``allowed``).

    ``remaining``: requests still admitted now (after this one); ``retry_after``:
    milliseconds until a refused request would be admitted (0 when allowed);
    ``reset_at``: when the limit is whole again (UTC datetime; ``reset_at_ms`` in epoch
    ms); ``degraded``: the database could not be asked and the limiter failed open.
    """

    allowed: bool
    remaining: int
    retry_after: int
    reset_at_ms: int
    limit: int
    degraded: bool = False

    def __bool__(self) -> bool:
        return self.allowed

    @property
    def reset_at(self) -> datetime:
        return datetime.fromtimestamp(self.reset_at_ms / 1000, UTC)


@dataclass(frozen=True, slots=True)
class Limit:
    """A validated limit: ``max_requests`` per ``interval`` milliseconds by ``algorithm``."""

    max_requests: int
    interval: int
    algorithm: Algorithm

    @property
    def emission_us(self) -> int:
        """GCRA: microseconds between two tokens (rounded up: never over the limit)."""
        return -(-self.interval * 1000 // self.max_requests)

    @property
    def capacity_us(self) -> int:
        """GCRA: how far ahead of now the TAT may run (a full bucket: ``max_requests``)."""
        return self.emission_us * self.max_requests


def to_ms(value: Any, name: str) -> int:
    """Milliseconds from an int (ms) or a timedelta; a clear error for anything else."""
    if isinstance(value, timedelta):
        ms = value.total_seconds() * 1000
        if ms != int(ms):
            ms = math.ceil(ms)
        value = int(ms)
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValidationError(
            f"{name} must be a whole number of milliseconds or a timedelta, "
            f"not {type(value).__name__}",
            context={"option": name, "value": shown(value, 100)},
        )
    return value


def make_limit(max_requests: Any, interval: Any, algorithm: Any) -> Limit:
    """Validate the options of one limit (raises ``validation_error``)."""
    if not isinstance(max_requests, int) or isinstance(max_requests, bool):
        raise ValidationError(
            f"max_requests must be an integer, not {type(max_requests).__name__}",
            context={"option": "max_requests", "value": shown(max_requests, 100)},
        )
    if not 1 <= max_requests <= MAX_REQUESTS:
        raise ValidationError(
            f"max_requests must be from 1 to {MAX_REQUESTS}, got {shown(max_requests)}",
            context={"option": "max_requests", "value": max_requests},
        )
    ms = to_ms(interval, "interval")
    if not 1 <= ms <= MAX_INTERVAL_MS:
        raise ValidationError(
            f"interval must be from 1 ms to {MAX_INTERVAL_MS} ms (a year), got {shown(ms)}",
            context={"option": "interval", "value": ms},
        )
    if algorithm not in ALGORITHMS:
        raise ValidationError(
            f"algorithm must be one of {', '.join(ALGORITHMS)}, not {shown(algorithm, 100)}",
            context={"option": "algorithm", "value": shown(algorithm, 100)},
        )
    return Limit(max_requests, ms, algorithm)


def check_key(key: Any, max_length: int) -> str:
    key = name_text(key)
    if not isinstance(key, str):
        raise ValidationError(
            f"a rate limit key must be a string, not {type(key).__name__}",
            context={"key": shown(key, 100)},
        )
    if not key or len(key) > max_length:
        raise ValidationError(
            f"a rate limit key must be 1 to {max_length} characters long, got {len(key)}",
            context={"key": key[:100], "length": len(key), "max_length": max_length},
        )
    # Both databases must store the key as text: PostgreSQL refuses NUL, and UTF-8 has
    # no lone surrogates. Refused here, not by the database (whose refusal would make a
    # shared limit fail open, as for an outage).
    if "\x00" in key:
        raise ValidationError(
            "a rate limit key must not contain a NUL character", context={"key": shown(key, 100)}
        )
    if not is_utf8(key):
        raise ValidationError(
            "a rate limit key must be valid UTF-8 (it holds a lone surrogate)",
            context={"key": shown(key, 100)},
        )
    return key


def check_usage_limit(limit: Any) -> int:
    """The row limit of ``usage()``: an int from 1 to MAX_USAGE_ROWS."""
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_USAGE_ROWS:
        raise ValidationError(
            f"limit must be an integer from 1 to {MAX_USAGE_ROWS}",
            context={"limit": shown(limit, 100)},
        )
    return limit


def usage_now(
    algorithm: str,
    start_ms: int,
    count: int,
    previous: int,
    tat_us: int,
    expires_ms: int,
    now_ms: int,
) -> tuple[int, int | None, int | None] | None:
    """A stored limit as of ``now_ms``: ``(window_start_ms, used, previous_count)``, or
    None when it holds nothing any more (its window ended, its bucket is full again).
    A token bucket's row holds when it is full again (``tat_us``), not a count: its
    ``used`` and ``previous_count`` are None (the tokens it stands for depend on the
    limit each call gives, which no row keeps)."""
    if expires_ms <= now_ms or (algorithm == "token_bucket" and tat_us <= now_ms * 1000):
        return None
    if algorithm == "token_bucket":
        return start_ms, None, None
    if algorithm == "sliding_window":
        interval = (expires_ms - start_ms) // 2  # stored: window_start + 2 * interval
        if now_ms >= start_ms + interval:  # the current window ended: it is the previous now
            return (start_ms + interval, 0, count) if count else None
    return start_ms, count, previous


# -- fixed window -------------------------------------------------------------------------
# state: (window_start_ms, count)


def fixed_window(
    state: tuple[int, int] | None, now_ms: int, limit: Limit
) -> tuple[tuple[int, int], bool]:
    """One request: the new state and whether it was admitted.

    A stored window later than ``now``'s (a slower writer with an older clock reading)
    is kept: windows only move forward, so a late writer cannot reopen a full window.
    """
    window = now_ms - now_ms % limit.interval
    if state is not None and state[0] >= window:
        start, count = state
        allowed = count < limit.max_requests
        return (start, count + 1 if allowed else count), allowed
    return (window, 1), True


def fixed_decision(state: tuple[int, int], allowed: bool, now_ms: int, limit: Limit) -> Decision:
    start, count = state
    reset = start + limit.interval
    cap = limit.max_requests
    if allowed:  # positional: the hot path of the local limiter
        return Decision(True, cap - count if count < cap else 0, 0, reset, cap)
    return Decision(False, 0 if count >= cap else cap - count, max(1, reset - now_ms), reset, cap)


# -- sliding window -----------------------------------------------------------------------
# state: (window_start_ms, count, previous_count)


def _sliding_view(
    state: tuple[int, int, int] | None, now_ms: int, limit: Limit
) -> tuple[int, int, int, int]:
    """(window_start, current, previous, elapsed) as seen at ``now_ms``."""
    interval = limit.interval
    window = now_ms - now_ms % interval
    if state is not None and state[0] >= window:
        start, current, previous = state
        return start, current, previous, (0 if start > window else now_ms - window)
    if state is not None and state[0] == window - interval:
        return window, 0, state[1], now_ms - window
    return window, 0, 0, now_ms - window


def sliding_window(
    state: tuple[int, int, int] | None, now_ms: int, limit: Limit
) -> tuple[tuple[int, int, int], bool]:
    start, current, previous, elapsed = _sliding_view(state, now_ms, limit)
    interval = limit.interval
    # previous * (interval - elapsed) / interval + current + 1 <= max, in integers
    allowed = (
        previous * (interval - elapsed) + (current + 1) * interval <= limit.max_requests * interval
    )
    return (start, current + 1 if allowed else current, previous), allowed


def sliding_decision(
    state: tuple[int, int, int], allowed: bool, now_ms: int, limit: Limit
) -> Decision:
    start, current, previous = state
    interval, cap = limit.interval, limit.max_requests
    elapsed = max(0, min(interval, now_ms - start))
    weighted = previous * (interval - elapsed)
    remaining = max(0, (cap * interval - weighted - current * interval) // interval)
    return Decision(
        allowed=allowed,
        remaining=remaining,
        retry_after=0 if allowed else max(1, _sliding_admits_at(state, limit) - now_ms),
        # Whole again once no window it counts holds a request: this window's count
        # weighs on the next one as its previous window.
        reset_at_ms=start + 2 * interval if current else start + interval,
        limit=cap,
    )


def _sliding_admits_at(state: tuple[int, int, int], limit: Limit) -> int:
    """When (epoch ms) one more request is admitted, if none is admitted before.

    In this window, once the previous window's weight has decayed enough; else in the
    next, where this window's count is the previous one, at full weight as it starts;
    else as the window after starts, which counts none of them. Admitted at elapsed
    ``e`` when ``previous * (interval - e) + (current + 1) * interval <= cap * interval``.
    """
    start, current, previous = state
    interval, cap = limit.interval, limit.max_requests
    if current < cap:
        elapsed = interval - (cap - current - 1) * interval // previous if previous else 0
        if elapsed < interval:
            return start + elapsed
    elapsed = interval - (cap - 1) * interval // current if current else 0
    if elapsed < interval:
        return start + interval + elapsed
    return start + 2 * interval


# -- token bucket (GCRA) --------------------------------------------------------------------
# state: tat_us (the theoretical arrival time: when the bucket is full again)


def gcra(tat_us: int | None, now_us: int, limit: Limit) -> tuple[int, bool]:
    base = now_us if tat_us is None or tat_us < now_us else tat_us
    new_tat = base + limit.emission_us
    if new_tat - now_us <= limit.capacity_us:
        return new_tat, True
    return (tat_us if tat_us is not None else now_us), False


def gcra_decision(tat_us: int, allowed: bool, now_us: int, limit: Limit) -> Decision:
    emission, window = limit.emission_us, limit.capacity_us
    ahead = max(0, tat_us - now_us)  # how far the bucket is from full
    remaining = max(0, (window - ahead) // emission)
    retry_after = 0
    if not allowed:
        retry_after = max(1, -(-(ahead + emission - window) // 1000))
    return Decision(
        allowed=allowed,
        remaining=remaining,
        retry_after=retry_after,
        reset_at_ms=-(-max(tat_us, now_us) // 1000),
        limit=limit.max_requests,
    )
