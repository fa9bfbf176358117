-- Incremental builds: audience.build_incremental grows the active model by the events since its
-- build (read from the sources by event time, older events are not scanned again) and activates
-- the result. Two catalogs read the same purchases: "grown" is built once and then grown,
-- "whole" is rebuilt in full; with the collaborative models off, their audiences are identical.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_audience;
SET audience.threads = 1;
CREATE SCHEMA inc;
CREATE TABLE inc.buys (user_id text, sku text, brand text, ts timestamptz);
CREATE INDEX ON inc.buys (ts);
-- January: u01-u20 buy brand A, u21-u40 brand B, every few days.
INSERT INTO inc.buys
SELECT pg_catalog.format('u%s', pg_catalog.lpad(u::text, 2, '0')), pg_catalog.format('%s-%s', b, (u + k) % 6), b,
       '2024-01-01'::timestamptz + (u + 70 * k) * interval '1 hour'
  FROM generate_series(1, 40) u, generate_series(1, 8) k,
       LATERAL (SELECT CASE WHEN u <= 20 THEN 'A' ELSE 'B' END AS b) x;
SELECT audience.create_catalog(c) IS NOT NULL AS ok FROM unnest(ARRAY['grown', 'whole']) c;
SELECT audience.add_event(c, 'inc.buys', 'sku', event_time => 'ts', half_life => '10 days') IS NOT NULL AS ok
  FROM unnest(ARRAY['grown', 'whole']) c;
SELECT count(*) FROM unnest(ARRAY['grown', 'whole']) c, audience.map_property(c, 'brand', column_name => 'brand');

-- 1. Nothing to grow before the first build.
SELECT * FROM audience.build_incremental('grown');
\echo :LAST_ERROR_SQLSTATE
SELECT users, items, pairs FROM audience.build('grown', factors => 0, neighbours => 0, prior => 0,
                                              activity_exp => 1, days_exp => 0, own => 'affinity', tune => false);

-- 2. February: known users buy again (u21 switches to A), a new user, and a new brand C.
INSERT INTO inc.buys SELECT 'u21', 'A-1', 'A', '2024-02-11'::timestamptz + k * interval '1 day' FROM generate_series(0, 2) k;
INSERT INTO inc.buys SELECT 'u01', 'A-2', 'A', '2024-02-12';
INSERT INTO inc.buys SELECT 'newbie', 'C-' || k, 'C', '2024-02-10'::timestamptz + k * interval '1 day' FROM generate_series(0, 4) k;
INSERT INTO inc.buys SELECT 'u30', 'C-0', 'C', '2024-02-13';
SELECT new_rows, users, items, pairs, new_users, new_items, model_id > base_model_id AS new_model
  FROM audience.build_incremental('grown');
-- The same knobs, all events at once.
SELECT users, items, pairs FROM audience.build('whole', factors => 0, neighbours => 0, prior => 0,
                                              activity_exp => 1, days_exp => 0, own => 'affinity', tune => false);
-- Same users, same scores (the older affinities decayed to the new latest event, the new ones
-- added), for a known brand and the new one.
SELECT b.brand, count(*) AS users,
       count(*) FILTER (WHERE g.score IS NULL OR w.score IS NULL
                           OR abs(g.score - w.score) > 1e-5 * abs(w.score)) AS differ
  FROM (VALUES ('A'), ('B'), ('C')) b(brand),
       LATERAL (SELECT * FROM audience.recommend_audience('brand', b.brand, 100, 'grown')) g
       FULL JOIN LATERAL (SELECT * FROM audience.recommend_audience('brand', b.brand, 100, 'whole')) w USING (user_id)
 GROUP BY b.brand ORDER BY b.brand;
-- Same values with the same item and user counts.
SELECT property, value, items, users FROM audience.catalog_values WHERE catalog = 'grown'
EXCEPT SELECT property, value, items, users FROM audience.catalog_values WHERE catalog = 'whole';
SELECT property, value, items, users FROM audience.catalog_values WHERE catalog = 'grown' ORDER BY value;
-- The model records what it grew from.
SELECT m.stats -> 'incremental' -> 'new_rows' AS new_rows, m.stats -> 'incremental' -> 'new_users' AS new_users,
       (m.stats -> 'incremental' ->> 'base_model_id')::bigint < m.model_id AS grown_from_older
  FROM audience.models m JOIN audience.catalogs c ON c.active_model_id = m.model_id WHERE c.name = 'grown';

-- 3. Nothing new: the active model stays (a NOTICE says so). The session's number and interval
-- formats do not matter (the registration is compared in binary form).
SET client_min_messages = notice;
SET extra_float_digits = 0;
SET IntervalStyle = 'iso_8601';
SELECT new_rows, model_id = base_model_id AS same_model FROM audience.build_incremental('grown');
RESET extra_float_digits;
RESET IntervalStyle;
SET client_min_messages = warning;

-- 4. Errors. ALS iterations out of range:
SELECT * FROM audience.build_incremental('grown', iterations => -1);
\echo :LAST_ERROR_SQLSTATE
-- A registration changed since the build (a new property mapping): a full build is due.
SELECT audience.map_property('grown', 'sku_prefix', column_name => 'brand');
SELECT * FROM audience.build_incremental('grown');
\echo :LAST_ERROR_SQLSTATE
-- Sources that decay with different half-lives: the older affinities are rescaled by one factor
-- between theirs. Catalog "whole" gains a slower source too; both are built in full, then get a
-- day of new events: "grown" by an incremental build, "whole" by a full one.
SELECT audience.add_event(c, 'inc.buys', 'sku', name => 'slow', event_time => 'ts', event_column => 'brand', event_value => 'A',
                          half_life => '40 days') IS NOT NULL AS ok FROM unnest(ARRAY['grown', 'whole']) c;
SELECT audience.unmap_property('grown', 'sku_prefix');
SELECT count(*) FROM unnest(ARRAY['grown', 'whole']) c, audience.build(c);
INSERT INTO inc.buys SELECT 'u02', 'A-3', 'A', '2024-02-15';
INSERT INTO inc.buys SELECT 'u25', 'B-3', 'B', '2024-02-15';
SELECT new_rows, users FROM audience.build_incremental('grown');
SELECT users FROM audience.build('whole');
-- A day with half-lives of 10 and 40 days: each affinity, and here each score, within
-- 2^((1/10 - 1/40) / 2) - 1 = 2.63% of the full build's.
SELECT round((m.stats -> 'incremental' ->> 'rescale_error_bound')::numeric, 4) AS bound
  FROM audience.models m JOIN audience.catalogs c ON c.active_model_id = m.model_id WHERE c.name = 'grown';
SELECT b.brand, count(*) AS users,
       count(*) FILTER (WHERE g.score IS NULL OR w.score IS NULL
                           OR abs(g.score - w.score) > 0.0264 * abs(w.score)) AS beyond_bound,
       round(max(abs(g.score / w.score - 1))::numeric, 3) AS max_error
  FROM (VALUES ('A'), ('B'), ('C')) b(brand),
       LATERAL (SELECT * FROM audience.recommend_audience('brand', b.brand, 100, 'grown')) g
       FULL JOIN LATERAL (SELECT * FROM audience.recommend_audience('brand', b.brand, 100, 'whole')) w USING (user_id)
 GROUP BY b.brand ORDER BY b.brand;
-- Three weeks on, the bound passes 5%: the incremental build warns that a full build is due.
INSERT INTO inc.buys SELECT 'u03', 'A-3', 'A', '2024-03-07';
SET client_min_messages = warning;
SELECT new_rows FROM audience.build_incremental('grown');
-- A user forgotten without a rebuild: the stored models still hold them, and an incremental
-- build would keep them, so it refuses until a full build.
SET client_min_messages = error;
SELECT source, rows_deleted, status FROM audience.forget_user('u05', rebuild => false) WHERE catalog = 'grown';
SET client_min_messages = warning;
SELECT * FROM audience.build_incremental('grown');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS u05_rows FROM inc.buys WHERE user_id = 'u05';
SELECT users FROM audience.build('grown');
SELECT new_rows FROM audience.build_incremental('grown');
-- Without an index on a source's time column the new events are read by scanning the whole
-- source: a WARNING names it (here past 100,000 rows).
CREATE TABLE inc.views AS
SELECT 'v' || (g % 500) AS user_id, 'A-' || (g % 6) AS sku, '2024-01-01'::timestamptz + g * interval '1 minute' AS ts
  FROM generate_series(1, 120000) g;
ANALYZE inc.views;
SELECT audience.create_catalog('views') IS NOT NULL AS ok;
SELECT audience.add_event('views', 'inc.views', 'sku', event_time => 'ts') IS NOT NULL AS ok;
SELECT users FROM audience.build('views', factors => 0, neighbours => 0, tune => false);
INSERT INTO inc.views VALUES ('v1', 'A-1', '2024-06-01');
SELECT new_rows FROM audience.build_incremental('views');
CREATE INDEX ON inc.views (ts);
INSERT INTO inc.views VALUES ('v2', 'A-1', '2024-06-02');
SELECT new_rows FROM audience.build_incremental('views');
SELECT audience.drop_catalog('views');
SELECT * FROM audience.build_incremental('no such catalog');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM unnest(ARRAY['grown', 'whole']) c, audience.drop_catalog(c);
DROP SCHEMA inc CASCADE;
