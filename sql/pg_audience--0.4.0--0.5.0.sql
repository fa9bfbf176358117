-- pg_audience 0.4.0 -> 0.5.0, run by ALTER EXTENSION pg_audience UPDATE.
--
-- Every row stays, and models built by 0.4.0 are served as they are (same stored format). New in
-- 0.5.0: audience.build_incremental grows the active model by the events since its build without
-- scanning the older ones again. Builds now record the catalog's registration in models.stats
-- ('registration'): a model built by 0.4.0 lacks it, so its first incremental build asks for a
-- full build. No function is recreated, so no GRANT is lost.
-- scripts/tests/upgrade.sh checks that an updated database has the same schema as a fresh
-- CREATE EXTENSION of 0.5.0.

\echo Use "ALTER EXTENSION pg_audience UPDATE TO '0.5.0'" to load this file. \quit

CREATE FUNCTION audience."build_incremental"(
	"catalog" TEXT DEFAULT NULL,
	"iterations" INT DEFAULT NULL,
	"knn" bool DEFAULT NULL
) RETURNS TABLE (
	"model_id" bigint,
	"base_model_id" bigint,
	"new_rows" bigint,
	"users" bigint,
	"items" bigint,
	"pairs" bigint,
	"new_users" bigint,
	"new_items" bigint,
	"seconds" double precision
)
VOLATILE
LANGUAGE c
SET search_path TO pg_catalog, @extschema@, pg_temp
AS 'MODULE_PATHNAME', 'build_incremental_wrapper';
COMMENT ON FUNCTION audience.build_incremental(text, integer, boolean) IS
    'Grows the catalog''s active model by the events since its build (affinities, engagement days, item properties, ALS continued from the model''s factors, item-kNN recomputed unless knn => false) and activates the result, without scanning older events again.';
