"""SQLite: a config change made with plain SQL is stamped to the microsecond.

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-29

Foundation writes its times as ``YYYY-MM-DD HH:MM:SS.ffffff``; the triggers that stamp a
plain-SQL change (0001's for a DELETE, 0010's for an UPDATE) used SQLite's
``strftime('%f')``, three digits (``… 22:42:31.549``). 0009's event for that change pads
it to six, so the history row and its ``foundation.config.changed`` event disagreed as
text, and an auditor's ``changed_at >= (SELECT recorded_at …)`` or a join on the two
missed the change. The triggers now append ``000``. Rows already written keep their
three digits (the history is append-only). PostgreSQL stores ``timestamptz``: nothing to do.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_MILLIS = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
_MICROS = _MILLIS + " || '000'"
_DELETE_HEADER = "CREATE TRIGGER foundation_config_audit_delete"


def _revision(stem: str) -> ModuleType:
    """An earlier revision's module: its trigger text is what this one pads (and what a
    downgrade restores)."""
    path = Path(__file__).with_name(f"{stem}.py")
    spec = importlib.util.spec_from_file_location(f"foundation_migration_{stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stamp_of_0010() -> str:
    text: str = _revision("0010_config_plain_sql_updates")._sqlite_stamp()
    if text.count(_MILLIS) != 2:
        raise RuntimeError("0010's SQLite stamp is not the one this revision replaces")
    return text


def _delete_of_0001() -> str:
    triggers: list[str] = _revision("0001_initial").SQLITE_TRIGGERS
    found = [t for t in triggers if _DELETE_HEADER in t]
    if len(found) != 1 or found[0].count(_MILLIS) != 1:
        raise RuntimeError("0001's SQLite delete trigger is not the one this revision replaces")
    return found[0]


def _swap(stamp: str, delete: str) -> None:
    op.execute("DROP TRIGGER foundation_config_stamp_sql")
    op.execute("DROP TRIGGER foundation_config_audit_delete")
    op.execute(stamp)
    op.execute(delete)


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    _swap(
        _stamp_of_0010().replace(_MILLIS, _MICROS),
        _delete_of_0001().replace(_MILLIS, _MICROS),
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    _swap(_stamp_of_0010(), _delete_of_0001())
