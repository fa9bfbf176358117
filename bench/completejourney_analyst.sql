-- The SQL an analyst writes, for one property value, on the split of bench/completejourney.sh: the
-- hits at the top 1/5/10/20% of the training users ranked by purchase lines of the value, by distinct
-- UTC days buying it, by last purchase of it, and by all purchase lines (ties by user id as text).
-- They equal the hits@K% of py:sql_past_engagers, py:sql_distinct_days, py:sql_most_recent and
-- py:sql_most_active for that value in target/bench/cj_<prop>_implicit.json (per_value).
--
--   BENCH_KEEP=1 bench/completejourney.sh
--   source scripts/pg.sh; pga_psql bench-pg -d grocery -v prop=category -v value='FLUID MILK PRODUCTS' \
--       -f bench/completejourney_analyst.sql
\set ON_ERROR_STOP 1
SELECT to_timestamp(cut_unix) AS cut FROM bench_cj.split \gset
WITH train_users AS (SELECT DISTINCT user_id FROM events WHERE event_time < :'cut'),
pos AS (
    SELECT DISTINCT e.user_id
      FROM events e JOIN products p USING (product_id) JOIN train_users USING (user_id)
     WHERE e.event_time >= :'cut' AND p.:"prop" = :'value'),
score AS (
    SELECT e.user_id,
           count(*) FILTER (WHERE p.:"prop" = :'value') AS lines,
           count(DISTINCT (e.event_time AT TIME ZONE 'UTC')::date) FILTER (WHERE p.:"prop" = :'value') AS days,
           max(e.event_time) FILTER (WHERE p.:"prop" = :'value') AS last_buy,
           count(*) AS active
      FROM events e LEFT JOIN products p USING (product_id)
     WHERE e.event_time < :'cut'
     GROUP BY e.user_id),
ranked AS (
    SELECT s.*, pos.user_id IS NOT NULL AS positive, count(*) OVER () AS n,
           row_number() OVER (ORDER BY lines DESC, user_id::text) AS r_lines,
           row_number() OVER (ORDER BY days DESC, user_id::text) AS r_days,
           row_number() OVER (ORDER BY last_buy DESC NULLS LAST, user_id::text) AS r_last,
           row_number() OVER (ORDER BY active DESC, user_id::text) AS r_active
      FROM score s LEFT JOIN pos USING (user_id))
SELECT c.pct, greatest(1, floor(c.pct / 100.0 * max(n)))::int AS k,
       count(*) FILTER (WHERE positive AND r_lines <= greatest(1, floor(c.pct / 100.0 * n))) AS past_engagers,
       count(*) FILTER (WHERE positive AND r_days <= greatest(1, floor(c.pct / 100.0 * n))) AS distinct_days,
       count(*) FILTER (WHERE positive AND r_last <= greatest(1, floor(c.pct / 100.0 * n))) AS most_recent,
       count(*) FILTER (WHERE positive AND r_active <= greatest(1, floor(c.pct / 100.0 * n))) AS most_active,
       count(*) FILTER (WHERE positive) AS positives
  FROM ranked, (VALUES (1), (5), (10), (20)) c(pct)
 GROUP BY c.pct ORDER BY c.pct;
