-- Is a difference between pg_audience and a baseline more than noise? For the latest
-- audience.evaluate run of a property in this database: per cut and audience kind, the mean over
-- values of (pg_audience - method) in hit rate and recall, its standard error (standard deviation
-- of the per-value differences / sqrt(values): the values are the sample, each method ranks the
-- same users), and a verdict: "tie" when |mean| < 2 standard errors.
--
--   source scripts/pg.sh; pga_psql dev-pg -d movielens -v prop=genre -f bench/paired_diff.sql
--   (after BENCH_KEEP=1 BENCH_CLUSTER=dev-pg PROPERTIES=genre bench/movielens.sh; likewise the
--   grocery database of bench/completejourney.sh, or the demo database after bench/demo_shops.sql
--   with -v cat=groc)
\set ON_ERROR_STOP 1
\if :{?cat}
\else
\set cat ''
\endif
\if :{?min_pos}
\else
\set min_pos 5
\endif
WITH run AS (
    SELECT max(e.evaluation_id) AS id FROM audience.evaluations e JOIN audience.catalogs c USING (catalog_id)
     WHERE e.property = :'prop' AND (:'cat' = '' OR c.name = :'cat')),
r AS (
    SELECT x.value, x.cross_sell, x.cut_pct, x.method, x.hit_rate, x.recall
      FROM audience.evaluation_results x, run
     WHERE x.evaluation_id = run.id AND x.value <> '(macro)' AND x.positives >= :min_pos),
d AS (
    SELECT b.method, a.cross_sell, a.cut_pct, a.hit_rate - b.hit_rate AS dh, a.recall - b.recall AS dr
      FROM r a JOIN r b USING (value, cross_sell, cut_pct)
     WHERE a.method = 'pg_audience' AND b.method <> 'pg_audience'),
s AS (
    SELECT method, cross_sell, cut_pct, count(*) AS values, avg(dh) AS dh, stddev(dh) / sqrt(count(*)) AS se_h,
           avg(dr) AS dr, stddev(dr) / sqrt(count(*)) AS se_r
      FROM d GROUP BY 1, 2, 3)
SELECT CASE WHEN cross_sell THEN 'cross-sell' ELSE 'all' END AS users, cut_pct, method, values,
       round(dh::numeric, 3) AS "hit diff", round(se_h::numeric, 3) AS "se",
       CASE WHEN abs(dh) < 2 * coalesce(se_h, 0) OR dh = 0 THEN 'tie' WHEN dh > 0 THEN 'ahead' ELSE 'behind' END AS "hit",
       round(dr::numeric, 3) AS "recall diff", round(se_r::numeric, 3) AS "se ",
       CASE WHEN abs(dr) < 2 * coalesce(se_r, 0) OR dr = 0 THEN 'tie' WHEN dr > 0 THEN 'ahead' ELSE 'behind' END AS "recall"
  FROM s ORDER BY cross_sell, cut_pct, method;
