"""Review 15 of the core, on SQLite and PostgreSQL: a config key deleted with plain SQL and
set again kept every node on the old value (the new row's revision started again at 1); a
key typed by a model with an aliased field was stored by field name, which other nodes and
the next start refused; a sliding window's ``retry_after`` and ``reset_at`` came too early;
an ``async def`` telemetry handler was attached and never ran; ``foundation limits`` showed
a token bucket with no tokens left as ``used 0``."""

from __future__ import annotations

import asyncio
import functools
import json
import random
import time
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import BaseModel, Field, field_serializer

from foundation import AsyncFoundation, Foundation, FoundationError
from foundation.cli import main
from foundation.rate_limiter._logic import Limit, sliding_decision, sliding_window
from foundation.telemetry import Telemetry
from tests.helpers import wait_for
from tests.test_config_review import plain_sql

# -- a config row deleted with plain SQL, then written again ----------------------------


def _converged(nodes: list[Foundation], key: str, value: Any) -> None:
    assert wait_for(lambda: all(n.config.get(key) == value for n in nodes)), [
        n.config.get(key) for n in nodes
    ]


def test_a_key_deleted_with_plain_sql_and_set_again_is_read_by_every_node(db_url: str) -> None:
    with Foundation(db_url) as a, Foundation(db_url) as b:
        for value in ("v1", "v2", "v3"):
            a.config.set("mode", value)
        _converged([a, b], "mode", "v3")
        plain_sql(db_url, "DELETE FROM foundation_config WHERE key = 'mode'")
        a.config.set("mode", "new")
        assert a.config.get("mode") == "new"  # its own write, at once
        _converged([a, b], "mode", "new")
        # The revisions go on from the key's history: no node takes the row for an old one.
        assert a.config.history("mode", limit=1)[0].revision > 4  # past the delete's own
        a.config.set("mode", "newer")
        _converged([a, b], "mode", "newer")


def test_a_row_inserted_with_plain_sql_after_a_delete_reaches_the_nodes(db_url: str) -> None:
    with Foundation(db_url) as a, Foundation(db_url) as b:
        for value in ("v1", "v2", "v3"):
            a.config.set("mode", value)
        _converged([a, b], "mode", "v3")
        # An operator (or a node of an earlier release) writes the key anew from revision 1.
        plain_sql(db_url, "DELETE FROM foundation_config WHERE key = 'mode'")
        plain_sql(
            db_url,
            "INSERT INTO foundation_config (key, value, deleted, revision, updated_at, "
            "updated_by) VALUES ('mode', '\"by hand\"', false, 1, CURRENT_TIMESTAMP, 'ops')",
        )
        _converged([a, b], "mode", "by hand")


def test_async_a_key_deleted_with_plain_sql_and_set_again(db_url: str) -> None:
    async def scenario() -> None:
        async with AsyncFoundation(db_url) as a, AsyncFoundation(db_url) as b:
            for value in ("v1", "v2", "v3"):
                await a.config.set("mode", value)
            deadline = time.monotonic() + 10
            while b.config.get("mode") != "v3" and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            plain_sql(db_url, "DELETE FROM foundation_config WHERE key = 'mode'")
            await a.config.set("mode", "new")
            assert a.config.get("mode") == "new"
            while b.config.get("mode") != "new" and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            assert b.config.get("mode") == "new"

    asyncio.run(scenario())


# -- a model with aliases -----------------------------------------------------------------


class Upstream(BaseModel):
    host_name: str = Field(alias="hostName")
    port: int = 80


class Serialized(BaseModel):
    n: int

    @field_serializer("n")
    def _text(self, value: int) -> str:
        return f"n={value}"


def test_a_model_with_an_aliased_field_is_stored_in_its_wire_form(db_url: str) -> None:
    with Foundation(db_url) as a, Foundation(db_url) as b:
        for node in (a, b):
            node.config.register("upstream", Upstream, default={"hostName": "default"})
        a.config.set("upstream", {"hostName": "new.example", "port": 8080})
        assert a.config.history("upstream", limit=1)[0].new_value == {
            "hostName": "new.example",
            "port": 8080,
        }
        wait_for(lambda: b.config.get("upstream").host_name == "new.example")
        assert b.config.get("upstream") == Upstream(hostName="new.example", port=8080)
    with Foundation(db_url) as restarted:
        restarted.config.register("upstream", Upstream, default={"hostName": "default"})
        assert restarted.config.get("upstream").host_name == "new.example"


def test_a_value_whose_json_its_type_refuses_is_not_written(db_url: str) -> None:
    with Foundation(db_url) as fdn:
        fdn.config.register("weird", Serialized, default={"n": 1})
        with pytest.raises(FoundationError) as err:
            fdn.config.set("weird", {"n": 3})
        assert err.value.code == "config_error"
        assert "read back" in err.value.message and err.value.context["key"] == "weird"
        assert fdn.config.history("weird") == []
        assert fdn.config.get("weird") == Serialized(n=1)


# -- the sliding window's retry_after and reset_at ----------------------------------------


def _first_admitted(state: tuple[int, int, int], now: int, limit: Limit) -> int:
    for later in range(now, now + 3 * limit.interval + 2):
        if sliding_window(state, later, limit)[1]:
            return later
    raise AssertionError("never admitted")


def test_sliding_retry_after_and_reset_at_are_exact() -> None:
    rng = random.Random(15)
    for _ in range(3000):
        limit = Limit(rng.randint(1, 9), rng.choice([7, 10, 100, 997]), "sliding_window")
        state: Any = None
        now = rng.randint(0, 5 * limit.interval)
        for _ in range(rng.randint(0, 30)):
            now += rng.randint(0, limit.interval // 3 + 1)
            state, _ = sliding_window(state, now, limit)
        state, allowed = sliding_window(state, now, limit)
        decision = sliding_decision(state, allowed, now, limit)
        if allowed:
            continue
        case = (limit, state, now)
        assert decision.retry_after == max(1, _first_admitted(state, now, limit) - now), case
        whole = state
        admitted = 0
        for _ in range(limit.max_requests):
            whole, ok = sliding_window(whole, decision.reset_at_ms, limit)
            admitted += ok
        assert admitted == limit.max_requests, case


@pytest.mark.parametrize("scope", ["shared", "local"])
def test_waiting_the_sliding_retry_after_is_enough(db_url: str, scope: str) -> None:
    interval = 1000
    with Foundation(db_url) as fdn:
        limiter = fdn.rate_limiter
        # Start just after a window begins: five requests, then a refusal, in one window
        # with no previous count (where the wait was told as "until this window ends").
        time.sleep((interval - time.time_ns() // 1_000_000 % interval) / 1000 + 0.01)
        for _ in range(5):
            assert limiter.try_acquire("sw", 5, interval, "sliding_window", scope).allowed
        refused = limiter.try_acquire("sw", 5, interval, "sliding_window", scope)
        assert not refused.allowed
        time.sleep(refused.retry_after / 1000 + 0.005)
        assert limiter.try_acquire("sw", 5, interval, "sliding_window", scope).allowed


# -- telemetry handlers that are async ---------------------------------------------------


def test_an_async_telemetry_handler_is_refused_at_attach() -> None:
    telemetry = Telemetry()

    async def handler(*args: Any) -> None:
        pass

    class Handler:
        async def __call__(self, *args: Any) -> None:
            pass

    class Derived(Handler):
        pass

    async def stream(*args: Any) -> Any:
        yield args

    def generator(*args: Any) -> Any:
        yield args

    candidates = (handler, Handler(), Derived(), functools.partial(handler, "x"), stream, generator)
    for candidate in candidates:
        with pytest.raises(FoundationError) as err:
            telemetry.attach("h", "app.done", candidate)
        assert err.value.code == "validation_error" and "async" in err.value.message
    assert telemetry.list_handlers() == []


def test_a_handler_returning_a_coroutine_is_detached_and_reported() -> None:
    telemetry = Telemetry()
    failures: list[Any] = []

    async def later() -> None:
        pass

    def stream() -> Any:
        yield None

    telemetry.attach("sneaky", "app.done", lambda *args: later())
    telemetry.attach("sneakier", "app.done", lambda *args: stream())
    telemetry.attach(
        "failures",
        "foundation.telemetry.handler_failure",
        lambda name, m, meta, cfg: failures.append(meta),
    )
    with _no_warning():
        telemetry.execute("app.done", {"n": 1})
    assert [f["handler_id"] for f in failures] == ["sneaky", "sneakier"]
    assert "coroutine" in failures[0]["exception"] and "generator" in failures[1]["exception"]
    assert [h.id for h in telemetry.list_handlers()] == ["failures"]


class _no_warning:
    """Nothing warned ("coroutine … was never awaited"): the coroutine was closed."""

    def __enter__(self) -> None:
        import warnings

        self._catch = warnings.catch_warnings(record=True)
        self._seen = self._catch.__enter__()
        warnings.simplefilter("always")

    def __exit__(self, *exc: Any) -> None:
        self._catch.__exit__(*exc)
        assert not [w for w in self._seen if "never awaited" in str(w.message)]


# -- foundation limits and a token bucket -------------------------------------------------


def test_a_token_bucket_in_use_is_not_listed_as_used_0(db_url: str) -> None:
    with Foundation(db_url) as fdn:
        for _ in range(5):
            fdn.rate_limiter.try_acquire("tb", 5, 60_000, "token_bucket")
        [usage] = fdn.rate_limiter.usage()
        assert (usage.key, usage.used, usage.previous_count) == ("tb", None, None)
        assert usage.tat_us > time.time_ns() // 1000
    result = CliRunner().invoke(main, ["-d", db_url, "limits", "--json"])
    assert result.exit_code == 0, result.stderr
    [listed] = json.loads(result.stdout)
    assert (listed["key"], listed["used"]) == ("tb", None)
    result = CliRunner().invoke(main, ["-d", db_url, "limits"])
    assert result.exit_code == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if "tb" in line)
    assert " 0 " not in row and "-" in row


# -- review of this review's fixes --------------------------------------------------------


class Sized(BaseModel):
    size: int = Field(10, serialization_alias="Size")
    host: str = Field(serialization_alias="Host")


def test_a_model_with_a_serialization_alias_reads_back_its_value(db_url: str) -> None:
    with Foundation(db_url) as a, Foundation(db_url) as b:
        for node in (a, b):
            node.config.register("sized", Sized, default={"host": "default"})
        a.config.set("sized", {"size": 50, "host": "db1"})
        # The field names: the serialization alias is no name the model validates from.
        assert a.config.history("sized", limit=1)[0].new_value == {"size": 50, "host": "db1"}
        wait_for(lambda: b.config.get("sized").size == 50)
        assert b.config.get("sized") == Sized(size=50, host="db1")
    with Foundation(db_url) as restarted:
        restarted.config.register("sized", Sized, default={"host": "default"})
        assert restarted.config.get("sized") == Sized(size=50, host="db1")


def test_a_row_rewritten_with_plain_sql_at_the_same_revision_reaches_the_nodes(
    db_url: str,
) -> None:
    with Foundation(db_url) as a, Foundation(db_url) as b:
        a.config.set("mode", "old")
        _converged([a, b], "mode", "old")
        # One transaction: the row deleted and written again at the revision it had.
        _rewrite_in_one_transaction(db_url)
        _converged([a, b], "mode", "by hand")


def _rewrite_in_one_transaction(db_url: str) -> None:
    from foundation.database.url import DatabaseURL

    parsed = DatabaseURL.parse(db_url)
    statements = [
        "DELETE FROM foundation_config WHERE key = 'mode'",
        "INSERT INTO foundation_config (key, value, deleted, revision, updated_at, updated_by) "
        "VALUES ('mode', '\"by hand\"', false, 1, CURRENT_TIMESTAMP, 'ops')",
    ]
    if parsed.backend == "sqlite":
        import sqlite3

        with sqlite3.connect(parsed.sqlite_path) as conn:
            for statement in statements:
                conn.execute(statement)
        return
    import psycopg

    with psycopg.connect(parsed.conninfo) as pg, pg.transaction():
        for statement in statements:
            pg.execute(statement)  # type: ignore[arg-type]


def test_a_key_typed_any_reads_on_its_writer_what_every_node_reads(db_url: str) -> None:
    import datetime
    import decimal

    with Foundation(db_url) as a, Foundation(db_url) as b:
        for node in (a, b):
            node.config.register("free", Any, default=None)
            node.config.register("table", dict, default={})
        cases = [
            ("free", {1, 2}),
            ("free", (1, 2)),
            ("free", datetime.datetime(2024, 1, 1)),
            ("free", decimal.Decimal("1.10")),
            ("table", {1: "a"}),
        ]
        for key, value in cases:
            a.config.set(key, value)
            stored = a.config.history(key, limit=1)[0].new_value
            assert a.config.get(key) == stored, (key, value)
            wait_for(lambda key=key, stored=stored: b.config.get(key) == stored)
        for key in ("free", "table"):
            with pytest.raises(FoundationError) as err:
                a.config.set(key, {"x": float("nan")})  # pydantic would store null
            assert err.value.code == "config_error" and "NaN" in err.value.message


class WithAlias(BaseModel):
    x: int = Field(0, alias="X")


class Plain(BaseModel):
    x: int = 0


class ByValidationAlias(BaseModel):
    a: int = Field(1, validation_alias="va")


class Excluded(BaseModel):
    a: int = Field(1, alias="A", exclude=True)


def test_typed_values_read_back_as_themselves_or_are_refused(db_url: str) -> None:
    cases: list[tuple[str, Any, Any]] = [
        ("union", WithAlias | Plain, Plain(x=7)),  # not read as the first member by name
        ("validation alias", ByValidationAlias, ByValidationAlias(va=5)),
    ]
    with Foundation(db_url) as a, Foundation(db_url) as b:
        for key, type_, value in cases:
            for node in (a, b):
                node.config.register(key, type_)
            a.config.set(key, value)
            # (a read-only copy of the model's class: an instance of it)
            assert a.config.get(key) == value and isinstance(a.config.get(key), type(value))
            wait_for(lambda key=key, value=value: b.config.get(key) == value)
            assert isinstance(b.config.get(key), type(value))
        a.config.register("excluded", Excluded)
        with pytest.raises(FoundationError) as err:  # it would read back as its default
            a.config.set("excluded", Excluded(A=5))
        assert err.value.code == "config_error" and "read back" in err.value.message
    with Foundation(db_url) as restarted:
        for key, type_, value in cases:
            restarted.config.register(key, type_)
            assert restarted.config.get(key) == value
            assert isinstance(restarted.config.get(key), type(value))
