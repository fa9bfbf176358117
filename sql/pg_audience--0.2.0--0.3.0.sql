-- pg_audience 0.2.0 -> 0.3.0, run by ALTER EXTENSION pg_audience UPDATE.
--
-- Every row stays, and models built by 0.2.0 are served as they are (same stored format). New in
-- 0.3.0: audiences are served from one memory-mapped copy of each model shared by every backend
-- (files under the data directory, pg_audience/; written from the stored model on first use, so
-- nothing to do here), builds report their phases as NOTICEs, and audience.build_progress() shows
-- the running builds to other sessions.
-- scripts/tests/upgrade.sh checks that an updated database has the same schema as a fresh
-- CREATE EXTENSION of 0.3.0.

\echo Use "ALTER EXTENSION pg_audience UPDATE TO '0.3.0'" to load this file. \quit

CREATE FUNCTION audience.build_progress() RETURNS TABLE (
    "pid" INT,
    "catalog" TEXT,
    "role" TEXT,
    "phase" TEXT,
    "detail" TEXT,
    "started" timestamp with time zone,
    "phase_seconds" double precision,
    "seconds" double precision
)
STRICT VOLATILE
LANGUAGE c
AS 'MODULE_PATHNAME', 'build_progress_wrapper';
COMMENT ON FUNCTION audience.build_progress() IS
    'The builds running now, one row each, with their phase (scan, products, tune, als, knn, store) and seconds; a role sees the builds of roles it is a member of (members of pg_read_all_stats see all).';
