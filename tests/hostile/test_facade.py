"""Hostile input to the facade itself: URLs, settings and correlation ids.

A constructor either gives an instance that works (a config write, an event and a name
go in and read back) or raises ``config_error`` (``storage_unavailable`` for a database
that cannot be opened) and leaves nothing behind; no other exception escapes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import foundation
from foundation import AsyncFoundation, Foundation, FoundationError
from tests.hostile.support import (
    HOSTILE,
    Face,
    Tables,
    expect,
    fine_text,
    good_name,
    hostile_any,
    hostile_text,
    option_values,
)

OPEN = {"config_error", "storage_unavailable", "schema_outdated"}
SETTINGS = [
    "node_id",
    "sqlite_synchronous",
    "sqlite_busy_timeout_ms",
    "pool_min_size",
    "pool_max_size",
    "connect_timeout_s",
    "poll_interval_ms",
    "listen_reconnect_max_ms",
    "max_value_bytes",
    "max_key_length",
    "postgres_schema",
    "config_env_prefix",
    "events_tail_size",
    "registry_ttl_ms",
    "registry_heartbeat_ms",
    "rate_limiter_on_storage_error",
    "rate_limiter_fast_commit",
    "migrate",
    "not_a_setting",
]


def _work(fdn: Foundation) -> None:
    """What a constructed instance must be able to do (within its own size limits)."""
    tight = fdn.settings.max_value_bytes < 16 or fdn.settings.max_key_length < 3
    try:
        fdn.config.set("k", {"v": 1})
        assert fdn.config.get("k") == {"v": 1}
        assert fdn.events.store({"type": "t", "data": [1]}).data == [1]
        assert fdn.service_registry.register("svc", "addr").address == "addr"
    except FoundationError as err:
        # a limit set that low refuses even this, and says so
        assert tight and err.code in ("config_error", "event_error", "validation_error"), err


def test_sync_constructor(db_url: str, tables: Tables, tmp_path: Path) -> None:
    outcomes: set[str] = set()

    @HOSTILE
    @given(st.data())
    def check(data: st.DataObject) -> None:
        overrides = data.draw(
            st.dictionaries(
                st.sampled_from(SETTINGS),
                st.one_of(option_values, hostile_text, fine_text, st.booleans()),
                max_size=2,
            )
        )
        overrides.setdefault("poll_interval_ms", 5)
        overrides.setdefault("migrate", "check")
        before = sorted(p.name for p in tmp_path.iterdir())
        fdn = expect(tables, lambda: Foundation(db_url, **overrides), OPEN)
        if isinstance(fdn, FoundationError):
            outcomes.add("refused")
            # A setting out of its range is a config_error. A valid setting the server
            # refuses is not: a schema nobody migrated (postgres_schema). A tiny
            # connect_timeout_s still waits a second for a connection (pool_wait_s).
            assert fdn.code == "config_error" or (
                fdn.code == "schema_outdated" and "postgres_schema" in overrides
            ), (fdn, overrides)
            assert sorted(p.name for p in tmp_path.iterdir()) == before
            return
        outcomes.add("opened")
        try:
            node = fdn.settings.node_id
            assert good_name(node), node  # it goes into every row this node writes
            _work(fdn)
        finally:
            fdn.close()

    check()
    assert outcomes == {"refused", "opened"}


@pytest.mark.parametrize(
    "url",
    [
        None.__class__,
        42,
        b"sqlite:///x.db",
        "",
        "nonsense",
        "mysql://user@host/db",
        "sqlite:///\x00.db",
        "postgresql+psycopg://user@/db?host=/nonexistent-dir",
        "sqlite:///{tmp}/no/such/dir/../../x.db'; DROP TABLE foundation_events; --",
    ],
)
def test_sync_constructor_urls(url: Any, tmp_path: Path) -> None:
    if isinstance(url, str):
        url = url.replace("{tmp}", str(tmp_path))
    try:
        fdn = Foundation(url, poll_interval_ms=5)
    except FoundationError as err:
        assert err.code in OPEN, err
        return
    try:
        _work(fdn)  # a strange but valid SQLite path: it works
    finally:
        fdn.close()


def test_async_constructor(db_url: str, tables: Tables) -> None:
    async def use(created: AsyncFoundation) -> None:
        async with created as fdn:
            await fdn.config.set("k", 1)
            assert fdn.config.get("k") == 1

    @HOSTILE
    @given(st.data())
    def check(data: st.DataObject) -> None:
        overrides = data.draw(
            st.dictionaries(
                st.sampled_from(SETTINGS),
                st.one_of(option_values, hostile_text, st.booleans()),
                max_size=2,
            )
        )
        overrides.setdefault("migrate", "check")
        created = expect(tables, lambda: AsyncFoundation(db_url, **overrides), OPEN)
        if isinstance(created, AsyncFoundation):  # settings are checked; opening may fail
            opened = expect(tables, lambda: asyncio.run(use(created)), OPEN)
            tight = created.settings.max_value_bytes < 16 or created.settings.max_key_length < 3
            assert opened is None or tight or opened.code in OPEN

    check()


def test_correlation_ids(face: Face, tables: Tables) -> None:
    """Every write records the running correlation id: an id the tables cannot store is
    refused when the block is entered, before anything is written."""

    async def block_async(cid: Any) -> tuple[Any, ...]:
        with foundation.correlation(cid) as entered:
            await face.fdn.config.set("traced", 1)
            record = await face.fdn.events.store({"type": "traced"})
            return entered, record, await face.fdn.config.history("traced", 1)

    def block(cid: Any) -> tuple[Any, ...]:
        if face.kind == "async":  # the id must be set where the coroutines run
            return face.run(block_async(cid))
        with foundation.correlation(cid) as entered:
            face.fdn.config.set("traced", 1)
            record = face.fdn.events.store({"type": "traced"})
            return entered, record, face.fdn.config.history("traced", 1)

    @HOSTILE
    @given(cid=st.one_of(hostile_any, fine_text))
    def check(cid: Any) -> None:
        result = expect(tables, lambda: block(cid), {"validation_error"})
        if isinstance(result, FoundationError):
            assert cid is not None and not good_name(cid)
            return
        entered, record, history = result
        assert cid is None or good_name(cid)
        assert record.correlation_id == entered == history[0].correlation_id

    check()


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("sqlite_busy_timeout_ms", 2**70),
        ("connect_timeout_s", float("inf")),
        ("connect_timeout_s", float("nan")),
        ("connect_timeout_s", 1e300),
        ("poll_interval_ms", 2**70),
        ("listen_reconnect_max_ms", 2**70),
        ("registry_ttl_ms", 2**70),
        ("registry_heartbeat_ms", 2**70),
        ("pool_min_size", 2**40),
        ("pool_max_size", 0),
        ("max_value_bytes", 2**70),
        ("events_tail_size", 2**62),
        ("max_key_length", 2**31),
        ("node_id", ""),
        ("node_id", "a\x00b"),
        ("node_id", "\ud800"),
        ("node_id", "x" * 256),
        ("database_url", "sqlite:///a\x00b.db"),
        ("postgres_schema", "public; DROP SCHEMA public"),
        ("sqlite_synchronous", "OFF; DROP TABLE foundation_events"),
    ],
)
def test_extreme_settings_are_refused(setting: str, value: Any, tmp_path: Path) -> None:
    """Each was accepted before and failed later: a thread wait past time_t, a lease expiry
    past BIGINT, a pool whose minimum exceeds its maximum, a node id the VARCHAR(255)
    audit columns cannot hold."""
    overrides = {"database_url": f"sqlite:///{tmp_path / 'x.db'}", setting: value}
    with pytest.raises(FoundationError) as err:
        Foundation(**overrides)
    assert err.value.code == "config_error"
    assert list(tmp_path.iterdir()) == []  # refused before the file was created
