-- Catalog registration: the happy path of every catalog function, and the views that list
-- catalogs, events, property mappings and property values.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_audience;
CREATE SCHEMA shop;
-- A Segment-style tracks table (one table, an event column, JSON properties) ...
CREATE TABLE shop.tracks (id bigserial, user_id bigint, event text, product_id text, properties jsonb, "timestamp" timestamptz);
-- ... a table per event type with its own column names ...
CREATE TABLE shop.wishlist ("Customer Id" uuid, sku text, saved_at timestamp, qty int);
-- ... and a products table with an array column and a delimited string.
CREATE TABLE shop.products (product_id text PRIMARY KEY, brand text, tags text[], genres text);

-- Catalogs: the first one becomes the default.
SELECT audience.create_catalog('main', description => 'Online shop') IS NOT NULL AS ok;
SELECT audience.create_catalog('Mixed Case "quoted" catalog') IS NOT NULL AS ok;
SELECT name, is_default, description FROM audience.catalogs ORDER BY catalog_id;
SELECT audience.set_default_catalog('Mixed Case "quoted" catalog');
SELECT name, is_default FROM audience.catalogs ORDER BY catalog_id;
SELECT audience.set_default_catalog('main');

-- Events: one registration per event type of the tracks table, weights and half-lives.
SELECT audience.add_event('main', 'shop.tracks', 'product_id', event_column => 'event', event_value => 'order_completed', weight => 5, half_life => '60 days') IS NOT NULL AS ok;
SELECT audience.add_event('main', 'shop.tracks', 'product_id', event_column => 'event', event_value => 'product_added', weight => 3, half_life => '30 days') IS NOT NULL AS ok;
SELECT audience.add_event('main', 'shop.tracks', 'product_id', event_column => 'event', event_value => 'product_viewed', weight => 1, half_life => '7 days') IS NOT NULL AS ok;
-- A table with other column names (a quoted uuid user column, a timestamp without time zone)
-- and a per-row weight column.
SELECT audience.add_event('main', 'shop.wishlist', 'sku', user_id => 'Customer Id', event_time => 'saved_at', weight => 2, weight_column => 'qty') IS NOT NULL AS ok;
-- The same source twice needs a distinct name.
SELECT audience.add_event('main', 'shop.tracks', 'product_id', name => 'any_track', weight => 0.5) IS NOT NULL AS ok;
-- At least 20 event types per catalog work (there is no limit of 10).
SELECT count(audience.add_event('Mixed Case "quoted" catalog', 'shop.tracks', 'product_id', event_column => 'event', event_value => 'event_' || g))
  FROM generate_series(1, 25) g;
SELECT catalog, event, source, event_column, event_value, user_column, product_column, time_column, weight, weight_column, half_life
  FROM audience.catalog_events WHERE catalog = 'main' ORDER BY event;

-- Properties: a JSON key on each tracks event, a products column, an array column, a
-- delimited string.
SELECT audience.map_property('main', 'category', json_key => 'category', event => e)
  FROM unnest(ARRAY['order_completed', 'product_added', 'product_viewed']) e;
SELECT audience.map_property('main', 'brand', column_name => 'brand', products => 'shop.products');
SELECT audience.map_property('main', 'tag', column_name => 'tags', products => 'shop.products');
SELECT audience.map_property('main', 'genre', column_name => 'genres', products => 'shop.products', delimiter => '|');
-- Without event => the property is mapped for every event of the catalog that has the column.
SELECT audience.map_property('Mixed Case "quoted" catalog', 'brand', json_key => 'brand');
SELECT catalog, property, origin, event, source, products_id_column, column_name, json_key, delimiter
  FROM audience.catalog_properties WHERE catalog = 'main' ORDER BY property, event;

-- Unmapping and dropping events.
SELECT audience.unmap_property('main', 'category', event => 'product_viewed');
SELECT audience.drop_event('main', 'any_track');
SELECT catalog, events, properties, model_id FROM audience.catalog_overview ORDER BY catalog;

-- Dropping a catalog removes its events and mappings; the other catalog stays.
SELECT audience.drop_catalog('Mixed Case "quoted" catalog');
SELECT audience.drop_catalog('no such catalog', if_exists => true);
SELECT count(*) AS events_left FROM audience.events;

-- Catalog tables are part of pg_dump output (extension configuration tables).
SELECT c.relname FROM pg_extension x, unnest(x.extconfig) AS cfg(relid) JOIN pg_class c ON c.oid = cfg.relid
 WHERE x.extname = 'pg_audience' AND c.relkind = 'r' ORDER BY 1;

SELECT audience.drop_catalog('main');
DROP SCHEMA shop CASCADE;

-- Every user-facing function, table and view is described (\df+, \dt+ and \dv+ show it).
SELECT p.oid::regprocedure AS undescribed_function FROM pg_proc p
 WHERE p.pronamespace = 'audience'::regnamespace AND p.proname !~ '^_' AND obj_description(p.oid, 'pg_proc') IS NULL
   AND p.prokind = 'f' ORDER BY 1;
SELECT c.oid::regclass AS undescribed_relation FROM pg_class c
 WHERE c.relnamespace = 'audience'::regnamespace AND c.relkind IN ('r', 'v') AND obj_description(c.oid, 'pg_class') IS NULL
 ORDER BY 1;
