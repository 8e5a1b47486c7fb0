"""Service registry: cluster-wide names with leases, O(1) lookups, groups and watches.

``foundation.service_registry.register("auth", "http://10.0.0.5:8000", {"version": "1"})``
holds a name for as long as this process's lease lives; ``lookup("auth")`` answers from
an in-process copy kept fresh by the change feed. The module-level functions act on the
default instance (see :mod:`foundation`); every :class:`~foundation.Foundation` has the
same methods on ``fdn.service_registry``.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

from foundation.service_registry._aio import AsyncServiceRegistry
from foundation.service_registry._base import RegistryOptions
from foundation.service_registry._model import (
    GroupMember,
    RegistryChange,
    RegistryWatch,
    ServiceEntry,
)
from foundation.service_registry._service import ServiceRegistry
from foundation.service_registry._store import RegistrySQL

__all__ = [
    "AsyncServiceRegistry",
    "GroupMember",
    "RegistryChange",
    "RegistryOptions",
    "RegistrySQL",
    "RegistryWatch",
    "ServiceEntry",
    "ServiceRegistry",
    "find",
    "groups",
    "join",
    "leave",
    "list",
    "lookup",
    "members",
    "register",
    "unregister",
    "update_metadata",
    "watch",
]


def _registry() -> ServiceRegistry:
    from foundation._default import instance

    return instance().service_registry


def register(
    name: Any, address: Any, metadata: Any = None, ttl: Any = None, *, local: bool = False
) -> ServiceEntry:
    """Hold ``name`` cluster-wide (``already_registered`` if a live owner has it)."""
    return _registry().register(name, address, metadata, ttl, local=local)


def lookup(name: Any) -> ServiceEntry:
    """The live entry for ``name`` (from the in-process cache), or raise ``not_found``."""
    return _registry().lookup(name)


def find(name: Any) -> ServiceEntry | None:
    """The live entry for ``name``, or ``None``."""
    return _registry().find(name)


def unregister(name: Any, force: bool = False) -> None:
    """Release ``name`` (only its owner may, unless ``force=True``)."""
    _registry().unregister(name, force)


def update_metadata(name: Any, metadata: Any) -> ServiceEntry:
    """Replace the metadata of a name this node holds."""
    return _registry().update_metadata(name, metadata)


def list(prefix: str | None = None, where: Any = None) -> builtins.list[ServiceEntry]:
    """Live entries, by name, optionally by prefix and metadata."""
    return _registry().list(prefix, where)


def join(group: Any, address: Any, metadata: Any = None, *, member_id: Any = None) -> GroupMember:
    """Add this node as a member of ``group``."""
    return _registry().join(group, address, metadata, member_id=member_id)


def leave(group: Any, member_id: Any = None) -> None:
    """Remove this node's member(s) of ``group``."""
    _registry().leave(group, member_id)


def groups(prefix: str | None = None) -> builtins.list[str]:
    """The groups with a live member, by name."""
    return _registry().groups(prefix)


def members(group: Any) -> builtins.list[GroupMember]:
    """The live members of ``group``."""
    return _registry().members(group)


def watch(name_or_prefix: Any, callback: Callable[[RegistryChange], Any]) -> RegistryWatch:
    """Call ``callback(change)`` on changes of a name or prefix (``"svc.*"``); another
    node's changes arrive coalesced to the latest state (see ``ServiceRegistry.watch``)."""
    return _registry().watch(name_or_prefix, callback)
