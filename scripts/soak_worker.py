"""One soak worker: a Foundation node doing every kind of work until the deadline.

Run by ``scripts/soak.py`` as ``python scripts/soak_worker.py '<json options>'``. It
writes what it was *acknowledged* to a JSON-lines file, one flushed line per ack, after
the call returned: a ``kill -9`` loses at most the line in flight, so a missing line is
a missing claim, never a false one. Once a second it also writes its running counts
(for the report's rates). After the deadline it stops producing, lets its subscription
catch up and its config cache converge, writes what it ends with, and closes.

Anything but a ``FoundationError`` escaping a public call is written as an ``escape``
line (a violation: a driver exception reached the caller); so is a "database is locked"
message on SQLite, which must never reach a caller.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import random
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from soak_db import connect

from foundation import (
    AlreadyRegisteredError,
    AsyncFoundation,
    CircuitOpenError,
    ConcurrencyError,
    Foundation,
    FoundationError,
    NotFoundError,
    RateLimitedError,
)
from foundation.events import RecordedEvent

EVENT_TYPES = ("soak.order", "soak.payment", "soak.refund")
CONFIG_KEYS = tuple(f"soak.k{i}" for i in range(4))
SHARED_NAMES = ("soak-leader-0", "soak-leader-1")
# The names held under a live lease; the name pattern's placeholder follows.
LIVE_NAMES = (
    "SELECT r.name, r.node_id, r.epoch FROM foundation_registry r "
    "JOIN foundation_leases l ON l.node_id = r.node_id AND l.generation = r.lease_generation "
    "WHERE r.name LIKE "
)


SHARED_SUB = "soak-sub-shared"


def subscriptions_of(wid: int) -> dict[str, list[str]]:
    """A worker's subscriptions and their types: its own, following two of the three types
    (so filters matter), and the one every worker competes for (one consumer at a time;
    when its holder is killed or paused past the lease, another takes over)."""
    own = list(EVENT_TYPES[:2]) if wid % 2 == 0 else list(EVENT_TYPES[1:])
    return {f"soak-sub-w{wid}": own, SHARED_SUB: list(EVENT_TYPES)}


class Acks:
    """Append-only JSON lines, one write+flush per line (shared by the worker's threads)."""

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._lock = threading.Lock()

    def write(self, kind: str, **fields: Any) -> None:
        line = json.dumps({"k": kind, "t": time.time(), **fields}, separators=(",", ":"))
        with self._lock:
            if not self._file.closed:  # the stats thread may outlive close()
                self._file.write(line + "\n")
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            self._file.close()


class Down(Exception):
    """The breaker's dependency failing (on a schedule all workers share)."""


class Worker:
    def __init__(self, opts: dict[str, Any]) -> None:
        self.o = opts
        self.wid: int = opts["wid"]
        self.rng = random.Random(f"{opts['seed']}-{self.wid}-{opts['run']}")
        self.acks = Acks(os.path.join(opts["out"], f"acks-w{self.wid}-r{opts['run']}.jsonl"))
        self.counts: Counter[str] = Counter()
        self.versions: dict[str, int] = {}
        self.subs: dict[str, Any] = dict.fromkeys(subscriptions_of(self.wid))
        self.next_try: dict[str, float] = {}
        self.held: dict[str, float] = {}  # shared name -> when to let it go
        self.fdn: Any = None  # a Foundation or an AsyncFoundation (opts["face"])
        self.loop: asyncio.AbstractEventLoop | None = None
        if opts["face"] == "async":
            self.loop = asyncio.new_event_loop()
            threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.last_head = -1

    # -- plumbing -----------------------------------------------------------------------

    def do(self, fn: Callable[[], Any]) -> Any:
        """Call ``fn()`` on this node's face: directly for a ``Foundation``; on the event
        loop's thread for an ``AsyncFoundation``, awaiting what it returns (the worker's
        logic is written once, as a caller of either face would see it)."""
        if self.loop is None:
            return fn()

        async def call() -> Any:
            result = fn()
            return await result if inspect.isawaitable(result) else result

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result()

    def guarded(self, op: str, fn: Callable[[], None]) -> None:
        """Run one operation; sort what escapes it into expected errors and violations."""
        try:
            fn()
        except FoundationError as exc:
            self.counts[f"error.{op}.{exc.code}"] += 1
            if "database is locked" in str(exc):
                self.acks.write("escape", op=op, type="locked", msg=str(exc)[:300])
        except Exception as exc:
            self.counts[f"escape.{op}"] += 1
            self.acks.write(
                "escape", op=op, type=type(exc).__module__ + "." + type(exc).__name__,
                msg=str(exc)[:300], tb=traceback.format_exc()[-1500:],
            )

    def open(self) -> Any:
        """Start a node, retrying while the database is away (a restart, a proxy delay)."""
        while True:
            try:
                face = AsyncFoundation if self.o["face"] == "async" else Foundation
                # Built inside do(): an AsyncFoundation belongs to the loop's thread.
                return self.do(lambda: face(  # noqa: B023 (called at once)
                    self.o["url"], migrate="skip", registry_ttl_ms=self.o["ttl_ms"],
                    pool_max_size=4, connect_timeout_s=5,
                    rate_limiter_on_storage_error="closed",
                    # Crash restarts (--restart-mode immediate) lose the limiter's
                    # asynchronous commits, by design: then the soak wants them durable.
                    rate_limiter_fast_commit=self.o["restart_mode"] != "immediate",
                ))
            except FoundationError as exc:
                self.counts[f"error.start.{exc.code}"] += 1
                if time.time() > self.o["deadline"] + self.o["drain_s"]:
                    raise
                time.sleep(0.2)

    def stats_loop(self) -> None:
        while True:
            time.sleep(1.0)
            self.acks.write("stats", counts=dict(self.counts))

    # -- the work -------------------------------------------------------------------------

    def store_event(self) -> None:
        assert self.fdn is not None
        stream = f"soak-s{self.rng.randrange(self.o['streams'])}"
        event_id = str(uuid.uuid4())
        kind = self.rng.choice(EVENT_TYPES)
        data = {"w": self.wid, "r": self.o["run"], "n": self.counts["events"]}
        expected = self.versions.get(stream, 0)
        while time.time() < self.o["deadline"] + 1:  # then give up: the outcome stays unknown
            try:
                event = {"id": event_id, "type": kind, "stream_id": stream,
                         "expected_version": expected, "data": data}
                record = self.do(lambda: self.fdn.events.store(event))  # noqa: B023
            except ConcurrencyError as exc:
                self.counts["events.conflicts"] += 1
                expected = int(exc.context["actual"])
                continue
            except FoundationError as exc:
                # Unknown outcome (the connection died, maybe after the commit): retry
                # with the same id; the log is idempotent on ids.
                self.counts[f"error.events.{exc.code}"] += 1
                time.sleep(0.05)
                continue
            self.versions[stream] = int(record.stream_version or 0)
            self.acks.write(
                "event", id=event_id, pos=record.position, stream=stream,
                version=record.stream_version, type=kind,
            )
            self.counts["events"] += 1
            return
        self.counts["events.gave_up"] += 1
        self.acks.write("gave_up", id=event_id)

    def config_op(self) -> None:
        assert self.fdn is not None
        key = self.rng.choice(CONFIG_KEYS)
        self.do(lambda: self.fdn.config.get(key, None))
        self.counts["config.get"] += 1
        if self.rng.random() < 0.25:
            value = {"w": self.wid, "r": self.o["run"], "n": self.counts["config.set"]}
            self.do(lambda: self.fdn.config.set(key, value))
            self.acks.write("config", key=key, value=value)
            self.counts["config.set"] += 1

    def limiter_op(self) -> None:
        assert self.fdn is not None
        asked = time.time()
        admitted: list[float] = []
        try:
            self.do(lambda: self.fdn.rate_limiter.execute(
                lambda: admitted.append(time.time()), key="soak-api",
                max_requests=self.o["limit"], interval=self.o["window_ms"],
            ))
        except RateLimitedError:
            self.counts["limiter.rejected"] += 1
            return
        if admitted:
            self.acks.write("admit", asked=asked, at=admitted[0])
            self.counts["limiter.admitted"] += 1

    def breaker_op(self) -> None:
        assert self.fdn is not None

        def dependency() -> str:
            # Down four seconds in twelve, the same for every worker (wall clock).
            if int(time.time() / 4) % 3 == 0:
                raise Down
            return "ok"

        asked = time.time()
        try:
            self.do(lambda: self.fdn.circuit_breaker.execute(
                dependency, name="soak-dep", max_failures=3, reset_timeout=300, timeout=2000
            ))
            outcome = "ok"
        except Down:
            outcome = "failed"
        except CircuitOpenError:
            outcome = "rejected"
        # For the record and the report: the breaker's transitions themselves are checked
        # from its audited row versions, which say more than any one caller saw.
        self.acks.write("breaker", outcome=outcome, asked=asked)
        self.counts[f"breaker.{outcome}"] += 1

    def registry_op(self) -> None:
        assert self.fdn is not None
        reg = self.fdn.service_registry
        own = f"soak-svc-w{self.wid}"
        if not self.do(lambda: reg.owns(own)):
            self.register(own)
        now = time.time()
        for name in SHARED_NAMES:
            if name in self.held:
                asked = time.time()
                owned = self.do(lambda: reg.owns(name))  # noqa: B023 (run at once)
                entry = self.do(lambda: reg.find(name)) if owned else None  # noqa: B023
                if entry is not None and entry.node == self.fdn.settings.node_id:
                    # A belief the verifier holds against the registry's history: nobody
                    # else may have registered the name before ``asked``.
                    self.acks.write("owns", name=name, epoch=entry.epoch, asked=asked)
                if now >= self.held[name] or not owned:
                    self.held.pop(name)
                    try:
                        self.do(lambda: reg.unregister(name))  # noqa: B023
                        self.acks.write("unregister", name=name)
                    except NotFoundError:
                        self.counts["registry.lost"] += 1
            elif (
                self.rng.random() < 0.3
                and self.do(lambda: reg.find(name)) is None  # noqa: B023
                and self.register(name)
            ):
                self.held[name] = now + self.rng.uniform(0.5, 3.0)
        self.counts["registry.lookup"] += 1
        self.do(lambda: reg.find(SHARED_NAMES[0]))

    def register(self, name: str) -> bool:
        assert self.fdn is not None
        try:
            entry = self.do(lambda: self.fdn.service_registry.register(name, {"w": self.wid}))
        except AlreadyRegisteredError:
            self.counts["registry.conflicts"] += 1
            return False
        self.acks.write("register", name=name, epoch=entry.epoch, node=entry.node)
        self.counts["registry.registered"] += 1
        return True

    def handler(self, name: str) -> Callable[[RecordedEvent], None]:
        def on_event(record: RecordedEvent) -> None:
            # Written before the handler returns, so before the checkpoint moves past it.
            self.acks.write("seen", sub=name, pos=record.position, id=str(record.id))
            self.counts["subscription.delivered"] += 1

        return on_event

    def subscription_op(self) -> None:
        """Keep the subscriptions running: restart one after a lost lease or a failure;
        the shared one is taken whenever its holder's lease has run out."""
        assert self.fdn is not None
        for name, types in subscriptions_of(self.wid).items():
            sub = self.subs[name]
            if sub is not None and self.do(lambda: sub.status.state) == "running":  # noqa: B023
                continue
            if time.monotonic() < self.next_try.get(name, 0.0):
                continue  # a claim is two writes: try twice a second, not every round
            self.next_try[name] = time.monotonic() + 0.5
            if sub is not None:
                self.counts["subscription.restarts"] += 1
                self.do(sub.stop)
                self.subs[name] = None
            try:
                self.subs[name] = self.do(lambda: self.fdn.events.subscribe(
                    name, self.handler(name), types=types,  # noqa: B023 (run at once)
                    lease_ms=3000, poll_interval_ms=200, retry_backoff_ms=50,
                ))
                if name == SHARED_SUB:
                    self.counts["subscription.shared_taken"] += 1
            except AlreadyRegisteredError:  # another holder's lease has not run out yet
                self.counts["subscription.waiting"] += 1

    # -- the phases -----------------------------------------------------------------------

    def run(self) -> None:
        threading.Thread(target=self.stats_loop, daemon=True).start()
        self.fdn = self.open()
        self.acks.write("start", node=self.fdn.settings.node_id, pid=os.getpid())
        ops = [
            ("events", self.store_event), ("config", self.config_op),
            ("limiter", self.limiter_op), ("breaker", self.breaker_op),
            ("registry", self.registry_op), ("subscription", self.subscription_op),
        ]
        pace = self.o["pace_ms"] / 1000
        while time.time() < self.o["deadline"]:
            for op, fn in ops:
                self.guarded(op, fn)
            time.sleep(pace)
        self.drain()

    def drain(self) -> None:
        """Past the deadline: catch the subscription up, then wait for the caches."""
        assert self.fdn is not None
        until = time.time() + self.o["drain_s"]
        caught_up = False
        while time.time() < until and not caught_up:
            self.guarded("subscription", self.subscription_op)
            caught_up = self.caught_up()
            time.sleep(1.0)  # caught_up() wants the log's head unchanged over this pause
        self.acks.write("drained", caught_up=caught_up)
        # Then every cache this node keeps must come to what the database holds.
        converged, cached, truth = False, {}, {}
        while time.time() < until and not converged:
            cached = self.cached_view()
            try:
                truth = self.db_view()
            except Exception as exc:  # the truth is read with a plain driver: retry
                self.counts["drain.db_read_failed"] += 1
                self.acks.write("note", msg=f"database read failed: {exc}"[:300])
            converged = cached == truth
            time.sleep(0.1)
        self.acks.write("final_view", cached=cached, db=truth, converged=converged)
        self.acks.write("stats", counts=dict(self.counts))
        for sub in self.subs.values():
            if sub is not None:
                self.do(sub.stop)
        self.do(self.fdn.close)
        self.acks.write("done")

    def caught_up(self) -> bool:
        """The log has stopped growing (every worker is past its last store), and every
        subscription this worker follows, the shared one included whoever holds it, has
        its checkpoint at the last event of its types."""
        assert self.fdn is not None
        if time.time() < self.o["deadline"] + 2:
            return False
        try:
            head = self.do(self.fdn.events.last_position)
            lasts = {}
            for name, types in subscriptions_of(self.wid).items():
                lasts[name] = 0
                for kind in types:
                    criteria = {"type": kind, "order": "desc", "limit": 1}
                    found = self.do(lambda: self.fdn.events.get(criteria))  # noqa: B023
                    lasts[name] = max([lasts[name], *(e.position for e in found)])
            checkpoints = self.db_checkpoints()
        except Exception:  # FoundationError, or the plain driver's error: ask again
            return False
        stable = head == self.last_head
        self.last_head = head
        return stable and all(checkpoints.get(n, 0) >= last for n, last in lasts.items())

    def db_checkpoints(self) -> dict[str, int]:
        with connect(self.o["direct_url"]) as conn:
            cur = conn.cursor()
            cur.execute("SELECT name, checkpoint FROM foundation_subscriptions")
            return {name: int(checkpoint) for name, checkpoint in cur.fetchall()}

    def cached_view(self) -> dict[str, Any]:
        """What this node's caches say of the soak's config keys, names and breaker."""
        assert self.fdn is not None
        fdn = self.fdn
        return dict(self.do(lambda: {
            "config": {k: fdn.config.get(k, None) for k in CONFIG_KEYS},
            "registry": {e.name: [e.node, e.epoch] for e in fdn.service_registry.list("soak-")},
            "breaker": fdn.circuit_breaker.state("soak-dep"),
        }))

    def db_view(self) -> dict[str, Any]:
        """The same, as the database holds it, read with a plain connection."""
        pg = self.o["backend"] == "postgresql"
        config: dict[str, Any] = dict.fromkeys(CONFIG_KEYS)
        with connect(self.o["direct_url"]) as conn:
            cur = conn.cursor()
            cur.execute("SELECT key, value FROM foundation_config WHERE NOT deleted")
            for key, value in cur.fetchall():
                if key in config:
                    config[key] = json.loads(value) if isinstance(value, str) else value
            if pg:
                cur.execute(LIVE_NAMES + "%s AND l.expires_at > now()", ("soak-%",))
            else:  # SQLite keeps UTC timestamps as sortable text
                now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
                cur.execute(LIVE_NAMES + "? AND l.expires_at > ?", ("soak-%", now))
            registry = {name: [node, int(epoch)] for name, node, epoch in cur.fetchall()}
            cur.execute("SELECT state FROM foundation_breakers WHERE name = 'soak-dep'")
            row = cur.fetchone()
        return {"config": config, "registry": registry,
                "breaker": "closed" if row is None else row[0]}


def main() -> None:
    opts = json.loads(sys.argv[1])
    worker = Worker(opts)
    try:
        worker.run()
    except Exception as exc:
        worker.acks.write(
            "escape", op="worker", type=type(exc).__name__, msg=str(exc)[:300],
            tb=traceback.format_exc()[-2000:],
        )
        raise
    finally:
        worker.acks.close()


if __name__ == "__main__":
    main()
