"""The rate limiter's SQL: one ``INSERT … ON CONFLICT DO UPDATE … RETURNING`` per decision.

Each statement computes the step of :mod:`._logic` inside the database, on the row it has
locked (PostgreSQL) or under SQLite's single write lock, so concurrent decisions on one
key serialize on that row only: no table lock, no read-then-write race, no refusal for
lack of a lock. The clock is the database's on PostgreSQL (``statement_timestamp()``,
one value for the whole statement); on SQLite (one machine, so one clock) the caller
passes ``now``.

On PostgreSQL the statement may also switch ``synchronous_commit`` off for its own
transaction (``set_config(..., true)`` in ``RETURNING``, evaluated before the commit).
What that trades: the commit returns before its WAL record reaches disk, so if the
*PostgreSQL server* crashes (or its machine loses power) within about three
``wal_writer_delay`` (600 ms by default), the last counter increments are lost and those
keys may admit that many requests again in the current window. Nothing else is affected:
the change is visible to every other session at once (atomicity and the limit hold while
the server runs), a client crash loses nothing, other tables keep their durability, and
a lost row is never corrupt, only older.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from foundation.database.codec import Codec
from foundation.database.schema import rate_limits as t
from foundation.database.statements import compile_sql
from foundation.database.url import Backend

__all__ = ["LimiterSQL"]


def _p(name: str) -> Any:
    return sa.cast(sa.bindparam(name), sa.BigInteger)


def _c(value: int) -> Any:
    return sa.literal_column(str(value), sa.BigInteger)


def _now(backend: Backend) -> tuple[Any, Any]:
    """(now in ms, now in µs) as SQL expressions."""
    if backend == "postgresql":
        epoch = "EXTRACT(EPOCH FROM statement_timestamp())"
        return (
            sa.literal_column(f"CAST(FLOOR({epoch} * 1000) AS BIGINT)"),
            sa.literal_column(f"CAST(FLOOR({epoch} * 1000000) AS BIGINT)"),
        )
    return _p("now_ms"), _p("now_us")


def _upsert(backend: Backend, algorithm: str, fast_commit: bool) -> Any:
    now_ms, now_us = _now(backend)
    limit, interval = _p("limit"), _p("interval")
    window = now_ms - now_ms % interval
    start = t.c.window_start_ms
    if algorithm == "fixed_window":
        same = start >= window
        allowed = sa.case((same, t.c.count < limit), else_=sa.true())
        values = {"window_start_ms": window, "count": sa.literal_column("1"), "tat_us": 0}
        values["expires_at_ms"] = window + interval
        new_start = sa.case((same, start), else_=window)
        update = {
            "window_start_ms": new_start,
            "count": sa.case(
                (same, sa.case((t.c.count < limit, t.c.count + _c(1)), else_=t.c.count)),
                else_=sa.literal_column("1"),
            ),
            "allowed": allowed,
            "expires_at_ms": new_start + interval,
        }
    elif algorithm == "sliding_window":
        same = start >= window
        adjacent = start == window - interval
        previous = sa.case((same, t.c.previous_count), (adjacent, t.c.count), else_=_c(0))
        current = sa.case((same, t.c.count), else_=_c(0))
        elapsed = sa.case((start > window, _c(0)), else_=now_ms - window)
        allowed = previous * (interval - elapsed) + (current + _c(1)) * interval <= limit * interval
        new_start = sa.case((same, start), else_=window)
        values = {"window_start_ms": window, "count": sa.literal_column("1"), "tat_us": 0}
        values["expires_at_ms"] = window + _c(2) * interval
        update = {
            "window_start_ms": new_start,
            "count": sa.case((allowed, current + _c(1)), else_=current),
            "previous_count": previous,
            "allowed": allowed,
            "expires_at_ms": new_start + _c(2) * interval,
        }
    else:  # token_bucket: GCRA
        emission, window_us = _p("emission"), _p("capacity")
        base = sa.case((t.c.tat_us < now_us, now_us), else_=t.c.tat_us)
        allowed = base + emission - now_us <= window_us
        values = {
            "window_start_ms": sa.literal_column("0"),
            "count": sa.literal_column("0"),
            "tat_us": now_us + emission,
            "expires_at_ms": (now_us + emission) // _c(1000) + _c(1),
        }
        update = {
            "tat_us": sa.case((allowed, base + emission), else_=t.c.tat_us),
            "allowed": allowed,
            "expires_at_ms": sa.case(
                (allowed, (base + emission) // _c(1000) + _c(1)), else_=t.c.expires_at_ms
            ),
        }
    insert = postgresql.insert if backend == "postgresql" else sqlite.insert
    stmt = insert(t).values(
        key=sa.bindparam("key"),
        algorithm=sa.literal_column(f"'{algorithm}'"),
        previous_count=sa.literal_column("0"),
        allowed=sa.true(),
        **{k: (sa.literal_column(str(v)) if isinstance(v, int) else v) for k, v in values.items()},
    )
    returning = [
        t.c.window_start_ms,
        t.c.count,
        t.c.previous_count,
        t.c.tat_us,
        t.c.allowed,
        now_ms,
        now_us,
    ]
    if backend == "postgresql" and fast_commit:
        returning.append(sa.literal_column("set_config('synchronous_commit', 'off', true)"))
    return stmt.on_conflict_do_update(
        index_elements=[t.c.key, t.c.algorithm], set_=update
    ).returning(*returning)


def _cleanup(backend: Backend) -> Any:
    now_ms, _ = _now(backend)
    expired = (
        sa.select(t.c.key, t.c.algorithm)
        .where(t.c.expires_at_ms < now_ms)
        .limit(sa.bindparam("batch"))
        .offset(sa.literal_column("0"))
    )
    if backend == "postgresql":
        expired = expired.with_for_update(skip_locked=True)
    return sa.delete(t).where(sa.tuple_(t.c.key, t.c.algorithm).in_(expired))


@dataclass(frozen=True)
class LimiterSQL:
    """Every statement the shared limiter runs, as driver-ready text."""

    backend: Backend
    upsert: dict[str, str]
    cleanup: str
    select_all: str
    codec: Codec

    @classmethod
    def build(cls, backend: Backend, codec: Codec, fast_commit: bool = True) -> LimiterSQL:
        now_ms, _ = _now(backend)
        return cls(
            backend=backend,
            upsert={
                algorithm: compile_sql(_upsert(backend, algorithm, fast_commit), backend)
                for algorithm in ("fixed_window", "sliding_window", "token_bucket")
            },
            cleanup=compile_sql(_cleanup(backend), backend),
            select_all=compile_sql(
                sa.select(
                    t.c.key,
                    t.c.algorithm,
                    t.c.window_start_ms,
                    t.c.count,
                    t.c.previous_count,
                    t.c.tat_us,
                    t.c.expires_at_ms,
                    now_ms,
                )
                .where(t.c.expires_at_ms > now_ms)  # what has ended holds nothing any more
                .order_by(t.c.key, t.c.algorithm)
                .limit(sa.bindparam("limit"))
                .offset(sa.literal_column("0")),
                backend,
            ),
            codec=codec,
        )
