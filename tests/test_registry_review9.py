"""Found in the ninth round of review.

* ``close()`` released the node's cluster names but kept its local entries: ``lookup``,
  ``find`` and ``list`` still gave them after close, no watcher heard of their end, and a
  local ``register`` after close succeeded (a cluster one raised ``storage_unavailable``).
"""

from __future__ import annotations

import pytest

from foundation import FoundationError
from tests.test_registry import node
from tests.test_registry_async import anode
from tests.test_registry_review3 import kinds, watched


def test_close_drops_local_entries_and_reports_them(db_url: str) -> None:
    fdn = node(db_url)
    reg = fdn.service_registry
    seen = watched(fdn, "*")
    reg.register("cache", {"any": object()}, local=True)
    reg.register("cluster", "http://10.0.0.1")
    fdn.close()
    assert reg.find("cache") is None and reg.list() == []
    assert sorted(kinds(seen)) == ["register", "register", "unregister", "unregister"]
    assert [c.source for c in seen if c.name == "cache"] == ["local", "local"]
    with pytest.raises(FoundationError) as err:
        reg.register("late", object(), local=True)
    assert err.value.code == "storage_unavailable" and err.value.context["name"] == "late"
    assert reg.find("late") is None


async def test_close_drops_local_entries_and_reports_them_async(db_url: str) -> None:
    fdn = anode(db_url)
    await fdn.open()
    reg = fdn.service_registry
    seen = watched(fdn, "*")
    await reg.register("cache", object(), local=True, ttl=60_000)
    await fdn.close()
    assert reg.find("cache") is None and reg.list() == []
    assert kinds(seen, "cache") == ["register", "unregister"]
    with pytest.raises(FoundationError) as err:
        await reg.register("late", object(), local=True)
    assert err.value.code == "storage_unavailable"
    with pytest.raises(FoundationError) as err:
        await reg.update_metadata("cache", {"v": 2})
    assert err.value.code in {"storage_unavailable", "not_found"}
