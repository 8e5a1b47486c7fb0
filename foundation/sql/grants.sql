-- Foundation on PostgreSQL: the least privileges its runtime needs.
--
-- Run as the role that owns the Foundation tables (the one that ran `foundation db
-- upgrade`), after every upgrade. Replace foundation_app with your application's role
-- (created beforehand: CREATE ROLE foundation_app LOGIN PASSWORD '...'), as a whole word:
-- foundation_append_events keeps its name (sed 's/\bfoundation_app\b/myrole/g'). With the
-- postgres_schema setting, also replace public below with that schema, and run the
-- script with that schema first in the search path (the names below are unqualified):
--   PGOPTIONS='-c search_path=myschema' psql ... -f grants.sql
-- The role gets no DDL and can neither rewrite nor erase the event log or the config
-- history.

-- No DDL: USAGE lets the role see the schema, not create in it. (PostgreSQL 15 and
-- later give PUBLIC no CREATE on the schema public; on older servers also run
-- REVOKE CREATE ON SCHEMA public FROM PUBLIC;)
GRANT USAGE ON SCHEMA public TO foundation_app;

-- Read only: the schema revision the runtime checks on start.
GRANT SELECT ON foundation_alembic_version TO foundation_app;

-- Append only: the event log, and the config history its trigger writes. No UPDATE,
-- DELETE or TRUNCATE (the triggers refuse those too, but here the database refuses
-- them before any trigger runs). The sequences hand out positions and history ids:
-- an event's position is the sequence's alone (a row given one past the sequence hid
-- every later event from the readers that follow positions), so every column but it.
GRANT SELECT ON foundation_events, foundation_config_history TO foundation_app;
GRANT INSERT (id, stream_id, stream_version, type, data, metadata, correlation_id,
              causation_id, recorded_at) ON foundation_events TO foundation_app;
GRANT INSERT ON foundation_config_history TO foundation_app;
GRANT USAGE ON SEQUENCE foundation_events_position_seq, foundation_config_history_id_seq
    TO foundation_app;
-- Group members' revisions (0019's trigger takes them from it on every write).
GRANT USAGE ON SEQUENCE foundation_registry_members_revision_seq TO foundation_app;

-- State the runtime keeps current: rows are added, changed and removed.
GRANT SELECT, INSERT, UPDATE, DELETE ON
    foundation_config,
    foundation_subscriptions,
    foundation_leases,
    foundation_registry,
    foundation_registry_members,
    foundation_breakers,
    foundation_rate_limits
    TO foundation_app;

-- The audit views (an auditor's role needs only this line and USAGE on the schema).
GRANT SELECT ON foundation_audit_events, foundation_audit_config, foundation_audit_registry,
    foundation_audit_registry_members TO foundation_app;

-- Nothing on foundation_topic_revisions: it carries SQLite's change feed and is not used
-- on PostgreSQL (the feed there is LISTEN/NOTIFY).

-- The functions the runtime's statements call (PostgreSQL lets PUBLIC execute any
-- function unless revoked; triggers run theirs as the owner set them up and need no grant).
GRANT EXECUTE ON FUNCTION foundation_lease_live(text, bigint) TO foundation_app;
GRANT EXECUTE ON FUNCTION foundation_append_events(jsonb, timestamptz, text, boolean)
    TO foundation_app;
