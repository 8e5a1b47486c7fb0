"""One statement per store on PostgreSQL: ``foundation_append_events``.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28

A store used to be five round trips (BEGIN, the writers' lock, INSERT, NOTIFY, COMMIT).
This function does the same work inside the server, so a store is one statement in its
own implicit transaction: it takes the events writers' lock
(``foundation.events._store.EVENTS_LOCK_KEY``, positions keep following commit order),
checks every expected version of a unit before writing any of its events, appends, and
announces the last position on the ``foundation`` channel, with ``p_writer`` (the
writing instance's token, so that it can skip re-reading what it just wrote).

The events arrive as one JSON array (``u``: unit, ``id``, ``s``: stream, ``e``: expected
version, ``t``: type, ``d``: data, ``m``: metadata, ``c``: correlation id, ``k``:
causation id): the client splices each event's JSON, already encoded, into it, and the
server parses it once (a driver adapting ten Python lists to arrays cost more than the
insert). ``u`` groups events into units, each all or nothing on its own (one caller's
``store_many``), so one call can carry the stores of many callers at once (group commit:
one lock, one commit, one WAL flush). Expected versions are checked unit by unit first
(a loop, only when some event has a stream); a unit that fails writes nothing and comes
back as a single row naming the event and the stream's actual version, the other units
are unaffected. Then one ``INSERT … SELECT`` appends everything else: each PL/pgSQL
statement is a round of the executor, so the plain case (events outside streams) runs a
handful of them, whatever the number of events. Ids already in the log are checked by
the caller before the call (their content is compared in Python); one that arrives
meanwhile fails the whole call with a unique violation, and the caller retries.

SQLite has no stored functions; there a store is a single INSERT (or a short
``BEGIN IMMEDIATE`` transaction for several events) issued by the library itself.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# foundation.events._store.EVENTS_LOCK_KEY ("FdnEvts"); a migration never imports the app.
EVENTS_LOCK_KEY = 0x46646E45767473

APPEND_FUNCTION = f"""
CREATE FUNCTION foundation_append_events(
    p_events jsonb, p_recorded_at timestamptz, p_writer text)
RETURNS TABLE (o_ord integer, o_position bigint, o_version bigint, o_actual bigint,
               o_tail bigint)
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    versions bigint[];
    failed_units integer[] := '{{}}';
    failed_ords integer[] := '{{}}';
    failed_actuals bigint[] := '{{}}';
    unit integer;
    failed boolean := false;
    cur bigint;
    done jsonb := '{{}}';  -- stream -> its version after the units that passed
    pending jsonb;          -- the same, with the unit being checked
    ignored text;
BEGIN
    -- Serialize writers before any position is allocated (see events/_store.py). An
    -- assignment, not PERFORM: PL/pgSQL evaluates it without a round of the executor.
    ignored := pg_advisory_xact_lock({EVENTS_LOCK_KEY})::text;
    -- Stream versions and expected-version checks, unit by unit: a unit that fails
    -- is left out whole. Events outside streams need none of this.
    IF p_events @? '$[*] ? (@.s != null)' THEN
        versions := array_fill(NULL::bigint, ARRAY[jsonb_array_length(p_events)]);
        FOR r IN
            SELECT x.u, x.s, x.e, x.ord::integer AS ord
            FROM ROWS FROM (jsonb_to_recordset(p_events) AS (u integer, s text, e text))
                 WITH ORDINALITY AS x(u, s, e, ord)
        LOOP
            IF unit IS DISTINCT FROM r.u THEN  -- a new unit starts
                IF NOT failed AND pending IS NOT NULL THEN
                    done := pending;
                END IF;
                unit := r.u;
                pending := done;
                failed := false;
            END IF;
            CONTINUE WHEN failed OR r.s IS NULL;
            IF pending ? r.s THEN
                cur := (pending ->> r.s)::bigint;
            ELSE
                SELECT coalesce(max(e.stream_version), 0) INTO cur
                FROM foundation_events e WHERE e.stream_id = r.s;
            END IF;
            IF r.e = 'any'
               OR (r.e = 'no_stream' AND cur = 0)
               OR (r.e = 'exists' AND cur > 0)
               OR (r.e ~ '^[0-9]+$' AND r.e::bigint = cur) THEN
                versions[r.ord] := cur + 1;
                pending := jsonb_set(pending, ARRAY[r.s], to_jsonb(cur + 1));
            ELSE
                failed := true;
                failed_units := failed_units || r.u;
                failed_ords := failed_ords || r.ord;
                failed_actuals := failed_actuals || cur;
            END IF;
        END LOOP;
    END IF;
    -- One statement appends every event of every unit that passed, in argument order
    -- (the ORDER BY makes positions follow it), reads the tail before them (a statement
    -- does not see its own inserts) and notifies (delivered at commit only, so a woken
    -- subscriber finds the events there).
    RETURN QUERY
    WITH batch AS (
        SELECT x.*
        FROM ROWS FROM (jsonb_to_recordset(p_events) AS (
                 u integer, id text, s text, t text, d jsonb, m jsonb, c text, k text))
             WITH ORDINALITY AS x(u, id, s, t, d, m, c, k, ord)
        WHERE x.u <> ALL (failed_units)
    ), inserted AS (
        INSERT INTO foundation_events
            (id, stream_id, stream_version, type, data, metadata, correlation_id,
             causation_id, recorded_at)
        -- A JSON null comes out of jsonb_to_recordset as SQL NULL: put it back.
        SELECT b.id, b.s, versions[b.ord::integer], b.t, coalesce(b.d, 'null'::jsonb), b.m,
               b.c, b.k, p_recorded_at
        FROM batch b
        ORDER BY b.ord
        RETURNING foundation_events.id, foundation_events.position,
                  foundation_events.stream_version
    ), tail AS (
        SELECT max(e.position) AS position FROM foundation_events e
    ), notified AS (
        SELECT pg_notify('foundation', json_build_object(
                   'topic', 'events', 'position', max(i.position), 'writer', p_writer)::text)
        FROM inserted i
        HAVING count(*) > 0
    )
    SELECT b.ord::integer, i.position, i.stream_version, NULL::bigint, t.position
    FROM inserted i JOIN batch b ON b.id = i.id
         CROSS JOIN tail t
         CROSS JOIN (SELECT count(*) FROM notified) AS sent
    UNION ALL
    SELECT f.ord, NULL::bigint, NULL::bigint, f.actual, t.position
    FROM unnest(failed_ords, failed_actuals) AS f(ord, actual) CROSS JOIN tail t;
END
$$
"""  # noqa: S608 (constants only, no input)


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(APPEND_FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION foundation_append_events(jsonb, timestamptz, text)")
