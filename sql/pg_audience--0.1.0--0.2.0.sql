-- pg_audience 0.1.0 -> 0.2.0, run by ALTER EXTENSION pg_audience UPDATE.
--
-- Every row stays: catalogs, event registrations, property mappings, build settings, models,
-- evaluations, saved audiences, their members and change logs. Tables change in place (events
-- gains registered_by and erasable; property_values and audience_members lose the primary keys
-- that could not hold long values, for plain and hash indexes). Models keep their rows, but 0.2.0
-- reads only its own model format
-- (v5, with the engagement days of each pair): until its catalog is rebuilt, a 0.1.0 model fails
-- on first use with SQLSTATE 55000 and the hint to run audience.build() for the catalog; the
-- rebuild replaces it (and remembers the catalog's build settings as before). The update names
-- the catalogs to rebuild in a WARNING.
--
-- Functions: build, tune, add_event, refresh_all_audiences, forget_user and generate_demo_shop
-- changed their arguments or result (DROP + CREATE), other changed bodies are replaced (CREATE OR
-- REPLACE), the Rust functions put pg_catalog first on their search_path. Every C function keeps
-- its symbol.
-- scripts/tests/upgrade.sh checks that an updated database has the same schema as a fresh
-- CREATE EXTENSION of 0.2.0.

\echo Use "ALTER EXTENSION pg_audience UPDATE TO '0.2.0'" to load this file. \quit

-- Functions recreated below lose GRANTs and REVOKEs made on them after CREATE EXTENSION.
DO $acl$
DECLARE
    fns text;
BEGIN
    SELECT string_agg(pg_catalog.format('audience.%s(%s)', p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)), ', '
                      ORDER BY p.proname) INTO fns
      FROM pg_catalog.pg_proc p
     WHERE p.proacl IS NOT NULL AND p.oid IN (
           'audience.build(text, integer, integer, double precision, double precision, integer, double precision, double precision, double precision, double precision, double precision, double precision, timestamp with time zone)'::pg_catalog.regprocedure,
           'audience.tune(text, text, interval)'::pg_catalog.regprocedure,
           'audience.generate_demo_shop(text, integer, integer, bigint, integer, double precision)'::pg_catalog.regprocedure,
           'audience.add_event(text, regclass, text, text, text, text, text, double precision, interval, text, text)'::pg_catalog.regprocedure,
           'audience.refresh_all_audiences()'::pg_catalog.regprocedure,
           'audience.forget_user(text, boolean)'::pg_catalog.regprocedure);
    IF fns IS NOT NULL THEN
        RAISE WARNING 'pg_audience 0.2.0 recreates % with the default privileges (EXECUTE for PUBLIC)', fns
            USING HINT = 'Repeat your GRANT and REVOKE statements on them (new signatures: see \df audience.*).';
    END IF;
END
$acl$;

-- ---------------------------------------------------------------- tables

-- events: who registered a source, and whether forget_user may delete from it. A registration of
-- 0.1.0 counts as made by the role running the update, and is erasable when its source is a table
-- that role may DELETE from, as add_event decides for a new one (forget_user checks that role's
-- DELETE again at each call). 0.1.0's forget_user deleted from every source.
ALTER TABLE audience.events
    ADD COLUMN registered_by name NOT NULL DEFAULT CURRENT_USER,
    ADD COLUMN erasable boolean NOT NULL DEFAULT false;
UPDATE audience.events e SET erasable = true
  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
 WHERE n.nspname OPERATOR(pg_catalog.=) e.source_schema AND c.relname OPERATOR(pg_catalog.=) e.source_table
   AND c.relkind IN ('r', 'p', 'f') AND pg_catalog.has_table_privilege(c.oid, 'DELETE');
-- catalog_events shows them.
CREATE OR REPLACE VIEW audience.catalog_events AS
SELECT c.name AS catalog, e.name AS event,
       pg_catalog.format('%I.%I', e.source_schema, e.source_table) AS source,
       e.event_column, e.event_value, e.user_column, e.product_column, e.time_column,
       e.weight, e.weight_column, e.half_life, e.created_at, e.registered_by, e.erasable
  FROM audience.events e JOIN audience.catalogs c USING (catalog_id);

-- No btree keys on property values or user ids (a key cannot hold a value over ~2.7 kB).
ALTER TABLE audience.property_values DROP CONSTRAINT property_values_pkey;
CREATE INDEX property_values_by_model ON audience.property_values (model_id, property);
ALTER TABLE audience.audience_members DROP CONSTRAINT audience_members_pkey;
CREATE INDEX audience_members_by_audience ON audience.audience_members (audience_id);
CREATE INDEX audience_members_by_user ON audience.audience_members USING hash (user_id);
CREATE INDEX audience_changes_by_user ON audience.audience_changes USING hash (user_id);

-- ---------------------------------------------------------------- Rust functions

-- build: new arguments own, own_half_life and tune; new result column tuning.
DROP FUNCTION audience.build(text, integer, integer, double precision, double precision, integer,
    double precision, double precision, double precision, double precision, double precision,
    double precision, timestamp with time zone);
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
    "tune" bool DEFAULT NULL
) RETURNS TABLE (
    "model_id" bigint,
    "rows_read" bigint,
    "users" bigint,
    "items" bigint,
    "pairs" bigint,
    "seconds" double precision,
    "tuning" jsonb
)
VOLATILE
SET search_path TO pg_catalog, @extschema@, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'build_wrapper';
COMMENT ON FUNCTION audience.build(text, integer, integer, double precision, double precision, integer, double precision, double precision, double precision, double precision, double precision, double precision, timestamp with time zone, text, interval, boolean) IS
    'Builds the catalog''s model from its registered events (one parallel scan, ALS and item-kNN training) and activates it; tunes the scoring knobs of untuned properties on a validation window first (tune => false turns that off). Arguments given once are remembered in catalogs.build_settings.';

-- tune: new result columns own and own_half_life_days.
DROP FUNCTION audience.tune(text, text, interval);
CREATE FUNCTION audience.tune(
    "catalog" TEXT,
    "property" TEXT,
    "holdout" interval DEFAULT NULL
) RETURNS TABLE (
    "prior" double precision,
    "activity_exp" double precision,
    "knn_weight" double precision,
    "volume" double precision,
    "days_exp" double precision,
    "tenure_exp" double precision,
    "own" TEXT,
    "own_half_life_days" double precision,
    "objective" double precision
)
VOLATILE
SET search_path TO pg_catalog, @extschema@, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'tune_wrapper';
COMMENT ON FUNCTION audience.tune(text, text, interval) IS
    'Chooses the ALS settings and the scoring knobs of one property (own engagement measure, prior, activity_exp, knn_weight, volume, days_exp, tenure_exp) by temporal validation on the catalog''s events and remembers them for later builds.';

-- pg_catalog first on the search_path of the other Rust functions that pin one.
ALTER FUNCTION audience.evaluate(text, text, interval, text[], boolean)
    SET search_path TO pg_catalog, @extschema@, pg_temp;
ALTER FUNCTION audience.version() SET search_path TO pg_catalog, @extschema@;

-- ---------------------------------------------------------------- catalog registration

-- Epoch-second event times that are NaN, infinite or beyond +-2e11 s are skipped like NULL times.
CREATE OR REPLACE FUNCTION audience._time_expr(rel regclass, col text) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t regtype := audience._column_type(rel, col, 'event time column');
BEGIN
    IF t = 'timestamp with time zone'::regtype THEN
        RETURN format('s.%I', col);
    ELSIF t IN ('timestamp without time zone', 'date') THEN
        RETURN format('s.%I::pg_catalog.timestamptz', col);
    ELSIF t IN ('smallint', 'integer', 'bigint', 'numeric', 'double precision', 'real') THEN
        -- Unix epoch seconds. NaN, infinities and values beyond +-2e11 s (about year 8300) are not
        -- times: NULL, so the row is skipped like a NULL time instead of failing the scan (22008).
        RETURN format('CASE WHEN s.%1$I::pg_catalog.float8 OPERATOR(pg_catalog.>=) (-2.0e11)::pg_catalog.float8'
                      ' AND s.%1$I::pg_catalog.float8 OPERATOR(pg_catalog.<=) 2.0e11::pg_catalog.float8'
                      ' THEN pg_catalog.to_timestamp(s.%1$I::pg_catalog.float8) END', col);
    END IF;
    RAISE EXCEPTION 'column "%" of relation "%" has type %, which cannot be used as an event time', col, rel::text, t::text
        USING ERRCODE = 'datatype_mismatch',
              HINT = 'Use a timestamptz, timestamp or date column, or a number of seconds since 1970-01-01.';
END
$fn$;

-- The generated scan: CASE WHEN with qualified operators instead of CASE x WHEN (which looks
-- `=` up on the search_path).
CREATE OR REPLACE FUNCTION audience._build_query(cid integer, since timestamptz, until timestamptz, reference timestamptz,
                                       OUT query text, OUT properties text[], OUT time_query text)
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
    properties := props;
END
$fn$;

-- add_event: new argument erasable; refuses half-lives above 10000 years.
DROP FUNCTION audience.add_event(text, regclass, text, text, text, text, text, double precision, interval, text, text);
CREATE FUNCTION audience.add_event(
    catalog text,
    source regclass,
    product_id text,
    user_id text DEFAULT 'user_id',
    event_time text DEFAULT 'timestamp',
    event_column text DEFAULT NULL,
    event_value text DEFAULT NULL,
    weight double precision DEFAULT 1,
    half_life interval DEFAULT NULL,
    weight_column text DEFAULT NULL,
    name text DEFAULT NULL,
    erasable boolean DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    cid integer;
    eid integer;
    ename text;
    t regtype;
    kind "char";
    can_delete boolean;
    is_erasable boolean;
BEGIN
    cid := audience._catalog_id(catalog);
    PERFORM audience._check_source(source);
    -- forget_user deletes only from erasable sources: tables the registering role may delete from.
    SELECT c.relkind INTO kind FROM pg_class c WHERE c.oid = source;
    can_delete := kind IN ('r', 'p', 'f') AND has_table_privilege(source, 'DELETE');
    IF add_event.erasable THEN
        IF kind NOT IN ('r', 'p', 'f') THEN
            RAISE EXCEPTION '"%" is a view, which cannot be registered as erasable', source::text
                USING ERRCODE = 'wrong_object_type',
                      HINT = 'Pass erasable => false (forget_user reports views and skips them), and delete from the tables the view reads.';
        END IF;
        IF NOT can_delete THEN
            RAISE EXCEPTION 'permission denied to register "%" as erasable', source::text
                USING ERRCODE = 'insufficient_privilege',
                      DETAIL = 'forget_user deletes from erasable sources, so the role registering one must have DELETE on it.',
                      HINT = format('GRANT DELETE ON %s TO %I, or pass erasable => false.', source::text, current_user);
        END IF;
    END IF;
    is_erasable := coalesce(add_event.erasable, can_delete);
    PERFORM audience._check_id_column(source, product_id, 'product id column');
    PERFORM audience._check_id_column(source, user_id, 'user id column');
    PERFORM audience._time_expr(source, event_time);
    IF (event_column IS NULL) <> (event_value IS NULL) THEN
        RAISE EXCEPTION 'event_column and event_value must be given together'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'To filter a shared events table pass both, e.g. event_column => ''event'', event_value => ''order_completed''.';
    END IF;
    IF event_column IS NOT NULL THEN
        PERFORM audience._column_type(source, event_column, 'event name column');
    END IF;
    IF weight IS NULL THEN
        RAISE EXCEPTION 'weight cannot be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT (weight >= 0 AND weight < 'infinity'::float8) THEN
        RAISE EXCEPTION 'weight must be a finite number not below zero'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The weight given was %s.', weight),
                  HINT = 'Weigh strong signals higher, e.g. order_completed 5, product_added 3, product_viewed 1.';
    END IF;
    IF half_life IS NOT NULL AND half_life <= '0'::interval THEN
        RAISE EXCEPTION 'half_life must be positive'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The half-life given was %s.', half_life),
                  HINT = 'Pass NULL for no recency decay, or e.g. ''30 days''.';
    END IF;
    IF half_life IS NOT NULL AND half_life > '10000 years'::interval THEN
        RAISE EXCEPTION 'half_life must be at most 10000 years'
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('The half-life given was %s.', half_life),
                  HINT = 'Pass NULL for no recency decay.';
    END IF;
    IF weight_column IS NOT NULL THEN
        t := audience._column_type(source, weight_column, 'weight column');
        IF t NOT IN ('smallint', 'integer', 'bigint', 'numeric', 'real', 'double precision') THEN
            RAISE EXCEPTION 'column "%" of relation "%" has type %, which cannot be used as a weight', weight_column, source::text, t::text
                USING ERRCODE = 'datatype_mismatch',
                      HINT = 'Use a numeric column (e.g. a rating or a quantity).';
        END IF;
    END IF;
    ename := coalesce(add_event.name, add_event.event_value, (SELECT c.relname FROM pg_class c WHERE c.oid = source)::text);
    PERFORM audience._check_name('event name', ename);
    PERFORM 1 FROM audience.events e WHERE e.catalog_id = cid AND e.name = ename;
    IF FOUND THEN
        RAISE EXCEPTION 'event "%" is already registered in catalog "%"', ename, coalesce(catalog, '(default)')
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Pass name => ''...'' to register another source under a different name, or drop it with audience.drop_event().';
    END IF;
    INSERT INTO audience.events (catalog_id, name, source_schema, source_table, user_column, product_column, time_column,
                                 event_column, event_value, weight, weight_column, half_life, registered_by, erasable)
    SELECT cid, ename, n.nspname, c.relname, add_event.user_id, add_event.product_id, add_event.event_time,
           add_event.event_column, add_event.event_value, add_event.weight, add_event.weight_column, add_event.half_life,
           current_user, is_erasable
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = source
    RETURNING event_id INTO eid;
    IF add_event.erasable IS NULL AND NOT is_erasable THEN
        RAISE NOTICE 'source "%" is registered as not erasable: audience.forget_user will not delete from it', source::text
            USING DETAIL = CASE WHEN kind IN ('r', 'p', 'f') THEN format('%I has no DELETE on it.', current_user)
                                ELSE 'It is a view.' END;
    END IF;
    UPDATE audience.catalogs c SET updated_at = now() WHERE c.catalog_id = cid;
    RETURN eid;
END
$fn$;
COMMENT ON FUNCTION audience.add_event(text, regclass, text, text, text, text, text, double precision, interval, text, text, boolean) IS
    'Registers an interaction event source (table or view, optionally filtered on an event-name column) with a weight and a recency half-life; erasable (default: whether you may DELETE from it) says whether forget_user deletes from it.';

-- ---------------------------------------------------------------- saved audiences

-- refresh_audience without an ON CONFLICT key; save_audience(replace => NULL) does not replace.
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

    CREATE TEMP TABLE IF NOT EXISTS pg_audience_refresh (user_id text, score float8, rank bigint) ON COMMIT DROP;
    TRUNCATE pg_audience_refresh;
    INSERT INTO pg_audience_refresh
    SELECT r.user_id, r.score, r.rank
      FROM audience.recommend_audience(a.property, a."values", a.max_pct, catalog => cat, max_users => a.max_users,
                                       min_score => a.min_score, exclude_engaged => a.exclude_engaged, lookback => a.lookback) r;
    GET DIAGNOSTICS n = ROW_COUNT;

    INSERT INTO audience.audience_changes (audience_id, refreshed_at, user_id, change, score)
    SELECT a.audience_id, at, r.user_id, 'entered', r.score
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
    UPDATE audience.audience_members m SET score = r.score, rank = r.rank
      FROM pg_audience_refresh r
     WHERE m.audience_id = a.audience_id AND m.user_id = r.user_id;
    INSERT INTO audience.audience_members (audience_id, user_id, score, rank, entered_at)
    SELECT a.audience_id, r.user_id, r.score, r.rank, at FROM pg_audience_refresh r
     WHERE NOT EXISTS (SELECT 1 FROM audience.audience_members m WHERE m.audience_id = a.audience_id AND m.user_id = r.user_id);
    DROP TABLE pg_audience_refresh;

    UPDATE audience.saved_audiences s SET refreshed_at = at, model_id = mid WHERE s.audience_id = a.audience_id;
    RETURN QUERY SELECT a.name, n, n_in, n_out;
END
$fn$;

CREATE OR REPLACE FUNCTION audience.save_audience(
    name text,
    property text,
    value text[],
    max_pct double precision,
    catalog text DEFAULT NULL,
    max_users bigint DEFAULT NULL,
    min_score double precision DEFAULT NULL,
    exclude_engaged boolean DEFAULT false,
    lookback interval DEFAULT NULL,
    replace boolean DEFAULT false)
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
    cid := audience._catalog_id(catalog);
    -- Validate the definition once now (errors here leave nothing behind).
    PERFORM 1 FROM audience.recommend_audience(property, value, max_pct, catalog => (SELECT c.name FROM audience.catalogs c WHERE c.catalog_id = cid),
                                               max_users => max_users, min_score => min_score,
                                               exclude_engaged => exclude_engaged, lookback => lookback) LIMIT 1;
    IF EXISTS (SELECT 1 FROM audience.saved_audiences s WHERE s.name = save_audience.name) THEN
        IF NOT coalesce(replace, false) THEN  -- NULL is the default (false), never "replace"
            RAISE EXCEPTION 'audience "%" already exists', save_audience.name
                USING ERRCODE = 'duplicate_object',
                      HINT = 'Refresh it with audience.refresh_audience(), or pass replace => true to change its definition.';
        END IF;
        UPDATE audience.saved_audiences s
           SET catalog_id = cid, property = save_audience.property, "values" = save_audience.value,
               max_pct = save_audience.max_pct, max_users = save_audience.max_users, min_score = save_audience.min_score,
               exclude_engaged = coalesce(save_audience.exclude_engaged, false), lookback = save_audience.lookback
         WHERE s.name = save_audience.name;
    ELSE
        INSERT INTO audience.saved_audiences (name, catalog_id, property, "values", max_pct, max_users, min_score, exclude_engaged, lookback)
        VALUES (save_audience.name, cid, save_audience.property, save_audience.value, save_audience.max_pct, save_audience.max_users,
                save_audience.min_score, coalesce(save_audience.exclude_engaged, false), save_audience.lookback);
    END IF;
    RETURN QUERY SELECT * FROM audience.refresh_audience(save_audience.name);
END
$fn$;

-- refresh_all_audiences refreshes each audience on its own (new result column error).
DROP FUNCTION audience.refresh_all_audiences();
CREATE FUNCTION audience.refresh_all_audiences()
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
        END;
        RETURN NEXT;
    END LOOP;
END
$fn$;
COMMENT ON FUNCTION audience.refresh_all_audiences() IS 'Refreshes every saved audience, each on its own: a failing one is reported in the error column and the others refresh (one call for a pg_cron job).';

-- forget_user reports per source (new result column status), deletes from erasable sources only.
DROP FUNCTION audience.forget_user(text, boolean);
CREATE FUNCTION audience.forget_user(user_id text, rebuild boolean DEFAULT true)
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
COMMENT ON FUNCTION audience.forget_user(text, boolean) IS
    'Deletes a user''s saved-audience memberships and rows of every erasable registered source, reporting per source what was deleted or why not, then rebuilds the models (right to be forgotten).';

-- ---------------------------------------------------------------- demo shop

-- generate_demo_shop gains kind => 'grocery' and refuses to replace tables it did not create.
CREATE FUNCTION audience._demo_drop_tables(sch text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    found text[];
BEGIN
    SELECT array_agg(c.relname ORDER BY c.relname) INTO found
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE n.nspname = sch AND c.relname IN ('tracks', 'wishlist_saves', 'users', 'products');
    IF found IS NULL THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname = sch AND c.relname = 'tracks' AND c.relkind = 'r'
                      AND obj_description(c.oid, 'pg_class') LIKE 'pg_audience demo shop%') THEN
        RAISE EXCEPTION 'schema "%" already has tables the demo shop would replace: %', sch, array_to_string(found, ', ')
            USING ERRCODE = 'duplicate_table',
                  DETAIL = 'generate_demo_shop only replaces the tables of a demo shop it generated before.',
                  HINT = 'Pass another target_schema, e.g. generate_demo_shop(''demo'').';
    END IF;
    EXECUTE format('DROP TABLE IF EXISTS %1$I.tracks, %1$I.wishlist_saves, %1$I.users, %1$I.products', sch);
END
$fn$;
COMMENT ON FUNCTION audience._demo_drop_tables(text) IS
    'Internal to audience.generate_demo_shop: drops an earlier demo shop''s tables, refuses other tables of those names.';

CREATE FUNCTION audience._demo_grocery(sch text, n_users integer, n_products integer, n_events bigint,
    n_months integer, s bigint, t_start timestamptz, t_end timestamptz)
RETURNS TABLE(table_name text, row_count bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $fn$
DECLARE
    span_s       double precision := extract(epoch FROM t_end - t_start);
    t_start_ep   double precision := extract(epoch FROM t_start);
    t_end_ep     double precision := extract(epoch FROM t_end);
    -- realised tracks rows per budgeted row (staple dues falling on the same trip, repeated picks
    -- in one basket, trips cut off by churn): calibrates the user budgets to n_events
    calib        constant double precision := 0.904;
    n_cats       integer;
    cat_slots    integer[];       -- 1000 slots: category ids in proportion to everyday popularity
    n_p          bigint;
    n_u          bigint;
    n_t          bigint;
    n_w          bigint;
BEGIN
    -- ---------------------------------------------------------------- catalogue ---------------
    -- category: department, subcategories, base price, usual re-buy cycle in days, everyday
    -- popularity (draws for staples), variety (bought in several versions), stock-up tendency,
    -- range (share of the product catalogue)
    CREATE TEMP TABLE _g_cat (cat_id int PRIMARY KEY, dept text, cat text UNIQUE, subcats text[],
        base float8, cycle float8, pop float8, variety float8, stockup float8, range_w float8);
    INSERT INTO pg_temp._g_cat VALUES
     ( 1,'Dairy & Eggs','Milk','{"Whole Milk","Semi-Skimmed Milk","Skimmed Milk","Lactose-Free Milk"}',1.4,7,1.0,0.10,0.05,1.0),
     ( 2,'Dairy & Eggs','Eggs','{"Free Range Eggs","Organic Eggs","Large Eggs"}',3.2,10,0.7,0.05,0.05,0.6),
     ( 3,'Dairy & Eggs','Yogurt','{"Greek Yogurt","Fruit Yogurt","Natural Yogurt","Kids Yogurt"}',2.4,7,0.5,0.45,0.10,1.4),
     ( 4,'Dairy & Eggs','Cheese','{"Cheddar","Mozzarella","Cream Cheese","Brie","Parmesan"}',3.8,14,0.6,0.35,0.10,1.5),
     ( 5,'Dairy & Eggs','Butter & Cream','{"Butter","Spreadable Butter","Double Cream"}',2.8,21,0.4,0.10,0.05,0.7),
     ( 6,'Dairy & Eggs','Plant Milk','{"Oat Drink","Almond Drink","Soya Drink"}',2.1,7,0.1,0.20,0.10,0.6),
     ( 7,'Bakery','Bread','{"White Bread","Wholemeal Bread","Sourdough","Rolls"}',1.9,7,0.9,0.20,0.05,1.2),
     ( 8,'Bakery','Pastries & Cakes','{"Croissants","Muffins","Cakes","Pancakes"}',3.2,14,0.2,0.30,0.15,1.0),
     ( 9,'Fruit & Veg','Fresh Fruit','{"Bananas","Apples","Berries","Citrus","Grapes"}',2.6,7,0.8,0.60,0.05,1.6),
     (10,'Fruit & Veg','Fresh Vegetables','{"Potatoes","Tomatoes","Onions","Carrots","Peppers","Broccoli"}',1.8,7,0.7,0.60,0.05,1.6),
     (11,'Fruit & Veg','Salad & Herbs','{"Salad Bags","Fresh Herbs","Avocados"}',1.9,7,0.3,0.30,0.05,0.8),
     (12,'Meat & Fish','Chicken','{"Chicken Breast","Whole Chicken","Chicken Thighs"}',5.5,10,0.4,0.20,0.10,0.8),
     (13,'Meat & Fish','Beef & Pork','{"Mince","Steak","Sausages","Bacon","Pork Chops"}',6.0,14,0.3,0.30,0.15,1.0),
     (14,'Meat & Fish','Fish & Seafood','{"Salmon","White Fish","Prawns","Smoked Fish"}',6.5,14,0.2,0.20,0.10,0.8),
     (15,'Meat & Fish','Deli Meats','{"Ham","Salami","Chorizo","Turkey Slices"}',3.0,10,0.3,0.30,0.10,0.8),
     (16,'Meat & Fish','Meat Alternatives','{"Tofu","Plant Burgers","Veggie Sausages"}',3.2,10,0.05,0.30,0.10,0.6),
     (17,'Pantry','Pasta','{"Spaghetti","Penne","Fusilli","Fresh Pasta"}',1.5,21,0.4,0.30,0.15,0.9),
     (18,'Pantry','Rice & Grains','{"Basmati Rice","Long Grain Rice","Quinoa","Couscous"}',2.2,35,0.25,0.10,0.10,0.7),
     (19,'Pantry','Breakfast Cereal','{"Cornflakes","Granola","Muesli","Porridge Oats","Kids Cereal"}',3.0,14,0.35,0.30,0.10,1.0),
     (20,'Pantry','Canned Goods','{"Baked Beans","Chopped Tomatoes","Tuna","Soup","Chickpeas"}',1.2,21,0.3,0.50,0.25,1.0),
     (21,'Pantry','Sauces & Condiments','{"Ketchup","Mayonnaise","Pasta Sauce","Curry Paste","Soy Sauce"}',2.2,28,0.25,0.30,0.10,1.1),
     (22,'Pantry','Oils & Vinegar','{"Olive Oil","Sunflower Oil","Balsamic Vinegar"}',4.5,42,0.15,0.05,0.05,0.5),
     (23,'Pantry','Baking','{"Flour","Sugar","Baking Mixes","Yeast"}',1.8,35,0.1,0.40,0.10,0.7),
     (24,'Pantry','Spreads','{"Jam","Peanut Butter","Honey","Chocolate Spread"}',2.8,28,0.2,0.20,0.05,0.7),
     (25,'Pantry','Herbs & Spices','{"Black Pepper","Paprika","Mixed Herbs","Curry Powder"}',1.6,42,0.05,0.40,0.10,0.6),
     (26,'Snacks & Sweets','Crisps & Snacks','{"Crisps","Tortilla Chips","Popcorn","Pretzels"}',2.0,10,0.35,0.40,0.35,1.2),
     (27,'Snacks & Sweets','Chocolate & Sweets','{"Chocolate Bars","Sharing Bags","Gummies","Boxed Chocolates"}',2.2,10,0.3,0.40,0.30,1.2),
     (28,'Snacks & Sweets','Biscuits','{"Digestives","Cookies","Crackers","Shortbread"}',1.7,14,0.25,0.30,0.15,0.9),
     (29,'Snacks & Sweets','Nuts & Dried Fruit','{"Mixed Nuts","Almonds","Raisins","Trail Mix"}',3.0,21,0.1,0.20,0.10,0.6),
     (30,'Drinks','Coffee','{"Ground Coffee","Coffee Beans","Instant Coffee","Coffee Pods"}',5.5,21,0.45,0.15,0.10,1.0),
     (31,'Drinks','Tea','{"Black Tea","Green Tea","Herbal Tea"}',2.8,28,0.3,0.20,0.05,0.7),
     (32,'Drinks','Soft Drinks','{"Cola","Lemonade","Tonic","Energy Drinks"}',2.0,10,0.3,0.40,0.35,1.0),
     (33,'Drinks','Juice','{"Orange Juice","Apple Juice","Smoothies"}',2.5,10,0.3,0.20,0.10,0.7),
     (34,'Drinks','Water','{"Still Water","Sparkling Water"}',3.0,10,0.2,0.10,0.20,0.4),
     (35,'Drinks','Beer & Cider','{"Lager","IPA","Stout","Cider"}',7.0,14,0.2,0.30,0.40,0.9),
     (36,'Drinks','Wine','{"Red Wine","White Wine","Rosé","Sparkling Wine"}',8.5,14,0.2,0.40,0.45,1.4),
     (37,'Frozen','Frozen Meals & Pizza','{"Frozen Pizza","Ready Meals","Frozen Chips","Fish Fingers"}',3.5,14,0.3,0.40,0.25,1.1),
     (38,'Frozen','Ice Cream','{"Tubs","Sticks & Cones","Sorbet"}',4.0,21,0.15,0.30,0.20,0.8),
     (39,'Frozen','Frozen Vegetables','{"Peas","Mixed Vegetables","Frozen Berries"}',1.8,21,0.15,0.30,0.10,0.5),
     (40,'Household','Laundry','{"Laundry Liquid","Laundry Pods","Fabric Conditioner"}',8.0,35,0.3,0.20,0.10,0.8),
     (41,'Household','Dish & Cleaning','{"Washing-Up Liquid","Dishwasher Tablets","Surface Cleaner","Bleach"}',3.5,35,0.3,0.40,0.10,0.9),
     (42,'Household','Toilet Paper & Tissues','{"Toilet Roll","Kitchen Roll","Tissues"}',5.0,28,0.5,0.30,0.10,0.6),
     (43,'Household','Bags & Foil','{"Bin Bags","Foil","Cling Film","Food Bags"}',2.5,42,0.1,0.20,0.05,0.5),
     (44,'Health & Beauty','Oral Care','{"Toothpaste","Toothbrushes","Mouthwash"}',3.0,35,0.2,0.30,0.05,0.7),
     (45,'Health & Beauty','Shampoo & Body Wash','{"Shampoo","Conditioner","Shower Gel"}',4.0,35,0.2,0.30,0.05,0.8),
     (46,'Health & Beauty','Deodorant & Shaving','{"Deodorant","Razors","Shaving Gel"}',4.5,42,0.15,0.20,0.05,0.7),
     (47,'Baby','Nappies & Wipes','{"Nappies","Baby Wipes","Pull-Ups"}',9.0,10,0.03,0.30,0.10,0.6),
     (48,'Baby','Baby Food & Milk','{"Baby Formula","Baby Pouches","Baby Snacks"}',6.0,7,0.02,0.40,0.10,0.7),
     (49,'Pet','Cat Food','{"Wet Cat Food","Dry Cat Food","Cat Treats"}',4.0,10,0.03,0.50,0.20,0.7),
     (50,'Pet','Dog Food','{"Wet Dog Food","Dry Dog Food","Dog Treats"}',6.0,14,0.03,0.40,0.20,0.7),
     (51,'Pet','Cat Litter','{"Clumping Litter","Wood Pellets"}',6.0,28,0.01,0.05,0.05,0.3);
    SELECT count(*) INTO n_cats FROM pg_temp._g_cat;
    IF n_products < n_cats THEN
        RAISE EXCEPTION 'products must be >= % for kind grocery (one per category)', n_cats
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = format('Pass products => %s or more.', n_cats);
    END IF;
    SELECT array_agg(x.cat_id ORDER BY sl.i) INTO cat_slots
    FROM generate_series(0, 999) AS sl(i)
    CROSS JOIN LATERAL (
        SELECT c.cat_id FROM (
            SELECT cat_id, sum(pop) OVER (ORDER BY cat_id) / sum(pop) OVER () AS hi FROM pg_temp._g_cat) c
        WHERE (sl.i + 0.5) / 1000 < c.hi ORDER BY c.hi LIMIT 1) x;

    -- brand x category blocks: national brands in popularity order, then the private labels
    -- (H = Harvest Basket, the standard own brand; V = Value Pantry, budget; F = Finest Table,
    -- premium own brand; G = Green Leaf, organic own brand)
    CREATE TEMP TABLE _g_block AS
    WITH v(cat, nat, priv) AS (VALUES
     ('Milk','{"Arla","Lactaid"}'::text[],'HVG'), ('Eggs','{"Happy Egg Co"}','HVG'),
     ('Yogurt','{"Danone","Müller","Chobani"}','HG'), ('Cheese','{"Président","Philadelphia","Arla"}','HVF'),
     ('Butter & Cream','{"Lurpak","Kerrygold","Président"}','HV'), ('Plant Milk','{"Oatly","Alpro"}','H'),
     ('Bread','{"Warburtons","Hovis"}','HVF'), ('Pastries & Cakes','{"St Michel","Mr Kipling"}','HF'),
     ('Fresh Fruit','{"Chiquita","Dole","Zespri"}','HVG'), ('Fresh Vegetables','{"Green Giant"}','HVG'),
     ('Salad & Herbs','{"Florette","Dole"}','HG'), ('Chicken','{"Tyson","Perdue"}','HVF'),
     ('Beef & Pork','{"Hormel","Tyson"}','HVF'), ('Fish & Seafood','{"Young''s","John West"}','HF'),
     ('Deli Meats','{"Oscar Mayer","Hormel"}','HF'), ('Meat Alternatives','{"Beyond Meat","Quorn"}','HG'),
     ('Pasta','{"Barilla","De Cecco"}','HVF'), ('Rice & Grains','{"Tilda","Ben''s Original"}','HV'),
     ('Breakfast Cereal','{"Kellogg''s","Nestlé","Quaker"}','HV'),
     ('Canned Goods','{"Heinz","Campbell''s","John West"}','HV'),
     ('Sauces & Condiments','{"Heinz","Hellmann''s","Barilla"}','HF'),
     ('Oils & Vinegar','{"Bertolli","Filippo Berio"}','HF'), ('Baking','{"Dr. Oetker"}','HV'),
     ('Spreads','{"Bonne Maman","Nutella"}','H'), ('Herbs & Spices','{"McCormick"}','H'),
     ('Crisps & Snacks','{"Lay''s","Pringles","Doritos"}','HV'),
     ('Chocolate & Sweets','{"Cadbury","Lindt","Haribo"}','HF'),
     ('Biscuits','{"McVitie''s","Oreo"}','HVF'), ('Nuts & Dried Fruit','{"Blue Diamond","KIND"}','HG'),
     ('Coffee','{"Nescafé","Lavazza","Starbucks"}','HF'), ('Tea','{"Twinings","Lipton"}','H'),
     ('Soft Drinks','{"Coca-Cola","Pepsi"}','HV'), ('Juice','{"Tropicana","Innocent"}','H'),
     ('Water','{"Evian","San Pellegrino"}','HV'), ('Beer & Cider','{"Heineken","Corona","Guinness"}','H'),
     ('Wine','{"Yellow Tail","Barefoot"}','HF'), ('Frozen Meals & Pizza','{"Dr. Oetker","Birds Eye"}','HV'),
     ('Ice Cream','{"Ben & Jerry''s","Häagen-Dazs","Magnum"}','H'),
     ('Frozen Vegetables','{"Birds Eye","Green Giant"}','HV'), ('Laundry','{"Persil","Ariel"}','HV'),
     ('Dish & Cleaning','{"Fairy","Finish"}','HV'), ('Toilet Paper & Tissues','{"Andrex","Kleenex"}','HV'),
     ('Bags & Foil','{"Glad"}','H'), ('Oral Care','{"Colgate","Oral-B"}','H'),
     ('Shampoo & Body Wash','{"Dove","Head & Shoulders"}','H'), ('Deodorant & Shaving','{"Gillette","Dove"}','H'),
     ('Nappies & Wipes','{"Pampers","Huggies"}','H'), ('Baby Food & Milk','{"Aptamil","Hipp"}','HG'),
     ('Cat Food','{"Whiskas","Felix","Purina"}','H'), ('Dog Food','{"Pedigree","Purina"}','H'),
     ('Cat Litter','{"Catsan","Purina"}','H')
    ), b AS (
        SELECT c.cat_id, n.brand, 'National'::text AS brand_type, 1.0 / power(n.ord, 0.7) AS w, n.ord::int AS ord
        FROM v JOIN pg_temp._g_cat c ON c.cat = v.cat
        CROSS JOIN LATERAL unnest(v.nat) WITH ORDINALITY AS n(brand, ord)
        UNION ALL
        SELECT c.cat_id, pl.brand, 'Private', pl.w, pl.ord
        FROM v JOIN pg_temp._g_cat c ON c.cat = v.cat
        JOIN (VALUES ('H', 'Harvest Basket', 0.8, 11), ('V', 'Value Pantry', 0.45, 12),
                     ('F', 'Finest Table', 0.3, 13), ('G', 'Green Leaf', 0.3, 14)) AS pl(code, brand, w, ord)
          ON strpos(v.priv, pl.code) > 0
    )
    SELECT row_number() OVER (ORDER BY b.cat_id, b.w DESC, b.ord)::int AS block_id, b.*,
           CASE b.brand WHEN 'Harvest Basket' THEN 0.78 WHEN 'Value Pantry' THEN 0.55
                WHEN 'Finest Table' THEN 1.3 WHEN 'Green Leaf' THEN 1.2
                ELSE CASE WHEN b.brand IN ('Lindt', 'Starbucks', 'Häagen-Dazs', 'Zespri',
                                           'Innocent', 'Evian', 'Lurpak', 'Bonne Maman', 'Ben & Jerry''s', 'Oatly')
                          THEN 1.45
                          ELSE 1.0 + 0.25 * audience._demo_rand(hashtext(b.brand), 20240612) END
           END AS premium
    FROM b;
    IF (SELECT count(DISTINCT cat_id) FROM pg_temp._g_block) <> n_cats THEN
        RAISE EXCEPTION 'internal error: grocery block list names an unknown category';
    END IF;

    -- products per category in proportion to its range (>= 1 each), then per block in proportion
    -- to the block weight (the category's first national brand >= 1); blocks laid out
    -- contiguously, popular blocks and products first within a category
    ALTER TABLE pg_temp._g_block ADD COLUMN p_start int, ADD COLUMN p_cnt int;
    WITH c AS (
        SELECT cat_id,
               coalesce(sum(range_w) OVER (ORDER BY cat_id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                   / sum(range_w) OVER () AS lo,
               sum(range_w) OVER (ORDER BY cat_id) / sum(range_w) OVER () AS hi
        FROM pg_temp._g_cat
    ), nc AS (
        SELECT cat_id, 1 + floor((n_products - n_cats) * hi)::int - floor((n_products - n_cats) * lo)::int AS n_c
        FROM c
    ), bw AS (
        SELECT bk.block_id, nc.n_c,
               row_number() OVER (PARTITION BY bk.cat_id ORDER BY bk.block_id) AS rn,
               coalesce(sum(bk.w) OVER (PARTITION BY bk.cat_id ORDER BY bk.block_id
                                         ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                   / sum(bk.w) OVER (PARTITION BY bk.cat_id) AS lo,
               sum(bk.w) OVER (PARTITION BY bk.cat_id ORDER BY bk.block_id) / sum(bk.w) OVER (PARTITION BY bk.cat_id) AS hi
        FROM pg_temp._g_block bk JOIN nc USING (cat_id)
    ), cnt AS (
        SELECT block_id,
               (rn = 1)::int + floor((n_c - 1) * hi)::int - floor((n_c - 1) * lo)::int AS p_cnt
        FROM bw
    )
    UPDATE pg_temp._g_block bk
    SET p_cnt = z.p_cnt, p_start = z.p_start
    FROM (SELECT block_id, p_cnt, 1 + sum(p_cnt) OVER (ORDER BY block_id) - p_cnt AS p_start FROM cnt) z
    WHERE z.block_id = bk.block_id;

    -- price = category base x brand factor x lognormal(0, 0.25), in .x9 steps; band from price / base
    CREATE TEMP TABLE _g_product AS
    SELECT x.idx, 'SKU-' || lpad(x.idx::text, 6, '0') AS product_id, x.brand, x.brand_type,
           x.brand_type = 'Private' AS priv, x.dept, x.cat_id, x.cat AS category, x.subcat AS subcategory,
           greatest(0.29, round(x.raw::numeric, 1) - 0.01) AS price,
           CASE WHEN x.raw / x.base < 0.75 THEN 'budget' WHEN x.raw / x.base < 1.3 THEN 'mid'
                WHEN x.raw / x.base < 2.1 THEN 'premium' ELSE 'luxury' END AS price_band,
           format('%s %s %s', x.brand,
                  (ARRAY['Classic','Original','Organic','Light','Family Pack','Extra','Simply','Natural',
                         'Premium','Rich','Fresh','Everyday','Farmhouse','Golden','Mild','Bold'])
                      [1 + floor(16 * audience._demo_rand(x.idx, s # 502))::int],
                  x.subcat) AS name
    FROM (
        SELECT p.idx, bk.brand, bk.brand_type, c.dept, c.cat_id, c.cat, c.base,
               c.subcats[1 + floor(cardinality(c.subcats) * audience._demo_rand(p.idx, s # 501))::int] AS subcat,
               c.base * bk.premium
                 * exp(0.25 * sqrt(-2 * ln(greatest(audience._demo_rand(p.idx, s # 503), 1e-12)))
                            * cos(2 * pi() * audience._demo_rand(p.idx, s # 504))) AS raw
        FROM pg_temp._g_block bk
        JOIN pg_temp._g_cat c USING (cat_id)
        CROSS JOIN LATERAL generate_series(bk.p_start, bk.p_start + bk.p_cnt - 1) AS p(idx)
        WHERE bk.p_cnt > 0
    ) x;
    ALTER TABLE pg_temp._g_product ADD PRIMARY KEY (idx);

    -- per category and brand type, the products in popularity order (a category without
    -- private-label products falls back to its national brands)
    CREATE TEMP TABLE _g_pool AS
    SELECT c.cat_id, t.priv, coalesce(own.idxs, oth.idxs) AS idxs, cardinality(coalesce(own.idxs, oth.idxs)) AS n
    FROM pg_temp._g_cat c
    CROSS JOIN (VALUES (true), (false)) AS t(priv)
    CROSS JOIN LATERAL (SELECT array_agg(p.idx ORDER BY p.idx) AS idxs FROM pg_temp._g_product p
                        WHERE p.cat_id = c.cat_id AND p.priv = t.priv) own
    CROSS JOIN LATERAL (SELECT array_agg(p.idx ORDER BY p.idx) AS idxs FROM pg_temp._g_product p
                        WHERE p.cat_id = c.cat_id AND p.priv <> t.priv) oth;
    ALTER TABLE pg_temp._g_pool ADD PRIMARY KEY (cat_id, priv);

    -- monthly price per product (slow drift, ~15% of product-months on promotion)
    CREATE TEMP TABLE _g_price AS
    SELECT p.idx, m.m, jsonb_build_object('brand', p.brand, 'category', p.category,
               'price', greatest(0.19, round((p.price * q.f)::numeric, 2))) AS props
    FROM pg_temp._g_product p
    CROSS JOIN generate_series(0, n_months - 1) AS m(m)
    CROSS JOIN LATERAL (SELECT
        (1 + 0.03 * (audience._demo_rand(p.idx::bigint * 1000 + m.m, s # 511) - 0.5) * (m.m - n_months + 1))
        * CASE WHEN audience._demo_rand(p.idx::bigint * 1000 + m.m, s # 512) < 0.15
               THEN 0.65 + 0.25 * audience._demo_rand(p.idx::bigint * 1000 + m.m, s # 513) ELSE 1 END AS f) q;
    ALTER TABLE pg_temp._g_price ADD PRIMARY KEY (idx, m);

    -- household tastes: ranked category lists and related tastes (for a user's second taste)
    CREATE TEMP TABLE _g_persona (persona_id int PRIMARY KEY, persona text, weight float8, cats int[], nc int,
        related int[], cum_lo float8, cum_hi float8);
    INSERT INTO pg_temp._g_persona (persona_id, persona, weight, cats, nc, related)
    SELECT v.pid, v.persona, v.weight, cl.cats, cardinality(cl.cats), v.related
    FROM (VALUES
     (1,'family',0.16,'{"Milk","Breakfast Cereal","Juice","Bread","Yogurt","Cheese","Crisps & Snacks","Chicken","Pasta","Fresh Fruit","Biscuits","Frozen Meals & Pizza","Ice Cream","Canned Goods"}'::text[],'{2,8,3,4}'::int[]),
     (2,'baby',0.05,'{"Nappies & Wipes","Baby Food & Milk","Fresh Fruit","Yogurt","Milk","Bread"}','{1,5}'),
     (3,'cat_owner',0.05,'{"Cat Food","Cat Litter"}','{5,13,7}'),
     (4,'dog_owner',0.05,'{"Dog Food"}','{1,10}'),
     (5,'healthy',0.09,'{"Plant Milk","Fresh Vegetables","Meat Alternatives","Fresh Fruit","Salad & Herbs","Nuts & Dried Fruit","Rice & Grains","Tea","Yogurt"}','{10,6}'),
     (6,'breakfast',0.09,'{"Coffee","Bread","Butter & Cream","Eggs","Spreads","Milk","Pastries & Cakes","Juice"}','{9,13}'),
     (7,'entertainer',0.07,'{"Wine","Cheese","Deli Meats","Crisps & Snacks","Nuts & Dried Fruit","Beer & Cider","Chocolate & Sweets","Salad & Herbs"}','{10,8}'),
     (8,'snacker',0.08,'{"Beer & Cider","Crisps & Snacks","Soft Drinks","Frozen Meals & Pizza","Chocolate & Sweets","Deli Meats","Ice Cream"}','{11,7}'),
     (9,'baker',0.05,'{"Baking","Butter & Cream","Eggs","Milk","Chocolate & Sweets","Herbs & Spices","Nuts & Dried Fruit"}','{6,1}'),
     (10,'home_cook',0.11,'{"Fresh Vegetables","Chicken","Beef & Pork","Fish & Seafood","Pasta","Rice & Grains","Oils & Vinegar","Sauces & Condiments","Herbs & Spices","Canned Goods","Salad & Herbs"}','{5,7}'),
     (11,'convenience',0.08,'{"Frozen Meals & Pizza","Soft Drinks","Crisps & Snacks","Canned Goods","Ice Cream","Water","Chocolate & Sweets","Frozen Vegetables"}','{8,12}'),
     (12,'household',0.07,'{"Toilet Paper & Tissues","Laundry","Dish & Cleaning","Bags & Foil","Oral Care","Shampoo & Body Wash","Deodorant & Shaving","Water"}','{1,11}'),
     (13,'traditional',0.05,'{"Tea","Biscuits","Bread","Milk","Butter & Cream","Canned Goods","Spreads","Beef & Pork"}','{6,9}')
    ) AS v(pid, persona, weight, names, related)
    CROSS JOIN LATERAL (
        SELECT array_agg(c.cat_id ORDER BY n.ord) AS cats
        FROM unnest(v.names) WITH ORDINALITY AS n(name, ord)
        LEFT JOIN pg_temp._g_cat c ON c.cat = n.name) cl;
    IF EXISTS (SELECT 1 FROM pg_temp._g_persona WHERE array_position(cats, NULL) IS NOT NULL) THEN
        RAISE EXCEPTION 'internal error: grocery taste list names an unknown category';
    END IF;
    WITH c AS (
        SELECT persona_id, sum(weight) OVER (ORDER BY persona_id) / sum(weight) OVER () AS hi,
               weight / sum(weight) OVER () AS w
        FROM pg_temp._g_persona)
    UPDATE pg_temp._g_persona p SET cum_hi = c.hi, cum_lo = c.hi - c.w
    FROM c WHERE c.persona_id = p.persona_id;
    UPDATE pg_temp._g_persona SET cum_hi = 2 WHERE persona_id = (SELECT max(persona_id) FROM pg_temp._g_persona);

    -- ---------------------------------------------------------------- users -------------------
    -- Times within a user are in days since the start of the day the user became active (day0).
    -- budget = the user's expected order lines, n_events spread in proportion to activity x
    -- active time (each order line also costs the user's expected online add/view rows)
    CREATE TEMP TABLE _g_user AS
    WITH b AS (
        SELECT g::bigint AS user_id,
               t_end - (span_s + 540 * 86400) * audience._demo_rand(g, s # 521) * interval '1 second' AS signup_at,
               audience._demo_rand(g, s # 522) AS u_country,
               -- Pareto(1.4) activity, capped
               least(power(1 - audience._demo_rand(g, s # 523), -1 / 1.4), 100.0) AS act,
               audience._demo_rand(g, s # 524) AS u_churn, audience._demo_rand(g, s # 525) AS u_churn_at,
               audience._demo_rand(g, s # 526) AS u_p1, audience._demo_rand(g, s # 527) AS u_has2,
               audience._demo_rand(g, s # 528) AS u_rel, audience._demo_rand(g, s # 529) AS u_p2,
               audience._demo_rand(g, s # 530) AS u_has3, audience._demo_rand(g, s # 531) AS u_p3,
               audience._demo_rand(g, s # 532) AS u_w1,
               audience._demo_rand(g, s # 533) AS u_priv, audience._demo_rand(g, s # 534) AS u_priv2,
               0.55 + 0.4 * audience._demo_rand(g, s # 535) AS loy,           -- re-buys the usual product
               0.03 + 0.17 * audience._demo_rand(g, s # 536) AS skip,         -- skips a due staple
               0.05 + 0.20 * audience._demo_rand(g, s # 537) AS jit,          -- cycle jitter (sd / cycle)
               -- household factor on cycles (bigger households re-buy sooner)
               exp(0.25 * sqrt(-2 * ln(greatest(audience._demo_rand(g, s # 538), 1e-12)))
                        * cos(2 * pi() * audience._demo_rand(g, s # 539))) AS hh,
               -- usual basket: lognormal, median 6 order lines
               6 * exp(0.45 * sqrt(-2 * ln(greatest(audience._demo_rand(g, s # 540), 1e-12)))
                          * cos(2 * pi() * audience._demo_rand(g, s # 548))) AS basket,
               audience._demo_rand(g, s # 541) AS ph,                         -- trip phase
               9 + 11 * audience._demo_rand(g, s # 542) AS hour,              -- usual shopping hour
               CASE WHEN audience._demo_rand(g, s # 543) < 0.2
                    THEN 0.2 + 0.6 * audience._demo_rand(g, s # 544) ELSE 0 END AS online,
               0.08 + 0.22 * audience._demo_rand(g, s # 545) AS ds,           -- discovery share
               audience._demo_rand(g, s # 546) AS u_round
        FROM generate_series(1, n_users) AS g
    ), p AS (
        SELECT b.*, p1.persona_id AS p1,
               CASE WHEN b.u_has2 < 0.65 THEN
                    CASE WHEN b.u_rel < 0.6 THEN p1.related[1 + floor(cardinality(p1.related) * b.u_p2)::int]
                         ELSE (SELECT pp.persona_id FROM pg_temp._g_persona pp
                               WHERE b.u_p2 >= pp.cum_lo AND b.u_p2 < pp.cum_hi) END END AS p2,
               CASE WHEN b.u_has3 < 0.3 THEN
                    (SELECT pp.persona_id FROM pg_temp._g_persona pp
                     WHERE b.u_p3 >= pp.cum_lo AND b.u_p3 < pp.cum_hi) END AS p3,
               greatest(b.signup_at, t_start) AS from_t
        FROM b JOIN pg_temp._g_persona p1 ON b.u_p1 >= p1.cum_lo AND b.u_p1 < p1.cum_hi
    ), w AS (
        SELECT p.*,
               -- churn: ~20% of users stop shopping at some point, light users more often
               CASE WHEN p.u_churn < 0.3 / sqrt(p.act) THEN p.from_t + (t_end - p.from_t) * p.u_churn_at
                    ELSE t_end END AS to_t,
               CASE WHEN p.p2 IS NULL AND p.p3 IS NULL THEN 1.0 ELSE 0.5 + 0.3 * p.u_w1 END AS w1
        FROM p
    ), a AS (
        SELECT w.*,
               w.act * extract(epoch FROM w.to_t - w.from_t) / span_s AS aw,
               1 + 1.3 * w.online + 0.05 AS f
        FROM w
    )
    SELECT a.user_id, a.signup_at,
           (ARRAY['US','GB','DE','FR','CA','NL','ES','IT','AU','SE','PL','BE','AT','IE','DK'])
               [1 + floor(15 * power(a.u_country, 2.2))::int] AS country,
           a.p1, coalesce(a.p2, a.p1) AS p2, coalesce(a.p3, a.p1) AS p3,
           a.w1 AS thr1,
           a.w1 + CASE WHEN a.p3 IS NULL THEN 0 WHEN a.p2 IS NULL THEN 1 - a.w1 ELSE (1 - a.w1) * 0.35 END AS thr3,
           -- private-label preference: store-brand loyal / national-brand loyal / mixed
           CASE WHEN a.u_priv < 0.22 THEN 0.7 + 0.2 * a.u_priv2
                WHEN a.u_priv < 0.72 THEN 0.03 + 0.17 * a.u_priv2
                ELSE 0.3 + 0.3 * a.u_priv2 END AS p_priv,
           a.loy, a.skip, a.jit, a.hh, a.ph, a.hour, a.online, a.ds, a.u_round, a.basket,
           extract(epoch FROM a.from_t)::float8 AS from_ep,
           extract(epoch FROM a.to_t)::float8 AS to_ep,
           extract(epoch FROM date_trunc('day', a.from_t))::float8 AS day0_ep,
           extract(epoch FROM a.from_t - date_trunc('day', a.from_t))::float8 / 86400 AS t_a,
           extract(epoch FROM a.to_t - date_trunc('day', a.from_t))::float8 / 86400 AS t_l,
           n_events / calib * a.aw / greatest(sum(a.aw * a.f) OVER (), 1e-9) AS budget
    FROM a;
    -- trip rhythm: trips every `gap` days so that budget / basket trips fill the active stretch
    -- (at least 3 days, at most a personal 3 to 6 weeks and 3/4 of the stretch); trip k is at
    -- gap * (k + ph + 0.35 * jitter_k) days. A staple with a cycle shorter than the gap is bought
    -- on every trip.
    -- n_need: staple candidates that surely cover the staple budget (each candidate brings at
    -- least ~0.7 x active days / 42 order lines unless adopted late)
    ALTER TABLE pg_temp._g_user ADD COLUMN gap float8, ADD COLUMN n_need bigint;
    UPDATE pg_temp._g_user SET gap = greatest(3, least(21 + 21 * audience._demo_rand(user_id, s # 549),
                                                       0.75 * (t_l - t_a),
                                                       (t_l - t_a) * basket / greatest(budget, 1e-9))),
        n_need = least(50, ceil(budget * (1 - ds) * 42 / (0.7 * greatest(t_l - t_a, 1))))::bigint;
    ALTER TABLE pg_temp._g_user ADD PRIMARY KEY (user_id);
    ANALYZE pg_temp._g_user;

    -- ---------------------------------------------------------------- staples -----------------
    -- Candidate staples: category draws (35% everyday popularity, else one of the user's tastes,
    -- favouring the top of its list), first occurrence of each category kept, in draw order; each
    -- with a personal cycle, an active stretch (some adopted or dropped mid-window), varieties and
    -- its expected order lines e.
    CREATE TEMP TABLE _g_cand AS
    SELECT y.*, sum(y.e) OVER (PARTITION BY y.user_id ORDER BY y.j) AS cum_e
    FROM (
        SELECT x.user_id, x.d, x.j, x.cat_id, x.cyc, x.t0, x.t1, x.v,
               (x.t1 - x.t0) / greatest(x.cyc, x.gap) * (1 - x.skip) * (1 + 0.6 * x.v) AS e
        FROM (
            SELECT z.user_id, z.d, z.j, z.cat_id, u.skip, u.gap,
                   least(42, greatest(7, c.cycle * u.hh
                       * exp(0.3 * sqrt(-2 * ln(greatest(audience._demo_rand(z.user_id, s # ((z.d << 12) | 605)), 1e-12)))
                                 * cos(2 * pi() * audience._demo_rand(z.user_id, s # ((z.d << 12) | 606)))))) AS cyc,
                   st.t0,
                   CASE WHEN audience._demo_rand(z.user_id, s # ((z.d << 12) | 609)) < 0.1
                        THEN st.t0 + (u.t_l - st.t0) * audience._demo_rand(z.user_id, s # ((z.d << 12) | 610))
                        ELSE u.t_l END AS t1,
                   (audience._demo_rand(z.user_id, s # ((z.d << 12) | 611)) < c.variety)::int
                     + (audience._demo_rand(z.user_id, s # ((z.d << 12) | 612)) < c.variety / 2)::int AS v
            FROM (
                SELECT dd.user_id, dd.d, dd.cat_id, row_number() OVER (PARTITION BY dd.user_id ORDER BY dd.d) AS j
                FROM (
                    SELECT DISTINCT ON (dr.user_id, dr.cat_id) dr.user_id, dr.d, dr.cat_id
                    FROM (
                        SELECT u.user_id, k.d,
                               CASE WHEN audience._demo_rand(u.user_id, s # ((k.d << 12) | 601)) < 0.35
                                    THEN cat_slots[1 + floor(1000 * audience._demo_rand(u.user_id, s # ((k.d << 12) | 602)))::int]
                                    ELSE pp.cats[1 + floor(pp.nc * power(audience._demo_rand(u.user_id, s # ((k.d << 12) | 604)), 1.5))::int]
                               END AS cat_id
                        FROM pg_temp._g_user u
                        CROSS JOIN LATERAL generate_series(1::bigint,
                            least(120, 4 + 2 * u.n_need)) AS k(d)
                        CROSS JOIN LATERAL (SELECT audience._demo_rand(u.user_id, s # ((k.d << 12) | 603)) AS u_pers) up
                        JOIN pg_temp._g_persona pp ON pp.persona_id =
                            CASE WHEN up.u_pers < u.thr1 THEN u.p1 WHEN up.u_pers < u.thr3 THEN u.p3 ELSE u.p2 END
                        OFFSET 0) dr
                    ORDER BY dr.user_id, dr.cat_id, dr.d) dd
                ) z
            JOIN pg_temp._g_user u USING (user_id)
            JOIN pg_temp._g_cat c USING (cat_id)
            CROSS JOIN LATERAL (SELECT
                CASE WHEN z.j > 1 AND audience._demo_rand(z.user_id, s # ((z.d << 12) | 607)) < 0.2
                     THEN u.t_a + (u.t_l - u.t_a) * audience._demo_rand(z.user_id, s # ((z.d << 12) | 608))
                     ELSE u.t_a END AS t0) st
            WHERE z.j <= u.n_need + 2
        ) x
        WHERE x.t1 > x.t0
    ) y;

    -- Staples: candidates in order while the budget lasts (the one crossing the staple budget
    -- with the matching probability); the usual product and the usual varieties.
    CREATE TEMP TABLE _g_staple AS
    SELECT cd.user_id, cd.d, cd.cat_id, cd.cyc, cd.t0, cd.t1,
           audience._demo_rand(cd.user_id, s # ((cd.d << 12) | 614)) AS ph,
           pm.idxs[1 + floor(pm.n * power(audience._demo_rand(cd.user_id, s # ((cd.d << 12) | 616)), 1.8))::int] AS main,
           CASE WHEN cd.v >= 1 THEN
               p1.idxs[1 + floor(p1.n * power(audience._demo_rand(cd.user_id, s # ((cd.d << 12) | 618)), 1.4))::int] END AS x1,
           CASE WHEN cd.v >= 2 THEN
               p2.idxs[1 + floor(p2.n * power(audience._demo_rand(cd.user_id, s # ((cd.d << 12) | 620)), 1.4))::int] END AS x2
    FROM pg_temp._g_cand cd
    JOIN pg_temp._g_user u USING (user_id)
    JOIN pg_temp._g_pool pm ON pm.cat_id = cd.cat_id
         AND pm.priv = (audience._demo_rand(cd.user_id, s # ((cd.d << 12) | 615)) < u.p_priv)
    JOIN pg_temp._g_pool p1 ON p1.cat_id = cd.cat_id
         AND p1.priv = (audience._demo_rand(cd.user_id, s # ((cd.d << 12) | 617)) < u.p_priv)
    JOIN pg_temp._g_pool p2 ON p2.cat_id = cd.cat_id
         AND p2.priv = (audience._demo_rand(cd.user_id, s # ((cd.d << 12) | 619)) < u.p_priv)
    WHERE cd.cum_e - cd.e < u.budget * (1 - u.ds)
      AND (cd.cum_e <= u.budget * (1 - u.ds)
           OR audience._demo_rand(cd.user_id, s # ((cd.d << 12) | 613)) < (u.budget * (1 - u.ds) - (cd.cum_e - cd.e)) / cd.e);
    ANALYZE pg_temp._g_staple;

    -- ---------------------------------------------------------------- purchases ---------------
    -- Every wanted item with the day it is wanted (due): staple occurrences (cycle, or the trip
    -- gap when longer; jitter, skips; usual product or a switch, plus varieties) and discovery
    -- picks (the user's tastes, sometimes a stock-up of two or three products); then each lands on
    -- the user's first trip on or after its due day (on the trip before when that one is after
    -- churn or the window end).
    CREATE TEMP TABLE _g_item AS
    SELECT DISTINCT nx.user_id, CASE WHEN nx.tn >= nx.t_l AND nx.kn > 0 THEN nx.kn - 1 ELSE nx.kn END AS k, nx.idx
    FROM (
        -- the first trip kn (at tn) on or after the due day: k1 or k1 + 1
        SELECT sn.user_id, sn.idx, sn.t_l, sn.k1 + (sn.ta < sn.due)::int AS kn,
               CASE WHEN sn.ta < sn.due THEN sn.gap * (sn.k1 + 1 + sn.ph
                        + 0.35 * audience._demo_rand(sn.user_id, s # (((sn.k1 + 1)::bigint << 12) | 801)))
                    ELSE sn.ta END AS tn
        FROM (
        SELECT w.*, k1.k1, w.gap * (k1.k1 + w.ph
                   + 0.35 * audience._demo_rand(w.user_id, s # ((k1.k1::bigint << 12) | 801))) AS ta
        FROM (
            -- staple occurrences
            SELECT st.user_id, u.gap, u.ph, u.t_l, o.due, it.idx
            FROM pg_temp._g_staple st
            JOIN pg_temp._g_user u USING (user_id)
            CROSS JOIN LATERAL (SELECT greatest(st.cyc, u.gap) AS ce) ce
            CROSS JOIN LATERAL generate_series(0, floor((st.t1 - st.t0) / ce.ce)::int) AS n(n)
            CROSS JOIN LATERAL (SELECT (((st.d << 16) | n.n) << 12) AS kk) kk
            CROSS JOIN LATERAL (SELECT st.t0 + ce.ce * (st.ph + n.n)
                + u.jit * ce.ce * 2 * (audience._demo_rand(st.user_id, s # (kk.kk | 701))
                                       + audience._demo_rand(st.user_id, s # (kk.kk | 702))
                                       + audience._demo_rand(st.user_id, s # (kk.kk | 703)) - 1.5) AS due) o
            JOIN pg_temp._g_pool sw ON sw.cat_id = st.cat_id
                 AND sw.priv = (audience._demo_rand(st.user_id, s # (kk.kk | 705)) < u.p_priv)
            CROSS JOIN LATERAL unnest(ARRAY[
                CASE WHEN audience._demo_rand(st.user_id, s # (kk.kk | 704)) < u.loy THEN st.main
                     ELSE sw.idxs[1 + floor(sw.n * power(audience._demo_rand(st.user_id, s # (kk.kk | 706)), 1.8))::int] END,
                CASE WHEN audience._demo_rand(st.user_id, s # (kk.kk | 707)) < 0.6 THEN st.x1 END,
                CASE WHEN audience._demo_rand(st.user_id, s # (kk.kk | 708)) < 0.6 THEN st.x2 END]) AS it(idx)
            WHERE o.due >= st.t0 AND o.due < st.t1 AND it.idx IS NOT NULL
              AND audience._demo_rand(st.user_id, s # (kk.kk | 709)) >= u.skip
            UNION ALL
            -- discovery picks
            SELECT dc.user_id, dc.gap, dc.ph, dc.t_l, dc.due, pl.idxs[1 + floor(pl.n * power(
                       audience._demo_rand(dc.user_id, s # ((((dc.i << 4) | m.m) << 12) | 729)), 1.5))::int]
            FROM (
                SELECT u.user_id, u.gap, u.ph, u.t_l, u.p_priv, i.i,
                       u.t_a + (u.t_l - u.t_a) * audience._demo_rand(u.user_id, s # ((i.i << 12) | 721)) AS due,
                       CASE WHEN cs.u_src < 0.15 THEN cat_slots[1 + floor(1000 * cs.u_cat)::int]
                            WHEN cs.u_src < 0.20 THEN 1 + floor(n_cats * cs.u_cat)::int
                            ELSE pp.cats[1 + floor(pp.nc * power(cs.u_cat, 1.3))::int] END AS cat_id,
                       cs.u_size
                FROM pg_temp._g_user u
                CROSS JOIN LATERAL generate_series(1::bigint,
                    floor(u.budget * u.ds / 1.3 + u.u_round)::bigint) AS i(i)
                CROSS JOIN LATERAL (SELECT
                    audience._demo_rand(u.user_id, s # ((i.i << 12) | 722)) AS u_src,
                    audience._demo_rand(u.user_id, s # ((i.i << 12) | 723)) AS u_cat,
                    audience._demo_rand(u.user_id, s # ((i.i << 12) | 724)) AS u_pers,
                    audience._demo_rand(u.user_id, s # ((i.i << 12) | 726)) AS u_size) cs
                JOIN pg_temp._g_persona pp ON pp.persona_id =
                    CASE WHEN cs.u_pers < u.thr1 THEN u.p1 WHEN cs.u_pers < u.thr3 THEN u.p3 ELSE u.p2 END
                OFFSET 0) dc
            JOIN pg_temp._g_cat c USING (cat_id)
            CROSS JOIN LATERAL generate_series(1::bigint, CASE WHEN dc.u_size < c.stockup
                THEN 2 + floor(2 * audience._demo_rand(dc.user_id, s # ((dc.i << 12) | 727)))::bigint ELSE 1 END) AS m(m)
            JOIN pg_temp._g_pool pl ON pl.cat_id = dc.cat_id
                 AND pl.priv = (audience._demo_rand(dc.user_id, s # ((((dc.i << 4) | m.m) << 12) | 728)) < dc.p_priv)
            OFFSET 0) w
        CROSS JOIN LATERAL (SELECT greatest(0, ceil(w.due / w.gap - w.ph - 0.35))::int AS k1) k1
        OFFSET 0) sn
        OFFSET 0) nx;

    -- trips: timestamp (the trip's day at about the user's usual hour; a day-0 trip not before
    -- the user became active), online or not; trips after churn or the window end are dropped
    CREATE TEMP TABLE _g_trip AS
    SELECT tk.user_id, tk.k, tk.ts_ep,
           audience._demo_rand(tk.user_id, s # ((tk.k::bigint << 12) | 803)) < tk.online AS online
    FROM (
        SELECT t.user_id, t.k, u.online, u.to_ep,
               floor(greatest(u.from_ep + 60,
                   u.day0_ep + 86400 * floor(u.gap * (t.k + u.ph
                       + 0.35 * audience._demo_rand(t.user_id, s # ((t.k::bigint << 12) | 801))))
                   + 3600 * least(21.5, greatest(7.0, u.hour
                       + 4 * (audience._demo_rand(t.user_id, s # ((t.k::bigint << 12) | 802)) - 0.5)))))::float8 AS ts_ep
        FROM (SELECT DISTINCT user_id, k FROM pg_temp._g_item) t
        JOIN pg_temp._g_user u USING (user_id)
    ) tk
    WHERE tk.ts_ep < least(tk.to_ep, t_end_ep);
    ALTER TABLE pg_temp._g_trip ADD PRIMARY KEY (user_id, k);

    -- tracks rows: lvl 2 = order_completed at the trip time; online trips add product_added a
    -- few minutes before and sometimes product_viewed before that; browsing views (lvl 0, with
    -- bi > 0) of taste products at any time in the active stretch, a few saved.
    CREATE TEMP TABLE _g_ev AS
    SELECT e.user_id, e.lvl, e.idx, e.bi, e.ts_ep, e.wish,
           least(floor((e.ts_ep - t_start_ep) / span_s * n_months)::int, n_months - 1) AS m
    FROM (
        SELECT t.user_id, l.lvl, i.idx, 0::bigint AS bi, false AS wish,
               CASE l.lvl WHEN 2 THEN t.ts_ep
                    ELSE greatest(u.from_ep, t.ts_ep - floor(120 + 1500 * audience._demo_rand(t.user_id,
                                     s # ((((t.k::bigint << 32) | i.idx) << 12) | 901)))
                                  - CASE WHEN l.lvl = 0 THEN floor(20 + 400 * audience._demo_rand(t.user_id,
                                     s # ((((t.k::bigint << 32) | i.idx) << 12) | 902))) ELSE 0 END) END AS ts_ep
        FROM pg_temp._g_item i
        JOIN pg_temp._g_trip t USING (user_id, k)
        JOIN pg_temp._g_user u USING (user_id)
        CROSS JOIN LATERAL (VALUES (0), (1), (2)) AS l(lvl)
        WHERE l.lvl = 2 OR (t.online AND (l.lvl = 1
              OR audience._demo_rand(t.user_id, s # ((((t.k::bigint << 32) | i.idx) << 12) | 903)) < 0.3))
        UNION ALL
        SELECT bv.user_id, 0, pl.idxs[1 + floor(pl.n * power(
                   audience._demo_rand(bv.user_id, s # ((bv.i << 12) | 914)), 1.5))::int],
               bv.i, audience._demo_rand(bv.user_id, s # ((bv.i << 12) | 915)) < 0.2,
               floor(bv.from_ep + (least(bv.to_ep, t_end_ep) - bv.from_ep)
                     * audience._demo_rand(bv.user_id, s # ((bv.i << 12) | 911)))
        FROM (
            SELECT u.user_id, u.from_ep, u.to_ep, u.p_priv, i.i,
                   pp.cats[1 + floor(pp.nc * power(audience._demo_rand(u.user_id, s # ((i.i << 12) | 912)), 1.3))::int] AS cat_id
            FROM pg_temp._g_user u
            CROSS JOIN LATERAL generate_series(1::bigint,
                floor(u.budget * 0.05 + audience._demo_rand(u.user_id, s # 547))::bigint) AS i(i)
            CROSS JOIN LATERAL (SELECT audience._demo_rand(u.user_id, s # ((i.i << 12) | 910)) AS u_pers) up
            JOIN pg_temp._g_persona pp ON pp.persona_id =
                CASE WHEN up.u_pers < u.thr1 THEN u.p1 WHEN up.u_pers < u.thr3 THEN u.p3 ELSE u.p2 END
            OFFSET 0) bv
        JOIN pg_temp._g_pool pl ON pl.cat_id = bv.cat_id
             AND pl.priv = (audience._demo_rand(bv.user_id, s # ((bv.i << 12) | 913)) < bv.p_priv)
    ) e;

    -- ---------------------------------------------------------------- target tables -----------
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', sch);
    PERFORM audience._demo_drop_tables(sch);

    EXECUTE format($q$CREATE TABLE %I.products (
        product_id text PRIMARY KEY, name text NOT NULL, brand text NOT NULL, brand_type text NOT NULL,
        department text NOT NULL, category text NOT NULL, subcategory text NOT NULL,
        price numeric(10,2) NOT NULL, price_band text NOT NULL)$q$, sch);
    EXECUTE format($q$INSERT INTO %I.products
        SELECT product_id, name, brand, brand_type, dept, category, subcategory, price, price_band
        FROM pg_temp._g_product ORDER BY idx$q$, sch);
    GET DIAGNOSTICS n_p = ROW_COUNT;

    EXECUTE format($q$CREATE TABLE %I.users (
        user_id bigint PRIMARY KEY, signup_at timestamptz NOT NULL, country text NOT NULL)$q$, sch);
    EXECUTE format($q$INSERT INTO %I.users
        SELECT user_id, date_trunc('second', signup_at), country FROM pg_temp._g_user ORDER BY user_id$q$, sch);
    GET DIAGNOSTICS n_u = ROW_COUNT;

    -- ids follow time order (ties: user, funnel step, product)
    EXECUTE format($q$CREATE TABLE %I.tracks (
        id bigserial, user_id bigint NOT NULL, event text NOT NULL, product_id text NOT NULL,
        properties jsonb NOT NULL, "timestamp" timestamptz NOT NULL)$q$, sch);
    EXECUTE format($q$INSERT INTO %I.tracks (id, user_id, event, product_id, properties, "timestamp")
        SELECT row_number() OVER (ORDER BY ev.ts_ep, ev.user_id, ev.lvl, ev.idx, ev.bi), ev.user_id,
               (ARRAY['product_viewed', 'product_added', 'order_completed'])[ev.lvl + 1],
               pd.product_id, pr.props, to_timestamp(ev.ts_ep)
        FROM pg_temp._g_ev ev
        JOIN pg_temp._g_product pd ON pd.idx = ev.idx
        JOIN pg_temp._g_price pr ON pr.idx = ev.idx AND pr.m = ev.m$q$, sch);
    GET DIAGNOSTICS n_t = ROW_COUNT;
    PERFORM setval(pg_get_serial_sequence(format('%I.tracks', sch), 'id'), greatest(n_t, 1), n_t > 0);
    EXECUTE format('ALTER TABLE %I.tracks ADD PRIMARY KEY (id)', sch);

    EXECUTE format($q$CREATE TABLE %I.wishlist_saves (
        user_id bigint NOT NULL, sku text NOT NULL, saved_at timestamptz NOT NULL)$q$, sch);
    EXECUTE format($q$INSERT INTO %I.wishlist_saves
        SELECT ev.user_id, pd.product_id,
               to_timestamp(floor(least($1 - 1, ev.ts_ep + 20 + 300 * audience._demo_rand(ev.user_id, $2 # ((ev.bi << 12) | 916)))))
        FROM pg_temp._g_ev ev JOIN pg_temp._g_product pd ON pd.idx = ev.idx
        WHERE ev.wish ORDER BY ev.user_id, ev.bi$q$, sch) USING t_end_ep, s;
    GET DIAGNOSTICS n_w = ROW_COUNT;

    EXECUTE format('COMMENT ON TABLE %I.tracks IS %L', sch,
        'pg_audience demo shop (grocery): Segment-style tracks (mostly order_completed; product_added, product_viewed); generated by audience.generate_demo_shop');
    EXECUTE format('COMMENT ON TABLE %I.wishlist_saves IS %L', sch,
        'pg_audience demo shop (grocery): one table per event type (saved products); generated by audience.generate_demo_shop');
    EXECUTE format('ANALYZE %1$I.products, %1$I.users, %1$I.tracks, %1$I.wishlist_saves', sch);

    DROP TABLE pg_temp._g_cat, pg_temp._g_block, pg_temp._g_product, pg_temp._g_pool, pg_temp._g_price,
        pg_temp._g_persona, pg_temp._g_user, pg_temp._g_cand, pg_temp._g_staple, pg_temp._g_item,
        pg_temp._g_trip, pg_temp._g_ev;

    RETURN QUERY VALUES ('products'::text, n_p), ('users', n_u), ('tracks', n_t), ('wishlist_saves', n_w);
END
$fn$;
COMMENT ON FUNCTION audience._demo_grocery(text, integer, integer, bigint, integer, bigint, timestamptz, timestamptz) IS
    'Internal to audience.generate_demo_shop: the grocery kind (repeat-purchase data).';

DROP FUNCTION audience.generate_demo_shop(text, integer, integer, bigint, integer, double precision);
CREATE FUNCTION audience.generate_demo_shop(
    target_schema text DEFAULT 'demo',
    users integer DEFAULT 20000,
    products integer DEFAULT 2000,
    events bigint DEFAULT 400000,
    months integer DEFAULT 6,
    seed double precision DEFAULT 0.42,
    kind text DEFAULT 'fashion')
RETURNS TABLE(table_name text, row_count bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $fn$
DECLARE
    s            bigint;          -- seed-derived hash salt
    t_end        timestamptz := date_trunc('day', now());
    t_start      timestamptz;
    span_s       double precision;
    t_start_ep   double precision;
    t_end_ep     double precision;
    n_blocks     integer;
    n_inter      bigint;          -- product views to generate; adds and orders follow from them
    -- expected events per product view (1 view + adds + orders): calibrates n_inter to `events`
    depth_mean   constant double precision := 1.313;
    sch          text := generate_demo_shop.target_schema;
    n_products   bigint;
    n_users      bigint;
    n_tracks     bigint;
    n_wish       bigint;
BEGIN
    IF sch IS NULL OR sch = '' THEN
        RAISE EXCEPTION 'target_schema must be a non-empty schema name'
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Pick a dedicated schema, e.g. ''demo''.';
    END IF;
    IF sch IN ('audience', 'public', 'information_schema') OR sch LIKE 'pg\_%' THEN
        RAISE EXCEPTION 'refusing to generate demo tables in schema "%"', sch
            USING ERRCODE = 'invalid_parameter_value', HINT = 'Pick a dedicated schema, e.g. ''demo''.';
    END IF;
    IF coalesce(generate_demo_shop.users, 0) < 1 OR coalesce(generate_demo_shop.months, 0) < 1
       OR coalesce(generate_demo_shop.events, -1) < 0 OR generate_demo_shop.seed IS NULL THEN
        RAISE EXCEPTION 'users and months must be >= 1, events >= 0 and seed not null'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The defaults are users => 20000, products => 2000, events => 400000, months => 6, seed => 0.42.';
    END IF;
    IF generate_demo_shop.kind IS NULL OR lower(generate_demo_shop.kind) NOT IN ('fashion', 'grocery') THEN
        RAISE EXCEPTION 'unknown demo shop kind "%"', generate_demo_shop.kind
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'kind is ''fashion'' (browsing funnel, planted brand tastes; the default) or ''grocery'' (repeat purchases: staples on cycles, baskets, brand loyalty).';
    END IF;

    s := hashfloat8extended(generate_demo_shop.seed, 20240611);
    t_start := t_end - make_interval(months => generate_demo_shop.months);
    span_s := extract(epoch FROM t_end - t_start);
    t_start_ep := extract(epoch FROM t_start);
    t_end_ep := extract(epoch FROM t_end);

    IF lower(generate_demo_shop.kind) = 'grocery' THEN
        RETURN QUERY SELECT * FROM audience._demo_grocery(sch, generate_demo_shop.users,
            generate_demo_shop.products, generate_demo_shop.events, generate_demo_shop.months, s, t_start, t_end);
        RETURN;
    END IF;

    -- ---------------------------------------------------------------- static catalogue --------
    -- (the temp tables below are dropped at the end; an error rolls their creation back)
    CREATE TEMP TABLE _demo_cat (cat_id int PRIMARY KEY, cat text, subcats text[], sub_price float8[]);
    INSERT INTO pg_temp._demo_cat VALUES
     ( 1, 'Footwear',         '{"Running Shoes","Sneakers","Trail Shoes","Sandals"}',            '{120,95,130,40}'),
     ( 2, 'Sportswear',       '{"Jerseys","Shorts","Leggings","Training Jackets"}',             '{60,35,50,90}'),
     ( 3, 'Wearables',        '{"Smartwatches","Fitness Trackers","Heart Rate Monitors","Bike Computers"}', '{330,110,70,280}'),
     ( 4, 'Phones & Tablets', '{"Smartphones","Tablets","Phone Cases","Chargers"}',             '{750,520,30,35}'),
     ( 5, 'Computers',        '{"Laptops","Monitors","Keyboards","Mice"}',                      '{1100,320,90,50}'),
     ( 6, 'Audio',            '{"Headphones","Earbuds","Speakers","Soundbars"}',                '{250,150,180,400}'),
     ( 7, 'Gaming',           '{"Consoles","Video Games","Controllers","Gaming Headsets"}',     '{420,55,65,110}'),
     ( 8, 'Toys',             '{"Building Sets","Dolls","Board Games","Baby Toys"}',            '{60,30,35,25}'),
     ( 9, 'Home & Kitchen',   '{"Coffee Machines","Vacuum Cleaners","Cookware","Blenders"}',    '{260,380,140,110}'),
     (10, 'Beauty',           '{"Skincare","Makeup","Fragrance","Hair Care"}',                  '{28,22,75,35}'),
     (11, 'Fashion',          '{"Jeans","T-Shirts","Sunglasses","Bags"}',                       '{80,25,150,90}'),
     (12, 'Outdoor',          '{"Tents","Backpacks","Hiking Jackets","Camping Gear"}',          '{260,110,220,60}');

    -- brands in global popularity order (rank 1 = most popular), with a price factor
    CREATE TEMP TABLE _demo_brand (brand_id int PRIMARY KEY, brand text UNIQUE, premium float8);
    INSERT INTO pg_temp._demo_brand VALUES
     ( 1,'Nike',1.15),( 2,'Apple',1.45),( 3,'Samsung',1.05),( 4,'Adidas',1.05),( 5,'Sony',1.1),
     ( 6,'Lego',1.2),( 7,'Zara',0.85),( 8,'H&M',0.55),( 9,'Levi''s',1.0),(10,'Xiaomi',0.6),
     (11,'Philips',0.9),(12,'Logitech',0.85),(13,'Nintendo',1.0),(14,'JBL',0.75),(15,'Dyson',2.1),
     (16,'Bose',1.35),(17,'L''Oréal',0.8),(18,'Puma',0.85),(19,'Asics',1.0),(20,'New Balance',1.0),
     (21,'Garmin',1.3),(22,'Anker',0.7),(23,'Lenovo',0.85),(24,'Dell',0.95),(25,'Nivea',0.45),
     (26,'The North Face',1.3),(27,'Ray-Ban',1.1),(28,'Beats',1.2),(29,'Hasbro',0.8),(30,'Mattel',0.75),
     (31,'KitchenAid',1.6),(32,'Nespresso',0.9),(33,'Fitbit',0.8),(34,'Under Armour',0.95),(35,'Xbox',1.0),
     (36,'Razer',1.25),(37,'Sonos',1.6),(38,'Patagonia',1.5),(39,'Clinique',1.4),(40,'The Ordinary',0.4),
     (41,'Fisher-Price',0.7),(42,'Columbia',0.95),(43,'Belkin',0.9),(44,'Le Creuset',2.0),(45,'Google',1.0);

    -- brand x category blocks: share of the brand's range, allowed subcategories (NULL = all)
    CREATE TEMP TABLE _demo_block (block_id serial PRIMARY KEY, brand_id int, cat_id int, share float8,
        subcats text[], weight float8, p_start int, p_cnt int);
    INSERT INTO pg_temp._demo_block (brand_id, cat_id, share, subcats)
    SELECT b.brand_id, c.cat_id, v.share, v.subcats
    FROM (VALUES
     ('Nike','Footwear',0.65,NULL::text[]),('Nike','Sportswear',0.35,NULL),
     ('Apple','Phones & Tablets',0.5,NULL),('Apple','Computers',0.25,NULL),
     ('Apple','Wearables',0.12,'{"Smartwatches"}'),('Apple','Audio',0.13,'{"Headphones","Earbuds","Speakers"}'),
     ('Samsung','Phones & Tablets',0.6,NULL),('Samsung','Computers',0.15,'{"Monitors","Laptops"}'),
     ('Samsung','Wearables',0.1,'{"Smartwatches","Fitness Trackers"}'),('Samsung','Audio',0.15,'{"Earbuds","Soundbars"}'),
     ('Adidas','Footwear',0.6,NULL),('Adidas','Sportswear',0.4,NULL),
     ('Sony','Audio',0.5,NULL),('Sony','Gaming',0.5,NULL),
     ('Lego','Toys',1.0,'{"Building Sets"}'),
     ('Zara','Fashion',1.0,NULL),('H&M','Fashion',1.0,NULL),('Levi''s','Fashion',1.0,'{"Jeans","T-Shirts"}'),
     ('Xiaomi','Phones & Tablets',0.6,NULL),('Xiaomi','Wearables',0.25,'{"Fitness Trackers","Smartwatches"}'),
     ('Xiaomi','Home & Kitchen',0.15,'{"Vacuum Cleaners"}'),
     ('Philips','Home & Kitchen',0.7,'{"Coffee Machines","Blenders","Vacuum Cleaners"}'),('Philips','Beauty',0.3,'{"Hair Care"}'),
     ('Logitech','Computers',0.7,'{"Keyboards","Mice"}'),('Logitech','Gaming',0.3,'{"Controllers","Gaming Headsets"}'),
     ('Nintendo','Gaming',1.0,'{"Consoles","Video Games","Controllers"}'),
     ('JBL','Audio',1.0,'{"Headphones","Earbuds","Speakers"}'),
     ('Dyson','Home & Kitchen',0.75,'{"Vacuum Cleaners"}'),('Dyson','Beauty',0.25,'{"Hair Care"}'),
     ('Bose','Audio',1.0,NULL),('L''Oréal','Beauty',1.0,NULL),
     ('Puma','Footwear',0.55,NULL),('Puma','Sportswear',0.45,NULL),
     ('Asics','Footwear',0.85,'{"Running Shoes","Trail Shoes"}'),('Asics','Sportswear',0.15,NULL),
     ('New Balance','Footwear',1.0,'{"Running Shoes","Sneakers","Trail Shoes"}'),
     ('Garmin','Wearables',0.8,NULL),('Garmin','Outdoor',0.2,'{"Camping Gear"}'),
     ('Anker','Phones & Tablets',0.6,'{"Chargers","Phone Cases"}'),('Anker','Audio',0.4,'{"Earbuds","Speakers"}'),
     ('Lenovo','Computers',0.8,NULL),('Lenovo','Phones & Tablets',0.2,'{"Tablets","Smartphones"}'),
     ('Dell','Computers',1.0,NULL),('Nivea','Beauty',1.0,'{"Skincare","Hair Care"}'),
     ('The North Face','Outdoor',0.6,NULL),('The North Face','Fashion',0.4,'{"T-Shirts","Bags"}'),
     ('Ray-Ban','Fashion',1.0,'{"Sunglasses"}'),('Beats','Audio',1.0,'{"Headphones","Earbuds","Speakers"}'),
     ('Hasbro','Toys',1.0,'{"Board Games","Dolls"}'),('Mattel','Toys',1.0,'{"Dolls","Board Games","Baby Toys"}'),
     ('KitchenAid','Home & Kitchen',1.0,'{"Blenders","Cookware","Coffee Machines"}'),
     ('Nespresso','Home & Kitchen',1.0,'{"Coffee Machines"}'),('Fitbit','Wearables',1.0,'{"Fitness Trackers","Smartwatches"}'),
     ('Under Armour','Sportswear',0.7,NULL),('Under Armour','Footwear',0.3,'{"Running Shoes","Sneakers"}'),
     ('Xbox','Gaming',1.0,'{"Consoles","Video Games","Controllers"}'),
     ('Razer','Gaming',0.6,'{"Controllers","Gaming Headsets"}'),('Razer','Computers',0.4,'{"Laptops","Keyboards","Mice"}'),
     ('Sonos','Audio',1.0,'{"Speakers","Soundbars"}'),
     ('Patagonia','Outdoor',0.6,NULL),('Patagonia','Fashion',0.4,'{"T-Shirts","Bags"}'),
     ('Clinique','Beauty',1.0,'{"Skincare","Makeup","Fragrance"}'),('The Ordinary','Beauty',1.0,'{"Skincare"}'),
     ('Fisher-Price','Toys',1.0,'{"Baby Toys"}'),
     ('Columbia','Outdoor',0.7,NULL),('Columbia','Fashion',0.3,'{"T-Shirts","Bags"}'),
     ('Belkin','Phones & Tablets',1.0,'{"Phone Cases","Chargers"}'),('Le Creuset','Home & Kitchen',1.0,'{"Cookware"}'),
     ('Google','Phones & Tablets',0.8,NULL),('Google','Audio',0.2,'{"Earbuds","Speakers"}')
    ) AS v(brand, cat, share, subcats)
    JOIN pg_temp._demo_brand b ON b.brand = v.brand
    JOIN pg_temp._demo_cat c ON c.cat = v.cat
    ORDER BY b.brand_id, v.share DESC;
    SELECT count(*) INTO n_blocks FROM pg_temp._demo_block;
    IF generate_demo_shop.products < n_blocks THEN
        RAISE EXCEPTION 'products must be >= % (one per brand x category)', n_blocks
            USING ERRCODE = 'invalid_parameter_value', HINT = format('Pass products => %s or more.', n_blocks);
    END IF;

    -- Zipf-ish brand popularity; each block gets >= 1 product, the rest in proportion to weight,
    -- laid out contiguously: block b owns product indexes [p_start, p_start + p_cnt).
    UPDATE pg_temp._demo_block SET weight = share / power(brand_id, 0.9);
    WITH w AS (
        SELECT block_id,
               coalesce(sum(weight) OVER (ORDER BY block_id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                   / sum(weight) OVER () AS lo,
               sum(weight) OVER (ORDER BY block_id) / sum(weight) OVER () AS hi,
               row_number() OVER (ORDER BY block_id) - 1 AS i
        FROM pg_temp._demo_block)
    UPDATE pg_temp._demo_block b
    SET p_start = 1 + w.i + floor((generate_demo_shop.products - n_blocks) * w.lo)::int,
        p_cnt = 1 + floor((generate_demo_shop.products - n_blocks) * w.hi)::int
                  - floor((generate_demo_shop.products - n_blocks) * w.lo)::int
    FROM w WHERE w.block_id = b.block_id;

    -- personas: ranked brand x category blocks and related personas (for a user's second taste)
    CREATE TEMP TABLE _demo_persona (persona_id int PRIMARY KEY, persona text, weight float8,
        blocks int[], nb int, related int[], cum_lo float8, cum_hi float8);
    INSERT INTO pg_temp._demo_persona (persona_id, persona, weight, blocks, nb, related)
    SELECT v.pid, v.persona, v.weight, bl.blocks, cardinality(bl.blocks), v.related
    FROM (VALUES
     (1,'runner',0.12,'{"Nike/Footwear","Asics/Footwear","Garmin/Wearables","Nike/Sportswear","New Balance/Footwear","Adidas/Footwear","Under Armour/Sportswear","Fitbit/Wearables","Apple/Wearables","Puma/Footwear","Asics/Sportswear","Adidas/Sportswear"}'::text[],'{9,8}'::int[]),
     (2,'apple_fan',0.10,'{"Apple/Phones & Tablets","Apple/Computers","Beats/Audio","Apple/Audio","Apple/Wearables","Belkin/Phones & Tablets","Anker/Phones & Tablets","Sonos/Audio","Logitech/Computers"}','{10,11}'),
     (3,'android_techie',0.09,'{"Samsung/Phones & Tablets","Xiaomi/Phones & Tablets","Google/Phones & Tablets","Samsung/Audio","Anker/Phones & Tablets","Samsung/Wearables","JBL/Audio","Xiaomi/Wearables","Lenovo/Phones & Tablets","Anker/Audio","Google/Audio"}','{4,11}'),
     (4,'gamer',0.09,'{"Nintendo/Gaming","Sony/Gaming","Xbox/Gaming","Razer/Gaming","Logitech/Gaming","Razer/Computers","Logitech/Computers","Dell/Computers","JBL/Audio"}','{3,10}'),
     (5,'parent',0.10,'{"Lego/Toys","Fisher-Price/Toys","Mattel/Toys","Hasbro/Toys","Nintendo/Gaming","Philips/Home & Kitchen","H&M/Fashion"}','{6,8}'),
     (6,'home_cook',0.08,'{"KitchenAid/Home & Kitchen","Nespresso/Home & Kitchen","Philips/Home & Kitchen","Le Creuset/Home & Kitchen","Dyson/Home & Kitchen","Xiaomi/Home & Kitchen"}','{5,7}'),
     (7,'beauty',0.10,'{"L''Oréal/Beauty","The Ordinary/Beauty","Clinique/Beauty","Nivea/Beauty","Dyson/Beauty","Philips/Beauty","Zara/Fashion"}','{8,6}'),
     (8,'fashion',0.12,'{"Zara/Fashion","H&M/Fashion","Levi''s/Fashion","Ray-Ban/Fashion","Adidas/Footwear","Nike/Footwear","Puma/Footwear","Adidas/Sportswear","Puma/Sportswear"}','{7,1}'),
     (9,'outdoor',0.07,'{"The North Face/Outdoor","Patagonia/Outdoor","Columbia/Outdoor","Garmin/Outdoor","Garmin/Wearables","Asics/Footwear","The North Face/Fashion","Patagonia/Fashion","Columbia/Fashion"}','{1}'),
     (10,'home_office',0.07,'{"Dell/Computers","Lenovo/Computers","Logitech/Computers","Apple/Computers","Bose/Audio","Anker/Phones & Tablets","Samsung/Computers","Nespresso/Home & Kitchen"}','{2,4}'),
     (11,'audiophile',0.06,'{"Bose/Audio","Sony/Audio","Sonos/Audio","JBL/Audio","Beats/Audio","Apple/Audio","Google/Audio"}','{2,4}')
    ) AS v(pid, persona, weight, names, related)
    CROSS JOIN LATERAL (
        SELECT array_agg(bk.block_id ORDER BY n.ord) AS blocks, count(bk.block_id) AS found,
               count(*) AS wanted
        FROM unnest(v.names) WITH ORDINALITY AS n(name, ord)
        LEFT JOIN (pg_temp._demo_block bk JOIN pg_temp._demo_brand b USING (brand_id)
                   JOIN pg_temp._demo_cat c USING (cat_id))
               ON b.brand || '/' || c.cat = n.name) bl;
    IF EXISTS (SELECT 1 FROM pg_temp._demo_persona WHERE array_position(blocks, NULL) IS NOT NULL) THEN
        RAISE EXCEPTION 'internal error: persona block list names an unknown brand/category';
    END IF;
    WITH c AS (
        SELECT persona_id, sum(weight) OVER (ORDER BY persona_id) / sum(weight) OVER () AS hi,
               weight / sum(weight) OVER () AS w
        FROM pg_temp._demo_persona)
    UPDATE pg_temp._demo_persona p SET cum_hi = c.hi, cum_lo = c.hi - c.w
    FROM c WHERE c.persona_id = p.persona_id;
    UPDATE pg_temp._demo_persona SET cum_hi = 2 WHERE persona_id = (SELECT max(persona_id) FROM pg_temp._demo_persona);

    -- ---------------------------------------------------------------- products ----------------
    -- price = subcategory base x brand factor x lognormal(0, 0.3); band from price / base.
    -- Within a block, lower indexes are the more popular products.
    CREATE TEMP TABLE _demo_product AS
    SELECT x.idx, x.product_id, x.brand, x.cat AS category, x.subcat AS subcategory,
           CASE WHEN x.raw >= 20 THEN round(x.raw::numeric) - 0.01 ELSE round(x.raw::numeric, 2) END AS price,
           CASE WHEN x.raw / x.base < 0.75 THEN 'budget' WHEN x.raw / x.base < 1.3 THEN 'mid'
                WHEN x.raw / x.base < 2.1 THEN 'premium' ELSE 'luxury' END AS price_band,
           CASE WHEN x.raw / x.base < 0.75 THEN 0 WHEN x.raw / x.base < 1.3 THEN 1
                WHEN x.raw / x.base < 2.1 THEN 2 ELSE 3 END AS band_no,
           format('%s %s %s %s', x.brand,
                  (ARRAY['Air','Pro','Ultra','Max','Lite','Classic','Flex','Edge','Nova','Zen','Core','Prime',
                         'Aero','Vibe','Pulse','Terra','Fusion','Swift','Echo','Orbit','Neo','Vista','Spark','Peak'])
                      [1 + floor(24 * audience._demo_rand(x.idx, s # 101))::int],
                  x.subcat, 100 + floor(900 * audience._demo_rand(x.idx, s # 102))::int) AS name
    FROM (
        SELECT p.idx, 'SKU-' || lpad(p.idx::text, 6, '0') AS product_id, b.brand, c.cat,
               sc.subcat, c.sub_price[array_position(c.subcats, sc.subcat)] AS base,
               c.sub_price[array_position(c.subcats, sc.subcat)] * b.premium
                 * exp(0.3 * sqrt(-2 * ln(greatest(audience._demo_rand(p.idx, s # 103), 1e-12)))
                           * cos(2 * pi() * audience._demo_rand(p.idx, s # 104))) AS raw
        FROM pg_temp._demo_block bk
        JOIN pg_temp._demo_brand b USING (brand_id)
        JOIN pg_temp._demo_cat c USING (cat_id)
        CROSS JOIN LATERAL generate_series(bk.p_start, bk.p_start + bk.p_cnt - 1) AS p(idx)
        CROSS JOIN LATERAL (SELECT coalesce(bk.subcats, c.subcats) AS l) AS sl
        CROSS JOIN LATERAL (SELECT sl.l[1 + floor(cardinality(sl.l) * audience._demo_rand(p.idx, s # 105))::int] AS subcat) AS sc
    ) x;
    ALTER TABLE pg_temp._demo_product ADD PRIMARY KEY (idx);

    -- the price each product had in each month (slow drift, ~12% of product-months on sale),
    -- with the jsonb properties that tracks rows copy
    CREATE TEMP TABLE _demo_price AS
    SELECT p.idx, m.m, jsonb_build_object('brand', p.brand, 'category', p.category,
               'price', round((p.price * q.f)::numeric, 2)) AS props
    FROM pg_temp._demo_product p
    CROSS JOIN generate_series(0, generate_demo_shop.months - 1) AS m(m)
    CROSS JOIN LATERAL (SELECT
        (1 + 0.04 * (audience._demo_rand(p.idx::bigint * 1000 + m.m, s # 111) - 0.5) * (m.m - generate_demo_shop.months + 1))
        * CASE WHEN audience._demo_rand(p.idx::bigint * 1000 + m.m, s # 112) < 0.12
               THEN 0.7 + 0.2 * audience._demo_rand(p.idx::bigint * 1000 + m.m, s # 113) ELSE 1 END AS f) q;
    ALTER TABLE pg_temp._demo_price ADD PRIMARY KEY (idx, m);

    -- ---------------------------------------------------------------- users -------------------
    n_inter := ceil(generate_demo_shop.events / depth_mean)::bigint;
    CREATE TEMP TABLE _demo_user AS
    WITH b AS (
        SELECT g::bigint AS user_id,
               audience._demo_rand(g, s # 201) AS u_p1, audience._demo_rand(g, s # 202) AS u_has2,
               audience._demo_rand(g, s # 203) AS u_p2, audience._demo_rand(g, s # 204) AS u_rel,
               audience._demo_rand(g, s # 205) AS u_has3, audience._demo_rand(g, s # 206) AS u_p3,
               -- signed up over the 18 months before the window or during it
               t_end - (extract(epoch FROM t_end - t_start) + 540 * 86400)
                       * audience._demo_rand(g, s # 207) * interval '1 second' AS signup_at,
               -- Pareto(1.3) activity, capped
               least(power(1 - audience._demo_rand(g, s # 208), -1 / 1.3), 400.0) AS act,
               audience._demo_rand(g, s # 209) AS u_w1, audience._demo_rand(g, s # 210) AS u_drift,
               audience._demo_rand(g, s # 211) AS u_fav, audience._demo_rand(g, s # 212) AS u_favp,
               exp(0.6 * sqrt(-2 * ln(greatest(audience._demo_rand(g, s # 213), 1e-12)))
                       * cos(2 * pi() * audience._demo_rand(g, s # 214))) AS buyer,
               audience._demo_rand(g, s # 215) AS u_band, audience._demo_rand(g, s # 216) AS u_country,
               audience._demo_rand(g, s # 217) AS u_sess
        FROM generate_series(1, generate_demo_shop.users) AS g
    ), p AS (
        SELECT b.*, p1.persona_id AS p1, p1.related,
               CASE WHEN b.u_has2 < 0.6 THEN
                    CASE WHEN b.u_rel < 0.6 THEN p1.related[1 + floor(cardinality(p1.related) * b.u_p2)::int]
                         ELSE (SELECT pp.persona_id FROM pg_temp._demo_persona pp
                               WHERE b.u_p2 >= pp.cum_lo AND b.u_p2 < pp.cum_hi) END END AS p2,
               CASE WHEN b.u_has3 < 0.25 THEN
                    (SELECT pp.persona_id FROM pg_temp._demo_persona pp
                     WHERE b.u_p3 >= pp.cum_lo AND b.u_p3 < pp.cum_hi) END AS p3,
               p1.blocks[1 + floor(p1.nb * power(b.u_fav, 2))::int] AS fav_block
        FROM b JOIN pg_temp._demo_persona p1 ON b.u_p1 >= p1.cum_lo AND b.u_p1 < p1.cum_hi
    ), w AS (
        SELECT p.*,
               greatest(p.signup_at, t_start) AS active_from,
               extract(epoch FROM t_end - greatest(p.signup_at, t_start)) / span_s AS active_frac,
               CASE WHEN p.p2 IS NULL AND p.p3 IS NULL THEN 1.0 ELSE 0.5 + 0.3 * p.u_w1 END AS w1
        FROM p
    ), a AS (
        SELECT w.*, w.act * w.active_frac AS aw,
               sum(w.act * w.active_frac) OVER (ORDER BY w.user_id) AS cum_aw,
               sum(w.act * w.active_frac) OVER () AS tot_aw
        FROM w
    )
    SELECT a.user_id, a.signup_at,
           (ARRAY['US','GB','DE','FR','CA','NL','ES','IT','AU','SE','PL','BE','AT','IE','DK'])
               [1 + floor(15 * power(a.u_country, 2.2))::int] AS country,
           a.p1, coalesce(a.p2, a.p1) AS p2, coalesce(a.p3, a.p1) AS p3,
           a.w1,
           CASE WHEN a.p3 IS NULL THEN 0 WHEN a.p2 IS NULL THEN 1 - a.w1 ELSE (1 - a.w1) * 0.35 END AS w3,
           CASE WHEN a.p2 IS NULL THEN 0 ELSE 0.6 * (a.u_drift - 0.5) END AS drift,
           a.fav_block, 0.10 + 0.35 * a.u_favp AS fav_p, a.buyer,
           -- preferred price band: 0 budget, 1 mid, 2 premium, 3 luxury
           CASE WHEN a.u_band < 0.30 THEN 0 WHEN a.u_band < 0.70 THEN 1
                WHEN a.u_band < 0.92 THEN 2 ELSE 3 END AS band,
           2 + floor(4 * a.u_sess)::int AS sess_len,
           extract(epoch FROM a.active_from)::float8 AS from_ep,
           extract(epoch FROM date_trunc('day', a.active_from))::float8 AS day0_ep,
           extract(epoch FROM t_end - a.active_from)::float8 / 86400 AS ndays,
           (floor(n_inter * a.cum_aw / a.tot_aw) - floor(n_inter * (a.cum_aw - a.aw) / a.tot_aw))::int AS n_int
    FROM a;
    -- k0: the user's first interaction number, so that k0 + j numbers all interactions 1..n.
    -- (Draw keys must stay below 2^32: hashint8extended folds the high half of a bigint into
    -- the low half, so user_id * 2^32 + j would give correlated draws.)
    ALTER TABLE pg_temp._demo_user ADD COLUMN k0 bigint;
    UPDATE pg_temp._demo_user u SET k0 = z.k0
    FROM (SELECT user_id, sum(n_int) OVER (ORDER BY user_id) - n_int AS k0 FROM pg_temp._demo_user) z
    WHERE z.user_id = u.user_id;
    ANALYZE pg_temp._demo_user;
    ALTER TABLE pg_temp._demo_user ADD PRIMARY KEY (user_id);

    -- ---------------------------------------------------------------- interactions ------------
    -- One row per product view: session (persona, day, evening-heavy hour), block choice
    -- (favourite / persona list / global popularity noise), product, funnel depth
    -- (1 = view, 2 = + add, 3 = + order) and whether it was also saved to the wishlist.
    CREATE TEMP TABLE _demo_ix AS
    SELECT fin.*,
           -- first tracks id of this view's rows: ids follow the views' time order
           sum(fin.depth) OVER (ORDER BY fin.ts_ep, fin.k ROWS UNBOUNDED PRECEDING) - fin.depth AS id0
    FROM (
    SELECT pr.user_id, pr.k, pr.ts_ep, pr.idx,
           least(floor(pr.tau * generate_demo_shop.months)::int, generate_demo_shop.months - 1) AS m,
           f.depth,
           f.u_wish < 0.02 * CASE WHEN pr.is_fav THEN 2.0 ELSE 1.0 END
                           * CASE WHEN pd.band_no >= 2 THEN 1.8 ELSE 1.0 END AS wish
    FROM (
        -- product within the block (Zipf-ish: low indexes are the popular ones)
        SELECT bl.*, bk.p_start + floor(bk.p_cnt * power(audience._demo_rand(bl.k, s # 307), 2.2))::int AS idx
        FROM (
            -- block: favourite / global popularity noise / the session persona's ranked list
            SELECT pc.user_id, pc.k, pc.ts_ep, pc.tau, pc.buyer, pc.band,
                   pc.u_mode < pc.fav_p AS is_fav,
                   CASE WHEN pc.u_mode < pc.fav_p THEN pc.fav_block
                        WHEN pc.u_mode < pc.fav_p + 0.10 THEN
                            1 + floor(n_blocks * power(audience._demo_rand(pc.k, s # 306), 1.8))::int
                        ELSE pp.blocks[1 + floor(pp.nb * power(audience._demo_rand(pc.k, s # 306), 1.6))::int]
                   END AS block_id
            FROM (
                -- the session's persona: p1 / p3 / p2, with the p1-p2 balance drifting over time
                SELECT pe.user_id, pe.k, pe.ts_ep, pe.tau, pe.fav_block, pe.fav_p, pe.buyer, pe.band,
                       CASE WHEN pe.u_pers < pe.thr1 THEN pe.p1
                            WHEN pe.u_pers < pe.thr1 + pe.w3 THEN pe.p3
                            ELSE pe.p2 END AS persona,
                       audience._demo_rand(pe.k, s # 305) AS u_mode
                FROM (
                    SELECT t.*, greatest(0.05, t.w1 - t.drift * (t.tau - 0.5)) AS thr1
                    FROM (
                        SELECT t0.*, (t0.ts_ep - t_start_ep) / span_s AS tau
                        FROM (
                            -- session time: a day in the user's active span, evening-heavy hour;
                            -- views within a session ~2.5 minutes apart
                            SELECT u.user_id, u.p1, u.p2, u.p3, u.w1, u.w3, u.drift, u.fav_block, u.fav_p,
                                   u.buyer, u.band, x.k,
                                   audience._demo_rand(x.ks, s # 304) AS u_pers,
                                   least(greatest(
                                       u.day0_ep + 86400 * floor(u.ndays * audience._demo_rand(x.ks, s # 301))
                                       + 3600 * (7 + 17 * power(audience._demo_rand(x.ks, s # 302), 0.7))
                                       + 150 * x.pos + 120 * audience._demo_rand(x.k, s # 303),
                                       u.from_ep), t_end_ep - 1) AS ts_ep
                            FROM pg_temp._demo_user u
                            CROSS JOIN LATERAL generate_series(1, u.n_int) AS j
                            CROSS JOIN LATERAL (SELECT
                                u.k0 + j AS k,                                          -- event key
                                u.k0 + 1 + (j - 1) / u.sess_len * u.sess_len AS ks,     -- session key
                                (j - 1) % u.sess_len AS pos) AS x
                            WHERE u.n_int > 0
                            OFFSET 0) t0
                        ) t
                    OFFSET 0) pe
                OFFSET 0) pc
            JOIN pg_temp._demo_persona pp ON pp.persona_id = pc.persona
            OFFSET 0) bl
        JOIN pg_temp._demo_block bk USING (block_id)
        OFFSET 0) pr
    JOIN pg_temp._demo_product pd USING (idx)
    CROSS JOIN LATERAL (SELECT
        1 + (fp.u_add < fp.p_add)::int + (fp.u_add < fp.p_add AND fp.u_ord < fp.p_ord)::int AS depth,
        fp.u_wish
        FROM (SELECT
            audience._demo_rand(pr.k, s # 308) AS u_add, audience._demo_rand(pr.k, s # 309) AS u_ord,
            audience._demo_rand(pr.k, s # 310) AS u_wish,
            least(0.9, 0.15 * pr.buyer * CASE WHEN pr.is_fav THEN 1.7 ELSE 1.0 END
                  * CASE WHEN pd.band_no = pr.band THEN 1.5 ELSE 0.9 END
                  * CASE pd.band_no WHEN 3 THEN 0.6 WHEN 2 THEN 0.85 ELSE 1.0 END) AS p_add,
            least(0.95, 0.38 * CASE WHEN pr.is_fav THEN 1.4 ELSE 1.0 END
                  * CASE pd.band_no WHEN 3 THEN 0.7 WHEN 0 THEN 1.15 ELSE 1.0 END) AS p_ord) fp) f
    OFFSET 0) fin
    ORDER BY fin.ts_ep, fin.k;

    ANALYZE pg_temp._demo_ix;

    -- ---------------------------------------------------------------- target tables -----------
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', sch);
    PERFORM audience._demo_drop_tables(sch);

    EXECUTE format($q$CREATE TABLE %I.products (
        product_id text PRIMARY KEY, name text NOT NULL, brand text NOT NULL, category text NOT NULL,
        subcategory text NOT NULL, price numeric(10,2) NOT NULL, price_band text NOT NULL)$q$, sch);
    EXECUTE format($q$INSERT INTO %I.products
        SELECT product_id, name, brand, category, subcategory, price, price_band
        FROM pg_temp._demo_product ORDER BY idx$q$, sch);
    GET DIAGNOSTICS n_products = ROW_COUNT;

    EXECUTE format($q$CREATE TABLE %I.users (
        user_id bigint PRIMARY KEY, signup_at timestamptz NOT NULL, country text NOT NULL)$q$, sch);
    EXECUTE format($q$INSERT INTO %I.users
        SELECT user_id, date_trunc('second', signup_at), country FROM pg_temp._demo_user ORDER BY user_id$q$, sch);
    GET DIAGNOSTICS n_users = ROW_COUNT;

    -- ids follow the time order of the views (as in an append-only tracking table; a view's add
    -- and order take the next ids); adds follow the view by a few minutes, orders the add by
    -- minutes to two days.
    EXECUTE format($q$CREATE TABLE %I.tracks (
        id bigserial, user_id bigint NOT NULL, event text NOT NULL, product_id text NOT NULL,
        properties jsonb NOT NULL, "timestamp" timestamptz NOT NULL)$q$, sch);
    EXECUTE format($q$INSERT INTO %I.tracks (id, user_id, event, product_id, properties, "timestamp")
        SELECT ix.id0 + e.lvl + 1, ix.user_id, e.event, pd.product_id, pr.props,
               to_timestamp(floor(least($1 - 1, ix.ts_ep
                 + CASE WHEN e.lvl >= 1 THEN 30 + 1200 * audience._demo_rand(ix.k, $2 # 401) ELSE 0 END
                 + CASE WHEN e.lvl >= 2 THEN 120 + 172800 * power(audience._demo_rand(ix.k, $2 # 402), 4) ELSE 0 END)))
        FROM pg_temp._demo_ix ix
        JOIN pg_temp._demo_product pd ON pd.idx = ix.idx
        JOIN pg_temp._demo_price pr ON pr.idx = ix.idx AND pr.m = ix.m
        CROSS JOIN LATERAL (VALUES (0, 'product_viewed'), (1, 'product_added'), (2, 'order_completed')) AS e(lvl, event)
        WHERE e.lvl < ix.depth$q$, sch) USING t_end_ep, s;
    GET DIAGNOSTICS n_tracks = ROW_COUNT;
    PERFORM setval(pg_get_serial_sequence(format('%I.tracks', sch), 'id'), greatest(n_tracks, 1), n_tracks > 0);
    EXECUTE format('ALTER TABLE %I.tracks ADD PRIMARY KEY (id)', sch);

    EXECUTE format($q$CREATE TABLE %I.wishlist_saves (
        user_id bigint NOT NULL, sku text NOT NULL, saved_at timestamptz NOT NULL)$q$, sch);
    EXECUTE format($q$INSERT INTO %I.wishlist_saves
        SELECT ix.user_id, pd.product_id,
               to_timestamp(floor(least($1 - 1, ix.ts_ep + 20 + 300 * audience._demo_rand(ix.k, $2 # 403))))
        FROM pg_temp._demo_ix ix JOIN pg_temp._demo_product pd ON pd.idx = ix.idx
        WHERE ix.wish$q$, sch) USING t_end_ep, s;
    GET DIAGNOSTICS n_wish = ROW_COUNT;

    EXECUTE format('COMMENT ON TABLE %I.tracks IS %L', sch,
        'pg_audience demo shop: Segment-style tracks (product_viewed, product_added, order_completed); generated by audience.generate_demo_shop');
    EXECUTE format('COMMENT ON TABLE %I.wishlist_saves IS %L', sch,
        'pg_audience demo shop: one table per event type (wishlist saves); generated by audience.generate_demo_shop');
    EXECUTE format('ANALYZE %1$I.products, %1$I.users, %1$I.tracks, %1$I.wishlist_saves', sch);

    DROP TABLE pg_temp._demo_cat, pg_temp._demo_brand, pg_temp._demo_block, pg_temp._demo_persona,
        pg_temp._demo_product, pg_temp._demo_price, pg_temp._demo_user, pg_temp._demo_ix;

    RETURN QUERY VALUES ('products'::text, n_products), ('users', n_users),
                        ('tracks', n_tracks), ('wishlist_saves', n_wish);
END
$fn$;
COMMENT ON FUNCTION audience.generate_demo_shop(text, integer, integer, bigint, integer, double precision, text) IS
    'Create a deterministic demo shop (products, users, Segment-style tracks, wishlist_saves) with planted tastes in target_schema; kind ''fashion'' (default) or ''grocery'' (repeat purchases).';

-- ---------------------------------------------------------------- models of 0.1.0

DO $upgrade$
DECLARE
    names text;
BEGIN
    SELECT string_agg(pg_catalog.format('%L', c.name), ', ' ORDER BY c.name) INTO names
      FROM audience.catalogs c WHERE c.active_model_id IS NOT NULL;
    IF names IS NOT NULL THEN
        RAISE WARNING 'pg_audience 0.2.0 stores models in a new format: rebuild the model of catalog(s) %', names
            USING DETAIL = 'Until then audiences, explain and refresh of saved audiences of those catalogs fail with SQLSTATE 55000. Catalogs, events, mappings, build settings and saved audiences are kept.',
                  HINT = 'Run SELECT * FROM audience.build(''<catalog>''); for each of them.';
    END IF;
END
$upgrade$;
