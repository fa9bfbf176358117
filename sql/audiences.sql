-- Saved audiences: an audience definition materialised into audience.audience_members, with
-- who entered and who left at each refresh in audience.audience_changes, so sync tools ship
-- only changes. Refreshing is one SQL call a pg_cron job can run.

CREATE FUNCTION audience.refresh_audience(name text)
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
COMMENT ON FUNCTION audience.refresh_audience(text) IS
    'Recomputes a saved audience from the active model; records who entered and left in audience.audience_changes.';

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
COMMENT ON FUNCTION audience.save_audience(text, text, text[], double precision, text, bigint, double precision, boolean, interval, boolean, double precision) IS
    'Saves an audience definition and materialises its members (see audience.refresh_audience); control_pct holds out that share of them as a control group.';

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

-- An audience of any set of items (product ids). The item list is stored as given (the query
-- that produced it is not re-run at refresh: save again with replace => true to change it).
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
COMMENT ON FUNCTION audience.save_audience_items(text, text[], double precision, text, bigint, double precision, boolean, interval, boolean, double precision) IS
    'Saves an audience of any set of items (the list is stored as given) and materialises its members; control_pct holds out that share of them as a control group.';

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
            -- Kept for audience.saved_audience_status until a refresh succeeds.
            UPDATE audience.saved_audiences sa SET last_error = error, last_error_at = clock_timestamp() WHERE sa.name = s.name;
        END;
        RETURN NEXT;
    END LOOP;
END
$fn$;
COMMENT ON FUNCTION audience.refresh_all_audiences() IS 'Refreshes every saved audience, each on its own: a failing one is reported in the error column and the others refresh (one call for a pg_cron job).';

-- Did the audience work? Engagement with the audience's items (its property values in the active
-- model, or its saved item list) at or after `since` (and before `until`) in the catalog's
-- registered event sources, for the current treated members vs the control group, with the
-- difference of the two rates and its 95% confidence interval (normal approximation). Runs with
-- the caller's rights: the caller needs SELECT on the sources, as for a build.
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

CREATE FUNCTION audience.drop_audience(name text, if_exists boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM audience._check_name('audience name', name);
    DELETE FROM audience.saved_audiences s WHERE s.name = drop_audience.name;
    IF NOT FOUND THEN
        IF if_exists THEN
            RAISE NOTICE 'audience "%" does not exist, skipping', name;
            RETURN false;
        END IF;
        RAISE EXCEPTION 'audience "%" does not exist', name USING ERRCODE = 'undefined_object';
    END IF;
    RETURN true;
END
$fn$;

-- Right to be forgotten: deletes a user's memberships and history in saved audiences, then the
-- user's rows from every erasable registered event source (each in its own subtransaction, with
-- the caller's rights, comparing in the id column's own type so its index is used), reports per
-- source what was deleted or why not, and rebuilds the catalogs that had a model so no model
-- keeps a trace of the user. A source is erasable only when the role that registered it had
-- DELETE on it (audience.add_event) and still has: registering a table one can only read never
-- lets another role's forget_user delete from it.
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
COMMENT ON FUNCTION audience.forget_user(text, boolean) IS
    'Deletes a user''s saved-audience memberships and rows of every erasable registered source, reporting per source what was deleted or why not, then rebuilds the models (right to be forgotten).';

-- Descriptions of the functions without one so far (most are defined in Rust; this file runs last).
COMMENT ON FUNCTION audience.drop_event(text, text) IS 'Removes an event source registration from a catalog.';
COMMENT ON FUNCTION audience.unmap_property(text, text, text) IS 'Removes the mappings of a property (for one event, or all).';
COMMENT ON FUNCTION audience.drop_audience(text, boolean) IS 'Drops a saved audience with its members and history.';
COMMENT ON FUNCTION audience.save_audience(text, text, text, double precision, text, bigint, double precision, boolean, interval, boolean, double precision) IS
    'Saves an audience definition for one value and materialises it into audience.audience_members.';
COMMENT ON FUNCTION audience.recommend_audience_items(text[], double precision, text, bigint, double precision, boolean, interval) IS
    'The users most likely to engage with any of the given items (product ids), best first, capped at the top max_pct percent of users.';
COMMENT ON FUNCTION audience.audience_size(text, text, double precision[], text, boolean) IS
    'The size of a property value''s audience at several cuts (percentages): users, lowest score and how many engaged with the value before.';
COMMENT ON FUNCTION audience.control_uplift(text, timestamp with time zone, timestamp with time zone) IS
    'Engagement with a saved audience''s items since a time, treated members vs control group, with the uplift and its 95% confidence interval.';
COMMENT ON FUNCTION audience.audience_size_items(text[], double precision[], text, boolean) IS
    'The size of the audience of a set of items at several cuts (percentages): users, lowest score and how many engaged with the items before.';
COMMENT ON FUNCTION audience.build(text, integer, integer, double precision, double precision, integer, double precision, double precision, double precision, double precision, double precision, double precision, timestamp with time zone, text, interval, boolean, boolean) IS
    'Builds the catalog''s model from its registered events (one parallel scan, ALS and item-kNN training) and activates it; tunes the scoring knobs of untuned properties on a validation window first (tune => false turns that off); with guard => true activates it only if it ranks the events since the active model''s build no worse than that model. Arguments given once are remembered in catalogs.build_settings.';
COMMENT ON FUNCTION audience.set_fresh_events(text, text, bigint) IS
    'Whether audiences of a catalog include the events that arrived since its build (auto: when an index makes reading them cheap; on; off), and past how many new rows the snapshot is served instead.';
COMMENT ON FUNCTION audience.recommend_audience(text, text, double precision, text, bigint, double precision, boolean, interval) IS
    'The users most likely to engage with items having property = value, best first, capped at the top max_pct percent of users.';
COMMENT ON FUNCTION audience.recommend_audience(text, text[], double precision, text, bigint, double precision, boolean, interval) IS
    'The users most likely to engage with items having any of the property values, best first, capped at the top max_pct percent of users.';
COMMENT ON FUNCTION audience.explain(text, text, text, text, integer) IS
    'The history items that contributed most to a user''s score for a property value.';
COMMENT ON FUNCTION audience.evaluate(text, text, interval, text[], boolean) IS
    'Temporal backtest: trains before (last event - holdout) and reports hit rate, recall, lift and AUC per value and cut for pg_audience and the SQL baselines; also stored in audience.evaluation_results.';
COMMENT ON FUNCTION audience.tune(text, text, interval) IS
    'Chooses the ALS settings and the scoring knobs of one property (own engagement measure, prior, activity_exp, knn_weight, volume, days_exp, tenure_exp) by temporal validation on the catalog''s events and remembers them for later builds.';
COMMENT ON FUNCTION audience.version() IS 'The installed pg_audience version.';
COMMENT ON FUNCTION audience.build_progress() IS
    'The builds running now, one row each, with their phase (scan, products, tune, als, knn, store) and seconds; a role sees the builds of roles it is a member of (members of pg_read_all_stats see all).';
COMMENT ON FUNCTION audience.build_incremental(text, integer, boolean) IS
    'Grows the catalog''s active model by the events since its build (affinities, engagement days, item properties, ALS continued from the model''s factors, item-kNN computed again when new items arrived or the pairs grew 5% since, or as knn says) and activates the result, without scanning older events again.';
