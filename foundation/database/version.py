"""Where a database's schema stands, read with one query on the driver."""

from __future__ import annotations

__all__ = ["VERSION_QUERIES"]

# Whether foundation_alembic_version exists, then its revision: cheap enough for every start.
VERSION_QUERIES = {
    "sqlite": (
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'foundation_alembic_version'",
        "SELECT version_num FROM foundation_alembic_version",
    ),
    "postgresql": (
        "SELECT 1 WHERE to_regclass('foundation_alembic_version') IS NOT NULL",
        "SELECT version_num FROM foundation_alembic_version",
    ),
}
