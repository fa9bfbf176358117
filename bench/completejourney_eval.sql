-- Helpers of bench/completejourney.sh (schema bench_cj in the `grocery` database): the split, a timed
-- audience.evaluate that keeps its per-value rows, and the report that macro-averages them the way
-- bench/repeat_implicit.py does (values with >= min_pos eligible positives, per variant) next to that
-- script's rows (bench_cj.implicit, loaded from its JSON).
--
--   psql -v frac=0.15 -v align=day -f bench/completejourney_eval.sql   # after bench/completejourney_load.sql
\set ON_ERROR_STOP 1
SET client_min_messages = warning;

DROP SCHEMA IF EXISTS bench_cj CASCADE;
CREATE SCHEMA bench_cj;

-- The split, from the data: holdout = the last `frac` of the time span, passed to audience.evaluate,
-- which starts it at the UTC midnight before (last - holdout); cut_unix is that cutoff (align = day)
-- or the exact time (align = none), as bench/repeat_implicit.py --cutoff-align computes it.
CREATE TABLE bench_cj.split AS
SELECT holdout, CASE WHEN :'align' = 'day' THEN floor(raw_cut / 86400) * 86400 ELSE raw_cut END AS cut_unix
  FROM (SELECT make_interval(secs => :frac * extract(epoch FROM max(event_time) - min(event_time))) AS holdout,
               extract(epoch FROM max(event_time)) - :frac * extract(epoch FROM max(event_time) - min(event_time))
                   AS raw_cut
          FROM events) s;

CREATE TABLE bench_cj.runs (
    run_id   serial PRIMARY KEY,
    property text NOT NULL,
    eval_s   float8,
    cutoff   timestamptz,
    params   jsonb                      -- audience.evaluations.params
);

CREATE TABLE bench_cj.rows (           -- audience.evaluate's per-value rows, in output order
    run_id int REFERENCES bench_cj.runs, ord bigint, method text, value text, cross_sell boolean,
    cut_pct float8, audience_size bigint, positives bigint, hits bigint, hit_rate float8, recall float8,
    lift float8, auc float8
);

-- repeat_implicit.py's JSON per property (only when its cutoff is this split's).
CREATE TABLE bench_cj.implicit (property text PRIMARY KEY, file text, doc jsonb);

-- A right-aligned 0.000 ('-' for NULL).
CREATE FUNCTION bench_cj.num(x float8, width int) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT lpad(coalesce(to_char(x, 'FM0.000'), '-'), width) $$;

-- One audience.evaluate call; returns the run id.
CREATE FUNCTION bench_cj.evaluate(p_catalog text, p_property text, p_holdout interval) RETURNS int
LANGUAGE plpgsql AS $fn$
DECLARE
    rid int;
    t0 timestamptz := clock_timestamp();
BEGIN
    INSERT INTO bench_cj.runs (property) VALUES (p_property) RETURNING run_id INTO rid;
    INSERT INTO bench_cj.rows
    SELECT rid, e.ordinality, e.method, e.value, e.cross_sell, e.cut_pct, e.audience_size, e.positives, e.hits,
           e.hit_rate, e.recall, e.lift, e.auc
      FROM audience.evaluate(p_catalog, p_property, holdout => p_holdout) WITH ORDINALITY AS e
     WHERE e.value <> '(macro)';
    UPDATE bench_cj.runs r
       SET eval_s = extract(epoch FROM clock_timestamp() - t0), cutoff = ev.cutoff, params = ev.params
      FROM (SELECT x.cutoff, x.params FROM audience.evaluations x
             WHERE x.catalog_id = (SELECT c.catalog_id FROM audience.catalogs c WHERE c.name = p_catalog)
             ORDER BY x.evaluation_id DESC LIMIT 1) ev
     WHERE r.run_id = rid;
    RETURN rid;
END
$fn$;

-- Macro rows of the latest run of a property (every method evaluate returned, 'pg:' prefix) and of
-- the Python JSON ('py:' prefix), per variant, over values with >= min_pos eligible positives.
CREATE FUNCTION bench_cj.macro(p_property text, min_pos int)
RETURNS TABLE (src int, method text, ord bigint, cross_sell boolean, n bigint, hit1 float8, hit5 float8,
               rec10 float8, rec20 float8, auc float8)
LANGUAGE sql STABLE AS $fn$
    WITH run AS (SELECT max(run_id) AS run_id FROM bench_cj.runs WHERE property = p_property),
    per_value AS (
        SELECT r.method, r.value, r.cross_sell, min(r.ord) AS ord, max(r.positives) AS positives,
               max(r.hit_rate) FILTER (WHERE r.cut_pct = 1) AS hit1, max(r.hit_rate) FILTER (WHERE r.cut_pct = 5) AS hit5,
               max(r.recall) FILTER (WHERE r.cut_pct = 10) AS rec10, max(r.recall) FILTER (WHERE r.cut_pct = 20) AS rec20,
               max(r.auc) AS auc
          FROM bench_cj.rows r JOIN run USING (run_id)
         GROUP BY 1, 2, 3)
    SELECT 1, 'pg:' || method, min(ord), cross_sell, count(*), avg(hit1), avg(hit5), avg(rec10), avg(rec20), avg(auc)
      FROM per_value WHERE positives >= min_pos GROUP BY method, cross_sell
    UNION ALL
    SELECT 2, 'py:' || (x.r ->> 'method'), x.ord, (x.r ->> 'variant') = 'cross_sell',
           (x.r #>> '{macro,values}')::bigint, (x.r #>> '{macro,hit@1%}')::float8,
           (x.r #>> '{macro,hit@5%}')::float8, (x.r #>> '{macro,recall@10%}')::float8,
           (x.r #>> '{macro,recall@20%}')::float8, (x.r #>> '{macro,auc}')::float8
      FROM bench_cj.implicit i, jsonb_array_elements(i.doc -> 'results') WITH ORDINALITY AS x(r, ord)
     WHERE i.property = p_property
$fn$;

-- The printed table of a property: one line per method, all users then cross-sell (x).
CREATE FUNCTION bench_cj.report(p_property text, min_pos int) RETURNS SETOF text
LANGUAGE sql STABLE AS $fn$
    WITH m AS (SELECT * FROM bench_cj.macro(p_property, min_pos)),
    wide AS (
        SELECT a.src, a.method, least(a.ord, x.ord) AS ord, a.n AS n_all, x.n AS n_x,
               ARRAY[a.hit1, a.hit5, a.rec10, a.rec20, a.auc] AS va, ARRAY[x.hit1, x.hit5, x.rec10, x.rec20] AS vx
          FROM m a LEFT JOIN m x ON x.src = a.src AND x.method = a.method AND x.cross_sell
         WHERE NOT a.cross_sell),
    counts AS (SELECT string_agg(DISTINCT n_all::text, '/') AS n_all, string_agg(DISTINCT n_x::text, '/') AS n_x
                 FROM wide)
    SELECT line FROM (
        SELECT 0 AS k, 0 AS src, 0::bigint AS ord,
               format('%s: macro over values with >= %s positives: %s values for all users, %s for cross-sell',
                      p_property, min_pos, coalesce(n_all, '0'), coalesce(n_x, '0')) AS line
          FROM counts
        UNION ALL
        SELECT 1, 0, 0, rpad('method', 28) || lpad('hit@1%', 8) || lpad('hit@5%', 8) || lpad('rec@10%', 9) ||
               lpad('rec@20%', 9) || lpad('AUC', 7) || '  | x' || lpad('hit@1%', 8) || lpad('hit@5%', 8) ||
               lpad('rec@10%', 9) || lpad('rec@20%', 9)
        UNION ALL
        SELECT 2, 0, 0, repeat('-', 109)
        UNION ALL
        SELECT 3, src, ord,
               rpad(method, 28) || bench_cj.num(va[1], 8) || bench_cj.num(va[2], 8) || bench_cj.num(va[3], 9) ||
               bench_cj.num(va[4], 9) || bench_cj.num(va[5], 7) || '  |  ' ||
               bench_cj.num(vx[1], 8) || bench_cj.num(vx[2], 8) || bench_cj.num(vx[3], 9) || bench_cj.num(vx[4], 9)
          FROM wide
    ) t ORDER BY k, src, ord
$fn$;

-- Protocol check: does audience.evaluate count the same positives per value as the Python script?
CREATE FUNCTION bench_cj.check(p_property text, min_pos int) RETURNS SETOF text
LANGUAGE sql STABLE AS $fn$
    WITH run AS (SELECT max(run_id) AS run_id FROM bench_cj.runs WHERE property = p_property),
    pgp AS (SELECT DISTINCT r.value, r.positives FROM bench_cj.rows r JOIN run USING (run_id)
             WHERE NOT r.cross_sell AND r.positives >= min_pos),
    pyp AS (SELECT pv.key AS value, (pv.value ->> 'positives')::bigint AS positives
              FROM bench_cj.implicit i, jsonb_array_elements(i.doc -> 'results') x(r), jsonb_each(x.r -> 'per_value') pv
             WHERE i.property = p_property AND x.r ->> 'variant' = 'all' AND x.r ->> 'method' = 'sql_most_active'),
    j AS (SELECT pgp.value AS a, pyp.value AS b, pgp.positives = pyp.positives AS same
            FROM pgp FULL JOIN pyp ON pgp.value = pyp.value)
    SELECT format('protocol check: cutoff %s in audience.evaluate, %s in Python; '
                  '%s values with the same positives in both, %s differ, %s only in pg, %s only in Python',
                  (SELECT to_char(r.cutoff AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') FROM bench_cj.runs r JOIN run USING (run_id)),
                  (SELECT to_char(to_timestamp((i.doc #>> '{split,cut_unix}')::float8) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')
                     FROM bench_cj.implicit i WHERE i.property = p_property),
                  count(*) FILTER (WHERE same), count(*) FILTER (WHERE NOT same),
                  count(*) FILTER (WHERE b IS NULL), count(*) FILTER (WHERE a IS NULL))
      FROM j
    HAVING count(a) > 0 AND count(b) > 0
$fn$;
