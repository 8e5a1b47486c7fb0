"""Functions that name tables find them in their own schema; SQLite's config history
refuses REPLACE.

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29

PostgreSQL looks up the tables a function body names through the *caller's*
``search_path``. Foundation's own connections set it to the ``postgres_schema``
setting; a plain-SQL session (psql, an admin tool, an auditor) does not. With Foundation
in a schema of its own, ``UPDATE fdn.foundation_config …`` typed in psql failed in the
audit trigger (``relation "foundation_config_history" does not exist``), or, with
another Foundation install in ``public``, wrote the history row and the
``foundation.config.changed`` event into *that* install's tables, leaving none in its
own. Each function that names a table now runs with ``search_path`` set to the schema
it lives in (``pg_temp`` last, so a temporary table cannot stand in for one of
Foundation's). ``CREATE OR REPLACE FUNCTION`` drops that setting: a later revision that
replaces one of these functions must set it again.

SQLite: ``REPLACE INTO foundation_config_history`` (or ``INSERT OR REPLACE``) deleted the
row it conflicted with without firing its DELETE guard, so a recorded change could be
rewritten; 0009 closed the same hole in the event log. A BEFORE INSERT trigger now
refuses a row whose id is already there.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Runs ALTER FUNCTION <each> ACTION for every overload of each function (0008 kept
# foundation_append_events' first signature) in the schema the migration runs in (env.py
# sets it from postgres_schema); %I is that schema, quoted.
PG_EACH_FUNCTION = """
    DO $$
    DECLARE
        fn regprocedure;
    BEGIN
        FOR fn IN
            SELECT p.oid::regprocedure FROM pg_proc p
            WHERE p.pronamespace = current_schema()::regnamespace
              AND p.proname IN ('foundation_config_audit', 'foundation_config_changed_event',
                                'foundation_append_events', 'foundation_lease_live')
        LOOP
            EXECUTE format('ALTER FUNCTION %s ACTION', fn, current_schema());
        END LOOP;
    END
    $$
"""
PG_SET_SEARCH_PATH = "SET search_path = %I, pg_temp"
PG_RESET_SEARCH_PATH = "RESET search_path"

SQLITE_HISTORY_NO_REPLACE = """
    CREATE TRIGGER foundation_config_history_no_replace
    BEFORE INSERT ON foundation_config_history
    WHEN EXISTS (SELECT 1 FROM foundation_config_history WHERE id = NEW.id)
    BEGIN
        SELECT RAISE(ABORT,
            'foundation_config_history is append-only: REPLACE of a change is refused');
    END
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_EACH_FUNCTION.replace("ACTION", PG_SET_SEARCH_PATH))
    else:
        op.execute(SQLITE_HISTORY_NO_REPLACE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_EACH_FUNCTION.replace("ACTION", PG_RESET_SEARCH_PATH))
    else:
        op.execute("DROP TRIGGER foundation_config_history_no_replace")
