"""The registry's side of the change feed: what a node does when another node changed
the registry (runs in the feed's thread, for the sync and the async registry alike).

PostgreSQL: ``on_notify`` applies the one change a notification names, and ``resync``
re-reads everything after the listener (re)connects. SQLite: the feed calls ``poll`` after
any commit to the file; the topic revisions (migration 0006) say whether the names, the
members or the leases moved, and which names, so an event or a config value costs one
small read and a registration elsewhere costs reading that one name.
"""

from __future__ import annotations

import builtins
import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from foundation.database.feed import TOPIC_NAMES
from foundation.database.sync import Cursor
from foundation.service_registry._model import (
    GroupMember,
    RegistryChange,
    ServiceEntry,
)
from foundation.service_registry._state import RegistryState
from foundation.service_registry._store import RegistrySQL

__all__ = ["RegistryFeedSide"]


class RegistryFeedSide:
    """Mixed into the registry services, which provide the cache and the row decoders."""

    _sql: RegistrySQL
    _state: RegistryState
    _resync_lock: threading.Lock
    _closed: bool
    _closed_error: Any

    def _init_feed_side(self) -> None:
        # Counted for tests and telemetry pollers: full re-reads, SQLite polls (every
        # commit to the file), polls that found a registry topic moved, and the names
        # read because of another node's change (decoded by a poll, or read after a
        # PostgreSQL notification).
        self.resyncs = 0
        self.polls = 0
        self.poll_reads = 0
        self.names_read = 0
        self._topics_seen: tuple[Any, ...] | None = None  # (names, members, leases)
        self._feed: Any = None
        self._writes_lock = threading.Condition(threading.Lock())
        # Thread id -> this node's writes in flight on it, all names and groups (see
        # _count_in); empty when none is.
        self._writer_threads: dict[int, int] = {}
        # name -> [writers in flight (waiting ones included), newest revision the feed
        # named meanwhile, the lock that lets this node's writers of the name in one at a
        # time (``_new_write_lock``)]
        self._writing: dict[str, builtins.list[Any]] = {}

    def _forget_in_flight(self) -> None:
        """In a forked child (see ``foundation._fork``): the writes the parent's threads
        had in flight, and the name locks they held, are not the child's."""
        self._writer_threads = {}
        self._writing = {}

    def bind_feed(self, feed: Any) -> None:
        """Called by the facade: a write whose settling read failed asks for a resync."""
        self._feed = feed

    def _request_resync(self) -> None:
        if self._feed is not None:  # None: a service built by hand, without a feed
            self._feed.request_resync()

    # Provided by the service.
    def _new_write_lock(self) -> Any:
        """A lock for one name's writers: ``threading.Lock`` or ``asyncio.Lock``."""
        raise NotImplementedError

    def _entry(self, row: tuple[Any, ...]) -> ServiceEntry:
        raise NotImplementedError

    def _member(self, row: tuple[Any, ...]) -> GroupMember:
        raise NotImplementedError

    def _publish(self, changes: builtins.list[RegistryChange]) -> None:
        raise NotImplementedError

    def on_notify(self, payload: dict[str, Any], reader: Cursor) -> None:
        kind = payload.get("kind")
        if kind == "lease":
            node, gen, expires = (
                payload.get("node"),
                payload.get("generation"),
                payload.get("expires"),
            )
            if isinstance(node, str) and isinstance(gen, int) and isinstance(expires, int | float):
                if self._stale_lease(reader, node, gen):
                    return
                with self._resync_lock:  # applied and published as one (see _feed_settled)
                    self._publish(
                        self._state.apply_lease(
                            node, gen, 0.0 if payload.get("deleted") else float(expires)
                        )
                    )
                    released = self._state.released_holding
                    self._state.released_holding = None
                    if released is not None:
                        self._released_holding(reader, released)
        elif kind == "name":
            name, revision = payload.get("name"), payload.get("revision")
            if not isinstance(name, str) or not isinstance(revision, int):
                return
            if revision <= self._state.revision(name):
                return  # this node already holds that change (its own write, usually)
            if self._defer_to_writer(name, revision):
                # This node is writing that name: the notification is most likely its own
                # write, committed but not yet in the cache. The writer settles it when
                # done (a read only if another node's change came in between), instead of
                # a round trip here for nearly every register.
                return
            self.names_read += 1
            with self._resync_lock:  # applied and published as one (see _feed_settled)
                row = reader.fetchone(self._sql.select_entry, {"name": name})
                self._lease_behind(reader, row, 3)
                self._apply_name_row(name, revision, row)
        elif kind == "member":
            group, member_id = payload.get("group"), payload.get("member")
            if not isinstance(group, str) or not isinstance(member_id, str):
                return
            with self._resync_lock:
                # Read again when this node's own join or leave of the member landed
                # during the read (see RegistryState.read_member). Past three times, the
                # notifications of those writes, still to come, read it after them.
                for _ in range(3):
                    self._state.reading_member(group, member_id)
                    row = reader.fetchone(
                        self._sql.select_member, {"group": group, "member": member_id}
                    )
                    self._lease_behind(reader, row, 4)
                    member = None if row is None else self._member(row)
                    changes = self._state.read_member(group, member_id, member)
                    if changes is not None:
                        self._publish(changes)
                        return

    def _stale_lease(self, reader: Cursor, node: str, generation: int) -> bool:
        """PostgreSQL: whether a lease notification of another generation than the one
        cached for ``node`` is older than that one: this node read the node's lease
        since it was sent (see _released_holding), and the table still says so."""
        cached = self._state.live_generation(node)
        if cached is None or cached == generation:
            return False
        found = reader.fetchone(self._sql.select_lease, {"node": node})
        return found is not None and int(found[0]) == cached

    def _released_holding(self, reader: Cursor, lease: Any) -> None:
        """PostgreSQL: a node's lease was deleted (its close) while names or members are
        still on it here. A close releases them first, in the same transaction; so they
        were read after it, as the rows of that node id's next instance, under the same
        generation number (a feed a restart behind). Its lease is read: that instance's
        (the rows are its own: the lease lives on), or a later one's, when a resync
        settles what this node read."""
        names = self._state.names_on(lease)
        if not self._state.members_on(lease) and all(self._writing_now(n) for n in names):
            return  # this node is writing them (taking a name over): its writes settle them
        found = reader.fetchone(self._sql.select_lease, {"node": lease.node})
        if found is not None and int(found[0]) == lease.generation:
            expires = self._sql.epoch_seconds(found[1])
            self._publish(self._state.apply_lease(lease.node, lease.generation, expires))
        else:
            self._request_resync()

    def _lease_behind(self, reader: Cursor, row: tuple[Any, ...] | None, node_at: int) -> None:
        """PostgreSQL: a row read for a notification may be newer than the notifications
        applied so far: a node id's next instance, numbering its lease from 1 again after
        a close whose lease deletion is still to come here. Its lease is read now, as the
        row was (else every name and member of that instance would be taken as dead)."""
        if row is None or row[node_at] is None:
            return
        node, generation = row[node_at], int(row[node_at + 1])
        if not self._state.generation_behind(node, generation):
            return  # the usual case: the cache holds that generation (or a later one)
        found = reader.fetchone(self._sql.select_lease, {"node": node})
        if found is not None and int(found[0]) == generation:
            lease = (node, generation, self._sql.epoch_seconds(found[1]))
            self._publish(self._state.apply_leases([lease]))

    def _feed_settled(self, timeout: float) -> None:
        """Wait (at most ``timeout`` seconds) until a feed pass under way has queued what
        it applied. ``close()``: the feed may have applied this node's release to the
        cache first (a loaded machine); its changes must be queued before the dispatcher's
        stop, or they would never be delivered. The feed applies and publishes under
        ``_resync_lock``."""
        if self._resync_lock.acquire(timeout=timeout):
            self._resync_lock.release()

    def _seen_first(self, name: str, row: tuple[Any, ...] | None) -> None:
        """A live row of ``name`` read before this node removes it (a force unregister):
        installed first, as a notification's read would have."""
        if row is not None and row[3] is not None:
            self._apply_name_row(name, int(row[6]), row)

    def _apply_name_row(self, name: str, revision: int, row: tuple[Any, ...] | None) -> None:
        """Install the row a notification of ``revision`` sent this node to read."""
        if row is None or row[3] is None:
            rev = revision if row is None else int(row[6])
            self._publish(self._state.apply_entry(None, name, rev, "remote"))
        else:
            entry = self._entry(row)
            self._publish(self._state.apply_entry(entry, name, entry.revision, "remote"))

    # The writes of this node in flight. A node's own writes of one name run one at a
    # time (the name's write lock, held from the statement until the writer settled), and
    # the feed leaves a name being written to its writer: a change the feed saw meanwhile
    # (a notification, a poll, a resync) is read by the writer after its own (``_settle``). So the
    # node's own changes reach the cache, and its watchers, one by one, in revision order,
    # as ``local``, on both backends: without that, two threads' writes committed in one
    # order could be applied in the other (the older then skipped as stale), or the feed
    # could read a write before its writer applied it (and report it ``remote``).
    # PostgreSQL: the writer's own notifications (which the listener often receives
    # before the writer has updated the cache) cost no read. Both: a name being written is
    # not judged lost on what the feed saw meanwhile (this node's own unregister, read
    # before the writer forgot the name); the writer judges it when done.

    # close() releases the lease and every name and member under it in one transaction.
    # A write that committed after that release would leave a row of a closed node (live
    # again if its node id comes back with the same lease generation). So a write is
    # counted in while it runs (refused once close() began), and close() waits for the
    # count to drop to zero before it releases (``_writes_done``).

    def _count_in(self, context: dict[str, Any]) -> None:
        """A write begins (``storage_unavailable`` once close() began)."""
        with self._writes_lock:
            if self._closed:
                raise self._closed_error(context)
            self._counted_in()

    def _counted_in(self) -> None:
        # Under the lock.
        me = threading.get_ident()
        self._writer_threads[me] = self._writer_threads.get(me, 0) + 1

    def _count_out(self) -> None:
        with self._writes_lock:
            me = threading.get_ident()
            left = self._writer_threads[me] - 1
            if left:
                self._writer_threads[me] = left
            else:
                del self._writer_threads[me]
            if not self._writer_threads:
                self._writes_lock.notify_all()

    @contextlib.contextmanager
    def _counted(self, context: dict[str, Any]) -> Iterator[None]:
        self._count_in(context)
        try:
            yield
        finally:
            self._count_out()

    def _writes_done(self, timeout: float) -> bool:
        """Sync close(): wait for the writes in flight of other threads (False: some still
        run). This thread's own cannot end while it closes (close() called from a signal
        handler, or a callback, inside one of them): not waited for."""
        me = threading.get_ident()
        with self._writes_lock:
            return self._writes_lock.wait_for(lambda: self._writer_threads.keys() <= {me}, timeout)

    def _writing_here(self) -> bool:
        """Whether this thread is inside a write of this node (see ``_writes_done``)."""
        return threading.get_ident() in self._writer_threads

    def _begin_write(self, name: str) -> Any:
        """Count a writer of ``name`` in (refused once close() began, see ``_count_in``);
        return the name's write lock, which the writer holds from its statement until it
        settled (``_end_write`` and then ``_count_out`` count it out, whether it got the
        lock or not)."""
        with self._writes_lock:
            if self._closed:
                raise self._closed_error({"name": name})
            self._counted_in()
            writing = self._writing.get(name)
            if writing is None:
                writing = self._writing[name] = [0, 0, self._new_write_lock()]
            writing[0] += 1
            return writing[2]

    def _end_write(self, name: str, *, locked: bool = True) -> int:
        """The newest revision the feed named during the write (0: none) that the cache
        does not hold yet: the writer must read the row (``_settle``). A writer that never
        got the lock (cancelled while it waited) reads it only if it is the last one:
        otherwise the writer holding the lock may not have applied its own change yet."""
        with self._writes_lock:
            writing = self._writing[name]
            writing[0] -= 1
            last = writing[0] == 0
            if last:
                del self._writing[name]
        if not (locked or last):
            return 0
        return writing[1] if writing[1] > self._state.revision(name) else 0

    def _defer_to_writer(self, name: str, revision: int) -> bool:
        """True if this node is writing ``name``: the writer reads ``revision`` when done."""
        with self._writes_lock:
            writing = self._writing.get(name)
            if writing is None:
                return False
            writing[1] = max(writing[1], revision)
            return True

    def _writing_now(self, name: str) -> bool:
        return name in self._writing

    def resync(self, reader: Cursor) -> None:
        with self._resync_lock:  # one snapshot at a time (see RegistryState.mark)
            # The topic revisions first: whatever commits during the reads below moves
            # them again, so the next poll reads it once more (applying a row twice is
            # harmless: the cache takes a revision only once).
            topics = self._sql.topics.read(reader) if self._sql.backend == "sqlite" else None
            mark = self._state.mark()
            self._apply_snapshot(
                reader.fetchall(self._sql.select_leases),
                reader.fetchall(self._sql.select_entries),
                reader.fetchall(self._sql.select_members),
                mark,
            )
            self._topics_seen = topics
            self.resyncs += 1

    def poll(self, reader: Cursor) -> None:
        """SQLite: something was committed to the file. Read only what moved.

        One small read when no registry topic moved (an event, a config value…): the
        latest revision of the names, members and leases topics. Else the names changed
        since the last look (a deleted row comes back as NULLs), then the members (usually
        few) and the leases (one row per node) if they moved. SQLite commits one writer at
        a time and the triggers take the next revision in the writer's transaction, so
        "above what this node saw" is exactly what it has not read. Expiry needs no read:
        lookups compare the lease's expiry with the clock, and the sweep reports it.
        """
        self.polls += 1
        seen = self._topics_seen
        if self._sql.backend != "sqlite":
            return  # PostgreSQL's feed never polls: NOTIFY names each change
        topics = self._sql.topics.read(reader)
        if topics == seen:
            return  # the common case (an event, a config value…): no registry topic moved
        if seen is None or any(
            (now or 0) < (was or 0) for now, was in zip(topics, seen, strict=True)
        ):
            self.resync(reader)  # never synced, or the revisions went back (rows deleted)
            return
        names, members, leases = topics
        changes: builtins.list[RegistryChange] | None = []
        with self._resync_lock:
            self.poll_reads += 1
            lease_rows = None
            renewed: builtins.list[RegistryChange] = []
            if leases != seen[2]:
                seconds = self._sql.epoch_seconds
                lease_rows = [
                    (r[0], int(r[1]), seconds(r[2]))
                    for r in reader.fetchall(self._sql.select_leases)
                ]
                # Renewals first: a name another node changed while this one stood still
                # is that node's live name, not one that expired meanwhile.
                renewed = self._state.apply_leases(lease_rows)
            # Names before the leases' ends: a node that closed released its names and its
            # lease in one transaction, and its names must go while their lease still
            # counts as live here, so that watchers hear "unregister" (as NOTIFY's order
            # gives).
            if names != seen[0]:
                changes = self._changed_names(reader, seen[0] or 0)
            if changes is not None:
                changes = renewed + changes
                if members != seen[1]:
                    mark = self._state.mark()
                    group_rows = reader.fetchall(self._sql.select_members)
                    changes += self._state.replace_members_only(
                        [self._member(r) for r in group_rows], mark
                    )
                if lease_rows is not None:
                    changes += self._state.replace_leases(lease_rows)
                self._topics_seen = topics
                self._publish(changes)  # in the lock, as applied (see _feed_settled)
            else:
                self._publish(renewed)
        if changes is None:
            self.resync(reader)  # revisions it never read were pruned: it was far behind

    def _changed_names(self, reader: Cursor, after: int) -> builtins.list[RegistryChange] | None:
        """Apply the names changed after revision ``after``; None if some were pruned."""
        rows = reader.fetchall(
            self._sql.select_changed_entries, {"topic": TOPIC_NAMES, "after": after}
        )
        if not rows or rows[0][0] != after + 1:
            return None  # a topic's revisions follow each other: a gap means rows were dropped
        changes: builtins.list[RegistryChange] = []
        done: set[str] = set()
        for row in rows:
            if row[1] not in done:  # a name changed twice: its (current) row is read once
                done.add(row[1])
                changes += self._apply_changed(row[1], row[2:])
        return changes

    def _apply_changed(self, name: str, row: tuple[Any, ...]) -> builtins.list[RegistryChange]:
        """One name a poll found changed; ``row`` is ENTRY_COLUMNS, all NULL if deleted."""
        state = self._state
        if row[0] is None:  # the row itself was deleted (by hand: Foundation keeps tombstones)
            return state.apply_entry(None, name, state.revision(name) + 1, "remote")
        revision = int(row[6])
        if revision <= state.revision(name):
            return []  # already held (this node's own write, usually): nothing to decode
        if self._defer_to_writer(name, revision):
            return []  # this node is writing it: its writer reads it after its own write
        self.names_read += 1
        if row[3] is None:  # a tombstone: unregistered or released
            return state.apply_entry(None, name, revision, "remote")
        entry = self._entry(row)
        return state.apply_entry(entry, name, revision, "remote")

    def _apply_snapshot(
        self,
        lease_rows: builtins.list[tuple[Any, ...]],
        entry_rows: builtins.list[tuple[Any, ...]],
        member_rows: builtins.list[tuple[Any, ...]],
        mark: int,
    ) -> None:
        seconds = self._sql.epoch_seconds
        leases = [(r[0], int(r[1]), seconds(r[2])) for r in lease_rows]
        # As a poll does: renewals first, then the names, and the leases that are gone
        # last: a node that closed released its names and its lease in one transaction,
        # and its names must go while their lease still counts as live, so that watchers
        # hear "unregister" (not nothing: a name under a lease gone unseen is dead).
        revived = self._state.apply_leases(leases)
        entries = []
        for row in entry_rows:
            cached = self._state.cached_entry(row[0])
            # Unchanged rows keep their object: a resync of a big registry stays cheap.
            # (Not one on a released lease: read as another instance's of its node id
            # under the same generation number, it hangs off that instance's lease now.)
            entries.append(
                cached
                if cached is not None
                and cached.revision == int(row[6])
                and not cached.lease.released
                else self._entry(row)
            )
        members = [self._member(r) for r in member_rows]
        changes = self._state.replace_entries(entries, members, mark, self._defer_to_writer)
        self._publish(revived + changes + self._state.replace_leases(leases))
