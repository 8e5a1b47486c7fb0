"""The poller: periodic measurements as telemetry events, thread and asyncio."""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest

from foundation import Foundation
from foundation.errors import ValidationError
from foundation.telemetry import AsyncPoller, Poller, Telemetry
from foundation.telemetry.poller import (
    CIRCUIT_BREAKERS_EVENT,
    EVENT_LOG_EVENT,
    MEMORY_EVENT,
    SUBSCRIPTION_LAG_EVENT,
    event_log,
    measurement,
    open_breakers,
    process_memory,
    read_process_memory,
    subscription_lag,
)

Seen = list[tuple[tuple[str, ...], dict[str, Any], dict[str, Any]]]


@pytest.fixture
def tel() -> Telemetry:
    return Telemetry()


def record(tel: Telemetry, *names: tuple[str, ...]) -> tuple[Seen, threading.Event]:
    seen: Seen = []
    arrived = threading.Event()

    def handler(event: Any, ms: Mapping[str, Any], md: Mapping[str, Any], config: Any) -> None:
        seen.append((event, dict(ms), {k: v for k, v in md.items() if k != "correlation_id"}))
        arrived.set()

    tel.attach("rec", list(names), handler)
    return seen, arrived


def test_process_memory_reads_real_numbers() -> None:
    memory = read_process_memory()
    assert memory["peak_rss"] > 1_000_000
    if sys.platform.startswith("linux"):
        assert memory["rss"] > 1_000_000
        assert memory["vms"] >= memory["rss"]


def test_poll_runs_every_probe_once(tel: Telemetry) -> None:
    seen, _ = record(tel, MEMORY_EVENT, EVENT_LOG_EVENT, SUBSCRIPTION_LAG_EVENT)
    seen_breakers: list[dict[str, Any]] = []
    tel.attach(
        "breakers", CIRCUIT_BREAKERS_EVENT, lambda e, ms, md, c: seen_breakers.append(dict(ms))
    )
    custom: list[int] = []
    poller = Poller(
        tel,
        [
            process_memory(),
            event_log(size=lambda: 120, tail_position=lambda: 119),
            subscription_lag(lambda: {"projector": 3, "mailer": 0}),
            open_breakers(lambda: 2, total=lambda: 5),
            lambda: custom.append(1),  # a callable that emits on its own
        ],
    )
    poller.poll()
    events = [event for event, _, _ in seen]
    assert events == [MEMORY_EVENT, EVENT_LOG_EVENT, SUBSCRIPTION_LAG_EVENT, SUBSCRIPTION_LAG_EVENT]
    assert seen[1][1] == {"size": 120, "tail_position": 119}
    assert seen[2][1:] == ({"lag": 3}, {"subscription": "projector"})
    assert seen[3][1:] == ({"lag": 0}, {"subscription": "mailer"})
    assert seen_breakers == [{"open": 2, "total": 5}]
    assert custom == [1]


def test_none_skips_a_round(tel: Telemetry) -> None:
    seen, _ = record(tel, ("app", "probe"))
    values = iter([None, {"x": 1}])
    poller = Poller(tel, [measurement("app.probe", lambda: next(values), {"tag": "a"})])
    poller.poll()
    poller.poll()
    assert seen == [(("app", "probe"), {"x": 1}, {"tag": "a"})]


def test_a_failing_probe_is_removed_and_logged(
    tel: Telemetry, caplog: pytest.LogCaptureFixture
) -> None:
    seen, _ = record(tel, ("app", "ok"))

    def broken() -> dict[str, int]:
        raise RuntimeError("probe down")

    bad = measurement("app.bad", broken)
    poller = Poller(tel, [bad, measurement("app.ok", lambda: {"v": 1})])
    with caplog.at_level(logging.ERROR, logger="foundation.telemetry.poller"):
        poller.poll()
        poller.poll()
    assert len(seen) == 2  # the healthy probe goes on
    assert bad not in poller.measurements
    assert len(caplog.records) == 1


def test_thread_poller_polls_on_an_interval_and_stops(tel: Telemetry) -> None:
    seen, arrived = record(tel, ("app", "tick"))
    counter = iter(range(1_000_000))
    poller = Poller(tel, [measurement("app.tick", lambda: {"n": next(counter)})], interval_ms=10)
    with poller:
        assert poller.running
        deadline = time.monotonic() + 10
        while len(seen) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert not poller.running
    assert len(seen) >= 3
    after = len(seen)
    arrived.clear()
    assert not arrived.wait(0.1)  # nothing after stop
    assert len(seen) == after
    poller.stop()  # idempotent
    poller.start()  # restartable
    poller.stop()


def test_default_poller_measures_memory(tel: Telemetry) -> None:
    seen, arrived = record(tel, MEMORY_EVENT)
    poller = Poller(tel, interval_ms=timedelta(seconds=60))
    poller.start()
    try:
        assert arrived.wait(5)
    finally:
        poller.stop()
    assert seen[0][1]["peak_rss"] > 0


async def test_async_poller(tel: Telemetry) -> None:
    seen, _ = record(tel, ("app", "tick"))
    poller = AsyncPoller(tel, [measurement("app.tick", lambda: {"n": 1})], interval_ms=5)
    async with poller:
        for _ in range(200):
            if len(seen) >= 3:
                break
            await asyncio.sleep(0.01)
        assert poller.running
    assert not poller.running
    assert len(seen) >= 3
    await poller.stop()


@pytest.mark.parametrize(
    "build",
    [
        lambda tel: Poller(object(), []),
        lambda tel: Poller(tel, [3]),
        lambda tel: Poller(tel, [], interval_ms=0),
        lambda tel: Poller(tel, [], interval_ms=-5),
        lambda tel: Poller(tel, [], interval_ms="5"),
        lambda tel: Poller(tel, [], interval_ms=True),
        lambda tel: event_log(),
        lambda tel: event_log(size=3),
        lambda tel: subscription_lag({}),
        lambda tel: open_breakers(2),
        lambda tel: measurement("app..x", dict),
        lambda tel: measurement("app.x", 3),
    ],
)
def test_bad_arguments(tel: Telemetry, build: Any) -> None:
    with pytest.raises(ValidationError):
        build(tel)


def test_a_foundation_polls_its_own_vital_signs(fdn: Foundation) -> None:
    seen: dict[str, dict[str, int]] = {}
    done = threading.Event()

    def record(name: tuple[str, ...], measurements: Any, *_: Any) -> None:
        seen[".".join(name)] = dict(measurements)
        if len(seen) == 3:
            done.set()

    fdn.events.store({"type": "polled", "data": {}})
    fdn.telemetry.attach(
        "vitals",
        [
            "foundation.poller.memory",
            "foundation.poller.event_log",
            "foundation.poller.circuit_breakers",
        ],
        record,
    )
    with fdn.poller(interval_ms=10):
        assert done.wait(10)
    assert seen["foundation.poller.event_log"] == {"tail_position": 1}
    assert seen["foundation.poller.circuit_breakers"] == {"open": 0, "total": 0}
    assert seen["foundation.poller.memory"]["rss"] > 0
