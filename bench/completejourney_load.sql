-- The Complete Journey (events.tsv / items.tsv written by ../shared/data/completejourney/prepare.sh)
-- into plain tables, for bench/completejourney.sh.
--
--   psql -v events=/path/events.tsv -v items=/path/items.tsv -f bench/completejourney_load.sql
--
-- events(user_id, event, product_id, event_time timestamptz) = one purchase line per row, and
-- products(product_id, category, department, manufacturer, brand_type, product_type) with empty cells
-- as NULL (no value), the way bench/repeat_implicit.py reads items.tsv. The files are TSV without
-- quoting, read as CSV with an unused quote character.
\set ON_ERROR_STOP 1
SET client_min_messages = warning;

DROP TABLE IF EXISTS events, products;

CREATE TEMP TABLE events_raw (user_id text, event text, product_id text, ts text);
CREATE TEMP TABLE items_raw (product_id text, category text, department text, manufacturer text,
                             brand_type text, product_type text);

-- \copy does not expand psql variables: build the commands in variables first.
\set copy_opts ' WITH (FORMAT csv, DELIMITER E''\\t'', QUOTE E''\\x01'', HEADER true)'
\set copy_events '\\copy events_raw FROM ' :'events' :copy_opts
\set copy_items '\\copy items_raw FROM ' :'items' :copy_opts
:copy_events
:copy_items

CREATE TABLE events (
    user_id    bigint NOT NULL,
    event      text NOT NULL,
    product_id bigint NOT NULL,
    event_time timestamptz NOT NULL
);
INSERT INTO events SELECT user_id::bigint, event, product_id::bigint, to_timestamp(ts::bigint) FROM events_raw;

CREATE TABLE products (
    product_id   bigint PRIMARY KEY,
    category     text,
    department   text,
    manufacturer text,
    brand_type   text,
    product_type text
);
INSERT INTO products
SELECT product_id::bigint, nullif(btrim(category), ''), nullif(btrim(department), ''),
       nullif(btrim(manufacturer), ''), nullif(btrim(brand_type), ''), nullif(btrim(product_type), '')
  FROM items_raw;

CREATE INDEX ON events (event_time);
ANALYZE events;
ANALYZE products;

SELECT (SELECT count(*) FROM events) AS events,
       (SELECT count(DISTINCT user_id) FROM events) AS users,
       (SELECT count(DISTINCT product_id) FROM events) AS items,
       (SELECT count(*) FROM products) AS products,
       (SELECT min(event_time) FROM events) AS first,
       (SELECT max(event_time) FROM events) AS last
\gset cj_
\echo loaded :cj_events purchase lines by :cj_users households on :cj_items products (:cj_products in products), :cj_first .. :cj_last
