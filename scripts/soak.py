#!/usr/bin/env python
"""Soak Foundation: N worker processes on one database, faults injected, then a verifier.

    .venv/bin/python scripts/soak.py --database sqlite --duration 120 --out /tmp/soak
    .venv/bin/python scripts/soak.py --own-cluster --duration 600 --out /tmp/soak-pg
    .venv/bin/python scripts/soak.py --database postgresql+psycopg://postgres@127.0.0.1/test \
        --faults kill,stop,terminate,slow

Every worker stores events in shared streams with expected versions, follows the log
with a durable subscription, holds registry names, goes through a shared rate limiter
and a shared breaker, and sets and reads config; each writes what it was acknowledged
to ``--out``. After the deadline the verifier checks the invariants from the database
and the ack logs, and the report goes to stdout, ``report.md`` and ``report.json``.
See docs/soak.md. Exit status: 0 when no invariant was violated.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from soak_db import OwnCluster, create_database, drop_database, prepare
from soak_faults import ALL_FAULTS, SQLITE_FAULTS, Faults
from soak_proxy import LatencyProxy
from soak_report import render, summarize
from soak_verify import Params, verify

from foundation.database.url import DatabaseURL

WORKER = str(Path(__file__).with_name("soak_worker.py"))


class Supervisor:
    """Starts the workers, restarts the ones the faults killed, notices the others."""

    def __init__(self, count: int, base: dict[str, Any], out: Path) -> None:
        self.base = base
        self.out = out
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.runs = dict.fromkeys(range(count), 0)
        self.killed: set[int] = set()
        self.crashes: list[str] = []
        self.restarts = 0
        for wid in range(count):
            self._spawn(wid)

    def _spawn(self, wid: int) -> None:
        faces = self.base["faces"]
        face = faces if faces != "both" else ("async" if wid % 2 else "sync")
        opts = {**self.base, "wid": wid, "run": self.runs[wid], "face": face}
        log = open(self.out / f"worker-w{wid}-r{self.runs[wid]}.log", "wb")  # noqa: SIM115
        self.procs[wid] = subprocess.Popen(
            [sys.executable, WORKER, json.dumps(opts)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()  # the child holds its own copy

    def alive(self) -> list[int]:
        return [w for w, p in self.procs.items() if p.poll() is None and w not in self.killed]

    def pid(self, wid: int) -> int:
        return self.procs[wid].pid

    def kill(self, wid: int) -> None:
        self.killed.add(wid)
        os.kill(self.procs[wid].pid, signal.SIGKILL)

    def tick(self, restart_until: float) -> bool:
        """Reap exited workers, restart what must go on; True while any is running."""
        running = False
        for wid, proc in list(self.procs.items()):
            rc = proc.poll()
            if rc is None:
                running = True
                continue
            if wid in self.killed:
                self.killed.discard(wid)
            elif rc != 0:
                log = self.out / f"worker-w{wid}-r{self.runs[wid]}.log"
                tail = log.read_text(errors="replace")[-1500:]
                self.crashes.append(f"worker {wid} run {self.runs[wid]} exited {rc}: {tail}")
            else:
                continue  # finished its drain: done for good
            if time.time() < restart_until:
                self.runs[wid] += 1
                self.restarts += 1
                self._spawn(wid)
                running = True
        return running

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--database", default="sqlite",
                   help="'sqlite' (a file in --out), sqlite:///path, or a PostgreSQL server URL "
                        "(a fresh database is created on it and dropped afterwards)")
    p.add_argument("--own-cluster", action="store_true",
                   help="PostgreSQL: initdb a throwaway cluster on a free port (needed by the "
                        "restart fault)")
    p.add_argument("--restart-mode", choices=["fast", "immediate"], default="fast",
                   help="the restart fault: a clean restart, or a crash (immediate) after which "
                        "the workers' limiter commits synchronously (see docs/soak.md)")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--duration", type=float, default=60, help="seconds of load")
    p.add_argument("--faults", default="all",
                   help=f"comma list of {','.join(ALL_FAULTS)}, 'all' or 'none'")
    p.add_argument("--fault-every", type=float, default=4.0, help="seconds between faults")
    p.add_argument("--ttl-ms", type=int, default=2000, help="registry lease TTL")
    p.add_argument("--drain", type=float, default=45, help="seconds allowed to catch up")
    p.add_argument("--pace-ms", type=float, default=5, help="sleep per round of operations")
    p.add_argument("--limit", type=int, default=20, help="limiter: requests per window")
    p.add_argument("--window-ms", type=int, default=1000)
    p.add_argument("--faces", choices=["both", "sync", "async"], default="both",
                   help="Foundation or AsyncFoundation nodes (both: odd workers are async)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--out", type=Path, default=Path("soak-out"))
    p.add_argument("--keep", action="store_true", help="keep the PostgreSQL database/cluster")
    return p.parse_args(argv)


def choose_faults(spec: str, backend: str, own_cluster: bool) -> tuple[list[str], list[str]]:
    """(enabled, skipped with why) for this backend."""
    wanted = list(ALL_FAULTS) if spec == "all" else [] if spec == "none" else spec.split(",")
    enabled, skipped = [], []
    for fault in wanted:
        if fault not in ALL_FAULTS:
            raise SystemExit(f"unknown fault {fault!r}")
        if backend == "sqlite" and fault not in SQLITE_FAULTS:
            skipped.append(f"{fault}: not applicable to SQLite")
        elif fault == "restart" and not own_cluster:
            skipped.append("restart: only with --own-cluster (the shared server stays up)")
        else:
            enabled.append(fault)
    return enabled, skipped


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    # SIGTERM (and SIGINT, which a background job ignores) end the soak through the
    # finally below: workers killed, database dropped, own cluster stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    for old in [*out.glob("acks-*.jsonl"), *out.glob("worker-*.log")]:
        old.unlink()
    cluster = OwnCluster().start() if args.own_cluster else None
    if cluster is not None:
        server = cluster.url
    elif args.database == "sqlite":
        server = f"sqlite:///{out / 'soak.db'}"
        Path(out / "soak.db").unlink(missing_ok=True)
    else:
        server = args.database
    backend = DatabaseURL.parse(server).backend
    url = create_database(server) if backend == "postgresql" else server
    enabled, skipped = choose_faults(args.faults, backend, cluster is not None)
    proxy, workers = None, None
    try:
        prepare(url)
        worker_url = url
        if backend == "postgresql" and "slow" in enabled:
            parsed = DatabaseURL.parse(url).url
            proxy = LatencyProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
            worker_url = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(
                hide_password=False
            )
        started = time.time() + 1.0
        deadline = started + args.duration
        base = {
            "url": worker_url, "direct_url": url, "backend": backend, "out": str(out),
            "deadline": deadline, "drain_s": args.drain, "ttl_ms": args.ttl_ms,
            "seed": args.seed, "streams": 6, "limit": args.limit,
            "window_ms": args.window_ms, "pace_ms": args.pace_ms, "faces": args.faces,
            "restart_mode": args.restart_mode,
        }
        print(f"soak: {args.workers} workers on {DatabaseURL.parse(url).masked} for "
              f"{args.duration:.0f} s, faults: {', '.join(enabled) or 'none'}", flush=True)
        workers = Supervisor(args.workers, base, out)
        faults = Faults(enabled, args.fault_every, deadline, workers, url, args.ttl_ms,
                        cluster, proxy, args.seed, args.restart_mode)
        faults.start()
        hang_at = deadline + args.drain + 60
        while workers.tick(restart_until=deadline + args.drain / 2):
            if time.time() > hang_at:
                workers.crashes.append("hang: workers still running 60 s after the drain")
                workers.kill_all()
                break
            time.sleep(0.2)
        faults.join()
        ended = time.time()
        params = Params(limit=args.limit, window_ms=args.window_ms, max_failures=3,
                        workers=args.workers, deadline=deadline)
        results = verify(url, out, params)
        summary = summarize(
            out, results, backend=backend, workers=args.workers, duration_s=args.duration,
            wall_s=ended - started, faults=faults, skipped=skipped,
            crashes=workers.crashes, restarts=workers.restarts,
        )
        text = render(summary)
        print(text)
        (out / "report.md").write_text(text)
        (out / "report.json").write_text(json.dumps(summary, indent=2, default=str))
        return 0 if summary["violations"] == 0 else 1
    finally:
        if workers is not None:
            workers.kill_all()  # only left running when the harness itself failed
        if proxy is not None:
            proxy.stop()
        if backend == "postgresql" and not args.keep:
            drop_database(url)
        if cluster is not None and not args.keep:
            cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
