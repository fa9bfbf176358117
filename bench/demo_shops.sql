-- The demo-shop backtest tables of the README ("Demo shop", "Grocery-like demo shop"): in the demo
-- database (scripts/demo.sh, which builds catalog `shop`), generates the grocery-like shop into
-- schema groc (unless there), registers catalog `groc` like the demo, and prints the macro rows of
-- audience.evaluate(..., tune => false) (the build's own automatic tuning) for shop brand and
-- category (holdout 36 days) and groc category and brand (holdout 27 days).
--
--   scripts/demo.sh psql -f bench/demo_shops.sql        (about 3 minutes)
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
SELECT count(*) = 0 AS need_groc FROM pg_catalog.pg_tables WHERE schemaname = 'groc' AND tablename = 'tracks' \gset
\if :need_groc
SELECT count(*) AS groc_tables FROM audience.generate_demo_shop('groc', kind => 'grocery');
\endif
SELECT NOT EXISTS (SELECT FROM audience.catalogs WHERE name = 'groc') AS need_cat \gset
\if :need_cat
SELECT audience.create_catalog('groc', description => 'Grocery-like demo shop') IS NOT NULL AS created;
SELECT count(audience.add_event('groc', 'groc.tracks', 'product_id', event_column => 'event', event_value => e, weight => w, half_life => h))
  FROM (VALUES ('order_completed', 5, '60 days'::interval), ('product_added', 3, '30 days'), ('product_viewed', 1, '14 days')) v(e, w, h);
SELECT count(audience.map_property('groc', p, column_name => p, products => 'groc.products')) FROM unnest(ARRAY['brand', 'category']) p;
\endif
CREATE TEMP TABLE demo_eval (shop text, property text, cross_sell bool, method text, cut_pct float8, hit_rate float8, recall float8);
CREATE FUNCTION pg_temp.run(cat text, prop text, holdout interval) RETURNS void LANGUAGE sql AS $$
    INSERT INTO demo_eval
    SELECT cat, prop, e.cross_sell, e.method, e.cut_pct, e.hit_rate, e.recall
      FROM audience.evaluate(cat, prop, holdout => holdout, tune => false) e WHERE e.value = '(macro)'
$$;
SELECT pg_temp.run('shop', 'brand', '36 days'), pg_temp.run('shop', 'category', '36 days'),
       pg_temp.run('groc', 'category', '27 days'), pg_temp.run('groc', 'brand', '27 days');
SELECT shop, property, CASE WHEN cross_sell THEN 'cross-sell' ELSE 'all' END AS users, method,
       round(max(hit_rate) FILTER (WHERE cut_pct = 1)::numeric, 3) AS "hit@1%",
       round(max(hit_rate) FILTER (WHERE cut_pct = 5)::numeric, 3) AS "hit@5%",
       round(max(recall) FILTER (WHERE cut_pct = 10)::numeric, 3) AS "recall@10%",
       round(max(recall) FILTER (WHERE cut_pct = 20)::numeric, 3) AS "recall@20%"
  FROM demo_eval GROUP BY 1, 2, 3, 4 ORDER BY 1 DESC, 2, 3, method = 'pg_audience' DESC, 4;
