"""A shared breaker's state is one of the three a breaker has.

Revision ID: 0021
Revises: 0020
Create Date: 2026-11-30

``UPDATE foundation_breakers SET state = 'CLOSED'`` (an operator closing a breaker by
hand, in capitals) was taken, and every node then refused every call through it, for
good: a state none of ``closed``, ``open`` and ``half_open`` reads as no state a call
may pass. Now the database refuses it, by BEFORE triggers on both databases (SQLite's
tables take no new constraint, and a PostgreSQL CHECK would first have to hold for every
row already there: a row written so before this revision is left, and ``reset()`` closes
it; the nodes name it in the error they raise).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_UPGRADE = [
    """
    CREATE FUNCTION foundation_breakers_state_known() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
    BEGIN
        IF NEW.state NOT IN ('closed', 'open', 'half_open') THEN
            RAISE EXCEPTION 'foundation_breakers: the state must be closed, open or half_open'
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END
    $$
    """,
    """
    CREATE TRIGGER foundation_breakers_state_known
        BEFORE INSERT OR UPDATE OF state ON foundation_breakers
        FOR EACH ROW EXECUTE FUNCTION foundation_breakers_state_known()
    """,
]
_SQLITE_RAISE = """
    WHEN NEW.state NOT IN ('closed', 'open', 'half_open')
    BEGIN
        SELECT RAISE(ABORT, 'foundation_breakers: the state must be closed, open or half_open');
    END
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in PG_UPGRADE:
            op.execute(statement)
        return
    op.execute(
        "CREATE TRIGGER foundation_breakers_state_insert BEFORE INSERT ON foundation_breakers"
        + _SQLITE_RAISE
    )
    op.execute(
        "CREATE TRIGGER foundation_breakers_state_update"
        " BEFORE UPDATE OF state ON foundation_breakers" + _SQLITE_RAISE
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER foundation_breakers_state_known ON foundation_breakers")
        op.execute("DROP FUNCTION foundation_breakers_state_known()")
        return
    op.execute("DROP TRIGGER foundation_breakers_state_insert")
    op.execute("DROP TRIGGER foundation_breakers_state_update")
