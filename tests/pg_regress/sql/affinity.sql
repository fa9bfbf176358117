-- The affinity aggregate: user-item affinity with per-event weights and recency decay, usable
-- directly in SQL, parallel safe (partial aggregates in parallel workers, combined in the leader).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_audience;

CREATE TABLE ev (user_id int, item text, w float8, t timestamptz);
INSERT INTO ev VALUES
  (1, 'a', 1, '2024-01-31'), (1, 'a', 1, '2024-01-24'),  -- a week apart: 1 + 0.5 with a 7-day half-life
  (1, 'b', 5, '2024-01-31'),
  (2, 'a', 2, '2024-01-17'),                             -- two half-lives old: 2 * 0.25
  (2, 'c', -1, '2024-01-31'), (2, 'c', 3, '2024-01-31'), -- a negative event (a return) reduces affinity
  (3, 'd', 1, '2024-01-31'), (3, 'd', -2, '2024-01-31'), -- affinity <= 0 is dropped
  (NULL, 'a', 1, '2024-01-31'), (4, NULL, 1, '2024-01-31'), (5, 'a', 1, NULL);  -- skipped rows

-- Reference time NULL = the latest event time; half-life NULL = no decay.
SELECT jsonb_pretty(audience.affinity(user_id::text, item, w, t, '7 days', NULL)) FROM ev;
SELECT audience.affinity(user_id::text, item, w, t, NULL, NULL) FROM ev;
-- An explicit reference time; events after it count as if at the reference time.
SELECT audience.affinity(user_id::text, item, w, t, '7 days', '2024-01-24') FROM ev;
-- Per user with GROUP BY.
SELECT user_id, audience.affinity(user_id::text, item, w, t, '7 days', '2024-01-31') FROM ev
 WHERE user_id IS NOT NULL GROUP BY user_id ORDER BY user_id;
-- No rows: an empty object.
SELECT audience.affinity(user_id::text, item, w, t, NULL, NULL) FROM ev WHERE false;

-- Parallel plan: partial aggregates in workers, combined with the combine function.
CREATE TABLE big AS
SELECT (g % 997)::text AS u, (g % 101)::text AS i, 1 + (g % 3) AS w,
       '2024-01-01'::timestamptz + (g % 1000) * interval '1 hour' AS t
  FROM generate_series(1, 200000) g;
ANALYZE big;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET min_parallel_table_scan_size = 0;
SET max_parallel_workers_per_gather = 2;
EXPLAIN (COSTS OFF) SELECT audience.affinity(u, i, w, t, '3 days', NULL) FROM big;
CREATE TEMP TABLE parallel_result AS SELECT audience.affinity(u, i, w, t, '3 days', NULL) AS a FROM big;
SET max_parallel_workers_per_gather = 0;
EXPLAIN (COSTS OFF) SELECT audience.affinity(u, i, w, t, '3 days', NULL) FROM big;
CREATE TEMP TABLE serial_result AS SELECT audience.affinity(u, i, w, t, '3 days', NULL) AS a FROM big;
SELECT (SELECT a FROM parallel_result) = (SELECT a FROM serial_result) AS parallel_equals_serial,
       (SELECT count(*) FROM jsonb_object_keys((SELECT a FROM serial_result))) AS users;
-- The leader's own partial state stays in its backend on the way to the combine step (16 bytes
-- stand for it): the same result with the leader alone (no worker launched), and grouped, where
-- the leader keeps one partial state per group until the finalize step takes it.
SET max_parallel_workers_per_gather = 2;
SET max_parallel_workers = 0;
CREATE TEMP TABLE leader_alone AS SELECT audience.affinity(u, i, w, t, '3 days', NULL) AS a FROM big;
RESET max_parallel_workers;
SELECT (SELECT a FROM leader_alone) = (SELECT a FROM serial_result) AS leader_alone_equals_serial;
CREATE FUNCTION pg_temp.plan_has(q text, pattern text) RETURNS bool LANGUAGE plpgsql AS $$
DECLARE
    line text;
BEGIN
    FOR line IN EXECUTE 'EXPLAIN (COSTS OFF) ' || q LOOP
        IF line LIKE pattern THEN
            RETURN true;
        END IF;
    END LOOP;
    RETURN false;
END
$$;
SELECT pg_temp.plan_has('SELECT u, audience.affinity(u, i, w, t, ''3 days'', NULL) FROM big GROUP BY u',
                        '%Partial%Aggregate%') AS grouped_plan_is_partial;
CREATE TEMP TABLE parallel_groups AS
SELECT u, audience.affinity(u, i, w, t, '3 days', NULL) AS a FROM big GROUP BY u;
SET max_parallel_workers_per_gather = 0;
CREATE TEMP TABLE serial_groups AS
SELECT u, audience.affinity(u, i, w, t, '3 days', NULL) AS a FROM big GROUP BY u;
SELECT count(*) AS groups, count(*) FILTER (WHERE p.a = s.a) AS equal
  FROM parallel_groups p JOIN serial_groups s USING (u);
RESET max_parallel_workers_per_gather;
-- Parallel workers hand partial states of 1 MB or more to the leader in files under
-- base/pgsql_tmp, which the leader removes as it reads them: none is left.
SELECT count(*) AS handoff_files_left FROM pg_ls_tmpdir() WHERE name LIKE 'pgsql\_tmp\_pga\_%';

DROP TABLE ev, big;
