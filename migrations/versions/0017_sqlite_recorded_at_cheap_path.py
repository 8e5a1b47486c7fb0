"""SQLite: the recorded_at rule takes Foundation's own rows of days 29 to 31 on its cheap
path, and 7 to 9 digits of a second (.NET writes 7, Go 9).

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30

An earlier text of migration 0015 sent every row of the 29th, 30th or 31st of a month
down its trigger's slow path (about 15 µs more per insert, Foundation's own rows
included), and refused a fraction of 7 to 9 digits, which ``datetime.fromisoformat`` and
Foundation's reader take. 0015 as it stands writes the trigger with both rules (and a
message that says ``.fraction``); a database upgraded by the earlier text still has the
old one. This revision makes the trigger anew from 0015's text: the rules of 0015 as it
stands, whichever text ran. A downgrade keeps it (it is 0015's). PostgreSQL's function
was the same in both texts: nothing there.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _sqlite_add_of_0015() -> str:
    path = Path(__file__).with_name("0015_events_recorded_at_rules.py")
    spec = importlib.util.spec_from_file_location("foundation_migration_0015", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text: str = module.SQLITE_ADD
    return text


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER foundation_events_valid_row")
        op.execute(_sqlite_add_of_0015())


def downgrade() -> None:
    pass  # the trigger is 0015's, as 0015 writes it
