-- The pg_audience demo: a generated shop, a catalog, a model and an audience.
-- Run by scripts/demo.sh against a fresh database with the extension installed.
\set ON_ERROR_STOP on
\pset footer off
SET client_min_messages = warning;

\echo '== 1. Generate a demo shop (schema demo): users, products, events over 6 months'
SELECT * FROM audience.generate_demo_shop('demo');

\echo '== 2. Register the catalog: three event types in one Segment-style table, one table per event type'
SELECT audience.create_catalog('shop', description => 'Demo shop');
SELECT audience.add_event('shop', 'demo.tracks', 'product_id', event_column => 'event', event_value => 'order_completed', weight => 5, half_life => '60 days');
SELECT audience.add_event('shop', 'demo.tracks', 'product_id', event_column => 'event', event_value => 'product_added', weight => 3, half_life => '30 days');
SELECT audience.add_event('shop', 'demo.tracks', 'product_id', event_column => 'event', event_value => 'product_viewed', weight => 1, half_life => '14 days');
SELECT audience.add_event('shop', 'demo.wishlist_saves', 'sku', event_time => 'saved_at', weight => 2, half_life => '30 days');
SELECT audience.map_property('shop', 'brand', column_name => 'brand', products => 'demo.products');
SELECT audience.map_property('shop', 'price_band', column_name => 'price_band', products => 'demo.products');
SELECT audience.map_property('shop', 'category', json_key => 'category', json_column => 'properties', event => e)
  FROM unnest(ARRAY['order_completed', 'product_added', 'product_viewed']) e;
SELECT catalog, event, source, event_value, weight, half_life FROM audience.catalog_events ORDER BY event;

\echo '== 3. Build the model inside the database'
\timing on
SELECT model_id, rows_read, users, items, pairs FROM audience.build('shop');
\timing off
SELECT property, count(*) AS "values", sum(items) AS items FROM audience.catalog_values GROUP BY property ORDER BY property;

\echo '== 4. The top 5% audience for brand Nike'
\timing on
CREATE TEMP TABLE nike AS SELECT * FROM audience.recommend_audience('brand', 'Nike', 5);
\timing off
SELECT count(*) AS audience_size, round(min(score)::numeric, 4) AS min_score, round(max(score)::numeric, 4) AS max_score FROM nike;
SELECT user_id, round(score::numeric, 4) AS score, rank, round(percentile::numeric, 2) AS percentile FROM nike ORDER BY rank LIMIT 10;

\echo '== 5. Why the top 3 users are in it'
SELECT n.user_id, e.item_id, p.brand, p.category, round(e.contribution::numeric, 3) AS contribution, e.reason
  FROM (SELECT user_id FROM nike ORDER BY rank LIMIT 3) n,
       LATERAL audience.explain('shop', n.user_id, 'brand', 'Nike', 3) e
  JOIN demo.products p ON p.product_id = e.item_id
 ORDER BY n.user_id, e.contribution DESC;

\echo '== 6. Cross-sell: users who have not engaged with Nike yet'
SELECT user_id, round(score::numeric, 4) AS score, rank FROM audience.recommend_audience('brand', 'Nike', 5, exclude_engaged => true) ORDER BY rank LIMIT 5;

\echo '== 7. Before saving: how big is the Nike audience at 1, 5, 10 and 20%, and how many bought Nike before?'
SELECT pct, users, round(min_score::numeric, 4) AS min_score, engaged_before FROM audience.audience_size('brand', 'Nike');

\echo '== 8. Save it with a 10% control group (held out of the campaign to measure its uplift later)'
SELECT * FROM audience.save_audience('nike_campaign', 'brand', 'Nike', 5, control_pct => 10, replace => true);
SELECT audience, state, members, control_members, refreshed_at IS NOT NULL AS refreshed FROM audience.saved_audience_status;
\echo 'After the campaign: SELECT * FROM audience.control_uplift(''nike_campaign'', since => <campaign start>);'

\echo '== 9. Any set of items: premium products that are not Nike'
SELECT count(*) AS users FROM audience.recommend_audience_items(
    (SELECT array_agg(product_id) FROM demo.products WHERE price_band = 'premium' AND brand <> 'Nike'), 5);

\echo '== 10. A day of new events, grown into the model without scanning the older ones (audience.build_incremental)'
-- The index that makes reading the events since the build a range scan (else a WARNING says so).
CREATE INDEX IF NOT EXISTS tracks_timestamp ON demo.tracks ("timestamp");
CREATE INDEX IF NOT EXISTS wishlist_saves_saved_at ON demo.wishlist_saves (saved_at);
INSERT INTO demo.tracks (user_id, event, product_id, properties, "timestamp")
SELECT user_id, event, product_id, properties, "timestamp" + interval '1 day'
  FROM demo.tracks WHERE "timestamp" > (SELECT max("timestamp") - interval '1 day' FROM demo.tracks);
\timing on
SELECT model_id, base_model_id, new_rows, users, new_users FROM audience.build_incremental('shop');
\timing off

