"""The soak's verifier: every invariant, from the database and the workers' ack logs.

What each source can prove (docs/soak.md has the table):
- the event log, stream versions, subscription checkpoints and config history are in
  Foundation's own tables;
- breaker transitions, limiter decisions, registry owners and lease renewals are only
  *current* rows in Foundation's tables, so their history comes from the harness's
  ``soak_audit_*`` tables (filled by triggers, see soak_db);
- what a caller was told (an event stored, an admission, a name won, a config value
  set, what a subscription delivered, what a node's cache ends with) is in the ack logs.
Each check returns how many things it checked and the violations it found.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from soak_db import connect
from soak_worker import SHARED_SUB, subscriptions_of

from foundation.database.url import DatabaseURL

MAX_SHOWN = 20
STALL_S = 20.0  # a worker whose counters stood still this long (before the deadline) hung


@dataclass(frozen=True)
class Params:
    limit: int
    window_ms: int
    max_failures: int
    workers: int
    deadline: float | None = None  # when the workers stopped producing (Unix time)


@dataclass
class Check:
    name: str
    what: str
    checked: int = 0
    violations: list[str] = field(default_factory=list)
    # What the run exercised of this invariant (takeovers, re-claimed probes, …): a check
    # that never met the hard case proves little, and the report says so.
    exercised: Counter[str] = field(default_factory=Counter)

    def fail(self, message: str) -> None:
        self.violations.append(message)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "what": self.what,
            "checked": self.checked,
            "violations": len(self.violations),
            "exercised": dict(self.exercised),
            "examples": self.violations[:MAX_SHOWN],
        }


def read_acks(out: Path) -> dict[tuple[int, int], list[dict[str, Any]]]:
    """Every run's ack lines; a torn last line (a kill mid-write) is dropped."""
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for path in sorted(out.glob("acks-w*-r*.jsonl")):
        wid, run = (int(p[1:]) for p in path.stem.split("-")[1:3])
        lines = []
        for raw in path.read_text(encoding="utf-8").splitlines():
            try:
                lines.append(json.loads(raw))
            except json.JSONDecodeError:
                continue
        runs[(wid, run)] = lines
    return runs


def _kind(runs: dict[tuple[int, int], list[dict[str, Any]]], kind: str) -> list[dict[str, Any]]:
    return [
        {**line, "wid": w, "run": r}
        for (w, r), lines in runs.items()
        for line in lines
        if line["k"] == kind
    ]


def _ts(value: Any) -> datetime | None:
    if value is None or isinstance(value, datetime):
        return value
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def verify(url: str, out: Path, params: Params) -> list[dict[str, Any]]:
    runs = read_acks(out)
    backend = DatabaseURL.parse(url).backend
    with connect(url) as conn:
        cur = conn.cursor()

        def q(sql: str, args: tuple[Any, ...] = ()) -> list[Any]:
            if backend == "postgresql":  # psycopg reads % as a placeholder only with args
                cur.execute(sql.replace("?", "%s"), args or None)
            else:
                cur.execute(sql, args)
            return list(cur.fetchall())

        checks = [
            events_once(q, runs),
            streams_contiguous(q),
            subscriptions(q, runs),
            limiter(q, runs, params),
            breaker(q, params),
            *registry(q, runs),
            config_history(q, runs),
            caches_converged(q, runs),
            no_escapes(runs),
            progress(runs, params),
        ]
    return [c.as_dict() for c in checks]


def events_once(q: Any, runs: Any) -> Check:
    c = Check(
        "events.acked_once",
        "every acknowledged event is in the log exactly once, "
        "at the position, stream and version it was acknowledged with",
    )
    acked = _kind(runs, "event")
    rows = q(
        "SELECT id, position, stream_id, stream_version, count(*) OVER (PARTITION BY id) "
        "FROM foundation_events WHERE type LIKE ?",
        ("soak.%",),
    )
    by_id = {r[0]: r for r in rows}
    for r in rows:
        if r[4] != 1:
            c.fail(f"event {r[0]} is in the log {r[4]} times")
    for ack in acked:
        c.checked += 1
        row = by_id.get(ack["id"])
        if row is None:
            c.fail(f"acknowledged event {ack['id']} (worker {ack['wid']}) is not in the log")
        elif (row[1], row[2], row[3]) != (ack["pos"], ack["stream"], ack["version"]):
            c.fail(
                f"event {ack['id']}: acked {ack['pos']}/{ack['stream']}@{ack['version']}, "
                f"logged {row[1]}/{row[2]}@{row[3]}"
            )
    return c


def streams_contiguous(q: Any) -> Check:
    c = Check("events.streams_contiguous", "each stream's versions are 1..n with no gap")
    for stream, n, low, high in q(
        "SELECT stream_id, count(*), min(stream_version), max(stream_version) "
        "FROM foundation_events WHERE stream_id IS NOT NULL GROUP BY stream_id"
    ):
        c.checked += 1
        if (low, high) != (1, n):
            c.fail(f"stream {stream}: {n} events, versions {low}..{high}")
    return c


def subscriptions(q: Any, runs: Any) -> Check:
    c = Check(
        "subscriptions.no_gap",
        "each subscription saw every event of its types at "
        "least once (none missing below its checkpoint, and it caught up), nothing else",
    )
    seen: dict[str, set[int]] = defaultdict(set)
    consumers: dict[str, set[int]] = defaultdict(set)
    for line in _kind(runs, "seen"):
        if line["pos"] in seen[line["sub"]]:
            c.exercised["redelivered"] += 1  # at least once: after a kill, a lost lease
        seen[line["sub"]].add(line["pos"])
        consumers[line["sub"]].add(line["wid"])
    c.exercised["shared_consumers"] = len(consumers.get(SHARED_SUB, ()))
    checkpoints = dict(q("SELECT name, checkpoint FROM foundation_subscriptions"))
    followed: dict[str, list[str]] = {}
    for wid in sorted({w for w, _ in runs}):
        followed.update(subscriptions_of(wid))
    for name, types in followed.items():
        marks = ",".join("?" for _ in types)
        wanted = {
            r[0]
            for r in q(
                f"SELECT position FROM foundation_events WHERE type IN ({marks})",  # noqa: S608 (only ?)
                tuple(types),
            )
        }
        checkpoint = int(checkpoints.get(name, 0))
        got = seen[name]
        c.checked += len(wanted)
        gaps = sorted(p for p in wanted - got if p <= checkpoint)
        behind = sorted(p for p in wanted - got if p > checkpoint)
        foreign = sorted(got - wanted)
        if gaps:
            c.fail(
                f"{name}: {len(gaps)} events below checkpoint {checkpoint} never delivered: "
                f"{gaps[:10]}"
            )
        if behind:
            c.fail(
                f"{name}: did not catch up: {len(behind)} events after checkpoint "
                f"{checkpoint}: {behind[:10]}"
            )
        if foreign:
            c.fail(f"{name}: delivered {len(foreign)} events not of its types: {foreign[:10]}")
    return c


def limiter(q: Any, runs: Any, params: Params) -> Check:
    c = Check(
        "limiter.window_limit",
        f"no fixed window admitted more than {params.limit} "
        "(audited decisions; acked admissions that surely fell in one window)",
    )
    for key, start, allowed in q(
        "SELECT key, window_start_ms, count(*) FROM soak_audit_limits WHERE allowed "
        "GROUP BY key, window_start_ms"
    ):
        c.checked += 1
        if allowed == params.limit:
            c.exercised["windows_at_the_limit"] += 1
        if allowed > params.limit:
            c.fail(f"{key} window {start}: {allowed} admitted (limit {params.limit})")
    audited = q("SELECT count(*) FROM soak_audit_limits WHERE allowed")[0][0]
    acks = _kind(runs, "admit")
    if len(acks) > audited:
        c.fail(f"{len(acks)} admissions acknowledged but only {audited} allowed by the database")
    window = params.window_ms
    per_window: Counter[int] = Counter()
    for ack in acks:
        asked, at = int(ack["asked"] * 1000) // window, int(ack["at"] * 1000) // window
        if asked == at:  # the decision's window lies between the two: here, this one
            per_window[asked] += 1
    for start, n in per_window.items():
        c.checked += 1
        if n > params.limit:
            c.fail(f"window {start * window}: {n} acknowledged admissions (limit {params.limit})")
    return c


def breaker(q: Any, params: Params) -> Check:
    c = Check(
        "breaker.transitions",
        "the shared breaker's row versions form a valid sequence "
        "(closed→open at max_failures, open→half_open once due, one probe per half-open)",
    )
    rows = q(
        "SELECT op, old_state, new_state, old_failures, new_failures, old_open_until_ms, "
        "old_probe_token, new_probe_token, old_probe_until_ms, old_revision, new_revision, "
        "updated_at_ms FROM soak_audit_breakers WHERE name = 'soak-dep' ORDER BY new_revision"
    )
    previous = 0
    for (
        op,
        old,
        new,
        old_f,
        new_f,
        open_until,
        old_tok,
        new_tok,
        probe_until,
        old_rev,
        new_rev,
        at,
    ) in rows:
        c.checked += 1
        where = f"revision {new_rev}"
        if new_rev != previous + 1 or (op == "update" and old_rev != previous):
            c.fail(f"{where}: follows revision {previous} (old {old_rev}): a version is missing")
        previous = new_rev
        old = old or "closed"
        if old != new:
            c.exercised[f"{old}→{new}"] += 1
        if (old, new) == ("closed", "closed"):
            ok = new_f in ((old_f or 0) + 1, 0)
        elif (old, new) == ("closed", "open"):
            ok = new_f >= params.max_failures
        elif (old, new) == ("open", "half_open"):
            ok = open_until is not None and at >= open_until and new_tok is not None
        elif (old, new) == ("half_open", "half_open"):
            # The probe extending its claim while it runs; a second probe only once the
            # first one's lease is over.
            ok = new_tok == old_tok or (
                probe_until is not None and at >= probe_until and new_tok != old_tok
            )
        else:
            ok = (old, new) in (("half_open", "closed"), ("half_open", "open"))
        if not ok:
            c.fail(
                f"{where}: {old}→{new} (failures {old_f}→{new_f}, at {at}, open until "
                f"{open_until}, probe until {probe_until})"
            )
    return c


@dataclass
class _Lease:
    expires: datetime
    ended: bool = False  # the node moved to its next generation, or released it


def registry(q: Any, runs: Any) -> tuple[Check, Check]:
    """Replay names and leases in the order their statements ran (one audit sequence)."""
    owners = Check(
        "registry.one_live_owner",
        "no name was taken while its previous "
        "owner's lease generation was live; epochs +1 per registration; every "
        "acked registration is in the history",
    )
    renewals = Check(
        "registry.leases", "a lease is renewed only while live; its generation only grows"
    )
    live: dict[tuple[str, int], _Lease] = {}
    recorded = set()
    registered_at: dict[tuple[str, int], datetime] = {}
    for (
        kind,
        op,
        name,
        old_node,
        old_gen,
        old_epoch,
        old_expires,
        new_node,
        new_gen,
        new_epoch,
        new_expires,
        registered,
        updated,
    ) in q(
        "SELECT kind, op, name, old_node, old_gen, old_epoch, old_expires_at, new_node, "
        "new_gen, new_epoch, new_expires_at, registered_at, updated_at "
        "FROM soak_audit_registry ORDER BY id"
    ):
        if kind == "lease":
            renewals.checked += 1
            if op == "delete":
                live.setdefault((old_node, old_gen), _Lease(_ts(old_expires))).ended = True
            elif op == "update" and new_gen == old_gen:
                renewals.exercised["renewals"] += 1
                if _ts(old_expires) <= _ts(updated):
                    renewals.fail(
                        f"{new_node} gen {new_gen} renewed at {updated} after it "
                        f"expired at {old_expires}"
                    )
                live.setdefault((new_node, new_gen), _Lease(_ts(new_expires))).expires = _ts(
                    new_expires
                )
            else:
                if op == "update":
                    renewals.exercised["new_generations"] += 1
                    if new_gen <= old_gen:
                        renewals.fail(f"{new_node}: generation {old_gen} → {new_gen}")
                    live.setdefault((old_node, old_gen), _Lease(_ts(old_expires))).ended = True
                live[(new_node, new_gen)] = _Lease(_ts(new_expires))
            continue
        if new_node is not None:
            recorded.add((name, int(new_epoch), new_node))
        if new_epoch == old_epoch:
            continue  # an unregister, a release or a metadata update
        registered_at[(name, int(new_epoch))] = _ts(registered)
        owners.checked += 1
        if new_epoch != (old_epoch or 0) + 1:
            owners.fail(f"{name}: epoch {old_epoch} → {new_epoch}")
        if old_node is None:
            owners.exercised["from_a_tombstone"] += 1
            continue  # taken from a tombstone: its owner had let go
        owners.exercised["from_a_lapsed_owner" if old_node != new_node else "reclaimed"] += 1
        at = _ts(registered)
        lease = live.get((old_node, old_gen))
        entry_end = _ts(old_expires)
        if entry_end is not None and entry_end <= at:
            continue  # the entry's own TTL was over
        if lease is None:
            owners.fail(f"{name} epoch {new_epoch}: no lease history for {old_node} gen {old_gen}")
        elif not lease.ended and lease.expires > at:
            owners.fail(
                f"{name} epoch {new_epoch} taken by {new_node} at {at} while "
                f"{old_node} gen {old_gen} (epoch {old_epoch}) was live until "
                f"{lease.expires}"
            )
    for ack in _kind(runs, "register"):
        owners.checked += 1
        if (ack["name"], ack["epoch"], ack["node"]) not in recorded:
            owners.fail(
                f"acked registration {ack['name']} epoch {ack['epoch']} by "
                f"{ack['node']} is not in the registry's history"
            )
    # A node's belief: owns() said True, asked at ``asked``, for epoch e. The next epoch
    # registered before that moment would make two live owners at once.
    for ack in _kind(runs, "owns"):
        owners.checked += 1
        owners.exercised["owns_beliefs"] += 1
        nxt = registered_at.get((ack["name"], ack["epoch"] + 1))
        if nxt is not None and nxt.timestamp() < ack["asked"]:
            owners.fail(
                f"worker {ack['wid']} still owned {ack['name']} epoch {ack['epoch']} "
                f"at {ack['asked']:.3f}, after epoch {ack['epoch'] + 1} was registered "
                f"at {nxt.timestamp():.3f}"
            )
    return owners, renewals


def config_history(q: Any, runs: Any) -> Check:
    c = Check(
        "config.history",
        "every acknowledged config set is in the history; each key's "
        "history is one chain (revisions 1..n, each old value the previous new), each "
        "link once in the event log as foundation.config.changed",
    )
    history: set[tuple[str, str]] = set()
    previous: dict[str, tuple[int, Any]] = {}
    for key, old, new, revision in q(
        "SELECT key, old_value, new_value, revision FROM foundation_config_history "
        "WHERE key LIKE ? ORDER BY key, revision",
        ("soak.%",),
    ):
        c.checked += 1
        old, new = _json(old), _json(new)
        history.add((key, json.dumps(new, sort_keys=True)))
        rev, value = previous.get(key, (0, None))
        if revision != rev + 1 or old != value:
            c.fail(f"{key} revision {revision} (old {old}) follows revision {rev} ({value})")
        previous[key] = (revision, new)
    # Each change is also in the event log, once (the audit trail is one log).
    logged: Counter[tuple[str, int]] = Counter()
    for (data,) in q(
        "SELECT data FROM foundation_events WHERE type = ?", ("foundation.config.changed",)
    ):
        data = _json(data)
        logged[(data["key"], int(data["revision"]))] += 1
    for key, (last, _value) in previous.items():
        for revision in range(1, last + 1):
            c.checked += 1
            if logged[(key, revision)] != 1:
                c.fail(
                    f"{key} revision {revision} is in the event log {logged[(key, revision)]} times"
                )
    for ack in _kind(runs, "config"):
        c.checked += 1
        if (ack["key"], json.dumps(ack["value"], sort_keys=True)) not in history:
            c.fail(f"config set {ack['key']}={ack['value']} (worker {ack['wid']}) not in history")
    return c


def caches_converged(q: Any, runs: Any) -> Check:
    c = Check(
        "caches.converged",
        "every node's caches (config, registry names, breaker) "
        "came to what the database held, and its config is the final config",
    )
    truth = {
        k: _json(v)
        for k, v in q("SELECT key, value FROM foundation_config WHERE key LIKE ?", ("soak.%",))
    }
    last_run: dict[int, int] = {}
    for wid, run in runs:
        last_run[wid] = max(run, last_run.get(wid, -1))
    for wid, run in sorted(last_run.items()):
        c.checked += 1
        finals = [line for line in runs[(wid, run)] if line["k"] == "final_view"]
        if not finals:
            c.fail(f"worker {wid} run {run} never reported its final caches")
            continue
        final = finals[-1]
        if not final["converged"]:
            c.fail(
                f"worker {wid}: caches {final['cached']} never matched the database {final['db']}"
            )
        config = {k: v for k, v in final["cached"]["config"].items() if v is not None}
        if config != truth:
            c.fail(f"worker {wid} ended with config {config}, the database holds {truth}")
    return c


def no_escapes(runs: Any) -> Check:
    c = Check("no_escapes", "no driver exception (nor 'database is locked') reached a caller")
    for (_w, _r), lines in runs.items():
        c.checked += sum(1 for line in lines if line["k"] == "stats")
    for line in _kind(runs, "escape"):
        c.fail(f"worker {line['wid']} {line['op']}: {line['type']}: {line['msg']}")
    return c


def progress(runs: Any, params: Params) -> Check:
    c = Check(
        "workers.progress",
        f"no worker's calls stood still for {STALL_S:.0f} s before "
        "the deadline (a hang inside the library: a stuck pool, a lost wake-up)",
    )
    for (wid, run), lines in runs.items():
        started = [line["t"] for line in lines if line["k"] == "start"]
        if not started:
            continue  # killed before its node was up
        moved_at, last = started[0], -1
        for line in lines:
            if line["k"] != "stats" or line["t"] < started[0]:
                continue
            if params.deadline is not None and line["t"] > params.deadline - 1:
                break
            c.checked += 1
            total = sum(line["counts"].values())
            if total != last:
                moved_at, last = line["t"], total
            elif line["t"] - moved_at > STALL_S:
                c.fail(
                    f"worker {wid} run {run}: no call returned from {moved_at:.0f} to "
                    f"{line['t']:.0f}"
                )
                break
    return c
