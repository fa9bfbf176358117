-- Who rates again in the holdout window? Ranks the MovieLens training users by three user-level
-- signals and counts, in the top 1% and 5%, the users with any rating in the holdout (the last
-- 20% of the time range, as bench/movielens.sh). The evidence behind days_exp / tenure_exp.
--
--   BENCH_KEEP=1 bench/movielens.sh
--   source scripts/pg.sh; pga_psql bench-pg -d movielens -f bench/movielens_returns.sql
\set ON_ERROR_STOP 1
WITH split AS (
    SELECT min("timestamp") + 0.8 * (max("timestamp") - min("timestamp")) AS t FROM ratings
), train AS (
    SELECT user_id, sum(rating) AS weighted_activity, count(DISTINCT "timestamp" / 86400) AS active_days,
           (max("timestamp") - min("timestamp")) / 86400 + 1 AS tenure_days
      FROM ratings, split WHERE "timestamp" < t GROUP BY user_id
), returners AS (
    SELECT DISTINCT user_id FROM ratings, split WHERE "timestamp" >= t
), ranked AS (
    SELECT user_id, user_id IN (SELECT user_id FROM returners) AS returns,
           row_number() OVER (ORDER BY weighted_activity DESC, user_id) AS by_activity,
           row_number() OVER (ORDER BY active_days DESC, weighted_activity DESC, user_id) AS by_days,
           row_number() OVER (ORDER BY tenure_days DESC, weighted_activity DESC, user_id) AS by_tenure
      FROM train
), n AS (SELECT count(*) AS users, count(*) FILTER (WHERE returns) AS returning FROM ranked)
SELECT s.signal, n.users, n.returning,
       count(*) FILTER (WHERE r.returns AND s.rnk <= n.users / 100) AS returning_in_top_1pct,
       count(*) FILTER (WHERE r.returns AND s.rnk <= n.users / 20) AS returning_in_top_5pct
  FROM ranked r, n,
       LATERAL (VALUES ('weighted activity', r.by_activity), ('active days', r.by_days), ('tenure', r.by_tenure)) s(signal, rnk)
 GROUP BY s.signal, n.users, n.returning ORDER BY returning_in_top_5pct;
