"""Topic revisions for the SQLite change feed (registry, leases, members, breakers).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28

On SQLite every node polls ``PRAGMA data_version``, which moves on ANY commit to the file
(an event, a config value…). Triggers here append a row to ``foundation_topic_revisions``
in the writer's own transaction for every change to the registry, its leases and
members, and the breakers: the topic's next revision and the key that changed (deletes
included). A node then learns from one index seek per topic whether its topics moved, and
reads only the registry names above the revision it last saw.

The table is a log (primary key topic, revision; WITHOUT ROWID) because an append dirties
one page per write; every 1,000th revision of a topic the trigger drops that topic's rows
more than 10,000 revisions old, and a node that far behind re-reads everything.

PostgreSQL gets the table (one schema for both backends) but no triggers: NOTIFY already
carries each change there, and a per-topic sequence would serialise every registry and
breaker write of the cluster until commit.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEEP, PRUNE_EVERY = 10_000, 1_000

# (table, topic, the key column) as foundation.database.feed names the topics (a migration
# never imports the app).
TOPICS = [
    ("foundation_registry", "registry", "name"),
    ("foundation_leases", "registry.leases", "node_id"),
    ("foundation_registry_members", "registry.members", "group_name"),
    ("foundation_breakers", "breakers", "name"),
]

# A trigger body. DDL takes no bind parameters: every name filled in is a constant of this
# file. The prune's bound is -1 (an empty range: one seek) except on every PRUNE_EVERY-th
# revision, so it never scans.
BODY = """
    INSERT INTO foundation_topic_revisions (topic, revision, key)
    VALUES ('{topic}',
            coalesce((SELECT max(revision) FROM foundation_topic_revisions
                      WHERE topic = '{topic}'), 0) + 1,
            {row}.{key});
    DELETE FROM foundation_topic_revisions
    WHERE topic = '{topic}' AND revision <= (
        SELECT CASE WHEN max(revision) % {every} = 0 THEN max(revision) - {keep} ELSE -1 END
        FROM foundation_topic_revisions WHERE topic = '{topic}');
"""
TRIGGER = "CREATE TRIGGER {name} AFTER {event} ON {table}{when} BEGIN {body} END"


def _triggers() -> list[tuple[str, str]]:
    """(name, CREATE TRIGGER) for each table: insert, update, delete, and a key changed by
    hand (an UPDATE of the key: the old key is gone too)."""
    out = []
    for table, topic, key in TOPICS:
        for suffix, event, row, when in (
            ("insert", "INSERT", "NEW", ""),
            ("update", "UPDATE", "NEW", ""),
            ("delete", "DELETE", "OLD", ""),
            ("rekey", "UPDATE", "OLD", f" WHEN OLD.{key} IS NOT NEW.{key}"),
        ):
            name = f"{table}_{suffix}_topic"
            body = BODY.format(topic=topic, row=row, key=key, every=PRUNE_EVERY, keep=KEEP)
            statement = TRIGGER.format(name=name, event=event, table=table, when=when, body=body)
            out.append((name, statement))
    return out


def upgrade() -> None:
    op.create_table(
        "foundation_topic_revisions",
        sa.Column("topic", sa.String(64), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.PrimaryKeyConstraint("topic", "revision", name=op.f("pk_foundation_topic_revisions")),
        comment="SQLite change feed: one row per change of a topic (registry, leases, members, "
        "breakers), naming the key that changed; the last 10,000 per topic are kept.",
        sqlite_with_rowid=False,
    )
    if op.get_bind().dialect.name == "sqlite":
        for _, statement in _triggers():
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name, _ in _triggers():
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_table("foundation_topic_revisions")
