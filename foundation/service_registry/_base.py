"""What the registry's two faces share, on top of the core, the lease and the writes
(:mod:`._core`, :mod:`._lease`, :mod:`._writes`): :class:`_RegistryBase` adds this
process's local names and group membership. The faces,
:class:`~._service.ServiceRegistry` (sync) and :class:`~._aio.AsyncServiceRegistry`,
differ only in how they run statements and in their heartbeat."""

from __future__ import annotations

import builtins
import uuid
from datetime import UTC, datetime
from typing import Any

from foundation._json import same_json
from foundation.database.errors import never_sent
from foundation.errors import AlreadyRegisteredError, FoundationError, NotFoundError
from foundation.service_registry._core import RegistryOptions, _Held
from foundation.service_registry._model import (
    INF,
    GroupMember,
    RegistryChange,
    ServiceEntry,
    check_json,
    check_name,
    check_new_name,
    check_ttl,
)
from foundation.service_registry._writes import _WriteSide

__all__ = ["RegistryOptions"]


class _RegistryBase(_WriteSide):
    """Local names and groups; no I/O."""

    def _check_local_free(self, name: str) -> None:
        local = self._state.local_entry(name)
        if local is not None:
            raise self._refused_conflict(
                f"{name!r} is registered locally in this process",
                {"name": name, "owner": self._node, "local": True},
            )

    def _register_local(self, name: Any, value: Any, metadata: Any, ttl: Any) -> ServiceEntry:
        """A local entry: any object as its address, JSON metadata, an optional TTL.

        One name, one holder as this node sees it: a name this node's cache shows held
        cluster-wide is refused, as a cluster ``register`` of a local name is.
        """
        name = check_new_name(name)
        meta, _ = check_json(
            {} if metadata is None else metadata,
            f"the metadata of {name!r}",
            name,
            self._max_bytes,
        )
        ttl_ms = check_ttl(ttl)
        self._check_local_free(name)
        owner = self._state.live_entry(name)
        if owner is not None:
            raise self._held_by(name, owner)
        now = datetime.now(UTC)
        entry = ServiceEntry(
            name=name,
            address=value,
            metadata=meta,
            node=self._node,
            registered_at=now,
            epoch=0,
            local=True,
            until=INF if ttl_ms is None else now.timestamp() + ttl_ms / 1000,
        )
        if not self._state.add_local(entry, "register"):
            raise self._closed_error({"name": name, "local": True})
        return entry

    def _update_local(self, local: ServiceEntry, metadata: Any) -> ServiceEntry:
        name = local.name
        meta, _ = check_json(
            {} if metadata is None else metadata,
            f"the metadata of {name!r}",
            name,
            self._max_bytes,
        )
        entry = ServiceEntry(
            name,
            local.address,
            meta,
            local.node,
            local.registered_at,
            0,
            local=True,
            until=local.until,
        )
        if not self._state.add_local(entry, "metadata"):
            raise self._closed_error({"name": name, "local": True})
        return entry

    def _unregister_local(self, name: str) -> bool:
        entry = self._state.remove_local(name)
        if entry is None:
            return False
        # Then the cluster entry the local one hid, if any: what lookup returns now.
        self._notify(
            [RegistryChange(name, "unregister", entry, "local"), *self._state.unshadowed(name)]
        )
        return True

    def _join_params(self, group: str, member_id: str, held: _Held, gen: int) -> dict[str, Any]:
        return {
            "group": group,
            "member": member_id,
            "address": held.address_text,
            "metadata": held.metadata_text,
            "node": self._node,
            "gen": gen,
            **self._sql.clock(),
        }

    def _leave_params(self, group: str, member_id: str) -> dict[str, Any]:
        """``leave``'s parameters: a row of this instance's lease generation or a dead
        one of this node id, never a live one of another instance (its node id taken
        while this one stood still: that instance joined the same member id)."""
        gen = 0 if self._lease is None else self._lease.generation
        params = {"group": group, "member": member_id, "node": self._node, "gen": gen}
        return {**params, **self._sql.clock()}

    def _new_member_id(self, member_id: Any) -> tuple[str, bool]:
        """``join``'s member id, and whether it was generated here (no caller knows it)."""
        if member_id is None:
            return uuid.uuid4().hex, True
        return check_name(member_id, "a member id"), False

    # A join whose reply was lost (the connection cut after its commit) left a member of
    # this node that the node does not know: members() lists it, leave() cannot remove
    # it, and a retry without member_id joins a second one. Its row is read again at
    # once and adopted when it holds this call's values under the current lease. When
    # that read fails too, a member of a generated id (no retry can name it) waits in
    # doubt for the heartbeat, which removes it (the failed call said nothing was
    # written); one of the caller's own id is the caller's: a retry joins it again.

    def _judge_lost_join(
        self,
        key: tuple[str, str],
        held: _Held,
        gen: int,
        row: tuple[Any, ...] | None,
        generated: bool,
    ) -> GroupMember | None:
        """A join that failed on the connection, and its row as read after: the member
        if the write landed with these values."""
        load = self._sql.codec.load_json
        if (
            row is not None
            and self._under_lease(row[4], row[5], gen)
            and same_json(load(row[2]), held.address)
            and same_json(load(row[3]), held.metadata)
        ):
            self._members_in_doubt.discard(key)
            return self._joined_row(row, held)
        if generated and row is not None and row[4] == self._node:
            self._members_in_doubt.add(key)
        return None

    def _join_result(
        self, group: str, member_id: str, held: _Held, row: tuple[Any, ...] | None
    ) -> GroupMember:
        """What ``join``'s statement returned: the member, or None when another live node
        holds that member id."""
        if row is None:
            raise AlreadyRegisteredError(
                f"member {member_id!r} of group {group!r} belongs to another live node",
                context={"group": group, "member_id": member_id},
            )
        return self._joined_row(row, held)

    def _joined_row(self, row: tuple[Any, ...], held: _Held) -> GroupMember:
        member = self._member(row)
        self._members_in_doubt.discard((member.group, member.member_id))
        self._joined[(member.group, member.member_id)] = held
        self._notify(self._state.apply_member(member.group, member.member_id, member, "local"))
        return member

    def _leave_targets(self, group: Any, member_id: Any) -> tuple[str, builtins.list[str]]:
        group = check_name(group, "a group name")
        if member_id is None:  # its members, those a lost leave left in doubt too
            mine = [*self._joined, *self._members_in_doubt]
            ids = builtins.list(dict.fromkeys(m for (g, m) in mine if g == group))
        else:
            ids = [check_name(member_id, "a member id")]
        if self._closed:
            raise self._closed_error({"group": group})
        wanted = self._joined.keys() | self._members_in_doubt
        if not ids or any((group, m) not in wanted for m in ids):
            raise NotFoundError(
                f"this node is not a member of group {group!r}"
                + ("" if member_id is None else f" as {member_id!r}"),
                context={"group": group, "member_id": member_id},
            )
        return group, ids

    def _left(self, group: str, member_id: str) -> None:
        self._joined.pop((group, member_id), None)
        self._members_in_doubt.discard((group, member_id))
        self._notify(self._state.apply_member(group, member_id, None, "local"))

    def _leave_in_doubt(self, exc: FoundationError, group: str, member_id: str) -> None:
        """A leave that failed on the connection (its reply lost after the commit, maybe):
        the member is no longer this node's to rejoin after a lease recovery, and the
        heartbeat removes it (the leave the caller asked for, done); a retry may too.
        One never sent (no connection could be had) left nothing in doubt: still joined."""
        if never_sent(exc):
            return
        pid = self._cut_backend(exc)
        if pid is not None:
            self._cut_backends.add(pid)
        self._joined.pop((group, member_id), None)
        self._members_in_doubt.add((group, member_id))
