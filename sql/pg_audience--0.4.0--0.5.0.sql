-- pg_audience 0.4.0 -> 0.5.0, run by ALTER EXTENSION pg_audience UPDATE.
--
-- Every row stays, and models built by 0.4.0 are served as they are (same stored format). New in
-- 0.5.0: audience.build_incremental grows the active model by the events since its build without
-- scanning the older ones again. Builds now record the catalog's registration in models.stats
-- ('registration'): a model built by 0.4.0 lacks it, so its first incremental build asks for a
-- full build. forget_user marks every stored model (stats 'full_build_due'), so that no incremental
-- build keeps a forgotten user (CREATE OR REPLACE: GRANTs on it stay).
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
    'Grows the catalog''s active model by the events since its build (affinities, engagement days, item properties, ALS continued from the model''s factors, item-kNN computed again when new items arrived or the pairs grew 5% since, or as knn says) and activates the result, without scanning older events again.';

-- forget_user: marks the stored models that may hold the forgotten user.
CREATE OR REPLACE FUNCTION audience.forget_user(user_id text, rebuild boolean DEFAULT true)
RETURNS TABLE(catalog text, source text, rows_deleted bigint, status text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    ev record;
    c record;
    rel regclass;
    kind "char";
    typ text;
    n bigint;
    st text;
    msg text;
BEGIN
    IF user_id IS NULL THEN
        RAISE EXCEPTION 'user_id cannot be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- The extension's own tables first: a role that may not delete there is no privacy officer
    -- (42501 for the whole call, nothing deleted).
    DELETE FROM audience.audience_members m WHERE m.user_id = forget_user.user_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    catalog := NULL; source := 'audience.audience_members'; rows_deleted := n; status := 'deleted';
    RETURN NEXT;
    DELETE FROM audience.audience_changes ch WHERE ch.user_id = forget_user.user_id;
    GET DIAGNOSTICS n = ROW_COUNT;
    source := 'audience.audience_changes'; rows_deleted := n;
    RETURN NEXT;

    FOR ev IN SELECT e.*, ca.name AS catalog_name FROM audience.events e JOIN audience.catalogs ca USING (catalog_id)
               ORDER BY ca.name, e.event_id LOOP
        catalog := ev.catalog_name;
        source := format('%I.%I', ev.source_schema, ev.source_table);
        rows_deleted := NULL;
        rel := to_regclass(source);
        SELECT cl.relkind INTO kind FROM pg_class cl WHERE cl.oid = rel;
        IF rel IS NULL THEN
            status := 'skipped: the relation does not exist any more';
        ELSIF kind IN ('v', 'm') THEN
            status := 'skipped: a view; delete from the tables it reads';
        ELSIF NOT ev.erasable THEN
            status := format('skipped: not erasable (registered by %I without DELETE on it, or with erasable => false)', ev.registered_by);
        ELSIF NOT coalesce((SELECT has_table_privilege(r.oid, rel, 'DELETE') FROM pg_roles r WHERE r.rolname = ev.registered_by), false) THEN
            status := format('skipped: %I, who registered it, no longer has DELETE on it', ev.registered_by);
        ELSE
            BEGIN
                SELECT format_type(a.atttypid, NULL) INTO typ
                  FROM pg_attribute a
                 WHERE a.attrelid = rel AND a.attname = ev.user_column AND a.attnum > 0 AND NOT a.attisdropped;
                IF typ IS NULL THEN
                    RAISE EXCEPTION 'column "%" of relation "%" does not exist', ev.user_column, source
                        USING ERRCODE = 'undefined_column';
                END IF;
                BEGIN
                    EXECUTE format('SELECT $1::%s', typ) USING forget_user.user_id;
                EXCEPTION WHEN data_exception THEN
                    typ := NULL;  -- not a valid id of the column's type: no row can hold it
                END;
                IF typ IS NULL THEN
                    n := 0;
                ELSE
                    EXECUTE format('DELETE FROM %s s WHERE s.%I OPERATOR(pg_catalog.=) $1::%s', rel::text, ev.user_column, typ)
                       USING forget_user.user_id;
                    GET DIAGNOSTICS n = ROW_COUNT;
                END IF;
                rows_deleted := n;
                status := 'deleted';
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
                status := format('failed: %s (SQLSTATE %s)', msg, st);
            END;
        END IF;
        IF status <> 'deleted' THEN
            RAISE WARNING 'forget_user: %: %', source, status;
        END IF;
        RETURN NEXT;
    END LOOP;

    -- Every stored model may hold the user: none may be grown by build_incremental (which keeps
    -- its users) any more; a full build makes a model without the user.
    BEGIN
        UPDATE audience.models m
           SET stats = m.stats OPERATOR(pg_catalog.||) '{"full_build_due": "a user was forgotten after this model was built"}'::pg_catalog.jsonb;
    EXCEPTION WHEN insufficient_privilege THEN
        RAISE WARNING 'forget_user: the stored models still hold the user until a full build'
            USING HINT = 'Run audience.build() for each catalog (a role with UPDATE on audience.models marks them so that build_incremental refuses to keep the user).';
    END;

    IF rebuild THEN
        FOR c IN SELECT ca.name FROM audience.catalogs ca WHERE ca.active_model_id IS NOT NULL ORDER BY ca.name LOOP
            catalog := c.name; source := NULL; rows_deleted := NULL;
            BEGIN
                PERFORM audience.build(c.name);
                status := 'rebuilt';
            EXCEPTION WHEN OTHERS THEN
                GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
                status := format('rebuild failed: %s (SQLSTATE %s); the active model still holds the user', msg, st);
                RAISE WARNING 'forget_user: catalog "%": %', c.name, status;
            END;
            RETURN NEXT;
        END LOOP;
    END IF;
END
$fn$;
