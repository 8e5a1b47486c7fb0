"""The service registry: leases and entries (filled by the registry work).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28

``foundation_leases`` holds one row per Foundation instance; ``foundation_registry`` one
row per name (kept as a tombstone after unregister, so the per-name epoch never goes
back) and ``foundation_registry_members`` one row per group member. On PostgreSQL
triggers publish every change on the ``foundation`` channel with topic ``registry``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONValue = sa.Text().with_variant(postgresql.JSONB(), "postgresql")
Timestamp = sa.DateTime(timezone=True)

PG_STATEMENTS = [
    # VOLATILE (and plpgsql, so never inlined): each call takes a fresh snapshot, so a
    # register that waited on a row lock sees a lease committed after it began.
    """
    CREATE FUNCTION foundation_lease_live(p_node text, p_generation bigint) RETURNS boolean
    LANGUAGE plpgsql VOLATILE AS $$
    BEGIN
        RETURN EXISTS (SELECT 1 FROM foundation_leases
                       WHERE node_id = p_node AND generation = p_generation
                         AND expires_at > now());
    END
    $$
    """,
    """
    CREATE FUNCTION foundation_leases_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            PERFORM pg_notify('foundation', json_build_object(
                'topic', 'registry', 'kind', 'lease', 'node', OLD.node_id,
                'generation', OLD.generation, 'expires', 0, 'deleted', true)::text);
            RETURN NULL;
        END IF;
        PERFORM pg_notify('foundation', json_build_object(
            'topic', 'registry', 'kind', 'lease', 'node', NEW.node_id,
            'generation', NEW.generation,
            'expires', extract(epoch FROM NEW.expires_at)::float8)::text);
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER foundation_leases_notify
        AFTER INSERT OR UPDATE OR DELETE ON foundation_leases
        FOR EACH ROW EXECUTE FUNCTION foundation_leases_notify()
    """,
    """
    CREATE FUNCTION foundation_registry_notify() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            PERFORM pg_notify('foundation', json_build_object(
                'topic', 'registry', 'kind', 'name', 'name', OLD.name,
                'revision', OLD.revision + 1, 'deleted', true)::text);
            RETURN NULL;
        END IF;
        PERFORM pg_notify('foundation', json_build_object(
            'topic', 'registry', 'kind', 'name', 'name', NEW.name,
            'revision', NEW.revision, 'deleted', NEW.node_id IS NULL)::text);
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER foundation_registry_notify
        AFTER INSERT OR UPDATE OR DELETE ON foundation_registry
        FOR EACH ROW EXECUTE FUNCTION foundation_registry_notify()
    """,
    """
    CREATE FUNCTION foundation_registry_members_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' THEN
            PERFORM pg_notify('foundation', json_build_object(
                'topic', 'registry', 'kind', 'member', 'group', OLD.group_name,
                'member', OLD.member_id, 'revision', OLD.revision + 1,
                'deleted', true)::text);
            RETURN NULL;
        END IF;
        PERFORM pg_notify('foundation', json_build_object(
            'topic', 'registry', 'kind', 'member', 'group', NEW.group_name,
            'member', NEW.member_id, 'revision', NEW.revision, 'deleted', false)::text);
        RETURN NULL;
    END
    $$
    """,
    """
    CREATE TRIGGER foundation_registry_members_notify
        AFTER INSERT OR UPDATE OR DELETE ON foundation_registry_members
        FOR EACH ROW EXECUTE FUNCTION foundation_registry_members_notify()
    """,
]


def upgrade() -> None:
    op.create_table(
        "foundation_leases",
        sa.Column("node_id", sa.String(255), nullable=False),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.Column("ttl_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", Timestamp, nullable=False),
        sa.Column("renewed_at", Timestamp, nullable=False),
        sa.Column("started_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("node_id", name=op.f("pk_foundation_leases")),
        comment="One lease per Foundation instance, renewed by its heartbeat.",
    )
    op.create_table(
        "foundation_registry",
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("address", JSONValue, nullable=True),
        sa.Column("metadata", JSONValue, nullable=True),
        sa.Column("node_id", sa.String(255), nullable=True),
        sa.Column("lease_generation", sa.BigInteger(), nullable=True),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("ttl_ms", sa.BigInteger(), nullable=True),
        sa.Column("expires_at", Timestamp, nullable=True),
        sa.Column("registered_at", Timestamp, nullable=False),
        sa.Column("updated_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_foundation_registry")),
        comment="Cluster-wide names; an entry lives while its node's lease generation does.",
    )
    op.create_index("ix_foundation_registry_node_id", "foundation_registry", ["node_id"])
    op.create_table(
        "foundation_registry_members",
        sa.Column("group_name", sa.String(255), nullable=False),
        sa.Column("member_id", sa.String(255), nullable=False),
        sa.Column("address", JSONValue, nullable=False),
        sa.Column("metadata", JSONValue, nullable=False),
        sa.Column("node_id", sa.String(255), nullable=False),
        sa.Column("lease_generation", sa.BigInteger(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("joined_at", Timestamp, nullable=False),
        sa.PrimaryKeyConstraint(
            "group_name", "member_id", name=op.f("pk_foundation_registry_members")
        ),
        comment="Service groups: many members per group, each hanging off its node's lease.",
    )
    op.create_index(
        "ix_foundation_registry_members_node_id", "foundation_registry_members", ["node_id"]
    )
    if op.get_bind().dialect.name == "postgresql":
        for statement in PG_STATEMENTS:
            op.execute(statement)


def downgrade() -> None:
    op.drop_index("ix_foundation_registry_members_node_id", "foundation_registry_members")
    op.drop_table("foundation_registry_members")
    op.drop_index("ix_foundation_registry_node_id", "foundation_registry")
    op.drop_table("foundation_registry")
    op.drop_table("foundation_leases")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION foundation_registry_members_notify()")
        op.execute("DROP FUNCTION foundation_registry_notify()")
        op.execute("DROP FUNCTION foundation_leases_notify()")
        op.execute("DROP FUNCTION foundation_lease_live(text, bigint)")
