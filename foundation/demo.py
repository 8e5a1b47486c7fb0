"""A tour for newcomers: ``scripts/demo`` (or ``python -m foundation.demo``).

Runs on the embedded SQLite default (``sqlite:///foundation.db`` in the working
folder) unless ``FOUNDATION_DATABASE_URL`` says otherwise.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

import foundation
from foundation import Foundation, FoundationError

console = Console()


def section(title: str) -> None:
    console.rule(f"[bold cyan]{title}")


def config_across_two_instances() -> None:
    section("Config: one value, every node")
    # The module-level API uses the default instance; `other` plays a second node.
    default = foundation.config
    with Foundation(poll_interval_ms=10) as other:
        changed = threading.Event()

        def on_change(change: foundation.config.ConfigChange) -> None:
            console.print(
                f"  [green]watcher on the other node[/]: {change.key} "
                f"{change.old!r} → {change.new!r} ({change.source})"
            )
            changed.set()

        other.config.watch("port", on_change)
        console.print(f"  port before: {default.get('port', 8080)} (the default given to get)")
        started = time.perf_counter()
        with foundation.correlation("demo-deploy-1"):
            default.set("port", 4000)
        changed.wait(5)
        console.print(
            f"  set on this node, seen on the other after "
            f"{(time.perf_counter() - started) * 1000:.1f} ms: {other.config.get('port')}"
        )
        explained = other.config.explain("port")
        console.print(f"  where it comes from: {explained.source}")

    table = Table("when", "key", "op", "old", "new", "by", "correlation")
    for entry in default.history(limit=5):
        table.add_row(
            entry.changed_at.strftime("%H:%M:%S.%f")[:-3],
            entry.key,
            entry.operation,
            repr(entry.old_value),
            repr(entry.new_value),
            entry.changed_by,
            entry.correlation_id or "",
        )
    console.print(table)


def bad_input() -> None:
    section("Bad input: one error type, nothing written")
    for key, value in (("", 1), ("ratio", float("nan")), ("blob", object())):
        try:
            foundation.config.set(key, value)
        except FoundationError as err:
            console.print(f"  [yellow]{err.code}[/]: {err.message}")


def telemetry_spans() -> None:
    section("Telemetry: spans and handlers")
    durations: dict[str, float] = {}

    def on_stop(event: tuple[str, ...], measurements: Mapping[str, Any], *_: Any) -> None:
        durations[".".join(event)] = measurements["duration"] / 1000

    foundation.telemetry.attach("demo", ["demo.checkout.stop", "foundation.config.set"], on_stop)
    with foundation.telemetry.span("demo.checkout", {"order": 123}):
        foundation.config.set("last_order", 123)
    for name, micros in durations.items():
        console.print(f"  {name}: {micros:.0f} µs")
    foundation.telemetry.detach("demo")


def main() -> None:
    from foundation._default import instance

    console.print(f"[bold]Foundation demo[/] on {instance().url.masked}")
    config_across_two_instances()
    bad_input()
    telemetry_spans()
    console.print("[bold green]done.[/] Tests: scripts/test")


if __name__ == "__main__":
    main()
