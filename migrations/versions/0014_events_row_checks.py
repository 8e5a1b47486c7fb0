"""The log refuses a row its readers cannot read: an id that is not a UUID's text.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30

``foundation_events.id`` is text (``VARCHAR(36)``), and an INSERT made with plain SQL
could put anything there: ``'order-42'`` stopped every reader of the log at that row
(``get``, ``tail``, every subscription reaching it) for good, since the log is
append-only; ``'DEADBEEF-…'`` (upper case) is another text than the lower-case id a
``store`` of the same UUID looks up, so the log could hold one UUID twice. An id must
now be a UUID's canonical text, lower case, as Foundation writes it. SQLite also checks
that ``data`` and ``metadata`` are JSON (PostgreSQL's ``jsonb`` does by itself).

Both as a BEFORE INSERT trigger: a CHECK constraint would mean rebuilding the table on
SQLite, and on PostgreSQL either a scan of the whole log under its strongest lock or a
``NOT VALID`` constraint, which SQLAlchemy's reflection (``alembic check``) trips on.
Rows already written are not checked: they are the readers' concern, which name the
position of a row they cannot read.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_ADD = (
    r"""
    CREATE FUNCTION foundation_events_valid_row() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
    BEGIN
        IF NEW.id !~ '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN
            RAISE EXCEPTION 'foundation_events: an id is a lower-case UUID, not %',
                NEW.id USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER foundation_events_valid_row BEFORE INSERT ON foundation_events
        FOR EACH ROW EXECUTE FUNCTION foundation_events_valid_row()
    """,
)
PG_DROP = (
    "DROP TRIGGER foundation_events_valid_row ON foundation_events",
    "DROP FUNCTION foundation_events_valid_row()",
)

# A UUID's canonical text, lower case: 8-4-4-4-12 hexadecimal digits (GLOB has no counts).
SQLITE_ADD = """
    CREATE TRIGGER foundation_events_valid_row BEFORE INSERT ON foundation_events
    WHEN NOT (NEW.id GLOB
              '[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f]-[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]'
              AND length(NEW.id) = 36)
      OR NOT json_valid(NEW.data)
      OR NOT json_valid(NEW.metadata)
    BEGIN
        SELECT RAISE(ABORT, 'foundation_events: an id is a lower-case UUID, data JSON');
    END
"""
SQLITE_DROP = ("DROP TRIGGER foundation_events_valid_row",)


def upgrade() -> None:
    for statement in (SQLITE_ADD,) if op.get_bind().dialect.name == "sqlite" else PG_ADD:
        op.execute(statement)


def downgrade() -> None:
    for statement in SQLITE_DROP if op.get_bind().dialect.name == "sqlite" else PG_DROP:
        op.execute(statement)
