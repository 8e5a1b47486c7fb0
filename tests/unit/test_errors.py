"""The error tree and the correlation context."""

from __future__ import annotations

import asyncio
import pickle  # only to prove errors survive a process boundary (multiprocessing uses it)
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

import foundation
from foundation import errors
from foundation.correlation import current_correlation_id, run_in_context


def test_every_spec_code_has_its_subclass() -> None:
    expected = {
        "config_error": errors.ConfigError,
        "event_error": errors.EventError,
        "concurrency_error": errors.ConcurrencyError,
        "validation_error": errors.ValidationError,
        "not_found": errors.NotFoundError,
        "already_registered": errors.AlreadyRegisteredError,
        "circuit_open": errors.CircuitOpenError,
        "timeout": errors.TimeoutError,
        "rate_limited": errors.RateLimitedError,
        "storage_unavailable": errors.StorageUnavailableError,
        "storage_error": errors.StorageError,
        "schema_outdated": errors.SchemaOutdatedError,
    }
    for code, cls in expected.items():
        assert errors.error_for_code(code) is cls
        assert cls.code == code
        assert issubclass(cls, foundation.FoundationError)
    assert errors.error_for_code("unknown") is foundation.FoundationError


def test_to_dict_is_the_spec_struct_and_picks_up_correlation() -> None:
    with foundation.correlation("abc"):
        err = errors.RateLimitedError("slow down", context={"retry_after": 120})
    assert err.to_dict() == {
        "code": "rate_limited",
        "message": "slow down",
        "correlation_id": "abc",
        "context": {"retry_after": 120},
    }
    assert str(err) == "[rate_limited] slow down"
    assert errors.NotFoundError("x").correlation_id is None


def test_errors_survive_pickling_with_their_fields() -> None:
    err = errors.ConcurrencyError("v", context={"expected": 1, "actual": 2}, correlation_id="c")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is errors.ConcurrencyError
    assert copy.to_dict() == err.to_dict()


def test_correlation_nests_and_resets() -> None:
    assert current_correlation_id() is None
    with foundation.correlation("outer"):
        with foundation.correlation() as generated:
            assert current_correlation_id() == generated != "outer"
        assert current_correlation_id() == "outer"
    assert current_correlation_id() is None


def test_correlation_rejects_bad_ids() -> None:
    with pytest.raises(errors.ValidationError):
        with foundation.correlation(""):
            pass


def test_correlation_is_per_thread_and_carried_on_request() -> None:
    seen: dict[str, str | None] = {}
    with foundation.correlation("main"):
        plain = threading.Thread(target=lambda: seen.update(plain=current_correlation_id()))
        plain.start()
        plain.join()
        with ThreadPoolExecutor(1) as pool:
            seen["carried"] = pool.submit(run_in_context(current_correlation_id)).result()
    assert seen == {"plain": None, "carried": "main"}


async def test_correlation_is_per_task() -> None:
    async def worker(name: str) -> str | None:
        with foundation.correlation(name):
            await asyncio.sleep(0.01)
            return current_correlation_id()

    assert await asyncio.gather(*(worker(f"t{i}") for i in range(20))) == [
        f"t{i}" for i in range(20)
    ]
    with foundation.correlation("parent"):
        assert await asyncio.create_task(asyncio.sleep(0, current_correlation_id())) == "parent"
        assert await asyncio.to_thread(current_correlation_id) == "parent"
