-- The SQLite dialect of the store's queries. postgres.sql has the same names.
-- Named parameters (:name); a query ignores the ones it does not use.

-- name: events_after
SELECT id, time, event, user_id, stable_id, value, metadata, exposure, group_name,
    json_extract(payload, '$.user.customIDs')
FROM events WHERE id > :edge ORDER BY id LIMIT :limit

-- name: events_before
SELECT id, time, event, user_id, stable_id, value, metadata, exposure, group_name,
    json_extract(payload, '$.user.customIDs')
FROM events WHERE id < :edge ORDER BY id DESC LIMIT :limit

-- name: count
SELECT count(*) FROM events

-- name: meta_get
SELECT value FROM meta WHERE key = :key

-- name: meta_set
INSERT INTO meta (key, value) VALUES (:key, :value)
ON CONFLICT (key) DO UPDATE SET value = excluded.value

-- name: meta_init
INSERT INTO meta (key, value) VALUES (:key, :value) ON CONFLICT (key) DO NOTHING

-- name: bump
INSERT INTO meta (key, value) VALUES (:key, :by)
ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + excluded.value

-- name: clear_meta
UPDATE OR FAIL meta SET value = '' WHERE key = :key AND value <> ''

-- name: counters
SELECT key, value FROM meta WHERE key LIKE 'delivery.%'

-- Leases expire on the one host's clock (:now, unix seconds). Queries say
-- `delivery = 0` literally so SQLite uses the partial index of pending rows.
-- Updates say OR FAIL, as the insert does (see _INSERT in sqlite.py): each runs
-- in a transaction that a failure rolls back whole, so SQLite need not keep a
-- statement journal to undo it alone (a sixth fewer write calls a delivered
-- event, measured).

-- name: any_claimable
SELECT 1 FROM events
WHERE delivery = 0 AND (lease_until IS NULL OR lease_until < :now) LIMIT 1

-- name: claim
UPDATE OR FAIL events
SET lease_owner = :owner, lease_until = :now + :lease,
    attempts = attempts + (lease_until IS NOT NULL)  -- an expired lease may have been sent
WHERE id IN (
    SELECT id FROM events
    WHERE delivery = 0 AND (lease_until IS NULL OR lease_until < :now)
    ORDER BY id LIMIT :limit)
RETURNING id, time, payload, attempts

-- name: drop_expired
UPDATE OR FAIL events SET delivery = 3, lease_owner = NULL, lease_until = NULL
WHERE id BETWEEN :first AND :last AND delivery = 0 AND lease_owner = :owner
  AND time < :cutoff

-- name: settle
UPDATE OR FAIL events SET delivery = :state, lease_owner = NULL, lease_until = NULL
WHERE id BETWEEN :first AND :last AND delivery = 0 AND lease_owner = :owner

-- name: release
UPDATE OR FAIL events SET lease_owner = NULL, lease_until = NULL, attempts = attempts + :failed
WHERE id BETWEEN :first AND :last AND delivery = 0 AND lease_owner = :owner

-- A live sender keeps its lease (the heartbeat, events/leases.py).
-- name: renew
UPDATE OR FAIL events SET lease_until = :now + :lease
WHERE id BETWEEN :first AND :last AND delivery = 0 AND lease_owner = :owner

-- name: lease_owners
SELECT DISTINCT lease_owner FROM events WHERE delivery = 0 AND lease_owner IS NOT NULL

-- name: release_owner
UPDATE OR FAIL events SET lease_owner = NULL, lease_until = NULL, attempts = attempts + 1
WHERE delivery = 0 AND lease_owner = :owner

-- name: claimable
SELECT count(*) FROM events
WHERE delivery = 0 AND (lease_until IS NULL OR lease_until < :now)

-- name: backlog
SELECT count(*), min(time) FROM events WHERE delivery = 0

-- name: oldest_parked
SELECT min(time) FROM events WHERE delivery = 2

-- name: unpark
UPDATE OR FAIL events SET delivery = 0, lease_owner = NULL, lease_until = NULL
WHERE delivery = 2

-- name: newest_time
SELECT max(time) FROM events

-- An experiment's start record (results/lock.py), in one statement so writers
-- in several processes cannot interleave a read and a write. A new experiment
-- inserts its record; an existing one is rewritten only when
-- - the spec says restart and the definition changed (or allocation shrank):
--   a new window starts, keeping the original start time and counting restarts;
-- - the spec says restart and added or changed the targeting gate (a record
--   made before the gate was kept has no $.targeting_gate: not compared);
-- - allocation grew: only the high-water mark moves.
-- Otherwise the row is left alone, which makes the call idempotent.
-- name: record_start
INSERT INTO meta (key, value) VALUES (:key, :value)
ON CONFLICT (key) DO UPDATE SET value = CASE
    WHEN :restart AND (
        json_extract(meta.value, '$.fingerprint') != :fingerprint
        OR coalesce(json_extract(meta.value, '$.allocation'), 0) > :allocation
        OR (:targeting_gate IS NOT NULL AND json_type(meta.value, '$.targeting_gate') IS NOT NULL
            AND coalesce(json_extract(meta.value, '$.targeting_gate'), '') != :targeting_gate))
    THEN json_set(
        excluded.value,
        '$.started', json_extract(meta.value, '$.started'),
        '$.restarts', coalesce(json_extract(meta.value, '$.restarts'), 0) + 1)
    ELSE json_set(meta.value, '$.allocation', :allocation)
  END
WHERE (:restart AND (
        json_extract(meta.value, '$.fingerprint') != :fingerprint
        OR coalesce(json_extract(meta.value, '$.allocation'), 0) > :allocation
        OR (:targeting_gate IS NOT NULL AND json_type(meta.value, '$.targeting_gate') IS NOT NULL
            AND coalesce(json_extract(meta.value, '$.targeting_gate'), '') != :targeting_gate)))
   OR (json_extract(meta.value, '$.fingerprint') = :fingerprint
        AND coalesce(json_extract(meta.value, '$.allocation'), 0) < :allocation)

-- Experiments with a start record (flagware reset lists them).
-- name: started_experiments
SELECT substr(key, 12) FROM meta WHERE key LIKE 'experiment:%' ORDER BY key

-- name: meta_delete
DELETE FROM meta WHERE key = :key
