-- How users return (active days, tenure) in the score, and the backtest: audience.evaluate's rows
-- are consistent with each other, and audience.tune remembers the knobs it picks.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_audience;
SET audience.threads = 1;
CREATE SCHEMA bt;

-- Three users, one event per item, weight 1, no decay. Brand X = items A and C.
--   u1: A and B on the same day     share 1/2, 1 active day,  tenure 1 day
--   u2: A on day 1, B on day 5      share 1/2, 2 active days, tenure 5 days
--   u3: A and C on day 2            share 1,   1 active day,  tenure 1 day
CREATE TABLE bt.ev (user_id text, item text, brand text, at timestamptz);
INSERT INTO bt.ev VALUES
  ('u1', 'A', 'X', '2024-01-01 10:00+00'), ('u1', 'B', 'Y', '2024-01-01 11:00+00'),
  ('u2', 'A', 'X', '2024-01-01 10:00+00'), ('u2', 'B', 'Y', '2024-01-05 10:00+00'),
  ('u3', 'A', 'X', '2024-01-02 10:00+00'), ('u3', 'C', 'X', '2024-01-02 12:00+00');
SELECT audience.create_catalog('bt') IS NOT NULL AS ok;
SELECT audience.add_event('bt', 'bt.ev', 'item', event_time => 'at') IS NOT NULL AS ok;
SELECT audience.map_property('bt', 'brand', column_name => 'brand');
-- prior 0, activity_exp 0: the share of the user's engagement that went to the brand ...
SELECT users, items FROM audience.build('bt', factors => 0, neighbours => 0, prior => 0, activity_exp => 0,
                                        days_exp => 0, tenure_exp => 0);
SELECT user_id, round(score::numeric, 4) AS share FROM audience.recommend_audience('brand', 'X', 100, catalog => 'bt') ORDER BY rank;
-- ... times the active days ...
SELECT users FROM audience.build('bt', days_exp => 1);
SELECT user_id, round(score::numeric, 4) AS share_x_days FROM audience.recommend_audience('brand', 'X', 100, catalog => 'bt') ORDER BY rank;
-- ... or times the square root of the tenure (u2: 1/2 * sqrt(5)).
SELECT users FROM audience.build('bt', days_exp => 0, tenure_exp => 0.5);
SELECT user_id, round(score::numeric, 4) AS share_x_sqrt_tenure FROM audience.recommend_audience('brand', 'X', 100, catalog => 'bt') ORDER BY rank;
SELECT build_settings - 'factors' - 'neighbours' AS remembered FROM audience.catalogs WHERE name = 'bt';

-- The backtest on a generated shop (deterministic for a seed).
SELECT table_name, row_count > 0 AS generated
  FROM audience.generate_demo_shop('bt_shop', users => 1500, products => 150, events => 30000, seed => 0.5);
SELECT audience.create_catalog('shop') IS NOT NULL AS ok;
SELECT audience.add_event('shop', 'bt_shop.tracks', 'product_id', event_column => 'event', event_value => 'order_completed', weight => 5) IS NOT NULL AS ok;
SELECT audience.add_event('shop', 'bt_shop.tracks', 'product_id', event_column => 'event', event_value => 'product_viewed', weight => 1) IS NOT NULL AS ok;
SELECT audience.map_property('shop', 'brand', column_name => 'brand', products => 'bt_shop.products');
SELECT users > 1000 AS users_ok FROM audience.build('shop', factors => 8, iterations => 4, neighbours => 20);
CREATE TEMP TABLE ev AS SELECT * FROM audience.evaluate('shop', 'brand');
-- Every method, both variants, the four cuts, per value and macro-averaged.
SELECT method, cross_sell, array_agg(DISTINCT cut_pct ORDER BY cut_pct) AS cuts, count(DISTINCT value) > 5 AS many_values,
       bool_or(value = '(macro)') AS has_macro
  FROM ev GROUP BY 1, 2 ORDER BY 1, 2;
-- Per-value rows are internally consistent.
SELECT bool_and(hits <= audience_size AND hits <= positives) AS hits_bounded,
       bool_and(hit_rate = hits::float8 / audience_size) AS hit_rate_is_share,
       bool_and(positives = 0 OR recall = hits::float8 / positives) AS recall_is_captured_share,
       bool_and(auc BETWEEN 0 AND 1) AS auc_in_range
  FROM ev WHERE value <> '(macro)';
-- The same audience sizes for every method; cross-sell ranks fewer users (past engagers left out).
SELECT count(DISTINCT audience_size) = 1 AS one_size_per_cut
  FROM ev WHERE value <> '(macro)' AND NOT cross_sell GROUP BY cut_pct, value ORDER BY 1 LIMIT 1;
SELECT bool_and(x.audience_size <= a.audience_size) AS cross_sell_audiences_smaller
  FROM ev x JOIN ev a ON a.method = x.method AND a.value = x.value AND a.cut_pct = x.cut_pct AND NOT a.cross_sell
 WHERE x.cross_sell AND x.value <> '(macro)';
-- The run is recorded with the knobs chosen on the validation window.
SELECT property, params->'model'->'hybrid' ?& ARRAY['prior', 'activity_exp', 'knn_weight', 'volume', 'days_exp', 'tenure_exp'] AS knobs_recorded
  FROM audience.evaluations ORDER BY evaluation_id DESC LIMIT 1;
-- tune picks knobs from its grid, and the next build uses them.
CREATE TEMP TABLE tuned AS SELECT * FROM audience.tune('shop', 'brand');
SELECT count(*) AS one_row,
       bool_and(days_exp IN (0, 0.5, 1) AND tenure_exp IN (0, 0.5, 1) AND (days_exp = 0 OR tenure_exp = 0)) AS from_grid,
       bool_and(objective BETWEEN 0 AND 1) AS objective_ok
  FROM tuned;
SELECT (c.build_settings->>'days_exp')::float8 = t.days_exp AND (c.build_settings->>'tenure_exp')::float8 = t.tenure_exp
       AND (c.build_settings->>'activity_exp')::float8 = t.activity_exp AS remembered
  FROM audience.catalogs c, tuned t WHERE c.name = 'shop';
SELECT users > 1000 AS rebuilt FROM audience.build('shop');
SELECT count(*) > 0 AS audience FROM audience.recommend_audience('brand', (SELECT min(brand) FROM bt_shop.products), 5, catalog => 'shop');

SELECT audience.drop_catalog('bt');
SELECT audience.drop_catalog('shop');
DROP SCHEMA bt CASCADE;
DROP SCHEMA bt_shop CASCADE;
SELECT count(*) AS evaluations_left FROM audience.evaluations;
