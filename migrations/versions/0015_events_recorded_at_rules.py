"""The log refuses every row its readers cannot read, naming the rule it breaks.

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-30

Migration 0014 refused an id that is not a UUID's lower-case text (and, on SQLite, data
or metadata that is not JSON) with one message for all. It left rows in that no reader
can make a record of:

* PostgreSQL took ``metadata`` that is not a JSON object, and a ``recorded_at`` of
  ``'infinity'``, ``'-infinity'``, the year 10000 and later or a date before Christ,
  which psycopg cannot load: every reader reaching such a row failed with
  ``storage_error`` and a subscription retried it for good. ``recorded_at`` must now be a
  finite time from 0002-01-01 00:00 UTC (included) to 9999-01-01 00:00 UTC (excluded):
  bounds a year away from the ends of Python's ``datetime``, so that no conversion to
  another time zone overflows.
* SQLite, which has no column types to refuse the rest, took ``data`` stored as a
  number or a blob, ``metadata`` that is not an object, a ``stream_version`` that is not
  an integer, a NUL character in the id, data or metadata (SQLite's text functions stop
  at it: a UUID's text, a NUL and more passed for an id), and any ``recorded_at``. It
  must now be ``YYYY-MM-DD``, optionally followed by ``' '`` or ``'T'`` and ``HH:MM``,
  optionally ``:SS``, optionally ``.`` and 1 to 9 digits (.NET writes 7, Go 9: the
  reader keeps the first 6), then optionally ``Z`` or ``+HH:MM`` / ``-HH:MM``: a day of
  the calendar in the years 2 to 9998, hours 00 to 23, minutes and seconds 00 to 59
  (``'2026-02-30'``, ``'24:00:00'``, a trailing space, a lower-case ``'z'`` are not).

Each rule raises its own message. Both still in 0014's BEFORE INSERT trigger (same name;
PostgreSQL's function replaced in place, SQLite's trigger made anew); a downgrade puts
0014's back. Rows already written are not checked: the readers name the position of a
row they cannot read.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The function's OID stays (CREATE OR REPLACE): 0014's trigger keeps calling it.
PG_FUNCTION = r"""
    CREATE OR REPLACE FUNCTION foundation_events_valid_row() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
    BEGIN
        IF NEW.id !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
            RAISE EXCEPTION 'foundation_events: the id must be a UUID in lower-case text, not %',
                NEW.id USING ERRCODE = 'check_violation';
        END IF;
        IF jsonb_typeof(NEW.metadata) <> 'object' THEN
            RAISE EXCEPTION 'foundation_events: the metadata must be a JSON object, not %',
                left(NEW.metadata::text, 100) USING ERRCODE = 'check_violation';
        END IF;
        IF NOT (isfinite(NEW.recorded_at)
                AND NEW.recorded_at >= '0002-01-01 00:00+00'::timestamptz
                AND NEW.recorded_at < '9999-01-01 00:00+00'::timestamptz) THEN
            RAISE EXCEPTION
                'foundation_events: recorded_at must be a finite time between the years 2 and 9998, not %',
                NEW.recorded_at USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$
"""  # noqa: E501 (a message PL/pgSQL takes as one literal)

SQLITE_DROP = "DROP TRIGGER foundation_events_valid_row"

# SQLite triggers have no variables, and SQL here is written out, not put together (see
# tests/test_security.py). The WHEN clause holds every rule, recorded_at's in
# Foundation's own form only ('YYYY-MM-DD HH:MM:SS.ffffff', days 01 to 28
# a real date whatever the month, a later one checked as below), the row every store
# writes. Any other row runs the
# body, which checks each rule and names the one broken; the recorded_at rule there
# names its parts with subqueries: x the text, s what follows 'YYYY-MM-DD[ T]HH:MM',
# n the length of its offset (Z: 1, +HH:MM: 6), p and o the parts before and of it.
# date(d, '+0 days') turns a day past the month's end into the next month's: a real
# date is its own. Each test is written so that it is never NULL on text (IS, not =).
# length, substr, GLOB and json_valid stop at a NUL character, which the text may hold
# (instr does not): '2026-11-30\x00 anything' would pass for '2026-11-30', and an id or
# JSON with a NUL and more after it for the part before.
# op.execute runs its text as SQLAlchemy's text(), where ":SS" would be a parameter: the
# message escapes its colon ("\\:"), which SQLite receives as ":".
SQLITE_ADD = r"""
    CREATE TRIGGER foundation_events_valid_row BEFORE INSERT ON foundation_events
    WHEN NOT (
        (length(NEW.id) = 36 AND length(replace(NEW.id, '-', '')) = 32
         AND NEW.id NOT GLOB '*[^0-9a-f-]*' AND substr(NEW.id, 9, 1) = '-'
         AND substr(NEW.id, 14, 1) = '-' AND substr(NEW.id, 19, 1) = '-'
         AND substr(NEW.id, 24, 1) = '-' AND instr(NEW.id, char(0)) = 0)
        AND (typeof(NEW.data) = 'text' AND json_valid(NEW.data)
             AND instr(NEW.data, char(0)) = 0)
        AND (typeof(NEW.metadata) = 'text' AND CASE WHEN json_valid(NEW.metadata)
             THEN json_type(NEW.metadata) = 'object' ELSE 0 END
             AND instr(NEW.metadata, char(0)) = 0)
        AND (typeof(NEW.recorded_at) = 'text' AND length(NEW.recorded_at) = 26
             AND NEW.recorded_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9] [0-2][0-9]:[0-5][0-9]:[0-5][0-9].[0-9][0-9][0-9][0-9][0-9][0-9]'
             AND substr(NEW.recorded_at, 1, 4) BETWEEN '0002' AND '9998'
             AND substr(NEW.recorded_at, 6, 2) BETWEEN '01' AND '12'
             AND (substr(NEW.recorded_at, 9, 2) BETWEEN '01' AND '28'
                  OR date(substr(NEW.recorded_at, 1, 10), '+0 days')
                     IS substr(NEW.recorded_at, 1, 10))
             AND substr(NEW.recorded_at, 12, 2) <= '23'
             AND instr(NEW.recorded_at, char(0)) = 0)
        AND (NEW.stream_version IS NULL OR typeof(NEW.stream_version) = 'integer'))
    BEGIN
        SELECT RAISE(ABORT, 'foundation_events: the id must be a UUID in lower-case text')
        WHERE NOT (length(NEW.id) = 36 AND length(replace(NEW.id, '-', '')) = 32
                   AND NEW.id NOT GLOB '*[^0-9a-f-]*' AND substr(NEW.id, 9, 1) = '-'
                   AND substr(NEW.id, 14, 1) = '-' AND substr(NEW.id, 19, 1) = '-'
                   AND substr(NEW.id, 24, 1) = '-' AND instr(NEW.id, char(0)) = 0);
        SELECT RAISE(ABORT, 'foundation_events: the data must be JSON text')
        WHERE NOT (typeof(NEW.data) = 'text' AND json_valid(NEW.data)
                   AND instr(NEW.data, char(0)) = 0);
        SELECT RAISE(ABORT, 'foundation_events: the metadata must be a JSON object')
        WHERE NOT (typeof(NEW.metadata) = 'text' AND CASE WHEN json_valid(NEW.metadata)
                   THEN json_type(NEW.metadata) = 'object' ELSE 0 END
                   AND instr(NEW.metadata, char(0)) = 0);
        SELECT RAISE(ABORT, 'foundation_events: recorded_at must be an ISO date and time (YYYY-MM-DD[ HH:MM[\:SS[.fraction]]][Z|+HH:MM]) between the years 2 and 9998')
        FROM (SELECT x, substr(s, 1, length(s) - n) AS p, substr(s, length(s) - n + 1) AS o
              FROM (SELECT x, s, CASE WHEN s GLOB '*Z' THEN 1 WHEN s GLOB '*[+-]*' THEN 6
                                 ELSE 0 END AS n
                    FROM (SELECT NEW.recorded_at AS x, substr(NEW.recorded_at, 17) AS s)))
        WHERE NOT (typeof(x) = 'text' AND instr(x, char(0)) = 0
                   AND x GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*'
                   AND substr(x, 1, 4) BETWEEN '0002' AND '9998'
                   AND date(substr(x, 1, 10), '+0 days') IS substr(x, 1, 10)
                   AND (length(x) = 10
                        OR (substr(x, 11, 6) GLOB '[ T][0-2][0-9]:[0-5][0-9]'
                            AND substr(x, 12, 2) <= '23'
                            AND (p = '' OR p GLOB ':[0-5][0-9]'
                                 OR (p GLOB ':[0-5][0-9].[0-9]*' AND length(p) <= 13
                                     AND substr(p, 5) NOT GLOB '*[^0-9]*'))
                            AND (o = '' OR o = 'Z'
                                 OR (o GLOB '[+-][0-2][0-9]:[0-5][0-9]'
                                     AND substr(o, 2, 2) <= '23')))));
        SELECT RAISE(ABORT, 'foundation_events: the stream_version must be an integer')
        WHERE NOT (NEW.stream_version IS NULL OR typeof(NEW.stream_version) = 'integer');
    END
"""  # noqa: E501 (a GLOB pattern and a message, which SQLite takes as one literal each)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(SQLITE_DROP)
        op.execute(SQLITE_ADD)
    else:
        op.execute(PG_FUNCTION)


def _revision_0014() -> Any:
    """0014's module: its statements are what a downgrade restores (as 0009 does 0005's)."""
    path = Path(__file__).with_name("0014_events_row_checks.py")
    spec = importlib.util.spec_from_file_location("foundation_migration_0014", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def downgrade() -> None:
    before = _revision_0014()
    if op.get_bind().dialect.name == "sqlite":
        op.execute(SQLITE_DROP)
        op.execute(before.SQLITE_ADD)
    else:
        for statement in (*before.PG_DROP, *before.PG_ADD):
            op.execute(statement)
