"""The ``foundation`` command: schema migrations and runtime config from a shell.

    foundation db upgrade                     # alembic upgrade head
    foundation db current
    foundation -d postgresql+psycopg://app@db/app config set port 4000
    foundation config list --json

The database comes from ``--database-url``/``-d``, else ``FOUNDATION_DATABASE_URL``,
else the default of :class:`~foundation.Settings`; it is only ever shown masked.
Every :class:`~foundation.FoundationError` ends the command with ``error [code]:
message`` on stderr and exit code 1 (usage errors exit 2, as click does).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click
import pydantic
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from foundation.config._service import MAX_HISTORY
from foundation.config._state import ConfigHistoryEntry
from foundation.database import migrate
from foundation.database.errors import translate_errors
from foundation.database.url import DatabaseURL
from foundation.errors import (
    ConfigError,
    EventError,
    FoundationError,
    NotFoundError,
    ValidationError,
)
from foundation.events import RecordedEvent
from foundation.facade import Foundation
from foundation.settings import Settings

__all__ = ["main"]

VALUE_WIDTH = 60
_MISSING: Any = object()


@dataclass(frozen=True)
class _Target:
    """What the group resolved: the settings to use and the parsed URL (never printed raw)."""

    settings: Settings
    url: DatabaseURL


def _dumps(value: Any) -> str:
    """Compact, deterministic JSON for humans and scripts alike."""
    return json.dumps(value, ensure_ascii=False, default=str)


def _truncate(text: str, width: int = VALUE_WIDTH) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


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
    if secret:
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


def _target(ctx: click.Context) -> _Target:
    target = ctx.find_object(_Target)
    assert target is not None, "the root group always sets its target"
    return target


def _settings(database_url: str | None) -> Settings:
    values: dict[str, Any] = {} if database_url is None else {"database_url": database_url}
    try:
        return Settings(**values)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first.get("loc", ()))
        raise ConfigError(
            f"invalid Foundation setting {field!r}: {first.get('msg')}",
            context={"setting": field},
        ) from None


@contextmanager
def _alembic(url: DatabaseURL) -> Iterator[None]:
    """Driver errors become FoundationErrors; alembic's own complaints too."""
    try:
        with translate_errors(url.masked):
            yield
    except CommandError as exc:
        raise ValidationError(f"alembic: {exc}", context={"url": url.masked}) from None


@contextmanager
def _foundation(ctx: click.Context) -> Iterator[Foundation]:
    # migrate=None keeps the default: SQLite upgrades itself, PostgreSQL checks.
    with Foundation(settings=_target(ctx).settings, migrate=None) as fdn:
        yield fdn


def _parse_value(raw: str, force_string: bool) -> Any:
    if force_string:
        return raw

    def refuse(constant: str) -> Any:  # NaN / Infinity are not JSON: keep the text
        raise ValueError(constant)

    try:
        return json.loads(raw, parse_constant=refuse)
    except ValueError:
        return raw


def _stdout() -> Console:
    return Console(highlight=False)


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
    """Foundation: schema migrations and runtime configuration."""
    settings = _settings(database_url)
    ctx.obj = _Target(settings, DatabaseURL.parse(settings.database_url))


# -- db -------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Migrate Foundation's schema (alembic).

    The version table is foundation_alembic_version, so an application's own alembic
    history can share the database.
    """


def _revision_label(revision: str | None) -> str:
    return revision if revision is not None else "none"


@db.command(context_settings={"ignore_unknown_options": True})
@click.argument("revision", default="head")
@click.pass_context
def upgrade(ctx: click.Context, revision: str) -> None:
    """Upgrade the schema to REVISION (default: head; relative: +1)."""
    target = _target(ctx)
    with _alembic(target.url):
        before = migrate.current_revision(target.url, target.settings)
        migrate.upgrade(target.url, revision, target.settings)
        after = migrate.current_revision(target.url, target.settings)
    click.echo(_moved("upgraded", target.url, before, after))


@db.command(context_settings={"ignore_unknown_options": True})
@click.argument("revision")
@click.pass_context
def downgrade(ctx: click.Context, revision: str) -> None:
    """Downgrade the schema to REVISION (required: e.g. -1, base, 0001)."""
    target = _target(ctx)
    with _alembic(target.url):
        before = migrate.current_revision(target.url, target.settings)
        migrate.downgrade(target.url, revision, target.settings)
        after = migrate.current_revision(target.url, target.settings)
    click.echo(_moved("downgraded", target.url, before, after))


def _moved(verb: str, url: DatabaseURL, before: str | None, after: str | None) -> str:
    head = migrate.head_revision()
    mark = " (head)" if after == head else ""
    if before == after:
        return f"{url.masked}: already at {_revision_label(after)}{mark}; nothing to do"
    return f"{verb} {url.masked}: {_revision_label(before)} -> {_revision_label(after)}{mark}"


@db.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@click.pass_context
def current(ctx: click.Context, as_json: bool) -> None:
    """The schema revision of the database, and whether it is head."""
    target = _target(ctx)
    with _alembic(target.url):
        revision = migrate.current_revision(target.url, target.settings)
    head = migrate.head_revision()
    if as_json:
        click.echo(
            _dumps(
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


@db.command("history")
@click.option("--json", "as_json", is_flag=True, help="A JSON array, newest first.")
@click.pass_context
def db_history(ctx: click.Context, as_json: bool) -> None:
    """Foundation's revisions, newest first, marking the current one and head."""
    target = _target(ctx)
    with _alembic(target.url):
        script = ScriptDirectory.from_config(migrate.alembic_config(target.url))
        heads = set(script.get_heads())
        revision = migrate.current_revision(target.url, target.settings)
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
        click.echo(_dumps(rows))
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
    _stdout().print(table)
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
    with _foundation(ctx) as fdn:
        explanation = fdn.config.explain(key)  # validates the key
        value = fdn.config.get(key, _MISSING)
    if value is _MISSING or explanation.source is None:
        raise NotFoundError(f"config key {key!r} is not set", context={"key": key})
    click.echo(_dumps(value))


@config.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("key")
@click.argument("value")
@click.option("--string", "force_string", is_flag=True, help="Store VALUE as a string.")
@click.pass_context
def config_set(ctx: click.Context, key: str, value: str, force_string: bool) -> None:
    """Set KEY to VALUE (read as JSON when it parses, else as a string)."""
    parsed = _parse_value(value, force_string)
    with _foundation(ctx) as fdn:
        fdn.config.set(key, parsed)
        stored = fdn.config.get(key)
    click.echo(f"set {key} = {_dumps(stored)}")


@config.command("delete")
@click.argument("key")
@click.pass_context
def config_delete(ctx: click.Context, key: str) -> None:
    """Delete KEY's runtime value (file, environment and defaults stay)."""
    with _foundation(ctx) as fdn:
        deleted = fdn.config.delete(key)
        explanation = fdn.config.explain(key)
    if deleted:
        click.echo(f"deleted {key}")
    else:
        click.echo(f"{key} had no runtime value; nothing deleted")
    if explanation.source is not None:
        click.echo(f"{key} is now {_dumps(explanation.value)} from {explanation.source}")


@config.command("list")
@click.option("--prefix", default="", help="Only keys starting with this.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of {key, value, source}.")
@click.pass_context
def config_list(ctx: click.Context, prefix: str, as_json: bool) -> None:
    """Every key with its winning value and where that value comes from."""
    with _foundation(ctx) as fdn:
        values = fdn.config.all()
        rows = [
            {"key": key, "value": values[key], "source": fdn.config.explain(key).source}
            for key in sorted(values)
            if key.startswith(prefix)
        ]
    if as_json:
        click.echo(_dumps(rows))
        return
    table = Table()
    table.add_column("key", overflow="fold")
    table.add_column("value", overflow="fold")
    table.add_column("source", overflow="fold")
    for row in rows:
        table.add_row(
            Text(str(row["key"])), Text(_truncate(_dumps(row["value"]))), Text(str(row["source"]))
        )
    _stdout().print(table)


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
    with _foundation(ctx) as fdn:
        entries = fdn.config.history(key, limit=limit)
    if as_json:
        click.echo(_dumps([_history_row(e) for e in entries]))
        return
    table = Table()
    table.add_column("id", no_wrap=True)
    table.add_column("when", no_wrap=True)
    table.add_column("key", overflow="fold")
    table.add_column("operation", no_wrap=True)
    for name in ("old", "new", "by", "correlation id"):
        table.add_column(name, overflow="fold")
    for entry in entries:
        table.add_row(
            Text(str(entry.id)),
            Text(entry.changed_at.isoformat(sep=" ", timespec="seconds")),
            Text(entry.key),
            Text(entry.operation),
            Text(_truncate(_dumps(entry.old_value), 30)),
            Text(_truncate(_dumps(entry.new_value), 30)),
            Text(entry.changed_by),
            Text(entry.correlation_id or ""),
        )
    _stdout().print(table)


# -- events ---------------------------------------------------------------------------

PROGRESS_MIN_EVENTS = 1_000  # shorter exports and imports show no progress bar
IMPORT_BATCH = 500


@main.group()
def events() -> None:
    """Read, follow, export and import the event log.

    Exports are JSON lines, one event per line; importing a file twice writes nothing
    the second time (events keep their ids, and a stored id is skipped).
    """


def _event_row(event: RecordedEvent) -> dict[str, Any]:
    return {
        "id": str(event.id),
        "position": event.position,
        "type": event.type,
        "stream_id": event.stream_id,
        "stream_version": event.stream_version,
        "data": event.data,
        "metadata": event.metadata,
        "correlation_id": event.correlation_id,
        "causation_id": event.causation_id,
        "recorded_at": event.recorded_at.isoformat(),
    }


def _event_line(event: RecordedEvent) -> str:
    when = event.recorded_at.isoformat(sep=" ", timespec="milliseconds")
    stream = "" if event.stream_id is None else f" {event.stream_id}@{event.stream_version}"
    return f"{event.position} {when} {event.type}{stream} {_truncate(_dumps(event.data))}"


def _criteria(types: tuple[str, ...], stream: str | None) -> dict[str, Any]:
    criteria: dict[str, Any] = {}
    if types:
        criteria["type"] = list(types)
    if stream is not None:
        criteria["stream_id"] = stream
    return criteria


def _progress(total: int, what: str) -> Progress:
    return Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=total < PROGRESS_MIN_EVENTS,
        transient=True,
    )


_TYPE_OPTION = click.option("--type", "types", multiple=True, help="Only this type (repeatable).")
_STREAM_OPTION = click.option("--stream", default=None, help="Only this stream.")


@events.command("query")
@_TYPE_OPTION
@_STREAM_OPTION
@click.option("--after-position", type=click.IntRange(0), default=None, help="After N.")
@click.option(
    "--limit", default=100, show_default=True, type=click.IntRange(1, 10_000), help="At most N."
)
@click.option("--desc", is_flag=True, help="Newest first.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of events.")
@click.pass_context
def events_query(
    ctx: click.Context,
    types: tuple[str, ...],
    stream: str | None,
    after_position: int | None,
    limit: int,
    desc: bool,
    as_json: bool,
) -> None:
    """Events matching the options, by position."""
    criteria = _criteria(types, stream)
    if after_position is not None:
        criteria["after_position"] = after_position
    criteria["limit"] = limit
    criteria["order"] = "desc" if desc else "asc"
    with _foundation(ctx) as fdn:
        found = fdn.events.get(criteria)
    if as_json:
        click.echo(_dumps([_event_row(e) for e in found]))
        return
    table = Table()
    for name in ("position", "recorded at", "type", "stream", "version", "data"):
        table.add_column(name, overflow="fold")
    for e in found:
        table.add_row(
            Text(str(e.position)),
            Text(e.recorded_at.isoformat(sep=" ", timespec="seconds")),
            Text(e.type),
            Text(e.stream_id or ""),
            Text("" if e.stream_version is None else str(e.stream_version)),
            Text(_truncate(_dumps(e.data))),
        )
    _stdout().print(table)


@events.command("tail")
@_TYPE_OPTION
@_STREAM_OPTION
@click.option("--lines", "-n", default=10, show_default=True, type=click.IntRange(0, 10_000))
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events as they commit.")
@click.option(
    "--max-events", type=click.IntRange(1), default=None, help="With --follow: stop after N new."
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(0),
    default=None,
    help="With --follow: stop after this many seconds without a new event.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def events_tail(
    ctx: click.Context,
    types: tuple[str, ...],
    stream: str | None,
    lines: int,
    follow: bool,
    max_events: int | None,
    idle_timeout: float | None,
    as_json: bool,
) -> None:
    """The last events (-n), then with --follow every new one (Ctrl-C stops)."""
    criteria = _criteria(types, stream)

    def show(event: RecordedEvent) -> None:
        click.echo(_dumps(_event_row(event)) if as_json else _event_line(event))

    with _foundation(ctx) as fdn:
        position = fdn.events.last_position()
        if lines:
            for event in reversed(fdn.events.get(criteria, limit=lines, order="desc")):
                show(event)
        if not follow:
            return
        seen = 0
        idle_since = time.monotonic()
        interval = fdn.settings.poll_interval_ms / 1000
        with contextlib.suppress(KeyboardInterrupt):
            while max_events is None or seen < max_events:
                batch = fdn.events.get(criteria, after_position=position, limit=500)
                if max_events is not None:
                    batch = batch[: max_events - seen]
                for event in batch:
                    show(event)
                    position = event.position
                seen += len(batch)
                if batch:
                    idle_since = time.monotonic()
                    continue
                if idle_timeout is not None and time.monotonic() - idle_since >= idle_timeout:
                    return
                time.sleep(min(interval, 0.2))


@events.command("export")
@click.argument("file", type=click.File("w", encoding="utf-8", lazy=True))
@_TYPE_OPTION
@click.option("--after-position", type=click.IntRange(0), default=0, help="After N.")
@click.pass_context
def events_export(
    ctx: click.Context, file: Any, types: tuple[str, ...], after_position: int
) -> None:
    """Write the log (or the events of --type) to FILE as JSON lines (- for stdout)."""
    criteria = _criteria(types, None)
    criteria["after_position"] = after_position
    count = 0
    with _foundation(ctx) as fdn:
        total = max(fdn.events.last_position() - after_position, 0)
        with _progress(total, "exporting") as progress:
            task = progress.add_task("export", total=total)
            last = after_position
            for event in fdn.events.iter(criteria, batch_size=1_000):
                file.write(_dumps(_event_row(event)) + "\n")
                count += 1
                progress.advance(task, event.position - last)
                last = event.position
    file.flush()
    to_stdout = file.name in ("-", "<stdout>")
    # With FILE "-" the events are the output: the summary goes to stderr.
    click.echo(f"exported {count} events to {'stdout' if to_stdout else file.name}", err=to_stdout)


def _import_event(line: str, number: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise EventError(f"line {number} is not JSON: {exc}", context={"line": number}) from None
    if not isinstance(row, dict):
        raise EventError(f"line {number} is not a JSON object", context={"line": number})
    event = {k: row.get(k) for k in _IMPORT_FIELDS if row.get(k) is not None}
    event.setdefault("data", row.get("data"))
    event.setdefault("correlation_id", None)  # never taken from the importing context
    return event


_IMPORT_FIELDS = (
    "id",
    "type",
    "data",
    "metadata",
    "stream_id",
    "correlation_id",
    "causation_id",
)


@events.command("import")
@click.argument("file", type=click.File("rb"))
@click.pass_context
def events_import(ctx: click.Context, file: Any) -> None:
    """Append the JSON-lines events of FILE; events already recorded (same id) are skipped.

    Positions, stream versions and timestamps are those of this log; ids, types, streams,
    data, metadata, correlation and causation ids are kept.
    """
    try:
        size = os.fstat(file.fileno()).st_size
    except (OSError, ValueError, io.UnsupportedOperation):
        size = 0
    added = skipped = 0
    with _foundation(ctx) as fdn, _progress(size // 200, "importing") as progress:
        task = progress.add_task("import", total=size or None)
        batch: list[dict[str, Any]] = []

        def flush() -> None:
            nonlocal added, skipped
            if not batch:
                return
            before = fdn.events.last_position()
            records = fdn.events.store_many(batch)
            new = sum(1 for r in records if r.position > before)
            added += new
            skipped += len(records) - new
            batch.clear()

        for number, raw in enumerate(file, start=1):
            progress.advance(task, len(raw))
            line = raw.decode("utf-8").strip()
            if not line:
                continue
            batch.append(_import_event(line, number))
            if len(batch) >= IMPORT_BATCH:
                flush()
        flush()
    click.echo(f"imported {added} events, skipped {skipped} already recorded")
