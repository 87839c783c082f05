-- The PostgreSQL dialect of the store's queries. sqlite.sql has the same names.
-- Named parameters (%(name)s); a query ignores the ones it does not use. Every
-- connection's search_path is the flagware schema, so tables are unqualified.

-- Whether the store is there as this version makes it: then opening it runs
-- no DDL, which needs CREATE on the schema (or on the database, for the
-- schema) even when every object exists already.
-- name: schema_current
SELECT to_regclass('flagware.meta') IS NOT NULL
   AND to_regclass('flagware.events_pending') IS NOT NULL
   AND to_regclass('flagware.events_non_numeric') IS NOT NULL
   AND to_regclass('flagware.events_by_user') IS NOT NULL
   AND to_regclass('flagware.events_by_exposure') IS NOT NULL
   AND to_regclass('flagware.events_by_name') IS NULL

-- name: schema_exists
SELECT to_regnamespace('flagware') IS NOT NULL

-- name: create_schema
CREATE SCHEMA flagware

-- name: schema
CREATE TABLE IF NOT EXISTS flagware.events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    time        bigint NOT NULL,   -- ms since the epoch, when logged
    event       text   NOT NULL,   -- name; exposures keep statsig::... names
    user_id     text,
    stable_id   text,
    value       text,              -- JSON of the value, or NULL
    value_num   double precision,  -- the value when numeric, for sums and means
    metadata    text,              -- JSON object, or NULL
    exposure    text,              -- exposures: gate or config name
    group_name  text,              -- experiment exposures: the group
    payload     text   NOT NULL,   -- the event exactly as Statsig's wire format carries it
    delivery    smallint,          -- NULL local only; 0 pending; 1 delivered; 2 parked; 3 dropped
    lease_owner text,              -- host/pid/nonce/batch of the process sending the row
    lease_until timestamptz,       -- the database's clock: hosts' clocks need not agree
    attempts    integer NOT NULL DEFAULT 0  -- sends so far that may have failed
);
CREATE INDEX IF NOT EXISTS events_by_exposure ON flagware.events (exposure, group_name)
    WHERE exposure IS NOT NULL;
-- Metric events in the order results read them (sqlite.py's schema says why).
CREATE INDEX IF NOT EXISTS events_by_user
    ON flagware.events (event, user_id, time, value_num, exposure)
    WHERE exposure IS NULL;
DROP INDEX IF EXISTS flagware.events_by_name;  -- replaced by events_by_user
-- Values that are not numbers (sums count them as 0, and results say how many).
CREATE INDEX IF NOT EXISTS events_non_numeric ON flagware.events (event)
    WHERE value IS NOT NULL AND value_num IS NULL;
CREATE INDEX IF NOT EXISTS events_pending ON flagware.events (id) WHERE delivery = 0;
CREATE TABLE IF NOT EXISTS flagware.meta (key text PRIMARY KEY, value text NOT NULL);

-- name: exists
SELECT to_regclass('flagware.events') IS NOT NULL

-- name: events_after
SELECT id, time, event, user_id, stable_id, value, metadata, exposure, group_name,
    (payload::json #>> '{user,customIDs}')
FROM events WHERE id > %(edge)s ORDER BY id LIMIT %(limit)s

-- name: events_before
SELECT id, time, event, user_id, stable_id, value, metadata, exposure, group_name,
    (payload::json #>> '{user,customIDs}')
FROM events WHERE id < %(edge)s ORDER BY id DESC LIMIT %(limit)s

-- name: count
SELECT count(*) FROM events

-- name: meta_get
SELECT value FROM meta WHERE key = %(key)s

-- name: meta_set
INSERT INTO meta (key, value) VALUES (%(key)s, %(value)s)
ON CONFLICT (key) DO UPDATE SET value = excluded.value

-- name: meta_init
INSERT INTO meta (key, value) VALUES (%(key)s, %(value)s) ON CONFLICT (key) DO NOTHING

-- name: bump
INSERT INTO meta (key, value) VALUES (%(key)s, %(by)s::text)
ON CONFLICT (key) DO UPDATE SET value = (meta.value::bigint + excluded.value::bigint)::text

-- name: clear_meta
UPDATE meta SET value = '' WHERE key = %(key)s AND value <> ''

-- name: counters
SELECT key, value FROM meta WHERE key LIKE 'delivery.%%'

-- Leases expire on the database's clock (now()), whatever the senders' clocks say.

-- name: any_claimable
SELECT 1 FROM events
WHERE delivery = 0 AND (lease_until IS NULL OR lease_until < now()) LIMIT 1

-- name: claim
-- SKIP LOCKED: concurrent senders on any number of hosts take disjoint rows
-- without waiting for each other.
WITH candidate AS (
    SELECT id FROM events
    WHERE delivery = 0 AND (lease_until IS NULL OR lease_until < now())
    ORDER BY id LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE events AS e
SET lease_owner = %(owner)s,
    lease_until = now() + make_interval(secs => %(lease)s),
    attempts = e.attempts + (e.lease_until IS NOT NULL)::int  -- an expired lease may have been sent
FROM candidate WHERE e.id = candidate.id
RETURNING e.id, e.time, e.payload, e.attempts

-- name: drop_expired
UPDATE events SET delivery = 3, lease_owner = NULL, lease_until = NULL
WHERE id BETWEEN %(first)s AND %(last)s AND delivery = 0 AND lease_owner = %(owner)s
  AND time < %(cutoff)s

-- name: settle
UPDATE events SET delivery = %(state)s, lease_owner = NULL, lease_until = NULL
WHERE id BETWEEN %(first)s AND %(last)s AND delivery = 0 AND lease_owner = %(owner)s

-- name: release
UPDATE events SET lease_owner = NULL, lease_until = NULL, attempts = attempts + %(failed)s
WHERE id BETWEEN %(first)s AND %(last)s AND delivery = 0 AND lease_owner = %(owner)s

-- A live sender keeps its lease (the heartbeat, events/leases.py).
-- name: renew
UPDATE events SET lease_until = now() + make_interval(secs => %(lease)s)
WHERE id BETWEEN %(first)s AND %(last)s AND delivery = 0 AND lease_owner = %(owner)s

-- name: lease_owners
SELECT DISTINCT lease_owner FROM events WHERE delivery = 0 AND lease_owner IS NOT NULL

-- name: release_owner
UPDATE events SET lease_owner = NULL, lease_until = NULL, attempts = attempts + 1
WHERE delivery = 0 AND lease_owner = %(owner)s

-- name: claimable
SELECT count(*) FROM events
WHERE delivery = 0 AND (lease_until IS NULL OR lease_until < now())

-- name: backlog
SELECT count(*), min(time) FROM events WHERE delivery = 0

-- name: oldest_parked
SELECT min(time) FROM events WHERE delivery = 2

-- name: unpark
UPDATE events SET delivery = 0, lease_owner = NULL, lease_until = NULL
WHERE delivery = 2

-- name: newest_time
SELECT max(time) FROM events

-- An experiment's start record (results/lock.py); see sqlite.sql for the rules.
-- name: record_start
INSERT INTO meta AS m (key, value) VALUES (%(key)s, %(value)s)
ON CONFLICT (key) DO UPDATE SET value = CASE
    WHEN %(restart)s::int = 1 AND (
        m.value::jsonb ->> 'fingerprint' != %(fingerprint)s
        OR coalesce((m.value::jsonb ->> 'allocation')::float8, 0) > %(allocation)s
        OR (%(targeting_gate)s::text IS NOT NULL AND m.value::jsonb -> 'targeting_gate' IS NOT NULL
            AND coalesce(m.value::jsonb ->> 'targeting_gate', '') <> %(targeting_gate)s::text))
    THEN (excluded.value::jsonb || jsonb_build_object(
        'started', m.value::jsonb -> 'started',
        'restarts', coalesce((m.value::jsonb ->> 'restarts')::int, 0) + 1))::text
    ELSE jsonb_set(m.value::jsonb, '{allocation}', to_jsonb(%(allocation)s::float8))::text
  END
WHERE (%(restart)s::int = 1 AND (
        m.value::jsonb ->> 'fingerprint' != %(fingerprint)s
        OR coalesce((m.value::jsonb ->> 'allocation')::float8, 0) > %(allocation)s
        OR (%(targeting_gate)s::text IS NOT NULL AND m.value::jsonb -> 'targeting_gate' IS NOT NULL
            AND coalesce(m.value::jsonb ->> 'targeting_gate', '') <> %(targeting_gate)s::text)))
   OR (m.value::jsonb ->> 'fingerprint' = %(fingerprint)s
        AND coalesce((m.value::jsonb ->> 'allocation')::float8, 0) < %(allocation)s)

-- Experiments with a start record (flagware reset lists them).
-- name: started_experiments
SELECT substr(key, 12) FROM meta WHERE key LIKE 'experiment:%%' ORDER BY key

-- name: meta_delete
DELETE FROM meta WHERE key = %(key)s
