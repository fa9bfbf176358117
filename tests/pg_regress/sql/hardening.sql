-- Defects found by a committer-level review, each with the case that failed before its fix:
-- generated SQL that a role with CREATE on schema audience could hijack, intervals that wrapped
-- around, stored formats read with the wrong layout. Every bad input is an ERROR with a SQLSTATE
-- and leaves the catalog tables as they were.
SET client_min_messages = warning;
CREATE EXTENSION IF NOT EXISTS pg_audience;
SET audience.threads = 1;
\set VERBOSITY default
\set SHOW_CONTEXT never
CREATE SCHEMA h;
CREATE TABLE h.ev (user_id text, product_id text, "timestamp" timestamptz, event text, brand text);
INSERT INTO h.ev SELECT 'u' || (g % 40), 'p' || (g % 7), '2024-01-01'::timestamptz + g * interval '7 hours',
                        CASE WHEN g % 3 = 0 THEN 'order' ELSE 'view' END, 'b' || (g % 7 % 3)
  FROM generate_series(1, 400) g;
SELECT audience.create_catalog('h') IS NOT NULL AS ok;
SELECT audience.add_event('h', 'h.ev', 'product_id', event_column => 'event', event_value => 'order', weight => 3) IS NOT NULL AS ok;
SELECT audience.add_event('h', 'h.ev', 'product_id', event_column => 'event', event_value => 'view', weight => 1) IS NOT NULL AS ok;
SELECT audience.map_property('h', 'brand', column_name => 'brand');

-- 1. search_path: a role with CREATE on schema audience defines audience.= and audience.|| for
-- text. The build's own SQL and the scan it generates must not call them (pg_catalog comes first
-- on the path and operators are qualified), or they would run with the builder's rights.
CREATE FUNCTION audience.hijack(text, text) RETURNS boolean LANGUAGE plpgsql AS
  $$ BEGIN RAISE EXCEPTION 'hijacked by audience.='; END $$;
CREATE FUNCTION audience.hijack_cat(text, text) RETURNS text LANGUAGE plpgsql AS
  $$ BEGIN RAISE EXCEPTION 'hijacked by audience.||'; END $$;
CREATE OPERATOR audience.= (LEFTARG = text, RIGHTARG = text, FUNCTION = audience.hijack);
CREATE OPERATOR audience.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = audience.hijack_cat);
SELECT users, items FROM audience.build('h', factors => 2, neighbours => 3, tune => false);
SELECT count(*) > 0 AS audience FROM audience.recommend_audience('brand', 'b1', 50, catalog => 'h');
SELECT count(*) > 0 AS evaluated FROM audience.evaluate('h', 'brand', tune => false);
DROP OPERATOR audience.= (text, text);
DROP OPERATOR audience.|| (text, text);
DROP FUNCTION audience.hijack(text, text);
DROP FUNCTION audience.hijack_cat(text, text);

-- The catalog tables, to compare after the failing calls below.
CREATE TEMP TABLE before AS
SELECT (SELECT md5(string_agg(c::text, ',' ORDER BY catalog_id)) FROM audience.catalogs c) AS catalogs,
       (SELECT md5(string_agg(e::text, ',' ORDER BY event_id)) FROM audience.events e) AS events,
       (SELECT md5(string_agg(m.model_id::text, ',' ORDER BY m.model_id)) FROM audience.models m) AS models;

-- 2. Intervals: a negative look-back used to exclude nobody, a huge one wrapped around.
SELECT count(*) FROM audience.recommend_audience('brand', 'b1', 50, catalog => 'h', exclude_engaged => true, lookback => '-1 day');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audience.recommend_audience('brand', 'b1', 50, catalog => 'h', exclude_engaged => true, lookback => '0');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audience.recommend_audience('brand', 'b1', 50, catalog => 'h', exclude_engaged => true, lookback => '100000000 years');
\echo :LAST_ERROR_SQLSTATE
-- A look-back longer than the history excludes everyone who ever engaged: the same as none.
SELECT (SELECT count(*) FROM audience.recommend_audience('brand', 'b1', 50, catalog => 'h', exclude_engaged => true, lookback => '5000 years'))
     = (SELECT count(*) FROM audience.recommend_audience('brand', 'b1', 50, catalog => 'h', exclude_engaged => true)) AS same_as_ever;
-- A half-life too long to decay anything is refused when it is registered, not at the next build.
SELECT audience.add_event('h', 'h.ev', 'product_id', event_column => 'event', event_value => 'x', half_life => '300000 years');
\echo :LAST_ERROR_SQLSTATE
SELECT audience.add_event('h', 'h.ev', 'product_id', event_column => 'event', event_value => 'x', half_life => '-2 days');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audience.evaluate('h', 'brand', holdout => '100000000 years');
\echo :LAST_ERROR_SQLSTATE
SELECT * FROM audience.build('h', own => 'days', own_half_life => '100000000 years');
\echo :LAST_ERROR_SQLSTATE
-- The aggregate: a half-life beyond 64-bit microseconds is an error, not a wrapped value.
SELECT audience.affinity('u', 'i', 1, '2024-01-01', '100000000 years', NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT audience.affinity('u', 'i', 1, '2024-01-01', '10000 years', NULL) AS no_decay_to_speak_of;

-- Memory is estimated before training: a build that would need more than the build may use
-- (audience.build_memory_mb, else what the system has available) fails with 54000 and a hint.
CREATE TABLE h.wide AS SELECT 'w' || g AS user_id, 'p' || (g % 5) AS product_id, now() AS "timestamp" FROM generate_series(1, 2000) g;
SELECT audience.create_catalog('wide') IS NOT NULL AS ok;
SELECT audience.add_event('wide', 'h.wide', 'product_id') IS NOT NULL AS ok;
SET audience.build_memory_mb = 1;
SELECT * FROM audience.build('wide', factors => 1024);
\echo :LAST_ERROR_SQLSTATE
RESET audience.build_memory_mb;
SELECT build_settings ? 'factors' AS factors_remembered FROM audience.catalogs WHERE name = 'wide';
SELECT audience.drop_catalog('wide');

-- Nothing stored changed.
SELECT b.catalogs = (SELECT md5(string_agg(c::text, ',' ORDER BY catalog_id)) FROM audience.catalogs c) AS catalogs_unchanged,
       b.events = (SELECT md5(string_agg(e::text, ',' ORDER BY event_id)) FROM audience.events e) AS events_unchanged,
       b.models = (SELECT md5(string_agg(m.model_id::text, ',' ORDER BY m.model_id)) FROM audience.models m) AS models_unchanged
  FROM before b;

-- 3. The model cache checks the current role on every call: a role without SELECT on
-- audience.model_data gets no audience from a model another role loaded in this session.
CREATE ROLE h_reader;
GRANT USAGE ON SCHEMA audience TO h_reader;
GRANT SELECT ON audience.catalogs TO h_reader;
SELECT count(*) > 0 AS loaded_by_superuser FROM audience.recommend_audience('brand', 'b1', 50, catalog => 'h');
SET ROLE h_reader;
SELECT count(*) FROM audience.recommend_audience('brand', 'b1', 50, catalog => 'h');
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) FROM audience.explain('h', 'u1', 'brand', 'b1');
\echo :LAST_ERROR_SQLSTATE
RESET ROLE;
GRANT SELECT ON audience.model_data TO h_reader;
SET ROLE h_reader;
SELECT count(*) > 0 AS granted_reader_sees_it FROM audience.recommend_audience('brand', 'b1', 50, catalog => 'h');
RESET ROLE;
REVOKE ALL ON audience.model_data, audience.catalogs FROM h_reader;
REVOKE USAGE ON SCHEMA audience FROM h_reader;
DROP ROLE h_reader;

-- 4. Epoch-second times that are not times (NaN, infinity, 1e300) are skipped like NULL times,
-- as the README says, instead of failing every build (22008).
CREATE TABLE h.epoch (user_id int, product_id int, at float8, brand text);
INSERT INTO h.epoch VALUES (1, 1, 1704103200, 'b'), (2, 1, 'NaN', 'b'), (3, 1, 'Infinity', 'b'),
                           (4, 1, 1e300, 'b'), (5, 2, -1e300, 'b'), (6, 2, 1704189600, 'b');
SELECT audience.create_catalog('epoch') IS NOT NULL AS ok;
SELECT audience.add_event('epoch', 'h.epoch', 'product_id', event_time => 'at') IS NOT NULL AS ok;
SELECT rows_read, users, items FROM audience.build('epoch', factors => 0, neighbours => 0);
SELECT audience.drop_catalog('epoch');

-- 5. save_audience(..., replace => NULL) is replace => false: it does not overwrite.
SELECT members > 0 AS saved FROM audience.save_audience('h_top', 'brand', 'b1', 50, catalog => 'h');
SELECT * FROM audience.save_audience('h_top', 'brand', 'b2', 50, catalog => 'h', replace => NULL);
\echo :LAST_ERROR_SQLSTATE
SELECT "values" FROM audience.saved_audiences WHERE name = 'h_top';
SELECT audience.drop_audience('h_top');

-- 6. generate_demo_shop replaces only a demo shop it generated: other tables named users,
-- products, tracks or wishlist_saves are left alone.
CREATE TABLE h.users (id int);
SELECT * FROM audience.generate_demo_shop('h', users => 100, products => 100, events => 500);
\echo :LAST_ERROR_SQLSTATE
SELECT count(*) AS users_table_untouched FROM h.users;
-- Its own earlier demo shop it replaces.
SELECT count(*) AS tables FROM audience.generate_demo_shop('h2', users => 100, products => 100, events => 500);
SELECT count(*) AS tables_again FROM audience.generate_demo_shop('h2', users => 100, products => 100, events => 500, kind => 'grocery');
DROP SCHEMA h2 CASCADE;

-- 7. One long value or id (over the ~2.7 kB a btree key holds) used to fail every build
-- (property_values key) and every refresh (audience_members key) with 54000.
CREATE TABLE h.long (user_id text, product_id text, "timestamp" timestamptz, brand text);
INSERT INTO h.long SELECT CASE WHEN g % 10 = 0 THEN repeat('u', 5000) ELSE 'u' || (g % 20) END, 'p' || (g % 6),
                          '2024-01-01'::timestamptz + g * interval '9 hours',
                          CASE WHEN g % 6 = 0 THEN repeat('B', 6000) ELSE 'b' || (g % 6 % 2) END
  FROM generate_series(1, 300) g;
SELECT audience.create_catalog('long') IS NOT NULL AS ok;
SELECT audience.add_event('long', 'h.long', 'product_id') IS NOT NULL AS ok;
SELECT audience.map_property('long', 'brand', column_name => 'brand');
SELECT users, items FROM audience.build('long', factors => 2, neighbours => 3, tune => false);
SELECT length(value) AS value_length, items FROM audience.catalog_values WHERE catalog = 'long' ORDER BY 1, 2;
SELECT members > 0 AS saved FROM audience.save_audience('long_b', 'brand', repeat('B', 6000), 100, catalog => 'long');
SELECT max(length(user_id)) AS longest_member_id FROM audience.audience_members m JOIN audience.saved_audiences s USING (audience_id)
 WHERE s.name = 'long_b';
SELECT members > 0 AS refreshed FROM audience.refresh_audience('long_b');

-- 8. refresh_all_audiences refreshes each audience on its own: one that fails (its property
-- is not mapped any more) is reported with its error and a WARNING; the others refresh.
SELECT members > 0 AS saved FROM audience.save_audience('long_b1', 'brand', 'b1', 50, catalog => 'long');
SELECT audience.unmap_property('long', 'brand');
SELECT audience.map_property('long', 'brand2', column_name => 'brand');
SELECT rows_read > 0 AS rebuilt FROM audience.build('long', factors => 2, neighbours => 3, tune => false);
SELECT members > 0 AS saved FROM audience.save_audience('long_ok', 'brand2', 'b1', 50, catalog => 'long');
SELECT audience, members > 0 AS has_members, error FROM audience.refresh_all_audiences();
SELECT audience.drop_audience('long_b');
SELECT audience.drop_audience('long_b1');
SELECT audience.drop_audience('long_ok');

-- 9. Under debug_parallel_query (force_parallel_mode before PostgreSQL 16) the planner may run
-- the whole scan, final function included, in a parallel worker; the build turns that off for
-- its scan (it failed with XX000 "the scan's state was lost") and puts the setting back.
SELECT set_config(CASE WHEN current_setting('server_version_num')::int >= 160000 THEN 'debug_parallel_query'
                       ELSE 'force_parallel_mode' END, 'on', false) AS forced;
SELECT rows_read, users FROM audience.build('long', factors => 2, neighbours => 3, tune => false);
SELECT current_setting(CASE WHEN current_setting('server_version_num')::int >= 160000 THEN 'debug_parallel_query'
                            ELSE 'force_parallel_mode' END) AS still_forced;
SELECT set_config(CASE WHEN current_setting('server_version_num')::int >= 160000 THEN 'debug_parallel_query'
                       ELSE 'force_parallel_mode' END, 'off', false) AS reset;

-- 10. When the scan's final step runs in another session (a single-shard Citus table, say), its
-- stash token is not found in the building session: the build scans again and takes the state as
-- bytes (with a NOTICE). Tokens carry the backend's pid, so another session's token never matches
-- a state of this one. audience.scan_state = bytes takes the bytes path always: same model.
CREATE TEMP TABLE by_stash AS
SELECT user_id, score, rank FROM audience.recommend_audience('brand2', 'b1', 100, catalog => 'long');
SET audience.scan_state = bytes;
SELECT rows_read, users FROM audience.build('long', factors => 2, neighbours => 3, tune => false);
RESET audience.scan_state;
SELECT count(*) AS users, count(*) FILTER (WHERE b.user_id IS NULL OR b.score <> a.score OR b.rank <> a.rank) AS differ
  FROM audience.recommend_audience('brand2', 'b1', 100, catalog => 'long') a LEFT JOIN by_stash b USING (user_id);
SET audience.scan_state = sideways;
\echo :LAST_ERROR_SQLSTATE
SELECT audience.drop_catalog('long');

SELECT audience.drop_catalog('h');
DROP SCHEMA h CASCADE;
