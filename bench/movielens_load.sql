-- MovieLens 100K (RecBole atomic files) into plain tables, for bench/movielens.sh.
--
--   psql -v inter=/path/ml-100k.inter -v item=/path/ml-100k.item -f bench/movielens_load.sql
--
-- ratings(user_id, item_id, rating, "timestamp" = epoch seconds) and
-- items(item_id, movie_title, release_year, genres = the space-separated `class` column, decade).
-- release_year is text (NULL unless four digits) so property values match bench/movielens_implicit.py
-- ('1995', decade '1990s'); the files are TSV without quoting, read as CSV with an unused quote char.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;

DROP TABLE IF EXISTS ratings, items, ratings_raw, items_raw;

CREATE TEMP TABLE ratings_raw (user_id text, item_id text, rating text, ts text);
CREATE TEMP TABLE items_raw (item_id text, movie_title text, release_year text, class text);

-- \copy does not expand psql variables: build the commands in variables first.
\set copy_opts ' WITH (FORMAT csv, DELIMITER E''\\t'', QUOTE E''\\x01'', HEADER true)'
\set copy_ratings '\\copy ratings_raw FROM ' :'inter' :copy_opts
\set copy_items '\\copy items_raw FROM ' :'item' :copy_opts
:copy_ratings
:copy_items

CREATE TABLE ratings (
    user_id     text NOT NULL,
    item_id     text NOT NULL,
    rating      real NOT NULL,
    "timestamp" bigint NOT NULL
);
INSERT INTO ratings
SELECT user_id, item_id, rating::real, ts::float8::bigint FROM ratings_raw;

CREATE TABLE items (
    item_id      text PRIMARY KEY,
    movie_title  text,
    release_year text,
    genres       text,
    decade       text
);
INSERT INTO items
SELECT item_id,
       movie_title,
       CASE WHEN btrim(release_year) ~ '^[0-9]+$' THEN btrim(release_year) END,
       nullif(btrim(class), ''),
       CASE WHEN btrim(release_year) ~ '^[0-9]+$' THEN (btrim(release_year)::int / 10 * 10) || 's' END
  FROM items_raw;

CREATE INDEX ON ratings ("timestamp");
ANALYZE ratings;
ANALYZE items;

SELECT (SELECT count(*) FROM ratings) AS ratings,
       (SELECT count(DISTINCT user_id) FROM ratings) AS users,
       (SELECT count(*) FROM items) AS items,
       to_timestamp((SELECT min("timestamp") FROM ratings))::date AS first_day,
       to_timestamp((SELECT max("timestamp") FROM ratings))::date AS last_day
\gset ml_
\echo loaded :ml_ratings ratings by :ml_users users, :ml_items items, :ml_first_day .. :ml_last_day
