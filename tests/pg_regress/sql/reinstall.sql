-- A session that outlives its extension: after DROP EXTENSION and CREATE EXTENSION the model ids
-- start again, so the session's cached model and remembered rankings must not be taken for the
-- new install's model of the same id.
SET client_min_messages = warning;
DROP EXTENSION IF EXISTS pg_audience CASCADE;
CREATE EXTENSION pg_audience;
SET audience.threads = 1;
CREATE SCHEMA r;
CREATE TABLE r.buys (user_id text, sku text, brand text, ts timestamptz);
-- Catalog 'again' over purchases of brand A whose best customer is `best`; returns the model id.
CREATE FUNCTION r.shop(best text) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
    TRUNCATE r.buys;
    INSERT INTO r.buys
    SELECT CASE WHEN g % 3 = 0 THEN best ELSE 'u' || (g % 7) END, 'A-' || (g % 4), 'A',
           '2024-01-01'::timestamptz + g * interval '5 hours'
      FROM generate_series(1, 120) g;
    PERFORM audience.create_catalog('again');
    PERFORM audience.add_event('again', 'r.buys', 'sku', event_time => 'ts');
    PERFORM audience.map_property('again', 'brand', column_name => 'brand');
    RETURN (SELECT model_id FROM audience.build('again', factors => 2, neighbours => 2, tune => false));
END $$;
SELECT r.shop('ann') AS model_id;
SELECT user_id AS first_install_top FROM audience.recommend_audience('brand', 'A', 100, 'again') ORDER BY rank LIMIT 1;
DROP EXTENSION pg_audience CASCADE;
CREATE EXTENSION pg_audience;
-- The same catalog name over other purchases: now 'bob' buys most; model id 1 again.
SELECT r.shop('bob') AS model_id;
SELECT user_id AS second_install_top FROM audience.recommend_audience('brand', 'A', 100, 'again') ORDER BY rank LIMIT 1;
SELECT count(*) FILTER (WHERE user_id = 'ann') AS ann_left FROM audience.recommend_audience('brand', 'A', 100, 'again');
SELECT audience.drop_catalog('again');
DROP SCHEMA r CASCADE;
