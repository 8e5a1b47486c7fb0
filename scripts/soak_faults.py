"""The soak's faults, each a switch, injected one after another on a fixed beat.

``kill``      SIGKILL a random worker; the supervisor restarts it (a new node id).
``stop``      SIGSTOP a random worker for 1.5 lease TTLs (+0.5 s), then SIGCONT.
``terminate`` ``pg_terminate_backend`` of every connection to the soak database,
              the LISTEN ones included (PostgreSQL).
``restart``   ``pg_ctl restart -m fast`` (or ``-m immediate``: a crash) of the harness's
              *own* cluster (PostgreSQL with ``--own-cluster``; never the shared server).
``slow``      the latency proxy holds every chunk 50 ms, both ways, for 3 s
              (PostgreSQL: the workers connect through the proxy).
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from soak_db import OwnCluster, terminate_backends
from soak_proxy import LatencyProxy

ALL_FAULTS = ("kill", "stop", "terminate", "restart", "slow")
SQLITE_FAULTS = ("kill", "stop")
SLOW_S, SLOW_DELAY_S = 3.0, 0.05


class Faults:
    """Runs the enabled faults round-robin until ``stop_at``; counts and logs each one."""

    def __init__(
        self,
        enabled: list[str],
        every_s: float,
        stop_at: float,
        workers: Any,  # soak.Supervisor: alive(), kill(wid), pid(wid)
        db_url: str,
        ttl_ms: int,
        cluster: OwnCluster | None,
        proxy: LatencyProxy | None,
        seed: int,
        restart_mode: str = "fast",
    ) -> None:
        self.restart_mode = restart_mode
        self.enabled = enabled
        self.every_s = every_s
        self.stop_at = stop_at
        self.workers = workers
        self.db_url = db_url
        self.ttl_ms = ttl_ms
        self.cluster = cluster
        self.proxy = proxy
        self.rng = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.log: list[dict[str, Any]] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._run, name="soak-faults", daemon=True)

    def start(self) -> None:
        if self.enabled:
            self._thread.start()

    def join(self) -> None:
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        actions: dict[str, Callable[[], Any]] = {
            "kill": self.kill, "stop": self.stop, "terminate": self.terminate,
            "restart": self.restart, "slow": self.slow,
        }
        time.sleep(min(self.every_s, 2.0))  # let the workers start first
        # How long each fault lasts: none may run past the deadline, so that the drain
        # (and the subscriptions' catching up) happens with the faults over.
        lasts = {"stop": self.pause_s, "slow": SLOW_S, "restart": 2.0}
        for name in itertools.cycle(self.enabled):
            if time.time() + lasts.get(name, 0.0) + 1 >= self.stop_at:
                return
            began = time.time()
            try:
                detail = actions[name]()
            except Exception as exc:  # a fault that could not be injected is reported
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                continue
            if detail is not None:
                self.counts[name] += 1
                self.log.append({"fault": name, "at": began, "took_s": time.time() - began,
                                 "detail": detail})
            time.sleep(self.every_s)

    def _victim(self) -> int | None:
        alive = self.workers.alive()
        return self.rng.choice(alive) if alive else None

    @property
    def pause_s(self) -> float:
        return 1.5 * self.ttl_ms / 1000 + 0.5

    def kill(self) -> Any:
        wid = self._victim()
        if wid is None:
            return None
        self.workers.kill(wid)
        return {"worker": wid}

    def stop(self) -> Any:
        wid = self._victim()
        if wid is None:
            return None
        pid = self.workers.pid(wid)
        pause = self.pause_s
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(pause)
        finally:
            os.kill(pid, signal.SIGCONT)
        return {"worker": wid, "paused_s": pause}

    def terminate(self) -> Any:
        return {"terminated": terminate_backends(self.db_url)}

    def restart(self) -> Any:
        assert self.cluster is not None
        self.cluster.restart(self.restart_mode)
        return {"port": self.cluster.port, "mode": self.restart_mode}

    def slow(self) -> Any:
        assert self.proxy is not None
        self.proxy.delay_s = SLOW_DELAY_S
        try:
            time.sleep(SLOW_S)
        finally:
            self.proxy.delay_s = 0.0
        return {"delay_ms": SLOW_DELAY_S * 1000, "for_s": SLOW_S}
