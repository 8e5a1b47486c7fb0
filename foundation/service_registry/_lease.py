"""The registry's lease: :class:`_LeaseSide` takes, renews, loses and releases this
node's lease, and recovers what the node held after a loss.

The lease protocol, per instance:

1. ``load`` takes the lease under a new generation (never given before to any instance
   of the node id: ``_first_generation``), but only a lease nobody holds: none, released,
   or lapsed. The lease row names its holder by (node id, generation) alone, so a live
   lease of the node id may be a predecessor that crashed a moment ago or another live
   instance given the same node id. ``load`` waits
   and watches the row: a renewal proves a live holder, and the instance is refused with
   ``config_error`` (one node id per process); an expiry (at most the TTL) frees the
   lease for a restarted process. Taking a live lease instead would kill the other
   instance's, whose recovery would kill this one's, forever.
2. The heartbeat renews it every ``heartbeat_ms`` (default ``ttl / 3``) with ONE UPDATE
   that succeeds only while the lease is still live in the database's view.
3. The node counts its lease valid until ``ttl`` after the monotonic start of its last
   successful renewal, which is never later than the database's expiry. Past that (a
   pause, a database outage) or when a renewal finds the lease gone, it takes a new
   generation (its own lease, or a lapsed one), re-registers the names it held where
   they are still free (a name keeps the end of its own ``ttl``; one past it is not
   written again), and reports each one it lost (``kind="lost"`` to watchers,
   ``foundation.registry.lease_lost``). If another instance holds the node id's lease by
   then, the node reports every name lost and stays in error: ``register`` and ``join``
   raise ``config_error``, the heartbeat retries once per interval and takes the lease
   only once that instance's lapses.
4. A name this node holds that another node removes (``unregister(force=True)``) or
   takes is dropped from what it holds as soon as its cache shows it, and reported lost
   the same way; it is never written again after a lease loss.
"""

from __future__ import annotations

import builtins
import time
from datetime import UTC, datetime
from typing import Any

from foundation.errors import ConfigError
from foundation.service_registry._core import _Held, _Recovery, _RegistryCore, log
from foundation.service_registry._model import INF, RegistryChange, ServiceEntry, _Lease

_LEASE_LOST = ("foundation", "registry", "lease_lost")
_HEARTBEAT_FAILED = ("foundation", "registry", "heartbeat_failed")
# A lease statement that waited longer than the TTL is run again, this many times in all.
_TAKE_ATTEMPTS = 3
# close() waits this long at most for this node's writes in flight (see _count_in).
_CLOSE_WAIT_S = 5.0


class _LeaseSide(_RegistryCore):
    """The lease and its recovery (see the module); no I/O."""

    def _lease_params(self) -> dict[str, Any]:
        """Parameters of take_lease and renew: ``gen`` is this instance's generation
        (``None`` before its first lease: it takes only a lease nobody holds)."""
        params = {"node": self._node, **self._sql.clock(self.options.ttl_ms)}
        params["gen"] = None if self._lease is None else self._lease.generation
        return params

    # -- one node id, one live instance -------------------------------------------------

    def _lease_wait_s(self) -> float:
        """How often ``load`` looks at a lease it waits for."""
        return min(0.05, self.options.ttl_ms / 10_000)

    def _node_in_use(self, generation: int | None, why: str) -> ConfigError:
        return ConfigError(
            f"node id {self._node!r} is in use by another live Foundation instance ({why});"
            " every process needs its own node_id: set a different FOUNDATION_NODE_ID (or"
            " node_id=...) per process, or leave it unset for a unique host:pid:random id",
            context={"node_id": self._node, "generation": generation},
        )

    def _watch_holder(
        self, holder: tuple[Any, ...] | None, seen: tuple[int, Any] | None
    ) -> tuple[int, Any] | None:
        """``load`` found this node id's lease live: the holder as first seen, or raise
        ``config_error`` once it was renewed (or taken again) since: a live instance."""
        if holder is None:
            return seen  # released meanwhile: the next attempt takes it
        mark = (int(holder[0]), holder[2])
        if seen is None:
            log.warning(
                "node id %r: its lease (generation %s) is live; waiting until it expires"
                " (a previous process of this node id that stopped) or is renewed (another"
                " live instance: refused)",
                self._node,
                mark[0],
            )
            return mark
        if mark != seen:
            raise self._node_in_use(mark[0], "its lease was renewed while this one waited")
        return seen

    def _node_taken(self) -> ConfigError:
        """A recovery found this node id's lease live under another generation: another
        instance holds it. Report what hung off this instance's dead generation expired,
        then every name lost; forget them, and stay in error until that lease lapses."""
        self._conflict_retry = time.monotonic() + self.options.heartbeat_ms / 1000
        if self._node_conflict is None:
            gen = None if self._lease is None else self._lease.generation
            self._node_conflict = self._node_in_use(
                gen, "it took this node id's lease while this instance's had lapsed"
            )
            log.error("registry: %s", self._node_conflict.message)
            if self._lease is not None:
                self._notify(self._state.lease_ended(self._lease))
            # The new owner as cached: another node, or the other instance of this node id
            # (another lease generation); None while the cache holds this instance's own.
            lost = {name: self._state.holder_elsewhere(name) for name in self._held}
            self._held.clear()
            self._joined.clear()
            self._reclaim_pending = False
            self._report_loss([], lost)
        return self._node_conflict

    def _conflict_wait(self) -> bool:
        """True while in error (another instance holds the node id) and not yet time to
        try the lease again: the heartbeat then skips the attempt."""
        return self._node_conflict is not None and time.monotonic() < self._conflict_retry

    def _took_lease(self, row: tuple[Any, ...] | None, started: float) -> None:
        assert row is not None
        if self._node_conflict is not None:
            log.warning("registry: node id %r: its lease is this instance's again", self._node)
            self._node_conflict = None
        lease = _Lease(self._node, int(row[0]), self._sql.epoch_seconds(row[1]))
        self._state.install_own(lease)
        self._lease = lease
        self._deadline = started + self.options.ttl_ms / 1000

    def _renewed(self, row: tuple[Any, ...] | None, started: float) -> bool:
        if row is None or self._lease is None:
            return False
        expires = self._sql.epoch_seconds(row[0])
        self._publish(self._state.apply_lease(self._node, self._lease.generation, expires))
        self._deadline = started + self.options.ttl_ms / 1000
        return True

    def _recovering(self) -> None:
        """A recovery begins: the lease is lost here. What this node held is reclaimed
        once it has a new one, unless another instance took the node id meanwhile (all
        was reported lost then). Flagged before the lease turns valid, so that no change
        the feed applies in between reads a held name as lost on its own (the reclaim
        reports them with the kept ones, as one loss)."""
        self._lost_locally()
        if self._lease is not None and self._node_conflict is None:
            if not self._reclaim_pending:
                self._recovery = _Recovery()  # else the unfinished one's outcome carries on
            self._recovery.members_done = False  # written again under each new lease
            self._reclaim_pending = True

    def _closed_locally(self) -> None:
        """``close()``, after the release: this node's names are gone, its local ones too
        (reported ``unregister`` with the released names, before the dispatcher stops)."""
        self._lost_locally()
        self._count_expired(self._state.drop_locals())  # told as dropped, under its lock

    def _lost_locally(self) -> None:
        if self._lease is not None:
            # Our own entries vanish from lookups at once, and are reported expired (a
            # time of death, not 0.0, which would read as "not known yet").
            self._lease.expires = min(self._lease.expires, time.time())
        self._deadline = 0.0

    _NOT_RELEASED = (
        "registry: node %s could not release its lease and names on close (%s); other nodes "
        "see them until the lease runs out"
    )

    def _closing(self) -> dict[str, Any] | None:
        """``close()``: the release's parameters, or None if there is nothing to release
        (no lease, or one that lapsed: the database may have given it away already).
        From here on, the release is this node's own change (``RegistryState.closing``)."""
        lease = self._lease
        if lease is None or time.monotonic() >= self._deadline:
            return None
        self._state.closing(lease)
        return {"node": self._node, "gen": lease.generation, **self._sql.clock()}

    def _released(
        self, names: builtins.list[tuple[Any, ...]], members: builtins.list[tuple[Any, ...]]
    ) -> None:
        """``close()`` released ``names`` ((name, revision) rows) and ``members`` ((group,
        member id) rows): reported to this node's watchers as its own ``unregister`` and
        ``leave`` (``local``), queued before the dispatcher delivers what is left and
        stops. The feed may have applied some of it first: it reports them the same way
        (``RegistryState.closing``), and the cache takes each change once."""
        changes: builtins.list[RegistryChange] = []
        for name, revision in names:
            self._held.pop(name, None)
            changes += self._state.apply_entry(None, name, int(revision), "local")
        for group, member_id in members:
            self._joined.pop((group, member_id), None)
            changes += self._state.apply_member(group, member_id, None, "local")
        self._notify(changes)

    def _reclaim_params(self, name: str, held: _Held, gen: int) -> dict[str, Any]:
        """``reclaim``'s parameters: ``register``'s, with the registration's own end
        (``held.until``) instead of a TTL counted from now."""
        until = (
            None
            if held.until == INF
            else self._sql.codec.ts(datetime.fromtimestamp(held.until, UTC))
        )
        return {
            **self._sql.clock(),
            "name": name,
            "address": held.address_text,
            "metadata": held.metadata_text,
            "node": self._node,
            "gen": gen,
            "held_gen": held.generation,
            "entry_ttl_ms": held.ttl_ms,
            "entry_until": until,
        }

    def _reclaim_due(self, name: str, held: _Held) -> bool:
        """Whether a recovery writes ``name`` again: not once its own TTL has passed (it is
        registered nowhere then; its ``expired`` is the sweep's, once, as for any name):
        forgotten here, neither kept nor lost."""
        if held.until <= time.time():
            self._held.pop(name, None)
            return False
        return True

    def _owner_lease(self, lease_row: tuple[Any, ...] | None, node: str) -> builtins.list[Any]:
        """The lease of a name's new owner, read after its row (``select_lease``): the feed
        may not have brought it yet (this node back from an outage), and an entry whose
        lease has no known expiry is dead to the cache: its ``register`` was told after
        the loss it caused, and ``lookup`` found nobody meanwhile."""
        if lease_row is None:
            return []
        expires = self._sql.epoch_seconds(lease_row[1])
        return self._state.apply_lease(node, int(lease_row[0]), expires)

    def _pending_names(self) -> tuple[builtins.list[str], dict[str, ServiceEntry | None]]:
        """Names held but not (yet) written under the current lease generation (and
        not past their own TTL: those are forgotten), and the held names the cache shows
        removed or owned by another node: lost, never written again (dropped here)."""
        out = []
        gone: dict[str, ServiceEntry | None] = {}
        for name in builtins.list(self._held):
            if self._held_live(name) is None:
                continue
            entry = self._state.cached_entry(name)
            if entry is None or entry.node != self._node:
                if self._held.pop(name, None) is not None:
                    gone[name] = self._state.holder_elsewhere(name)
            elif entry.lease is not self._lease:
                out.append(name)
        return out, gone

    def _losses(self, names: builtins.list[str]) -> builtins.list[RegistryChange]:
        """Of ``names`` (another node's changes reached them), those this node believed it
        held while its lease is valid: dropped, reported (telemetry and ``lost``).

        While the lease is not valid, the recovery judges them (``_pending_names``) and
        reports them with the names it kept, as one lease loss. A name this node is
        writing is judged by the writer (``_settle``): the change may be its own.
        """
        if (
            not names
            or not self._held
            or self._closed  # closing releases the names: its own tombstones are no loss
            or self._reclaim_pending
            or not self._lease_valid()
        ):
            return []
        lost: dict[str, ServiceEntry | None] = {}
        for name in names:
            # Past its own TTL it was registered nowhere: expired then, neither kept nor lost.
            if self._writing_now(name) or self._held_live(name) is None:
                continue
            entry = self._state.cached_entry(name)
            if entry is not None and entry.node == self._node:
                continue
            if self._held.pop(name, None) is not None:
                lost[name] = self._state.holder_elsewhere(name)
        if not lost:
            return []
        self._telemetry_event(
            _LEASE_LOST,
            {"lost": len(lost), "kept": 0},
            {"node": self._node, "lost": sorted(lost), "kept": []},
        )
        return [RegistryChange(name, "lost", owner, "local") for name, owner in lost.items()]

    def _judge_after_write(self, name: str) -> None:
        """After this node's write of ``name``: lost meanwhile to another node's change?"""
        self._notify(self._losses([name]))

    def _recovered(self, deferred: bool) -> _Recovery | None:
        """After a reclaim pass: the recovery's outcome to tell, once no name was left
        to another call (``deferred``); None while one was."""
        if deferred:
            return None
        self._reclaim_pending = False
        recovery, self._recovery = self._recovery, _Recovery()
        return recovery

    def _take_untold(self, recovery: _Recovery) -> dict[str, ServiceEntry | None]:
        """A recovery pass's losses not told yet, told at the end of the pass that found
        them (a name this node registers again before the recovery ends comes after its
        ``lost``), or of the next one if that pass failed; the recovery's ``lease_lost``
        sums them up at its end."""
        untold, recovery.untold = recovery.untold, {}
        return untold

    def _tell_lost(self, lost: dict[str, ServiceEntry | None]) -> None:
        self._notify([RegistryChange(name, "lost", owner, "local") for name, owner in lost.items()])

    def _report_loss(
        self, kept: builtins.list[str], lost: dict[str, ServiceEntry | None], *, told: bool = False
    ) -> None:
        """Tell a recovery's outcome. A recovery that lost names first waits (at most a
        second, ``_feed_settled``) for a feed pass under way: the feed may have put a new
        owner's row in the cache (the recovery then found nothing to tell) and not yet
        queued its register, and a loss told first would precede the change causing it."""
        self.lease_losses += 1
        self._telemetry_event(
            _LEASE_LOST,
            {"lost": len(lost), "kept": len(kept)},
            {"node": self._node, "lost": sorted(lost), "kept": sorted(kept)},
        )
        if not told:  # (a recovery's were, pass by pass: _tell_lost)
            self._notify(
                [RegistryChange(name, "lost", owner, "local") for name, owner in lost.items()]
            )

    def _publish(self, changes: builtins.list[RegistryChange]) -> None:
        displaced = self._state.take_displaced()
        if displaced:
            changes = changes + self._losses(displaced)  # after the change that caused them
        self._notify(changes)
