-- How users return (active days, tenure) and their own engagement (occasions, weight, recency)
-- in the score; automatic tuning in build; the backtest: audience.evaluate's rows are consistent
-- with each other, and audience.tune remembers the knobs it picks.
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

-- The user's own engagement measured in occasions (distinct days), in weight, decayed with its
-- own half-life, or by recency: each alone (prior 0, activity_exp 1) is one of the SQL
-- baselines. Brand X = items A and C; the latest event (the reference) is on Jan 10.
--   u1: A on Jan 1, 2, 3 (twice on the 3rd)  3 days, weight 4, last engaged 7 days before
--   u2: A and C on Jan 10                    1 day,  weight 2, last engaged 0 days before
--   u3: C on Jan 1 and Jan 10                2 days, weight 2, last engaged 0 days before
--   u4: B (brand Y) on Jan 10                not engaged with X
CREATE TABLE bt.rep (user_id text, item text, brand text, at timestamptz);
INSERT INTO bt.rep VALUES
  ('u1', 'A', 'X', '2024-01-01 09:00+00'), ('u1', 'A', 'X', '2024-01-02 09:00+00'),
  ('u1', 'A', 'X', '2024-01-03 09:00+00'), ('u1', 'A', 'X', '2024-01-03 18:00+00'),
  ('u2', 'A', 'X', '2024-01-10 09:00+00'), ('u2', 'C', 'X', '2024-01-10 09:05+00'),
  ('u3', 'C', 'X', '2024-01-01 09:00+00'), ('u3', 'C', 'X', '2024-01-10 08:00+00'),
  ('u4', 'B', 'Y', '2024-01-10 12:00+00');
SELECT audience.create_catalog('occ') IS NOT NULL AS ok;
SELECT audience.add_event('occ', 'bt.rep', 'item', event_time => 'at') IS NOT NULL AS ok;
SELECT audience.map_property('occ', 'brand', column_name => 'brand');
-- count(DISTINCT date) per user: 3, 2, 1.
SELECT users FROM audience.build('occ', factors => 0, neighbours => 0, prior => 0, activity_exp => 1,
                                 days_exp => 0, tenure_exp => 0, own => 'days');
SELECT user_id, score AS distinct_days FROM audience.recommend_audience('brand', 'X', 100, catalog => 'occ') ORDER BY rank;
-- Summed weight: 4, 2, 2 (ties by user id).
SELECT users FROM audience.build('occ', own => 'weight');
SELECT user_id, score AS summed_weight FROM audience.recommend_audience('brand', 'X', 100, catalog => 'occ') ORDER BY rank;
-- Distinct days, each counted 2^(-age / 9 days): u1 2^(-9/9) + 2^(-8/9) + 2^(-7/9) = 1.6233,
-- u3 2^(-9/9) + 1 = 1.5, u2 1.
SELECT users FROM audience.build('occ', own => 'days', own_half_life => '9 days');
SELECT user_id, round(score::numeric, 4) AS decayed_days FROM audience.recommend_audience('brand', 'X', 100, catalog => 'occ') ORDER BY rank;
-- Recency: 1 / (1 + days since the last engagement): u2 and u3 1, u1 1/8.
SELECT users FROM audience.build('occ', own => 'recent');
SELECT user_id, score AS recency FROM audience.recommend_audience('brand', 'X', 100, catalog => 'occ') ORDER BY rank;
SELECT build_settings->>'own' AS own, build_settings->'own_half_life_days' AS half_life
  FROM audience.catalogs WHERE name = 'occ';
-- Five days of history are too few to tune on: a catalog without knobs builds with the defaults
-- and says why in the build result.
SELECT audience.create_catalog('short') IS NOT NULL AS ok;
SELECT audience.add_event('short', 'bt.ev', 'item', event_time => 'at') IS NOT NULL AS ok;
SELECT audience.map_property('short', 'brand', column_name => 'brand');
SELECT users, tuning FROM audience.build('short', factors => 0, neighbours => 0);

-- The backtest on a generated shop (deterministic for a seed).
SELECT table_name, row_count > 0 AS generated
  FROM audience.generate_demo_shop('bt_shop', users => 1500, products => 150, events => 30000, seed => 0.5);
SELECT audience.create_catalog('shop') IS NOT NULL AS ok;
SELECT audience.add_event('shop', 'bt_shop.tracks', 'product_id', event_column => 'event', event_value => 'order_completed', weight => 5) IS NOT NULL AS ok;
SELECT audience.add_event('shop', 'bt_shop.tracks', 'product_id', event_column => 'event', event_value => 'product_viewed', weight => 1) IS NOT NULL AS ok;
SELECT audience.map_property('shop', 'brand', column_name => 'brand', products => 'bt_shop.products');
-- A catalog without tuned knobs tunes them on the last fifth of its history when it builds, per
-- property, and reports what it chose (and the validation hit rates) in the build result.
CREATE TEMP TABLE auto AS SELECT * FROM audience.build('shop', factors => 8, iterations => 4, neighbours => 20);
SELECT users > 1000 AS users_ok, tuning->'automatic' AS automatic,
       tuning->'properties'->'brand'->'params'->>'own' IN ('affinity', 'weight', 'days', 'recent') AS own_chosen,
       (tuning->'properties'->'brand'->>'objective')::float8 >= (tuning->'properties'->'brand'->>'best_baseline_objective')::float8
         AS not_below_the_best_sql_baseline_on_validation,
       tuning->'als'->>'factors' IN ('8', '16') AS als_chosen
  FROM auto;
-- The model records it, and audiences of the property use the knobs chosen for it.
SELECT m.params->'properties'->'brand'->'params' = a.tuning->'properties'->'brand'->'params' AS recorded
  FROM audience.models m JOIN audience.catalogs c ON c.active_model_id = m.model_id, auto a WHERE c.name = 'shop';
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
       bool_and(own IN ('affinity', 'weight', 'days', 'recent')
                AND (own_half_life_days IS NULL OR own_half_life_days IN (14, 30, 60, 120))) AS own_from_grid,
       bool_and(objective BETWEEN 0 AND 1) AS objective_ok
  FROM tuned;
SELECT (k->>'days_exp')::float8 = t.days_exp AND (k->>'tenure_exp')::float8 = t.tenure_exp
       AND (k->>'activity_exp')::float8 = t.activity_exp AND k->>'own' = t.own AS remembered
  FROM audience.catalogs c CROSS JOIN LATERAL (SELECT c.build_settings->'tuned'->'brand'->'params' AS k) s, tuned t
 WHERE c.name = 'shop';
SELECT users > 1000 AS rebuilt FROM audience.build('shop');
SELECT count(*) > 0 AS audience FROM audience.recommend_audience('brand', (SELECT min(brand) FROM bt_shop.products), 5, catalog => 'shop');

SELECT audience.drop_catalog('bt');
SELECT audience.drop_catalog('occ');
SELECT audience.drop_catalog('short');
SELECT audience.drop_catalog('shop');
DROP SCHEMA bt CASCADE;
DROP SCHEMA bt_shop CASCADE;
SELECT count(*) AS evaluations_left FROM audience.evaluations;
