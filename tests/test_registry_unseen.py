"""register of a name whose row this node's cache has not seen yet (sync and async, SQLite
and PostgreSQL).

On SQLite, register first tries a plain insert for a name new to the cache, and falls
back to the takeover statement when a row is there after all (written by another node
since the last poll). Either way the outcome is the database's: a dead owner's row is
taken over with the next epoch, a live owner's is refused, naming it. The feed polls
once a day here, so the rows below stay unseen until register meets them.

Also: ``watch`` on a closed instance is refused, as every write is (it would never call).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from foundation import AlreadyRegisteredError, AsyncFoundation, Foundation, StorageUnavailableError
from foundation.database.codec import codec_for

DAY_MS = 86_400_000

TOMBSTONE = """
INSERT INTO foundation_registry (name, address, metadata, node_id, lease_generation, epoch,
                                 revision, ttl_ms, expires_at, registered_at, updated_at)
VALUES (:name, NULL, NULL, NULL, NULL, 3, 5, NULL, NULL, :at, :at)
"""
LEASE = """
INSERT INTO foundation_leases (node_id, generation, ttl_ms, expires_at, renewed_at,
                               started_at)
VALUES ('other-node', 1, 3600000, :until, :at, :at)
"""
OWNED = """
INSERT INTO foundation_registry (name, address, metadata, node_id, lease_generation, epoch,
                                 revision, ttl_ms, expires_at, registered_at, updated_at)
VALUES (:name, '"http://other:1"', '{}', 'other-node', 1, 7, 9, NULL, NULL, :at, :at)
"""


def _times(url: str) -> dict[str, Any]:
    codec = codec_for("sqlite" if url.startswith("sqlite") else "postgresql")
    now = datetime.now(UTC)
    return {"at": codec.ts(now), "until": codec.ts(now + timedelta(hours=1))}


def _unseen_rows(url: str) -> list[tuple[str, Any]]:
    """The statements (in the driver's parameter style) that write the rows."""
    t = _times(url)
    rows = [
        (TOMBSTONE, {"name": "svc.gone", "at": t["at"]}),
        (LEASE, t),
        (OWNED, {"name": "svc.held", "at": t["at"]}),
    ]
    if url.startswith("sqlite"):
        return rows
    return [(re.sub(r":(name|at|until)\b", r"%(\1)s", sql), params) for sql, params in rows]


def test_register_meets_rows_its_cache_has_not_seen(db_url: str) -> None:
    with Foundation(db_url, migrate="skip", poll_interval_ms=DAY_MS) as fdn:
        reg = fdn.service_registry
        for sql, params in _unseen_rows(db_url):
            fdn.database.execute(sql, params)

        taken = reg.register("svc.gone", "http://me:1")
        assert (taken.epoch, taken.node) == (4, reg.node)
        assert reg.lookup("svc.gone") == taken
        with pytest.raises(AlreadyRegisteredError) as refused:
            reg.register("svc.held", "http://me:2")
        assert refused.value.context["owner"] == "other-node"
        fresh = reg.register("svc.new", "http://me:3")
        assert fresh.epoch == 1

        rows = fdn.database.fetchall(
            "SELECT name, node_id, epoch, revision FROM foundation_registry ORDER BY name"
        )
    assert [tuple(r) for r in rows] == [
        ("svc.gone", taken.node, 4, 6),
        ("svc.held", "other-node", 7, 9),
        ("svc.new", fresh.node, 1, 1),
    ]


async def test_async_register_meets_rows_its_cache_has_not_seen(db_url: str) -> None:
    async with AsyncFoundation(db_url, migrate="skip", poll_interval_ms=DAY_MS) as fdn:
        reg = fdn.service_registry
        for sql, params in _unseen_rows(db_url):
            await fdn.database.execute(sql, params)

        taken = await reg.register("svc.gone", "http://me:1")
        assert (taken.epoch, taken.node) == (4, reg.node)
        with pytest.raises(AlreadyRegisteredError) as refused:
            await reg.register("svc.held", "http://me:2")
        assert refused.value.context["owner"] == "other-node"
        assert (await reg.register("svc.new", "http://me:3")).epoch == 1
        rows = await fdn.database.fetchall(
            "SELECT name, epoch, revision FROM foundation_registry ORDER BY name"
        )
    assert [tuple(r) for r in rows] == [("svc.gone", 4, 6), ("svc.held", 7, 9), ("svc.new", 1, 1)]


def test_watch_after_close_is_refused(db_url: str) -> None:
    fdn = Foundation(db_url, migrate="skip")
    fdn.close()
    with pytest.raises(StorageUnavailableError, match="closed"):
        fdn.service_registry.watch("svc.*", print)


async def test_async_watch_after_close_is_refused(db_url: str) -> None:
    fdn = AsyncFoundation(db_url, migrate="skip")
    await fdn.open()
    await fdn.close()
    with pytest.raises(StorageUnavailableError, match="closed"):
        fdn.service_registry.watch("svc.*", print)
