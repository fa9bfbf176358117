-- Bad inputs across the public functions (issue 14's matrix, added to errors_catalog and
-- errors_engine): each is an ERROR with a SQLSTATE, and after all of them the catalog tables
-- are exactly as before.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_audience;
SET audience.threads = 1;
\set VERBOSITY default
\set SHOW_CONTEXT never
CREATE SCHEMA mx;
CREATE TABLE mx.ev (user_id text, product_id text, "timestamp" timestamptz, brand text);
INSERT INTO mx.ev SELECT 'u' || (g % 25), 'p' || (g % 8), '2024-01-01'::timestamptz + g * interval '6 hours', 'b' || (g % 8 % 3)
  FROM generate_series(1, 300) g;
SELECT audience.create_catalog('mx') IS NOT NULL AS ok;
SELECT audience.add_event('mx', 'mx.ev', 'product_id') IS NOT NULL AS ok;
SELECT audience.map_property('mx', 'brand', column_name => 'brand');
SELECT users FROM audience.build('mx', factors => 2, neighbours => 3, tune => false);
SELECT members > 0 AS saved FROM audience.save_audience('mx_b1', 'brand', 'b1', 50, catalog => 'mx');

CREATE TEMP TABLE snap AS
SELECT (SELECT md5(string_agg(c::text, ',' ORDER BY catalog_id)) FROM audience.catalogs c) AS catalogs,
       (SELECT md5(string_agg(e::text, ',' ORDER BY event_id)) FROM audience.events e) AS events,
       (SELECT md5(string_agg(m::text, ',' ORDER BY mapping_id)) FROM audience.property_mappings m) AS mappings,
       (SELECT md5(string_agg(m.model_id::text, ',' ORDER BY m.model_id)) FROM audience.models m) AS models,
       (SELECT md5(string_agg(s::text, ',' ORDER BY audience_id)) FROM audience.saved_audiences s) AS audiences,
       (SELECT md5(string_agg(m.user_id || m.rank, ',' ORDER BY m.user_id)) FROM audience.audience_members m) AS members;

-- recommend_audience
SELECT count(*) FROM audience.recommend_audience('brand', ARRAY[]::text[], 10, catalog => 'mx');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audience.recommend_audience('brand', ARRAY['b1', NULL], 10, catalog => 'mx');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audience.recommend_audience('brand', 'b1', 'NaN', catalog => 'mx');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audience.recommend_audience('brand', 'b1', 10, catalog => 'mx', max_users => -1);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audience.recommend_audience('brand', 'b1', 10, catalog => 'mx', min_score => 'NaN');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audience.recommend_audience(NULL, 'b1', 10, catalog => 'mx');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audience.recommend_audience('brand', 'b1', 10, catalog => 'no such catalog');
\echo :LAST_ERROR_SQLSTATE
-- explain
SELECT count(*) FROM audience.explain('mx', 'u1', 'brand', 'b1', -1);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audience.explain('mx', NULL, 'brand', 'b1');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audience.explain('mx', 'u1', 'no_such_property', 'b1');
\echo :LAST_ERROR_SQLSTATE
-- save_audience / refresh_audience / drop_audience
SELECT * FROM audience.save_audience('mx_bad', 'brand', 'b1', 0, catalog => 'mx');
\echo :LAST_ERROR_SQLSTATE
-- (Documented result, not an error: a value not in the model yet gives an empty audience and a
-- NOTICE; it fills at the first refresh after a build that sees the value.)
SET client_min_messages = notice;
SELECT * FROM audience.save_audience('mx_bad', 'brand', 'no such value', 10, catalog => 'mx');
SET client_min_messages = warning;
SELECT audience.drop_audience('mx_bad');
SELECT * FROM audience.save_audience('', 'brand', 'b1', 10, catalog => 'mx');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.save_audience('mx_bad', 'brand', 'b1', 10, catalog => 'mx', lookback => '-1 day', exclude_engaged => true);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.save_audience('mx_b1', 'brand', 'b2', 10, catalog => 'mx');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.refresh_audience(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.refresh_audience('no such audience');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.drop_audience(repeat('x', 300));
\echo :LAST_ERROR_SQLSTATE
-- catalog editing
SELECT audience.drop_event('mx', 'no such event');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.unmap_property('mx', 'no_such_property');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.set_default_catalog(NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT audience.add_event('mx', 'mx.ev', 'product_id', name => 'again', erasable => true, weight => 'Infinity');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.map_property('mx', 'brand', column_name => 'brand');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.map_property('mx', 'tags', json_key => 'tags', column_name => 'brand');
\echo :LAST_ERROR_SQLSTATE
-- build
SELECT * FROM audience.build('mx', factors => -1);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.build('mx', regularization => 'NaN');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.build('mx', own => 'loudness');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.build('mx', own_half_life => '-3 days');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.build('mx', until => '-infinity');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.build('mx', iterations => 0, factors => 4);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.build('mx', neighbours => 100000000);
\echo :LAST_ERROR_SQLSTATE
-- evaluate / tune
SELECT count(*) FROM audience.evaluate('mx', 'brand', holdout => '-1 day');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audience.evaluate('mx', 'brand', "values" => ARRAY[]::text[]);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audience.evaluate('mx', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audience.evaluate('mx', 'brand', "values" => ARRAY['b1', NULL]);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.tune('mx', 'no_such_property');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.tune('mx', 'brand', holdout => '0');
\echo :LAST_ERROR_SQLSTATE
-- generate_demo_shop / the aggregate
SELECT * FROM audience.generate_demo_shop('mx_demo', users => -5);
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.generate_demo_shop('mx_demo', kind => 'bakery');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.generate_demo_shop(NULL);
\echo :LAST_ERROR_SQLSTATE
-- (Documented results: a negative weight is a dislike, and pairs summing to <= 0 are left out;
-- a NaN weight skips the row.)
SELECT audience.affinity(user_id, product_id, -1, "timestamp", NULL, NULL) FROM mx.ev;
SELECT audience.affinity(user_id, product_id, 1, "timestamp", '-1 day', NULL) FROM mx.ev;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.affinity(user_id, product_id, 'NaN', "timestamp", NULL, NULL) FROM mx.ev;
SELECT audience.affinity(user_id, product_id, 1, "timestamp", NULL, NULL) FROM mx.ev WHERE false;

-- Nothing stored changed.
SELECT s.catalogs = (SELECT md5(string_agg(c::text, ',' ORDER BY catalog_id)) FROM audience.catalogs c) AS catalogs,
       s.events = (SELECT md5(string_agg(e::text, ',' ORDER BY event_id)) FROM audience.events e) AS events,
       s.mappings = (SELECT md5(string_agg(m::text, ',' ORDER BY mapping_id)) FROM audience.property_mappings m) AS mappings,
       s.models = (SELECT md5(string_agg(m.model_id::text, ',' ORDER BY m.model_id)) FROM audience.models m) AS models,
       s.audiences = (SELECT md5(string_agg(a::text, ',' ORDER BY audience_id)) FROM audience.saved_audiences a) AS audiences,
       s.members = (SELECT md5(string_agg(m.user_id || m.rank, ',' ORDER BY m.user_id)) FROM audience.audience_members m) AS members
  FROM snap s;
SELECT count(*) AS no_demo_schema FROM pg_namespace WHERE nspname = 'mx_demo';

SELECT audience.drop_audience('mx_b1');
SELECT audience.drop_catalog('mx');
DROP SCHEMA mx CASCADE;
