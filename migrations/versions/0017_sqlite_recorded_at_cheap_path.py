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

# 0015's trigger text, each of these made once (each must occur once in it).
EDITS = {
    # The WHEN clause's cheap path: a day past the 28th is a real date or not by date().
    "             AND substr(NEW.recorded_at, 9, 2) BETWEEN '01' AND '28'\n": (
        "             AND (substr(NEW.recorded_at, 9, 2) BETWEEN '01' AND '28'\n"
        "                  OR date(substr(NEW.recorded_at, 1, 10), '+0 days')\n"
        "                     IS substr(NEW.recorded_at, 1, 10))\n"
    ),
    "[.ffffff]]]": "[.fraction]]]",
    # ":SS." and 1 to 9 digits
    "AND length(p) <= 10": "AND length(p) <= 13",
}


def _revision_0015() -> Any:
    """0015's module: its trigger is what this revision edits, and a downgrade restores."""
    path = Path(__file__).with_name("0015_events_recorded_at_rules.py")
    spec = importlib.util.spec_from_file_location("foundation_migration_0015", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def sqlite_add() -> str:
    text: str = _revision_0015().SQLITE_ADD
    for old, new in EDITS.items():
        if text.count(old) != 1:
            raise RuntimeError("0015's trigger is not the one this revision edits")
        text = text.replace(old, new)
    return text


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(SQLITE_DROP)
        op.execute(sqlite_add())


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute(SQLITE_DROP)
        op.execute(_revision_0015().SQLITE_ADD)
