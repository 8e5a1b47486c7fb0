"""The log refuses a row its readers cannot read: an id that is not a UUID's text.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30

``foundation_events.id`` is text (``VARCHAR(36)``), and an INSERT made with plain SQL
could put anything there: ``'order-42'`` stopped every reader of the log at that row
(``get``, ``tail``, every subscription reaching it) for good, since the log is
append-only; ``'DEADBEEF-…'`` (upper case) is another text than the lower-case id a
``store`` of the same UUID looks up, so the log could hold one UUID twice. An id must
now be a UUID's canonical text, lower case, as Foundation writes it, and ``metadata`` a
JSON object. SQLite also checks what PostgreSQL's column types do by themselves: ``data``
JSON text, ``recorded_at`` a date and time in ISO text, ``stream_version`` an integer.

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
            RAISE EXCEPTION 'foundation_events: the id must be a UUID in lower-case text, not %',
                NEW.id USING ERRCODE = 'check_violation';
        END IF;
        IF jsonb_typeof(NEW.metadata) <> 'object' THEN
            RAISE EXCEPTION 'foundation_events: the metadata must be a JSON object, not %',
                left(NEW.metadata::text, 100) USING ERRCODE = 'check_violation';
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

# One condition per rule (a UUID's text: 36 characters, lower-case hexadecimal digits and
# dashes, 8-4-4-4-12). A row that breaks none costs the WHEN clause only; the body names
# the rule it breaks.
SQLITE_ADD = """
    CREATE TRIGGER foundation_events_valid_row BEFORE INSERT ON foundation_events
    WHEN NOT (
        (length(NEW.id) = 36 AND length(replace(NEW.id, '-', '')) = 32
         AND NEW.id NOT GLOB '*[^0-9a-f-]*' AND substr(NEW.id, 9, 1) = '-'
         AND substr(NEW.id, 14, 1) = '-' AND substr(NEW.id, 19, 1) = '-'
         AND substr(NEW.id, 24, 1) = '-')
        AND (typeof(NEW.data) = 'text' AND json_valid(NEW.data))
        AND (typeof(NEW.metadata) = 'text' AND CASE WHEN json_valid(NEW.metadata)
             THEN json_type(NEW.metadata) = 'object' ELSE 0 END)
        AND (typeof(NEW.recorded_at) = 'text'
             AND NEW.recorded_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*'
             AND julianday(NEW.recorded_at) IS NOT NULL)
        AND (NEW.stream_version IS NULL OR typeof(NEW.stream_version) = 'integer'))
    BEGIN
        SELECT RAISE(ABORT, 'foundation_events: the id must be a UUID in lower-case text')
        WHERE NOT (length(NEW.id) = 36 AND length(replace(NEW.id, '-', '')) = 32
                   AND NEW.id NOT GLOB '*[^0-9a-f-]*' AND substr(NEW.id, 9, 1) = '-'
                   AND substr(NEW.id, 14, 1) = '-' AND substr(NEW.id, 19, 1) = '-'
                   AND substr(NEW.id, 24, 1) = '-');
        SELECT RAISE(ABORT, 'foundation_events: the data must be JSON text')
        WHERE NOT (typeof(NEW.data) = 'text' AND json_valid(NEW.data));
        SELECT RAISE(ABORT, 'foundation_events: the metadata must be a JSON object')
        WHERE NOT (typeof(NEW.metadata) = 'text' AND CASE WHEN json_valid(NEW.metadata)
                   THEN json_type(NEW.metadata) = 'object' ELSE 0 END);
        SELECT RAISE(ABORT, 'foundation_events: recorded_at must be an ISO date and time')
        WHERE NOT (typeof(NEW.recorded_at) = 'text'
                   AND NEW.recorded_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*'
                   AND julianday(NEW.recorded_at) IS NOT NULL);
        SELECT RAISE(ABORT, 'foundation_events: the stream_version must be an integer');
    END
"""
SQLITE_DROP = ("DROP TRIGGER foundation_events_valid_row",)


def upgrade() -> None:
    for statement in (SQLITE_ADD,) if op.get_bind().dialect.name == "sqlite" else PG_ADD:
        op.execute(statement)


def downgrade() -> None:
    for statement in SQLITE_DROP if op.get_bind().dialect.name == "sqlite" else PG_DROP:
        op.execute(statement)
