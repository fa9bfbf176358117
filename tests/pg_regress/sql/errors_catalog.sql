-- Bad input to the catalog functions: every case is an ERROR with a SQLSTATE, a detail or hint
-- where useful, and leaves the stored catalog unchanged.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_audience;
\set VERBOSITY default
\set SHOW_CONTEXT never
CREATE SCHEMA e;
CREATE TABLE e.events (user_id int, product_id text, "timestamp" timestamptz, payload jsonb, brand text, ok bool, tags text[]);
CREATE TABLE e.secret (user_id int, product_id text, "timestamp" timestamptz);
CREATE TABLE e.products (product_id text, brand text);
CREATE SEQUENCE e.seq;
SELECT audience.create_catalog('c') IS NOT NULL AS ok;
SELECT audience.add_event('c', 'e.events', 'product_id') IS NOT NULL AS ok;

-- Calls without a catalog name when there is none / no default:
SELECT audience.drop_catalog('c');
SELECT audience.add_event(NULL, 'e.events', 'product_id') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.create_catalog('c') IS NOT NULL AS ok;
SELECT audience.create_catalog('d', is_default => false) IS NOT NULL AS ok;
SELECT audience.set_default_catalog('d');
UPDATE audience.catalogs SET is_default = false;
SELECT audience.add_event(NULL, 'e.events', 'product_id') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.drop_catalog('d');

-- create_catalog
SELECT audience.create_catalog(NULL) IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.create_catalog('') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.create_catalog('   ') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.create_catalog(repeat('x', 300)) IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.create_catalog('c') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE

-- unknown catalog
SELECT audience.add_event('nope', 'e.events', 'product_id') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.drop_catalog('nope');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.set_default_catalog('nope');
\echo :LAST_ERROR_SQLSTATE

-- add_event: sources
SELECT audience.add_event('c', NULL, 'product_id', name => 'x') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.add_event('c', 'e.missing', 'product_id') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.add_event('c', 'e.seq', 'product_id') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
-- columns
SELECT audience.add_event('c', 'e.events', 'no_such_column', name => 'x') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.add_event('c', 'e.events', NULL, name => 'x') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.add_event('c', 'e.events', 'payload', name => 'x') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.add_event('c', 'e.events', 'product_id', user_id => 'ok', name => 'x') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.add_event('c', 'e.events', 'product_id', event_time => 'brand', name => 'x') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.add_event('c', 'e.events', 'product_id', event_time => 'Timestamp', name => 'x') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
-- event filter, weight, half-life
SELECT audience.add_event('c', 'e.events', 'product_id', event_column => 'brand', name => 'x') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.add_event('c', 'e.events', 'product_id', weight => -1, name => 'x') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.add_event('c', 'e.events', 'product_id', weight => 'NaN', name => 'x') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.add_event('c', 'e.events', 'product_id', weight => NULL, name => 'x') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.add_event('c', 'e.events', 'product_id', half_life => '-1 day', name => 'x') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.add_event('c', 'e.events', 'product_id', weight_column => 'brand', name => 'x') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
-- duplicate registration
SELECT audience.add_event('c', 'e.events', 'product_id') IS NOT NULL AS ok;
SELECT audience.add_event('c', 'e.events', 'product_id') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
-- names are identifiers, never SQL: an injection attempt is just a missing column
SELECT audience.add_event('c', 'e.events', 'product_id"; DROP TABLE e.events; --', name => 'x') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS events_table_still_there FROM e.events;

-- privileges: a role without SELECT on a source cannot register it
CREATE ROLE audience_regress_nobody;
GRANT USAGE ON SCHEMA e TO audience_regress_nobody;
GRANT USAGE ON SCHEMA audience TO audience_regress_nobody;
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA audience TO audience_regress_nobody;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA audience TO audience_regress_nobody;
SET ROLE audience_regress_nobody;
SELECT audience.add_event('c', 'e.secret', 'product_id') IS NOT NULL AS ok;
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;

-- map_property
SELECT audience.map_property('c', NULL, column_name => 'brand');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.map_property('c', 'brand');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.map_property('c', 'brand', column_name => 'brand', json_key => 'brand');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.map_property('c', 'brand', column_name => 'nope');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.map_property('c', 'brand', column_name => 'payload');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.map_property('c', 'brand', json_key => 'brand', json_column => 'brand');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.map_property('c', 'brand', column_name => 'brand', event => 'nope');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.map_property('c', 'brand', column_name => 'brand', delimiter => '');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.map_property('c', 'brand', column_name => 'brand', products => 'e.products', event => 'events');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.map_property('c', 'brand', column_name => 'brand', products => 'e.products', products_id => 'sku');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.map_property('c', 'brand', column_name => 'brand');
SELECT audience.map_property('c', 'brand', column_name => 'brand');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.unmap_property('c', 'nope');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.drop_event('c', 'nope');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.create_catalog('empty', is_default => false) IS NOT NULL AS ok;
SELECT audience.map_property('empty', 'brand', column_name => 'brand');
\echo :LAST_ERROR_SQLSTATE

-- Nothing above changed the stored catalog:
SELECT catalog, event, source FROM audience.catalog_events ORDER BY 1, 2;
SELECT catalog, property, event FROM audience.catalog_properties ORDER BY 1, 2;

SELECT audience.drop_catalog('c');
SELECT audience.drop_catalog('empty');
DROP SCHEMA e CASCADE;
DROP OWNED BY audience_regress_nobody;
DROP ROLE audience_regress_nobody;
