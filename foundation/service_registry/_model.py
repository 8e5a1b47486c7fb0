"""The registry's values and the checks of what callers give: what a lookup returns
(:class:`ServiceEntry`, :class:`GroupMember`), what a watcher receives
(:class:`RegistryChange`), and the lease generation entries hang off (``_Lease``).

No I/O and no state here (the cache is :mod:`._state`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from foundation._frozen import freeze
from foundation._json import encode_json, normalize_json, same_json
from foundation._text import is_utf8, name_text, shown
from foundation._watch import Watch
from foundation.database.codec import unreadable_json
from foundation.errors import StorageError, ValidationError

__all__ = [
    "GroupMember",
    "RegistryChange",
    "RegistryWatch",
    "ServiceEntry",
    "check_json",
    "check_name",
    "check_new_name",
    "check_ttl",
    "check_where",
    "loaded_json",
]

_time = time.time
_scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
INF = float("inf")
MAX_NAME = 255

ChangeKind = Literal["register", "unregister", "expired", "metadata", "lost", "join", "leave"]


class _Lease:
    """One lease generation of one node, as this process knows it."""

    __slots__ = ("expires", "generation", "node", "released")

    def __init__(self, node: str, generation: int, expires: float) -> None:
        self.node = node
        self.generation = generation
        self.expires = expires  # Unix seconds; 0: dead, inf: a local entry
        # Its row was deleted (the node closed): the node id's next instance may number
        # its lease from 1 again (nothing of this one is left to number from).
        self.released = False

    def __repr__(self) -> str:
        return f"_Lease({self.node!r}, {self.generation}, {self.expires})"


_DEAD = _Lease("", -1, 0.0)
_FOREVER = _Lease("", 0, INF)


@dataclass(frozen=True, slots=True, eq=False)
class ServiceEntry:
    """A registered name: where the service is, who holds it, and its fencing epoch.

    ``expires_at`` is the owner's lease expiry (it moves forward with each heartbeat), or
    the entry's own TTL if that comes first; for a local entry, its TTL's end (``None``
    without one). ``epoch``
    increases on every registration of the name cluster-wide: pass it downstream as a
    fencing token. ``address`` and ``metadata`` are read-only (a dict or list refuses
    changes: the cache shares them; ``copy.deepcopy`` gives a private copy), but for a
    local entry's address, which is the object given.
    """

    name: str
    address: Any
    metadata: Any
    node: str
    registered_at: datetime
    epoch: int
    local: bool = False
    lease: _Lease = field(default=_FOREVER, repr=False)
    until: float = field(default=INF, repr=False)  # the entry's own TTL, Unix seconds
    revision: int = field(default=0, repr=False)

    @property
    def expires_at(self) -> datetime | None:
        end = min(self.lease.expires, self.until)
        return None if end == INF else datetime.fromtimestamp(end, UTC)

    @property
    def alive(self) -> bool:
        return self.lease.expires > _time() and self.until > _time()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ServiceEntry):
            return NotImplemented
        return (
            self.name,
            self.address,
            self.metadata,
            self.node,
            self.epoch,
            self.local,
        ) == (other.name, other.address, other.metadata, other.node, other.epoch, other.local)

    def __hash__(self) -> int:
        return hash((self.name, self.node, self.epoch))


@dataclass(frozen=True, slots=True, eq=False)
class GroupMember:
    """One member of a group (``join``); ``address`` and ``metadata`` are read-only, as
    a :class:`ServiceEntry`'s."""

    group: str
    member_id: str
    address: Any
    metadata: Any
    node: str
    joined_at: datetime
    lease: _Lease = field(default=_FOREVER, repr=False)
    revision: int = field(default=0, repr=False)

    @property
    def expires_at(self) -> datetime | None:
        end = self.lease.expires
        return None if end == INF else datetime.fromtimestamp(end, UTC)

    @property
    def alive(self) -> bool:
        return self.lease.expires > _time()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GroupMember):
            return NotImplemented
        return (self.group, self.member_id, self.address, self.metadata, self.node) == (
            other.group,
            other.member_id,
            other.address,
            other.metadata,
            other.node,
        )

    def __hash__(self) -> int:
        return hash((self.group, self.member_id))


@dataclass(frozen=True)
class RegistryChange:
    """What a watcher receives. For a group member (join, leave, expired) ``name`` is the
    group's name and ``entry`` a :class:`GroupMember`."""

    name: str
    kind: ChangeKind
    entry: ServiceEntry | GroupMember | None
    source: Literal["local", "remote"]


# A watcher of registry changes (shared with config: foundation._watch).
RegistryWatch = Watch[RegistryChange]


# -- validation ---------------------------------------------------------------------------


def check_name(name: Any, what: str = "a registry name") -> str:
    name = name_text(name)
    if not isinstance(name, str):
        raise ValidationError(
            f"{what} must be a string, not {type(name).__name__}",
            context={"name": shown(name), "type": type(name).__name__},
        )
    if not name or not name.strip():
        raise ValidationError(f"{what} must not be empty", context={"name": name})
    if len(name) > MAX_NAME:
        raise ValidationError(
            f"{what} must be at most {MAX_NAME} characters (this one has {len(name)})",
            context={"name": name[:80] + "…", "length": len(name)},
        )
    # Printable excludes lone surrogates: a printable name is also valid UTF-8.
    if not name.isprintable():
        if not is_utf8(name):
            raise ValidationError(
                f"{what} must be valid UTF-8 text (it holds a lone surrogate)",
                context={"name": shown(name)},
            )
        raise ValidationError(
            f"{what} must not contain control characters", context={"name": shown(name)}
        )
    return name


def check_json(value: Any, what: str, name: str, max_bytes: int) -> tuple[Any, str]:
    """(the value as it reads back, read-only: the cache shares it with every caller; its
    JSON text) or a ValidationError."""
    text = encode_json(
        value, what=what, max_bytes=max_bytes, error=ValidationError, context={"name": name}
    )
    if type(value) is dict or type(value) is list:
        # What normalize_json does for a container, with the C scanner alone: json.loads'
        # Python wrapper costs twice the scan of a small metadata dict (register's hot path).
        return freeze(_scan(text, 0)[0]), text
    return freeze(normalize_json(value, text)), text


def check_ttl(ttl: Any, what: str = "ttl") -> int | None:
    """Milliseconds (an int or a finite float > 0, or a positive timedelta), or None."""
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        ms = ttl / timedelta(milliseconds=1)
        if ms <= 0:
            raise ValidationError(f"{what} must be positive", context={"ttl": str(ttl)})
        ttl = max(1, round(ms))  # and at most a year, as below
    if isinstance(ttl, float):
        if not math.isfinite(ttl) or ttl <= 0:
            raise ValidationError(
                f"{what} must be positive and finite, got {ttl}", context={"ttl": shown(ttl)}
            )
        ttl = max(1, round(ttl))  # whole milliseconds, as stored: 1.5 is 2
    if isinstance(ttl, bool) or not isinstance(ttl, int):
        raise ValidationError(
            f"{what} must be milliseconds (a number) or a timedelta, not {type(ttl).__name__}",
            context={"ttl": shown(ttl, 100)},
        )
    if ttl <= 0:
        raise ValidationError(f"{what} must be positive, got {shown(ttl)}", context={"ttl": ttl})
    if ttl > 366 * 86_400_000:
        raise ValidationError(f"{what} must be at most a year", context={"ttl": ttl})
    return ttl


def check_new_name(name: Any, what: str = "a registry name") -> str:
    """A name to register or a group to join: ``check_name``'s rules, and no trailing
    ``*``, which ``watch`` reads as a prefix (a watch could not name it alone)."""
    checked = check_name(name, what)
    if checked.endswith("*"):
        raise ValidationError(
            f"{what} must not end in '*' (watch reads a trailing '*' as a prefix)",
            context={"name": checked[:200]},
        )
    return checked


def check_where(where: Any) -> Callable[[Any], bool] | None:
    if where is None:
        return None
    if callable(where):
        return where  # type: ignore[no-any-return]
    if isinstance(where, Mapping):
        # Metadata keys are text and values JSON: anything else would match nothing.
        wanted, _ = check_json(dict(where), "where", "where", 1 << 20)
        if not isinstance(wanted, dict) or len(wanted) != len(where):
            raise ValidationError(
                "where's keys must be strings (metadata keys are)",
                context={"where": shown(where)},
            )

        # JSON equality, not Python's: true is not 1 and false is not 0 (1 and 1.0 are one
        # number), as the metadata reads back from either database.
        def match(metadata: Any) -> bool:
            return isinstance(metadata, Mapping) and all(
                k in metadata and same_json(metadata[k], v) for k, v in wanted.items()
            )

        return match
    raise ValidationError(
        "where must be a mapping of metadata values or a callable(metadata) -> bool",
        context={"where": shown(where)},
    )


def loaded_json(load_json: Any, value: Any, name: str, table: str) -> Any:
    """A JSON column of the row of ``name`` in ``table``, decoded; ``storage_error`` naming
    them when no reader can load it."""
    try:
        return load_json(value)
    except ValueError as exc:
        raise unreadable_json(f"the row of {name!r}", table, exc, StorageError, name=name) from None


def relinked(old: ServiceEntry | GroupMember | None, new: ServiceEntry | GroupMember) -> bool:
    """A resync's row of the revision cached, whose cached object hangs off a released
    lease: it was read, after the release, as the row of another instance of the node id
    under the same generation number (see ``RegistryState.apply_lease``); it is that one's."""
    return (
        old is not None
        and old.revision == new.revision
        and old.lease.released
        and new.lease is not old.lease
    )
