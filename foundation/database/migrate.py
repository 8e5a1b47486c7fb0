"""Foundation's alembic history, driven from code and from ``foundation db``.

The scripts live in ``migrations/`` at the top of the repository (shipped inside the
wheel as ``foundation/_migrations``). The version table is ``foundation_alembic_version``
so an application's own alembic history can share the database.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from foundation.database.engine import create_engine
from foundation.database.url import DatabaseURL
from foundation.errors import FoundationError, SchemaOutdatedError
from foundation.settings import Settings

__all__ = [
    "ADVISORY_LOCK_KEY",
    "VERSION_TABLE",
    "alembic_config",
    "current_revision",
    "downgrade",
    "head_revision",
    "include_name",
    "known_revision",
    "newer_release_error",
    "upgrade",
]

VERSION_TABLE = "foundation_alembic_version"
# SQLite's partial index of migration 0016 is on an expression, which SQLAlchemy does not
# reflect: it says so at every reflection of the table (autogenerate, `alembic check`),
# and include_name below leaves the index out of the comparison anyway.
OTHER_TIMES_INDEX = "ix_foundation_events_other_times"
warnings.filterwarnings(
    "ignore",
    message=f"Skipped unsupported reflection of expression-based index {OTHER_TIMES_INDEX}",
    category=sa.exc.SAWarning,
)
# pg_advisory_xact_lock key held while migrating ("Foundation" in ASCII, truncated).
ADVISORY_LOCK_KEY = 0x466F756E646174


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Only Foundation's tables are Foundation's business (for autogenerate and checks)."""
    if type_ == "table":
        return bool(name) and name.startswith("foundation_") and name != VERSION_TABLE  # type: ignore[union-attr]
    # SQLite's partial index of migration 0016: in no table's metadata, as it is
    # SQLite's alone (SQLAlchemy would create it on PostgreSQL too, without its WHERE).
    return name != OTHER_TIMES_INDEX


def migrations_dir() -> Path:
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_migrations", package.parent / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise FoundationError(  # pragma: no cover - a broken install
        "Foundation's migrations were not found next to the package",
        context={"looked_in": [str(package / "_migrations"), str(package.parent / "migrations")]},
    )


def postgres_schema(url: DatabaseURL, settings: Settings | None) -> str | None:
    """The schema Foundation's tables live in: the setting, on PostgreSQL only (SQLite
    would read it as an attached database)."""
    return settings.postgres_schema if settings and url.backend == "postgresql" else None


def alembic_config(url: str | DatabaseURL, settings: Settings | None = None) -> Config:
    parsed = url if isinstance(url, DatabaseURL) else DatabaseURL.parse(url)
    cfg = Config()
    if settings is not None:
        cfg.attributes["schema"] = postgres_schema(parsed, settings)
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["url"] = parsed.url.render_as_string(hide_password=False)
    return cfg


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config("sqlite:///unused.db"))


def head_revision() -> str:
    head = _scripts().get_current_head()
    assert head is not None
    return head


def known_revision(revision: str) -> bool:
    """Whether ``revision`` is one of this release's migrations (a database written by a
    newer release of Foundation is at one this code has never heard of)."""
    return revision in {script.revision for script in _scripts().walk_revisions()}


def reverted_by(current: str, target: str) -> list[str]:
    """The revisions a downgrade from ``current`` to ``target`` (``-1``, ``base``, an id)
    reverts, newest first; empty when alembic cannot resolve them (the downgrade then
    says why)."""
    try:
        steps = _scripts().revision_map.iterate_revisions(
            current, target, select_for_downgrade=True
        )
        return [script.revision for script in steps if script is not None]
    except Exception:  # only a warning's text depends on it
        return []


def newer_release_error(url: DatabaseURL, current: str) -> SchemaOutdatedError:
    """The error for a database at a revision a newer release of Foundation wrote."""
    head = head_revision()
    return SchemaOutdatedError(
        f"the database at {url.masked} is at schema revision {current}, which a newer "
        f"release of Foundation wrote; this one knows revisions up to {head}: run the "
        "newer release on this node, or downgrade the database with it first "
        f"(`foundation db downgrade {head}`)",
        context={"url": url.masked, "current": current, "head": head, "newer": True},
    )


@contextmanager
def _engine(url: DatabaseURL, settings: Settings | None) -> Iterator[sa.Engine]:
    engine = create_engine(url, settings)
    try:
        yield engine
    finally:
        engine.dispose()


def current_revision(url: str | DatabaseURL, settings: Settings | None = None) -> str | None:
    parsed = url if isinstance(url, DatabaseURL) else DatabaseURL.parse(url)
    with _engine(parsed, settings) as engine, engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "version_table": VERSION_TABLE,
                "version_table_schema": postgres_schema(parsed, settings),
            },
        )
        return ctx.get_current_revision()


_IN_PROCESS = threading.Lock()


def _unlock_in_child() -> None:
    # A fork while another thread migrated: the child has no such thread to release it.
    global _IN_PROCESS
    _IN_PROCESS = threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_unlock_in_child)

# What a run moved the schema through: (revision before, revision after) of the steps it
# ran itself, None when it ran none (another deploy had, or nothing was to do).
Moved = tuple[str | None, str | None] | None


def upgrade(
    url: str | DatabaseURL, revision: str = "head", settings: Settings | None = None
) -> Moved:
    return _migrate(command.upgrade, url, revision, settings)


def downgrade(url: str | DatabaseURL, revision: str, settings: Settings | None = None) -> Moved:
    return _migrate(command.downgrade, url, revision, settings)


def _migrate(run: Any, url: str | DatabaseURL, revision: str, settings: Settings | None) -> Moved:
    parsed = url if isinstance(url, DatabaseURL) else DatabaseURL.parse(url)
    steps: list[Any] = []  # appended by migrations/env.py, under the migration lock
    # alembic runs env.py through one module-level context: two runs at once in one
    # process (two Foundation instances of two databases starting in two threads) mix
    # them. One at a time, then; other processes wait on the database's own lock.
    with _IN_PROCESS, _engine(parsed, settings) as engine, engine.connect() as conn:
        cfg = alembic_config(parsed, settings)
        cfg.attributes["connection"] = conn
        cfg.attributes["steps"] = steps
        run(cfg, revision)
        conn.commit()
    if not steps:
        return None
    first, last = steps[0].source_revision_ids, steps[-1].destination_revision_ids
    return (first[0] if first else None, last[0] if last else None)
