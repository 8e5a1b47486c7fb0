"""The soak's report: operations per second per component, faults, invariants, violations.

``summarize`` gathers one JSON-ready dict; ``render`` turns it into the markdown that is
printed and written to ``report.md``.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from soak_verify import read_acks

# component -> the worker counters that are its operations
COMPONENTS = {
    "events (store)": ["events"],
    "subscriptions (delivered)": ["subscription.delivered"],
    "registry (register/lookup)": ["registry.registered", "registry.lookup"],
    "rate limiter (decisions)": ["limiter.admitted", "limiter.rejected"],
    "circuit breaker (calls)": ["breaker.ok", "breaker.failed", "breaker.rejected"],
    "config (get/set)": ["config.get", "config.set"],
}


def _totals(out: Path) -> Counter[str]:
    """Each run's last running counts, summed over runs (a killed run's last second is lost)."""
    total: Counter[str] = Counter()
    for lines in read_acks(out).values():
        stats = [line for line in lines if line["k"] == "stats"]
        if stats:
            total.update(stats[-1]["counts"])
    return total


def summarize(
    out: Path, results: list[dict[str, Any]], *, backend: str, workers: int, duration_s: float,
    wall_s: float, faults: Any, skipped: list[str], crashes: list[str], restarts: int,
) -> dict[str, Any]:
    totals = _totals(out)
    components = {
        name: {"operations": sum(totals[k] for k in keys),
               "per_s": round(sum(totals[k] for k in keys) / duration_s, 1)}
        for name, keys in COMPONENTS.items()
    }
    errors = {k: v for k, v in sorted(totals.items()) if k.startswith(("error.", "escape."))}
    crash_check = {"name": "workers.no_crash_or_hang", "what": "no worker died on its own "
                   "or hung", "checked": workers, "violations": len(crashes),
                   "examples": crashes[:20]}
    invariants = [*results, crash_check]
    return {
        "backend": backend,
        "workers": workers,
        "duration_s": duration_s,
        "wall_s": round(wall_s, 1),
        "components": components,
        "faults": {name: faults.counts.get(name, 0) for name in faults.enabled},
        "fault_errors": faults.errors,
        "faults_skipped": skipped,
        "worker_restarts": restarts,
        "invariants": invariants,
        "violations": sum(i["violations"] for i in invariants) + len(faults.errors),
        "errors_seen_by_callers": errors,
        "other_counts": {k: v for k, v in sorted(totals.items()) if k not in errors},
    }


def _exercised(invariant: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v}" for k, v in invariant.get("exercised", {}).items())


def render(s: dict[str, Any]) -> str:
    lines = [
        f"# Soak report: {s['backend']}, {s['workers']} workers, {s['duration_s']:.0f} s "
        f"of load ({s['wall_s']} s wall)",
        "",
        "| component | operations | per second |",
        "|---|---:|---:|",
        *(f"| {n} | {c['operations']} | {c['per_s']} |" for n, c in s["components"].items()),
        "",
        "| fault | injected |",
        "|---|---:|",
        *(f"| {n} | {k} |" for n, k in s["faults"].items()),
        f"| (worker restarts) | {s['worker_restarts']} |",
        "",
        "| invariant | checked | violations | exercised |",
        "|---|---:|---:|---|",
        *(f"| {i['name']} | {i['checked']} | {i['violations']} | {_exercised(i)} |"
          for i in s["invariants"]),
        "",
        f"**violations: {s['violations']}**",
    ]
    for skipped in s["faults_skipped"]:
        lines.append(f"- fault skipped: {skipped}")
    for error in s["fault_errors"]:
        lines.append(f"- fault NOT injected: {error}")
    for i in s["invariants"]:
        for example in i["examples"]:
            lines.append(f"- {i['name']}: {example[:500]}")
    if s["errors_seen_by_callers"]:
        lines += ["", "FoundationErrors callers saw (expected under faults): "
                  + json.dumps(s["errors_seen_by_callers"])]
    return "\n".join(lines) + "\n"
