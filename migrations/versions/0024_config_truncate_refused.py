"""PostgreSQL refuses ``TRUNCATE foundation_config``.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-01

Row triggers do not fire on ``TRUNCATE``: an operator emptying the config table with it
wrote no history row and no ``foundation.config.changed`` event, and sent no
notification. Running nodes kept serving the old values for good (a fresh node read
none), and a key inserted again by hand at revision 1 was below what they held, so they
never read it either. The table now refuses ``TRUNCATE``, as the history and the event
log do; ``DELETE`` (each key's removal recorded, and told to every node) does the same
job. SQLite has no ``TRUNCATE``: its ``DELETE`` without ``WHERE`` fires the row triggers.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_UPGRADE = [
    """
    CREATE FUNCTION foundation_config_no_truncate() RETURNS trigger
    LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
    BEGIN
        RAISE EXCEPTION 'foundation_config: TRUNCATE is refused (running nodes would not '
                        'see it, and the history would not record it)'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'DELETE FROM foundation_config removes keys: each removal is '
                         'recorded and reaches every node.';
    END
    $$
    """,
    """
    CREATE TRIGGER foundation_config_no_truncate
        BEFORE TRUNCATE ON foundation_config
        FOR EACH STATEMENT EXECUTE FUNCTION foundation_config_no_truncate()
    """,
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for statement in PG_UPGRADE:
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER foundation_config_no_truncate ON foundation_config")
        op.execute("DROP FUNCTION foundation_config_no_truncate()")
