"""The ``foundation`` command: schema migrations and runtime config from a shell.

    foundation db upgrade                     # alembic upgrade head
    foundation db current
    foundation -d postgresql+psycopg://app@db/app config set port 4000
    foundation config list --json

The database comes from ``--database-url``/``-d``, else ``FOUNDATION_DATABASE_URL``,
else the default of :class:`~foundation.Settings`; it is only ever shown masked.
Every :class:`~foundation.FoundationError` ends the command with ``error [code]:
message`` on stderr and exit code 1 (usage errors exit 2, as click does). Commands that
only read never create a SQLite file: a path with no file is a ``not_found`` error.
The events, registry, breakers and limits commands live in :mod:`.cli_events` and
:mod:`.cli_ops`; what all share, in :mod:`.cli_common`.
"""

from __future__ import annotations

import json
import logging
import math
import re
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC
from typing import Any

import click
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from foundation._json import MAX_DEPTH
from foundation._text import shown
from foundation.cli_common import (
    Target,
    dumps,
    no_file,
    open_foundation,
    require_file,
    stdout_console,
    target_of,
    truncate,
)
from foundation.cli_events import events
from foundation.cli_ops import breakers, limits, registry
from foundation.config._service import MAX_HISTORY
from foundation.config._state import ConfigHistoryEntry, ConfigState
from foundation.database import migrate
from foundation.database.errors import translate_errors
from foundation.database.url import DatabaseURL
from foundation.errors import ConfigError, FoundationError, NotFoundError, ValidationError
from foundation.settings import Settings, build_settings, default_node_id

__all__ = ["main"]

_MISSING: Any = object()


def _secret(raw: str | None) -> str | None:
    """The password in a raw URL, if any (to scrub it from anything we print)."""
    if not raw:
        return None
    try:
        password = DatabaseURL.parse(raw).url.password
    except FoundationError:
        return None
    return str(password) if password else None


def _report(exc: FoundationError, secret: str | None) -> None:
    message = exc.message
    # (Not a password of a few letters: "p" would garble every word holding one; the
    # URLs in messages are masked already, this is for a driver's text echoing one.)
    if secret and len(secret) >= 4:
        message = message.replace(secret, "***")
    # A Text object: "[code]" must not be read as rich markup.
    Console(stderr=True).print(Text(f"error [{exc.code}]: {message}", style="red"), soft_wrap=True)


class _FoundationGroup(click.Group):
    """The root group: turns every FoundationError into ``error [code]: message``, exit 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FoundationError as exc:
            _report(exc, _secret(ctx.params.get("database_url")))
            ctx.exit(1)


def _settings(database_url: str | None) -> Settings:
    # A node id of its own: FOUNDATION_NODE_ID in an app's environment names the app's
    # live instance, whose lease a command must neither take nor wait for (one node id,
    # one live instance: see docs/registry.md).
    values: dict[str, Any] = {"node_id": f"cli:{default_node_id()}"}
    if database_url is not None:
        values["database_url"] = database_url
    return build_settings(values)


@contextmanager
def _alembic(url: DatabaseURL) -> Iterator[None]:
    """Driver errors become FoundationErrors; alembic's own complaints too."""
    try:
        with translate_errors(url.masked):
            yield
    except CommandError as exc:
        raise ValidationError(f"alembic: {exc}", context={"url": url.masked}) from None


def _parse_value(raw: str, force_string: bool) -> Any:
    if force_string:
        return raw

    def refuse(constant: str) -> Any:  # NaN / Infinity are not JSON: keep the text
        raise ValueError(constant)

    def finite(number: str) -> float:
        value = float(number)
        if math.isinf(value):  # JSON, but no double holds it (nor the config's values)
            raise ConfigError(
                f"the number {shown(number, 40)} is beyond a float's range; pass --string "
                "to store it as text",
                context={"value": shown(number, 40)},
            )
        return value

    try:
        return json.loads(raw, parse_constant=refuse, parse_float=finite)
    except ValueError:
        return raw
    except RecursionError:
        raise ConfigError(
            "the value nests too deeply to be read as JSON (a config value takes at most "
            f"{MAX_DEPTH} levels); pass --string to store it as text",
            context={"max_depth": MAX_DEPTH},
        ) from None


# -- the root group -------------------------------------------------------------------


@click.group(cls=_FoundationGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--database-url",
    "-d",
    envvar="FOUNDATION_DATABASE_URL",
    default=None,
    metavar="URL",
    help="sqlite:///path or postgresql+psycopg://user:password@host/db "
    "[env FOUNDATION_DATABASE_URL; default from Foundation's settings]",
)
@click.version_option(package_name="foundation", prog_name="foundation")
@click.pass_context
def main(ctx: click.Context, database_url: str | None) -> None:
    """Foundation from a shell: migrations, config, events, registry, breakers, limits."""
    settings = _settings(database_url)
    ctx.obj = Target(settings, DatabaseURL.parse(settings.database_url))


def run() -> None:
    """The ``foundation`` command (console script, ``python -m foundation``): :func:`main`
    in a process of its own, whose logging it sets up (see _OneLine). ``main`` called in
    another program (click's CliRunner, a deploy script) leaves that program's logging
    as it is."""
    handler = logging.StreamHandler()
    handler.setFormatter(_OneLine())
    logging.getLogger().addHandler(handler)
    # The connection pool's warnings (a broken connection discarded, in an outage) are
    # not shown: Foundation's own say what happened and what it does about it.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    main(prog_name="foundation")


class _OneLine(logging.Formatter):
    """A warning as one line, said to be one (Python's last resort prints it bare, and a
    driver's message spans several)."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]  # its last line, as a traceback ends (left out)
            text += f" ({traceback.format_exception_only(error)[-1].strip()})"
        return f"{record.levelname}: {' '.join(text.split())}"


# -- db -------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Migrate Foundation's schema (alembic).

    The version table is foundation_alembic_version, so an application's own alembic
    history can share the database.
    """


def _revision_label(revision: str | None) -> str:
    return revision if revision is not None else "none"


def _current(target: Target) -> str | None:
    """The database's revision; none for a SQLite file that does not exist, which is
    left uncreated (reading the version table would create the file and its directories)."""
    if no_file(target.url):
        return None
    return migrate.current_revision(target.url, target.settings)


def _known(url: DatabaseURL, revision: str | None) -> str | None:
    """``revision``, unless a newer release of Foundation wrote it: then schema_outdated
    (alembic would only say it "can't locate" it)."""
    if revision is not None and not migrate.known_revision(revision):
        raise migrate.newer_release_error(url, revision)
    return revision


def _revision_arg(revision: str, extra: tuple[str, ...]) -> None:
    """``-1`` is a revision (options are not parsed for these two commands, so that it
    can be one); ``--json`` or ``-d URL`` here are misplaced options, said so plainly."""
    if (revision.startswith("-") and not re.fullmatch(r"-\d+", revision)) or extra:
        raise click.UsageError(
            f"unexpected {' '.join([revision, *extra])!r}: these commands take a REVISION "
            "only; the database is chosen before the command: foundation -d URL db …"
        )


@db.command(
    context_settings={"ignore_unknown_options": True},
    short_help="Upgrade the schema to REVISION (default: head).",
)
@click.argument("revision", default="head")
@click.argument("extra", nargs=-1, metavar="")
@click.pass_context
def upgrade(ctx: click.Context, revision: str, extra: tuple[str, ...]) -> None:
    """Upgrade the schema to REVISION (default: head; relative: +1)."""
    _revision_arg(revision, extra)
    target = target_of(ctx)
    with _alembic(target.url):
        _known(target.url, migrate.current_revision(target.url, target.settings))
        moved = migrate.upgrade(target.url, revision, target.settings)
        after = migrate.current_revision(target.url, target.settings)
    click.echo(_moved("upgraded", target.url, moved, after))


@db.command(
    context_settings={"ignore_unknown_options": True},
    short_help="Downgrade the schema to REVISION (asks first).",
)
@click.argument("revision")
@click.argument("extra", nargs=-1, metavar="")
@click.option("--yes", is_flag=True, help="Do not ask (scripts): the answer is yes.")
@click.pass_context
def downgrade(ctx: click.Context, revision: str, extra: tuple[str, ...], yes: bool) -> None:
    """Downgrade the schema to REVISION (required: e.g. -1, base, 0010).

    Reverting a revision runs its downgrade: revisions 0001 to 0004 drop the tables they
    created, with every row (0001 config and its history, 0002 the event log and the
    subscriptions, 0003 the registry, 0004 breakers and limits); below 0019 on
    PostgreSQL (0006 on SQLite), group member revisions start again once upgraded, and
    nodes that ran across it must be restarted. Asks first, unless
    --yes; the answer is read from standard input, so a script that pipes "y" in
    says yes, and with no answer there (< /dev/null) it does nothing.
    """
    _revision_arg(revision, extra)
    target = target_of(ctx)
    with _alembic(target.url):
        current = _known(target.url, _current(target))
    if current is None:  # nothing to revert; a missing SQLite file stays uncreated
        click.echo(f"{target.url.masked}: no Foundation schema (none); nothing to do")
        return
    if not yes:
        reverted = migrate.reverted_by(current, revision)
        dropped = [TABLES_OF[r] for r in reverted if r in TABLES_OF]
        restart = MEMBER_REVISIONS[target.url.backend] in reverted
        click.confirm(
            f"Downgrade {target.url.masked} to {revision}?"
            + (f" This drops {'; '.join(dropped)}, with every row." if dropped else "")
            + (
                " Group member revisions start again below what running nodes remember: "
                "restart them after the next upgrade."
                if restart
                else ""
            ),
            abort=True,
            err=True,
        )
    with _alembic(target.url):
        moved = migrate.downgrade(target.url, revision, target.settings)
        after = migrate.current_revision(target.url, target.settings)
    click.echo(_moved("downgraded", target.url, moved, after))


# The revision whose downgrade forgets the member revisions handed out (PostgreSQL's
# sequence of 0019, SQLite's topic revisions of 0006): an upgrade starts them again.
MEMBER_REVISIONS = {"postgresql": "0019", "sqlite": "0006"}

# The revisions whose downgrade drops tables, with what they hold.
TABLES_OF = {
    "0004": "0004's breakers and limits",
    "0003": "0003's registry",
    "0002": "0002's event log and subscriptions",
    "0001": "0001's config and its history",
}


def _moved(verb: str, url: DatabaseURL, moved: migrate.Moved, after: str | None) -> str:
    """What this run did (the steps it ran under the migration lock: another deploy may
    have run some or all of them meanwhile), and where the schema is now."""

    def marked(revision: str | None) -> str:
        head = " (head)" if revision == migrate.head_revision() else ""
        return _revision_label(revision) + head

    if moved is None:
        return f"{url.masked}: already at {marked(after)}; nothing to do"
    before, to = moved
    now = "" if to == after else f"; now at {marked(after)}: another run moved it since"
    return f"{verb} {url.masked}: {_revision_label(before)} -> {marked(to)}{now}"


@db.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_context
def current(ctx: click.Context, as_json: bool) -> None:
    """The schema revision of the database, and whether it is head."""
    target = target_of(ctx)
    with _alembic(target.url):
        revision = _known(target.url, _current(target))
    head = migrate.head_revision()
    if as_json:
        click.echo(
            dumps(
                {
                    "url": target.url.masked,
                    "current": revision,
                    "head": head,
                    "is_head": revision == head,
                }
            )
        )
    elif revision == head:
        click.echo(f"{_revision_label(revision)} (head)")
    else:
        click.echo(f"{_revision_label(revision)} (not head; head is {head})")


@db.command("history", short_help="Foundation's revisions, marking current and head.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array, newest first.")
@click.pass_context
def db_history(ctx: click.Context, as_json: bool) -> None:
    """Foundation's revisions, newest first, marking the current one and head."""
    target = target_of(ctx)
    with _alembic(target.url):
        script = ScriptDirectory.from_config(migrate.alembic_config(target.url))
        heads = set(script.get_heads())
        revision = _known(target.url, _current(target))  # a newer release's: as db current
        revisions = list(script.walk_revisions())
    if as_json:
        rows = [
            {
                "revision": rev.revision,
                "down_revision": rev.down_revision,
                "description": (rev.doc or "").strip(),
                "is_head": rev.revision in heads,
                "is_current": rev.revision == revision,
            }
            for rev in revisions
        ]
        click.echo(dumps(rows))
        return
    table = Table(title=f"revisions of {target.url.masked}", title_justify="left")
    table.add_column("revision", no_wrap=True)
    table.add_column("down", no_wrap=True)
    table.add_column("marks", no_wrap=True)
    table.add_column("description", overflow="fold")
    for rev in revisions:
        marks = [
            m
            for m, on in (("head", rev.revision in heads), ("current", rev.revision == revision))
            if on
        ]
        down = rev.down_revision
        table.add_row(
            Text(rev.revision),
            Text("none" if down is None else down if isinstance(down, str) else ", ".join(down)),
            Text(", ".join(marks)),
            Text((rev.doc or "").strip()),
        )
    stdout_console().print(table)
    if revision is None:
        click.echo("current: none (empty database)")


# -- config ---------------------------------------------------------------------------


@main.group()
def config() -> None:
    """Read and write runtime configuration.

    Values set here are stored in the database and win on every node.
    """


@config.command("get")
@click.argument("key")
@click.pass_context
def config_get(ctx: click.Context, key: str) -> None:
    """Print KEY's value as JSON (exit 1 if it is not set)."""
    with open_foundation(ctx, create=False) as fdn:
        explanation = fdn.config.explain(key)  # validates the key
        value = fdn.config.get(key, _MISSING)
    if value is _MISSING or explanation.source is None:
        raise NotFoundError(f"config key {key!r} is not set", context={"key": key})
    click.echo(dumps(value))


@config.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
@click.option("--string", "force_string", is_flag=True, help="Store VALUE as a string.")
@click.pass_context
def config_set(ctx: click.Context, key: str, value: str, force_string: bool) -> None:
    """Set KEY to VALUE (read as JSON when it parses, else as a string)."""
    parsed = _parse_value(value, force_string)
    # Checked as set() checks it, before the database is opened: a key or value it refuses
    # must not leave a new SQLite file behind.
    settings = target_of(ctx).settings
    state = ConfigState(
        node_id=settings.node_id,
        max_key_length=settings.max_key_length,
        max_value_bytes=settings.max_value_bytes,
    )
    state.prepare(state.check_key(key), parsed)
    with open_foundation(ctx, create=True) as fdn:
        fdn.config.set(key, parsed)
        stored = fdn.config.get(key)
    click.echo(f"set {key} = {dumps(stored)}")


@config.command("delete")
@click.argument("key")
@click.pass_context
def config_delete(ctx: click.Context, key: str) -> None:
    """Delete KEY's runtime value (file, environment and defaults stay)."""
    require_file(target_of(ctx).url)  # a database that is not there holds nothing to delete
    with open_foundation(ctx, create=True) as fdn:
        deleted = fdn.config.delete(key)
        explanation = fdn.config.explain(key)
    if deleted:
        click.echo(f"deleted {key}")
    else:
        click.echo(f"{key} had no runtime value; nothing deleted")
    if explanation.source is not None:
        click.echo(f"{key} is now {dumps(explanation.value)} from {explanation.source}")


@config.command("list")
@click.option("--prefix", default="", help="Only keys starting with this.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of {key, value, source}.")
@click.pass_context
def config_list(ctx: click.Context, prefix: str, as_json: bool) -> None:
    """Every key with its winning value and where that value comes from."""
    with open_foundation(ctx, create=False) as fdn:
        values = fdn.config.all()
        rows = [
            {"key": key, "value": values[key], "source": fdn.config.explain(key).source}
            for key in sorted(values)
            if key.startswith(prefix)
        ]
    if as_json:
        click.echo(dumps(rows))
        return
    table = Table()
    table.add_column("key", overflow="fold")
    table.add_column("value", overflow="fold")
    table.add_column("source", overflow="fold")
    for row in rows:
        table.add_row(
            Text(str(row["key"])), Text(truncate(dumps(row["value"]))), Text(str(row["source"]))
        )
    stdout_console().print(table)


def _history_row(entry: ConfigHistoryEntry) -> dict[str, Any]:
    return {
        "id": entry.id,
        "changed_at": entry.changed_at.isoformat(),
        "key": entry.key,
        "operation": entry.operation,
        "old_value": entry.old_value,
        "new_value": entry.new_value,
        "revision": entry.revision,
        "changed_by": entry.changed_by,
        "correlation_id": entry.correlation_id,
    }


@config.command("history")
@click.argument("key", required=False)
@click.option(
    "--limit",
    default=100,
    show_default=True,
    type=click.IntRange(1, MAX_HISTORY),
    help="At most this many changes.",
)
@click.option("--json", "as_json", is_flag=True, help="A JSON array, newest first.")
@click.pass_context
def config_history(ctx: click.Context, key: str | None, limit: int, as_json: bool) -> None:
    """Changes to KEY (or to every key), newest first."""
    with open_foundation(ctx, create=False) as fdn:
        entries = fdn.config.history(key, limit=limit)
    if as_json:
        click.echo(dumps([_history_row(e) for e in entries]))
        return
    # Eight columns in 80: no vertical rules (a column costs its text and one space),
    # the id, time and operation never wrap, the rest fold; --json has everything whole.
    with_cid = any(entry.correlation_id for entry in entries)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("id", no_wrap=True, justify="right")
    table.add_column("when (UTC)", no_wrap=True)
    table.add_column("key", overflow="fold", min_width=6)
    table.add_column("op", no_wrap=True)
    for name in ("old", "new", "by"):
        table.add_column(name, overflow="fold", min_width=6)
    if with_cid:
        table.add_column("correlation", overflow="fold", min_width=6)
    for entry in entries:
        when = entry.changed_at.astimezone(UTC) if entry.changed_at.tzinfo else entry.changed_at
        cells = [
            Text(str(entry.id)),
            Text(when.strftime("%Y-%m-%d %H:%M:%S")),
            Text(entry.key),
            Text(entry.operation),
            Text(truncate(dumps(entry.old_value), 40)),
            Text(truncate(dumps(entry.new_value), 40)),
            Text(entry.changed_by),
        ]
        if with_cid:
            cells.append(Text(entry.correlation_id or ""))
        table.add_row(*cells)
    stdout_console().print(table)


for _command in (events, registry, breakers, limits):  # each in a module of its own
    main.add_command(_command)


if __name__ == "__main__":
    run()
