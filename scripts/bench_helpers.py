"""The machinery of ``scripts/bench.py``: registry, timing, statistics, environment, reports.

A benchmark is a small function registered with :func:`bench`. It receives a
:class:`Context` and returns ``(samples, floor)`` where ``samples`` are per-operation
durations in nanoseconds and ``floor`` is ``None``, a :class:`Floor` (the raw driver doing
the same work) or a list of them; each floor becomes a row of its own. It may return a
:class:`Measured` instead, to attach a note to its rows.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = [
    "REGISTRY",
    "Bench",
    "Context",
    "Floor",
    "Measured",
    "Row",
    "Skip",
    "bench",
    "clock_overhead_ns",
    "environment",
    "load_average",
    "measure_calls",
    "measure_ops",
    "render_markdown",
    "run_all",
    "temporary_folder",
    "within_budget",
    "write_reports",
]

# -- results --------------------------------------------------------------------------


@dataclass(frozen=True)
class Floor:
    """What the raw driver (or plain Python) takes for the same work."""

    label: str
    samples: list[int]
    checked: bool = True
    """Whether the target's ratio applies to this floor (False: shown for information)."""
    ratio: float | None = None
    """The ratio (ours / this floor) to meet for this floor, instead of the row's own."""


@dataclass
class Measured:
    samples: list[int]
    floors: list[Floor] = field(default_factory=list)
    note: str = ""


BenchOutput = Measured | tuple[list[int], Floor | Sequence[Floor] | None]


class Skip(Exception):
    """Raised by a benchmark that cannot run here (e.g. no PostgreSQL); becomes a note."""


@dataclass(frozen=True)
class Target:
    text: str
    median_us: float | None = None
    p99_us: float | None = None
    ratio: float | None = None


@dataclass
class Row:
    name: str
    backend: str
    target: str
    status: str = "ok"  # "ok", "failed: …", "skipped: …"
    n: int = 0
    median_us: float | None = None
    p99_us: float | None = None
    mean_us: float | None = None
    min_us: float | None = None
    max_us: float | None = None
    floor: str | None = None
    floor_median_us: float | None = None
    floor_p99_us: float | None = None
    ratio: float | None = None
    met: str = "—"
    note: str = ""


# -- the registry ---------------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    name: str
    backend: str
    target: Target
    fn: Callable[[Context], BenchOutput]
    origin: Callable[..., BenchOutput]


REGISTRY: list[Bench] = []


def bench(
    name: str,
    *,
    backend: str = "memory",
    target: str = "",
    median_us: float | None = None,
    p99_us: float | None = None,
    ratio: float | None = None,
    **params: Any,
) -> Callable[[Callable[..., BenchOutput]], Callable[..., BenchOutput]]:
    """Register ``fn(ctx, **params)`` as the row(s) ``name``; stack it for variants.

    ``median_us``, ``p99_us`` and ``ratio`` (ours / floor) are the machine-checked parts of
    ``target`` (the text shown); any that is set must hold for the row to be marked met.
    """

    def register(fn: Callable[..., BenchOutput]) -> Callable[..., BenchOutput]:
        bound = functools.partial(fn, **params) if params else fn
        entry = Bench(name, backend, Target(target, median_us, p99_us, ratio), bound, fn)
        # Stacked decorators apply bottom-up: insert before this function's other variants
        # so that rows come out in the order they are written.
        at = len(REGISTRY)
        while at > 0 and REGISTRY[at - 1].origin is fn:
            at -= 1
        REGISTRY.insert(at, entry)
        return fn

    return register


# -- timing ---------------------------------------------------------------------------


def clock_overhead_ns(rounds: int = 20_000) -> int:
    """The median cost of the timing itself (two back-to-back ``perf_counter_ns`` calls)."""
    pc = time.perf_counter_ns
    gaps = []
    for _ in range(rounds):
        t0 = pc()
        gaps.append(pc() - t0)
    return int(statistics.median(gaps))


def _block(block: int, n: int) -> int:
    """At most ``block`` calls in a row, and at least ten alternations over the run."""
    return max(1, min(block, n // 10))


def within_budget(n: int, fn: Callable[..., Any], args: tuple[Any, ...], seconds: float) -> int:
    """``n``, or fewer calls if ``n`` calls of ``fn(*args)`` would take over ``seconds``."""
    started = time.perf_counter_ns()
    for _ in range(10):
        fn(*args)
    per_call = max(1, (time.perf_counter_ns() - started) // 10)
    return max(10, min(n, int(seconds * 1e9 / per_call)))


def measure_calls(
    variants: Sequence[tuple[Callable[..., Any], tuple[Any, ...]]],
    n: int,
    warmup: int,
    block: int = 1000,
) -> list[list[int]]:
    """Time ``fn(*args)`` per call for each variant, ``n`` times, in alternating blocks.

    For hot paths whose arguments do not change: no wrapper function is timed. Blocks
    alternate between the variants so that drift (frequency scaling, a neighbour) hits
    them alike; the first ``warmup`` calls of each are not recorded.
    """
    pc = time.perf_counter_ns
    for fn, args in variants:
        for _ in range(warmup):
            fn(*args)
    block = _block(block, n)
    results: list[list[int]] = [[] for _ in variants]
    done = 0
    while done < n:
        k = min(block, n - done)
        for (fn, args), out in zip(variants, results, strict=True):
            append = out.append
            for _ in range(k):
                t0 = pc()
                fn(*args)
                append(pc() - t0)
        done += k
    return results


def measure_ops(
    variants: Sequence[Callable[[int], Any]], n: int, warmup: int, block: int = 100
) -> list[list[int]]:
    """Time ``fn(i)`` per call for each variant (``i`` unique across all calls), in blocks.

    For writes: ``i`` makes every value new, so each call really changes a row.
    """
    pc = time.perf_counter_ns
    i = 0
    for fn in variants:
        for _ in range(warmup):
            fn(i)
            i += 1
    block = _block(block, n)
    results: list[list[int]] = [[] for _ in variants]
    done = 0
    while done < n:
        k = min(block, n - done)
        for fn, out in zip(variants, results, strict=True):
            append = out.append
            for _ in range(k):
                t0 = pc()
                fn(i)
                append(pc() - t0)
                i += 1
        done += k
    return results


# -- the run context ------------------------------------------------------------------


class Context:
    """What a benchmark may use: sizes, a temporary folder, a PostgreSQL server."""

    def __init__(
        self,
        *,
        quick: bool,
        tmp: Path,
        pg_server: str | None,
        pg_skip_reason: str,
    ) -> None:
        self.quick = quick
        self.tmp = tmp
        self.pg_server = pg_server
        self.pg_skip_reason = pg_skip_reason
        self._pg_created: set[str] = set()

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def sqlite_path(self, stem: str) -> Path:
        return self.tmp / f"{stem}-{secrets.token_hex(4)}.db"

    def sqlite_url(self, stem: str) -> str:
        return f"sqlite:///{self.sqlite_path(stem)}"

    def require_postgres(self) -> str:
        if self.pg_server is None:
            raise Skip("no PostgreSQL (see the note below)")
        return self.pg_server

    @contextlib.contextmanager
    def pg_database(self) -> Iterator[str]:
        """A fresh ``foundation_bench_<random>`` database on the server, dropped afterwards."""
        import psycopg
        from psycopg import sql

        from foundation.database.url import DatabaseURL

        server = DatabaseURL.parse(self.require_postgres())
        name = f"foundation_bench_{secrets.token_hex(6)}"
        with psycopg.connect(server.conninfo, autocommit=True, connect_timeout=5) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self._pg_created.add(name)
        try:
            yield server.url.set(database=name).render_as_string(hide_password=False)
        finally:
            self.drop_pg_database(name)

    def drop_pg_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        from foundation.database.url import DatabaseURL

        assert self.pg_server is not None
        conninfo = DatabaseURL.parse(self.pg_server).conninfo
        try:
            with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as admin:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
            self._pg_created.discard(name)
        except psycopg.Error as exc:
            print(f"warning: could not drop database {name}: {exc}", file=sys.stderr)

    def cleanup(self) -> None:
        for name in list(self._pg_created):
            self.drop_pg_database(name)


# -- statistics and rows --------------------------------------------------------------


def _percentile(sorted_ns: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of an ascending sequence."""
    rank = max(1, math.ceil(q * len(sorted_ns)))
    return sorted_ns[rank - 1]


def _stats(samples: Sequence[int], overhead_ns: int) -> dict[str, float]:
    ordered = sorted(max(0, s - overhead_ns) for s in samples)
    return {
        "n": len(ordered),
        "median_us": statistics.median(ordered) / 1000,
        "p99_us": _percentile(ordered, 0.99) / 1000,
        "mean_us": statistics.fmean(ordered) / 1000,
        "min_us": ordered[0] / 1000,
        "max_us": ordered[-1] / 1000,
    }


def _verdict(
    target: Target, row: Row, floor_checked: bool, floor_ratio: float | None = None
) -> str:
    checks: list[bool] = []
    if target.median_us is not None and row.median_us is not None:
        checks.append(row.median_us <= target.median_us)
    if target.p99_us is not None and row.p99_us is not None:
        checks.append(row.p99_us <= target.p99_us)
    ratio = target.ratio if floor_ratio is None else floor_ratio
    if ratio is not None and floor_checked and row.ratio is not None:
        checks.append(row.ratio <= ratio)
    if not checks:
        return "—"
    return "yes" if all(checks) else "NO"


def _rows_for(b: Bench, output: BenchOutput, overhead_ns: int) -> list[Row]:
    if isinstance(output, Measured):
        measured = output
    else:
        samples, floors = output
        if floors is None:
            floor_list: list[Floor] = []
        elif isinstance(floors, Floor):
            floor_list = [floors]
        else:
            floor_list = list(floors)
        measured = Measured(samples, floor_list)
    if not measured.samples:
        raise RuntimeError("the benchmark returned no samples")
    ours = _stats(measured.samples, overhead_ns)
    rows = []
    row_floors: list[Floor | None] = list(measured.floors) or [None]
    for floor in row_floors:
        row = Row(name=b.name, backend=b.backend, target=b.target.text, note=measured.note)
        row.n = int(ours["n"])
        row.median_us, row.p99_us = ours["median_us"], ours["p99_us"]
        row.mean_us, row.min_us, row.max_us = ours["mean_us"], ours["min_us"], ours["max_us"]
        checked, floor_ratio = True, None
        if floor is not None and floor.samples:
            fs = _stats(floor.samples, overhead_ns)
            row.floor = floor.label
            row.floor_median_us, row.floor_p99_us = fs["median_us"], fs["p99_us"]
            if fs["median_us"] >= 0.005:  # shown as 0.00 below that: no ratio
                row.ratio = ours["median_us"] / fs["median_us"]
            checked, floor_ratio = floor.checked, floor.ratio
            notes = [row.note]
            if not floor.checked:
                notes.append("second floor, for information (the target is checked above)")
            if fs["median_us"] < 0.1:
                notes.append("the floor is at the timer's resolution: its ratio is indicative")
            row.note = "; ".join(x for x in notes if x)
        row.met = _verdict(b.target, row, checked, floor_ratio)
        rows.append(row)
    return rows


def run_all(
    ctx: Context, only: str | None, overhead_ns: int, log: Callable[[str], None]
) -> list[Row]:
    """Run every registered benchmark (or those whose name starts with ``only``)."""
    rows: list[Row] = []
    for b in REGISTRY:
        if only and not b.name.startswith(only):
            continue
        log(f"running {b.name} [{b.backend}] …")
        started = time.perf_counter()
        try:
            output = b.fn(ctx)
            new = _rows_for(b, output, overhead_ns)
        except Skip as exc:
            new = [Row(b.name, b.backend, b.target.text, status=f"skipped: {exc}")]
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            message = " ".join(str(exc).split())[:160]
            new = [
                Row(
                    b.name,
                    b.backend,
                    b.target.text,
                    status=f"failed: {type(exc).__name__}: {message}",
                )
            ]
        log(f"  {time.perf_counter() - started:.1f} s: " + "; ".join(_brief(r) for r in new))
        rows.extend(new)
    return rows


def _brief(row: Row) -> str:
    if row.status != "ok":
        return row.status
    text = f"median {_us(row.median_us)} µs, p99 {_us(row.p99_us)} µs"
    if row.ratio is not None:
        text += f", {row.ratio:.2f}x {row.floor}"
    return text


# -- environment ----------------------------------------------------------------------


def _fs_type(path: Path) -> str:
    """The filesystem type holding ``path`` (from /proc/mounts; '?' elsewhere)."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return "?"
    target = str(path.resolve())
    best, kind = "", "?"
    for line in mounts:
        parts = line.split()
        if len(parts) >= 3:
            mount = parts[1]
            inside = target == mount or target.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) > len(best):
                best, kind = mount, parts[2]
    return f"{kind} (mounted at {best})" if best else kind


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "?"
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def environment(ctx: Context, overhead_ns: int) -> dict[str, Any]:
    import psycopg

    import foundation

    env: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "machine": f"{platform.machine()} {platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "foundation": foundation.__version__,
        "sqlite": sqlite3.sqlite_version,
        "sqlite_settings": "WAL, synchronous per row (NORMAL unless the row says FULL), "
        "same pragmas on the floor connections",
        "sqlite_files": f"{ctx.tmp} on {_fs_type(ctx.tmp)}",
        "psycopg": f"{psycopg.__version__} (libpq {psycopg.pq.version()})",
        "clock_overhead_ns": overhead_ns,
        "load": load_average(),
        "mode": "quick" if ctx.quick else "full",
    }
    if ctx.pg_server is None:
        env["postgresql"] = f"not used: {ctx.pg_skip_reason}"
        return env
    from foundation.database.url import DatabaseURL

    server = DatabaseURL.parse(ctx.pg_server)
    try:
        with psycopg.connect(server.conninfo, autocommit=True, connect_timeout=5) as conn:
            shown = {}
            for setting in ("server_version", "synchronous_commit", "fsync", "wal_sync_method"):
                row = conn.execute(f"SHOW {setting}").fetchone()  # a fixed list of names
                shown[setting] = row[0] if row else "?"
        env["postgresql"] = f"{shown.pop('server_version')} at {server.masked}"
        env["postgresql_settings"] = ", ".join(f"{k}={v}" for k, v in shown.items())
    except psycopg.Error as exc:
        env["postgresql"] = f"? ({exc})"
    return env


# -- reports --------------------------------------------------------------------------


def _us(value: float | None) -> str:
    if value is None:
        return ""
    if value < 10:
        return f"{value:.2f}"
    if value < 1000:
        return f"{value:.1f}"
    return f"{value:,.0f}"


_ENV_LABELS = {
    "date": "Date",
    "cpus": "CPUs",
    "machine": "Machine",
    "python": "Python",
    "foundation": "foundation",
    "sqlite": "SQLite",
    "sqlite_settings": "SQLite settings",
    "sqlite_files": "SQLite files",
    "psycopg": "psycopg",
    "postgresql": "PostgreSQL",
    "postgresql_settings": "PostgreSQL settings",
    "clock_overhead_ns": "Clock overhead (subtracted from every sample), ns",
    "load": "Load average (1/5/15 min) at start",
    "load_end": "Load average at end",
    "mode": "Mode",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(env: dict[str, Any], rows: Sequence[Row], notes: Sequence[str] = ()) -> str:
    lines = ["# Foundation benchmark", ""]
    for key, value in env.items():
        lines.append(f"- {_ENV_LABELS.get(key, key)}: {value}")
    lines += [
        "",
        "Per-operation times (`perf_counter_ns` around each call, warm-up excluded, gc on). "
        "Floor: the raw driver (or plain Python) doing the same work in the same run; "
        "ours and the floor alternate in blocks.",
        "",
        "| operation | backend | n | median µs | p99 µs | target | floor | "
        "floor median µs | ours/floor | met |",
        "|---|---|--:|--:|--:|---|---|--:|--:|:-:|",
    ]
    footnotes: list[str] = []
    for row in rows:
        if row.status != "ok":
            lines.append(
                f"| {_cell(row.name)} | {row.backend} | | | | {_cell(row.target)} "
                f"| {_cell(row.status)} | | | |"
            )
            continue
        name = _cell(row.name)
        if row.note:
            if row.note not in footnotes:
                footnotes.append(row.note)
            name += f" [{footnotes.index(row.note) + 1}]"
        ratio = f"{row.ratio:.2f}x" if row.ratio is not None else ""
        if row.ratio is None and row.floor is not None:
            ratio = "n/a"  # the floor rounds to zero once the clock's own cost is removed
        lines.append(
            f"| {name} | {row.backend} | {row.n} | {_us(row.median_us)} | {_us(row.p99_us)} "
            f"| {_cell(row.target)} | {_cell(row.floor or '—')} | {_us(row.floor_median_us)} "
            f"| {ratio} "
            f"| {row.met} |"
        )
    if footnotes:
        lines.append("")
        lines += [f"[{i}] {text}" for i, text in enumerate(footnotes, 1)]
    if notes:
        lines.append("")
        lines += [f"Note: {text}" for text in notes]
    return "\n".join(lines) + "\n"


def write_reports(
    out: Path, env: dict[str, Any], rows: Sequence[Row], markdown: str, meta: dict[str, Any]
) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md_path, json_path = out / "bench.md", out / "bench.json"
    md_path.write_text(markdown, encoding="utf-8")
    payload = {"environment": env, **meta, "rows": [asdict(r) for r in rows]}
    json_path.write_text(json.dumps(payload, indent=2, ensure_ascii=False) + "\n", "utf-8")
    return md_path, json_path


@contextlib.contextmanager
def temporary_folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="foundation-bench-") as name:
        yield Path(name)
