"""Review 19: a node id's lease generations never restart.

* A holder paused past its TTL, while a later instance of its node id started and closed
  cleanly (deleting its lease row) and another started again: the third took generation 1
  again, the paused holder's own. Back, the paused holder took the third's live lease as
  its own (the generation matched), and its ``leave`` deleted the third's member. Its
  ``leave`` took any generation up to its own: a later instance's below it (its lease
  numbered from the counter, below a row's set by hand or restored) was deleted.
* ``AsyncSubscription.stop()`` called by a task its handler had started, once the handler
  had returned, returned at once: the subscription still running, its name held.
* An ``AsyncFoundation.close()`` in a task the handler awaits, while another close waited
  for that handler, waited for it in turn: 10 s, then the handler was cancelled.
* The CLI printed the connection pool's warnings during an outage, bare, among its own
  (its own over several lines); the first fix set the terminal's logging up in ``main``,
  which outlived the command in a program that ran it (CliRunner, a deploy step).
* Config named a generic type by its bare name (``list`` for ``list[int]``); the first
  fix's ``repr`` cut module paths holding "typing." and spelled ``Annotated`` out.
* The sync breaker kept a probe that never ran (a plain function returning a coroutine)
  for its whole lease; a close in a task a registry watch callback awaits, while another
  close waited for the callback, waited for it in turn (1 s, then cancelled it); the
  CLI's one line left out the exception of an error.
* The review of those: one flag per dispatcher (or subscription) for "a callback runs"
  took a task an earlier callback had started for one the running callback awaits (its
  close returned before the release); the probe's keeper could renew a probe given back;
  ``Annotated`` hid metadata that changes what a key takes; an exception that cannot
  say itself broke the CLI's line.
* A new user's typos: a misspelt keyword setting said "Extra inputs are not permitted";
  ``sqlite:foo.db`` was hidden as if it held a password, ``sqlite://foo.db`` called an
  in-memory database; a one-letter password was scrubbed out of every word of a message.
* A metric's value finite as measured but infinite in the metric's unit was recorded
  (+Inf for good in a counter); a ``Decimal`` was refused as "non-numeric".
* An event id ``URN:UUID:…`` in capitals was refused (the lower-case prefix was taken).
* Config: ``explain()`` left out a runtime value this node's type refused.
* Breakers: a node whose probe claim found the probe taken told the other node's
  transition as its own; the sync face refused an ``async def`` only after claiming the
  probe (every call refused for the probe's lease); a bad function given to ``limit`` or
  ``protect`` was said to be given to ``execute``.
* PostgreSQL: ``TRUNCATE foundation_config`` was taken, unrecorded and unseen by running
  nodes (migration 0024 refuses it).

Each test failed on the commit before its fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import psycopg
import pydantic
import pytest

from foundation import (
    AsyncFoundation,
    CircuitOpenError,
    ConfigError,
    Foundation,
    ValidationError,
)
from foundation.database.url import DatabaseURL
from foundation.telemetry import Telemetry, metrics
from foundation.telemetry.reporters import PrometheusReporter
from tests.helpers import async_wait_for, wait_for
from tests.test_cli import fails, ok
from tests.test_core_review import plain_sql
from tests.test_registry import node, stop_heartbeat
from tests.test_registry_async import freeze
from tests.test_registry_review3 import anode

LEASES = "SELECT node_id, generation FROM foundation_leases ORDER BY node_id"
MEMBERS = "SELECT member_id, CAST(address AS TEXT) FROM foundation_registry_members"


def test_a_paused_instance_never_shares_its_generation_with_a_later_one(db_url: str) -> None:
    old = node(db_url, node_id="C")
    try:
        old.service_registry.join("workers", "http://old", member_id="m")
        stop_heartbeat(old)  # paused past its TTL
        with node(db_url, node_id="C"):  # the next instance: takes the lapsed lease, closes
            pass
        with node(db_url, node_id="C") as new:  # its lease row was deleted: a new one
            new.service_registry.join("workers", "http://new", member_id="m")
            (lease,) = plain_sql(db_url, LEASES)
            old.service_registry.leave("workers", "m")  # back: leaves its own, if any
            with pytest.raises(ConfigError):
                old.service_registry.heartbeat()  # the node id is the new instance's
            assert new.service_registry.heartbeat() is True
            assert plain_sql(db_url, LEASES) == [lease]
            assert plain_sql(db_url, MEMBERS) == [("m", '"http://new"')]
            assert [m.address for m in new.service_registry.members("workers")] == ["http://new"]
    finally:
        old.close()


async def test_async_a_paused_instance_never_shares_its_generation_with_a_later_one(
    db_url: str,
) -> None:
    old = anode(db_url, node_id="C")
    await old.open()
    try:
        await old.service_registry.join("workers", "http://old", member_id="m")
        await freeze(old)
        async with anode(db_url, node_id="C"):
            pass
        async with anode(db_url, node_id="C") as new:
            await new.service_registry.join("workers", "http://new", member_id="m")
            (lease,) = plain_sql(db_url, LEASES)
            await old.service_registry.leave("workers", "m")
            with pytest.raises(ConfigError):
                await old.service_registry.heartbeat()
            assert await new.service_registry.heartbeat() is True
            assert plain_sql(db_url, LEASES) == [lease]
            assert plain_sql(db_url, MEMBERS) == [("m", '"http://new"')]
    finally:
        await old.close()


def test_generations_of_a_node_id_only_grow(db_url: str) -> None:
    seen = []
    for _ in range(3):
        with node(db_url, node_id="C") as fdn:
            (lease,) = plain_sql(db_url, LEASES)
            assert fdn.service_registry.heartbeat() is True
            seen.append(lease[1])
    assert seen == sorted(set(seen))


# -- events: stop() from a task a handler started ------------------------------------------


async def test_a_task_the_handler_started_waits_for_the_stop_once_the_handler_returned(
    afdn: AsyncFoundation, db_url: str
) -> None:
    """A worker task the handler started (it inherits the handler's context) called
    ``stop()`` while no handler ran: it returned at once, the subscription still running
    and its name held."""
    await afdn.events.store({"type": "t", "data": {}})
    asked = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    holder: dict[str, Any] = {}

    async def worker() -> None:
        await asked.wait()
        await holder["sub"].stop()

    def handler(event: Any) -> None:
        if not tasks:
            tasks.append(asyncio.create_task(worker()))

    holder["sub"] = await afdn.events.subscribe("proj", handler, poll_interval_ms=5000)
    await async_wait_for(lambda: holder["sub"].status.checkpoint == 1)
    asked.set()
    await tasks[0]
    assert holder["sub"].status.state == "stopped"
    async with AsyncFoundation(db_url, migrate="skip") as other:  # the name is free at once
        again = await other.events.subscribe("proj", lambda event: None)
        await again.stop()


# -- the CLI's log lines ------------------------------------------------------------------


def _stderr_after_the_cli(tmp_path: Path, then: str) -> list[str]:
    """The stderr lines of a process that ran the ``foundation`` command (``run``), then
    ``then``: what the command's logging makes of later log lines."""
    script = (
        "import logging, sys\n"
        "from foundation.cli import run\n"
        'sys.argv = ["foundation", "-d", sys.argv[1], "db", "current"]\n'
        "try:\n"
        "    run()\n"
        "except SystemExit:\n"
        "    pass\n"
    ) + then
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    done = subprocess.run(
        [sys.executable, "-c", script, url], capture_output=True, text=True, check=True
    )
    return done.stderr.splitlines()


def test_the_cli_says_warnings_are_warnings_and_leaves_the_pools_out(tmp_path: Path) -> None:
    """During an outage, the CLI printed the pool's "discarding broken connection: <psycopg
    .Connection [BAD] at 0x…>" lines, bare, among Foundation's own (which spanned lines)."""
    then = (
        'logging.getLogger("psycopg.pool").warning("discarding broken connection: <BAD>")\n'
        'logging.getLogger("foundation.feed").warning("feed lost (line one\\n\\tline two)")\n'
    )
    assert _stderr_after_the_cli(tmp_path, then) == ["WARNING: feed lost (line one line two)"]


_MAIN_IN_A_PROGRAM = """
import logging, sys
from click.testing import CliRunner
from foundation.cli import main
CliRunner().invoke(main, ["-d", sys.argv[1], "db", "current"])
print(logging.getLogger().handlers, logging.getLogger("psycopg.pool").level)
"""


def test_main_called_in_a_program_leaves_its_logging_alone(tmp_path: Path) -> None:
    """The CLI's terminal logging, put in place by main(), outlived the command: in a
    program that ran it (CliRunner, a deploy step) later lines went to its buffer."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    done = subprocess.run(
        [sys.executable, "-c", _MAIN_IN_A_PROGRAM, url], capture_output=True, text=True, check=True
    )
    assert done.stdout.split() == ["[]", "0"]


# -- telemetry: values in the metric's unit, and Decimals ---------------------------------


def test_a_value_infinite_once_converted_is_skipped_and_a_decimal_is_a_number() -> None:
    """1e300 seconds is finite, not in nanoseconds: it was recorded as +Inf (a counter and
    a histogram's sum stayed infinite, every rate() on them NaN); a Decimal (psycopg's
    NUMERIC) was refused as non-numeric."""
    from prometheus_client import CollectorRegistry, generate_latest

    tel = Telemetry()
    registry = CollectorRegistry()
    reporter = PrometheusReporter(
        tel,
        [
            metrics.distribution("job.run.duration", unit=("second", "nanosecond"), buckets=[1e9]),
            metrics.sum("job.run.size", unit=("gibibyte", "byte")),
        ],
        registry=registry,
    )
    tel.execute("job.run", {"duration": 1e300, "size": 1e300})
    tel.execute("job.run", {"duration": Decimal("2"), "size": Decimal("1")})
    tel.execute("job.run", {"duration": Decimal("NaN"), "size": Decimal("Infinity")})
    stats = reporter.stats()
    assert stats["job.run.duration"].invalid == 2 and stats["job.run.size"].invalid == 2
    text = generate_latest(registry).decode()
    assert "Inf" not in text.replace('le="+Inf"', "")
    assert "job_run_duration_nanoseconds_sum 2e+09" in text
    assert "job_run_size_bytes_total 1.073741824e+09" in text


# -- events: an id's URN prefix in capitals -------------------------------------------------


def test_an_event_id_in_urn_form_is_taken_in_any_case(fdn: Foundation) -> None:
    """The hex digits were taken in any case, the ``urn:uuid:`` prefix only in lower case."""
    text = "0192f0c4-7a10-7b3e-9c1d-2f4b6a8c0e12"
    first = fdn.events.store({"type": "t", "data": {}, "id": "URN:UUID:" + text.upper()})
    again = fdn.events.store({"type": "t", "data": {}, "id": "urn:uuid:" + text})
    assert str(first.id) == text and again.position == first.position


def _lapsed_lease(db_url: str, node_id: str, generation: int) -> None:
    """A lapsed lease row of ``node_id`` whose generation is above what the counter gives
    (set by hand, or a PostgreSQL database restored into another cluster)."""
    at = "2000-01-01 00:00:00.000" + ("" if db_url.startswith("sqlite") else "+00")
    plain_sql(
        db_url,
        "INSERT INTO foundation_leases (node_id, generation, ttl_ms, expires_at, renewed_at,"
        f" started_at) VALUES ('{node_id}', {generation}, 1000, '{at}', '{at}', '{at}')",
    )


def test_a_paused_instance_leaves_nothing_of_a_later_instance_of_a_lower_generation(
    db_url: str,
) -> None:
    """Leave took a row of this instance's generation or a lower one: a later instance's
    whose generation came from the counter, below the one a row had before, was deleted."""
    _lapsed_lease(db_url, "C", 10**12)
    old = node(db_url, node_id="C")
    try:
        old.service_registry.join("workers", "http://old", member_id="m")
        stop_heartbeat(old)  # paused past its TTL
        with node(db_url, node_id="C"):  # the next instance (10**12 + 2), closed cleanly
            pass
        with node(db_url, node_id="C") as new:  # from the counter, below the paused one's
            new.service_registry.join("workers", "http://new", member_id="m")
            assert (new.service_registry.lease_generation or 0) < 10**12
            old.service_registry.leave("workers", "m")
            assert plain_sql(db_url, MEMBERS) == [("m", '"http://new"')]
    finally:
        old.close()


# -- config: TRUNCATE ---------------------------------------------------------------------


def test_postgres_refuses_truncating_the_config(pg_url: str) -> None:
    """Row triggers do not fire on TRUNCATE: running nodes kept the old values for good, and
    the history recorded nothing."""
    with Foundation(pg_url, migrate="skip") as fdn:
        fdn.config.set("tr.a", "old")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="TRUNCATE is refused"):
            plain_sql(pg_url, "TRUNCATE foundation_config")
        plain_sql(pg_url, "DELETE FROM foundation_config")  # what does the job
        wait_for(lambda: fdn.config.get("tr.a") is None)


def test_explain_shows_the_value_the_nodes_type_refused(db_url: str) -> None:
    """A value another node set, refused by this node's type: explain() showed only the
    default, as if no runtime value were set."""
    with node(db_url) as typed, node(db_url) as untyped:
        typed.config.register("er.port", int, default=8080)
        untyped.config.set("er.port", "abc")
        wait_for(lambda: typed.config.explain("er.port").layers != {"default": 8080})
        shown = typed.config.explain("er.port")
        assert shown.value == 8080 and shown.source == "default"
        layers = dict(shown.layers)
        assert layers.pop("default") == 8080
        ((layer, value),) = layers.items()
        assert layer.startswith("runtime (revision 1, by ") and layer.endswith(
            ", refused, expected int"
        )
        assert value == "abc"


# -- breakers: whose change, and an async def while a probe is due --------------------------

STATE_CHANGE = ("foundation", "circuit_breaker", "state_change")


def _boom() -> None:
    raise RuntimeError("down")


def test_a_probe_another_node_claimed_is_told_as_that_nodes_change(db_url: str) -> None:
    """A node whose claim found the probe taken read the row, and told the other node's
    open -> half_open as its own (``source="local"``): dashboards counted it twice."""
    with node(db_url) as a, node(db_url) as b:
        told: list[tuple[str, str, str]] = []
        b.telemetry.attach(
            "told",
            STATE_CHANGE,
            lambda _e, _m, meta, _c: told.append((meta["from"], meta["to"], meta["source"])),
        )
        pay_a = a.circuit_breaker.get("pay", max_failures=1, reset_timeout=100, timeout=None)
        pay_b = b.circuit_breaker.get("pay", max_failures=1, reset_timeout=100, timeout=None)
        with pytest.raises(RuntimeError):
            pay_a.call(_boom)
        wait_for(lambda: b.circuit_breaker.state("pay") == "open")
        b.feed.stop()  # b learns of the probe from its own claim only
        time.sleep(0.2)  # the probe is due
        release = threading.Event()
        probe = threading.Thread(target=pay_a.call, args=(lambda: release.wait(5),))
        probe.start()
        try:
            wait_for(lambda: a.circuit_breaker.state("pay") == "half_open")
            with pytest.raises(CircuitOpenError):
                pay_b.call(lambda: None)
        finally:
            release.set()
            probe.join()
        assert ("open", "half_open", "remote") in told
        assert [t for t in told if t[2] == "local"] == []


def test_an_async_def_is_refused_before_it_takes_the_probe(db_url: str) -> None:
    """The sync face refused an ``async def`` once it had claimed the probe: the breaker
    then refused every call for the probe's lease."""

    async def probe() -> None:
        return None

    with node(db_url) as fdn:
        pay = fdn.circuit_breaker.get("pay", max_failures=1, reset_timeout=100, timeout=3000)
        with pytest.raises(RuntimeError):
            pay.call(_boom)
        time.sleep(0.2)  # the probe is due
        with pytest.raises(ValidationError, match="AsyncFoundation"):
            pay.call(probe)
        assert pay.call(lambda: "ok") == "ok"  # the probe was free
        assert fdn.circuit_breaker.state("pay") == "closed"


def test_a_bad_function_is_named_with_the_call_it_was_given_to(fdn: Foundation) -> None:
    with pytest.raises(ValidationError, match=r"rate_limiter\.limit needs a callable"):
        fdn.rate_limiter.limit("k")(5)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"circuit_breaker\.protect needs a callable"):
        fdn.circuit_breaker.protect("b")(5)  # type: ignore[arg-type]


def test_the_cli_tables_escape_control_characters_of_keys_and_names(db_url: str) -> None:
    """A limiter key (often a client's) reached the terminal raw: an escape sequence drove
    it, a newline drew a second row."""
    key, name = "\x1b[31mred\x1b[0m", "pay\nments"
    with node(db_url) as fdn:
        fdn.rate_limiter.acquire(key, max_requests=5, interval=60_000)
        with pytest.raises(RuntimeError):
            fdn.circuit_breaker.execute(_boom, name=name, max_failures=1)
    for command, shown_as in (("limits", "\\x1b[31mred"), ("breakers", "pay\\nments")):
        out = ok(db_url, command).stdout
        assert "\x1b" not in out and shown_as in out


# -- registry: the members a resync finds ---------------------------------------------------


async def test_async_joins_just_after_open_are_told_in_their_order(db_url: str) -> None:
    """The start's resync (which may come just after open() returns) told the joins it
    found by member id (``a1`` before ``z1``); a poll tells them by ``joined_at``."""
    slow = {"poll_interval_ms": 300}  # SQLite: its first read comes after both joins
    async with anode(db_url, node_id="A") as a, anode(db_url, node_id="B", **slow) as b:
        seen: list[str] = []
        b.service_registry.watch("grp", lambda change: seen.append(change.entry.member_id))
        await a.service_registry.join("grp", "http://a", member_id="z1")
        await a.service_registry.join("grp", "http://a", member_id="a1")
        await async_wait_for(lambda: len(seen) == 2)
        assert seen == ["z1", "a1"]


async def test_a_close_in_a_task_the_handler_awaits_while_another_close_runs(
    db_url: str,
) -> None:
    """close() under way, waiting for the handler; the handler awaits a task of its own
    that closes too: that second close waited for the first, which waited for the
    handler, until the stop timed out (10 s) and the event was delivered again."""
    fdn = AsyncFoundation(db_url, migrate="skip")
    await fdn.open()
    started, go = asyncio.Event(), asyncio.Event()

    async def handler(event: Any) -> None:
        started.set()
        await go.wait()
        await asyncio.create_task(fdn.close())

    await fdn.events.store({"type": "t", "data": {}})
    sub = await fdn.events.subscribe("proj", handler)
    await started.wait()
    closing = asyncio.create_task(fdn.close())
    await asyncio.sleep(0.1)  # the close waits for the handler
    go.set()
    await asyncio.wait_for(closing, 5)
    assert sub.status.checkpoint == 1 and sub.status.state == "stopped"


def test_a_generic_type_is_named_whole(fdn: Foundation) -> None:
    """``list[int]`` was named "list": "refused, expected list" of a list."""
    fdn.config.register("ports", list[int], default=[80])
    with pytest.raises(ConfigError, match=r"expected list\[int\]"):
        fdn.config.set("ports", ["a"])
    assert fdn.config.explain("ports").typed == "list[int]"


# -- late fixes: a probe that never ran, a close a watch callback awaits, type names ------


@pytest.mark.parametrize("scope", ["shared", "local"])
def test_a_probe_that_never_ran_is_given_back(db_url: str, scope: str) -> None:
    """A plain function that returns a coroutine while a probe was due: refused, its probe
    kept for its whole lease, every call refused meanwhile (``timeout`` + 1 s)."""

    async def work() -> str:
        return "ok"

    with node(db_url) as fdn:
        pay = fdn.circuit_breaker.get(
            "pay", max_failures=1, reset_timeout=100, timeout=3000, scope=scope
        )
        with pytest.raises(RuntimeError):
            pay.call(_boom)
        time.sleep(0.2)  # the probe is due
        with pytest.raises(ValidationError, match="AsyncFoundation"):
            pay.call(lambda: work())  # a coroutine, from a plain function
        assert pay.call(lambda: "ran") == "ran"  # the probe was given back
        assert fdn.circuit_breaker.state("pay", scope=scope) == "closed"


async def test_a_close_in_a_task_a_watch_callback_awaits_while_another_close_runs(
    db_url: str,
) -> None:
    """As for a subscription's handler: the second close waited for the first, which
    waited for the callback, until close() gave up (1 s) and cancelled it."""
    fdn = AsyncFoundation(db_url, migrate="skip")
    await fdn.open()
    started, go = asyncio.Event(), asyncio.Event()
    finished: list[str] = []

    async def callback(change: Any) -> None:
        started.set()
        await go.wait()
        await asyncio.create_task(fdn.close())
        finished.append(change.kind)

    fdn.service_registry.watch("svc", callback)
    await fdn.service_registry.register("svc", "http://a")
    await started.wait()
    closing = asyncio.create_task(fdn.close())
    await asyncio.sleep(0.1)  # the close waits for the callback
    go.set()
    await asyncio.wait_for(closing, 5)
    assert finished[:1] == ["register"]  # (then the close's unregister)


def test_types_are_named_as_written(fdn: Foundation) -> None:
    """``repr`` cut any module path holding "typing." and spelled Annotated's pydantic
    metadata out; a model was named "M" alone, "list[__main__.M]" inside a generic."""
    fdn.config.register("workers", Annotated[int, pydantic.Field(gt=0)], default=4)
    fdn.config.register("ports", list[_Port], default=[])
    fdn.config.register("mode", Literal["a", "b"] | None, default=None)
    named = {k: fdn.config.explain(k).typed for k in ("workers", "ports", "mode")}
    assert named == {
        "workers": "Annotated[int, …]",  # its metadata may change what it takes (Json)
        "ports": "list[_Port]",
        "mode": "Literal['a', 'b'] | None",
    }
    with pytest.raises(ConfigError, match=r"expected Annotated\[int, …\]"):
        fdn.config.set("workers", 0)
    fdn.config.register("weird", Callable[[int], str] | None, default=None)  # never raises
    assert fdn.config.explain("weird").typed == "Callable[[int], str] | None"


class _Port(pydantic.BaseModel):
    number: int


def test_the_cli_line_of_an_error_names_its_exception(tmp_path: Path) -> None:
    """The one-line format dropped the exception of ``log.exception`` lines."""
    then = (
        "try:\n"
        '    raise ValueError("bad\\nvalue")\n'
        "except ValueError:\n"
        '    logging.getLogger("foundation.feed").exception("subscriber failed")\n'
    )
    assert _stderr_after_the_cli(tmp_path, then) == [
        "ERROR: subscriber failed (ValueError: bad value)"
    ]


async def test_a_close_in_a_task_an_earlier_callback_started_waits_for_the_release(
    db_url: str,
) -> None:
    """One flag for "a callback runs" took a task an earlier callback had started for one
    the running callback may await: its close(), while another close waited for that
    callback, returned before the names were released."""
    fdn = AsyncFoundation(db_url, migrate="skip")
    await fdn.open()
    second_runs, outer_closes = asyncio.Event(), asyncio.Event()
    closers: list[asyncio.Task[list[tuple[object, ...]]]] = []

    async def closer() -> list[tuple[object, ...]]:
        await outer_closes.wait()
        await fdn.close()
        return plain_sql(db_url, "SELECT node_id FROM foundation_registry WHERE name = 'a'")

    async def callback(change: Any) -> None:
        if change.kind != "register":
            return
        if change.name == "a":
            closers.append(asyncio.create_task(closer()))  # not awaited
        else:
            second_runs.set()
            await asyncio.sleep(0.5)  # a slow callback: the close waits for it

    fdn.service_registry.watch("*", callback)
    await fdn.service_registry.register("a", "http://a")
    await fdn.service_registry.register("b", "http://b")
    await second_runs.wait()
    with _registry_locked(db_url) as lock:  # the release waits: its end shows
        outer = asyncio.create_task(fdn.close())
        await asyncio.sleep(0.05)
        outer_closes.set()
        await asyncio.sleep(0.3)
        lock()
    assert await asyncio.wait_for(closers[0], 5) == [(None,)]  # released when it returned
    await outer


@contextlib.contextmanager
def _registry_locked(db_url: str) -> Iterator[Callable[[], None]]:
    """Another session holds a write lock on the registry until the yielded call."""
    url = DatabaseURL.parse(db_url)
    if url.backend == "sqlite":
        lite = sqlite3.connect(url.sqlite_path, isolation_level=None)
        lite.execute("BEGIN IMMEDIATE")
        try:
            yield lambda: lite.execute("COMMIT") and None
        finally:
            lite.close()
        return
    with psycopg.connect(url.conninfo) as pg:
        pg.execute("LOCK TABLE foundation_registry IN EXCLUSIVE MODE")
        yield pg.commit


def test_the_cli_line_of_an_exception_that_cannot_say_itself(tmp_path: Path) -> None:
    then = (
        "class Mute(Exception):\n"
        "    def __str__(self):\n"
        "        raise RuntimeError('no')\n"
        "try:\n"
        "    raise Mute()\n"
        "except Mute:\n"
        '    logging.getLogger("foundation.x").exception("callback failed")\n'
    )
    assert _stderr_after_the_cli(tmp_path, then) == [
        "ERROR: callback failed (Mute: <exception str() failed>)"
    ]


# -- a new user's typos ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"poll_interval": 50}, "no such setting (did you mean poll_interval_ms?)"),
        ({"database_url": "sqlite:foo.db"}, "not a database URL: 'sqlite:foo.db'"),
        ({"database_url": "sqlite://foo.db"}, "three slashes (sqlite:///foo.db)"),
    ],
)
def test_a_new_users_typos_are_named(options: dict[str, Any], said: str) -> None:
    """A misspelt keyword said "Extra inputs are not permitted"; ``sqlite:foo.db`` was
    hidden as if it held a password; ``sqlite://foo.db`` was "an in-memory database"."""
    with pytest.raises(ConfigError) as info:
        Foundation(**options)
    assert said in info.value.message


def test_a_short_password_does_not_garble_the_clis_errors(tmp_path: Path) -> None:
    url = f"sqlite://u:p@h/{tmp_path / 'missing.db'}"
    assert "check the path" in fails(url, "not_found", "config", "get", "port").stderr
