-- The marketer's workflow: audiences of any set of items, size previews for a UI slider, control
-- groups held out of saved audiences, and the status of every saved audience.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_audience;
SET audience.threads = 1;
CREATE SCHEMA mk;
CREATE TABLE mk.products (product_id text PRIMARY KEY, brand text, price_band text);
INSERT INTO mk.products
SELECT format('p%s', lpad(i::text, 2, '0')), (ARRAY['Nike', 'Adidas', 'Puma'])[1 + i % 3],
       CASE WHEN i <= 6 THEN 'premium' ELSE 'basic' END
  FROM generate_series(1, 12) i;
CREATE TABLE mk.orders (customer text, product_id text, ordered_at timestamptz);
-- 400 customers, 1 to 4 orders each over three months.
INSERT INTO mk.orders
SELECT format('u%s', lpad(u::text, 3, '0')),
       format('p%s', lpad((1 + (u * 7 + k * (u % 5 + 1)) % 12)::text, 2, '0')),
       '2024-01-01'::timestamptz + ((u * 13 + k * 17) % 90) * interval '1 day'
  FROM generate_series(1, 400) u, generate_series(1, 1 + u % 4) k;
SELECT audience.create_catalog('mk') IS NOT NULL AS ok;
SELECT audience.add_event('mk', 'mk.orders', 'product_id', user_id => 'customer', event_time => 'ordered_at') IS NOT NULL AS ok;
SELECT audience.map_property('mk', 'brand', column_name => 'brand', products => 'mk.products') IS NOT NULL AS ok;
SELECT users, items FROM audience.build('mk', factors => 4, iterations => 5, neighbours => 5, tune => false);
\set VERBOSITY default
\set SHOW_CONTEXT never

-- 1. Any set of items: a single product, or any predicate over your products table.
SELECT count(*) AS users, min(rank) AS first_rank, max(rank) AS last_rank
  FROM audience.recommend_audience_items(ARRAY['p01'], 10, catalog => 'mk');
SELECT count(*) AS premium_but_not_nike
  FROM audience.recommend_audience_items((SELECT array_agg(product_id) FROM mk.products WHERE price_band = 'premium' AND brand <> 'Nike'), 5, catalog => 'mk');
-- Ids the model does not know are reported, not errors; none known gives an empty audience.
SET client_min_messages = notice;
SELECT count(*) FROM audience.recommend_audience_items(ARRAY['p01', 'p99'], 10, catalog => 'mk');
SELECT count(*) FROM audience.recommend_audience_items(ARRAY['p99'], 10, catalog => 'mk');
SET client_min_messages = warning;
-- An empty array, a NULL element or a NULL array is an error.
SELECT * FROM audience.recommend_audience_items(ARRAY[]::text[], 10, catalog => 'mk');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.recommend_audience_items(ARRAY['p01', NULL], 10, catalog => 'mk');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.recommend_audience_items(NULL, 10, catalog => 'mk');
\echo :LAST_ERROR_SQLSTATE

-- 2. Size preview: per cut, the users, the lowest score among them and how many engaged before.
SELECT pct, users, min_score > 0 AS scored, engaged_before FROM audience.audience_size('brand', 'Nike', ARRAY[1, 5, 10, 50], catalog => 'mk');
SELECT pct, users FROM audience.audience_size_items(ARRAY['p01', 'p02'], catalog => 'mk');
-- The sizes are the audiences' sizes.
SELECT (SELECT count(*) FROM audience.recommend_audience('brand', 'Nike', 10, catalog => 'mk'))
     = (SELECT users FROM audience.audience_size('brand', 'Nike', ARRAY[10], catalog => 'mk')) AS same_size;
SELECT * FROM audience.audience_size('brand', 'Nike', ARRAY[]::float8[], catalog => 'mk');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.audience_size('brand', 'Nike', ARRAY[0], catalog => 'mk');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.audience_size('brand', 'Nike', ARRAY[5, NULL], catalog => 'mk');
\echo :LAST_ERROR_SQLSTATE

-- 3. Control groups: save_audience(..., control_pct => 20) holds out about 20% of the members,
-- chosen by a hash of the audience and the user (a member who stays keeps their side).
SELECT * FROM audience.save_audience('nike_test', 'brand', 'Nike', 50, catalog => 'mk', control_pct => 20);
SELECT count(*) FILTER (WHERE m.is_control) AS control, count(*) AS members
  FROM audience.audience_members m JOIN audience.saved_audiences s USING (audience_id) WHERE s.name = 'nike_test';
CREATE TEMP TABLE sides AS
SELECT m.user_id, m.is_control FROM audience.audience_members m JOIN audience.saved_audiences s USING (audience_id) WHERE s.name = 'nike_test';
SELECT * FROM audience.refresh_audience('nike_test');
SELECT count(*) AS switched_sides
  FROM sides b JOIN audience.audience_members m ON m.user_id = b.user_id
  JOIN audience.saved_audiences s ON s.audience_id = m.audience_id AND s.name = 'nike_test'
 WHERE m.is_control <> b.is_control;
SELECT * FROM audience.save_audience('bad', 'brand', 'Nike', 10, catalog => 'mk', control_pct => 60);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.save_audience('bad', 'brand', 'Nike', 10, catalog => 'mk', control_pct => -1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.save_audience('bad', 'brand', 'Nike', 10, catalog => 'mk', control_pct => NULL);
\echo :LAST_ERROR_SQLSTATE
-- Did it work? Engagement with the audience's items since the campaign started, treated vs
-- control, from the registered events: here every member with an even rank buys a Nike product in June.
INSERT INTO mk.orders
SELECT m.user_id, 'p03', '2024-06-15'
  FROM audience.audience_members m JOIN audience.saved_audiences s USING (audience_id)
 WHERE s.name = 'nike_test' AND m.rank % 2 = 0;
SELECT treated_users, treated_engaged, round(treated_rate::numeric, 3) AS treated_rate,
       control_users, control_engaged, round(control_rate::numeric, 3) AS control_rate,
       round(uplift::numeric, 3) AS uplift, round(uplift_low::numeric, 3) AS low, round(uplift_high::numeric, 3) AS high
  FROM audience.control_uplift('nike_test', since => '2024-06-01');
SELECT treated_engaged, control_engaged, uplift FROM audience.control_uplift('nike_test', '2024-06-01', until => '2024-06-10');
SELECT * FROM audience.control_uplift('nike_test', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.control_uplift('no_such_audience', '2024-06-01');
\echo :LAST_ERROR_SQLSTATE
-- Saved audiences of items store the item list as given.
SELECT * FROM audience.save_audience_items('premium',
    (SELECT array_agg(product_id ORDER BY product_id) FROM mk.products WHERE price_band = 'premium'), 10, catalog => 'mk', control_pct => 10);
SELECT * FROM audience.save_audience_items('nothing', ARRAY[]::text[], 10, catalog => 'mk');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS saved FROM audience.saved_audiences WHERE name IN ('bad', 'nothing');

-- 4. Status of every saved audience.
SELECT audience, property, "values", items, state, members, control_members, model_id = active_model_id AS current_model,
       newer_model, refresh_seconds >= 0 AS timed
  FROM audience.saved_audience_status ORDER BY audience;
SELECT users FROM audience.build('mk');
SELECT audience, state, newer_model FROM audience.saved_audience_status ORDER BY audience;
-- A refresh that fails (here: the property was unmapped and the model rebuilt) is kept with its error.
SELECT audience.unmap_property('mk', 'brand');
SELECT users FROM audience.build('mk');
SELECT audience, error IS NOT NULL AS failed FROM audience.refresh_all_audiences() ORDER BY audience;
SELECT audience, state, last_error, last_error_at IS NOT NULL AS when_known, members FROM audience.saved_audience_status ORDER BY audience;

SELECT audience.drop_catalog('mk');
DROP SCHEMA mk CASCADE;
