"""Audit views over the service registry: which names are live, as Foundation decides it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29

A row of ``foundation_registry`` is not an answer by itself: an entry lives while its
node's lease generation does (``foundation_leases``), and until its own ``expires_at``
(NULL: no TTL of its own). A killed node leaves its rows and its lease behind, and only
the lease's expiry says they are dead. ``foundation_audit_registry`` joins the two and
says it in a column, ``state``:

* ``live``: held, as ``lookup`` would answer;
* ``lease expired``: its node stopped renewing (killed, paused, cut off); another node
  may take the name;
* ``ttl expired``: past the registration's own TTL;
* ``unregistered``: a tombstone, kept so that the name's ``epoch`` (the fencing token)
  keeps growing across registrations.

``foundation_audit_registry_members`` does the same for group members (no tombstones:
a member that leaves is deleted). Both are read-only views, computed with the database's
clock (SQLite: the machine's, in UTC, as Foundation writes the times).
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The database's "now", in the form each backend stores times (SQLite: UTC text, the
# format Foundation writes, compared as text): it replaces NOW in the views below.
NOW = {
    "postgresql": "now()",
    "sqlite": "strftime('%Y-%m-%d %H:%M:%f', 'now')",
}

REGISTRY_VIEW = """
    CREATE VIEW foundation_audit_registry AS
    SELECT r.name, r.node_id, r.address, r.metadata, r.epoch,
           CASE
               WHEN r.node_id IS NULL THEN 'unregistered'
               WHEN l.node_id IS NULL OR l.expires_at <= NOW THEN 'lease expired'
               WHEN r.expires_at IS NOT NULL AND r.expires_at <= NOW THEN 'ttl expired'
               ELSE 'live'
           END AS state,
           r.registered_at, r.updated_at, r.expires_at AS entry_expires_at,
           l.expires_at AS lease_expires_at
    FROM foundation_registry r
    LEFT JOIN foundation_leases l
        ON l.node_id = r.node_id AND l.generation = r.lease_generation
"""

MEMBERS_VIEW = """
    CREATE VIEW foundation_audit_registry_members AS
    SELECT m.group_name, m.member_id, m.node_id, m.address, m.metadata,
           CASE
               WHEN l.node_id IS NULL OR l.expires_at <= NOW THEN 'lease expired'
               ELSE 'live'
           END AS state,
           m.joined_at, l.expires_at AS lease_expires_at
    FROM foundation_registry_members m
    LEFT JOIN foundation_leases l
        ON l.node_id = m.node_id AND l.generation = m.lease_generation
"""


def upgrade() -> None:
    now = NOW[op.get_bind().dialect.name]
    op.execute(REGISTRY_VIEW.replace("NOW", now))
    op.execute(MEMBERS_VIEW.replace("NOW", now))


def downgrade() -> None:
    op.execute("DROP VIEW foundation_audit_registry_members")
    op.execute("DROP VIEW foundation_audit_registry")
