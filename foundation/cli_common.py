"""What the ``foundation`` command's modules share: the database a command runs on, and
how values and tables are printed.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import click
from rich.console import Console

from foundation.database.url import DatabaseURL
from foundation.errors import NotFoundError, SchemaOutdatedError
from foundation.facade import Foundation
from foundation.settings import Settings

__all__ = [
    "VALUE_WIDTH",
    "Target",
    "dumps",
    "no_file",
    "open_foundation",
    "require_file",
    "stdout_console",
    "target_of",
    "truncate",
]

VALUE_WIDTH = 60


@dataclass(frozen=True)
class Target:
    """What the group resolved: the settings to use and the parsed URL (never printed raw)."""

    settings: Settings
    url: DatabaseURL


def dumps(value: Any) -> str:
    """Compact, deterministic JSON for humans and scripts alike."""
    return json.dumps(value, ensure_ascii=False, default=str)


def printable(text: str) -> str:
    """``text`` for a table cell, its control characters escaped (``\\x1b``, ``\\n``): a
    limiter key may be a client's, and an escape sequence would drive the terminal, a
    newline draw a second row."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def truncate(text: str, width: int = VALUE_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def target_of(ctx: click.Context) -> Target:
    target = ctx.find_object(Target)
    assert target is not None, "the root group always sets its target"
    return target


def no_file(url: DatabaseURL) -> bool:
    """Whether ``url`` names a SQLite file that does not exist (yet)."""
    return url.backend == "sqlite" and not url.sqlite_path.exists()


def require_file(url: DatabaseURL) -> None:
    """Refuse a SQLite path with no file: opening it would create one, directories and all.

    For a command that only reads, a missing file is a mistyped path far more often than
    a wish for a new, empty database (whose empty answer would look like a real one).
    """
    if no_file(url):
        path = url.sqlite_path
        raise NotFoundError(
            f"no such database file: {path}; check the path, "
            "or create the database with `foundation db upgrade`",
            context={"url": url.masked, "path": str(path)},
        )


# Whether anything was written to a Foundation database (its schema revision and the change
# feed's counters are there from the start).
_ANY_ROW = """
    SELECT EXISTS (SELECT 1 FROM foundation_events)
        OR EXISTS (SELECT 1 FROM foundation_config)
        OR EXISTS (SELECT 1 FROM foundation_config_history)
        OR EXISTS (SELECT 1 FROM foundation_subscriptions)
        OR EXISTS (SELECT 1 FROM foundation_leases)
        OR EXISTS (SELECT 1 FROM foundation_registry)
        OR EXISTS (SELECT 1 FROM foundation_registry_members)
        OR EXISTS (SELECT 1 FROM foundation_breakers)
        OR EXISTS (SELECT 1 FROM foundation_rate_limits)
"""


@contextmanager
def _new_file_removed_if_refused(url: DatabaseURL) -> Iterator[None]:
    """A SQLite file (and folders) the command creates is removed if it fails before writing.

    A restore into a new file is normal (``events import``), but one refused at its first
    line must not leave an empty database behind. The file goes only while its tables hold
    nothing: a write there by anyone keeps it.
    """
    if not no_file(url):
        yield
        return
    path = url.sqlite_path.absolute()
    new_folders = [folder for folder in path.parents if not folder.exists()]
    try:
        yield
    except BaseException:
        if _empty_database(path):
            for suffix in ("-wal", "-shm", "-journal", ""):
                path.with_name(path.name + suffix).unlink(missing_ok=True)
            for folder in new_folders:  # the deepest first
                try:
                    folder.rmdir()
                except OSError:
                    break  # no longer empty: someone else's now
        raise


def _empty_database(path: Path) -> bool:
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            return not db.execute(_ANY_ROW).fetchone()[0]
    except sqlite3.Error:
        return False  # not a database of ours: not for us to judge, left as it is


@contextmanager
def _opened(target: Target, *, migrate: Literal["check"] | None) -> Iterator[Foundation]:
    # A command that writes keeps the default (SQLite upgrades itself, PostgreSQL checks);
    # one that reads changes nothing, a schema neither: an unmigrated or older file (an
    # app's own database, say) is a schema_outdated error, not a file given new tables.
    try:
        fdn = Foundation(settings=target.settings, migrate=migrate)
    except SchemaOutdatedError as err:
        if err.context.get("newer"):
            raise
        # The library's message also offers migrate='upgrade', which a shell cannot pass.
        raise SchemaOutdatedError(
            f"the database at {err.context['url']} is at schema revision "
            f"{err.context['current'] or 'none (empty)'} but this Foundation needs "
            f"{err.context['head']}: run `foundation db upgrade` first",
            context=err.context,
        ) from None
    with fdn:
        yield fdn


@contextmanager
def open_foundation(ctx: click.Context, *, create: bool) -> Iterator[Foundation]:
    """The Foundation of the command's database.

    ``create``: whether the command may create a SQLite file that does not exist; a
    command that only reads says False (see :func:`require_file`). One created by a
    command that then fails with nothing written is removed again.
    """
    target = target_of(ctx)
    if not create:
        require_file(target.url)
        with _opened(target, migrate="check") as fdn:
            yield fdn
        return
    with _new_file_removed_if_refused(target.url), _opened(target, migrate=None) as fdn:
        yield fdn


def stdout_console() -> Console:
    # No markup: names, keys and values are the user's text, and "[bold]svc[/]" must
    # print as typed, not as "svc" (or fail on a "[/]" with nothing to close).
    return Console(highlight=False, markup=False)
