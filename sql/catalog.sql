-- Catalog registration: catalogs, event sources and property mappings.
--
-- These functions validate against pg_catalog and store names, never SQL text: every identifier
-- they later put in a query goes through format('%I') and every value through format('%L').
-- They are plain SQL-shaped checks, so they live in PL/pgSQL; the engine (aggregate, training,
-- scoring) is Rust. Each error carries a SQLSTATE, a detail where useful and a hint.

-- Resolve a catalog name (NULL = the default catalog) to its id.
CREATE FUNCTION audience._catalog_id(catalog text) RETURNS integer
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    cid integer;
    n integer;
BEGIN
    IF catalog IS NULL THEN
        SELECT c.catalog_id INTO cid FROM audience.catalogs c WHERE c.is_default;
        IF cid IS NULL THEN
            SELECT count(*), min(c.catalog_id) INTO n, cid FROM audience.catalogs c;
            IF n = 0 THEN
                RAISE EXCEPTION 'no catalog exists'
                    USING ERRCODE = 'undefined_object',
                          HINT = 'Create one with audience.create_catalog().';
            ELSIF n > 1 THEN
                RAISE EXCEPTION 'no default catalog is set'
                    USING ERRCODE = 'undefined_object',
                          DETAIL = format('There are %s catalogs and none is marked as the default.', n),
                          HINT = 'Pass the catalog name, or mark one with audience.set_default_catalog().';
            END IF;
        END IF;
        RETURN cid;
    END IF;
    SELECT c.catalog_id INTO cid FROM audience.catalogs c WHERE c.name = catalog;
    IF cid IS NULL THEN
        RAISE EXCEPTION 'catalog "%" does not exist', catalog
            USING ERRCODE = 'undefined_object',
                  DETAIL = coalesce('Existing catalogs are: ' || (SELECT string_agg(format('%I', c.name), ', ' ORDER BY c.name) FROM audience.catalogs c) || '.',
                                    'No catalog exists yet.'),
                  HINT = 'Create it with audience.create_catalog().';
    END IF;
    RETURN cid;
END
$fn$;

-- Shared argument checks.
CREATE FUNCTION audience._check_name(what text, val text) RETURNS void
LANGUAGE plpgsql IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF val IS NULL THEN
        RAISE EXCEPTION '% cannot be null', what USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF btrim(val) = '' THEN
        RAISE EXCEPTION '% cannot be empty', what USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF length(val) > 200 THEN
        RAISE EXCEPTION '% is too long', what
            USING ERRCODE = 'invalid_parameter_value',
                  DETAIL = format('It has %s characters; the limit is 200.', length(val));
    END IF;
END
$fn$;

-- The type of a column of a relation, or an error naming the columns that exist.
CREATE FUNCTION audience._column_type(rel regclass, col text, what text) RETURNS regtype
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t regtype;
BEGIN
    PERFORM audience._check_name(what, col);
    SELECT a.atttypid::regtype INTO t
      FROM pg_attribute a
     WHERE a.attrelid = rel AND a.attname = col AND a.attnum > 0 AND NOT a.attisdropped;
    IF t IS NULL THEN
        RAISE EXCEPTION 'column "%" of relation "%" does not exist', col, rel::text
            USING ERRCODE = 'undefined_column',
                  DETAIL = 'Its columns are: ' || coalesce((SELECT string_agg(format('%I', a.attname), ', ' ORDER BY a.attnum)
                                                     FROM pg_attribute a
                                                    WHERE a.attrelid = rel AND a.attnum > 0 AND NOT a.attisdropped), '(none)') || '.',
                  HINT = format('Pass the %s as it is spelled in the table; names are case sensitive.', what);
    END IF;
    IF NOT has_column_privilege(rel, col, 'SELECT') THEN
        RAISE EXCEPTION 'permission denied for column "%" of relation "%"', col, rel::text
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('Ask the owner to GRANT SELECT ON %s to %I.', rel::text, current_user);
    END IF;
    RETURN t;
END
$fn$;

-- Check that a column can be an id (user or product): scalar and castable to text.
CREATE FUNCTION audience._check_id_column(rel regclass, col text, what text) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t regtype := audience._column_type(rel, col, what);
BEGIN
    IF t NOT IN ('smallint', 'integer', 'bigint', 'numeric', 'text', 'character varying', 'character', 'name', 'uuid') THEN
        RAISE EXCEPTION 'column "%" of relation "%" has type %, which cannot be used as a %', col, rel::text, t::text, what
            USING ERRCODE = 'datatype_mismatch',
                  HINT = 'Use a text, varchar, integer, bigint, numeric or uuid column, or register a view that casts it.';
    END IF;
END
$fn$;

-- The SQL expression (timestamptz) for an event-time column.
CREATE FUNCTION audience._time_expr(rel regclass, col text) RETURNS text
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

-- The regclass of a stored (schema, table) pair, or an error if it is gone.
CREATE FUNCTION audience._relation(sch name, tbl name) RETURNS regclass
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    r regclass := to_regclass(format('%I.%I', sch, tbl));
BEGIN
    IF r IS NULL THEN
        RAISE EXCEPTION 'relation "%.%" does not exist', sch, tbl
            USING ERRCODE = 'undefined_table',
                  HINT = 'It was registered in a catalog and has since been dropped or renamed; re-register it or drop the registration.';
    END IF;
    RETURN r;
END
$fn$;

CREATE FUNCTION audience._check_source(rel regclass) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    k "char";
BEGIN
    IF rel IS NULL THEN
        RAISE EXCEPTION 'source relation cannot be null' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT c.relkind INTO k FROM pg_class c WHERE c.oid = rel;
    IF k IS NULL THEN
        RAISE EXCEPTION 'relation with OID % does not exist', rel::oid USING ERRCODE = 'undefined_table';
    END IF;
    IF k NOT IN ('r', 'v', 'm', 'p', 'f') THEN
        RAISE EXCEPTION '"%" is not a table, view, materialized view or foreign table', rel::text
            USING ERRCODE = 'wrong_object_type';
    END IF;
END
$fn$;

CREATE FUNCTION audience.create_catalog(name text, is_default boolean DEFAULT NULL, description text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    cid integer;
    first boolean;
BEGIN
    PERFORM audience._check_name('catalog name', name);
    PERFORM 1 FROM audience.catalogs c WHERE c.name = create_catalog.name;
    IF FOUND THEN
        RAISE EXCEPTION 'catalog "%" already exists', name
            USING ERRCODE = 'duplicate_object',
                  HINT = 'Choose another name, or drop it first with audience.drop_catalog().';
    END IF;
    first := NOT EXISTS (SELECT 1 FROM audience.catalogs);
    IF coalesce(is_default, first) THEN
        UPDATE audience.catalogs c SET is_default = false, updated_at = now() WHERE c.is_default;
    END IF;
    INSERT INTO audience.catalogs (name, is_default, description)
    VALUES (create_catalog.name, coalesce(create_catalog.is_default, first), create_catalog.description)
    RETURNING catalog_id INTO cid;
    RETURN cid;
END
$fn$;
COMMENT ON FUNCTION audience.create_catalog(text, boolean, text) IS
    'Creates a recommendation catalog. The first catalog becomes the default unless is_default => false.';

CREATE FUNCTION audience.drop_catalog(name text, if_exists boolean DEFAULT false)
RETURNS boolean
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    cid integer;
BEGIN
    PERFORM audience._check_name('catalog name', name);
    SELECT c.catalog_id INTO cid FROM audience.catalogs c WHERE c.name = drop_catalog.name;
    IF cid IS NULL THEN
        IF if_exists THEN
            RAISE NOTICE 'catalog "%" does not exist, skipping', name;
            RETURN false;
        END IF;
        PERFORM audience._catalog_id(name);  -- raises the standard error
    END IF;
    -- Wait for (or fail against) a running build instead of deleting under it.
    PERFORM 1 FROM audience.catalogs c WHERE c.catalog_id = cid FOR UPDATE;
    UPDATE audience.catalogs c SET active_model_id = NULL WHERE c.catalog_id = cid;
    DELETE FROM audience.catalogs c WHERE c.catalog_id = cid;
    RETURN true;
END
$fn$;
COMMENT ON FUNCTION audience.drop_catalog(text, boolean) IS
    'Drops a catalog with its events, mappings, models and saved audiences.';

CREATE FUNCTION audience.set_default_catalog(name text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    cid integer;
BEGIN
    PERFORM audience._check_name('catalog name', name);
    cid := audience._catalog_id(name);
    UPDATE audience.catalogs c SET is_default = false, updated_at = now() WHERE c.is_default AND c.catalog_id <> cid;
    UPDATE audience.catalogs c SET is_default = true, updated_at = now() WHERE c.catalog_id = cid;
END
$fn$;
COMMENT ON FUNCTION audience.set_default_catalog(text) IS 'Marks the catalog used when a function is called without a catalog name.';

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

CREATE FUNCTION audience.drop_event(catalog text, event text)
RETURNS void
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    cid integer;
BEGIN
    PERFORM audience._check_name('event name', event);
    cid := audience._catalog_id(catalog);
    DELETE FROM audience.events e WHERE e.catalog_id = cid AND e.name = event;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'event "%" is not registered in catalog "%"', event, coalesce(catalog, '(default)')
            USING ERRCODE = 'undefined_object',
                  DETAIL = coalesce('Registered events are: ' || (SELECT string_agg(format('%I', e.name), ', ' ORDER BY e.name) FROM audience.events e WHERE e.catalog_id = cid) || '.', 'The catalog has no events.');
    END IF;
END
$fn$;

-- The text expression that reads a mapped property for one row `s`, multi-valued values joined by chr(31).
CREATE FUNCTION audience._property_expr(rel regclass, column_name text, json_key text, json_column text, delimiter text)
RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    t regtype;
    e text;
BEGIN
    IF column_name IS NOT NULL THEN
        t := audience._column_type(rel, column_name, 'property column');
        IF t IN ('json', 'jsonb', 'bytea') THEN
            RAISE EXCEPTION 'column "%" of relation "%" has type %, which cannot be used as a property', column_name, rel::text, t::text
                USING ERRCODE = 'datatype_mismatch',
                      HINT = 'For a key of a JSON column pass json_key => ''key'' and json_column => the column.';
        END IF;
        IF EXISTS (SELECT 1 FROM pg_type ty WHERE ty.oid = t AND ty.typcategory = 'A') THEN
            e := format('pg_catalog.array_to_string(s.%I::pg_catalog.text[], pg_catalog.chr(31))', column_name);
        ELSE
            e := format('s.%I::pg_catalog.text', column_name);
        END IF;
    ELSE
        t := audience._column_type(rel, json_column, 'JSON column');
        IF t NOT IN ('json', 'jsonb') THEN
            RAISE EXCEPTION 'column "%" of relation "%" has type %, not json or jsonb', json_column, rel::text, t::text
                USING ERRCODE = 'datatype_mismatch',
                      HINT = 'Pass json_column => the name of a json or jsonb column, or map a plain column with column_name.';
        END IF;
        -- A JSON array value arrives as its JSON text and is split into values by the engine.
        e := format('(s.%I OPERATOR(pg_catalog.->>) %L)', json_column, json_key);
    END IF;
    IF delimiter IS NOT NULL THEN
        e := format('pg_catalog.replace(%s, %L, pg_catalog.chr(31))', e, delimiter);
    END IF;
    RETURN e;
END
$fn$;

CREATE FUNCTION audience.map_property(
    catalog text,
    property text,
    column_name text DEFAULT NULL,
    json_key text DEFAULT NULL,
    json_column text DEFAULT 'properties',
    event text DEFAULT NULL,
    products regclass DEFAULT NULL,
    products_id text DEFAULT 'product_id',
    delimiter text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    cid integer;
    ev record;
    n integer := 0;
BEGIN
    cid := audience._catalog_id(catalog);
    PERFORM audience._check_name('property name', property);
    IF (column_name IS NULL) = (json_key IS NULL) THEN
        RAISE EXCEPTION 'exactly one of column_name and json_key must be given'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'Map a column with column_name => ''brand'', or a key of a JSON column with json_key => ''brand''.';
    END IF;
    IF json_key IS NOT NULL THEN
        PERFORM audience._check_name('json_key', json_key);
    END IF;
    IF delimiter IS NOT NULL AND delimiter = '' THEN
        RAISE EXCEPTION 'delimiter cannot be empty' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'Pass NULL for single-valued properties, or e.g. ''|'' for values such as ''Action|Comedy''.';
    END IF;
    IF products IS NOT NULL THEN
        IF event IS NOT NULL THEN
            RAISE EXCEPTION 'event and products cannot both be given'
                USING ERRCODE = 'invalid_parameter_value',
                      HINT = 'A property is read either from event rows or from a products table.';
        END IF;
        PERFORM audience._check_source(products);
        PERFORM audience._check_id_column(products, products_id, 'product id column');
        PERFORM audience._property_expr(products, column_name, json_key, json_column, delimiter);
        PERFORM 1 FROM audience.property_mappings m WHERE m.catalog_id = cid AND m.property = map_property.property AND m.event_id IS NULL;
        IF FOUND THEN
            RAISE EXCEPTION 'property "%" is already mapped to a products table', property
                USING ERRCODE = 'duplicate_object',
                      HINT = 'Remove the mapping with audience.unmap_property() first.';
        END IF;
        INSERT INTO audience.property_mappings (catalog_id, property, products_schema, products_table, products_id_column, column_name, json_key, delimiter)
        SELECT cid, map_property.property, n.nspname, c.relname, products_id, map_property.column_name,
               map_property.json_key, map_property.delimiter
          FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = products;
        -- json_column is kept in column_name's place only for JSON keys.
        IF json_key IS NOT NULL THEN
            UPDATE audience.property_mappings m SET column_name = json_column
             WHERE m.catalog_id = cid AND m.property = map_property.property AND m.event_id IS NULL;
        END IF;
        UPDATE audience.catalogs c SET updated_at = now() WHERE c.catalog_id = cid;
        RETURN 1;
    END IF;

    IF event IS NOT NULL THEN
        PERFORM audience._check_name('event name', event);
        PERFORM 1 FROM audience.events e WHERE e.catalog_id = cid AND e.name = event;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'event "%" is not registered in catalog "%"', event, coalesce(catalog, '(default)')
                USING ERRCODE = 'undefined_object',
                      DETAIL = coalesce('Registered events are: ' || (SELECT string_agg(format('%I', e.name), ', ' ORDER BY e.name) FROM audience.events e WHERE e.catalog_id = cid) || '.', 'The catalog has no events.'),
                      HINT = 'Register it with audience.add_event().';
        END IF;
    ELSIF NOT EXISTS (SELECT 1 FROM audience.events e WHERE e.catalog_id = cid) THEN
        RAISE EXCEPTION 'catalog "%" has no events to read property "%" from', coalesce(catalog, '(default)'), property
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'Register events with audience.add_event() first, or pass products => a products table.';
    END IF;

    FOR ev IN SELECT e.* FROM audience.events e
               WHERE e.catalog_id = cid AND (map_property.event IS NULL OR e.name = map_property.event)
               ORDER BY e.event_id
    LOOP
        PERFORM 1 FROM audience.property_mappings m
         WHERE m.catalog_id = cid AND m.property = map_property.property AND m.event_id = ev.event_id;
        IF FOUND THEN
            RAISE EXCEPTION 'property "%" is already mapped for event "%"', property, ev.name
                USING ERRCODE = 'duplicate_object',
                      HINT = 'Remove the mapping with audience.unmap_property() first.';
        END IF;
        PERFORM audience._property_expr(audience._relation(ev.source_schema, ev.source_table), column_name, json_key, json_column, delimiter);
        INSERT INTO audience.property_mappings (catalog_id, property, event_id, column_name, json_key, delimiter)
        VALUES (cid, map_property.property, ev.event_id,
                CASE WHEN map_property.json_key IS NULL THEN map_property.column_name ELSE map_property.json_column END,
                map_property.json_key, map_property.delimiter);
        n := n + 1;
    END LOOP;
    UPDATE audience.catalogs c SET updated_at = now() WHERE c.catalog_id = cid;
    RETURN n;
END
$fn$;
COMMENT ON FUNCTION audience.map_property(text, text, text, text, text, text, regclass, text, text) IS
    'Maps a model property (brand, category, genre ...) to an event column, a key of a JSON column, or a products-table column. Returns the number of mappings created.';

CREATE FUNCTION audience.unmap_property(catalog text, property text, event text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    cid integer;
    n integer;
BEGIN
    PERFORM audience._check_name('property name', property);
    cid := audience._catalog_id(catalog);
    DELETE FROM audience.property_mappings m
     WHERE m.catalog_id = cid AND m.property = unmap_property.property
       AND (unmap_property.event IS NULL
            OR m.event_id = (SELECT e.event_id FROM audience.events e WHERE e.catalog_id = cid AND e.name = unmap_property.event));
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n = 0 THEN
        RAISE EXCEPTION 'property "%" is not mapped%', property, CASE WHEN event IS NULL THEN '' ELSE format(' for event "%s"', event) END
            USING ERRCODE = 'undefined_object',
                  DETAIL = coalesce('Mapped properties are: ' || (SELECT string_agg(DISTINCT format('%I', m.property), ', ') FROM audience.property_mappings m WHERE m.catalog_id = cid) || '.', 'No property is mapped.');
    END IF;
    RETURN n;
END
$fn$;

-- The scan the build runs: one UNION ALL over the registered sources, feeding the affinity
-- aggregate's internal variant, plus the property order it uses. Registrations that read the same
-- relation with the same columns and differ only in the event-name filter (one Segment-style
-- tracks table, several event types) share one scan: their weight, half-life and properties are
-- chosen per row with CASE on the event column. Text of a query, built from stored names with %I
-- and values with %L only.
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

-- One query per products-table mapping: (item id, value text) rows.
CREATE FUNCTION audience._products_queries(cid integer, OUT property text, OUT query text)
RETURNS SETOF record
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    m record;
    rel regclass;
BEGIN
    FOR m IN SELECT * FROM audience.property_mappings pm WHERE pm.catalog_id = cid AND pm.event_id IS NULL ORDER BY pm.property LOOP
        rel := audience._relation(m.products_schema, m.products_table);
        PERFORM audience._check_id_column(rel, m.products_id_column, 'product id column');
        property := m.property;
        query := format('SELECT s.%I::pg_catalog.text, %s FROM %s s WHERE s.%I IS NOT NULL',
                        m.products_id_column,
                        audience._property_expr(rel, CASE WHEN m.json_key IS NULL THEN m.column_name END, m.json_key, m.column_name, m.delimiter),
                        rel::text, m.products_id_column);
        RETURN NEXT;
    END LOOP;
END
$fn$;

-- Locks a catalog for a build. A second build of the same catalog fails at once instead of
-- queueing (pg_cron overlaps) and never sees or writes a half-built model.
CREATE FUNCTION audience._lock_for_build(catalog text) RETURNS integer
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    cid integer := audience._catalog_id(catalog);
BEGIN
    BEGIN
        PERFORM 1 FROM audience.catalogs c WHERE c.catalog_id = cid FOR NO KEY UPDATE NOWAIT;
    EXCEPTION WHEN lock_not_available THEN
        RAISE EXCEPTION 'catalog "%" is being built by another session', (SELECT c.name FROM audience.catalogs c WHERE c.catalog_id = cid)
            USING ERRCODE = 'lock_not_available',
                  DETAIL = 'Only one build of a catalog runs at a time; the running build will replace the model when it commits.',
                  HINT = 'Retry when the other build has finished.';
    END;
    RETURN cid;
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
