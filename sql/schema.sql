-- pg_audience catalog, model and audience tables.
-- Everything is schema-qualified; the extension's schema is fixed (`audience`).

-- Refuse to install into a schema someone else prepared: its owner could have planted objects
-- (or keep CREATE on it) that run with the rights of whoever later builds. CREATE EXTENSION
-- creates the schema itself, owned by the installing role, when it does not exist yet.
DO $check$
DECLARE
    owner_name name;
    owner_super boolean;
BEGIN
    SELECT r.rolname, r.rolsuper INTO owner_name, owner_super
      FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) n.nspowner
     WHERE n.nspname OPERATOR(pg_catalog.=) 'audience';
    IF owner_name OPERATOR(pg_catalog.<>) CURRENT_USER AND NOT owner_super THEN
        RAISE EXCEPTION 'schema "audience" already exists and is owned by role "%"', owner_name
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = 'pg_audience installs only into a schema it creates, or one owned by the installing role or a superuser.',
                  HINT = 'Drop or rename that schema (after checking what it contains), or ALTER SCHEMA audience OWNER TO the installing role.';
    END IF;
END
$check$;

-- A catalog: one set of event sources and property mappings, and the model built from them.
CREATE TABLE audience.catalogs (
    catalog_id      serial PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name OPERATOR(pg_catalog.<>) ''),
    is_default      boolean NOT NULL DEFAULT false,
    description     text,
    active_model_id bigint,
    build_settings  jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    updated_at      timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE UNIQUE INDEX catalogs_single_default ON audience.catalogs (is_default) WHERE is_default;
COMMENT ON TABLE audience.catalogs IS 'Recommendation catalogs: event sources, property mappings and the active model. Edit through audience.create_catalog / drop_catalog.';

-- An event source: a table or view whose rows are interactions of one kind (or of several kinds,
-- filtered by an event-name column), with a weight and an optional recency half-life.
CREATE TABLE audience.events (
    event_id        serial PRIMARY KEY,
    catalog_id      integer NOT NULL,
    name            text NOT NULL CHECK (name OPERATOR(pg_catalog.<>) ''),
    source_schema   name NOT NULL,
    source_table    name NOT NULL,
    user_column     name NOT NULL,
    product_column  name NOT NULL,
    time_column     name NOT NULL,
    event_column    name,
    event_value     text,
    weight          double precision NOT NULL CHECK (weight OPERATOR(pg_catalog.>=) 0),
    weight_column   name,
    half_life       interval CHECK (half_life OPERATOR(pg_catalog.>) '0'::interval),
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    -- Who registered the source, and whether forget_user may delete from it: only a source whose
    -- registering role had DELETE on it (checked at registration and again at each forget_user).
    registered_by   name NOT NULL DEFAULT CURRENT_USER,
    erasable        boolean NOT NULL DEFAULT false,
    UNIQUE (catalog_id, name)
);
COMMENT ON TABLE audience.events IS 'Registered interaction event sources. Edit through audience.add_event / drop_event.';

-- A property mapping: where a model column (brand, category, genre ...) is read from, for one
-- event source (a column or a key of a json/jsonb column) or from a products table.
CREATE TABLE audience.property_mappings (
    mapping_id        serial PRIMARY KEY,
    catalog_id        integer NOT NULL,
    property          text NOT NULL CHECK (property OPERATOR(pg_catalog.<>) ''),
    event_id          integer,
    products_schema   name,
    products_table    name,
    products_id_column name,
    column_name       name,
    json_key          text,
    delimiter         text,
    created_at        timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CHECK ((event_id IS NULL) OPERATOR(pg_catalog.<>) (products_table IS NULL))
);
CREATE UNIQUE INDEX property_mappings_per_event ON audience.property_mappings (catalog_id, property, event_id) WHERE event_id IS NOT NULL;
CREATE UNIQUE INDEX property_mappings_per_products ON audience.property_mappings (catalog_id, property) WHERE event_id IS NULL;
COMMENT ON TABLE audience.property_mappings IS 'Where each model property is read from. Edit through audience.map_property / unmap_property.';

-- Trained models. A model is never updated in place: a build inserts a new one and moves
-- catalogs.active_model_id in the same transaction, so readers never see half a model.
CREATE TABLE audience.models (
    model_id        bigserial PRIMARY KEY,
    catalog_id      integer NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    train_until     timestamptz,
    reference_time  timestamptz,
    rows_read       bigint NOT NULL,
    users           bigint NOT NULL,
    items           bigint NOT NULL,
    pairs           bigint NOT NULL,
    params          jsonb NOT NULL,
    stats           jsonb NOT NULL,
    guard           jsonb
);
COMMENT ON TABLE audience.models IS 'Trained models with their parameters and build statistics (rows read, seconds per phase, memory).';
COMMENT ON COLUMN audience.models.guard IS 'The deploy guard''s comparison with the model that was active when this one was built (build(..., guard => true)), and manual activations; NULL when no guard ran.';

-- No foreign keys between the extension's tables: they are configuration tables, which
-- `pg_restore -j` loads in parallel while the extension's constraints already exist, so a child
-- table could arrive before its parent. Deletes cascade through the triggers at the end of this
-- file instead.

-- The model's arrays (id maps, affinity matrix, factors, neighbours, item properties) in the
-- extension's binary format, cut into chunks below the 1 GB field limit.
CREATE TABLE audience.model_data (
    model_id bigint NOT NULL,
    part     text NOT NULL,
    chunk    integer NOT NULL,
    data     bytea NOT NULL,
    PRIMARY KEY (model_id, part, chunk)
);
-- Factors and ids do not compress; skip pglz.
ALTER TABLE audience.model_data ALTER COLUMN data SET STORAGE EXTERNAL;
COMMENT ON TABLE audience.model_data IS 'Binary arrays of each model (internal format).';

-- The distinct values of each property in a model, with item and user counts: what a UI lists.
CREATE TABLE audience.property_values (
    model_id bigint NOT NULL,
    property text NOT NULL,
    value    text NOT NULL,
    items    bigint NOT NULL,
    users    bigint NOT NULL
);
-- Not a primary key: a btree key cannot hold a value over ~2.7 kB, and one such value would fail
-- every build. A build writes each (property, value) once.
CREATE INDEX property_values_by_model ON audience.property_values (model_id, property);
COMMENT ON TABLE audience.property_values IS 'Item and user counts of each property value in each model (as of its build); read through audience.catalog_values.';

-- Saved audiences, their current members and the history of who entered and left.
CREATE TABLE audience.saved_audiences (
    audience_id     serial PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (name OPERATOR(pg_catalog.<>) ''),
    catalog_id      integer NOT NULL,
    property        text,
    "values"        text[],
    max_pct         double precision NOT NULL,
    max_users       bigint,
    min_score       double precision,
    exclude_engaged boolean NOT NULL DEFAULT false,
    lookback        interval,
    model_id        bigint,
    created_at      timestamptz NOT NULL DEFAULT pg_catalog.now(),
    refreshed_at    timestamptz,
    items           text[],
    control_pct     double precision NOT NULL DEFAULT 0,
    refresh_seconds double precision,
    last_error      text,
    last_error_at   timestamptz,
    CONSTRAINT saved_audiences_target CHECK ((items IS NULL) OPERATOR(pg_catalog.=) (property IS NOT NULL AND "values" IS NOT NULL)),
    CONSTRAINT saved_audiences_control_pct CHECK (control_pct OPERATOR(pg_catalog.>=) 0 AND control_pct OPERATOR(pg_catalog.<=) 50)
);
COMMENT ON TABLE audience.saved_audiences IS 'Audience definitions materialised by audience.save_audience and refreshed by audience.refresh_audience.';

CREATE TABLE audience.audience_members (
    audience_id integer NOT NULL,
    user_id     text NOT NULL,
    score       double precision NOT NULL,
    rank        bigint NOT NULL,
    entered_at  timestamptz NOT NULL,
    is_control  boolean NOT NULL DEFAULT false
);
-- Not a primary key on (audience_id, user_id): a btree key cannot hold an id over ~2.7 kB. A
-- refresh writes each user once; lookups by user (forget_user) go through a hash index.
CREATE INDEX audience_members_by_audience ON audience.audience_members (audience_id);
CREATE INDEX audience_members_by_user ON audience.audience_members USING hash (user_id);
COMMENT ON TABLE audience.audience_members IS 'Current members of each saved audience.';

CREATE TABLE audience.audience_changes (
    audience_id  integer NOT NULL,
    refreshed_at timestamptz NOT NULL,
    user_id      text NOT NULL,
    change       text NOT NULL CHECK (change OPERATOR(pg_catalog.=) ANY (ARRAY['entered', 'left'])),
    score        double precision,
    is_control   boolean
);
CREATE INDEX audience_changes_by_time ON audience.audience_changes (audience_id, refreshed_at);
CREATE INDEX audience_changes_by_user ON audience.audience_changes USING hash (user_id);
COMMENT ON TABLE audience.audience_changes IS 'Who entered and who left each saved audience at each refresh: ship only these rows downstream.';

-- Keep user rows in pg_dump output.
SELECT pg_catalog.pg_extension_config_dump('audience.catalogs', '');
SELECT pg_catalog.pg_extension_config_dump('audience.catalogs_catalog_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audience.events', '');
SELECT pg_catalog.pg_extension_config_dump('audience.events_event_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audience.property_mappings', '');
SELECT pg_catalog.pg_extension_config_dump('audience.property_mappings_mapping_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audience.models', '');
SELECT pg_catalog.pg_extension_config_dump('audience.models_model_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audience.model_data', '');
SELECT pg_catalog.pg_extension_config_dump('audience.property_values', '');
SELECT pg_catalog.pg_extension_config_dump('audience.saved_audiences', '');
SELECT pg_catalog.pg_extension_config_dump('audience.saved_audiences_audience_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audience.audience_members', '');
SELECT pg_catalog.pg_extension_config_dump('audience.audience_changes', '');

-- Views for people and BI tools.
CREATE VIEW audience.catalog_overview AS
SELECT c.name AS catalog, c.is_default, c.description,
       (SELECT pg_catalog.count(*) FROM audience.events e WHERE e.catalog_id OPERATOR(pg_catalog.=) c.catalog_id) AS events,
       (SELECT pg_catalog.count(DISTINCT m.property) FROM audience.property_mappings m WHERE m.catalog_id OPERATOR(pg_catalog.=) c.catalog_id) AS properties,
       c.active_model_id AS model_id, mo.created_at AS built_at, mo.users, mo.items, mo.rows_read,
       c.created_at, c.updated_at
  FROM audience.catalogs c
  LEFT JOIN audience.models mo ON mo.model_id OPERATOR(pg_catalog.=) c.active_model_id;
COMMENT ON VIEW audience.catalog_overview IS 'One row per catalog with its counts and active model.';

CREATE VIEW audience.catalog_events AS
SELECT c.name AS catalog, e.name AS event,
       pg_catalog.format('%I.%I', e.source_schema, e.source_table) AS source,
       e.event_column, e.event_value, e.user_column, e.product_column, e.time_column,
       e.weight, e.weight_column, e.half_life, e.created_at, e.registered_by, e.erasable
  FROM audience.events e JOIN audience.catalogs c USING (catalog_id);
COMMENT ON VIEW audience.catalog_events IS 'Registered event sources of every catalog.';

CREATE VIEW audience.catalog_properties AS
SELECT c.name AS catalog, m.property,
       CASE WHEN m.event_id IS NULL THEN 'products' ELSE 'event' END AS origin,
       e.name AS event,
       CASE WHEN m.event_id IS NULL THEN pg_catalog.format('%I.%I', m.products_schema, m.products_table)
            ELSE pg_catalog.format('%I.%I', e.source_schema, e.source_table) END AS source,
       m.products_id_column, m.column_name, m.json_key, m.delimiter, m.created_at
  FROM audience.property_mappings m
  JOIN audience.catalogs c USING (catalog_id)
  LEFT JOIN audience.events e USING (event_id);
COMMENT ON VIEW audience.catalog_properties IS 'Where each property of every catalog is read from.';

CREATE VIEW audience.catalog_values AS
SELECT c.name AS catalog, v.property, v.value, v.items, v.users, v.model_id
  FROM audience.catalogs c
  JOIN audience.property_values v ON v.model_id OPERATOR(pg_catalog.=) c.active_model_id;
COMMENT ON VIEW audience.catalog_values IS 'Distinct values of each property in the active model, with item and user counts (as of the last build).';

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

-- Backtest results of audience.evaluate, one row per method, value, variant and cut.
CREATE TABLE audience.evaluations (
    evaluation_id bigserial PRIMARY KEY,
    catalog_id    integer NOT NULL,
    property      text NOT NULL,
    cutoff        timestamptz NOT NULL,
    params        jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE TABLE audience.evaluation_results (
    evaluation_id bigint NOT NULL,
    method        text NOT NULL,
    value         text NOT NULL,
    cross_sell    boolean NOT NULL,
    cut_pct       double precision NOT NULL,
    audience_size bigint NOT NULL,
    positives     bigint NOT NULL,
    hits          bigint NOT NULL,
    hit_rate      double precision,
    recall        double precision,
    lift          double precision,
    auc           double precision
);
CREATE INDEX evaluation_results_by_run ON audience.evaluation_results (evaluation_id);
COMMENT ON TABLE audience.evaluations IS 'One row per audience.evaluate run: catalog, property, cutoff and the parameters used (tuned knobs, seconds, peak memory).';
COMMENT ON TABLE audience.evaluation_results IS 'Backtest metrics written by audience.evaluate: chart hit_rate and recall by method and cut.';
SELECT pg_catalog.pg_extension_config_dump('audience.evaluations', '');
SELECT pg_catalog.pg_extension_config_dump('audience.evaluations_evaluation_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('audience.evaluation_results', '');

-- Cascading deletes between the extension's tables (in place of ON DELETE CASCADE foreign keys,
-- see the top of this file). SECURITY DEFINER on purpose: like a foreign key's cascade, it runs
-- as the tables' owner, so a role allowed to delete a catalog, model or saved audience does not
-- also need DELETE on the rows that belong to it. It only deletes rows keyed by OLD's id.
CREATE FUNCTION audience._cascade_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF TG_TABLE_NAME = 'catalogs' THEN
        DELETE FROM audience.events t WHERE t.catalog_id OPERATOR(pg_catalog.=) OLD.catalog_id;
        DELETE FROM audience.property_mappings t WHERE t.catalog_id OPERATOR(pg_catalog.=) OLD.catalog_id;
        DELETE FROM audience.models t WHERE t.catalog_id OPERATOR(pg_catalog.=) OLD.catalog_id;
        DELETE FROM audience.saved_audiences t WHERE t.catalog_id OPERATOR(pg_catalog.=) OLD.catalog_id;
        DELETE FROM audience.evaluations t WHERE t.catalog_id OPERATOR(pg_catalog.=) OLD.catalog_id;
    ELSIF TG_TABLE_NAME = 'events' THEN
        DELETE FROM audience.property_mappings t WHERE t.event_id OPERATOR(pg_catalog.=) OLD.event_id;
    ELSIF TG_TABLE_NAME = 'models' THEN
        DELETE FROM audience.model_data t WHERE t.model_id OPERATOR(pg_catalog.=) OLD.model_id;
        DELETE FROM audience.property_values t WHERE t.model_id OPERATOR(pg_catalog.=) OLD.model_id;
    ELSIF TG_TABLE_NAME = 'saved_audiences' THEN
        DELETE FROM audience.audience_members t WHERE t.audience_id OPERATOR(pg_catalog.=) OLD.audience_id;
        DELETE FROM audience.audience_changes t WHERE t.audience_id OPERATOR(pg_catalog.=) OLD.audience_id;
    ELSIF TG_TABLE_NAME = 'evaluations' THEN
        DELETE FROM audience.evaluation_results t WHERE t.evaluation_id OPERATOR(pg_catalog.=) OLD.evaluation_id;
    END IF;
    RETURN NULL;
END
$fn$;
REVOKE ALL ON FUNCTION audience._cascade_delete() FROM PUBLIC;
CREATE TRIGGER cascade_delete AFTER DELETE ON audience.catalogs FOR EACH ROW EXECUTE FUNCTION audience._cascade_delete();
CREATE TRIGGER cascade_delete AFTER DELETE ON audience.events FOR EACH ROW EXECUTE FUNCTION audience._cascade_delete();
CREATE TRIGGER cascade_delete AFTER DELETE ON audience.models FOR EACH ROW EXECUTE FUNCTION audience._cascade_delete();
CREATE TRIGGER cascade_delete AFTER DELETE ON audience.saved_audiences FOR EACH ROW EXECUTE FUNCTION audience._cascade_delete();
CREATE TRIGGER cascade_delete AFTER DELETE ON audience.evaluations FOR EACH ROW EXECUTE FUNCTION audience._cascade_delete();
