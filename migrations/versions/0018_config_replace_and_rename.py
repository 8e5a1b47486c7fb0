"""SQLite: a plain-SQL ``REPLACE INTO foundation_config`` records the value it replaced;
a config key is not renamed.

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-30

SQLite's ``REPLACE`` (``INSERT OR REPLACE``) of an existing key deletes the old row
without firing its DELETE trigger (``recursive_triggers`` is off), then inserts: 0001's
INSERT trigger wrote the change as ``old = NULL``, and the ``foundation.config.changed``
event of 0005 with it, though the key held a value. The INSERT trigger now takes ``old``
from the key's latest history row, whose ``new_value`` is the value the key held (NULL
for a new key, or one deleted: the history records every change, by any hand). The
history's ``(key, id)`` index finds it. PostgreSQL has no ``REPLACE``.

That history is the key's whole story only if a key is never renamed: ``UPDATE
foundation_config SET key = 'b' WHERE key = 'a'`` recorded a change of ``b`` (its old
value ``a``'s) and nothing of ``a``, so a new ``a`` would have read ``a``'s last value as
its old one. A key is an identity (watchers, history, the change events name it): a
rename is refused on both databases, naming the way to do it (delete, then set).
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INSERT_HEADER = "CREATE TRIGGER foundation_config_audit_insert"
_OLD_NULL = "CASE WHEN NEW.deleted THEN 'delete' ELSE 'set' END, NULL,"
_OLD_HELD = (
    "CASE WHEN NEW.deleted THEN 'delete' ELSE 'set' END,\n"
    "                (SELECT h.new_value FROM foundation_config_history AS h\n"
    "                 WHERE h.key = NEW.key ORDER BY h.id DESC LIMIT 1),"
)


def _insert_of_0001() -> str:
    """0001's SQLite INSERT trigger, word for word: what this revision edits, and what a
    downgrade restores."""
    path = Path(__file__).with_name("0001_initial.py")
    spec = importlib.util.spec_from_file_location("foundation_migration_0001", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    found = [t for t in module.SQLITE_TRIGGERS if _INSERT_HEADER in t]
    if len(found) != 1 or found[0].count(_OLD_NULL) != 1:
        raise RuntimeError("0001's SQLite insert trigger is not the one this revision edits")
    text: str = found[0]
    return text


SQLITE_NO_RENAME = """
    CREATE TRIGGER foundation_config_no_rename BEFORE UPDATE OF key ON foundation_config
    WHEN OLD.key IS NOT NEW.key
    BEGIN
        SELECT RAISE(ABORT, 'foundation_config: a key is not renamed; delete it and set the new key');
    END
"""  # noqa: E501 (a message SQLite takes as one literal)

PG_NO_RENAME = [
    """
    CREATE FUNCTION foundation_config_no_rename() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'foundation_config: a key is not renamed; delete it and set the new key (%, to %)',
            OLD.key, NEW.key USING ERRCODE = 'check_violation';
    END
    $$
    """,  # noqa: E501 (a message PL/pgSQL takes as one literal)
    """
    CREATE TRIGGER foundation_config_no_rename
        BEFORE UPDATE OF key ON foundation_config
        FOR EACH ROW WHEN (OLD.key IS DISTINCT FROM NEW.key)
        EXECUTE FUNCTION foundation_config_no_rename()
    """,
]


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        for statement in PG_NO_RENAME:
            op.execute(statement)
        return
    op.execute("DROP TRIGGER foundation_config_audit_insert")
    op.execute(_insert_of_0001().replace(_OLD_NULL, _OLD_HELD))
    op.execute(SQLITE_NO_RENAME)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.execute("DROP TRIGGER foundation_config_no_rename ON foundation_config")
        op.execute("DROP FUNCTION foundation_config_no_rename()")
        return
    op.execute("DROP TRIGGER foundation_config_no_rename")
    op.execute("DROP TRIGGER foundation_config_audit_insert")
    op.execute(_insert_of_0001())
