-- Bad input to the engine (build, recommend_audience, explain, evaluate, tune, save_audience,
-- forget_user, the affinity aggregate) and awkward data: no events, only unusable rows, one user
-- and one item, a future timestamp, a source altered or dropped after registration, huge strings
-- and injection attempts. Every case is an ERROR with a SQLSTATE or a documented behaviour.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_audience;
SET audience.threads = 1;
\set VERBOSITY default
\set SHOW_CONTEXT never
CREATE SCHEMA x;
CREATE TABLE x.ev (user_id text, product_id text, "timestamp" timestamptz, brand text);
SELECT audience.create_catalog('x') IS NOT NULL AS ok;

-- A catalog without events cannot be built.
SELECT * FROM audience.build('x');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.add_event('x', 'x.ev', 'product_id', half_life => '7 days') IS NOT NULL AS ok;
SELECT audience.map_property('x', 'brand', column_name => 'brand');
-- Zero events.
SELECT * FROM audience.build('x');
\echo :LAST_ERROR_SQLSTATE
-- Only unusable rows: NULL user, NULL product, NULL and infinite times are skipped.
INSERT INTO x.ev VALUES (NULL, 'p1', '2024-01-01', 'B'), ('u1', NULL, '2024-01-01', 'B'),
                        ('u1', 'p1', NULL, 'B'), ('u1', 'p1', 'infinity', 'B');
SELECT * FROM audience.build('x');
\echo :LAST_ERROR_SQLSTATE
-- One user and one item is a model.
INSERT INTO x.ev VALUES ('u1', 'p1', now() - interval '2 days', 'B');
SELECT rows_read, users, items, pairs FROM audience.build('x');
SELECT user_id, rank, percentile FROM audience.recommend_audience('brand', 'B', 100);
-- An event stamped in the future counts as if it happened now: it does not decay the others
-- away (with the latest event, year 2999, as the reference, they would all decay to nothing).
INSERT INTO x.ev VALUES ('u2', 'p2', '2999-01-01', 'B'), ('u3', 'p1', now() - interval '1 day', 'B');
SELECT rows_read, users, items, pairs FROM audience.build('x');

-- Bad build parameters.
SELECT * FROM audience.build('x', iterations => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.build('x', regularization => -1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.build('x', alpha => 'NaN');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.build('x', knn_weight => 2);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.build('x', volume => 0.5);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.build('x', days_exp => -0.5);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.build('x', tenure_exp => 'Infinity');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.build('x', neighbours => -1);
-- Bad own-engagement measures (nothing is remembered from a failing call).
SELECT * FROM audience.build('x', own => 'bogus');
SELECT * FROM audience.build('x', own => 'days', own_half_life => '-1 day');
SELECT * FROM audience.build('x', own => 'days', own_half_life => '0');
SELECT * FROM audience.build('x', own => 'recent', own_half_life => '7 days');
SELECT * FROM audience.build('x', own_half_life => '7 days');
SELECT build_settings ? 'own' AS own_remembered FROM audience.catalogs WHERE name = 'x';
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.build('nope');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.build('');
\echo :LAST_ERROR_SQLSTATE

-- Text arguments are values, never SQL.
SELECT * FROM audience.build('x''; DROP TABLE x.ev; --');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.recommend_audience('brand''; DROP TABLE x.ev; --', 'B', 10);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audience.recommend_audience('brand', 'B''; DROP TABLE x.ev; --', 10);
SELECT * FROM audience.explain('x', 'u1''; DROP TABLE x.ev; --', 'brand', 'B');
\echo :LAST_ERROR_SQLSTATE
SELECT audience, members FROM audience.save_audience('a''; DROP TABLE x.ev; --', 'brand', 'B', 50);
SELECT audience.drop_audience('a''; DROP TABLE x.ev; --');
SELECT count(*) AS events_table_intact FROM x.ev;
-- Huge strings are cut in messages.
SELECT * FROM audience.recommend_audience(repeat('p', 100000), 'B', 10);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.explain('x', repeat('u', 100000), 'brand', 'B');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.create_catalog(repeat('c', 100000));
\echo :LAST_ERROR_SQLSTATE

-- explain, evaluate, tune, save_audience, forget_user
SELECT * FROM audience.explain('x', NULL, 'brand', 'B');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.explain('x', 'u1', 'brand', 'B', max_items => 0);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.evaluate('x', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.evaluate('x', 'brand', holdout => '-1 day');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY terse
SELECT count(*) FROM audience.evaluate('x', 'brand', holdout => '10000 years');
\echo :LAST_ERROR_SQLSTATE
\set VERBOSITY default
SELECT * FROM audience.tune('x', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.save_audience('s', 'brand', NULL::text, 10);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.save_audience(NULL, 'brand', 'B', 10);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.forget_user(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.drop_audience('never saved');
\echo :LAST_ERROR_SQLSTATE

-- The aggregate: a non-positive half-life is an error; all-NULL input is an empty object.
SELECT audience.affinity('u', 'i', 1, '2024-01-01', '-1 day', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT audience.affinity(NULL, NULL, NULL, NULL, NULL, NULL);

-- A source altered or dropped after registration: the build fails, the previous model stays.
ALTER TABLE x.ev ALTER COLUMN product_id TYPE jsonb USING to_jsonb(product_id);
SELECT * FROM audience.build('x');
\echo :LAST_ERROR_SQLSTATE
DROP TABLE x.ev;
SELECT * FROM audience.build('x');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS still_serving FROM audience.recommend_audience('brand', 'B', 100);
SELECT catalog, event, source FROM audience.catalog_events;

SELECT audience.drop_catalog('x');
DROP SCHEMA x CASCADE;
