"""The log refuses REPLACE on SQLite; config-change events get time-ordered ids.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29

SQLite: ``REPLACE INTO foundation_events …`` (or ``INSERT OR REPLACE``) deletes the row
it conflicts with without firing DELETE triggers (unless a connection sets
``recursive_triggers``), so 0002's guards let it rewrite a recorded event. A BEFORE
INSERT trigger now refuses any row whose position, id or stream version is already in
the log. An insert that would conflict fails either way; this makes the REPLACE and
``INSERT OR IGNORE`` forms fail too, with a message that says why. PostgreSQL has no
REPLACE, and ``INSERT … ON CONFLICT DO UPDATE`` fires 0002's UPDATE guard.

Config changes appended by 0005's trigger:

* ids were random (version 4) UUIDs; they are now version 7, time-ordered like the
  ids ``store`` generates (48 bits of Unix milliseconds of the change, then random bits).
* SQLite: ``recorded_at`` copied the config history's millisecond text
  (``2026-11-29 01:25:41.793``), while ``store`` writes microseconds
  (``…41.793000``); the two compare wrongly as text (``before=`` matched the event
  itself). New rows carry six digits. Rows already written keep their text: the log is
  append-only.
"""

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SQLITE_NO_REPLACE = """
    CREATE TRIGGER foundation_events_no_replace BEFORE INSERT ON foundation_events
    WHEN EXISTS (SELECT 1 FROM foundation_events WHERE position = NEW.position)
      OR EXISTS (SELECT 1 FROM foundation_events WHERE id = NEW.id)
      OR (NEW.stream_id IS NOT NULL AND EXISTS (
            SELECT 1 FROM foundation_events
            WHERE stream_id = NEW.stream_id AND stream_version = NEW.stream_version))
    BEGIN
        SELECT RAISE(ABORT, 'foundation_events is append-only: REPLACE of an event is refused');
    END
"""

# A version 7 UUID as text: the change's Unix milliseconds, then random bits.
_SQLITE_UUID7 = """
    (SELECT substr(t, 1, 8) || '-' || substr(t, 9, 4) || '-7' || substr(h, 1, 3)
            || '-' || substr('89ab', 1 + (abs(random()) % 4), 1) || substr(h, 4, 3)
            || '-' || substr(h, 7, 12)
     FROM (SELECT printf('%012x', CAST(round((julianday(NEW.changed_at) - 2440587.5)
                                             * 86400000.0) AS INTEGER)) AS t,
                  lower(hex(randomblob(9))) AS h))
"""

# SQLite: store()'s six fractional digits for the history's millisecond text.
_SQLITE_CHANGED_AT = (
    "NEW.correlation_id, NULL,\n"
    "                CASE WHEN length(NEW.changed_at) = 23 THEN NEW.changed_at || '000'\n"
    "                     ELSE NEW.changed_at END);"
)

# gen_random_uuid() with its first 48 bits replaced by the milliseconds, version 7.
_PG_UUID7 = """
    encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) placing
        substring(int8send(floor(extract(epoch FROM NEW.changed_at) * 1000)::bigint)
                  FROM 3) FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid::text
"""


def _audit_revision() -> Any:
    """0005's module: its statements are what a downgrade restores."""
    path = Path(__file__).with_name("0005_audit.py")
    spec = importlib.util.spec_from_file_location("foundation_migration_0005", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _values(uuid_sql: str) -> str:
    return f"VALUES ({uuid_sql},"


def _edited(text: str, edits: dict[str, str]) -> str:
    """0005's trigger text with each of ``edits`` made once (each must occur once)."""
    for old, new in edits.items():
        if text.count(old) != 1:
            raise RuntimeError("0005's config trigger is not the one this revision edits")
        text = text.replace(old, new)
    return text


def _pg_config_function(uuid_sql: str) -> str:
    return _edited(
        _audit_revision().PG_STATEMENTS[2],
        {
            "CREATE FUNCTION": "CREATE OR REPLACE FUNCTION",
            _values("gen_random_uuid()::text"): _values(uuid_sql),
        },
    )


def _sqlite_config_trigger() -> str:
    """0005's SQLite trigger with a version 7 id and six fractional digits."""
    audit = _audit_revision()
    return _edited(
        audit.SQLITE_STATEMENTS[2],
        {
            _values(audit._SQLITE_UUID): _values(_SQLITE_UUID7),
            "NEW.correlation_id, NULL, NEW.changed_at);": _SQLITE_CHANGED_AT,
        },
    )


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_pg_config_function(_PG_UUID7))
        return
    op.execute(SQLITE_NO_REPLACE)
    op.execute("DROP TRIGGER foundation_config_changed_event")
    op.execute(_sqlite_config_trigger())


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(_pg_config_function("gen_random_uuid()::text"))
        return
    op.execute("DROP TRIGGER foundation_config_changed_event")
    op.execute(_audit_revision().SQLITE_STATEMENTS[2])
    op.execute("DROP TRIGGER foundation_events_no_replace")
