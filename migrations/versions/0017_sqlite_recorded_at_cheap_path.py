"""SQLite: the recorded_at rule of 0015 takes Foundation's own rows of days 29 to 31 on its
cheap path, and 7 to 9 digits of a second (.NET writes 7, Go 9).

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30

Migration 0015's trigger sent every row of the 29th, 30th or 31st of a month down its
slow path (the body's full test of the text: about 15 µs more per insert, Foundation's own
rows included), and refused a fraction of 7 to 9 digits, which ``datetime.fromisoformat``
and Foundation's reader take (the reader keeps the first 6). Its message now says
``.fraction``. The trigger is made anew with those two rules, the others as 0015 has them;
a downgrade puts 0015's back. PostgreSQL's function is 0015's already: nothing there.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

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


def _revision_0015() -> Any:
    """0015's module: its trigger is what a downgrade restores."""
    path = Path(__file__).with_name("0015_events_recorded_at_rules.py")
    spec = importlib.util.spec_from_file_location("foundation_migration_0015", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(SQLITE_DROP)
        op.execute(_revision_0015().SQLITE_ADD)
