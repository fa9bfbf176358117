-- A whole session, from catalog to audience, on a small fixed shop: 24 users, 12 products of
-- three brands and two categories, orders and views over two months.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_audience;
SET audience.threads = 1;
CREATE SCHEMA s;
CREATE TABLE s.products (product_id text PRIMARY KEY, brand text, category text);
INSERT INTO s.products VALUES
  ('p01','Nike','shoes'), ('p02','Nike','shoes'), ('p03','Nike','apparel'), ('p04','Nike','apparel'),
  ('p05','Adidas','shoes'), ('p06','Adidas','shoes'), ('p07','Adidas','apparel'), ('p08','Adidas','apparel'),
  ('p09','Puma','shoes'), ('p10','Puma','shoes'), ('p11','Puma','apparel'), ('p12','Puma','apparel');
CREATE TABLE s.orders (order_id serial, customer text, product_id text, ordered_at timestamptz);
CREATE TABLE s.views (customer text, product_id text, viewed_at timestamptz);
-- Users u01..u08 like Nike, u09..u16 Adidas, u17..u24 Puma; each also looks at one other brand.
INSERT INTO s.orders (customer, product_id, ordered_at)
SELECT format('u%s', lpad(u::text, 2, '0')),
       format('p%s', lpad((((u - 1) / 8) * 4 + 1 + (u + k) % 4)::text, 2, '0')),
       '2024-01-01'::timestamptz + (u * 3 + k * 11) % 60 * interval '1 day'
  FROM generate_series(1, 24) u, generate_series(1, 1 + u % 3) k;
INSERT INTO s.views
SELECT format('u%s', lpad(u::text, 2, '0')),
       format('p%s', lpad((((((u - 1) / 8) + 1 + u % 2) % 3) * 4 + 1 + k % 4)::text, 2, '0')),
       '2024-01-01'::timestamptz + (u * 5 + k * 7) % 60 * interval '1 day'
  FROM generate_series(1, 24) u, generate_series(1, 2) k;

SELECT audience.create_catalog('demo') IS NOT NULL AS ok;
SELECT audience.add_event('demo', 's.orders', 'product_id', user_id => 'customer', event_time => 'ordered_at', weight => 5, half_life => '30 days') IS NOT NULL AS ok;
SELECT audience.add_event('demo', 's.views', 'product_id', user_id => 'customer', event_time => 'viewed_at', weight => 1, half_life => '14 days') IS NOT NULL AS ok;
SELECT audience.map_property('demo', 'brand', column_name => 'brand', products => 's.products') IS NOT NULL AS ok;
SELECT audience.map_property('demo', 'category', column_name => 'category', products => 's.products') IS NOT NULL AS ok;

-- Before the first build there is no model:
\set VERBOSITY default
\set SHOW_CONTEXT never
SELECT * FROM audience.recommend_audience('brand', 'Nike', 10);
\echo :LAST_ERROR_SQLSTATE

SELECT model_id > 0 AS built, rows_read, users, items, pairs FROM audience.build('demo', factors => 4, iterations => 10, neighbours => 5);
-- Running builds, as another session sees them (none now: the build above has ended). While a
-- build runs, one row per build: its pid, catalog, role, phase (scan, products, tune, als, knn,
-- store), a detail, when it started and the seconds in the phase and in all.
SELECT * FROM audience.build_progress();
SELECT catalog, property, value, items, users FROM audience.catalog_values ORDER BY property, value;

-- The top 25% of users for Nike: the Nike fans first. (Scores to one decimal: the ALS arithmetic
-- rounds differently in its last digits on CPUs with and without FMA.)
SELECT user_id, round(score::numeric, 1) AS score, rank, round(percentile::numeric, 2) AS percentile FROM audience.recommend_audience('brand', 'Nike', 25);
-- Several values at once, an absolute cap and a minimum score.
SELECT user_id, rank FROM audience.recommend_audience('brand', ARRAY['Adidas', 'Puma'], 50, max_users => 5);
SELECT count(*) FROM audience.recommend_audience('brand', 'Nike', 100, min_score => 1);
-- Cross-sell: only users who never engaged with Nike.
SELECT user_id, rank FROM audience.recommend_audience('brand', 'Nike', 100, exclude_engaged => true) LIMIT 5;
-- Look-back: users who engaged with Nike long ago stay in.
SELECT count(*) > 0 AS some_returning FROM audience.recommend_audience('brand', 'Nike', 100, exclude_engaged => true, lookback => '1 day');
-- The rows come back in one call (materialize mode): any set-returning context takes them, the
-- select list, LATERAL over several values, and a scrollable cursor read backwards.
SELECT (audience.recommend_audience('brand', 'Nike', 25)).user_id;
SELECT v.brand, count(*) AS users, min(r.rank) AS first, max(r.rank) AS last FROM (VALUES ('Adidas'), ('Nike')) v(brand),
       LATERAL audience.recommend_audience_items(ARRAY[(SELECT min(p.product_id) FROM s.products p WHERE p.brand = v.brand)], 20) r
 GROUP BY 1 ORDER BY 1;
BEGIN;
DECLARE audience_rows SCROLL CURSOR FOR SELECT user_id, rank FROM audience.recommend_audience('brand', 'Nike', 25);
FETCH LAST FROM audience_rows;
FETCH BACKWARD 2 FROM audience_rows;
FETCH ABSOLUTE 1 FROM audience_rows;
COMMIT;
-- A value nobody has: an empty audience and a NOTICE.
SET client_min_messages = notice;
SELECT * FROM audience.recommend_audience('brand', 'Reebok', 10);
SET client_min_messages = warning;

-- Why u01 is in the Nike audience.
SELECT item_id, round(contribution::numeric, 3) AS contribution, reason FROM audience.explain('demo', 'u01', 'brand', 'Nike', 5);

-- Errors
SELECT * FROM audience.recommend_audience('brand', 'Nike', 0);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.recommend_audience('brand', 'Nike', 101);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.recommend_audience('brand', 'Nike', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.recommend_audience('colour', 'red', 10);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.recommend_audience(NULL, 'red', 10);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.recommend_audience('brand', NULL::text, 10);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.recommend_audience('brand', 'Nike', 10, max_users => -1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.recommend_audience('brand', 'Nike', 10, lookback => '1 day');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.explain('demo', 'nobody', 'brand', 'Nike');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.build('demo', factors => -1);
\echo :LAST_ERROR_SQLSTATE

-- A rebuild replaces the model atomically; the old model is gone.
SELECT count(*) AS models_before FROM audience.models;
SELECT users FROM audience.build('demo');
SELECT count(*) AS models_after FROM audience.models;
-- A failed build keeps the previous model.
SELECT active_model_id AS before FROM audience.catalogs WHERE name = 'demo' \gset
ALTER TABLE s.views RENAME COLUMN viewed_at TO seen_at;
SELECT * FROM audience.build('demo');
\echo :LAST_ERROR_SQLSTATE
SELECT active_model_id = :before AS same_model FROM audience.catalogs WHERE name = 'demo';
SELECT count(*) > 0 AS still_serving FROM audience.recommend_audience('brand', 'Nike', 10);
ALTER TABLE s.views RENAME COLUMN seen_at TO viewed_at;

SELECT audience.drop_catalog('demo');
DROP SCHEMA s CASCADE;
