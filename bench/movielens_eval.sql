-- Helpers of bench/movielens.sh: run audience.evaluate and keep its per-value rows, then macro-average
-- them the way bench/movielens_implicit.py does (values with >= min_positives eligible positives,
-- per variant), so the two benchmarks are comparable.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;

CREATE SCHEMA IF NOT EXISTS bench;

CREATE TABLE IF NOT EXISTS bench.runs (
    run_id      serial PRIMARY KEY,
    label       text NOT NULL,
    property    text NOT NULL,
    holdout     interval,              -- NULL = evaluate's default (last 20% of the time span)
    settings    jsonb,                 -- the catalog's remembered build settings at the time
    eval_params jsonb,                 -- audience.evaluations.params (tuned knobs, model, seconds)
    eval_s      float8,
    at          timestamptz DEFAULT now()
);

CREATE TABLE IF NOT EXISTS bench.rows (
    run_id     int REFERENCES bench.runs ON DELETE CASCADE,
    method     text,
    value      text,
    cross_sell boolean,
    cut_pct    float8,
    positives  bigint,
    hits       bigint,
    hit_rate   float8,
    recall     float8,
    lift       float8,
    auc        float8
);

-- One audience.evaluate call, recorded under a label. Returns the run id.
CREATE OR REPLACE FUNCTION bench.evaluate(label text, catalog text, property text, holdout interval DEFAULT NULL,
                                          tune boolean DEFAULT true)
RETURNS int LANGUAGE plpgsql AS $fn$
DECLARE
    rid int;
    t0 timestamptz := clock_timestamp();
BEGIN
    INSERT INTO bench.runs (label, property, holdout, settings)
    SELECT label, property, holdout, c.build_settings FROM audience.catalogs c WHERE c.name = catalog
    RETURNING run_id INTO rid;
    INSERT INTO bench.rows
    SELECT rid, e.method, e.value, e.cross_sell, e.cut_pct, e.positives, e.hits, e.hit_rate, e.recall, e.lift, e.auc
      FROM audience.evaluate(catalog, property, holdout, NULL, tune) e
     WHERE e.value <> '(macro)';
    UPDATE bench.runs r
       SET eval_s = extract(epoch FROM clock_timestamp() - t0),
           eval_params = (SELECT ev.params FROM audience.evaluations ev
                           WHERE ev.catalog_id = (SELECT c.catalog_id FROM audience.catalogs c WHERE c.name = catalog)
                           ORDER BY ev.evaluation_id DESC LIMIT 1)
     WHERE r.run_id = rid;
    RETURN rid;
END
$fn$;

-- Macro averages per run, method and variant over values with >= min_pos positives.
CREATE OR REPLACE FUNCTION bench.macro(min_pos int DEFAULT 5)
RETURNS TABLE (run_id int, method text, variant text, n_values bigint, hit1 float8, hit5 float8, recall10 float8,
               lift5 float8, auc float8)
LANGUAGE sql STABLE AS $fn$
    WITH per_value AS (
        SELECT r.run_id, r.method, r.value, r.cross_sell,
               max(r.hit_rate) FILTER (WHERE r.cut_pct = 1)  AS hit1,
               max(r.hit_rate) FILTER (WHERE r.cut_pct = 5)  AS hit5,
               max(r.recall)   FILTER (WHERE r.cut_pct = 10) AS recall10,
               max(r.lift)     FILTER (WHERE r.cut_pct = 5)  AS lift5,
               max(r.auc) AS auc, max(r.positives) AS positives
          FROM bench.rows r
         GROUP BY 1, 2, 3, 4)
    SELECT run_id, method, CASE WHEN cross_sell THEN 'cross_sell' ELSE 'all' END, count(*),
           avg(hit1), avg(hit5), avg(recall10), avg(lift5), avg(auc)
      FROM per_value
     WHERE positives >= min_pos
     GROUP BY 1, 2, 3
$fn$;
