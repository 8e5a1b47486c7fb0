"""SQLite: an index of the events whose ``recorded_at`` is not Foundation's own text.

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30

SQLite keeps ``recorded_at`` as text. Foundation writes ``YYYY-MM-DD HH:MM:SS.ffffff`` in
UTC, whose text order is time order, so ``get(after=…, before=…)`` compared the column
with the bound as text. Plain SQL may write the other ISO forms migration 0015 takes
(``'T'``, no seconds, ``Z``, an offset such as ``+05:00``), whose text order is not their
time order: ``'2026-11-30T12:00:00+05:00'`` (07:00 UTC) sorted after 08:00 UTC.

The readers now compare those rows by their time in UTC, and this partial index finds
them without reading the log: it holds only rows not in Foundation's form (none, for a
log Foundation alone writes; its maintenance costs Foundation's own inserts one test of
the text's shape). PostgreSQL's ``timestamptz`` compares times already: nothing there.

The index's WHERE must stay the very text of ``foundation.events._store.SQLITE_OWN_TIME``
(negated): SQLite uses a partial index only for a query that repeats its condition.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE_ADD = """
    CREATE INDEX ix_foundation_events_other_times ON foundation_events (position)
    WHERE NOT (length(recorded_at) = 26 AND substr(recorded_at, 11, 1) = ' '
               AND substr(recorded_at, 20, 1) = '.' AND substr(recorded_at, 26) BETWEEN '0' AND '9')
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(SQLITE_ADD)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP INDEX IF EXISTS ix_foundation_events_other_times")
