"""Found in the tenth round of review.

* A ``join`` whose reply was lost (the connection cut after its commit) raised
  ``storage_unavailable`` and left a member of this node that the node did not know:
  ``members()`` listed it on every node, ``leave()`` could not remove it, a retry without
  ``member_id`` joined a second one, and it stayed until ``close()``. Forced here, as for
  ``register`` in the ninth round, by a reply dropped after the statement ran.
* An ``unregister`` whose reply was lost so raised ``storage_unavailable`` though the name
  was released, and the node went on believing it held it (``owns()`` True, its watchers
  told nothing); the caller's retry then raised ``not_found``. An ``update_metadata`` so
  lost left the node's own record of the metadata behind the database's (a recovery of
  its lease wrote the old metadata back).
* ``register(..., local="false")`` (any truthy value) registered the name in this process
  only, unseen by every other node; ``local`` must be a bool, as ``force`` is.
* A node that stood still past its TTL, its name taken meanwhile, sometimes told its
  watchers ``lost`` before the takeover's ``register`` (2 of 25 pauses, SQLite): the feed
  had put the new owner's row in the cache but not yet queued its ``register`` when the
  recovery reported the loss. The recovery now waits for a feed pass under way.
* A node that stood still inside a heartbeat pass (during its statement) reported another
  node's live names and members ``expired`` as it woke, then ``join`` again: the stall
  was measured from the end of the last pass only, so no grace let the change feed bring
  the renewals in first.
* Found with a proxy cutting replies for real: a ``leave`` whose reply was lost left the
  member among those the node rejoins after a lease recovery (it came back); an
  ``update_metadata`` whose reply and re-read were lost was undone by the next recovery
  (the old metadata written back); an ``unregister`` so lost was told to the node's
  watchers as ``lost``, with a false ``lease_lost``.
* Found in review of those fixes: a ``join`` of a member whose ``leave`` had been lost,
  landing while the heartbeat removed that member, was undone by it (or left a member
  the node did not know).
* Found re-running the proxy's cuts: an update_metadata whose outcome was unread, then an
  outage longer than the lease, was still undone when the recovery ran before the feed
  had brought the update in; the node's own unregister so lost reached its watchers as
  ``remote``; ``leave(group)`` retried after a lost reply raised ``not_found``.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from foundation import FoundationError
from tests.helpers import async_wait_for, wait_for
from tests.test_registry import node, stop_heartbeat
from tests.test_registry_async import anode
from tests.test_registry_review3 import kinds, watched
from tests.test_registry_review9 import _lose_register_replies, _recovered


def _as_seen_by(other: Any, mine: Any) -> Any:
    """``mine`` (an entry) once ``other`` (a node) has seen that very revision of it."""

    def seen() -> Any:
        entry = other.service_registry.find(mine.name)
        return entry if entry is not None and entry.revision == mine.revision else None

    return wait_for(seen)


def _lose_join_replies(fdn: Any, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> None:
    _lose_register_replies(fdn, monkeypatch, statement="join", **kwargs)


def test_a_join_whose_reply_was_lost_is_adopted(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as fdn, node(db_url) as other:
        reg = fdn.service_registry
        _lose_join_replies(fdn, monkeypatch, reads_fail=False)
        member = reg.join("workers", "http://a", {"zone": "a"})  # written: the read says so
        monkeypatch.undo()
        assert [m.member_id for m in reg.members("workers")] == [member.member_id]
        assert member.address == "http://a" and member.metadata == {"zone": "a"}
        wait_for(lambda: len(other.service_registry.members("workers")) == 1)
        reg.leave("workers")  # the node knows its member: it can leave
        wait_for(lambda: other.service_registry.members("workers") == [])


def test_a_lost_join_left_alone_is_removed_by_the_heartbeat(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as fdn, node(db_url) as other:
        reg = fdn.service_registry
        seen = watched(fdn, "workers")
        _lose_join_replies(fdn, monkeypatch, reads_fail=True)
        with pytest.raises(FoundationError) as err:
            reg.join("workers", "http://a")
        monkeypatch.undo()
        assert err.value.code == "storage_unavailable"
        wait_for(lambda: len(other.service_registry.members("workers")) == 1)  # it landed
        assert reg.heartbeat()  # the failed call said nothing was written: so it is
        wait_for(lambda: other.service_registry.members("workers") == [])
        assert reg.members("workers") == [] and reg._members_in_doubt == set()
        wait_for(lambda: kinds(seen)[-1:] == ["leave"])
        member = reg.join("workers", "http://a")  # a retry: one member, not two
        wait_for(lambda: other.service_registry.members("workers") == [member])


def test_a_lost_join_of_the_callers_own_id_is_the_callers_to_retry(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as fdn:
        reg = fdn.service_registry
        _lose_join_replies(fdn, monkeypatch, reads_fail=True)
        with pytest.raises(FoundationError):
            reg.join("workers", "http://a", member_id="w1")
        monkeypatch.undo()
        assert reg.heartbeat() and reg._members_in_doubt == set()
        member = reg.join("workers", "http://a", member_id="w1")  # joins it again
        assert reg.members("workers") == [member]
        reg.leave("workers", "w1")
        assert reg.members("workers") == []


def test_a_lost_join_is_not_adopted_under_a_lease_recovered_since(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as fdn:
        reg = fdn.service_registry
        _lose_join_replies(fdn, monkeypatch, reads_fail=False, meanwhile=lambda: _recovered(reg))
        with pytest.raises(FoundationError):
            reg.join("workers", "http://a")
        monkeypatch.undo()
        assert reg._joined == {}
        assert reg.heartbeat()  # the dead lease's member goes
        wait_for(lambda: reg.members("workers") == [])


async def test_a_join_whose_reply_was_lost_async(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fdn = await anode(db_url).open()
    try:
        reg = fdn.service_registry
        _lose_join_replies(fdn, monkeypatch, reads_fail=False, aio=True)
        member = await reg.join("workers", "http://a")
        monkeypatch.undo()
        assert reg.members("workers") == [member]
        await reg.leave("workers")
        _lose_join_replies(fdn, monkeypatch, reads_fail=True, aio=True)
        with pytest.raises(FoundationError):
            await reg.join("workers", "http://b")
        monkeypatch.undo()
        assert await reg.heartbeat()
        await async_wait_for(lambda: reg.members("workers") == [])
        assert reg._members_in_doubt == set()
    finally:
        await fdn.close()


@pytest.mark.parametrize("force", [False, True])
def test_an_unregister_whose_reply_was_lost_is_told_done(
    db_url: str, monkeypatch: pytest.MonkeyPatch, force: bool
) -> None:
    with node(db_url) as fdn, node(db_url) as other:
        reg = fdn.service_registry
        reg.register("svc", "http://a")
        seen = watched(fdn, "svc")
        _lose_register_replies(fdn, monkeypatch, reads_fail=False, statement="unregister")
        reg.unregister("svc", force=force)  # released: the read after says so
        monkeypatch.undo()
        assert not reg.owns("svc") and reg.find("svc") is None
        wait_for(lambda: kinds(seen) == ["unregister"])
        wait_for(lambda: other.service_registry.find("svc") is None)
        other.service_registry.register("svc", "http://b")


def test_an_unregister_whose_outcome_cannot_be_read_raises(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as fdn:
        reg = fdn.service_registry
        reg.register("svc", "http://a")
        _lose_register_replies(fdn, monkeypatch, reads_fail=True, statement="unregister")
        with pytest.raises(FoundationError) as err:
            reg.unregister("svc")
        monkeypatch.undo()
        assert err.value.code == "storage_unavailable"
        wait_for(lambda: reg.find("svc") is None)  # the feed tells what happened


async def test_an_unregister_whose_reply_was_lost_async(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fdn = await anode(db_url).open()
    try:
        reg = fdn.service_registry
        await reg.register("svc", "http://a")
        _lose_register_replies(fdn, monkeypatch, reads_fail=False, aio=True, statement="unregister")
        await reg.unregister("svc")
        monkeypatch.undo()
        assert not reg.owns("svc") and reg.find("svc") is None
        await reg.register("svc", "http://b")  # this node's again, anew
        assert reg.lookup("svc").epoch == 2
    finally:
        await fdn.close()


def test_an_update_whose_reply_was_lost_is_told_done(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as fdn, node(db_url) as other:
        reg = fdn.service_registry
        reg.register("svc", "http://a", {"v": 1})
        _lose_register_replies(fdn, monkeypatch, reads_fail=False, statement="update_metadata")
        entry = reg.update_metadata("svc", {"v": 2})  # landed: the read after says so
        monkeypatch.undo()
        assert entry.metadata == {"v": 2} and reg.lookup("svc").metadata == {"v": 2}
        reg._lost_locally()  # a recovery writes what the node holds: the new metadata
        reg._recover()
        mine = reg.lookup("svc")
        assert reg.owns("svc") and mine.metadata == {"v": 2}
        assert _as_seen_by(other, mine).metadata == {"v": 2}


async def test_an_update_whose_reply_was_lost_async(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fdn = await anode(db_url).open()
    try:
        reg = fdn.service_registry
        await reg.register("svc", "http://a", {"v": 1})
        _lose_register_replies(
            fdn, monkeypatch, reads_fail=False, aio=True, statement="update_metadata"
        )
        entry = await reg.update_metadata("svc", {"v": 2})
        monkeypatch.undo()
        assert entry.metadata == {"v": 2} and reg.lookup("svc").metadata == {"v": 2}
        _lose_register_replies(
            fdn, monkeypatch, reads_fail=True, aio=True, statement="update_metadata"
        )
        with pytest.raises(FoundationError) as err:
            await reg.update_metadata("svc", {"v": 3})
        monkeypatch.undo()
        assert err.value.code == "storage_unavailable"
        assert (await reg.update_metadata("svc", {"v": 3})).metadata == {"v": 3}  # a retry
    finally:
        await fdn.close()


@pytest.mark.parametrize("local", ["false", 1, None])
def test_local_must_be_a_bool(db_url: str, local: Any) -> None:
    with node(db_url) as fdn:
        reg = fdn.service_registry
        with pytest.raises(FoundationError) as err:
            reg.register("svc", "http://a", local=local)
        assert err.value.code == "validation_error" and "local must be True or False" in str(
            err.value
        )
        assert reg.find("svc") is None


def test_a_recovery_tells_lost_after_the_feeds_register_of_the_new_owner(db_url: str) -> None:
    from foundation import AlreadyRegisteredError

    with node(db_url) as fdn, node(db_url) as other:
        reg = fdn.service_registry
        reg.register("x", "http://a")
        seen = watched(fdn, "x")
        stop_heartbeat(fdn)  # stands still past its TTL
        fdn.feed.stop()  # its feed's pass is played below, at the worst moment

        def take() -> bool:
            try:
                other.service_registry.register("x", "http://b")
            except AlreadyRegisteredError:
                return False
            return True

        wait_for(take)
        entry = other.service_registry.lookup("x")
        applied = threading.Event()

        def feed_pass() -> None:  # applied to the cache, then queued a moment later
            with reg._resync_lock:
                changes = reg._state.apply_entry(entry, "x", entry.revision, "remote")
                applied.set()
                time.sleep(0.3)
                reg._publish(changes)

        feeder = threading.Thread(target=feed_pass)
        feeder.start()
        applied.wait(5)
        reg.heartbeat()  # finds its lease lost: recovers, and the name is gone
        feeder.join()
        wait_for(lambda: "lost" in kinds(seen))
        told = kinds(seen)
        assert told.index("register") < told.index("lost"), told


def test_a_stall_inside_a_heartbeat_pass_reports_no_live_name_expired(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        node(db_url, registry_ttl_ms=10_000, registry_heartbeat_ms=200) as fdn,
        node(db_url) as other,
    ):
        other.service_registry.register("svc", "http://b")
        reg = fdn.service_registry
        wait_for(lambda: reg.find("svc") is not None)
        seen = watched(fdn, "svc")
        real = reg.heartbeat
        feed_held, caught_up = threading.Event(), threading.Event()

        def hold_feed() -> None:  # the feed stands still too, and wakes a little later
            with reg._resync_lock:
                feed_held.set()
                caught_up.wait(10)

        def stalled_heartbeat() -> bool:
            if not feed_held.is_set():
                threading.Thread(target=hold_feed, daemon=True).start()
                feed_held.wait(5)
                time.sleep(1.5)  # past the other node's TTL (1 s), in the statement
                threading.Timer(0.3, caught_up.set).start()
            return real()

        monkeypatch.setattr(reg, "heartbeat", stalled_heartbeat)
        wait_for(caught_up.is_set)
        time.sleep(1.0)  # past the grace
        assert "expired" not in kinds(seen), kinds(seen)
        assert reg.find("svc") is not None


def test_a_leave_whose_reply_was_lost_is_not_rejoined_by_a_recovery(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as fdn, node(db_url) as other:
        reg = fdn.service_registry
        reg.join("g", "http://a", member_id="m1")
        reg.join("g", "http://a", member_id="m2")
        _lose_register_replies(fdn, monkeypatch, reads_fail=False, statement="leave")
        with pytest.raises(FoundationError):
            reg.leave("g", "m1")
        monkeypatch.undo()
        _recovered(reg)  # the outage also cost the lease: what the node holds is rejoined
        assert [m.member_id for m in reg.members("g")] == ["m2"]
        wait_for(lambda: [m.member_id for m in other.service_registry.members("g")] == ["m2"])
        reg.leave("g", "m1")  # a retry does what the first call meant, without a word


def test_an_update_whose_outcome_was_unread_is_not_undone_by_a_recovery(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as fdn, node(db_url) as other:
        reg = fdn.service_registry
        reg.register("svc", "http://a", {"v": 0})
        _lose_register_replies(fdn, monkeypatch, reads_fail=True, statement="update_metadata")
        with pytest.raises(FoundationError):
            reg.update_metadata("svc", {"v": 1})
        monkeypatch.undo()
        wait_for(lambda: reg.lookup("svc").metadata == {"v": 1})  # landed: the feed says so
        _recovered(reg)
        mine = reg.lookup("svc")
        assert mine.metadata == {"v": 1}
        assert _as_seen_by(other, mine).metadata == {"v": 1}


def test_an_unregister_whose_outcome_was_unread_is_not_told_lost(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as fdn, node(db_url) as other:
        reg = fdn.service_registry
        reg.register("svc", "http://a")
        seen = watched(fdn, "svc")
        losses: list[Any] = []
        fdn.telemetry.attach(
            "lost", "foundation.registry.lease_lost", lambda *args: losses.append(args)
        )
        _lose_register_replies(fdn, monkeypatch, reads_fail=True, statement="unregister")
        with pytest.raises(FoundationError):
            reg.unregister("svc")
        monkeypatch.undo()
        assert not reg.owns("svc")
        wait_for(lambda: reg.find("svc") is None and kinds(seen) == ["unregister"])
        assert reg.heartbeat() and reg._in_doubt == set()
        time.sleep(0.2)
        assert kinds(seen) == ["unregister"] and losses == []
        other.service_registry.register("svc", "http://b")


async def test_a_lost_leave_and_unregister_async(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fdn = await anode(db_url).open()
    try:
        reg = fdn.service_registry
        await reg.join("g", "http://a", member_id="m1")
        await reg.register("svc", "http://a", {"v": 0})
        seen = watched(fdn, "svc")
        _lose_register_replies(fdn, monkeypatch, reads_fail=False, aio=True, statement="leave")
        with pytest.raises(FoundationError):
            await reg.leave("g", "m1")
        monkeypatch.undo()
        _lose_register_replies(fdn, monkeypatch, reads_fail=True, aio=True, statement="unregister")
        with pytest.raises(FoundationError):
            await reg.unregister("svc")
        monkeypatch.undo()
        reg._lost_locally()
        await reg._recover()  # neither comes back, and nothing is told lost
        assert reg.members("g") == [] and not reg.owns("svc")
        await async_wait_for(lambda: reg.find("svc") is None)
        assert "lost" not in kinds(seen)
    finally:
        await fdn.close()


def test_a_join_racing_the_heartbeats_removal_of_a_lost_leave_stays(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as fdn:
        reg = fdn.service_registry
        stop_heartbeat(fdn)  # the heartbeat is driven by hand below
        reg.join("g", "http://a", member_id="M")
        _lose_register_replies(fdn, monkeypatch, reads_fail=False, statement="leave")
        with pytest.raises(FoundationError):
            reg.leave("g", "M")
        monkeypatch.undo()
        db, real = reg._db, reg._db.fetchone
        joiner: list[threading.Thread] = []

        def fetchone(sql: str, params: Any = None) -> Any:
            if sql == reg._sql.leave and not joiner:  # the settle's removal: a join now
                joiner.append(
                    threading.Thread(
                        target=reg.join, args=("g", "http://b"), kwargs={"member_id": "M"}
                    )
                )
                joiner[0].start()
                time.sleep(0.3)
            return real(sql, params)

        monkeypatch.setattr(db, "fetchone", fetchone)
        assert reg.heartbeat()
        joiner[0].join(10)
        monkeypatch.undo()
        assert [(m.member_id, m.address) for m in reg.members("g")] == [("M", "http://b")]
        assert ("g", "M") in reg._joined
        reg.leave("g", "M")
        assert reg.members("g") == []


def test_lost_writes_then_a_recovery_before_the_feed_catches_up(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with node(db_url) as fdn:
        reg = fdn.service_registry
        stop_heartbeat(fdn)
        fdn.feed.stop()  # the recovery runs before the feed brings anything in
        reg.register("svc", "http://a", {"v": 0})
        reg.register("gone", "http://a")
        reg.join("g", "http://a", member_id="m1")
        seen = watched(fdn, "gone")
        for statement, call in (
            ("update_metadata", lambda: reg.update_metadata("svc", {"v": 1})),
            ("unregister", lambda: reg.unregister("gone")),
            ("leave", lambda: reg.leave("g")),
        ):
            _lose_register_replies(fdn, monkeypatch, reads_fail=True, statement=statement)
            with pytest.raises(FoundationError):
                call()
            monkeypatch.undo()
        reg.leave("g")  # a retry of leave(group) takes the member in doubt too
        # The feed's tombstone of "gone", as the feed would apply and tell it:
        reg._publish(
            reg._state.apply_entry(None, "gone", reg._state.revision("gone") + 1, "remote")
        )
        wait_for(lambda: [(c.kind, c.source) for c in seen] == [("unregister", "local")])
        _recovered(reg)
        assert reg.lookup("svc").metadata == {"v": 1}  # the update landed: kept
        row = reg._db.fetchone(reg._sql.select_entry, {"name": "svc"})
        assert reg._sql.codec.load_json(row[2]) == {"v": 1}
