"""Revision 0002: the MetaData and the migration agree, and it goes up and down."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from foundation.database import migrate
from foundation.database.engine import create_engine
from foundation.database.schema import metadata

OURS = {"foundation_events", "foundation_subscriptions"}


def _mentions_ours(diff: Any) -> bool:
    if isinstance(diff, list):  # column modifications come as lists of tuples
        return any(_mentions_ours(d) for d in diff)
    return any(
        (isinstance(part, str) and part in OURS)
        or getattr(part, "name", None) in OURS
        or getattr(getattr(part, "table", None), "name", None) in OURS
        for part in diff
    )


def test_no_drift_for_the_event_tables(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn,
                opts={
                    "include_name": migrate.include_name,
                    "compare_type": True,
                    "version_table": migrate.VERSION_TABLE,
                },
            )
            diffs = [d for d in compare_metadata(ctx, metadata) if _mentions_ours(d)]
    finally:
        engine.dispose()
    assert diffs == []


def _tables(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_0002_upgrades_downgrades_and_upgrades_again(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url, "0002")
    assert _tables(empty_db_url) >= OURS
    migrate.downgrade(empty_db_url, "0001")
    tables = _tables(empty_db_url)
    assert not OURS & tables and "foundation_config" in tables
    migrate.upgrade(empty_db_url, "0002")
    assert _tables(empty_db_url) >= OURS
    assert migrate.current_revision(empty_db_url) == "0002"
