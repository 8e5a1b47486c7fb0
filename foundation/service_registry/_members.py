"""The group members in the registry's cache (:class:`_MemberCache`, a part of
:class:`~._state.RegistryState`): who is in which group, as the tables say, and the changes
each join, leave or expiry makes for watchers."""

from __future__ import annotations

import builtins
import itertools
import threading
import time
from collections.abc import Iterable
from typing import Any

from foundation._frozen import freeze
from foundation.service_registry._model import (
    _DEAD,
    GroupMember,
    RegistryChange,
    ServiceEntry,
    _Lease,
    loaded_json,
    relinked,
)

_time = time.time


def _by_member(change: RegistryChange) -> tuple[str, str]:
    member = change.entry
    return change.name, member.member_id if isinstance(member, GroupMember) else ""


def _joined_first(run: builtins.list[RegistryChange]) -> tuple[int, float]:
    """A member's changes: by the time of a join, a leave after them all."""
    last = run[-1]
    if last.kind == "join" and isinstance(last.entry, GroupMember):
        return 0, last.entry.joined_at.timestamp()
    return 1, 0.0


class _MemberCache:
    """Mixed into :class:`~._state.RegistryState`, which provides the lock, the leases and
    the bookkeeping of a resync."""

    node: str
    refusal: Any
    _lock: threading.RLock
    _seq: int
    _touched: dict[Any, int]
    _resyncing: bool
    _members: dict[str, dict[str, GroupMember]]
    _reported_members: dict[tuple[str, str], tuple[GroupMember, float]]
    _members_gone: dict[tuple[str, str], tuple[int, float]]
    _member_read: tuple[str, str] | None
    _member_read_overtaken: bool

    # Provided by the state.
    def _refuse(self) -> None:
        raise NotImplementedError

    def lease_for(self, node: str, generation: int) -> _Lease:
        raise NotImplementedError

    def _removal_source(self, old: ServiceEntry | GroupMember | None, source: str) -> Any:
        raise NotImplementedError

    def _source_of(self, node: str, lease: _Lease) -> Any:
        raise NotImplementedError

    def _own(self, node: str, lease: _Lease) -> bool:
        raise NotImplementedError

    # -- reads ------------------------------------------------------------------------

    def members(self, group: str) -> builtins.list[GroupMember]:
        if self.refusal is not None:
            self._refuse()
        now = _time()
        # A copy: joins and leaves of other threads change the group's dict meanwhile.
        members = builtins.list(self._members.get(group, {}).values())
        found = [m for m in members if m.lease.expires > now]
        found.sort(key=lambda m: (m.joined_at, m.member_id))
        return found

    def groups(self, prefix: str | None) -> builtins.list[str]:
        if self.refusal is not None:
            self._refuse()
        now = _time()
        found = [
            group
            for group, members in builtins.list(self._members.items())
            if (prefix is None or group.startswith(prefix))
            and any(m.lease.expires > now for m in builtins.list(members.values()))
        ]
        found.sort()
        return found

    # -- changes ----------------------------------------------------------------------

    def _expired_member(self, member: GroupMember) -> builtins.list[RegistryChange]:
        """As :meth:`_expired_entry`, for a group member."""
        death = member.lease.expires
        if death <= 0.0:
            return []
        key = (member.group, member.member_id)
        seen = self._reported_members.get(key)
        if seen is not None and seen[0] is member and death <= seen[1]:
            return []
        self._reported_members[key] = (member, death)
        return [
            RegistryChange(
                member.group, "expired", member, self._source_of(member.node, member.lease)
            )
        ]

    def replace_members_only(
        self, members: Iterable[GroupMember], mark: int
    ) -> builtins.list[RegistryChange]:
        """A poll that found only the members changed: they become exactly the table
        (reported as :meth:`replace_members` says)."""
        with self._lock:
            changes = self.replace_members(members, mark)
            self._resyncing = False
            self._touched.clear()
        return changes

    def make_member(self, row: tuple[Any, ...], load_json: Any, load_ts: Any) -> GroupMember:
        group, member_id, address, metadata, node, gen, revision, joined_at = row
        return GroupMember(
            group=group,
            member_id=member_id,
            address=freeze(loaded_json(load_json, address, group, "foundation_registry_members")),
            metadata=freeze(loaded_json(load_json, metadata, group, "foundation_registry_members")),
            node=node,
            joined_at=load_ts(joined_at),
            lease=self.lease_for(node, int(gen)),
            revision=int(revision),
        )

    def apply_member(
        self, group: str, member_id: str, member: GroupMember | None, source: str
    ) -> builtins.list[RegistryChange]:
        with self._lock:
            self._seq += 1
            if self._resyncing:
                self._touched[(group, member_id)] = self._seq
            if source != "remote" and self._member_read == (group, member_id):
                self._member_read_overtaken = True
            table = self._members.setdefault(group, {})
            old = table.get(member_id)
            now = _time()
            old_live = old is not None and old.lease.expires > now
            src: Any = source if member is not None else self._removal_source(old, source)
            owner = old if member is None else member
            if owner is not None and self._own(owner.node, owner.lease):
                # This instance's own join or leave, which the feed may read before the
                # call that wrote it has applied it here.
                src = "local"
            if member is None:
                table.pop(member_id, None)
                if not table:
                    self._members.pop(group, None)
                if old is not None:
                    self._member_gone((group, member_id), old.revision)
                removed: builtins.list[RegistryChange] = []
                if old is not None and old_live:
                    removed = [RegistryChange(group, "leave", old, src)]
                elif old is not None:
                    removed = self._expired_member(old)  # pruned before the sweep saw it die
                # Forgotten only now: the member's death may have been reported already.
                self._reported_members.pop((group, member_id), None)
                return removed
            if old is not None and old.revision >= member.revision and not relinked(old, member):
                return []
            gone = self._members_gone.get((group, member_id))
            if gone is not None:
                if gone[0] >= member.revision:
                    return []  # read before its removal
                del self._members_gone[(group, member_id)]
            table[member_id] = member
            changes = [] if old is None or old_live else self._expired_member(old)
            death = member.lease.expires
            if 0.0 < death <= now or member.lease is _DEAD:
                self._reported_members[(group, member_id)] = (member, death)
                if old_live:
                    changes.append(RegistryChange(group, "leave", old, src))
                return changes
            self._reported_members.pop((group, member_id), None)
            if old_live and old is not None and old.lease is member.lease:
                if old.address != member.address or old.metadata != member.metadata:
                    changes.append(RegistryChange(group, "join", member, src))  # joined again
                return changes
            changes.append(RegistryChange(group, "join", member, src))
            return changes

    def reading_member(self, group: str, member_id: str) -> None:
        """The feed is about to read a member's row (see ``read_member``)."""
        with self._lock:
            self._member_read = (group, member_id)
            self._member_read_overtaken = False

    def read_member(
        self, group: str, member_id: str, member: GroupMember | None
    ) -> builtins.list[RegistryChange] | None:
        """Apply the row the feed read since ``reading_member``; None if this node's own
        join or leave of that member was applied meanwhile: the read may predate it, and
        a read that found no row (a leave before a join) carries no revision to tell. The
        feed then reads the row anew."""
        with self._lock:
            overtaken = self._member_read_overtaken
            self._member_read = None
            if overtaken:
                return None
            return self.apply_member(group, member_id, member, "remote")

    def _member_gone(self, key: tuple[str, str], revision: int) -> None:
        # Under the lock. Kept for minutes: a read is applied within a feed pass.
        now = time.monotonic()
        gone = self._members_gone
        if len(gone) >= 4096:
            for stale in [k for k, (_, at) in gone.items() if now - at > 600.0]:
                del gone[stale]
        gone[key] = (max(revision, gone.get(key, (0, 0.0))[0]), now)

    def replace_members(
        self, members: Iterable[GroupMember], mark: int
    ) -> builtins.list[RegistryChange]:
        """The members become exactly ``members``. Reported in the order the joins
        happened (their ``joined_at``), then the members that left, by group and member
        id: a deleted row says nothing of when it went. Each member's own changes keep
        their order."""
        changes: builtins.list[RegistryChange] = []
        fresh: dict[tuple[str, str], GroupMember] = {(m.group, m.member_id): m for m in members}
        for (group, member_id), member in fresh.items():
            if self._touched.get((group, member_id), 0) > mark:
                continue  # this node's own join or leave since the read began is newer
            changes += self.apply_member(group, member_id, member, "remote")
        for group, table in list(self._members.items()):
            for member_id in list(table):
                if (group, member_id) not in fresh and self._touched.get(
                    (group, member_id), 0
                ) <= mark:
                    changes += self.apply_member(group, member_id, None, "remote")
        changes.sort(key=_by_member)  # each member's changes together, in their order
        runs = [list(run) for _, run in itertools.groupby(changes, key=_by_member)]
        runs.sort(key=_joined_first)  # stable: the leaves stay in member id order
        return [change for run in runs for change in run]
