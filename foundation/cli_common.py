"""What the ``foundation`` command's modules share: the database a command runs on, and
how values and tables are printed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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


@contextmanager
def open_foundation(ctx: click.Context, *, create: bool) -> Iterator[Foundation]:
    """The Foundation of the command's database.

    ``create``: whether the command may create a SQLite file that does not exist; a
    command that only reads says False (see :func:`require_file`).
    """
    target = target_of(ctx)
    if not create:
        require_file(target.url)
    # A command that writes keeps the default (SQLite upgrades itself, PostgreSQL checks);
    # one that reads changes nothing, a schema neither: an unmigrated or older file (an
    # app's own database, say) is a schema_outdated error, not a file given new tables.
    try:
        fdn = Foundation(settings=target.settings, migrate=None if create else "check")
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


def stdout_console() -> Console:
    # No markup: names, keys and values are the user's text, and "[bold]svc[/]" must
    # print as typed, not as "svc" (or fail on a "[/]" with nothing to close).
    return Console(highlight=False, markup=False)
