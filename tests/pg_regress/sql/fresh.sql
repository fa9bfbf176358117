-- Fresh audiences between builds: events newer than the model's latest event count at query time
-- (audience.set_fresh_events), and a guarded build activates its model only when it is not worse
-- than the active one (build(..., guard => true), audience.activate).
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_audience;
SET audience.threads = 1;
CREATE SCHEMA f;
CREATE TABLE f.buys (user_id text, sku text, brand text, ts timestamptz);
-- The index that keeps reading the new events a range scan.
CREATE INDEX ON f.buys (ts);
-- u01-u20 buy brand A, u21-u40 brand B, every few days over January.
INSERT INTO f.buys
SELECT pg_catalog.format('u%s', pg_catalog.lpad(u::text, 2, '0')), pg_catalog.format('%s-%s', b, (u + k) % 6), b,
       '2024-01-01'::timestamptz + (u + 70 * k) * interval '1 hour'
  FROM generate_series(1, 40) u, generate_series(1, 8) k,
       LATERAL (SELECT CASE WHEN u <= 20 THEN 'A' ELSE 'B' END AS b) x;
SELECT audience.create_catalog('fresh') IS NOT NULL AS ok;
SELECT audience.add_event('fresh', 'f.buys', 'sku', event_time => 'ts') IS NOT NULL AS ok;
SELECT audience.map_property('fresh', 'brand', column_name => 'brand');
-- The score is the user's own distinct days with the brand (the analyst's SQL), so a score read
-- between builds can be checked against a rebuild.
SELECT users, items FROM audience.build('fresh', factors => 0, neighbours => 0, prior => 0,
                                        activity_exp => 1, days_exp => 0, own => 'days', tune => false);

-- A source altered since the build: the read of its new events cannot be made, so the snapshot
-- is served, with a NOTICE that says why (not an error).
ALTER TABLE f.buys RENAME COLUMN ts TO bought_at;
\c
SET client_min_messages = notice;
SELECT count(*) AS served_after_a_rename FROM audience.recommend_audience('brand', 'A', 100, 'fresh');
SET client_min_messages = warning;
ALTER TABLE f.buys RENAME COLUMN bought_at TO ts;
SET audience.threads = 1;

-- 1. A user whose first events arrive after the build is in the audience without a rebuild.
SELECT count(*) AS before FROM audience.recommend_audience('brand', 'A', 100, 'fresh') WHERE user_id = 'newbie';
INSERT INTO f.buys SELECT 'newbie', 'A-' || k, 'A', '2024-02-10'::timestamptz + k * interval '1 day' FROM generate_series(0, 4) k;
-- u21 (a B buyer) buys A on three new days; u01 buys A again on a day it already had.
INSERT INTO f.buys SELECT 'u21', 'A-1', 'A', '2024-02-11'::timestamptz + k * interval '1 day' FROM generate_series(0, 2) k;
INSERT INTO f.buys SELECT 'u01', 'A-2', 'A', ts + interval '1 minute' FROM f.buys WHERE user_id = 'u01' ORDER BY ts DESC LIMIT 1;
CREATE TEMP TABLE between_builds AS
SELECT user_id, score, rank FROM audience.recommend_audience('brand', 'A', 100, 'fresh');
SELECT user_id, score, rank FROM between_builds WHERE user_id IN ('newbie', 'u21', 'u01') ORDER BY user_id;
-- The audience holds the 22 users with A; percentiles count all 41 users, the new one too.
SELECT count(*) AS users, max(percentile) FILTER (WHERE user_id = 'newbie') < 100 AS newbie_percentile
  FROM audience.recommend_audience('brand', 'A', 100, 'fresh');
-- Sizes, cross-sell and look-back see the new events too: u21 engaged with A now.
SELECT pct, users, engaged_before FROM audience.audience_size('brand', 'A', ARRAY[100], 'fresh');
SELECT count(*) FILTER (WHERE user_id = 'u21') AS u21_cross_sell
  FROM audience.recommend_audience('brand', 'A', 100, 'fresh', exclude_engaged => true);
-- A rebuild gives every user the score they had between builds.
SELECT users FROM audience.build('fresh');
SELECT count(*) AS users, count(*) FILTER (WHERE b.score = a.score) AS same_score
  FROM between_builds b JOIN audience.recommend_audience('brand', 'A', 100, 'fresh') a USING (user_id);

-- 2. Off, and the bound: past max_rows new rows the snapshot is served with a NOTICE.
INSERT INTO f.buys SELECT 'late', 'B-' || k, 'B', '2024-02-20'::timestamptz + k * interval '1 hour' FROM generate_series(0, 5) k;
SELECT * FROM audience.set_fresh_events('fresh', 'off');
SELECT count(*) AS late_when_off FROM audience.recommend_audience('brand', 'B', 100, 'fresh') WHERE user_id = 'late';
SELECT * FROM audience.set_fresh_events('fresh', 'on', max_rows => 5);
SET client_min_messages = notice;
SELECT count(*) AS late_past_max_rows FROM audience.recommend_audience('brand', 'B', 100, 'fresh') WHERE user_id = 'late';
SET client_min_messages = warning;
SELECT * FROM audience.set_fresh_events('fresh', 'auto', max_rows => 1000);
SELECT count(*) AS late_in_auto FROM audience.recommend_audience('brand', 'B', 100, 'fresh') WHERE user_id = 'late';
-- Saved audiences refresh with them.
SELECT members FROM audience.save_audience('b fans', 'brand', 'B', 100, 'fresh');
SELECT count(*) AS late_saved FROM audience.audience_members m JOIN audience.saved_audiences s USING (audience_id)
 WHERE s.name = 'b fans' AND m.user_id = 'late';

-- 3. The deploy guard: nothing to compare (no events after the active model's latest day) ->
-- activated, and the report says why.
SELECT users, guard->>'activated' AS activated, guard->>'reason' AS reason FROM audience.build('fresh', guard => true);
-- The setting is remembered: the next build is guarded too (its report is stored).
CREATE TEMP TABLE guarded AS SELECT model_id, guard FROM audience.build('fresh');
SELECT g.guard IS NOT NULL AS guard_reported, m.guard = g.guard AS guard_stored
  FROM guarded g JOIN audience.models m USING (model_id);
SELECT users FROM audience.build('fresh', guard => false);

-- 4. audience.activate: the scenario test scripts/tests/guard.sh activates a refused model; here,
-- the active one (nothing changes) and the errors.
SELECT catalog, active_model_id = previous_model_id AS unchanged
  FROM audience.activate((SELECT active_model_id FROM audience.catalogs WHERE name = 'fresh'));
SELECT count(*) AS models_kept FROM audience.models m JOIN audience.catalogs c USING (catalog_id) WHERE c.name = 'fresh';

-- 5. In 'auto' mode a source the read would scan from end to end (no index on its time column)
-- past 100,000 rows is not read at query time: the snapshot is served, with a NOTICE naming the
-- table (once per model and session); in 'on' mode it is read, with a WARNING.
CREATE TABLE f.views (user_id text, sku text, ts timestamptz);
INSERT INTO f.views
SELECT 'v' || (g % 500), 'A-' || (g % 6), '2024-01-01'::timestamptz + (g % 1000) * interval '1 minute'
  FROM generate_series(1, 120000) g;
ANALYZE f.views;
SELECT audience.add_event('fresh', 'f.views', 'sku', event_time => 'ts', weight => 0.5) IS NOT NULL AS ok;
SELECT users FROM audience.build('fresh', guard => false);
SET client_min_messages = notice;
SELECT count(*) > 0 AS served FROM audience.recommend_audience('brand', 'A', 100, 'fresh');
SELECT count(*) > 0 AS served_again FROM audience.recommend_audience('brand', 'A', 100, 'fresh');
SELECT * FROM audience.set_fresh_events('fresh', 'on', max_rows => 1000);
SELECT count(*) > 0 AS served_on FROM audience.recommend_audience('brand', 'A', 100, 'fresh');
SET client_min_messages = warning;
-- The build made the same check and kept what it found with the sources' indexes and the row
-- budget: a new session skips such a read without planning it (so even after the table shrank
-- below the threshold) until the indexes or the budget change; the next build checks again.
SELECT m.stats -> 'fresh_check' ->> 'scan' AS the_build_found
  FROM audience.models m JOIN audience.catalogs c ON c.active_model_id = m.model_id WHERE c.name = 'fresh';
SELECT mode FROM audience.set_fresh_events('fresh', 'auto', max_rows => 1000);
DELETE FROM f.views WHERE user_id IN (SELECT 'v' || g FROM generate_series(0, 149) g);
ANALYZE f.views;
\c
SET client_min_messages = notice;
SELECT count(*) > 0 AS served_new_session FROM audience.recommend_audience('brand', 'A', 100, 'fresh');
CREATE INDEX f_views_ts ON f.views (ts);
\c
SET client_min_messages = notice;
SELECT count(*) > 0 AS served_with_index FROM audience.recommend_audience('brand', 'A', 100, 'fresh');
SET client_min_messages = warning;
-- With the index the build finds no large scan, and keeps that answer too: until the indexes
-- change, a new session reads without planning the read first (shown with index scans turned
-- off, which would make the plan scan all of f.views: no NOTICE); then it plans again.
INSERT INTO f.views
SELECT 'v' || (g % 500), 'A-' || (g % 6), '2024-01-01'::timestamptz + (g % 1000) * interval '1 minute'
  FROM generate_series(1, 60000) g;
ANALYZE f.views;
SELECT users FROM audience.build('fresh', guard => false);
SELECT m.stats -> 'fresh_check' ->> 'scan' IS NULL AS no_large_scan,
       m.stats -> 'fresh_check' ? 'fingerprint' AS with_the_indexes
  FROM audience.models m JOIN audience.catalogs c ON c.active_model_id = m.model_id WHERE c.name = 'fresh';
\c
SET client_min_messages = notice;
SET enable_indexscan = off;
SET enable_bitmapscan = off;
SELECT count(*) > 0 AS served_as_the_build_planned FROM audience.recommend_audience('brand', 'A', 100, 'fresh');
DROP INDEX f.f_views_ts;
\c
SET client_min_messages = notice;
SELECT count(*) > 0 AS served_planned_again FROM audience.recommend_audience('brand', 'A', 100, 'fresh');
SET client_min_messages = warning;

\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT * FROM audience.set_fresh_events('fresh', 'sometimes');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.set_fresh_events('fresh', 'on', max_rows => -1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.set_fresh_events('nope');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.activate(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.activate(-1);
\echo :LAST_ERROR_SQLSTATE

SELECT audience.drop_catalog('fresh');
DROP SCHEMA f CASCADE;
