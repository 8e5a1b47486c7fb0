"""Topic revisions for the SQLite change feed (registry, leases, members, breakers).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28

On SQLite every node polls ``PRAGMA data_version``, which moves on ANY commit to the file
(an event, a config value…). Triggers here bump a per-topic revision in
``foundation_topic_revisions`` in the writer's own transaction, so a node re-reads the
registry or the breakers only when they changed, and ``foundation_topic_changes`` says
which registry names changed (deletes included: the change row outlives the name row), so
it re-reads only those.

PostgreSQL gets the two tables (one schema for both backends) but no triggers: NOTIFY
already carries each change there, and one counter row per topic would serialise every
registry and breaker write of the cluster on its row lock until commit.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Topic names, as foundation.database.feed reads them (a migration never imports the app).
NAMES, LEASES, MEMBERS, BREAKERS = "registry", "registry.leases", "registry.members", "breakers"

# Trigger bodies: DDL takes no bind parameters; every name filled in below is a constant
# of this file. The upsert keeps working if an operator deletes a topic's row (it starts again at 1,
# which a node takes as "went backwards": a full re-read).
BUMP = """
    INSERT INTO foundation_topic_revisions (topic, revision) VALUES ('{topic}', 1)
    ON CONFLICT (topic) DO UPDATE SET revision = revision + 1;
"""
RECORD = """
    INSERT INTO foundation_topic_changes (topic, key, revision)
    VALUES ('{topic}', {key},
            (SELECT revision FROM foundation_topic_revisions WHERE topic = '{topic}'))
    ON CONFLICT (topic, key) DO UPDATE SET revision = excluded.revision;
"""
# A rename by hand (UPDATE … SET name) changes two keys: the old one is gone.
RENAMED = """
    INSERT INTO foundation_topic_changes (topic, key, revision)
    SELECT '{topic}', OLD.name, revision FROM foundation_topic_revisions
    WHERE topic = '{topic}' AND OLD.name <> NEW.name
    ON CONFLICT (topic, key) DO UPDATE SET revision = excluded.revision;
"""
EVENTS = ("INSERT", "UPDATE", "DELETE")


def _bump_triggers(table: str, topic: str) -> list[tuple[str, str]]:
    """(name, CREATE TRIGGER) for each event on ``table``: bump ``topic``."""
    out = []
    for event in EVENTS:
        name = f"{table}_{event.lower()}_topic"
        body = BUMP.format(topic=topic)
        out.append((name, f"CREATE TRIGGER {name} AFTER {event} ON {table} BEGIN {body} END"))
    return out


def _name_triggers() -> list[tuple[str, str]]:
    """Registry names: bump the topic and record which name changed (old and new)."""
    table, topic = "foundation_registry", NAMES
    new = RECORD.format(topic=topic, key="NEW.name")
    old = RECORD.format(topic=topic, key="OLD.name")
    bump = BUMP.format(topic=topic)
    renamed = RENAMED.format(topic=topic)
    bodies = {"INSERT": bump + new, "UPDATE": bump + new + renamed, "DELETE": bump + old}
    out = []
    for event in EVENTS:
        name = f"{table}_{event.lower()}_topic"
        out.append(
            (name, f"CREATE TRIGGER {name} AFTER {event} ON {table} BEGIN {bodies[event]} END")
        )
    return out


def _triggers() -> list[tuple[str, str]]:
    return (
        _name_triggers()
        + _bump_triggers("foundation_leases", LEASES)
        + _bump_triggers("foundation_registry_members", MEMBERS)
        + _bump_triggers("foundation_breakers", BREAKERS)
    )


def upgrade() -> None:
    op.create_table(
        "foundation_topic_revisions",
        sa.Column("topic", sa.String(64), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("topic", name=op.f("pk_foundation_topic_revisions")),
        comment="SQLite change feed: a revision per topic, bumped by triggers on every change.",
    )
    op.create_table(
        "foundation_topic_changes",
        sa.Column("topic", sa.String(64), nullable=False),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("topic", "key", name=op.f("pk_foundation_topic_changes")),
        comment="SQLite change feed: which key of a topic changed at which topic revision.",
    )
    op.create_index(
        "ix_foundation_topic_changes_topic_revision",
        "foundation_topic_changes",
        ["topic", "revision"],
    )
    if op.get_bind().dialect.name == "sqlite":
        for _, statement in _triggers():
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name, _ in _triggers():
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_index("ix_foundation_topic_changes_topic_revision", "foundation_topic_changes")
    op.drop_table("foundation_topic_changes")
    op.drop_table("foundation_topic_revisions")
