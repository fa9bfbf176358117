-- forget_user: per-source reporting, erasable sources, typed comparison (issue 14, item 4).
-- A source is erasable when the role registering it may DELETE from it; forget_user deletes
-- only from erasable sources whose registrant still has DELETE, with the caller's own rights,
-- reports every source (deleted, skipped and why, failed and why) and never fails as a whole
-- because one source is a view, was dropped or refuses the caller.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_audience;
SET client_min_messages = notice;
SET audience.threads = 1;
\set VERBOSITY default
\set SHOW_CONTEXT never
CREATE SCHEMA f;
CREATE TABLE f.orders (user_id int, product_id text, "timestamp" timestamptz, brand text);
CREATE INDEX orders_by_user ON f.orders (user_id);
INSERT INTO f.orders SELECT g % 30, 'p' || (g % 9), '2024-01-01'::timestamptz + g * interval '5 hours', 'b' || (g % 9 % 3)
  FROM generate_series(1, 600) g;
CREATE TABLE f.views (user_id int, product_id text, "timestamp" timestamptz);
INSERT INTO f.views SELECT g % 30, 'p' || (g % 9), '2024-01-01'::timestamptz + g * interval '3 hours' FROM generate_series(1, 300) g;
CREATE VIEW f.recent AS SELECT user_id, product_id, "timestamp" FROM f.orders;
CREATE TABLE f.gone (user_id int, product_id text, "timestamp" timestamptz);
CREATE ROLE f_editor;
GRANT USAGE ON SCHEMA audience, f TO f_editor;
GRANT SELECT, UPDATE ON audience.catalogs TO f_editor;
GRANT SELECT, INSERT ON audience.events TO f_editor;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA audience TO f_editor;
GRANT SELECT ON f.views TO f_editor;

SELECT audience.create_catalog('f') IS NOT NULL AS ok;
-- The superuser may delete from f.orders: erasable by default.
SELECT audience.add_event('f', 'f.orders', 'product_id', weight => 3) IS NOT NULL AS ok;
-- A view is registered, but not erasable (a NOTICE says so); asking for erasable is an error.
SELECT audience.add_event('f', 'f.recent', 'product_id', name => 'recent') IS NOT NULL AS ok;
SELECT audience.add_event('f', 'f.recent', 'product_id', name => 'recent2', erasable => true);
\echo :LAST_ERROR_SQLSTATE
SELECT audience.add_event('f', 'f.gone', 'product_id') IS NOT NULL AS ok;
-- The editor can only read f.views: registering it as erasable is refused, by default it is not erasable.
SET ROLE f_editor;
SELECT audience.add_event('f', 'f.views', 'product_id', erasable => true);
\echo :LAST_ERROR_SQLSTATE
SELECT audience.add_event('f', 'f.views', 'product_id') IS NOT NULL AS ok;
RESET ROLE;
SELECT event, source, registered_by, erasable FROM audience.catalog_events WHERE catalog = 'f' ORDER BY event;
SELECT audience.map_property('f', 'brand', column_name => 'brand', event => 'orders');
-- Builds report their phases as NOTICEs (with seconds): not shown from here on.
SET client_min_messages = warning;
SELECT users > 0 AS built FROM audience.build('f', factors => 2, neighbours => 3, tune => false);

SELECT count(*) > 0 AS user_7_in_model FROM audience.explain('f', '7', 'brand', 'b1');

-- The confused deputy, defused: the superuser's forget_user deletes from f.orders, and not from
-- f.views, which the editor registered without the right to delete from it. The view is
-- reported, not fatal; the catalog is rebuilt.
SELECT * FROM audience.forget_user('7');
SELECT (SELECT count(*) FROM f.orders WHERE user_id = 7) AS orders_left,
       (SELECT count(*) FROM f.views WHERE user_id = 7) AS views_left;
-- (User 7 is still in the model: through f.views, which is not erasable.)
SELECT count(*) > 0 AS user_7_still_in_model_via_views FROM audience.explain('f', '7', 'brand', 'b1');

-- A dropped source is reported, and the rebuild that now fails too; the old model stays active.
DROP TABLE f.gone;
SELECT * FROM audience.forget_user('6');
SET client_min_messages = error;

-- The id is compared in the column's own type (so the index on f.orders.user_id serves it):
-- '008' is user 8 of an integer column; 'abc' cannot be an integer, so no row holds it.
SELECT rows_deleted, status FROM audience.forget_user('008', rebuild => false) WHERE source = 'f.orders';
SELECT count(*) AS user_8_left FROM f.orders WHERE user_id = 8;
SELECT rows_deleted, status FROM audience.forget_user('abc', rebuild => false) WHERE source = 'f.orders';

-- A registrant who loses DELETE makes the source not erasable any more.
GRANT DELETE ON f.views TO f_editor;
SET ROLE f_editor;
SELECT audience.add_event('f', 'f.views', 'product_id', name => 'views_erasable') IS NOT NULL AS ok;
RESET ROLE;
SELECT erasable FROM audience.catalog_events WHERE catalog = 'f' AND event = 'views_erasable';
SELECT rows_deleted, status FROM audience.forget_user('9', rebuild => false) WHERE source = 'f.views' ORDER BY status;
REVOKE DELETE ON f.views FROM f_editor;
SELECT rows_deleted, status FROM audience.forget_user('11', rebuild => false) WHERE source = 'f.views' ORDER BY status;

-- The caller's own rights: an officer who may clean the extension's tables but not f.orders gets
-- that source reported as failed (42501), the rest done; a rebuild it may not run is reported too.
CREATE ROLE f_officer;
GRANT USAGE ON SCHEMA audience, f TO f_officer;
GRANT SELECT ON audience.catalogs, audience.events TO f_officer;
GRANT SELECT, DELETE ON audience.audience_members, audience.audience_changes TO f_officer;
SET ROLE f_officer;
SELECT * FROM audience.forget_user('12');
RESET ROLE;
SELECT count(*) AS user_12_orders_kept FROM f.orders WHERE user_id = 12;
-- A caller who may not delete from the extension's tables is no privacy officer: 42501, nothing deleted.
SET ROLE f_editor;
SELECT * FROM audience.forget_user('12');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
SET client_min_messages = notice;
SELECT * FROM audience.forget_user(NULL);
\echo :LAST_ERROR_SQLSTATE

SELECT audience.drop_catalog('f');
REVOKE ALL ON ALL TABLES IN SCHEMA audience FROM f_editor, f_officer;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA audience FROM f_editor;
REVOKE ALL ON SCHEMA audience, f FROM f_editor, f_officer;
REVOKE ALL ON f.views FROM f_editor;
DROP ROLE f_editor;
DROP ROLE f_officer;
DROP SCHEMA f CASCADE;
