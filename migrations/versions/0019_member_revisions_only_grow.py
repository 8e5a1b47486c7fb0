"""PostgreSQL: a group member's revision only grows, across its leaves and joins.

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-30

A member's row is deleted on ``leave``, and a new ``join`` of the same member id started
its revision at 1 again. Every node's cache keeps a member at the revision it read, and
takes a row only when its revision is higher: a member that left and joined again (at
revision 1 once more) kept its former address and metadata in other nodes' caches for
good, and a snapshot read before a leave could bring the left member back. Here every
write of a member row takes its revision from one sequence, by a trigger, whatever
revision the statement gave (a node of an earlier release still running during a deploy
included). The sequence starts past every revision already in the table.

SQLite takes its member revisions from the ``registry.members`` topic of 0006 instead,
which only grows too (the join statement reads it: SQLite's triggers cannot change the
row they fire for). Nothing to migrate there.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PG_UPGRADE = [
    "CREATE SEQUENCE foundation_registry_members_revision_seq AS bigint",
    """
    SELECT setval('foundation_registry_members_revision_seq',
                  (SELECT coalesce(max(revision), 0) + 1 FROM foundation_registry_members),
                  false)
    """,
    """
    CREATE FUNCTION foundation_registry_member_revision() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        NEW.revision := nextval('foundation_registry_members_revision_seq');
        RETURN NEW;
    END
    $$
    """,
    """
    CREATE TRIGGER foundation_registry_member_revision
        BEFORE INSERT OR UPDATE ON foundation_registry_members
        FOR EACH ROW EXECUTE FUNCTION foundation_registry_member_revision()
    """,
]


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    for statement in PG_UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        return
    op.execute("DROP TRIGGER foundation_registry_member_revision ON foundation_registry_members")
    op.execute("DROP FUNCTION foundation_registry_member_revision()")
    op.execute("DROP SEQUENCE foundation_registry_members_revision_seq")
