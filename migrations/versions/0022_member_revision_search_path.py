"""PostgreSQL: a member's revision comes from its own schema's sequence, whoever writes.

Revision ID: 0022
Revises: 0021
Create Date: 2026-11-30

0019's trigger function named its sequence without a schema and without a
``search_path`` of its own, so PostgreSQL looked the sequence up through the *caller's*
``search_path`` (0012 set one on each function that names a relation; 0019 came later).
With Foundation in a schema of its own, ``UPDATE fdn.foundation_registry_members …``
typed in psql failed (``relation "foundation_registry_members_revision_seq" does not
exist``), or, with another install in ``public``, took *that* install's sequence: the
member's revision went back, and running nodes never read the change. The function now
runs with ``search_path`` set to the schema it lives in, as 0012's do.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The schema the function lives in (found as the migration finds it: env.py sets the
# search_path from postgres_schema), quoted by %I. Not current_schema(): without
# postgres_schema, a schema named after the role, made after the install, comes first.
PG_UPGRADE = """
    DO $$
    DECLARE
        fn regprocedure := 'foundation_registry_member_revision()'::regprocedure;
    BEGIN
        EXECUTE format('ALTER FUNCTION %s SET search_path = %I, pg_temp', fn,
                       (SELECT n.nspname FROM pg_proc p
                        JOIN pg_namespace n ON n.oid = p.pronamespace WHERE p.oid = fn));
    END
    $$
"""
PG_DOWNGRADE = "ALTER FUNCTION foundation_registry_member_revision() RESET search_path"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_UPGRADE)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_DOWNGRADE)
