"""The registry's writes, between the faces' statements and the cache: their parameters,
and what a register, update_metadata or unregister wrote, or may have written when its
reply was lost (:class:`_WriteSide`)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from foundation._json import same_json
from foundation.errors import FoundationError, StorageUnavailableError
from foundation.service_registry._core import _Held
from foundation.service_registry._lease import _LeaseSide
from foundation.service_registry._model import ServiceEntry, _Lease

_REGISTER = ("foundation", "registry", "register")
_UNREGISTER = ("foundation", "registry", "unregister")

# What register_new "returns" for the row it wrote (epoch, revision, registered_at): a new
# row's first epoch and revision; registered_at is the ``now`` the statement carried.
NEW_ROW = (1, 1, None)


class _WriteSide(_LeaseSide):
    """The writes' parameters and outcomes; no I/O."""

    def _too_late(self, name: str, late: int, call: str = "register") -> int:
        """A register (or update_metadata) written again: its lease changed meanwhile (a
        recovery, this call's or the heartbeat's), or ran out while its statement waited.
        Three times in a row is a database slower than the lease: ``storage_unavailable``
        (the heartbeat settles what was written)."""
        if late >= 2:
            raise StorageUnavailableError(
                f"{call} of {name!r}: the database answered after this node's lease "
                f"({self.options.ttl_ms} ms) had run out, three times",
                context={"name": name, "ttl_ms": self.options.ttl_ms},
            )
        return late + 1

    def _register_params(
        self, name: str, held: _Held, gen: int
    ) -> tuple[dict[str, Any] | tuple[Any, ...], datetime | None]:
        return self._sql.register_params(
            name, held.address_text, held.metadata_text, self._node, gen, held.ttl_ms
        )

    def _update_params(self, name: str, text: str) -> tuple[_Held, dict[str, Any]]:
        """``update_metadata``'s row check and parameters, under the name's write lock
        (checked again there: another write of the name may have run first)."""
        held = self._held_live(name)
        if held is None or self._lease is None:
            raise self._not_held(name)
        params = {"name": name, "node": self._node, "gen": self._lease.generation}
        return held, {**params, "metadata": text, **self._sql.clock()}

    def _updated_since(self, name: str, lease: _Lease, meta: Any) -> ServiceEntry | None:
        """This node's live entry of ``name`` under ``lease`` holding ``meta``: an
        update_metadata answered after the lease lapsed, once the recovery wrote the name
        again with that metadata (nothing to write a second time)."""
        entry = self._state.live_entry(name)
        if entry is None or entry.node != self._node or entry.lease is not lease:
            return None
        return entry if same_json(entry.metadata, meta) else None

    def _metadata_updated(
        self, name: str, held: _Held, meta: Any, text: str, row: tuple[Any, ...] | None
    ) -> ServiceEntry:
        """Install what ``update_metadata`` wrote (``row`` None: not this node's any more)."""
        if row is None:
            self._held_live(name)  # forgets it if its own TTL has passed
            raise self._not_held(name)
        self._metadata_in_doubt.pop(name, None)
        self._held[name] = held.with_metadata(meta, text)
        entry = self._entry(row)
        self._notify(self._state.apply_entry(entry, name, entry.revision, "local"))
        return entry

    def _fresh_params(
        self, name: str, params: dict[str, Any] | tuple[Any, ...]
    ) -> tuple[Any, ...] | None:
        """``register_new``'s parameters when ``name`` is new to this node's cache (see
        :meth:`RegistrySQL.fresh_params`), else None."""
        if self._state.revision(name):
            return None
        return self._sql.fresh_params(params)

    def _registered(
        self,
        name: str,
        held: _Held,
        gen: int,
        row: tuple[Any, ...],
        now: datetime | None,
        started: int,
        *,
        reclaimed: bool = False,
    ) -> ServiceEntry:
        """Install what ``register`` wrote: ``row`` is (epoch, revision, registered_at).

        The entry is built from the values this node sent (already normalised to what
        they read back as; JSONB may order an object's keys otherwise, which equality
        ignores), not decoded again from the row; ``now`` is the SQLite timestamp the
        statement carried (PostgreSQL returns its own ``now()``). ``reclaimed``: written
        again by a recovery (``reclaim``), which kept the registration's own end.
        """
        self._state.releasing(name, done=True)
        epoch, revision, registered_at = row
        registered = now if now is not None else self._sql.codec.load_ts(registered_at)
        ttl = held.ttl_ms
        if ttl is not None and not reclaimed:
            held = dataclasses.replace(held, until=registered.timestamp() + ttl / 1000)
        held = dataclasses.replace(held, generation=gen)
        entry = ServiceEntry(
            name,
            held.address,
            held.metadata,
            self._node,
            registered,
            int(epoch),
            lease=self._state.lease_for(self._node, gen),
            until=held.until,
            revision=int(revision),
        )
        self._held[name] = held
        # Told first: an ``expired`` of the registration this one replaces, if unseen.
        self._notify(self._state.apply_entry(entry, name, entry.revision, "local"))
        self._telemetry_event(
            _REGISTER,
            {"duration": time.perf_counter_ns() - started},
            {"node": self._node, "name": name, "epoch": entry.epoch},
        )
        return entry

    # -- a register whose reply was lost ----------------------------------------------
    #
    # On PostgreSQL a connection cut after the commit and before the reply raises
    # storage_unavailable for a register that did write: the row is this node's, under
    # its current lease, while this node does not hold it (nor can it unregister it, and
    # a retry found it "already registered" by itself). Such a row is an orphan. A retry
    # with the same values adopts it (the register succeeded after all); one with other
    # values releases it and writes anew; left alone, the heartbeat releases it, as the
    # failed call said nothing was written.

    def _orphan(self, name: str, gen: int, owner: tuple[Any, ...] | None) -> bool:
        """Whether ``owner`` (the name's row) is this node's, under lease generation
        ``gen``, and not a registration this node holds."""
        return (
            owner is not None
            and self._under_lease(owner[3], owner[4], gen)
            and self._held_live(name) is None
        )

    def _under_lease(self, node: Any, row_gen: Any, gen: int) -> bool:
        """Whether a row's node and lease generation are this node's ``gen``, and that
        lease is still the one it holds (a recovery since made the row dead)."""
        return (
            node == self._node
            and row_gen is not None
            and int(row_gen) == gen
            and self._lease is not None
            and self._lease.generation == gen
        )

    def _adoptable(self, held: _Held, owner: tuple[Any, ...]) -> bool:
        """Whether the orphan ``owner`` holds the values a register sends now."""
        load = self._sql.codec.load_json
        if not (
            same_json(load(owner[1]), held.address) and same_json(load(owner[2]), held.metadata)
        ):
            return False
        if owner[8] is None or held.ttl_ms is None:
            return owner[8] is None and held.ttl_ms is None
        load_ts = self._sql.codec.load_ts
        ttl_ms = (load_ts(owner[8]) - load_ts(owner[7])).total_seconds() * 1000
        return abs(ttl_ms - held.ttl_ms) < 1  # the same ttl, not only a ttl

    def _judge_lost_reply(
        self, name: str, held: _Held, gen: int, started: int, owner: tuple[Any, ...] | None
    ) -> ServiceEntry | None:
        """A register that failed on the connection, and its row as read after: the entry
        if the write landed with these values; else None (an orphan of other values waits
        in doubt for the heartbeat)."""
        if not self._orphan(name, gen, owner):
            return None
        assert owner is not None
        if self._adoptable(held, owner):
            if not self._lease_valid():
                # Landed under a lease that ran out meanwhile: a dead row, registered
                # nowhere (its epoch is no token). The call raises; a retry writes anew.
                return None
            return self._adopt(name, held, gen, owner, started)
        self._in_doubt.add(name)
        return None

    @staticmethod
    def _cut_backend(exc: FoundationError) -> int | None:
        """The server process a lost write ran in (PostgreSQL), as the error tells it."""
        pid = exc.context.get("backend_pid")
        return pid if type(pid) is int else None

    def _adopt(
        self, name: str, held: _Held, gen: int, owner: tuple[Any, ...], started: int
    ) -> ServiceEntry:
        self._in_doubt.discard(name)
        return self._registered(name, held, gen, (owner[5], owner[6], owner[7]), None, started)

    def _unregister_statement(self, name: str, force: bool) -> tuple[str, dict[str, Any]]:
        """``unregister``'s statement and parameters, or ``not_found`` when this node does
        not hold ``name`` (and ``force`` is false)."""
        if force:
            return self._sql.unregister_force, {"name": name, **self._sql.clock()}
        if self._held_live(name) is None or self._lease is None:
            raise self._not_held(name)
        params = {"name": name, "node": self._node, "gen": self._lease.generation}
        return self._sql.unregister, {**params, **self._sql.clock()}

    def _unregister_in_doubt(self, name: str) -> None:
        """An unregister that failed on the connection, its outcome unread: the name is
        no longer this node's (a recovery would write it again; the feed's tombstone would
        read as the name lost, and is told as this node's own, ``local``), and the
        heartbeat releases its row if it is still there (the unregister the caller asked
        for, done; see ``_settle_doubts``)."""
        if self._held.pop(name, None) is not None:
            self._in_doubt.add(name)
            self._state.releasing(name)

    def _update_in_doubt(self, name: str, meta: Any, text: str) -> None:
        """An update_metadata that failed on the connection, its outcome unread: a lease
        recovery reads the row before it writes the name again (see ``_landed``)."""
        self._metadata_in_doubt[name] = (meta, text)

    def _landed(self, name: str, held: _Held, owner: tuple[Any, ...] | None) -> _Held:
        """What a recovery writes for a name whose update_metadata is in doubt: its row
        (``owner``, read again) says whether that update landed."""
        meta, text = self._metadata_in_doubt.pop(name)
        if owner is None or owner[3] != self._node:
            return held
        if not same_json(self._sql.codec.load_json(owner[2]), meta):
            return held
        self._held[name] = held = held.with_metadata(meta, text)
        return held

    @staticmethod
    def _judge_lost_unregister(owner: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
        """An unregister that failed on the connection (its reply lost after the commit,
        maybe), and the name's row read after: released (no owner), what the statement
        would have returned (its revision); else None, and the call raises."""
        if owner is not None and owner[3] is None:
            return (owner[6],)
        return None

    def _judge_lost_update(
        self, meta: Any, gen: int
    ) -> Callable[[tuple[Any, ...] | None], tuple[Any, ...] | None]:
        """For an update_metadata that failed on the connection: the name's row read
        after, if it is this node's under lease ``gen`` with ``meta`` (the update landed:
        the row is what the statement returns); else None, and the call raises."""

        def judge(owner: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
            if owner is None or not self._under_lease(owner[3], owner[4], gen):
                return None
            return owner if same_json(self._sql.codec.load_json(owner[2]), meta) else None

        return judge

    def _unregistered(self, name: str, row: tuple[Any, ...], started: int) -> None:
        self._held.pop(name, None)
        changes = self._state.apply_entry(None, name, int(row[0]), "local")
        self._emit(_UNREGISTER, started, {"name": name})
        self._notify(changes)
