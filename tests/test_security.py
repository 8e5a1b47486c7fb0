"""Security: a least-privilege PostgreSQL role runs Foundation; no pickle; no string-built SQL.

The grants are the ones ``docs/deployment.md`` recommends, read from the file the page
shows (``foundation/sql/grants.sql``), so the page and this test cannot drift apart.
"""

from __future__ import annotations

import ast
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import psycopg.errors
import pytest

from foundation import Foundation, FoundationError
from foundation.database.url import DatabaseURL
from tests.conftest import _admin, fresh_postgres
from tests.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "foundation"
GRANTS = PACKAGE / "sql" / "grants.sql"
DEPLOYMENT = ROOT / "docs" / "deployment.md"
PLACEHOLDER = re.compile(r"\bfoundation_app\b")


# -- (a) a least-privilege role --------------------------------------------------------------


def grants_for(role: str) -> str:
    """The recommended grants, for ``role`` instead of the placeholder foundation_app."""
    assert re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", role), role
    return PLACEHOLDER.sub(role, GRANTS.read_text())


def test_the_grants_name_every_table_view_and_sequence(app_url: str) -> None:
    """A new table (from a later migration) must be granted, or said not to need it."""
    with _as(app_url) as conn:
        rows = conn.execute(
            "SELECT relname FROM pg_class JOIN pg_namespace n ON n.oid = relnamespace"
            " WHERE nspname = current_schema() AND relname LIKE 'foundation%%'"
            " AND relkind IN ('r', 'v', 'S')"
        ).fetchall()
    text = GRANTS.read_text()
    missing = [name for (name,) in rows if not re.search(rf"\b{name}\b", text)]
    assert len(rows) > 10 and missing == []


def test_the_deployment_page_shows_the_grants_the_tests_run() -> None:
    page = DEPLOYMENT.read_text()
    assert f"```sql\n{GRANTS.read_text()}```" in page
    assert "foundation/sql/grants.sql" in page


@pytest.fixture
def app_url(postgres_server: str, postgres_template: str) -> Iterator[str]:
    """A migrated database (owned by the server's user) and a URL that logs in as a fresh
    role holding only the recommended grants; both are dropped afterwards."""
    role = f"foundation_app_{uuid.uuid4().hex[:10]}"
    with fresh_postgres(postgres_server, postgres_template) as owner_url:
        with _admin(postgres_server) as admin:
            admin.execute(f"CREATE ROLE {role} LOGIN")  # trust auth here: no password
        with psycopg.connect(DatabaseURL.parse(owner_url).conninfo, autocommit=True) as conn:
            # What a hardened server does: functions are no one's until granted.
            conn.execute("REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC")
            conn.execute(grants_for(role).encode())
        yield (
            DatabaseURL.parse(owner_url)
            .url.set(username=role)
            .render_as_string(hide_password=False)
        )
    with _admin(postgres_server) as admin:  # its database is gone: nothing else it owns
        admin.execute(f"DROP ROLE IF EXISTS {role}")


def _as(url: str) -> psycopg.Connection:
    return psycopg.connect(DatabaseURL.parse(url).conninfo, autocommit=True)


def test_the_runtime_works_with_the_recommended_grants(app_url: str) -> None:
    with _as(app_url) as conn:
        user, superuser = conn.execute(
            "SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
    assert user.startswith("foundation_app_") and superuser is False

    seen: list[int] = []
    with Foundation(app_url, migrate="check", poll_interval_ms=5) as fdn:
        assert fdn.feed.wait_connected(10)
        # config: set, read back, delete, history (the trigger writes the history and the log)
        fdn.config.set("port", 4000)
        assert fdn.config.get("port") == 4000
        assert fdn.config.delete("port") is True
        assert [h.operation for h in fdn.config.history("port")][:2] == ["delete", "set"]
        # events: store with a stream and an expected version, read, follow durably
        first = fdn.events.store(
            {"type": "order", "stream_id": "o-1", "expected_version": "no_stream", "data": 1}
        )
        assert fdn.events.read_stream("o-1") == [first]
        # store_many goes through foundation_append_events (granted since review 9)
        assert len(fdn.events.store_many([{"type": "bulk"}, {"type": "bulk"}])) == 2
        assert [e.data for e in fdn.events.iter(type="order")] == [1]
        lock = threading.Lock()

        def handler(event: object) -> None:
            with lock:
                seen.append(event.position)  # type: ignore[attr-defined]

        sub = fdn.events.subscribe("audit", handler, types="order")
        second = fdn.events.store({"type": "order", "stream_id": "o-1", "expected_version": 1})
        wait_for(lambda: second.position in seen)
        sub.stop()
        wait_for(lambda: sub.status.checkpoint >= second.position)
        # registry: names and groups under a lease
        fdn.service_registry.register("auth", "http://10.0.0.5:8000", {"v": "1"})
        assert fdn.service_registry.lookup("auth").address == "http://10.0.0.5:8000"
        fdn.service_registry.update_metadata("auth", {"v": "2"})
        fdn.service_registry.join("workers", "w1", member_id="m1")
        assert [m.member_id for m in fdn.service_registry.members("workers")] == ["m1"]
        fdn.service_registry.leave("workers")
        fdn.service_registry.unregister("auth")
        assert fdn.service_registry.heartbeat() is True

        # breaker: failures are counted in the table until it opens; reset closes it
        def fail() -> None:
            raise ValueError("down")

        for _ in range(2):
            with pytest.raises(ValueError):
                fdn.circuit_breaker.execute(fail, name="payments", max_failures=2)
        assert fdn.circuit_breaker.state("payments") == "open"
        with pytest.raises(FoundationError) as refused:
            fdn.circuit_breaker.execute(lambda: 1, name="payments", max_failures=2)
        assert refused.value.code == "circuit_open"
        fdn.circuit_breaker.reset("payments")
        assert fdn.circuit_breaker.execute(lambda: "paid", name="payments") == "paid"
        # limiter: every algorithm decides in the table (a degraded decision would mean the
        # database refused the statement and the limiter failed open)
        for algorithm in ("fixed_window", "sliding_window", "token_bucket"):
            decisions = [
                # a day: a window ending between the calls would admit the third
                fdn.rate_limiter.try_acquire(f"api-{algorithm}", 2, 86_400_000, algorithm)
                for _ in range(3)
            ]
            assert [d.allowed for d in decisions] == [True, True, False]
            assert not any(d.degraded for d in decisions)
        assert len(fdn.rate_limiter.usage()) == 3
        assert fdn.rate_limiter.cleanup() == 0

    with _as(app_url) as conn:  # close() released the lease (UPDATE/DELETE on leases)
        rows = conn.execute("SELECT count(*) FROM foundation_audit_events").fetchone()
        assert rows is not None and rows[0] >= 4  # 2 orders + 2 config changes


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE foundation_events SET type = 'forged'",
        "DELETE FROM foundation_events",
        "TRUNCATE foundation_events",
        "UPDATE foundation_config_history SET new_value = 'null'",
        "DELETE FROM foundation_config_history",
        "UPDATE foundation_alembic_version SET version_num = 'x'",
        "CREATE TABLE foundation_backdoor (x int)",
        "ALTER TABLE foundation_events DISABLE TRIGGER foundation_events_append_only",
        "DROP TABLE foundation_rate_limits",
        "DROP TRIGGER foundation_events_append_only ON foundation_events",
        "CREATE FUNCTION foundation_x() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        # a position past the sequence hid every later event from position readers
        "INSERT INTO foundation_events (position, id, type, data, metadata, recorded_at)"
        " VALUES (1000, gen_random_uuid()::text, 't', '{}', '{}', now())",
    ],
)
def test_the_role_is_refused_what_it_does_not_need(app_url: str, statement: str) -> None:
    with _as(app_url) as conn:
        conn.execute("SELECT 1 FROM foundation_events LIMIT 1")  # it may read
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement.encode())


def test_a_role_without_the_grants_gets_foundation_errors(
    app_url: str, postgres_server: str
) -> None:
    """Privileges are the database's last word; its refusal reaches the caller as a
    FoundationError (storage_error), never as a psycopg exception."""
    role = f"foundation_none_{uuid.uuid4().hex[:10]}"
    with _admin(postgres_server) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
    try:
        url = (
            DatabaseURL.parse(app_url).url.set(username=role).render_as_string(hide_password=False)
        )
        with pytest.raises(FoundationError) as err:
            Foundation(url, migrate="check")
        assert err.value.code == "storage_error"
        assert "permission denied" in err.value.message
    finally:
        with _admin(postgres_server) as admin:
            admin.execute(f"DROP ROLE IF EXISTS {role}")


# -- (b) no pickle ----------------------------------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle"}


def _sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _imported(node: ast.AST) -> list[str]:
    """The modules an import statement, ``__import__(...)`` or ``import_module(...)`` names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return [node.module or ""]
    if isinstance(node, ast.Call) and _callee(node) in ("__import__", "import_module"):
        arg = node.args[0] if node.args else None
        return [arg.value] if isinstance(arg, ast.Constant) else ["<dynamic import>"]
    return []


def _callee(call: ast.Call) -> str:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


# A module imported by a computed name could be anything: each place is listed with why not.
DYNAMIC_IMPORTS = {
    "foundation/telemetry/reporters/__init__.py": "lazy attributes: names from its own _LAZY "
    "table of its three reporter submodules",
}


def test_no_pickle_anywhere() -> None:
    found = []
    for path in [*_sources(), *sorted((ROOT / "migrations").rglob("*.py"))]:
        file = str(path.relative_to(ROOT))
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for name in _imported(node):
                dynamic = name == "<dynamic import>" and file not in DYNAMIC_IMPORTS
                if name.split(".")[0] in UNSAFE_MODULES or dynamic:
                    found.append(f"{file}:{node.lineno}: {name}")
    assert found == []
    assert len(_sources()) > 30  # the scan did see the package


# -- (c) no string-built SQL ------------------------------------------------------------------

# Calls that hand their first argument to a database as SQL text.
SQL_SINKS = {
    "execute",
    "executemany",
    "executescript",
    "exec_driver_sql",
    "fetchone",
    "fetchall",
    "fetchval",
    "text",
    "literal_column",
}
# Foundation writes SQL keywords in capitals (case-sensitive: "where it comes from" in a
# message is not SQL).
SQL_WORDS = re.compile(
    r"\b(SELECT|INSERT\s+INTO|UPDATE|DELETE\s+FROM|CREATE|DROP|ALTER|TRUNCATE|GRANT|PRAGMA|"
    r"LISTEN|NOTIFY|SET\s+search_path|WHERE|VALUES|CAST)\b"
)
# Calls whose argument becomes SQL text as it is: anything but a literal is reported.
RAW_SQL = {"text", "literal_column"}


# Module-level string constants of the file being scanned (a template like
# ``TRIGGER = "CREATE TRIGGER {name} …"`` filled in later with ``TRIGGER.format(...)``).
_constants: dict[str, str] = {}


def _built(node: ast.AST) -> bool:
    """Whether an expression builds a string at run time (f-string with values, %, +,
    .format, str.join)."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(v, ast.FormattedValue) for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod | ast.Add):
        return _stringy(node.left) or _stringy(node.right)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.attr in ("format", "join", "replace") and _stringy(node.func.value)
    return False


def _stringy(node: ast.AST) -> bool:
    if isinstance(node, ast.Name):
        return node.id in _constants
    return (isinstance(node, ast.Constant) and isinstance(node.value, str)) or isinstance(
        node, ast.JoinedStr | ast.BinOp
    )


def _text_of(node: ast.AST) -> str:
    """The literal parts of a built string (what would be SQL in it)."""
    return " ".join(
        n.value if isinstance(n, ast.Constant) else _constants[n.id]  # type: ignore[attr-defined]
        for n in ast.walk(node)
        if (isinstance(n, ast.Constant) and isinstance(n.value, str))
        or (isinstance(n, ast.Name) and n.id in _constants)
    )


def string_built_sql(path: Path) -> list[tuple[str, int, str]]:
    """(file, line, source) of each string built at run time that is SQL: it holds SQL
    words, or it is (or names a variable assigned such a string that is) the first
    argument of a call that runs SQL."""
    source = path.read_text()
    tree = ast.parse(source, str(path))
    _constants.clear()
    for stmt in tree.body:
        value = stmt.value if isinstance(stmt, ast.Assign) else None
        if isinstance(value, ast.Constant) and isinstance(value.value, str):
            names = [t.id for t in stmt.targets if isinstance(t, ast.Name)]  # type: ignore[attr-defined]
            _constants.update(dict.fromkeys(names, value.value))
    built_names: dict[str, ast.AST] = {}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Assign | ast.AnnAssign)
            and node.value is not None
            and _built(node.value)
        ):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    built_names[target.id] = node.value
    found: set[tuple[int, int]] = set()
    out = []

    def report(node: ast.AST) -> None:
        key = (node.lineno, node.col_offset)  # type: ignore[attr-defined]
        if key not in found:
            found.add(key)
            segment = ast.get_source_segment(source, node) or ""
            name = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
            out.append((name, node.lineno, segment))  # type: ignore[attr-defined]

    for node in ast.walk(tree):
        if _built(node) and SQL_WORDS.search(_text_of(node)):
            report(node)
        if isinstance(node, ast.Call) and _callee(node) in SQL_SINKS and node.args:
            arg = node.args[0]
            if _built(arg):
                report(arg)
            elif isinstance(arg, ast.Name) and arg.id in built_names:
                report(built_names[arg.id])
            elif _callee(node) in RAW_SQL and not isinstance(arg, ast.Constant):
                report(arg)
    return out


# Every string-built SQL expression in foundation/ and migrations/ is listed here with the
# reason it is safe: (file, the expression's source) -> why. A new one fails the test until
# it is turned into bound parameters or listed with its reason.
ALLOWED: dict[tuple[str, str], str] = {
    (
        "foundation/database/sync.py",
        'f"PRAGMA busy_timeout = {int(settings.sqlite_busy_timeout_ms)}"',
    ): "PRAGMA takes no bound parameters; int() of a validated Settings field",
    (
        "foundation/database/sync.py",
        'f"PRAGMA synchronous = {settings.sqlite_synchronous}"',
    ): "PRAGMA takes no bound parameters; Settings allows only the literals NORMAL and FULL",
    (
        "foundation/database/aio.py",
        'f"PRAGMA busy_timeout = {int(self.settings.sqlite_busy_timeout_ms)}"',
    ): "as in sync.py: int() of a validated Settings field",
    (
        "foundation/database/aio.py",
        'f"PRAGMA busy_timeout = {int(ms)}"',
    ): "int() of the busy timeout (a validated Settings field) less the ms a call waited",
    (
        "foundation/database/aio.py",
        'f"PRAGMA synchronous = {self.settings.sqlite_synchronous}"',
    ): "as in sync.py: the literal NORMAL or FULL",
    (
        "foundation/database/engine.py",
        'f"PRAGMA busy_timeout = {int(settings.sqlite_busy_timeout_ms)}"',
    ): "as in sync.py: int() of a validated Settings field",
    (
        "foundation/database/engine.py",
        'f"PRAGMA synchronous = {settings.sqlite_synchronous}"',
    ): "as in sync.py: the literal NORMAL or FULL",
    (
        "foundation/database/feed.py",
        'f"LISTEN {CHANNEL}"',
    ): "LISTEN takes no bound parameters; CHANNEL is the module constant 'foundation'",
    (
        "foundation/events/_store.py",
        "str(EVENTS_LOCK_KEY)",
    ): "the writers' advisory lock key, an int constant of the module, as in the function",
    (
        "foundation/circuit_breaker/_store.py",
        "str(value)",
    ): "_c(value: int): integer constants of the statements, compiled once",
    (
        "foundation/circuit_breaker/_store.py",
        "f\"'{value}'\"",
    ): "_s(value): the state names 'open', 'closed', 'half_open' written in the module",
    (
        "foundation/rate_limiter/_store.py",
        "str(value)",
    ): "_c(value: int): integer constants of the statements, compiled once",
    (
        "foundation/rate_limiter/_store.py",
        'f"CAST(FLOOR({epoch} * 1000) AS BIGINT)"',
    ): "epoch is the constant expression EXTRACT(EPOCH FROM statement_timestamp())",
    (
        "foundation/rate_limiter/_store.py",
        'f"CAST(FLOOR({epoch} * 1000000) AS BIGINT)"',
    ): "as above: a constant SQL expression",
    (
        "foundation/rate_limiter/_store.py",
        "f\"'{algorithm}'\"",
    ): "one statement per name of the constant tuple of algorithms, compiled once",
    (
        "foundation/rate_limiter/_store.py",
        "str(v)",
    ): "int constants of the per-algorithm values table (isinstance(v, int) is checked)",
    (
        "foundation/service_registry/_store.py",
        'f"{table.name}.{column}"',
    ): "a column of the schema's own Table named in the code (ON CONFLICT correlation)",
    (
        "migrations/env.py",
        'f"SELECT pg_advisory_lock({ADVISORY_LOCK_KEY})"',
    ): "the migrations' advisory lock key, an int constant",
    (
        "migrations/env.py",
        'f"SELECT pg_advisory_unlock({ADVISORY_LOCK_KEY})"',
    ): "the migrations' advisory lock key, an int constant",
    (
        "migrations/env.py",
        'f"CREATE SCHEMA IF NOT EXISTS {schema}"',
    ): "DDL takes no bound parameters; the schema name is validated by Settings "
    "(pattern ^[a-z_][a-z0-9_]{0,62}$)",
    (
        "migrations/env.py",
        'f"SET search_path TO {schema}"',
    ): "as above: the schema name validated by Settings",
    (
        "migrations/versions/0005_audit.py",
        "<DDL>",
    ): "the PL/pgSQL and SQLite trigger bodies; the values are the events lock key and the "
    "SQLite uuid expression, module constants",
    (
        "migrations/versions/0006_topic_revisions.py",
        'f"DROP TRIGGER IF EXISTS {name}"',
    ): "DDL in a migration; the trigger names come from the module's TOPICS table",
    (
        "migrations/versions/0006_topic_revisions.py",
        "BODY.format(topic=topic, row=row, key=key, every=PRUNE_EVERY, keep=KEEP)",
    ): "DDL in a migration: the SQLite trigger body, filled from the module's constants",
    (
        "migrations/versions/0006_topic_revisions.py",
        "TRIGGER.format(name=name, event=event, table=table, when=when, body=body)",
    ): "DDL in a migration: CREATE TRIGGER, filled from the module's TOPICS table",
    (
        "migrations/versions/0007_events_append.py",
        "<DDL>",
    ): "the PL/pgSQL append function; its only value is the events lock key, an int constant",
    (
        "migrations/versions/0009_events_replace_and_config_ids.py",
        'f"VALUES ({uuid_sql},"',
    ): "0005's trigger texts with their uuid expression swapped: the values are uuid "
    "expressions, constants of 0005 and of this module",
    (
        "migrations/versions/0011_registry_audit_views.py",
        'REGISTRY_VIEW.replace("NOW", now)',
    ): "DDL in a migration: the view with the backend's now(), one of the module's two "
    "constant expressions",
    (
        "migrations/versions/0011_registry_audit_views.py",
        'MEMBERS_VIEW.replace("NOW", now)',
    ): "as above",
    (
        "migrations/versions/0012_function_search_path.py",
        'PG_EACH_FUNCTION.replace("ACTION", PG_SET_SEARCH_PATH)',
    ): "DDL in a migration: the ALTER FUNCTION clause, one of the module's two constants",
    (
        "migrations/versions/0012_function_search_path.py",
        'PG_EACH_FUNCTION.replace("ACTION", PG_RESET_SEARCH_PATH)',
    ): "as above",
    (
        "foundation/events/_store.py",
        'f"({SQLITE_OWN_TIME})"',
    ): "SQLite's test of Foundation's recorded_at form: a module constant, no input",
    (
        "foundation/events/_store.py",
        'f"NOT ({SQLITE_OWN_TIME})"',
    ): "as above, negated (the WHERE of migration 0016's partial index)",
    (
        "foundation/events/_store.py",
        'f"({SQLITE_UTC_TIME})"',
    ): "SQLite's expression of a recorded_at in UTC: a module constant, no input",
    (
        "foundation/events/_store.py",
        'f"(CASE WHEN {SQLITE_OWN_TIME} THEN recorded_at ELSE {SQLITE_UTC_TIME} END)"',
    ): "the two constants above, no input",
    (
        "migrations/versions/0016_sqlite_other_times_index.py",
        'f"CREATE INDEX ix_foundation_events_other_times ON foundation_events ({UTC_TIME})"\n'
        '    f" WHERE NOT ({OWN_TIME})"',
    ): "DDL in a migration: the index's expression and WHERE, the module's constants",
    (
        "migrations/versions/0020_config_values_readable.py",
        '"CREATE TRIGGER foundation_config_value_readable_insert BEFORE INSERT ON '
        'foundation_config"\n    + _SQLITE_CHECK',
    ): "DDL in a migration: the trigger's head and its body, a module constant",
    (
        "migrations/versions/0020_config_values_readable.py",
        '"CREATE TRIGGER foundation_config_value_readable_update"\n'
        '    " BEFORE UPDATE OF value ON foundation_config" + _SQLITE_CHECK',
    ): "as above",
    (
        "migrations/versions/0021_breaker_states_known.py",
        '"CREATE TRIGGER foundation_breakers_state_insert BEFORE INSERT ON '
        'foundation_breakers"\n        + _SQLITE_RAISE',
    ): "DDL in a migration: the trigger's head and its body, a module constant",
    (
        "migrations/versions/0021_breaker_states_known.py",
        '"CREATE TRIGGER foundation_breakers_state_update"\n'
        '        " BEFORE UPDATE OF state ON foundation_breakers" + _SQLITE_RAISE',
    ): "as above",
}


# What a migration's f-string DDL may interpolate: module constants, never input.
DDL_CONSTANTS = {"EVENTS_LOCK_KEY", "_SQLITE_UUID"}


def _allowed(file: str, segment: str) -> bool:
    if (file, segment) in ALLOWED:
        return True
    # a migration's DDL listed as "<DDL>": an f-string whose only values are constants
    values = set(re.findall(r"(?<!\{)\{(\w+)\}(?!\})", segment))
    return (
        (file, "<DDL>") in ALLOWED
        and segment.startswith('f"""')
        and "CREATE" in segment
        and values <= DDL_CONSTANTS
    )


def test_no_string_built_sql() -> None:
    found = []
    for path in [*_sources(), *sorted((ROOT / "migrations").rglob("*.py"))]:
        found += string_built_sql(path)
    unexplained = [f"{f}:{line}: {seg}" for f, line, seg in found if not _allowed(f, seg)]
    assert unexplained == []
    # every listed exception still exists (the list does not rot)
    seen = {(f, seg) for f, _, seg in found}
    stale = [key for key in ALLOWED if key not in seen and not key[1].startswith("<")]
    assert stale == []


def test_the_scan_finds_string_built_sql(tmp_path: Path) -> None:
    """The scanner itself: each way of building SQL from strings is caught."""
    sample = tmp_path / "sample.py"
    code = """
import sqlalchemy as sa
def f(conn, name, key, t):
    conn.execute(f"SELECT * FROM t WHERE name = '{name}'")
    conn.execute("DELETE FROM t WHERE k = '%s'" % key)
    conn.execute("UPDATE t SET v = 1 WHERE k = " + key)
    conn.execute("SELECT {} FROM t".format(name))
    sql = f"SELECT 1 FROM {t}"
    conn.fetchall(sql)
    sa.text(name)
    sa.literal_column(key)
    conn.execute("SELECT 1 WHERE k = :k", {"k": key})
    sa.text("SELECT 1")
"""
    sample.write_text(code)
    found = string_built_sql(sample)
    assert [line for _, line, _ in found] == [4, 5, 6, 7, 8, 10, 11]
