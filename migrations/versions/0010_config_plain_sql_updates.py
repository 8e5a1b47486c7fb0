"""A config change made with plain SQL gets its own revision and its real author.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29

``UPDATE foundation_config SET value = '2' WHERE key = 'port'`` (psql, sqlite3: the
least-privilege grants allow it) left ``revision`` and ``updated_by`` as the previous
writer left them. The history then named that writer, and nodes never applied the
change: each keeps a key's newest revision and ignores any row at or below it. Now an
UPDATE that does not raise the revision is stamped as a change of its own: revision
``OLD.revision + 1``, ``updated_by`` the actor (``'sql:' || current_user`` on PostgreSQL,
``'sql'`` on SQLite, as 0001's DELETE branch records), ``updated_at`` now, no correlation
id. Foundation's own writes always raise the revision, so they are untouched.

PostgreSQL: a BEFORE UPDATE trigger rewrites ``NEW``; its ``WHEN`` clause keeps the
function out of Foundation's own writes. 0001's AFTER trigger then records the history
row and sends the NOTIFY from the stamped row, and 0005's appends the event, once each.

SQLite cannot assign ``NEW`` in a trigger, so the stamp is an AFTER UPDATE trigger that
writes the history row itself (from the statement's ``OLD`` and ``NEW``: the true old and
new values) and then re-updates the row's revision, author and time. 0001's audit
trigger is recreated as ``AFTER UPDATE OF value, deleted … WHEN NEW.revision >
OLD.revision``: it records Foundation's writes (and plain SQL that raises the revision
itself) and never fires for the stamp's re-update, which sets neither column. So one
history row and one ``foundation.config.changed`` event (0009's trigger on the history)
come out per change, whether or not a connection sets ``recursive_triggers`` (with it on,
the stamp fires again for its own re-update, and its ``WHEN`` is false). The SQLite
change feed polls history ids, so the new row reaches running nodes.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_STATEMENTS = [
    """
    CREATE FUNCTION foundation_config_stamp_sql() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        NEW.revision := OLD.revision + 1;
        NEW.updated_by := 'sql:' || current_user;
        NEW.updated_at := now();
        NEW.correlation_id := NULL;
        RETURN NEW;
    END
    $$
    """,
    """
    CREATE TRIGGER foundation_config_stamp_sql
        BEFORE UPDATE ON foundation_config
        FOR EACH ROW WHEN (NEW.revision <= OLD.revision)
        EXECUTE FUNCTION foundation_config_stamp_sql()
    """,
]

_HEADER = "CREATE TRIGGER foundation_config_audit_update AFTER UPDATE ON foundation_config\n"
_STAMPED_BY_NEW = "NEW.revision, NEW.updated_at, NEW.updated_by, NEW.correlation_id);\n"
# The history row as a plain-SQL change, then the row itself given that revision and author.
_STAMPED_BY_SQL = """OLD.revision + 1, strftime('%Y-%m-%d %H:%M:%f', 'now'), 'sql', NULL);
        UPDATE foundation_config
        SET revision = OLD.revision + 1, updated_by = 'sql',
            updated_at = strftime('%Y-%m-%d %H:%M:%f', 'now'), correlation_id = NULL
        WHERE key = NEW.key;
"""


def _initial_revision() -> object:
    """0001's module: its audit trigger is what a downgrade restores."""
    path = Path(__file__).with_name("0001_initial.py")
    spec = importlib.util.spec_from_file_location("foundation_migration_0001", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sqlite_audit_update_of_0001() -> str:
    text: str = _initial_revision().SQLITE_TRIGGERS[1]  # type: ignore[attr-defined]
    if text.count(_HEADER) != 1 or text.count(_STAMPED_BY_NEW) != 1:
        raise RuntimeError("0001's SQLite trigger is not the one this revision replaces")
    return text


def _sqlite_audit_update() -> str:
    """0001's trigger, for the updates that raise the revision (Foundation's own)."""
    return _sqlite_audit_update_of_0001().replace(
        _HEADER,
        "CREATE TRIGGER foundation_config_audit_update\n"
        "    AFTER UPDATE OF value, deleted ON foundation_config\n"
        "    WHEN NEW.revision > OLD.revision\n",
    )


def _sqlite_stamp() -> str:
    """0001's history insert, stamped as a plain-SQL change, then the row re-stamped."""
    return (
        _sqlite_audit_update_of_0001()
        .replace(
            _HEADER,
            "CREATE TRIGGER foundation_config_stamp_sql AFTER UPDATE ON foundation_config\n"
            "    WHEN NEW.revision <= OLD.revision\n",
        )
        .replace(_STAMPED_BY_NEW, _STAMPED_BY_SQL)
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in PG_STATEMENTS:
            op.execute(statement)
        return
    op.execute("DROP TRIGGER foundation_config_audit_update")
    op.execute(_sqlite_audit_update())
    op.execute(_sqlite_stamp())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER foundation_config_stamp_sql ON foundation_config")
        op.execute("DROP FUNCTION foundation_config_stamp_sql()")
        return
    op.execute("DROP TRIGGER foundation_config_stamp_sql")
    op.execute("DROP TRIGGER foundation_config_audit_update")
    op.execute(_sqlite_audit_update_of_0001())
