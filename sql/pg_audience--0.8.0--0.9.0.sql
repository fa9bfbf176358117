-- pg_audience 0.8.0 -> 0.9.0, run by ALTER EXTENSION pg_audience UPDATE.
--
-- Every row stays, and models built by 0.8.0 are served as they are (same stored format). New in
-- 0.9.0: a source whose user or product id column is an integer (smallint, integer, bigint) is
-- scanned with the integer as it is: the internal aggregates _affinity_collect and
-- _affinity_collect_bytes get an overload with two more arguments (user_num, item_num), taken
-- for a NULL user_id or item_id and written in decimal by the aggregate as ::text writes them,
-- instead of a cast to text per row. The ten-argument aggregates stay (text ids, and the 0.8.0
-- query until this update runs). _build_query is replaced (CREATE OR REPLACE: GRANTs on it stay).
-- scripts/tests/upgrade.sh checks that an updated database has the same schema as a fresh
-- CREATE EXTENSION of 0.9.0.

\echo Use "ALTER EXTENSION pg_audience UPDATE TO '0.9.0'" to load this file. \quit

CREATE FUNCTION audience."_affinity_collect_sfunc"(
	"state" internal,
	"user_id" TEXT,
	"item_id" TEXT,
	"weight" double precision,
	"event_time" timestamp with time zone,
	"half_life" interval,
	"reference_time" timestamp with time zone,
	"n_props" INT,
	"props" TEXT,
	"doc" jsonb,
	"keys" TEXT,
	"user_num" bigint,
	"item_num" bigint
) RETURNS internal
PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_affinity_collect_sfunc_wrapper';

-- 0.9.0: the same with integer ids (user_num, item_num) for a NULL user_id or item_id: the
-- build's scan passes an integer column as it is, not cast to text per row.
CREATE AGGREGATE audience._affinity_collect(user_id text, item_id text, weight double precision,
                                            event_time timestamptz, half_life interval, reference_time timestamptz,
                                            n_props integer, props text, doc jsonb, keys text,
                                            user_num bigint, item_num bigint) (
    sfunc = audience._affinity_collect_sfunc,
    stype = internal,
    finalfunc = audience._affinity_final_stash,
    finalfunc_modify = read_write,
    combinefunc = audience._affinity_combine,
    serialfunc = audience._affinity_serial,
    deserialfunc = audience._affinity_deserial,
    parallel = safe
);

CREATE AGGREGATE audience._affinity_collect_bytes(user_id text, item_id text, weight double precision,
                                                  event_time timestamptz, half_life interval, reference_time timestamptz,
                                                  n_props integer, props text, doc jsonb, keys text,
                                                  user_num bigint, item_num bigint) (
    sfunc = audience._affinity_collect_sfunc,
    stype = internal,
    finalfunc = audience._affinity_final_bytes,
    finalfunc_modify = read_write,
    combinefunc = audience._affinity_combine,
    serialfunc = audience._affinity_serial,
    deserialfunc = audience._affinity_deserial,
    parallel = safe
);

CREATE OR REPLACE FUNCTION audience._build_query(cid integer, since timestamptz, until timestamptz, reference timestamptz,
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
    tparts text[] := '{}';
    ecut text;
    mapped float8;
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
    ordered integer[];
    dkeys text[];
    dcol text;
    dok boolean;
    dspec text;
    dfirst text;
    pdk text;
    ids text;
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
        -- The ids: an integer column as it is (u_num, i_num), which the aggregate writes in
        -- decimal as ::text would, without a cast per row (README: "Integer ids passed as they
        -- are"); any other type as text.
        ids := format(CASE WHEN audience._column_type(rel, grp.user_column, 'user id column') IN ('smallint', 'integer', 'bigint')
                           THEN 'NULL::pg_catalog.text AS u, s.%I::pg_catalog.int8 AS u_num'
                           ELSE 's.%I::pg_catalog.text AS u, NULL::pg_catalog.int8 AS u_num' END, grp.user_column)
            || ', ' ||
               format(CASE WHEN audience._column_type(rel, grp.product_column, 'product id column') IN ('smallint', 'integer', 'bigint')
                           THEN 'NULL::pg_catalog.text AS i, s.%I::pg_catalog.int8 AS i_num'
                           ELSE 's.%I::pg_catalog.text AS i, NULL::pg_catalog.int8 AS i_num' END, grp.product_column);
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
        dfirst := NULL;
        psame := true;
        n := 0;
        -- A table's event types in the order of their share of its rows (the event column's most
        -- common values in pg_stats once the table is analyzed; then by id): each row's CASE and
        -- ANY stop at the first match, so the most frequent type costs one comparison, not one
        -- per type before it (README: "The most frequent event types tested first").
        -- The share of the table's rows of mapped types (the sum of their most common
        -- frequencies; NULL before the table is analyzed) tells below whether to filter.
        SELECT array_agg(e.event_id ORDER BY f.freq DESC NULLS LAST, e.event_id), pg_catalog.sum(f.freq)
          INTO ordered, mapped
          FROM audience.events e
          LEFT JOIN (SELECT mc.v, pg_catalog.max(mc.freq) AS freq
                       FROM pg_catalog.pg_stats st,
                            ROWS FROM (pg_catalog.unnest(st.most_common_vals::pg_catalog.text::pg_catalog.text[]),
                                       pg_catalog.unnest(st.most_common_freqs)) AS mc(v, freq)
                      WHERE grp.event_column IS NOT NULL
                        AND st.schemaname OPERATOR(pg_catalog.=) grp.source_schema
                        AND st.tablename OPERATOR(pg_catalog.=) grp.source_table
                        AND st.attname OPERATOR(pg_catalog.=) grp.event_column
                      GROUP BY mc.v) f ON f.v OPERATOR(pg_catalog.=) e.event_value
         WHERE e.event_id = ANY (grp.ids);
        FOR ev IN SELECT e.* FROM audience.events e, pg_catalog.unnest(ordered) WITH ORDINALITY AS o(id, k)
                   WHERE e.event_id = o.id ORDER BY o.k LOOP
            n := n + 1;
            IF ev.weight_column IS NULL THEN
                wexpr := format('%s::pg_catalog.float8', ev.weight);
            ELSE
                PERFORM audience._column_type(rel, ev.weight_column, 'weight column');
                wexpr := format('(%s::pg_catalog.float8 OPERATOR(pg_catalog.*) coalesce(s.%I::pg_catalog.float8, 1))', ev.weight, ev.weight_column);
            END IF;
            exprs := '{}';
            dkeys := '{}';
            dcol := NULL;
            dok := true;
            FOR i IN 1 .. coalesce(array_length(props, 1), 0) LOOP
                SELECT * INTO m FROM audience.property_mappings pm
                 WHERE pm.catalog_id = cid AND pm.event_id = ev.event_id AND pm.property = props[i];
                IF FOUND THEN
                    exprs := exprs || audience._property_expr(rel,
                        CASE WHEN m.json_key IS NULL THEN m.column_name END, m.json_key, m.column_name, m.delimiter);
                    -- Keys of one jsonb column (no delimiter) are read by the aggregate in place
                    -- from the row's document instead of by ->> (README: "Event properties read
                    -- from their jsonb in place").
                    IF m.json_key IS NOT NULL AND m.delimiter IS NULL AND m.json_key <> ''
                       AND pg_catalog.strpos(m.json_key, pg_catalog.chr(30)) = 0
                       AND (dcol IS NULL OR dcol = m.column_name)
                       AND audience._column_type(rel, m.column_name, 'JSON column') = 'pg_catalog.jsonb'::pg_catalog.regtype THEN
                        dcol := m.column_name;
                        dkeys := dkeys || m.json_key;
                    ELSE
                        dok := false;
                    END IF;
                ELSE
                    exprs := exprs || 'NULL::pg_catalog.text'::text;
                    dkeys := dkeys || ''::text;
                END IF;
            END LOOP;
            -- The p, d and k columns of the row: the values' text, or the document and its keys.
            dspec := CASE WHEN dok AND dcol IS NOT NULL THEN
                format('NULL::pg_catalog.text AS p, s.%I AS d, %L::pg_catalog.text AS k', dcol, array_to_string(dkeys, chr(30)))
            END;
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
                dfirst := dspec;
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
        ecut := '';
        IF grp.event_column IS NOT NULL THEN
            PERFORM audience._column_type(rel, grp.event_column, 'event name column');
            ecut := format(' AND s.%I::pg_catalog.text OPERATOR(pg_catalog.=) ANY (%L::pg_catalog.text[])', grp.event_column,
                           (SELECT array_agg(e.event_value ORDER BY o.k) FROM audience.events e, pg_catalog.unnest(ordered) WITH ORDINALITY AS o(id, k)
                             WHERE e.event_id = o.id));
            -- When pg_stats says at least 95% of the table's rows are of mapped types, the
            -- aggregate's scan leaves the ANY out (one to three text comparisons a row): the
            -- weight's CASE is NULL for any other type, and the aggregate skips such rows
            -- (README: "The event filter left to the weight's CASE"). The time range keeps it.
            IF mapped >= 0.95 THEN
                wexpr := format('CASE%s END', wcase);
            END IF;
        END IF;
        -- Every event type of the table with the same mappings of one jsonb column: its
        -- document and keys; otherwise the values' text (per event type when they differ).
        pdk := CASE WHEN psame AND dfirst IS NOT NULL THEN dfirst
                    ELSE format('%s AS p, NULL::pg_catalog.jsonb AS d, NULL::pg_catalog.text AS k',
                                CASE WHEN psame THEN pfirst ELSE format('CASE%s END', pcase) END) END;
        IF n > 1 THEN
            -- Several event types of one table in one pass.
            wexpr := format('CASE%s END', wcase);
            ev := NULL;
            parts := parts || format(
                'SELECT %s, %s AS w, %s AS t, CASE%s END AS h, %s FROM %s s WHERE %s',
                ids, wexpr, texpr, hcase, pdk, rel::text,
                filter || CASE WHEN mapped >= 0.95 THEN '' ELSE ecut END);
        ELSE
            SELECT e.* INTO ev FROM audience.events e WHERE e.event_id = grp.ids[1];
            parts := parts || format(
                'SELECT %s, %s AS w, %s AS t, %L::pg_catalog.interval AS h, %s FROM %s s WHERE %s',
                ids, wexpr, texpr, ev.half_life, pdk, rel::text,
                filter || CASE WHEN mapped >= 0.95 THEN '' ELSE ecut END);
        END IF;
        tparts := tparts || format('SELECT %s AS t FROM %s s WHERE %s', texpr, rel::text, filter || ecut);
    END LOOP;
    IF array_length(parts, 1) IS NULL THEN
        RAISE EXCEPTION 'catalog "%" has no events', (SELECT c.name FROM audience.catalogs c WHERE c.catalog_id = cid)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Register event sources with audience.add_event() before building.';
    END IF;
    query := format('SELECT audience._affinity_collect(ev.u, ev.i, ev.w, ev.t, ev.h, %L::pg_catalog.timestamptz, %s, ev.p, ev.d, ev.k, ev.u_num, ev.i_num) FROM (%s) ev',
                    reference, coalesce(array_length(props, 1), 0), array_to_string(parts, ' UNION ALL '));
    time_query := format('SELECT pg_catalog.min(ev.t), pg_catalog.max(ev.t) FROM (%s) ev', array_to_string(tparts, ' UNION ALL '));
    -- The same aggregate over each source alone (Citus pushes it down to the workers only over
    -- one distributed table; the build merges the states).
    SELECT array_agg(format('SELECT audience._affinity_collect(ev.u, ev.i, ev.w, ev.t, ev.h, %L::pg_catalog.timestamptz, %s, ev.p, ev.d, ev.k, ev.u_num, ev.i_num) FROM (%s) ev',
                            reference, coalesce(array_length(props, 1), 0), x) ORDER BY o)
      INTO source_queries FROM unnest(parts) WITH ORDINALITY AS u(x, o);
    properties := props;
END
$fn$;
