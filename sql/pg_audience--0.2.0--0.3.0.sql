-- pg_audience 0.2.0 -> 0.3.0, run by ALTER EXTENSION pg_audience UPDATE.
--
-- Every row stays, and models built by 0.2.0 are served as they are (same stored format). New in
-- 0.3.0: audiences are served from one memory-mapped copy of each model shared by every backend
-- (files under the data directory, pg_audience/; written from the stored model on first use, so
-- nothing to do here), builds report their phases as NOTICEs, and audience.build_progress() shows
-- the running builds to other sessions. For marketers: audiences of any set of items
-- (recommend_audience_items, save_audience_items), size previews (audience_size), control groups
-- (save_audience(..., control_pct), audience_members.is_control, control_uplift) and the
-- saved_audience_status view. Builds whose scan's final step runs in another session (Citus)
-- take the state as bytes (new aggregate _affinity_collect_bytes), one scan per source on Citus. Tables change in place (saved_audiences: property and values may be NULL for item
-- audiences, new columns items, control_pct, refresh_seconds, last_error, last_error_at;
-- audience_members and audience_changes: is_control); both save_audience functions gain
-- control_pct (DROP + CREATE: GRANTs on them must be repeated, a WARNING says when there were any).
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

-- Functions recreated below lose GRANTs and REVOKEs made on them after CREATE EXTENSION.
DO $acl$
DECLARE
    fns text;
BEGIN
    SELECT string_agg(pg_catalog.format('audience.%s(%s)', p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)), ', '
                      ORDER BY p.proname) INTO fns
      FROM pg_catalog.pg_proc p
     WHERE p.proacl IS NOT NULL AND p.oid IN (
           'audience.save_audience(text, text, text[], double precision, text, bigint, double precision, boolean, interval, boolean)'::pg_catalog.regprocedure,
           'audience.save_audience(text, text, text, double precision, text, bigint, double precision, boolean, interval, boolean)'::pg_catalog.regprocedure);
    IF fns IS NOT NULL THEN
        RAISE WARNING 'pg_audience 0.3.0 recreates % with the default privileges (EXECUTE for PUBLIC)', fns
            USING HINT = 'Repeat your GRANT and REVOKE statements on them (new signatures: see \df audience.*).';
    END IF;
END
$acl$;

-- ---------------------------------------------------------------- tables
ALTER TABLE audience.saved_audiences
    ALTER COLUMN property DROP NOT NULL,
    ALTER COLUMN "values" DROP NOT NULL,
    ADD COLUMN items           text[],
    ADD COLUMN control_pct     double precision NOT NULL DEFAULT 0,
    ADD COLUMN refresh_seconds double precision,
    ADD COLUMN last_error      text,
    ADD COLUMN last_error_at   timestamptz,
    ADD CONSTRAINT saved_audiences_target CHECK ((items IS NULL) OPERATOR(pg_catalog.=) (property IS NOT NULL AND "values" IS NOT NULL)),
    ADD CONSTRAINT saved_audiences_control_pct CHECK (control_pct OPERATOR(pg_catalog.>=) 0 AND control_pct OPERATOR(pg_catalog.<=) 50);
ALTER TABLE audience.audience_members ADD COLUMN is_control boolean NOT NULL DEFAULT false;
ALTER TABLE audience.audience_changes ADD COLUMN is_control boolean;

CREATE VIEW audience.saved_audience_status AS
SELECT s.name AS audience, c.name AS catalog,
       CASE WHEN s.items IS NULL THEN s.property END AS property, s."values", s.items,
       s.max_pct, s.control_pct,
       CASE WHEN s.last_error IS NOT NULL THEN 'refresh failed'
            WHEN s.refreshed_at IS NULL THEN 'never refreshed'
            ELSE 'live' END AS state,
       (SELECT pg_catalog.count(*) FROM audience.audience_members m WHERE m.audience_id OPERATOR(pg_catalog.=) s.audience_id) AS members,
       (SELECT pg_catalog.count(*) FROM audience.audience_members m WHERE m.audience_id OPERATOR(pg_catalog.=) s.audience_id AND m.is_control) AS control_members,
       s.refreshed_at, s.refresh_seconds, s.last_error, s.last_error_at,
       s.model_id, c.active_model_id,
       (c.active_model_id IS NOT NULL AND c.active_model_id IS DISTINCT FROM s.model_id) AS newer_model
  FROM audience.saved_audiences s JOIN audience.catalogs c USING (catalog_id);
COMMENT ON VIEW audience.saved_audience_status IS 'One row per saved audience: live, never refreshed or refresh failed (with the error), its size and control group, its last refresh, the model it was computed from and whether a newer model exists.';

-- ---------------------------------------------------------------- functions
CREATE FUNCTION audience.recommend_audience_items(
    "items" TEXT[],
    "max_pct" double precision,
    "catalog" TEXT DEFAULT NULL,
    "max_users" bigint DEFAULT NULL,
    "min_score" double precision DEFAULT NULL,
    "exclude_engaged" bool DEFAULT false,
    "lookback" interval DEFAULT NULL
) RETURNS TABLE (
    "user_id" TEXT,
    "score" double precision,
    "rank" bigint,
    "percentile" double precision
)
STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'recommend_audience_items_wrapper';

CREATE FUNCTION audience.audience_size(
    "property" TEXT,
    "value" TEXT,
    "pcts" double precision[] DEFAULT '{1,5,10,20}',
    "catalog" TEXT DEFAULT NULL,
    "exclude_engaged" bool DEFAULT false
) RETURNS TABLE (
    "pct" double precision,
    "users" bigint,
    "min_score" double precision,
    "engaged_before" bigint
)
STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'audience_size_wrapper';

CREATE FUNCTION audience.audience_size_items(
    "items" TEXT[],
    "pcts" double precision[] DEFAULT '{1,5,10,20}',
    "catalog" TEXT DEFAULT NULL,
    "exclude_engaged" bool DEFAULT false
) RETURNS TABLE (
    "pct" double precision,
    "users" bigint,
    "min_score" double precision,
    "engaged_before" bigint
)
STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'audience_size_items_wrapper';

CREATE OR REPLACE FUNCTION audience.refresh_audience(name text)
RETURNS TABLE(audience text, members bigint, entered bigint, "left" bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    a audience.saved_audiences;
    cat text;
    mid bigint;
    at timestamptz := clock_timestamp();
    n_in bigint;
    n_out bigint;
    n bigint;
BEGIN
    PERFORM audience._check_name('audience name', refresh_audience.name);
    -- Serialise refreshes of one audience.
    SELECT * INTO a FROM audience.saved_audiences s WHERE s.name = refresh_audience.name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audience "%" does not exist', refresh_audience.name
            USING ERRCODE = 'undefined_object',
                  DETAIL = coalesce('Saved audiences are: ' || (SELECT string_agg(format('%I', s.name), ', ' ORDER BY s.name) FROM audience.saved_audiences s) || '.', 'No audience is saved.'),
                  HINT = 'Save one with audience.save_audience().';
    END IF;
    SELECT c.name, c.active_model_id INTO cat, mid FROM audience.catalogs c WHERE c.catalog_id = a.catalog_id;

    CREATE TEMP TABLE IF NOT EXISTS pg_audience_refresh (user_id text, score float8, rank bigint, is_control boolean) ON COMMIT DROP;
    TRUNCATE pg_audience_refresh;
    -- The control group: a member is held out when a hash of the audience name and the user falls in
    -- the first control_pct percent, so a user who stays keeps their side across refreshes.
    IF a.items IS NOT NULL THEN
        INSERT INTO pg_audience_refresh
        SELECT r.user_id, r.score, r.rank,
               (hashtextextended(a.name || ':' || r.user_id, 0) % 10000 + 10000) % 10000 < a.control_pct * 100
          FROM audience.recommend_audience_items(a.items, a.max_pct, catalog => cat, max_users => a.max_users,
                                                 min_score => a.min_score, exclude_engaged => a.exclude_engaged, lookback => a.lookback) r;
    ELSE
        INSERT INTO pg_audience_refresh
        SELECT r.user_id, r.score, r.rank,
               (hashtextextended(a.name || ':' || r.user_id, 0) % 10000 + 10000) % 10000 < a.control_pct * 100
          FROM audience.recommend_audience(a.property, a."values", a.max_pct, catalog => cat, max_users => a.max_users,
                                           min_score => a.min_score, exclude_engaged => a.exclude_engaged, lookback => a.lookback) r;
    END IF;
    GET DIAGNOSTICS n = ROW_COUNT;

    INSERT INTO audience.audience_changes (audience_id, refreshed_at, user_id, change, score, is_control)
    SELECT a.audience_id, at, r.user_id, 'entered', r.score, r.is_control
      FROM pg_audience_refresh r
     WHERE NOT EXISTS (SELECT 1 FROM audience.audience_members m WHERE m.audience_id = a.audience_id AND m.user_id = r.user_id);
    GET DIAGNOSTICS n_in = ROW_COUNT;
    INSERT INTO audience.audience_changes (audience_id, refreshed_at, user_id, change, score)
    SELECT a.audience_id, at, m.user_id, 'left', NULL
      FROM audience.audience_members m
     WHERE m.audience_id = a.audience_id
       AND NOT EXISTS (SELECT 1 FROM pg_audience_refresh r WHERE r.user_id = m.user_id);
    GET DIAGNOSTICS n_out = ROW_COUNT;

    DELETE FROM audience.audience_members m
     WHERE m.audience_id = a.audience_id
       AND NOT EXISTS (SELECT 1 FROM pg_audience_refresh r WHERE r.user_id = m.user_id);
    -- (No unique key to upsert on: ids of any length are members, see audience_members.)
    UPDATE audience.audience_members m SET score = r.score, rank = r.rank, is_control = r.is_control
      FROM pg_audience_refresh r
     WHERE m.audience_id = a.audience_id AND m.user_id = r.user_id;
    INSERT INTO audience.audience_members (audience_id, user_id, score, rank, entered_at, is_control)
    SELECT a.audience_id, r.user_id, r.score, r.rank, at, r.is_control FROM pg_audience_refresh r
     WHERE NOT EXISTS (SELECT 1 FROM audience.audience_members m WHERE m.audience_id = a.audience_id AND m.user_id = r.user_id);
    DROP TABLE pg_audience_refresh;

    UPDATE audience.saved_audiences s
       SET refreshed_at = at, model_id = mid, refresh_seconds = extract(epoch FROM clock_timestamp() - at)::float8,
           last_error = NULL, last_error_at = NULL
     WHERE s.audience_id = a.audience_id;
    RETURN QUERY SELECT a.name, n, n_in, n_out;
END
$fn$;

DROP FUNCTION audience.save_audience(text, text, text, double precision, text, bigint, double precision, boolean, interval, boolean);
DROP FUNCTION audience.save_audience(text, text, text[], double precision, text, bigint, double precision, boolean, interval, boolean);
-- Inserts or (with replace) updates a saved audience's definition: of property values, or of
-- items (exactly one of vals and items is given).
CREATE FUNCTION audience._store_definition(
    name text, cid integer, property text, vals text[], items text[], max_pct double precision,
    max_users bigint, min_score double precision, exclude_engaged boolean, lookback interval,
    control_pct double precision, replace boolean)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF EXISTS (SELECT 1 FROM audience.saved_audiences s WHERE s.name = _store_definition.name) THEN
        IF NOT coalesce(replace, false) THEN  -- NULL is the default (false), never "replace"
            RAISE EXCEPTION 'audience "%" already exists', _store_definition.name
                USING ERRCODE = 'duplicate_object',
                      HINT = 'Refresh it with audience.refresh_audience(), or pass replace => true to change its definition.';
        END IF;
        UPDATE audience.saved_audiences s
           SET catalog_id = cid, property = _store_definition.property, "values" = vals, items = _store_definition.items,
               max_pct = _store_definition.max_pct, max_users = _store_definition.max_users, min_score = _store_definition.min_score,
               exclude_engaged = coalesce(_store_definition.exclude_engaged, false), lookback = _store_definition.lookback,
               control_pct = _store_definition.control_pct
         WHERE s.name = _store_definition.name;
    ELSE
        INSERT INTO audience.saved_audiences (name, catalog_id, property, "values", items, max_pct, max_users, min_score,
                                              exclude_engaged, lookback, control_pct)
        VALUES (_store_definition.name, cid, _store_definition.property, vals, _store_definition.items, _store_definition.max_pct,
                _store_definition.max_users, _store_definition.min_score, coalesce(_store_definition.exclude_engaged, false),
                _store_definition.lookback, _store_definition.control_pct);
    END IF;
END
$fn$;

CREATE FUNCTION audience.save_audience(
    name text,
    property text,
    value text[],
    max_pct double precision,
    catalog text DEFAULT NULL,
    max_users bigint DEFAULT NULL,
    min_score double precision DEFAULT NULL,
    exclude_engaged boolean DEFAULT false,
    lookback interval DEFAULT NULL,
    replace boolean DEFAULT false,
    control_pct double precision DEFAULT 0)
RETURNS TABLE(audience text, members bigint, entered bigint, "left" bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    cid integer;
BEGIN
    PERFORM audience._check_name('audience name', save_audience.name);
    IF value IS NULL OR cardinality(value) = 0 THEN
        RAISE EXCEPTION 'value cannot be null or empty' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM audience._check_control_pct(control_pct);
    cid := audience._catalog_id(catalog);
    -- Validate the definition once now (errors here leave nothing behind).
    PERFORM 1 FROM audience.recommend_audience(property, value, max_pct, catalog => (SELECT c.name FROM audience.catalogs c WHERE c.catalog_id = cid),
                                               max_users => max_users, min_score => min_score,
                                               exclude_engaged => exclude_engaged, lookback => lookback) LIMIT 1;
    PERFORM audience._store_definition(save_audience.name, cid, save_audience.property, save_audience.value, NULL,
                                       save_audience.max_pct, save_audience.max_users, save_audience.min_score,
                                       save_audience.exclude_engaged, save_audience.lookback, save_audience.control_pct, replace);
    RETURN QUERY SELECT * FROM audience.refresh_audience(save_audience.name);
END
$fn$;

CREATE FUNCTION audience._check_control_pct(control_pct double precision) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF control_pct IS NULL OR NOT (control_pct >= 0 AND control_pct <= 50) THEN
        RAISE EXCEPTION 'control_pct must be between 0 and 50'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The value given was %s.', coalesce(control_pct::text, 'NULL')),
                  HINT = 'Pass the percentage of the audience to hold out as a control group, e.g. 10 (0: none).';
    END IF;
END
$fn$;

CREATE FUNCTION audience.save_audience_items(
    name text,
    items text[],
    max_pct double precision,
    catalog text DEFAULT NULL,
    max_users bigint DEFAULT NULL,
    min_score double precision DEFAULT NULL,
    exclude_engaged boolean DEFAULT false,
    lookback interval DEFAULT NULL,
    replace boolean DEFAULT false,
    control_pct double precision DEFAULT 0)
RETURNS TABLE(audience text, members bigint, entered bigint, "left" bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    cid integer;
BEGIN
    PERFORM audience._check_name('audience name', save_audience_items.name);
    IF items IS NULL THEN
        RAISE EXCEPTION 'items cannot be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM audience._check_control_pct(control_pct);
    cid := audience._catalog_id(catalog);
    -- Validate the definition once now (errors here leave nothing behind).
    PERFORM 1 FROM audience.recommend_audience_items(items, max_pct, catalog => (SELECT c.name FROM audience.catalogs c WHERE c.catalog_id = cid),
                                                     max_users => max_users, min_score => min_score,
                                                     exclude_engaged => exclude_engaged, lookback => lookback) LIMIT 1;
    PERFORM audience._store_definition(save_audience_items.name, cid, NULL, NULL, save_audience_items.items,
                                       save_audience_items.max_pct, save_audience_items.max_users, save_audience_items.min_score,
                                       save_audience_items.exclude_engaged, save_audience_items.lookback, save_audience_items.control_pct,
                                       replace);
    RETURN QUERY SELECT * FROM audience.refresh_audience(save_audience_items.name);
END
$fn$;

CREATE FUNCTION audience.save_audience(
    name text,
    property text,
    value text,
    max_pct double precision,
    catalog text DEFAULT NULL,
    max_users bigint DEFAULT NULL,
    min_score double precision DEFAULT NULL,
    exclude_engaged boolean DEFAULT false,
    lookback interval DEFAULT NULL,
    replace boolean DEFAULT false,
    control_pct double precision DEFAULT 0)
RETURNS TABLE(audience text, members bigint, entered bigint, "left" bigint)
LANGUAGE sql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT * FROM audience.save_audience(name, property, CASE WHEN value IS NOT NULL THEN ARRAY[value] END, max_pct,
                                         catalog, max_users, min_score, exclude_engaged, lookback, replace, control_pct)
$fn$;

CREATE OR REPLACE FUNCTION audience.refresh_all_audiences()
RETURNS TABLE(audience text, members bigint, entered bigint, "left" bigint, error text)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    s record;
    r record;
    st text;
    msg text;
BEGIN
    -- Each audience in its own subtransaction: one that fails (a dropped property, a catalog
    -- without a model ...) is reported, with a WARNING for the server log, and the others refresh.
    FOR s IN SELECT sa.name FROM audience.saved_audiences sa ORDER BY sa.name LOOP
        BEGIN
            SELECT * INTO r FROM audience.refresh_audience(s.name);
            audience := r.audience; members := r.members; entered := r.entered; "left" := r."left"; error := NULL;
        EXCEPTION WHEN OTHERS THEN
            GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT;
            audience := s.name; members := NULL; entered := NULL; "left" := NULL;
            error := format('%s (SQLSTATE %s)', msg, st);
            RAISE WARNING 'refreshing audience "%" failed: %', s.name, error;
            -- Kept for audience.saved_audience_status until a refresh succeeds.
            UPDATE audience.saved_audiences sa SET last_error = error, last_error_at = clock_timestamp() WHERE sa.name = s.name;
        END;
        RETURN NEXT;
    END LOOP;
END
$fn$;

COMMENT ON FUNCTION audience.save_audience(text, text, text[], double precision, text, bigint, double precision, boolean, interval, boolean, double precision) IS
    'Saves an audience definition and materialises its members (see audience.refresh_audience); control_pct holds out that share of them as a control group.';
COMMENT ON FUNCTION audience.save_audience_items(text, text[], double precision, text, bigint, double precision, boolean, interval, boolean, double precision) IS
    'Saves an audience of any set of items (the list is stored as given) and materialises its members; control_pct holds out that share of them as a control group.';
COMMENT ON FUNCTION audience.save_audience(text, text, text, double precision, text, bigint, double precision, boolean, interval, boolean, double precision) IS
    'Saves an audience definition for one value and materialises it into audience.audience_members.';
COMMENT ON FUNCTION audience.recommend_audience_items(text[], double precision, text, bigint, double precision, boolean, interval) IS
    'The users most likely to engage with any of the given items (product ids), best first, capped at the top max_pct percent of users.';
COMMENT ON FUNCTION audience.audience_size(text, text, double precision[], text, boolean) IS
    'The size of a property value''s audience at several cuts (percentages): users, lowest score and how many engaged with the value before.';
COMMENT ON FUNCTION audience.audience_size_items(text[], double precision[], text, boolean) IS
    'The size of the audience of a set of items at several cuts (percentages): users, lowest score and how many engaged with the items before.';

CREATE FUNCTION audience._value_items(
    "catalog" TEXT,
    "property" TEXT,
    "values" TEXT[]
) RETURNS TEXT[]
STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'value_items_wrapper';

CREATE FUNCTION audience.control_uplift(name text, since timestamptz, until timestamptz DEFAULT NULL)
RETURNS TABLE(treated_users bigint, treated_engaged bigint, treated_rate double precision,
              control_users bigint, control_engaged bigint, control_rate double precision,
              uplift double precision, uplift_low double precision, uplift_high double precision)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    a audience.saved_audiences;
    cat text;
    wanted text[];
    ev record;
    rel regclass;
    texpr text;
    parts text[] := '{}';
    se double precision;
BEGIN
    PERFORM audience._check_name('audience name', control_uplift.name);
    IF since IS NULL THEN
        RAISE EXCEPTION 'since cannot be null' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'Pass the time the campaign started: engagement from then on is counted.';
    END IF;
    SELECT * INTO a FROM audience.saved_audiences s WHERE s.name = control_uplift.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audience "%" does not exist', control_uplift.name
            USING ERRCODE = 'undefined_object', HINT = 'Save one with audience.save_audience().';
    END IF;
    SELECT c.name INTO cat FROM audience.catalogs c WHERE c.catalog_id = a.catalog_id;
    wanted := coalesce(a.items, audience._value_items(cat, a.property, a."values"));
    FOR ev IN SELECT e.* FROM audience.events e WHERE e.catalog_id = a.catalog_id ORDER BY e.event_id LOOP
        rel := audience._relation(ev.source_schema, ev.source_table);
        texpr := audience._time_expr(rel, ev.time_column);
        parts := parts || format(
            'SELECT s.%I::pg_catalog.text AS user_id FROM %s s WHERE s.%I::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($1)'
            ' AND %s OPERATOR(pg_catalog.>=) $2 AND ($3 IS NULL OR %s OPERATOR(pg_catalog.<) $3)%s',
            ev.user_column, rel::text, ev.product_column, texpr, texpr,
            CASE WHEN ev.event_column IS NOT NULL
                 THEN format(' AND s.%I::pg_catalog.text OPERATOR(pg_catalog.=) %L', ev.event_column, ev.event_value) ELSE '' END);
    END LOOP;
    IF cardinality(parts) = 0 THEN
        parts := ARRAY['SELECT NULL::pg_catalog.text AS user_id WHERE false'];
    END IF;
    EXECUTE format(
        'WITH engaged AS (SELECT DISTINCT e.user_id FROM (%s) e)
         SELECT pg_catalog.count(*) FILTER (WHERE NOT m.is_control),
                pg_catalog.count(*) FILTER (WHERE NOT m.is_control AND e.user_id IS NOT NULL),
                pg_catalog.count(*) FILTER (WHERE m.is_control),
                pg_catalog.count(*) FILTER (WHERE m.is_control AND e.user_id IS NOT NULL)
           FROM audience.audience_members m LEFT JOIN engaged e ON e.user_id OPERATOR(pg_catalog.=) m.user_id
          WHERE m.audience_id OPERATOR(pg_catalog.=) $4', array_to_string(parts, ' UNION ALL '))
        INTO treated_users, treated_engaged, control_users, control_engaged
        USING wanted, since, until, a.audience_id;
    treated_rate := treated_engaged::float8 / nullif(treated_users, 0);
    control_rate := control_engaged::float8 / nullif(control_users, 0);
    uplift := treated_rate - control_rate;
    se := sqrt(treated_rate * (1 - treated_rate) / treated_users + control_rate * (1 - control_rate) / control_users);
    uplift_low := uplift - 1.959964 * se;
    uplift_high := uplift + 1.959964 * se;
    RETURN NEXT;
END
$fn$;
COMMENT ON FUNCTION audience.control_uplift(text, timestamp with time zone, timestamp with time zone) IS
    'Engagement with a saved audience''s items since a time, treated members vs control group, with the uplift and its 95% confidence interval.';

-- The scan's generator also returns one query per source (a build on Citus tables aggregates
-- each source alone, so that Citus can push the aggregate down to the workers): a new OUT
-- parameter, hence DROP + CREATE.
DROP FUNCTION audience._build_query(integer, timestamptz, timestamptz, timestamptz);
CREATE FUNCTION audience._build_query(cid integer, since timestamptz, until timestamptz, reference timestamptz,
                                       OUT query text, OUT properties text[], OUT time_query text,
                                       OUT source_queries text[])
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    grp record;
    ev record;
    rel regclass;
    parts text[] := '{}';
    props text[];
    exprs text[];
    texpr text;
    filter text;
    wexpr text;
    pexpr text;
    wcase text;
    hcase text;
    pcase text;
    pfirst text;
    psame boolean;
    m record;
    i integer;
    n integer;
BEGIN
    SELECT coalesce(array_agg(DISTINCT pm.property ORDER BY pm.property), '{}') INTO props
      FROM audience.property_mappings pm WHERE pm.catalog_id = cid AND pm.event_id IS NOT NULL;
    FOR grp IN
        SELECT e.source_schema, e.source_table, e.user_column, e.product_column, e.time_column, e.event_column,
               array_agg(e.event_id ORDER BY e.event_id) AS ids
          FROM audience.events e
         WHERE e.catalog_id = cid
         GROUP BY e.source_schema, e.source_table, e.user_column, e.product_column, e.time_column, e.event_column,
                  CASE WHEN e.event_column IS NULL THEN e.event_id END
         ORDER BY min(e.event_id)
    LOOP
        rel := audience._relation(grp.source_schema, grp.source_table);
        PERFORM audience._check_id_column(rel, grp.product_column, 'product id column');
        PERFORM audience._check_id_column(rel, grp.user_column, 'user id column');
        texpr := audience._time_expr(rel, grp.time_column);
        filter := format('s.%I IS NOT NULL AND s.%I IS NOT NULL AND pg_catalog.isfinite(%s)', grp.user_column, grp.product_column, texpr);
        IF since IS NOT NULL THEN
            filter := filter || format(' AND %s OPERATOR(pg_catalog.>=) %L::pg_catalog.timestamptz', texpr, since);
        END IF;
        IF until IS NOT NULL THEN
            filter := filter || format(' AND %s OPERATOR(pg_catalog.<) %L::pg_catalog.timestamptz', texpr, until);
        END IF;
        wcase := '';
        hcase := '';
        pcase := '';
        pfirst := NULL;
        psame := true;
        n := 0;
        FOR ev IN SELECT e.* FROM audience.events e WHERE e.event_id = ANY (grp.ids) ORDER BY e.event_id LOOP
            n := n + 1;
            IF ev.weight_column IS NULL THEN
                wexpr := format('%s::pg_catalog.float8', ev.weight);
            ELSE
                PERFORM audience._column_type(rel, ev.weight_column, 'weight column');
                wexpr := format('(%s::pg_catalog.float8 OPERATOR(pg_catalog.*) coalesce(s.%I::pg_catalog.float8, 1))', ev.weight, ev.weight_column);
            END IF;
            exprs := '{}';
            FOR i IN 1 .. coalesce(array_length(props, 1), 0) LOOP
                SELECT * INTO m FROM audience.property_mappings pm
                 WHERE pm.catalog_id = cid AND pm.event_id = ev.event_id AND pm.property = props[i];
                IF FOUND THEN
                    exprs := exprs || audience._property_expr(rel,
                        CASE WHEN m.json_key IS NULL THEN m.column_name END, m.json_key, m.column_name, m.delimiter);
                ELSE
                    exprs := exprs || 'NULL::pg_catalog.text'::text;
                END IF;
            END LOOP;
            IF array_length(exprs, 1) IS NULL OR NOT EXISTS (SELECT 1 FROM audience.property_mappings pm WHERE pm.event_id = ev.event_id) THEN
                pexpr := 'NULL::pg_catalog.text';
            ELSE
                -- One text per row: the values joined by chr(30), NULL as an empty segment.
                IF array_length(exprs, 1) = 1 THEN
                    pexpr := exprs[1];
                ELSE
                    SELECT string_agg(format('coalesce(%s, %L)', x, ''), ' OPERATOR(pg_catalog.||) pg_catalog.chr(30) OPERATOR(pg_catalog.||) ')
                      INTO pexpr FROM unnest(exprs) AS x;
                END IF;
            END IF;
            IF pfirst IS NULL THEN
                pfirst := pexpr;
            ELSIF pfirst <> pexpr THEN
                psame := false;
            END IF;
            IF grp.event_column IS NOT NULL THEN
                -- (CASE WHEN with a qualified operator, not CASE x WHEN v: that form looks `=` up
                -- on the search_path.)
                wcase := wcase || format(' WHEN s.%I::pg_catalog.text OPERATOR(pg_catalog.=) %L::pg_catalog.text THEN %s', grp.event_column, ev.event_value, wexpr);
                hcase := hcase || format(' WHEN s.%I::pg_catalog.text OPERATOR(pg_catalog.=) %L::pg_catalog.text THEN %L::pg_catalog.interval', grp.event_column, ev.event_value, ev.half_life);
                pcase := pcase || format(' WHEN s.%I::pg_catalog.text OPERATOR(pg_catalog.=) %L::pg_catalog.text THEN %s', grp.event_column, ev.event_value, pexpr);
            END IF;
        END LOOP;
        IF grp.event_column IS NOT NULL THEN
            PERFORM audience._column_type(rel, grp.event_column, 'event name column');
            filter := filter || format(' AND s.%I::pg_catalog.text OPERATOR(pg_catalog.=) ANY (%L::pg_catalog.text[])', grp.event_column,
                                       (SELECT array_agg(e.event_value ORDER BY e.event_id) FROM audience.events e WHERE e.event_id = ANY (grp.ids)));
        END IF;
        IF n > 1 THEN
            -- Several event types of one table in one pass.
            wexpr := format('CASE%s END', wcase);
            ev := NULL;
            parts := parts || format(
                'SELECT s.%I::pg_catalog.text AS u, s.%I::pg_catalog.text AS i, %s AS w, %s AS t, CASE%s END AS h, %s AS p FROM %s s WHERE %s',
                grp.user_column, grp.product_column, wexpr, texpr, hcase,
                CASE WHEN psame THEN pfirst ELSE format('CASE%s END', pcase) END,
                rel::text, filter);
        ELSE
            SELECT e.* INTO ev FROM audience.events e WHERE e.event_id = grp.ids[1];
            parts := parts || format(
                'SELECT s.%I::pg_catalog.text AS u, s.%I::pg_catalog.text AS i, %s AS w, %s AS t, %L::pg_catalog.interval AS h, %s AS p FROM %s s WHERE %s',
                grp.user_column, grp.product_column, wexpr, texpr, ev.half_life, pfirst, rel::text, filter);
        END IF;
    END LOOP;
    IF array_length(parts, 1) IS NULL THEN
        RAISE EXCEPTION 'catalog "%" has no events', (SELECT c.name FROM audience.catalogs c WHERE c.catalog_id = cid)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Register event sources with audience.add_event() before building.';
    END IF;
    query := format('SELECT audience._affinity_collect(ev.u, ev.i, ev.w, ev.t, ev.h, %L::pg_catalog.timestamptz, %s, ev.p) FROM (%s) ev',
                    reference, coalesce(array_length(props, 1), 0), array_to_string(parts, ' UNION ALL '));
    time_query := format('SELECT pg_catalog.min(ev.t), pg_catalog.max(ev.t) FROM (%s) ev', array_to_string(parts, ' UNION ALL '));
    -- The same aggregate over each source alone (Citus pushes it down to the workers only over
    -- one distributed table; the build merges the states).
    SELECT array_agg(format('SELECT audience._affinity_collect(ev.u, ev.i, ev.w, ev.t, ev.h, %L::pg_catalog.timestamptz, %s, ev.p) FROM (%s) ev',
                            reference, coalesce(array_length(props, 1), 0), x) ORDER BY o)
      INTO source_queries FROM unnest(parts) WITH ORDINALITY AS u(x, o);
    properties := props;
END
$fn$;

-- A build whose scan's final step ran in another session (a single-shard Citus table, say) takes
-- the state as bytes through this aggregate (audience.scan_state).
CREATE FUNCTION audience._affinity_final_bytes(
    "state" internal
) RETURNS bytea
PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_affinity_final_bytes_wrapper';
CREATE AGGREGATE audience._affinity_collect_bytes(user_id text, item_id text, weight double precision,
                                                  event_time timestamptz, half_life interval, reference_time timestamptz,
                                                  n_props integer, props text) (
    sfunc = audience._affinity_collect_sfunc,
    stype = internal,
    finalfunc = audience._affinity_final_bytes,
    finalfunc_modify = read_write,
    combinefunc = audience._affinity_combine,
    serialfunc = audience._affinity_serial,
    deserialfunc = audience._affinity_deserial,
    parallel = safe
);
