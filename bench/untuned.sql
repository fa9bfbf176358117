-- Untuned quality: audience.evaluate(..., tune => false) with the current default knobs and with the
-- first release's defaults (prior 2, activity_exp 0.5, knn_weight 0.5, volume 0, no return
-- signal), macro hit rate of pg_audience at the 1/5/10/20% cuts. The catalog's remembered build
-- settings are kept aside and put back.
--
--   scripts/demo.sh psql -v cat=shop -v prop=brand -f bench/untuned.sql        (or prop=category)
--   BENCH_KEEP=1 bench/movielens.sh
--   source scripts/pg.sh; pga_psql bench-pg -d movielens -v cat=ml -v prop=genre -f bench/untuned.sql
\set ON_ERROR_STOP 1
SET client_min_messages = warning;
CREATE TEMP TABLE untuned (label text, cut_pct float8, hit_rate float8);
CREATE TEMP TABLE kept AS SELECT build_settings FROM audience.catalogs WHERE name = :'cat';
SELECT set_config('untuned.cat', :'cat', false), set_config('untuned.prop', :'prop', false) \gset
CREATE FUNCTION pg_temp.run(label text, settings jsonb) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    UPDATE audience.catalogs SET build_settings = settings WHERE name = current_setting('untuned.cat');
    INSERT INTO untuned
    SELECT label, e.cut_pct, e.hit_rate
      FROM audience.evaluate(current_setting('untuned.cat'), current_setting('untuned.prop'), tune => false) e
     WHERE e.value = '(macro)' AND NOT e.cross_sell AND e.method = 'pg_audience';
END
$$;
SELECT pg_temp.run('current defaults', '{}');
SELECT pg_temp.run('first defaults', '{"prior": 2, "activity_exp": 0.5, "knn_weight": 0.5, "volume": 0, "days_exp": 0, "tenure_exp": 0}');
UPDATE audience.catalogs c SET build_settings = k.build_settings FROM kept k WHERE c.name = :'cat';
SELECT label, array_agg(round(hit_rate::numeric, 3) ORDER BY cut_pct) AS "hit@1/5/10/20%"
  FROM untuned GROUP BY label ORDER BY label;
