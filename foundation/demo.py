"""A tour for newcomers: ``scripts/demo`` (or ``python -m foundation.demo``).

Runs on the embedded SQLite default (``sqlite:///foundation.db`` in the working
folder) unless ``FOUNDATION_DATABASE_URL`` says otherwise (``scripts/demo`` clears it and
runs in a new folder). It may run again on the same database: each run writes an order
stream of its own.
"""

from __future__ import annotations

import argparse
import secrets
import threading
import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

import foundation
from foundation import Foundation, FoundationError

console = Console(soft_wrap=True)  # a line stays one line in a log or a pipe


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
        before = default.get("port", 8080)
        source = default.explain("port").source or "the default given to get"
        console.print(f"  port before: {before} ({source})")
        started = time.perf_counter()
        with foundation.correlation("demo-deploy-1"):
            default.set("port", 4001 if before == 4000 else 4000)  # a change, on any run
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


def event_sourcing() -> None:
    section("Events: an order's stream, projected by a subscription")
    totals: dict[str, int] = {}
    projected = threading.Event()

    def project(event: Any) -> None:
        order = event.stream_id
        if event.type == "item_added":
            totals[order] = totals.get(order, 0) + event.data["price"]
        if event.type == "order_paid":
            projected.set()

    events = foundation.events
    run = secrets.token_hex(2)  # a stream of this run's own: the demo may run again
    order, checkout = f"order-{run}", f"checkout-{run}"
    subscription = events.subscribe(
        "order-totals", project, types=["item_added", "order_paid"], start="end"
    )
    with foundation.correlation(checkout):
        placed = events.store(
            {
                "type": "order_placed",
                "stream_id": order,
                "expected_version": "no_stream",
                "data": {"customer": "ada"},
            }
        )
        events.store_many(
            [
                {"type": "item_added", "stream_id": order, "data": {"sku": "A", "price": 30}},
                {"type": "item_added", "stream_id": order, "data": {"sku": "B", "price": 12}},
            ]
        )
        events.store(
            {
                "type": "order_paid",
                "stream_id": order,
                "expected_version": 3,
                "data": {"amount": 42},
                "causation_id": str(placed.id),
            }
        )
    projected.wait(5)
    console.print("  position (in the whole log, config changes included), stream version:")
    for event in events.read_stream(order):
        console.print(f"  #{event.position} v{event.stream_version} {event.type:<13} {event.data}")
    console.print(f"  projection (subscription, at least once): total = {totals.get(order)}")
    try:
        events.store(
            {
                "type": "order_paid",
                "stream_id": order,
                "expected_version": 3,
                "data": {"amount": 42},
            }
        )
    except FoundationError as err:
        console.print(f"  [yellow]{err.code}[/]: {err.message}")
    chain = events.correlation_chain(checkout)
    console.print(f"  correlation chain {checkout}: {[e.type for e in chain]}")
    subscription.stop()


def breaker_and_limiter() -> None:
    section("Circuit breaker and rate limiter: state shared by every node")

    def flaky() -> None:
        raise ConnectionError("payment gateway down")

    breaker = foundation.circuit_breaker.get("payments", max_failures=2, reset_timeout=30_000)
    breaker.reset()  # the state is shared and kept: a run a minute ago left it open
    for attempt in range(1, 4):
        try:
            breaker.execute(flaky)
        except FoundationError as err:
            console.print(f"  call {attempt}: [yellow]{err.code}[/] {err.context}")
        except ConnectionError as exc:
            console.print(f"  call {attempt}: failed ({exc}); breaker is {breaker.state}")
    window = f"demo-api:{secrets.token_hex(4)}"  # this run's own: the last run's is kept
    for attempt in range(1, 5):
        try:
            foundation.rate_limiter.execute(
                lambda: None, key=window, max_requests=3, interval=60_000
            )
            console.print(f"  request {attempt}: allowed")
        except FoundationError as err:
            console.print(
                f"  request {attempt}: [yellow]{err.code}[/] retry_after="
                f"{err.context['retry_after']} ms, limit={err.context['limit']}"
            )


_HOLDER = """
import sys, time
from foundation import Foundation
fdn = Foundation(sys.argv[1], registry_ttl_ms=1500, poll_interval_ms=10)
fdn.service_registry.register("auth_service", "http://10.0.0.5:8000", {"version": "1.0"})
print("registered", flush=True)
time.sleep(60)
"""


def registry_takeover() -> None:
    section("Service registry: a node dies, its name is taken over")
    import os
    import signal
    import subprocess
    import sys

    from foundation._default import instance

    url = instance().url.url.render_as_string(hide_password=False)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, url], stdout=subprocess.PIPE, text=True
    )
    with Foundation(registry_ttl_ms=1500, poll_interval_ms=10) as node:
        try:
            assert holder.stdout is not None
            holder.stdout.readline()
            gone = threading.Event()
            node.service_registry.watch(
                "auth_service", lambda change: gone.set() if change.kind == "expired" else None
            )
            entry = node.service_registry.find("auth_service")
            for _ in range(100):
                if entry is not None:
                    break
                time.sleep(0.02)
                entry = node.service_registry.find("auth_service")
            if entry is not None:
                console.print(
                    f"  node A (pid {holder.pid}) holds auth_service → {entry.address} "
                    f"(epoch {entry.epoch})"
                )
            try:
                node.service_registry.register("auth_service", "http://10.0.0.9:8000")
            except FoundationError as err:
                console.print(
                    f"  node B tries too: [yellow]{err.code}[/] (owner {err.context.get('owner')})"
                )
            os.kill(holder.pid, signal.SIGKILL)
            console.print("  node A killed with SIGKILL; its lease stops being renewed")
            started = time.perf_counter()
            gone.wait(10)
            console.print(
                f"  after {time.perf_counter() - started:.1f} s node B sees the name expire"
            )
            taken = node.service_registry.register("auth_service", "http://10.0.0.9:8000")
            console.print(
                f"  node B takes it: {taken.address} (epoch {taken.epoch}, a fencing token)"
            )
        finally:
            holder.kill()
            holder.wait()
            if holder.stdout is not None:
                holder.stdout.close()


class MetricsSummary:
    """Counts every event of Foundation's catalogue while the demo runs (issue: telemetry)."""

    def __init__(self) -> None:
        from foundation.telemetry.catalogue import emitted_names

        self.counts: dict[str, int] = {}
        self.durations: dict[str, list[float]] = {}
        foundation.telemetry.attach("demo-metrics", list[Any](emitted_names()), self.handle)

    def handle(self, event: tuple[str, ...], measurements: Mapping[str, Any], *_: Any) -> None:
        name = ".".join(event)
        self.counts[name] = self.counts.get(name, 0) + 1
        if "duration" in measurements:
            self.durations.setdefault(name, []).append(measurements["duration"] / 1000)

    def print(self) -> None:
        section("Metrics summary: this node's telemetry (the other nodes have their own)")
        foundation.telemetry.detach("demo-metrics")
        table = Table("event", "count", "median µs")
        for name in sorted(self.counts):
            samples = sorted(self.durations.get(name, []))
            median = f"{samples[len(samples) // 2]:.0f}" if samples else ""
            table.add_row(name, str(self.counts[name]), median)
        console.print(table)


def main(argv: list[str] | None = None) -> None:
    from foundation._default import instance

    # No options: --help says what the demo does and where it writes, before it writes.
    argparse.ArgumentParser(
        prog="python -m foundation.demo",
        description="A tour of Foundation: config, events, breaker and limiter, the "
        "registry's takeover, telemetry. It writes to FOUNDATION_DATABASE_URL (default "
        "sqlite:///foundation.db in this folder); scripts/demo runs it in a new folder.",
    ).parse_args(argv)
    console.print(f"[bold]Foundation demo[/] on {instance().url.masked}")
    metrics = MetricsSummary()
    config_across_two_instances()
    bad_input()
    event_sourcing()
    breaker_and_limiter()
    registry_takeover()
    telemetry_spans()
    metrics.print()
    console.print("[bold green]done.[/] Tests: scripts/test")


if __name__ == "__main__":
    main()
