"""The soak's database side: a throwaway PostgreSQL cluster, a fresh database, audit
triggers, and the admin actions the faults need.

Why audit triggers: Foundation keeps only the *current* row of a breaker, a rate limit,
a registry name and a lease. The invariants are about their *history* (every breaker
transition, every admission in a window, every owner of a name), so before the
workers start the harness adds, in its own database only, ``soak_audit_*`` tables
filled by AFTER triggers on those four tables: every row version any statement writes
lands there in the same transaction. The library is not changed and has no hook; the
events log and ``foundation_config_history`` already keep their history.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from foundation.database import migrate
from foundation.database.url import DatabaseURL

# -- audit tables and triggers ------------------------------------------------------------

_AUDIT_TABLES = [
    """CREATE TABLE soak_audit_breakers (
        id {serial}, name TEXT NOT NULL, op TEXT NOT NULL,
        old_state TEXT, new_state TEXT, old_failures BIGINT, new_failures BIGINT,
        old_open_until_ms BIGINT, new_open_until_ms BIGINT,
        old_probe_token TEXT, new_probe_token TEXT,
        old_probe_until_ms BIGINT, new_probe_until_ms BIGINT,
        old_revision BIGINT, new_revision BIGINT, updated_at_ms BIGINT, updated_by TEXT)""",
    # Names and leases in ONE table, so that its id orders their changes against each
    # other (the order the statements ran in): "was the lease gone before the takeover".
    """CREATE TABLE soak_audit_registry (
        id {serial}, kind TEXT NOT NULL, op TEXT NOT NULL, name TEXT,
        old_node TEXT, old_gen BIGINT, old_epoch BIGINT, old_expires_at {ts},
        new_node TEXT, new_gen BIGINT, new_epoch BIGINT, new_expires_at {ts},
        registered_at {ts}, updated_at {ts})""",
    """CREATE TABLE soak_audit_limits (
        id {serial}, key TEXT NOT NULL, algorithm TEXT NOT NULL,
        window_start_ms BIGINT, count BIGINT, allowed BOOLEAN)""",
]

_BREAKER_COLS = (
    "name, op, old_state, new_state, old_failures, new_failures, old_open_until_ms, "
    "new_open_until_ms, old_probe_token, new_probe_token, old_probe_until_ms, "
    "new_probe_until_ms, old_revision, new_revision, updated_at_ms, updated_by"
)
_REGISTRY_COLS = (
    "kind, op, name, old_node, old_gen, old_epoch, old_expires_at, new_node, new_gen, "
    "new_epoch, new_expires_at, registered_at, updated_at"
)
_LIMIT_COLS = "key, algorithm, window_start_ms, count, allowed"
_LIMIT_ROW = "NEW.key, NEW.algorithm, NEW.window_start_ms, NEW.count, NEW.allowed"

# source table -> (short name, audit table, columns, the values written per operation)
_AUDITED: dict[str, tuple[str, str, str, dict[str, str]]] = {
    "foundation_breakers": ("breakers", "soak_audit_breakers", _BREAKER_COLS, {
        "INSERT": "NEW.name, 'insert', NULL, NEW.state, NULL, NEW.failures, NULL, "
                  "NEW.open_until_ms, NULL, NEW.probe_token, NULL, NEW.probe_until_ms, NULL, "
                  "NEW.revision, NEW.updated_at_ms, NEW.updated_by",
        "UPDATE": "NEW.name, 'update', OLD.state, NEW.state, OLD.failures, NEW.failures, "
                  "OLD.open_until_ms, NEW.open_until_ms, OLD.probe_token, NEW.probe_token, "
                  "OLD.probe_until_ms, NEW.probe_until_ms, OLD.revision, NEW.revision, "
                  "NEW.updated_at_ms, NEW.updated_by",
    }),
    "foundation_registry": ("registry", "soak_audit_registry", _REGISTRY_COLS, {
        "INSERT": "'name', 'insert', NEW.name, NULL, NULL, NULL, NULL, NEW.node_id, "
                  "NEW.lease_generation, NEW.epoch, NEW.expires_at, NEW.registered_at, "
                  "NEW.updated_at",
        "UPDATE": "'name', 'update', NEW.name, OLD.node_id, OLD.lease_generation, OLD.epoch, "
                  "OLD.expires_at, NEW.node_id, NEW.lease_generation, NEW.epoch, "
                  "NEW.expires_at, NEW.registered_at, NEW.updated_at",
    }),
    "foundation_leases": ("leases", "soak_audit_registry", _REGISTRY_COLS, {
        "INSERT": "'lease', 'insert', NULL, NULL, NULL, NULL, NULL, NEW.node_id, "
                  "NEW.generation, NULL, NEW.expires_at, NULL, NEW.renewed_at",
        "UPDATE": "'lease', 'update', NULL, OLD.node_id, OLD.generation, NULL, "
                  "OLD.expires_at, NEW.node_id, NEW.generation, NULL, NEW.expires_at, NULL, "
                  "NEW.renewed_at",
        "DELETE": "'lease', 'delete', NULL, OLD.node_id, OLD.generation, NULL, "
                  "OLD.expires_at, NULL, NULL, NULL, NULL, NULL, NULL",
    }),
    "foundation_rate_limits": ("limits", "soak_audit_limits", _LIMIT_COLS, {
        "INSERT": _LIMIT_ROW, "UPDATE": _LIMIT_ROW,
    }),
}


def _audit_ddl(backend: str) -> list[str]:
    """DDL text built from the constants above only (no input reaches it, hence the noqa)."""
    if backend == "postgresql":
        types = {"serial": "BIGSERIAL PRIMARY KEY", "ts": "TIMESTAMPTZ"}
    else:
        types = {"serial": "INTEGER PRIMARY KEY AUTOINCREMENT", "ts": "TEXT"}
    out = [table.format(**types) for table in _AUDIT_TABLES]
    for source, (short, audit, cols, per_op) in _AUDITED.items():
        if backend == "postgresql":
            branches = "".join(
                f"  IF TG_OP = '{op}' THEN INSERT INTO {audit} ({cols}) VALUES ({values}); "  # noqa: S608
                "END IF;\n"
                for op, values in per_op.items()
            )
            out.append(
                f"CREATE FUNCTION soak_audit_{short}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
                f"BEGIN\n{branches}  RETURN NULL;\nEND $$"
            )
            out.append(
                f"CREATE TRIGGER soak_audit_{short} AFTER {' OR '.join(per_op)} ON {source} "
                f"FOR EACH ROW EXECUTE FUNCTION soak_audit_{short}()"
            )
        else:
            for op, values in per_op.items():
                out.append(
                    f"CREATE TRIGGER soak_audit_{short}_{op.lower()} AFTER {op} ON {source} "  # noqa: S608
                    f"BEGIN INSERT INTO {audit} ({cols}) VALUES ({values}); END"
                )
    return out


def prepare(url: str) -> None:
    """Migrate the database to head and add the audit tables and triggers."""
    migrate.upgrade(url)
    with connect(url) as conn:
        backend = DatabaseURL.parse(url).backend
        cur = conn.cursor()
        for statement in _audit_ddl(backend):
            cur.execute(statement)
        conn.commit()


@contextlib.contextmanager
def connect(url: str) -> Iterator[Any]:
    """A plain DB-API connection (psycopg or sqlite3) for the verifier and the setup."""
    parsed = DatabaseURL.parse(url)
    if parsed.backend == "postgresql":
        with psycopg.connect(parsed.conninfo) as conn:
            yield conn
    else:
        conn = sqlite3.connect(parsed.sqlite_path, timeout=30)
        try:
            yield conn
        finally:
            conn.close()


# -- PostgreSQL: a fresh database on a server, a throwaway cluster, terminate -------------


def _admin(server_url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(DatabaseURL.parse(server_url).conninfo, autocommit=True)


def with_database(server_url: str, name: str) -> str:
    url = DatabaseURL.parse(server_url).url.set(database=name)
    return url.render_as_string(hide_password=False)


def create_database(server_url: str) -> str:
    name = f"foundation_soak_{uuid.uuid4().hex[:10]}"
    with _admin(server_url) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_database(server_url, name)


def drop_database(url: str) -> None:
    name = DatabaseURL.parse(url).url.database
    with _admin(with_database(url, "postgres")) as conn:
        drop = sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)")
        conn.execute(drop.format(sql.Identifier(name)))


def terminate_backends(url: str) -> int:
    """``pg_terminate_backend`` every connection to the soak's database (LISTEN ones too)."""
    name = DatabaseURL.parse(url).url.database
    with _admin(url) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return sum(1 for (ok,) in rows if ok)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bin(tool: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    return found[-1] if found else shutil.which(tool)


class OwnCluster:
    """A PostgreSQL cluster of the harness's own (initdb in a temp dir, a free port), run as
    the ``postgres`` OS user when we are root, so that restarting it disturbs nobody."""

    def __init__(self) -> None:
        initdb, self._pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if initdb is None or self._pg_ctl is None:
            raise RuntimeError("no initdb/pg_ctl found (/usr/lib/postgresql/*/bin)")
        self.dir = Path(tempfile.mkdtemp(prefix="foundation-soak-pg-"))
        self.port = free_port()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "postgres")
        self._run([initdb, "-D", str(self.dir / "data"), "-A", "trust", "-U", "postgres"])
        self.restarts = 0

    def _run(self, args: list[str]) -> None:
        subprocess.run([*self._as, *args], check=True, capture_output=True, timeout=120)

    def _ctl(self, action: str, mode: str = "fast") -> None:
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=200"
        )
        assert self._pg_ctl is not None
        self._run([self._pg_ctl, "-D", str(self.dir / "data"), "-l", str(self.dir / "log"),
                   "-m", mode, "-w", "-o", options, action])

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> OwnCluster:
        self._ctl("start")
        return self

    def restart(self, mode: str = "fast") -> None:
        """``pg_ctl restart -m fast`` (clean: every connection drops) or ``-m immediate``
        (a crash: the server recovers from its WAL on start)."""
        self._ctl("restart", mode)
        self.restarts += 1

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self._ctl("stop")
        shutil.rmtree(self.dir, ignore_errors=True)
