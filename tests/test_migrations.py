"""Migrations: round trips on both databases, no drift, and life beside an app's own alembic."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext

from foundation import AsyncFoundation, Foundation, SchemaOutdatedError
from foundation.database import create_engine, migrate
from foundation.database.schema import metadata

ROOT = Path(__file__).resolve().parent.parent


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_empty_to_head_to_base_to_head(empty_db_url: str) -> None:
    assert migrate.current_revision(empty_db_url) is None
    migrate.upgrade(empty_db_url)
    assert migrate.current_revision(empty_db_url) == migrate.head_revision()
    assert {"foundation_config", "foundation_config_history"} <= table_names(empty_db_url)
    migrate.downgrade(empty_db_url, "base")
    assert migrate.current_revision(empty_db_url) is None
    assert table_names(empty_db_url) <= {"foundation_alembic_version"}
    migrate.upgrade(empty_db_url)
    with Foundation(empty_db_url) as fdn:  # works after the round trip
        fdn.config.set("k", 1)
        assert fdn.config.history()[0].new_value == 1


def test_metadata_and_migrations_do_not_drift(db_url: str) -> None:
    engine = create_engine(db_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn,
                opts={
                    "compare_type": True,
                    "include_name": migrate.include_name,
                    "version_table": migrate.VERSION_TABLE,
                },
            )
            assert compare_metadata(ctx, metadata) == []
    finally:
        engine.dispose()


def test_postgres_default_is_to_check_and_name_the_command(backend: str, empty_db_url: str) -> None:
    if backend == "sqlite":
        with Foundation(empty_db_url) as fdn:  # SQLite upgrades itself by default
            assert fdn.config.all() == {}
        assert migrate.current_revision(empty_db_url) == migrate.head_revision()
        return
    with pytest.raises(SchemaOutdatedError) as info:
        Foundation(empty_db_url)
    assert "foundation db upgrade" in info.value.message
    assert info.value.context == {
        "url": info.value.context["url"],
        "current": None,
        "head": migrate.head_revision(),
    }
    with Foundation(empty_db_url, migrate="upgrade") as fdn:
        fdn.config.set("k", 1)


def test_check_mode_on_sqlite_refuses_an_empty_database(tmp_path: Path) -> None:
    with pytest.raises(SchemaOutdatedError):
        Foundation(f"sqlite:///{tmp_path / 'e.db'}", migrate="check")


def run_alembic(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Plain ``alembic`` from the project's directory, as a deploy runs it."""
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_plain_alembic_upgrade_head_with_the_environment(empty_db_url: str) -> None:
    done = run_alembic("upgrade", "head", FOUNDATION_DATABASE_URL=empty_db_url)
    assert done.returncode == 0, done.stderr
    assert migrate.current_revision(empty_db_url) == migrate.head_revision()
    # alembic.ini's logging applies, as with any alembic project: each revision is logged.
    assert "Running upgrade  -> 0001" in done.stderr
    assert "Running upgrade 0009 -> 0010" in done.stderr


def test_an_application_alembic_history_lives_beside_ours(
    empty_db_url: str, tmp_path: Path
) -> None:
    app = tmp_path / "app_migrations"
    (app / "versions").mkdir(parents=True)
    (app / "env.py").write_text(
        textwrap.dedent(
            """
            from alembic import context
            from sqlalchemy import create_engine

            url = context.config.get_main_option("sqlalchemy.url")
            engine = create_engine(url)
            with engine.connect() as conn:
                context.configure(connection=conn)
                with context.begin_transaction():
                    context.run_migrations()
                conn.commit()
            engine.dispose()
            """
        )
    )
    (app / "script.py.mako").write_text("")
    (app / "versions" / "a1_items.py").write_text(
        textwrap.dedent(
            """
            import sqlalchemy as sa
            from alembic import op

            revision = "a1"
            down_revision = None

            def upgrade():
                op.create_table("app_items", sa.Column("id", sa.Integer, primary_key=True))

            def downgrade():
                op.drop_table("app_items")
            """
        )
    )
    cfg = Config()
    cfg.set_main_option("script_location", str(app))
    cfg.set_main_option("sqlalchemy.url", empty_db_url)
    command.upgrade(cfg, "head")
    migrate.upgrade(empty_db_url)
    names = table_names(empty_db_url)
    assert {"alembic_version", "app_items", "foundation_alembic_version"} <= names
    migrate.downgrade(empty_db_url, "base")
    assert "app_items" in table_names(empty_db_url)  # ours never touch theirs
    migrate.upgrade(empty_db_url)
    command.downgrade(cfg, "base")
    assert "foundation_config" in table_names(empty_db_url)


def _stamped_newer(url: str) -> None:
    """The database as a newer release of Foundation would leave it."""
    Foundation(url, migrate="upgrade").close()
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE foundation_alembic_version SET version_num = '9001'"))
    finally:
        engine.dispose()


def test_a_database_from_a_newer_release_is_refused_plainly(db_url: str) -> None:
    """A deploy rolled back: the old code must not try to upgrade, nor crash in alembic."""
    _stamped_newer(db_url)
    for mode in ("upgrade", "check"):
        with pytest.raises(SchemaOutdatedError) as info:
            Foundation(db_url, migrate=mode)
        assert "newer release" in info.value.message
        assert info.value.context["current"] == "9001"
        assert info.value.context["head"] == migrate.head_revision()
        assert info.value.context["newer"] is True
    assert migrate.current_revision(db_url) == "9001"  # nothing was written


async def test_the_async_face_refuses_a_newer_database_too(db_url: str) -> None:
    _stamped_newer(db_url)
    with pytest.raises(SchemaOutdatedError) as info:
        async with AsyncFoundation(db_url, migrate="upgrade"):
            pass
    assert info.value.context["newer"] is True
    assert migrate.current_revision(db_url) == "9001"
