"""The circuit breaker's SQL: each transition of :mod:`._logic` as one conditional statement.

Every statement returns the row it wrote (and the database's clock), or nothing when its
condition did not hold, so a node learns the outcome and the new state in one round
trip. Time is the database's on PostgreSQL (``statement_timestamp()``); on SQLite, one
machine and one clock, the caller passes ``now_ms``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from foundation.circuit_breaker._logic import BreakerRow
from foundation.database.schema import breakers as t
from foundation.database.statements import compile_sql
from foundation.database.url import Backend

__all__ = ["BreakerSQL"]


def _c(value: int) -> Any:
    return sa.literal_column(str(value), sa.BigInteger)


def _s(value: str) -> Any:
    return sa.literal_column(f"'{value}'", sa.String)


def _p(name: str) -> Any:
    return sa.cast(sa.bindparam(name), sa.BigInteger)


def _now(backend: Backend) -> Any:
    if backend == "postgresql":
        return sa.literal_column(
            "CAST(FLOOR(EXTRACT(EPOCH FROM statement_timestamp()) * 1000) AS BIGINT)"
        )
    return _p("now_ms")


_COLUMNS = (
    t.c.state,
    t.c.failures,
    t.c.opened_at_ms,
    t.c.open_until_ms,
    t.c.probe_token,
    t.c.probe_until_ms,
    t.c.revision,
)


def _insert(backend: Backend) -> Any:
    return postgresql.insert(t) if backend == "postgresql" else sqlite.insert(t)


@dataclass(frozen=True)
class BreakerSQL:
    """Every statement the shared breaker runs, as driver-ready text."""

    backend: Backend
    failure: str
    success: str
    claim: str
    extend: str
    probe_ok: str
    probe_failed: str
    reset: str
    force_open: str
    select_one: str
    select_all: str

    @classmethod
    def build(cls, backend: Backend) -> BreakerSQL:
        now = _now(backend)
        name = t.c.name == sa.bindparam("name")
        stamp = {
            "revision": t.c.revision + _c(1),
            "updated_at_ms": now,
            "updated_by": sa.bindparam("by"),
        }
        returning = (*_COLUMNS, now)

        # A failure while closed: +1, and open when it reaches max_failures.
        trips_first = _c(1) >= _p("max")
        ins = _insert(backend).values(
            name=sa.bindparam("name"),
            state=sa.case((trips_first, _s("open")), else_=_s("closed")),
            failures=_c(1),
            opened_at_ms=sa.case((trips_first, now), else_=sa.null()),
            open_until_ms=sa.case((trips_first, now + _p("reset")), else_=sa.null()),
            revision=_c(1),
            updated_at_ms=now,
            updated_by=sa.bindparam("by"),
        )
        trips = t.c.failures + _c(1) >= _p("max")
        failure = ins.on_conflict_do_update(
            index_elements=[t.c.name],
            set_={
                "failures": t.c.failures + _c(1),
                "state": sa.case((trips, _s("open")), else_=t.c.state),
                "opened_at_ms": sa.case((trips, now), else_=t.c.opened_at_ms),
                "open_until_ms": sa.case((trips, now + _p("reset")), else_=t.c.open_until_ms),
                **stamp,
            },
            where=t.c.state == _s("closed"),
        ).returning(*returning)

        success = (
            sa.update(t)
            .where(name, t.c.state == _s("closed"), t.c.failures > _c(0))
            .values(failures=_c(0), **stamp)
            .returning(*returning)
        )
        claim = (
            sa.update(t)
            .where(
                name,
                sa.or_(
                    sa.and_(t.c.state == _s("open"), t.c.open_until_ms <= now),
                    sa.and_(
                        t.c.state == _s("half_open"),
                        sa.func.coalesce(t.c.probe_until_ms, _c(0)) <= now,
                    ),
                ),
            )
            .values(
                state=_s("half_open"),
                probe_token=sa.bindparam("token"),
                probe_until_ms=now + _p("lease"),
                **stamp,
            )
            .returning(*returning)
        )
        probe = (name, t.c.state == _s("half_open"), t.c.probe_token == sa.bindparam("token"))
        # A probe still running (a sync function cannot be stopped) keeps its claim.
        extend = (
            sa.update(t)
            .where(*probe)
            .values(probe_until_ms=now + _p("lease"), **stamp)
            .returning(*returning)
        )
        closed_values = {
            "state": _s("closed"),
            "failures": _c(0),
            "opened_at_ms": sa.null(),
            "open_until_ms": sa.null(),
            "probe_token": sa.null(),
            "probe_until_ms": sa.null(),
        }
        probe_ok = sa.update(t).where(*probe).values(**closed_values, **stamp).returning(*returning)
        probe_failed = (
            sa.update(t)
            .where(*probe)
            .values(
                state=_s("open"),
                failures=t.c.failures + _c(1),
                opened_at_ms=now,
                open_until_ms=now + _p("reset"),
                probe_token=sa.null(),
                probe_until_ms=sa.null(),
                **stamp,
            )
            .returning(*returning)
        )
        base = {
            "name": sa.bindparam("name"),
            "revision": _c(1),
            "updated_at_ms": now,
            "updated_by": sa.bindparam("by"),
        }
        ins = _insert(backend).values(**base, **closed_values)
        reset = ins.on_conflict_do_update(
            index_elements=[t.c.name], set_={**closed_values, **stamp}
        ).returning(*returning)
        opened = {
            "state": _s("open"),
            "opened_at_ms": now,
            "open_until_ms": sa.null(),
            "probe_token": sa.null(),
            "probe_until_ms": sa.null(),
        }
        ins = _insert(backend).values(**base, **opened, failures=_c(0))
        force_open = ins.on_conflict_do_update(
            index_elements=[t.c.name], set_={**opened, **stamp}
        ).returning(*returning)
        # (and who wrote it: a node's own write read by its feed is still its own)
        select = sa.select(t.c.name, *_COLUMNS, now, t.c.updated_by)
        return cls(
            backend=backend,
            failure=compile_sql(failure, backend),
            success=compile_sql(success, backend),
            claim=compile_sql(claim, backend),
            extend=compile_sql(extend, backend),
            probe_ok=compile_sql(probe_ok, backend),
            probe_failed=compile_sql(probe_failed, backend),
            reset=compile_sql(reset, backend),
            force_open=compile_sql(force_open, backend),
            select_one=compile_sql(select.where(name), backend),
            select_all=compile_sql(select.order_by(t.c.name), backend),
        )

    @staticmethod
    def row(values: Any) -> tuple[BreakerRow, int]:
        """A returned row (without the name) as a :class:`BreakerRow` and the DB's now (a
        read row ends with its writer: see :meth:`writer`)."""
        state, failures, opened, until, token, probe_until, revision, now = values[:8]
        return (
            BreakerRow(
                state=state,
                failures=int(failures),
                opened_at_ms=None if opened is None else int(opened),
                open_until_ms=None if until is None else int(until),
                probe_token=token,
                probe_until_ms=None if probe_until is None else int(probe_until),
                revision=int(revision),
            ),
            int(now),
        )
