"""Review 13, core, on SQLite and PostgreSQL: a breaker's probe keeps its claim while it
runs past its lease (a sync function cannot be stopped, an awaited one with no timeout may
run long): no second caller reaches the dependency in half-open meanwhile."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from foundation import AsyncFoundation, Foundation
from foundation.errors import CircuitOpenError

# The probe's lease is timeout + 1 s (1.2 s): the probe runs 2.5 s.
OPTS: dict[str, Any] = {"max_failures": 1, "reset_timeout": 200, "timeout": 200}


def _opened(fdn: Foundation, name: str, scope: str) -> None:
    with pytest.raises(ZeroDivisionError):
        fdn.circuit_breaker.execute(lambda: 1 / 0, name=name, scope=scope, **OPTS)
    assert fdn.circuit_breaker.state(name, scope=scope) == "open"
    time.sleep(0.3)  # past reset_timeout: the next call probes


@pytest.mark.parametrize("scope", ["shared", "local"])
def test_a_sync_probe_past_its_lease_keeps_it(db_url: str, scope: str) -> None:
    with Foundation(db_url) as a, Foundation(db_url) as b:
        second = a if scope == "local" else b  # another node, or another thread of one
        _opened(a, "slow", scope)
        inside: list[str] = []

        def probe() -> str:
            inside.append("probe")
            time.sleep(2.5)
            return "ok"

        outcome: list[Any] = []
        prober = threading.Thread(
            target=lambda: outcome.append(
                _caught(lambda: a.circuit_breaker.execute(probe, name="slow", scope=scope, **OPTS))
            )
        )
        prober.start()
        time.sleep(1.6)  # past the first lease
        with pytest.raises(CircuitOpenError):
            second.circuit_breaker.execute(
                lambda: inside.append("second"), name="slow", scope=scope, **OPTS
            )
        prober.join(10)
        assert inside == ["probe"]
        # it ran past its timeout: a failure, the breaker open again
        assert outcome and outcome[0] == "timeout"
        assert a.circuit_breaker.state("slow", scope=scope) == "open"


def _caught(call: Any) -> Any:
    try:
        return call()
    except Exception as exc:  # the outcome, kept for the assertions
        return getattr(exc, "code", repr(exc))


async def test_async_a_probe_with_no_timeout_keeps_its_lease(db_url: str) -> None:
    opts: dict[str, Any] = {"max_failures": 1, "reset_timeout": 200, "timeout": None}
    async with AsyncFoundation(db_url) as a, AsyncFoundation(db_url) as b:
        with pytest.raises(ZeroDivisionError):
            await a.circuit_breaker.execute(lambda: 1 / 0, name="slow", **opts)
        await asyncio.sleep(0.3)
        inside: list[str] = []

        async def probe() -> str:
            inside.append("probe")
            await asyncio.sleep(2.5)  # past its lease: reset_timeout + 1 s
            return "ok"

        prober = asyncio.create_task(a.circuit_breaker.execute(probe, name="slow", **opts))
        await asyncio.sleep(1.6)

        async def second() -> None:
            inside.append("second")

        with pytest.raises(CircuitOpenError):
            await b.circuit_breaker.execute(second, name="slow", **opts)
        assert await prober == "ok"
        assert inside == ["probe"]
        assert a.circuit_breaker.state("slow") == "closed"


def test_a_statement_of_ones_own_with_a_literal_percent(fdn: Foundation) -> None:
    """No parameters: no placeholder is read (psycopg read ``%'`` as one, and refused)."""
    fdn.config.set("alpha", 1)
    sql = "SELECT key FROM foundation_config WHERE key LIKE 'al%' ORDER BY key"
    assert [tuple(r) for r in fdn.database.fetchall(sql)] == [("alpha",)]
    assert tuple(fdn.database.fetchone("SELECT '100%'") or ()) == ("100%",)


async def test_async_a_statement_of_ones_own_with_a_literal_percent(
    afdn: AsyncFoundation,
) -> None:
    await afdn.config.set("alpha", 1)
    sql = "SELECT key FROM foundation_config WHERE key LIKE 'al%' ORDER BY key"
    assert [tuple(r) for r in await afdn.database.fetchall(sql)] == [("alpha",)]
