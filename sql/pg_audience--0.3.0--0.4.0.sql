-- pg_audience 0.3.0 -> 0.4.0, run by ALTER EXTENSION pg_audience UPDATE.
--
-- Every row stays, and models built by 0.3.0 are served as they are (same stored format). New in
-- 0.4.0: audiences between builds include the events that arrived since the build
-- (audience.set_fresh_events; read at query time when an index makes it cheap), and guarded builds
-- (build(..., guard => true)) activate their model only when it is not worse than the active one
-- (audience.activate serves a refused model anyway; models.guard records the comparison).
-- build gains the argument guard and the result column guard (DROP + CREATE: GRANTs on it must
-- be repeated, a WARNING says when there were any).
-- scripts/tests/upgrade.sh checks that an updated database has the same schema as a fresh
-- CREATE EXTENSION of 0.4.0.

\echo Use "ALTER EXTENSION pg_audience UPDATE TO '0.4.0'" to load this file. \quit

-- Functions recreated below lose GRANTs and REVOKEs made on them after CREATE EXTENSION.
DO $acl$
DECLARE
    fns text;
BEGIN
    SELECT string_agg(pg_catalog.format('audience.%s(%s)', p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)), ', '
                      ORDER BY p.proname) INTO fns
      FROM pg_catalog.pg_proc p
     WHERE p.proacl IS NOT NULL AND p.oid IN (
           'audience.build(text, integer, integer, double precision, double precision, integer, double precision, double precision, double precision, double precision, double precision, double precision, timestamp with time zone, text, interval, boolean)'::pg_catalog.regprocedure);
    IF fns IS NOT NULL THEN
        RAISE WARNING 'pg_audience 0.4.0 recreates % with the default privileges (EXECUTE for PUBLIC)', fns
            USING HINT = 'Repeat your GRANT and REVOKE statements on it (new signature: see \df audience.build).';
    END IF;
END
$acl$;

-- ---------------------------------------------------------------- tables

-- models: the deploy guard's comparison (NULL for models built before).
ALTER TABLE audience.models ADD COLUMN guard jsonb;
COMMENT ON COLUMN audience.models.guard IS 'The deploy guard''s comparison with the model that was active when this one was built (build(..., guard => true)), and manual activations; NULL when no guard ran.';

-- ---------------------------------------------------------------- Rust functions

-- build: new argument guard, new result column guard.
DROP FUNCTION audience.build(text, integer, integer, double precision, double precision, integer,
    double precision, double precision, double precision, double precision, double precision,
    double precision, timestamp with time zone, text, interval, boolean);
CREATE FUNCTION audience.build(
    "catalog" TEXT DEFAULT NULL,
    "factors" INT DEFAULT NULL,
    "iterations" INT DEFAULT NULL,
    "regularization" double precision DEFAULT NULL,
    "alpha" double precision DEFAULT NULL,
    "neighbours" INT DEFAULT NULL,
    "prior" double precision DEFAULT NULL,
    "activity_exp" double precision DEFAULT NULL,
    "knn_weight" double precision DEFAULT NULL,
    "volume" double precision DEFAULT NULL,
    "days_exp" double precision DEFAULT NULL,
    "tenure_exp" double precision DEFAULT NULL,
    "until" timestamp with time zone DEFAULT NULL,
    "own" TEXT DEFAULT NULL,
    "own_half_life" interval DEFAULT NULL,
    "tune" bool DEFAULT NULL,
    "guard" bool DEFAULT NULL
) RETURNS TABLE (
    "model_id" bigint,
    "rows_read" bigint,
    "users" bigint,
    "items" bigint,
    "pairs" bigint,
    "seconds" double precision,
    "tuning" jsonb,
    "guard" jsonb
)
VOLATILE
SET search_path TO pg_catalog, @extschema@, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'build_wrapper';
COMMENT ON FUNCTION audience.build(text, integer, integer, double precision, double precision, integer, double precision, double precision, double precision, double precision, double precision, double precision, timestamp with time zone, text, interval, boolean, boolean) IS
    'Builds the catalog''s model from its registered events (one parallel scan, ALS and item-kNN training) and activates it; tunes the scoring knobs of untuned properties on a validation window first (tune => false turns that off); with guard => true activates it only if it ranks the events since the active model''s build no worse than that model. Arguments given once are remembered in catalogs.build_settings.';

-- set_fresh_events: new.
CREATE FUNCTION audience.set_fresh_events(
    "catalog" TEXT,
    "mode" TEXT DEFAULT 'auto',
    "max_rows" bigint DEFAULT NULL
) RETURNS TABLE (
    "catalog" TEXT,
    "mode" TEXT,
    "max_rows" bigint
)
VOLATILE
SET search_path TO pg_catalog, @extschema@, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'set_fresh_events_wrapper';
COMMENT ON FUNCTION audience.set_fresh_events(text, text, bigint) IS
    'Whether audiences of a catalog include the events that arrived since its build (auto: when an index makes reading them cheap; on; off), and past how many new rows the snapshot is served instead.';

-- ---------------------------------------------------------------- SQL functions (new)

-- The scan of a catalog's events since a time, for audiences between builds (src/api/fresh.rs):
-- _build_query's, or the error that stops it (a source dropped or altered since the build), so an
-- audience call serves the model's snapshot instead of failing.
CREATE FUNCTION audience._fresh_query(cid integer, since timestamptz, OUT query text, OUT time_query text, OUT error text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    SELECT b.query, b.time_query INTO query, time_query FROM audience._build_query(cid, since, NULL, NULL) b;
EXCEPTION WHEN OTHERS THEN
    query := NULL;
    time_query := NULL;
    error := format('%s (SQLSTATE %s)', SQLERRM, SQLSTATE);
END
$fn$;

-- Makes a stored model the catalog's active one: a model the deploy guard refused
-- (build(..., guard => true)), or the one it replaced. Waits for no build: fails at once while
-- the catalog is being built, like a second build.
CREATE FUNCTION audience.activate(model_id bigint,
                                  OUT catalog text, OUT active_model_id bigint, OUT previous_model_id bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    cid integer;
    want bigint := activate.model_id;
BEGIN
    IF want IS NULL THEN
        RAISE EXCEPTION 'model_id cannot be NULL'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT m.catalog_id INTO cid FROM audience.models m WHERE m.model_id = want;
    IF cid IS NULL THEN
        RAISE EXCEPTION 'model % does not exist', want
            USING ERRCODE = 'undefined_object',
                  HINT = 'See SELECT model_id, catalog_id, created_at, guard FROM audience.models; a build drops the models that are neither its own nor active.';
    END IF;
    SELECT c.name INTO catalog FROM audience.catalogs c WHERE c.catalog_id = cid;
    PERFORM audience._lock_for_build(catalog);
    IF NOT EXISTS (SELECT 1 FROM audience.model_data d WHERE d.model_id = want) THEN
        RAISE EXCEPTION 'model % has no stored data', want
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Rebuild the catalog with audience.build().';
    END IF;
    SELECT c.active_model_id INTO previous_model_id FROM audience.catalogs c WHERE c.catalog_id = cid;
    UPDATE audience.catalogs c SET active_model_id = want, updated_at = now() WHERE c.catalog_id = cid;
    UPDATE audience.models m
       SET guard = coalesce(m.guard, '{}') || jsonb_build_object('activated_by', current_user::text, 'activated_at', now(),
                                                                'replaced_model_id', previous_model_id)
     WHERE m.model_id = want AND want IS DISTINCT FROM previous_model_id;
    active_model_id := want;
END
$fn$;
COMMENT ON FUNCTION audience.activate(bigint) IS
    'Makes a stored model its catalog''s active model (one the deploy guard of build(..., guard => true) refused, or the one it replaced); records who did it in models.guard.';
