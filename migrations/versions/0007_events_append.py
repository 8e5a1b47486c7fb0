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
many callers at once (group commit: one lock, one commit, one WAL flush). Expected
versions are checked unit by unit first (a loop, only when some event has a stream); a
unit that fails writes nothing and comes back as a single row naming the event and the
stream's actual version, the other units are unaffected. Then one ``INSERT … SELECT``
from the arrays appends everything else: each PL/pgSQL statement is a round of the
executor, so the plain case (events outside streams) runs a handful of them, whatever
the number of events. Ids already in the log are
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
    versions bigint[];
    failed_units integer[] := '{{}}';
    failed_ords integer[] := '{{}}';
    failed_actuals bigint[] := '{{}}';
    first integer := 1;
    last integer;
    j integer;
    failed integer;
    cur bigint;
    wanted text;
    done jsonb := '{{}}';  -- stream -> version after the units checked so far
    pending jsonb;          -- the same, with the unit being checked
    tail_before bigint;
    last_position bigint;
BEGIN
    -- Serialize writers before any position is allocated (see events/_store.py).
    PERFORM pg_advisory_xact_lock({EVENTS_LOCK_KEY});
    SELECT max(e.position) INTO tail_before FROM foundation_events e;
    -- Stream versions and expected-version checks, unit by unit: a unit that fails
    -- is left out whole. Events outside streams need none of this.
    IF EXISTS (SELECT FROM unnest(p_streams) AS s WHERE s IS NOT NULL) THEN
        versions := array_fill(NULL::bigint, ARRAY[n]);
        WHILE first <= n LOOP
            last := first;
            WHILE last < n AND p_units[last + 1] = p_units[first] LOOP
                last := last + 1;
            END LOOP;
            pending := done;
            failed := NULL;
            FOR j IN first..last LOOP
                CONTINUE WHEN p_streams[j] IS NULL;
                IF pending ? p_streams[j] THEN
                    cur := (pending ->> p_streams[j])::bigint;
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
                pending := jsonb_set(pending, ARRAY[p_streams[j]], to_jsonb(cur + 1));
            END LOOP;
            IF failed IS NULL THEN
                done := pending;
            ELSE
                failed_units := failed_units || p_units[first];
                failed_ords := failed_ords || failed;
                failed_actuals := failed_actuals || cur;
            END IF;
            first := last + 1;
        END LOOP;
    END IF;
    -- One INSERT for every event of every unit that passed, in argument order (the
    -- ORDER BY makes positions follow it).
    RETURN QUERY
    WITH batch AS (
        SELECT b.*
        FROM unnest(p_ids, p_streams, p_types, p_data, p_metadata, p_correlation,
                    p_causation, p_units)
             WITH ORDINALITY AS b(id, stream_id, type, data, metadata, correlation_id,
                                  causation_id, unit, ord)
        WHERE b.unit <> ALL (failed_units)
    ), inserted AS (
        INSERT INTO foundation_events
            (id, stream_id, stream_version, type, data, metadata, correlation_id,
             causation_id, recorded_at)
        SELECT b.id, b.stream_id, versions[b.ord::integer], b.type, b.data::jsonb,
               b.metadata::jsonb, b.correlation_id, b.causation_id, p_recorded_at
        FROM batch b
        ORDER BY b.ord
        RETURNING foundation_events.id, foundation_events.position,
                  foundation_events.stream_version
    )
    SELECT b.ord::integer, i.position, i.stream_version, NULL::bigint, tail_before
    FROM inserted i JOIN batch b ON b.id = i.id
    UNION ALL
    SELECT f.ord, NULL::bigint, NULL::bigint, f.actual, tail_before
    FROM unnest(failed_ords, failed_actuals) AS f(ord, actual);
    SELECT max(e.position) INTO last_position FROM foundation_events e;
    IF last_position IS DISTINCT FROM tail_before THEN
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
