"""SQLite: an index of the events whose ``recorded_at`` is not Foundation's own text, by time.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30

SQLite keeps ``recorded_at`` as text. Foundation writes ``YYYY-MM-DD HH:MM:SS.ffffff`` in
UTC, whose text order is time order, so ``get(after=…, before=…)`` compared the column
with the bound as text. Plain SQL may write the other ISO forms migration 0015 takes
(``'T'``, no seconds, ``Z``, an offset such as ``+05:00``), whose text order is not their
time order: ``'2026-11-30T12:00:00+05:00'`` (07:00 UTC) sorted after 08:00 UTC.

The readers now compare those rows by their time in UTC, written as Foundation writes it,
and this partial index holds that time for them alone: nothing for a log Foundation alone
writes (its maintenance costs Foundation's inserts one test of the text's shape), and for
a log plain SQL writes too (``CURRENT_TIMESTAMP``, say) a time-bounded read finds those
rows by range, as the ``recorded_at`` index finds Foundation's. PostgreSQL's
``timestamptz`` compares times already: nothing there.

SQLite uses an expression index only for a query that repeats its expression and its WHERE
in the same words: ``foundation.events._store``'s ``SQLITE_UTC_TIME`` and
``SQLITE_OWN_TIME`` (negated), copied here as they were when this revision was written
(SQLite's ``strftime`` takes offsets of at most 14 hours: the offset, 0015's up to 23:59,
is applied in minutes; the digits of a second are kept as written, not rounded).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The offset's length (Z: 1, +HH:MM: 6), and the seconds with their fraction (":SS.fff").
_N = (
    "(CASE WHEN recorded_at GLOB '*Z' THEN 1"
    " WHEN substr(recorded_at, 17) GLOB '*[+-]*' THEN 6 ELSE 0 END)"
)
_S = f"substr(recorded_at, 17, length(recorded_at) - 16 - {_N})"
UTC_TIME = (
    f"strftime('%Y-%m-%d %H:%M:%S', substr(recorded_at, 1, 16) || substr({_S}, 1, 3),"
    f" CASE WHEN {_N} = 6"
    " THEN CASE WHEN substr(recorded_at, -6, 1) = '+' THEN '-' ELSE '+' END"
    " || (substr(recorded_at, -5, 2) * 60 + substr(recorded_at, -2, 2)) || ' minutes'"
    " ELSE '+0 minutes' END)"
    f" || '.' || substr(substr({_S}, 5) || '000000', 1, 6)"
)
OWN_TIME = "recorded_at GLOB '????-??-?? ??:??:??.?????[0-9]'"
SQLITE_ADD = (
    f"CREATE INDEX ix_foundation_events_other_times ON foundation_events ({UTC_TIME})"
    f" WHERE NOT ({OWN_TIME})"
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(SQLITE_ADD)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP INDEX IF EXISTS ix_foundation_events_other_times")
