"""One statement per store on PostgreSQL: ``foundation_append_events``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28

A store used to be five round trips (BEGIN, the writers' lock, INSERT, NOTIFY, COMMIT).
This function does the same work inside the server, so a store is one statement in its
own implicit transaction: it takes the events writers' lock
(``foundation.events._store.EVENTS_LOCK_KEY``, positions keep following commit order),
checks every expected version of a unit before writing any of its events, appends, and
announces the last position on the ``foundation`` channel.

The events arrive as parallel arrays; ``p_units`` groups them into units, each all or
nothing on its own (one caller's ``store_many``), so one call can carry the stores of
many callers at once (group commit: one lock, one commit, one WAL flush). A unit that
fails its check writes nothing and comes back as a single row naming the event and the
stream's actual version; the other units are unaffected. Ids already in the log are
checked by the caller before the call (their content is compared in Python); one that
arrives meanwhile fails the whole call with a unique violation, and the caller retries.

SQLite has no stored functions; there a store is a single INSERT (or a short
``BEGIN IMMEDIATE`` transaction for several events) issued by the library itself.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# foundation.events._store.EVENTS_LOCK_KEY ("FdnEvts"); a migration never imports the app.
EVENTS_LOCK_KEY = 0x46646E45767473

APPEND_FUNCTION = f"""
CREATE FUNCTION foundation_append_events(
    p_units integer[], p_ids text[], p_streams text[], p_expected text[], p_types text[],
    p_data text[], p_metadata text[], p_correlation text[], p_causation text[],
    p_recorded_at timestamptz)
RETURNS TABLE (o_ord integer, o_position bigint, o_version bigint, o_actual bigint,
               o_tail bigint)
LANGUAGE plpgsql AS $$
DECLARE
    n integer := coalesce(array_length(p_ids, 1), 0);
    first integer := 1;
    last integer;
    j integer;
    cur bigint;
    wanted text;
    seen jsonb;
    versions bigint[];
    failed integer;
    tail_before bigint;
    last_position bigint;
BEGIN
    -- Serialize writers before any position is allocated (see events/_store.py).
    PERFORM pg_advisory_xact_lock({EVENTS_LOCK_KEY});
    SELECT max(e.position) INTO tail_before FROM foundation_events e;
    WHILE first <= n LOOP
        last := first;
        WHILE last < n AND p_units[last + 1] = p_units[first] LOOP
            last := last + 1;
        END LOOP;
        -- Check the whole unit before writing any of it.
        seen := '{{}}';
        failed := NULL;
        FOR j IN first..last LOOP
            versions[j] := NULL;
            CONTINUE WHEN p_streams[j] IS NULL;
            IF seen ? p_streams[j] THEN
                cur := (seen ->> p_streams[j])::bigint;
            ELSE
                SELECT coalesce(max(e.stream_version), 0) INTO cur
                FROM foundation_events e WHERE e.stream_id = p_streams[j];
            END IF;
            wanted := p_expected[j];
            IF NOT (wanted = 'any'
                    OR (wanted = 'no_stream' AND cur = 0)
                    OR (wanted = 'exists' AND cur > 0)
                    OR (wanted ~ '^[0-9]+$' AND wanted::bigint = cur)) THEN
                failed := j;
                EXIT;
            END IF;
            versions[j] := cur + 1;
            seen := jsonb_set(seen, ARRAY[p_streams[j]], to_jsonb(cur + 1));
        END LOOP;
        IF failed IS NOT NULL THEN
            o_ord := failed; o_position := NULL; o_version := NULL; o_actual := cur;
            o_tail := tail_before;
            RETURN NEXT;
        ELSE
            FOR j IN first..last LOOP
                INSERT INTO foundation_events
                    (id, stream_id, stream_version, type, data, metadata, correlation_id,
                     causation_id, recorded_at)
                VALUES (p_ids[j], p_streams[j], versions[j], p_types[j], p_data[j]::jsonb,
                        p_metadata[j]::jsonb, p_correlation[j], p_causation[j],
                        p_recorded_at)
                RETURNING foundation_events.position INTO last_position;
                o_ord := j; o_position := last_position; o_version := versions[j];
                o_actual := NULL; o_tail := tail_before;
                RETURN NEXT;
            END LOOP;
        END IF;
        first := last + 1;
    END LOOP;
    IF last_position IS NOT NULL THEN
        -- Delivered at commit only, so a woken subscriber finds the events there.
        PERFORM pg_notify('foundation', json_build_object(
            'topic', 'events', 'position', last_position)::text);
    END IF;
END
$$
"""  # noqa: S608 (constants only, no input)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(APPEND_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "DROP FUNCTION foundation_append_events(integer[], text[], text[], text[], "
            "text[], text[], text[], text[], text[], timestamptz)"
        )
