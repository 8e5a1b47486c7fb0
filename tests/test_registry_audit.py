"""The registry's audit views (migration 0011) say with plain SQL what ``lookup`` says."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from foundation import Foundation
from tests.test_events_audit import _run

README = Path(__file__).resolve().parent.parent / "README.md"


def _readme_registry_query() -> str:
    section = README.read_text().split("## For auditors", 1)[1].split("\n## ", 1)[0]
    [query] = [b for b in re.findall(r"```sql\n(.*?)```", section, flags=re.S) if "registry" in b]
    return query.strip().rstrip(";")


def test_each_state_as_lookup_sees_it(db_url: str, backend: str) -> None:
    with (
        Foundation(db_url, migrate="check", registry_ttl_ms=60_000) as a,
        Foundation(db_url, migrate="check", registry_ttl_ms=60_000) as b,
    ):
        reg = a.service_registry
        reg.register("live", "http://a", {"v": 1})
        reg.register("short", "http://a", ttl=50)
        reg.register("gone", "http://a")
        reg.unregister("gone")
        b.service_registry.register("dead", "http://b")
        b.service_registry.join("workers", "http://b/1")
        reg.join("workers", "http://a/1")
        # b's node dies as a killed process does: its lease is no longer renewed. Ended here
        # by setting its expiry in the past (b's heartbeat is a minute away).
        expire = (
            "UPDATE foundation_leases SET expires_at = now() - interval '1 second' "
            "WHERE node_id = %(n)s"
            if backend == "postgresql"
            else "UPDATE foundation_leases SET expires_at = '2000-01-01' WHERE node_id = :n"
        )
        a.database.execute(expire, {"n": b.settings.node_id})
        time.sleep(0.1)  # "short" is past its own TTL
        rows = _run(db_url, backend, _readme_registry_query())
        states = {r[0]: r[1] for r in rows}
        assert states == {
            "live": "live",
            "short": "ttl expired",
            "gone": "unregistered",
            "dead": "lease expired",
        }
        [live] = [r for r in rows if r[0] == "live"]
        assert live[2] == a.settings.node_id and live[3] == 1 and live[5] is not None
        # As a's lookups say (b's death was written behind the caches' back: not compared).
        assert reg.find("live") is not None
        assert reg.find("short") is None and reg.find("gone") is None
        members = _run(
            db_url,
            backend,
            "SELECT member_id, node_id, state FROM foundation_audit_registry_members "
            "ORDER BY node_id",
        )
        by_node: dict[Any, str] = {r[1]: r[2] for r in members}
        assert by_node == {a.settings.node_id: "live", b.settings.node_id: "lease expired"}
