"""``foundation events query | tail | export | import``: the event log from a shell."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import secrets
import shlex
import signal
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from foundation._json import MAX_DEPTH
from foundation.cli_common import dumps, open_foundation, stdout_console, truncate
from foundation.errors import EventError, FoundationError, StorageError, StorageUnavailableError
from foundation.events import RecordedEvent
from foundation.events._base import MAX_BATCH_JSON
from foundation.facade import Foundation

__all__ = ["events"]

log = logging.getLogger("foundation.cli")

# -- events ---------------------------------------------------------------------------

PROGRESS_MIN_EVENTS = 1_000  # shorter exports show no progress bar
PROGRESS_MIN_BYTES = 200_000  # nor smaller imports (about 1,000 lines of small events)
IMPORT_BATCH = 500  # lines per commit at most; the import command's help says 500
# Bytes of lines per commit at most: store_many refuses a batch of more than MAX_BATCH_JSON
# bytes of data and metadata, which an export's lines hold with a little more around them.
# Half leaves room for JSON that grows when read (1e5 is stored as 100000.0), and a batch
# refused all the same is split in two (see events_import).
IMPORT_BATCH_BYTES = MAX_BATCH_JSON // 2


@click.group()
def events() -> None:
    """Read, follow, export and import the event log.

    Exports are JSON lines, one event per line, each with its id; importing such a file
    twice writes nothing the second time (a stored id is skipped).
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
    return f"{event.position} {when} {event.type}{stream} {truncate(dumps(event.data))}"


def _criteria(types: tuple[str, ...], stream: str | None) -> dict[str, Any]:
    criteria: dict[str, Any] = {}
    if types:
        criteria["type"] = list(types)
    if stream is not None:
        criteria["stream_id"] = stream
    return criteria


def _progress(what: str, *, shown: bool, in_bytes: bool = False) -> Progress:
    """A progress bar on stderr, when ``shown`` and stderr is a terminal: elsewhere (a
    log file, a pipe) it would only leave a blank line behind."""
    console = Console(stderr=True)
    return Progress(
        TextColumn(what),
        BarColumn(),
        DownloadColumn() if in_bytes else MofNCompleteColumn(),  # "1.2/36.0 MB" or "M/N"
        TimeRemainingColumn(),
        console=console,
        disable=not (shown and console.is_terminal),
        transient=True,
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


_TYPE_OPTION = click.option("--type", "types", multiple=True, help="Only this type (repeatable).")
_STREAM_OPTION = click.option("--stream", default=None, help="Only this stream.")


def _moment(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    """An ISO 8601 time; UTC when it names no offset."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an ISO 8601 time") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@events.command("query")
@_TYPE_OPTION
@_STREAM_OPTION
@click.option("--after-position", type=click.IntRange(0), default=None, help="After N.")
@click.option("--after", callback=_moment, help="Recorded after this ISO time (UTC if bare).")
@click.option("--before", callback=_moment, help="Recorded before this ISO time.")
@click.option("--correlation-id", default=None, help="Only events of this correlation.")
@click.option("--causation-id", default=None, help="Only events caused by this one.")
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
    after: datetime | None,
    before: datetime | None,
    correlation_id: str | None,
    causation_id: str | None,
    limit: int,
    desc: bool,
    as_json: bool,
) -> None:
    """Events matching the options, by position."""
    criteria = _criteria(types, stream)
    given = {
        "after_position": after_position,
        "after": after,
        "before": before,
        "correlation_id": correlation_id,
        "causation_id": causation_id,
    }
    criteria.update({key: value for key, value in given.items() if value is not None})
    criteria["limit"] = limit
    criteria["order"] = "desc" if desc else "asc"
    with open_foundation(ctx, create=False) as fdn:
        found = fdn.events.get(criteria)
    if as_json:
        click.echo(dumps([_event_row(e) for e in found]))
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
            Text(truncate(dumps(e.data))),
        )
    stdout_console().print(table)


def _not_nan(value: float | None) -> float | None:
    # NaN passes FloatRange (it fails every comparison) and would never time out.
    if value is not None and math.isnan(value):
        raise click.BadParameter("nan is not a number of seconds")
    return value


@events.command("tail", short_help="The last events, then new ones with --follow.")
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
    callback=lambda _ctx, _param, value: _not_nan(value),
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
    if not follow and (max_events is not None or idle_timeout is not None):
        option = "--max-events" if max_events is not None else "--idle-timeout"
        raise click.UsageError(f"{option} applies to --follow only: add --follow, or drop it")
    criteria = _criteria(types, stream)

    def show(event: RecordedEvent) -> None:
        click.echo(dumps(_event_row(event)) if as_json else _event_line(event))

    with open_foundation(ctx, create=False) as fdn:
        position = fdn.events.last_position()
        if lines:
            for event in reversed(fdn.events.get(criteria, limit=lines, order="desc")):
                show(event)
                # One committed since last_position() is shown here: not again below.
                position = max(position, event.position)
        if not follow:
            return
        seen = 0
        idle_since = time.monotonic()
        interval = fdn.settings.poll_interval_ms / 1000
        failing = False
        with contextlib.suppress(KeyboardInterrupt):
            while max_events is None or seen < max_events:
                try:
                    batch = fdn.events.get(criteria, after_position=position, limit=500)
                except StorageUnavailableError as exc:  # a restart, a cut connection
                    if not failing:
                        click.echo(f"cannot read the log ({exc.message}); retrying", err=True)
                    failing = True
                    batch = []
                else:
                    failing = False
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


@events.command("export", short_help="Write the log to FILE as JSON lines.")
@click.argument("file", type=click.Path(dir_okay=False, allow_dash=True))
@_TYPE_OPTION
@_STREAM_OPTION
@click.option("--after-position", type=click.IntRange(0), default=0, help="After N.")
@click.pass_context
def events_export(
    ctx: click.Context, file: str, types: tuple[str, ...], stream: str | None, after_position: int
) -> None:
    """Write the log (or the events of --type, --stream) to FILE as JSON lines (- for
    stdout).

    The export is written to a hidden file beside FILE that replaces it once whole: one
    that stops (an error, Ctrl-C) leaves FILE as it was (a killed one may leave its
    hidden .part file). Where no such file can stand for FILE (a pipe, hard links,
    another owner, a folder not writable), FILE is written as the export goes.
    """
    criteria = _criteria(types, stream)
    criteria["after_position"] = after_position
    count = 0
    with _ExportTarget(file) as out:
        try:
            with open_foundation(ctx, create=False) as fdn:
                total = max(fdn.events.last_position() - after_position, 0)
                # It counts positions of the log read through (with --type or --stream,
                # most are not exported), so its last frame is complete only once set below.
                with _progress("exporting", shown=total >= PROGRESS_MIN_EVENTS) as progress:
                    task = progress.add_task("export", total=total)
                    last = after_position
                    for event in fdn.events.iter(criteria, batch_size=1_000):
                        out.write(dumps(_event_row(event)) + "\n")
                        count += 1
                        progress.advance(task, event.position - last)
                        last = event.position
                    # The whole log is read: past the last event exported, and past the end
                    # it had at the start if events were appended meanwhile.
                    end = max(total, last - after_position)
                    progress.update(task, total=end, completed=end)
            out.commit()
        except KeyboardInterrupt:
            click.echo(f"interrupted: {out.incomplete(count)}", err=True)
            raise click.Abort from None
        except OSError as exc:  # a full disk, a broken pipe
            raise StorageError(
                f"cannot write {out.shown} ({exc.strerror or exc}): {out.incomplete(count)}",
                context={"file": out.shown, "events_read": count},
            ) from None
        except FoundationError as exc:
            raise type(exc)(
                f"{exc.message}; {out.incomplete(count)}",
                context={**exc.context, "file": out.shown, "events_read": count},
                correlation_id=exc.correlation_id,
            ) from None
    # With FILE "-" the events are the output: the summary goes to stderr.
    # With FILE "-" (or a descriptor: /dev/stdout) the events are the output: the summary
    # goes to stderr.
    click.echo(f"exported {_plural(count, 'event')} to {out.shown}", err=out.descriptor)


# A path that names an open file descriptor, not a file: written through, never replaced
# (matched once its slashes and dots are normalized: //dev/./stdout is /dev/stdout).
_DESCRIPTOR = re.compile(
    r"/dev/std(out|err)|/dev/fd/\d+|/proc/(self|thread-self|\d+)(/task/\d+)?/fd/\d+"
)


class _ExportTarget:
    """Where an export writes: stdout, or FILE through a new file beside it that takes
    FILE's place only once whole (an export that stops must not leave last night's
    backup cut short, every line of it valid). FILE is written to as it is where that
    new file could not stand for it: FILE no regular file (a pipe, ``/dev/stdout``), with
    other names (hard links), another owner this process cannot give the new file, or a
    folder where this process may not create one. It is opened then only once the first
    event is read: an export refused before that leaves it as it was."""

    def __init__(self, file: str) -> None:
        self.to_stdout = file == "-"
        self.shown = "stdout" if self.to_stdout else file
        self._given = file
        self._path = Path(file)
        self._part: Path | None = None
        self._stream: Any = None
        self.written = False  # to FILE as it is (see incomplete)
        normalized = os.path.normpath(re.sub("/+", "/", file))
        self.descriptor = self.to_stdout or _DESCRIPTOR.fullmatch(normalized) is not None

    def __enter__(self) -> _ExportTarget:
        if self.to_stdout:
            self._stream = click.open_file("-", "w", encoding="utf-8")
            return self
        try:
            self._stream = self._new_part()
        except OSError as exc:
            self._discard()
            raise StorageError(
                f"cannot write {self.shown}: {exc.strerror or exc}",
                context={"file": self.shown},
            ) from None
        return self

    def _new_part(self) -> Any:
        """The file beside FILE that is to take its place, open, made as FILE is (None:
        FILE is written to as it is; see the class)."""
        if self.descriptor:
            return None  # /dev/stdout, /proc/self/fd/N: written through
        try:
            existing = self._path.stat()
        except FileNotFoundError:
            existing = None
        if existing is not None and (not stat.S_ISREG(existing.st_mode) or existing.st_nlink > 1):
            return None
        # A symbolic link's target is replaced, not the link (as writing through it would).
        target = Path(os.path.realpath(self._path))
        # A random name (one a killed export left, its pid since reused, is no obstacle),
        # within the 255 bytes a name may have.
        stem = os.fsencode(target.name)[:200].decode("utf-8", "ignore")
        part = target.with_name(f".{stem}.{secrets.token_hex(4)}.part")
        try:
            # Created as open() creates a file (the umask's mode); FILE's own if it exists.
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError:
            return None  # a folder this process may not write to, say
        try:
            if existing is not None:
                os.fchmod(fd, stat.S_IMODE(existing.st_mode))
                if (existing.st_uid, existing.st_gid) != (os.getuid(), os.getgid()):
                    os.fchown(fd, existing.st_uid, existing.st_gid)
        except OSError:
            os.close(fd)
            part.unlink(missing_ok=True)
            return None  # FILE's owner, which this process cannot give the new file
        self._path, self._part = target, part
        return os.fdopen(fd, "w", encoding="utf-8")

    def write(self, text: str) -> None:
        if self._stream is None:
            # FILE as it is: opened (emptied) once there is something to write. In
            # append mode for a descriptor: a file behind it (``>> log``) keeps its lines.
            mode = "a" if self.descriptor else "w"
            self._stream = open(self._given, mode, encoding="utf-8")  # noqa: SIM115
            self.written = True
        self._stream.write(text)

    def incomplete(self, count: int) -> str:
        if not self.written and not self.to_stdout:
            return f"nothing was exported ({self.shown} is as it was)"
        if count == 0:
            return "nothing was exported"
        return f"the export is incomplete (it stopped within the first {_plural(count, 'event')})"

    def commit(self) -> None:
        if self._stream is None:
            self.write("")  # nothing to export: FILE is made empty all the same
        self._stream.flush()
        if self._part is None:
            return  # stdout, or FILE itself: written as it went
        os.fsync(self._stream.fileno())  # a full disk fails here, before FILE is replaced
        self._stream.close()
        os.replace(self._part, self._path)
        self._part = None

    def _discard(self) -> None:
        if self._stream is not None and not self.to_stdout:
            with contextlib.suppress(OSError):
                self._stream.close()
        if self._part is not None:
            with contextlib.suppress(OSError):
                self._part.unlink(missing_ok=True)

    def __exit__(self, *exc_info: object) -> None:
        self._discard()  # (after commit(): nothing left to discard)


def _import_event(line: str, number: int) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise EventError(f"line {number} is not JSON: {exc}", context={"line": number}) from None
    except RecursionError:
        # The decoder recurses once per level: a line nested past the interpreter's limit
        # cannot be read at all (and the log would refuse it past MAX_DEPTH levels anyway).
        raise EventError(
            f"line {number} is nested too deeply to read "
            f"(an event's values may nest at most {MAX_DEPTH} levels)",
            context={"line": number, "max_depth": MAX_DEPTH},
        ) from None
    if not isinstance(row, dict):
        raise EventError(f"line {number} is not a JSON object", context={"line": number})
    unknown = [key for key in row if key not in _EXPORTED_FIELDS]
    if unknown:
        # A misspelt field ("dta") would otherwise be dropped and its event imported
        # without it, as store() refuses to do.
        raise EventError(
            f"line {number}: unknown field {unknown[0]!r} "
            f"(a line has the fields an export writes: {', '.join(_EXPORTED_FIELDS)})",
            context={"line": number, "field": unknown[0]},
        )
    event = {k: row.get(k) for k in _IMPORT_FIELDS if row.get(k) is not None}
    event.setdefault("data", row.get("data"))
    event.setdefault("correlation_id", None)  # never taken from the importing context
    return event


def _name_the_line(
    fdn: Any, batch: list[tuple[int, dict[str, Any]]], exc: EventError
) -> EventError:
    """A batch was refused with ``exc``: the same error, naming the line it is about.

    An event invalid alone is found by validating each one again; an id conflict (with
    the log, or within the batch) names the id in its context, and so the lines that
    carry it. (Checked only on failure: a good batch is validated once, by store_many.)
    """
    conflict = exc.context.get("id")
    lines: list[int] = []
    for number, event in batch:
        try:
            [parsed] = fdn.events._parse([event])
        except EventError as bad:
            return EventError(
                f"line {number}: {bad.message}", context={**bad.context, "line": number}
            )
        if parsed.id_given and str(parsed.id) == conflict:
            lines.append(number)
    if not lines:
        return exc
    # The line replaces store_many's index, which counts within this batch of the file.
    context = {**{k: v for k, v in exc.context.items() if k != "index"}, "line": lines[0]}
    if len(lines) > 1:
        context["lines"] = lines
    where = f"line {lines[0]}" if len(lines) == 1 else f"lines {', '.join(map(str, lines))}"
    return type(exc)(f"{where}: {exc.message}", context=context, correlation_id=exc.correlation_id)


@dataclass
class _Tally:
    """What an import has committed so far: it commits a batch of lines at a time (at most
    IMPORT_BATCH, fewer when they are large), so a failure part-way leaves the batches
    before it in the log."""

    new: int = 0
    known: int = 0  # already recorded (same id): earlier in the log, or earlier in the file
    without_id: int = 0  # committed events whose line gave no id (a new id each import)
    through_line: int = 0  # the last line of the last committed batch
    file: str = "FILE"  # as the user may type it in a shell
    # The first and last line of the batch being committed, if any: interrupted then (a
    # second Ctrl-C), it may or may not be in the log.
    writing: tuple[int, int] | None = None

    def committed(self, batch: list[tuple[int, dict[str, Any]]], new: int) -> None:
        self.new += new
        self.known += len(batch) - new
        self.without_id += sum(1 for _, event in batch if "id" not in event)
        self.through_line = batch[-1][0]
        self.writing = None

    def _done(self, before: str) -> str:
        return (
            f"lines 1-{self.through_line}{before} were imported and stay committed "
            f"({_plural(self.new, 'new event')}, {self.known} already recorded)"
        )

    def _how(self, fix: str) -> str:
        if self.without_id:
            # Those events get a new id on every import: running the file again would
            # record them twice, so only the rest of the file may be imported.
            return (
                f"{self.without_id} of them have no id and would be recorded twice if "
                f"imported again: {fix}import only the lines after line {self.through_line} "
                f"(`tail -n +{self.through_line + 1} {self.file} | foundation events import -`)"
            )
        return f"{fix}run the same import again: it skips the events already recorded (same id)"

    def explain(self, exc: FoundationError) -> FoundationError:
        """``exc``, saying what stays committed before it and how to go on safely."""
        if not self.through_line:
            if "line" not in exc.context:
                return exc  # not about the file (the database, say): nothing to add
            return type(exc)(
                f"{exc.message}; nothing was imported",
                context=exc.context,
                correlation_id=exc.correlation_id,
            )
        fix = f"fix line {exc.context['line']}, then " if "line" in exc.context else ""
        context = {
            **exc.context,
            "imported": self.new,
            "already_recorded": self.known,
            "committed_through_line": self.through_line,
        }
        return type(exc)(
            f"{exc.message}; {self._done(' before it')}; {self._how(fix)}",
            context=context,
            correlation_id=exc.correlation_id,
        )

    def interrupted(self) -> str:
        """What stays committed after Ctrl-C, and how to go on safely."""
        parts = [self._done("") if self.through_line else "nothing was imported"]
        if self.writing is not None:
            first, last = self.writing
            parts.append(
                f"lines {first}-{last} were being committed and may be in the log too "
                "(look for their events before importing them again)"
            )
        if self.through_line:
            parts.append(self._how(""))
        elif self.writing is not None:
            parts.append("events with an id are skipped if imported again")
        return "interrupted: " + "; ".join(parts)


class _Interrupts:
    """Ctrl-C during an import waits for the batch being committed: it is then counted,
    so the message says exactly which lines are in the log. A second Ctrl-C stops at once.

    Only in the main thread, and only over Python's own handler (not over one a caller
    installed, nor where SIGINT is ignored).
    """

    def __init__(self) -> None:
        self.committing = False
        self.pending = False
        self._previous: Any = None

    def __enter__(self) -> _Interrupts:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.committing and not self.pending:
            self.pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """Ctrl-C within waits for the end of the block (unless pressed twice)."""
        self.committing = True
        try:
            yield
        finally:
            self.committing = False
        if self.pending:
            raise KeyboardInterrupt


_IMPORT_FIELDS = (
    "id",
    "type",
    "data",
    "metadata",
    "stream_id",
    "correlation_id",
    "causation_id",
)
# What an export writes (_event_row): the fields a line may have. Position, stream version
# and time are the exporting log's, taken and left aside (this log gives its own).
_EXPORTED_FIELDS = (*_IMPORT_FIELDS, "position", "stream_version", "recorded_at")


def _analyze(fdn: Foundation) -> None:
    """PostgreSQL: fresh statistics of the log while an import makes it grow.

    Plans cached in this session (the append function's reads of stream versions, the
    lookup of known ids) were made when the log was small, empty in a new database: a
    scan that costs nothing then costs the whole log per batch once it holds 100,000
    events (3 minutes instead of 10 seconds). ANALYZE invalidates them; it runs each time
    the log doubles, so a few times per import. Without ownership of the table it only
    warns, and the import goes on as before.
    """
    try:
        fdn.database.execute("ANALYZE foundation_events")
    except FoundationError as exc:
        log.info("could not analyze foundation_events during the import: %s", exc)


@events.command("import", short_help="Append the JSON-lines events of FILE (idempotent).")
@click.argument("file", type=click.File("rb"))
@click.pass_context
def events_import(ctx: click.Context, file: Any) -> None:
    """Append the JSON-lines events of FILE; events already recorded (same id) are skipped.

    Importing a file twice writes nothing the second time when its lines carry ids (an
    export's do); a line without an id gets a new one on each import.

    Positions, stream versions and timestamps are those of this log; ids, types, streams,
    data, metadata, correlation and causation ids are kept; a field an export does not
    write is refused. Events are committed in batches of at most 500 lines (fewer when
    the lines are large): an error, or Ctrl-C, says which lines were committed before it.
    """
    try:
        size = os.fstat(file.fileno()).st_size
    except (OSError, ValueError, io.UnsupportedOperation):
        size = 0
    tally = _Tally()
    name = getattr(file, "name", None)  # stdin may be a stream without one
    if isinstance(name, str) and name not in ("-", "<stdin>"):
        tally.file = shlex.quote(name)
    interrupted = False
    with (
        open_foundation(ctx, create=True) as fdn,
        _progress("importing", shown=size >= PROGRESS_MIN_BYTES, in_bytes=True) as progress,
        _Interrupts() as interrupts,
    ):
        task = progress.add_task("import", total=size or None)
        batch: list[tuple[int, dict[str, Any]]] = []  # (line number, event)
        batch_bytes = 0  # of its lines
        analyzed = [0]  # the log's last position at the last ANALYZE

        def commit(part: list[tuple[int, dict[str, Any]]]) -> None:
            before = fdn.events.last_position()
            if fdn.url.backend == "postgresql" and before >= 2 * analyzed[0] + IMPORT_BATCH:
                _analyze(fdn)
                analyzed[0] = before
            tally.writing = (part[0][0], part[-1][0])
            with interrupts.deferred():
                try:
                    records = fdn.events.store_many([event for _, event in part])
                except EventError as exc:
                    tally.writing = None  # all or nothing: nothing of it was written
                    if len(part) > 1 and "max_size" in exc.context:
                        # More JSON than its lines' bytes let expect (numbers written
                        # short, a typed event's defaults): in two halves, each smaller.
                        half = len(part) // 2
                        commit(part[:half])
                        commit(part[half:])
                        return
                    raise _name_the_line(fdn, part, exc) from None
                # New records lie past the log's end as it was; an id already recorded (or
                # repeated in the batch) is answered with its original record, so only
                # distinct new positions count.
                tally.committed(part, len({r.position for r in records if r.position > before}))

        def flush() -> None:
            nonlocal batch_bytes
            if batch:
                commit(batch)
            batch.clear()
            batch_bytes = 0

        try:
            for number, raw in enumerate(file, start=1):
                progress.advance(task, len(raw))
                try:
                    # A byte order mark some editors put first (Windows) is not a line's.
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8").strip()
                except UnicodeDecodeError as exc:
                    raise EventError(
                        f"line {number} is not UTF-8 text: {exc.reason} at byte {exc.start}",
                        context={"line": number},
                    ) from None
                if not line:
                    continue
                event = _import_event(line, number)
                if batch_bytes + len(raw) > IMPORT_BATCH_BYTES:
                    flush()  # a large line starts the next batch (alone, if larger still)
                batch.append((number, event))
                batch_bytes += len(raw)
                if len(batch) >= IMPORT_BATCH:
                    flush()
            flush()
        except FoundationError as exc:
            raise tally.explain(exc) from None
        except KeyboardInterrupt:
            interrupted = True  # said once the progress bar is gone
    if interrupted:
        click.echo(tally.interrupted(), err=True)
        raise click.Abort
    click.echo(f"imported {_plural(tally.new, 'event')}, skipped {tally.known} already recorded")
    if tally.without_id:
        # Idempotence rests on ids: such lines get new ones on every import.
        click.echo(
            f"note: {_plural(tally.without_id, 'line')} had no id; importing this file again "
            f"would record {'them' if tally.without_id > 1 else 'it'} again "
            "(`foundation events export` writes every event's id)",
            err=True,
        )
