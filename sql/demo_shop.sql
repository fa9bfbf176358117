-- pg_audience demo shop: a deterministic, realistic e-commerce event generator.
--
--   SELECT * FROM audience.generate_demo_shop();                 -- schema "demo", 400k events
--   SELECT * FROM audience.generate_demo_shop('demo_big', 200000, 20000, 20000000);
--
-- (Re)creates in the target schema:
--   products(product_id, name, brand, category, subcategory, price, price_band)
--   users(user_id, signup_at, country)
--   tracks(id, user_id, event, product_id, properties, "timestamp")   -- Segment-style, one table
--        event in ('product_viewed','product_added','order_completed');
--        properties = {"brand","category","price"} as the product was at event time
--   wishlist_saves(user_id, sku, saved_at)                           -- one table per event type
--
-- Planted structure (what a recommender should be able to learn):
--   * 11 shopper personas ("runner", "apple_fan", "gamer", "parent", ...), each a ranked list of
--     brand x category blocks (runners: Nike, Asics, Garmin, New Balance ...; Apple fans: Apple,
--     Beats, Belkin ...). Every user mixes 1-3 personas, the second one often a related persona.
--   * each user has a favourite brand block that gets a user-specific share of traffic and buys
--     more often (repeat buying), a preferred price band, and a buyer propensity;
--   * activity is Pareto-tailed (few heavy users, many light or idle ones), events come in short
--     sessions with one persona per session, mostly in the evening;
--   * tastes drift: the weight between a user's first and second persona moves linearly over
--     the window, so the last month differs a little from the earlier ones;
--   * the funnel: views -> adds (~1 in 5) -> orders (~2 in 5 adds); prices move month to month
--     and some product-months are on sale, so properties.price differs from products.price.
--
-- Determinism: every random draw is a hash of (draw key, stream, seed) (hashint8extended), not
-- random(), so the same seed gives the same rows whatever the plan or parallelism. Timestamps are
-- anchored at the start of the current day, so two runs on the same day are identical.
-- Every object is schema-qualified; the function pins its search_path.

-- One uniform draw in [0, 1) for key $1 in stream $2. A plain SQL expression so the planner
-- inlines it (no SET clause, no STRICT): called tens of millions of times by the generator.
CREATE FUNCTION audience._demo_rand(k bigint, s bigint)
RETURNS double precision
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
SELECT ((pg_catalog.hashint8extended($1, $2) OPERATOR(pg_catalog.&) 9007199254740991::bigint)::double precision
        OPERATOR(pg_catalog./) 9007199254740992::double precision)
$$;
COMMENT ON FUNCTION audience._demo_rand(bigint, bigint) IS
    'Internal to audience.generate_demo_shop: deterministic uniform draw in [0,1) from (key, stream).';

CREATE FUNCTION audience.generate_demo_shop(
    target_schema text DEFAULT 'demo',
    users integer DEFAULT 20000,
    products integer DEFAULT 2000,
    events bigint DEFAULT 400000,
    months integer DEFAULT 6,
    seed double precision DEFAULT 0.42)
RETURNS TABLE(table_name text, row_count bigint)
LANGUAGE plpgsql VOLATILE
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $fn$
DECLARE
    s            bigint;          -- seed-derived hash salt
    t_end        timestamptz := date_trunc('day', now());
    t_start      timestamptz;
    span_s       double precision;
    t_start_ep   double precision;
    t_end_ep     double precision;
    n_blocks     integer;
    n_inter      bigint;          -- product views to generate; adds and orders follow from them
    -- expected events per product view (1 view + adds + orders): calibrates n_inter to `events`
    depth_mean   constant double precision := 1.313;
    sch          text := generate_demo_shop.target_schema;
    n_products   bigint;
    n_users      bigint;
    n_tracks     bigint;
    n_wish       bigint;
BEGIN
    IF sch IS NULL OR sch = '' THEN
        RAISE EXCEPTION 'target_schema must be a non-empty schema name';
    END IF;
    IF sch IN ('audience', 'public', 'information_schema') OR sch LIKE 'pg\_%' THEN
        RAISE EXCEPTION 'refusing to generate demo tables in schema "%"', sch
            USING HINT = 'Pick a dedicated schema, e.g. ''demo''.';
    END IF;
    IF coalesce(generate_demo_shop.users, 0) < 1 OR coalesce(generate_demo_shop.months, 0) < 1
       OR coalesce(generate_demo_shop.events, -1) < 0 OR generate_demo_shop.seed IS NULL THEN
        RAISE EXCEPTION 'users and months must be >= 1, events >= 0 and seed not null';
    END IF;

    s := hashfloat8extended(generate_demo_shop.seed, 20240611);
    t_start := t_end - make_interval(months => generate_demo_shop.months);
    span_s := extract(epoch FROM t_end - t_start);
    t_start_ep := extract(epoch FROM t_start);
    t_end_ep := extract(epoch FROM t_end);

    -- ---------------------------------------------------------------- static catalogue --------
    -- (the temp tables below are dropped at the end; an error rolls their creation back)
    CREATE TEMP TABLE _demo_cat (cat_id int PRIMARY KEY, cat text, subcats text[], sub_price float8[]);
    INSERT INTO pg_temp._demo_cat VALUES
     ( 1, 'Footwear',         '{"Running Shoes","Sneakers","Trail Shoes","Sandals"}',            '{120,95,130,40}'),
     ( 2, 'Sportswear',       '{"Jerseys","Shorts","Leggings","Training Jackets"}',             '{60,35,50,90}'),
     ( 3, 'Wearables',        '{"Smartwatches","Fitness Trackers","Heart Rate Monitors","Bike Computers"}', '{330,110,70,280}'),
     ( 4, 'Phones & Tablets', '{"Smartphones","Tablets","Phone Cases","Chargers"}',             '{750,520,30,35}'),
     ( 5, 'Computers',        '{"Laptops","Monitors","Keyboards","Mice"}',                      '{1100,320,90,50}'),
     ( 6, 'Audio',            '{"Headphones","Earbuds","Speakers","Soundbars"}',                '{250,150,180,400}'),
     ( 7, 'Gaming',           '{"Consoles","Video Games","Controllers","Gaming Headsets"}',     '{420,55,65,110}'),
     ( 8, 'Toys',             '{"Building Sets","Dolls","Board Games","Baby Toys"}',            '{60,30,35,25}'),
     ( 9, 'Home & Kitchen',   '{"Coffee Machines","Vacuum Cleaners","Cookware","Blenders"}',    '{260,380,140,110}'),
     (10, 'Beauty',           '{"Skincare","Makeup","Fragrance","Hair Care"}',                  '{28,22,75,35}'),
     (11, 'Fashion',          '{"Jeans","T-Shirts","Sunglasses","Bags"}',                       '{80,25,150,90}'),
     (12, 'Outdoor',          '{"Tents","Backpacks","Hiking Jackets","Camping Gear"}',          '{260,110,220,60}');

    -- brands in global popularity order (rank 1 = most popular), with a price factor
    CREATE TEMP TABLE _demo_brand (brand_id int PRIMARY KEY, brand text UNIQUE, premium float8);
    INSERT INTO pg_temp._demo_brand VALUES
     ( 1,'Nike',1.15),( 2,'Apple',1.45),( 3,'Samsung',1.05),( 4,'Adidas',1.05),( 5,'Sony',1.1),
     ( 6,'Lego',1.2),( 7,'Zara',0.85),( 8,'H&M',0.55),( 9,'Levi''s',1.0),(10,'Xiaomi',0.6),
     (11,'Philips',0.9),(12,'Logitech',0.85),(13,'Nintendo',1.0),(14,'JBL',0.75),(15,'Dyson',2.1),
     (16,'Bose',1.35),(17,'L''Oréal',0.8),(18,'Puma',0.85),(19,'Asics',1.0),(20,'New Balance',1.0),
     (21,'Garmin',1.3),(22,'Anker',0.7),(23,'Lenovo',0.85),(24,'Dell',0.95),(25,'Nivea',0.45),
     (26,'The North Face',1.3),(27,'Ray-Ban',1.1),(28,'Beats',1.2),(29,'Hasbro',0.8),(30,'Mattel',0.75),
     (31,'KitchenAid',1.6),(32,'Nespresso',0.9),(33,'Fitbit',0.8),(34,'Under Armour',0.95),(35,'Xbox',1.0),
     (36,'Razer',1.25),(37,'Sonos',1.6),(38,'Patagonia',1.5),(39,'Clinique',1.4),(40,'The Ordinary',0.4),
     (41,'Fisher-Price',0.7),(42,'Columbia',0.95),(43,'Belkin',0.9),(44,'Le Creuset',2.0),(45,'Google',1.0);

    -- brand x category blocks: share of the brand's range, allowed subcategories (NULL = all)
    CREATE TEMP TABLE _demo_block (block_id serial PRIMARY KEY, brand_id int, cat_id int, share float8,
        subcats text[], weight float8, p_start int, p_cnt int);
    INSERT INTO pg_temp._demo_block (brand_id, cat_id, share, subcats)
    SELECT b.brand_id, c.cat_id, v.share, v.subcats
    FROM (VALUES
     ('Nike','Footwear',0.65,NULL::text[]),('Nike','Sportswear',0.35,NULL),
     ('Apple','Phones & Tablets',0.5,NULL),('Apple','Computers',0.25,NULL),
     ('Apple','Wearables',0.12,'{"Smartwatches"}'),('Apple','Audio',0.13,'{"Headphones","Earbuds","Speakers"}'),
     ('Samsung','Phones & Tablets',0.6,NULL),('Samsung','Computers',0.15,'{"Monitors","Laptops"}'),
     ('Samsung','Wearables',0.1,'{"Smartwatches","Fitness Trackers"}'),('Samsung','Audio',0.15,'{"Earbuds","Soundbars"}'),
     ('Adidas','Footwear',0.6,NULL),('Adidas','Sportswear',0.4,NULL),
     ('Sony','Audio',0.5,NULL),('Sony','Gaming',0.5,NULL),
     ('Lego','Toys',1.0,'{"Building Sets"}'),
     ('Zara','Fashion',1.0,NULL),('H&M','Fashion',1.0,NULL),('Levi''s','Fashion',1.0,'{"Jeans","T-Shirts"}'),
     ('Xiaomi','Phones & Tablets',0.6,NULL),('Xiaomi','Wearables',0.25,'{"Fitness Trackers","Smartwatches"}'),
     ('Xiaomi','Home & Kitchen',0.15,'{"Vacuum Cleaners"}'),
     ('Philips','Home & Kitchen',0.7,'{"Coffee Machines","Blenders","Vacuum Cleaners"}'),('Philips','Beauty',0.3,'{"Hair Care"}'),
     ('Logitech','Computers',0.7,'{"Keyboards","Mice"}'),('Logitech','Gaming',0.3,'{"Controllers","Gaming Headsets"}'),
     ('Nintendo','Gaming',1.0,'{"Consoles","Video Games","Controllers"}'),
     ('JBL','Audio',1.0,'{"Headphones","Earbuds","Speakers"}'),
     ('Dyson','Home & Kitchen',0.75,'{"Vacuum Cleaners"}'),('Dyson','Beauty',0.25,'{"Hair Care"}'),
     ('Bose','Audio',1.0,NULL),('L''Oréal','Beauty',1.0,NULL),
     ('Puma','Footwear',0.55,NULL),('Puma','Sportswear',0.45,NULL),
     ('Asics','Footwear',0.85,'{"Running Shoes","Trail Shoes"}'),('Asics','Sportswear',0.15,NULL),
     ('New Balance','Footwear',1.0,'{"Running Shoes","Sneakers","Trail Shoes"}'),
     ('Garmin','Wearables',0.8,NULL),('Garmin','Outdoor',0.2,'{"Camping Gear"}'),
     ('Anker','Phones & Tablets',0.6,'{"Chargers","Phone Cases"}'),('Anker','Audio',0.4,'{"Earbuds","Speakers"}'),
     ('Lenovo','Computers',0.8,NULL),('Lenovo','Phones & Tablets',0.2,'{"Tablets","Smartphones"}'),
     ('Dell','Computers',1.0,NULL),('Nivea','Beauty',1.0,'{"Skincare","Hair Care"}'),
     ('The North Face','Outdoor',0.6,NULL),('The North Face','Fashion',0.4,'{"T-Shirts","Bags"}'),
     ('Ray-Ban','Fashion',1.0,'{"Sunglasses"}'),('Beats','Audio',1.0,'{"Headphones","Earbuds","Speakers"}'),
     ('Hasbro','Toys',1.0,'{"Board Games","Dolls"}'),('Mattel','Toys',1.0,'{"Dolls","Board Games","Baby Toys"}'),
     ('KitchenAid','Home & Kitchen',1.0,'{"Blenders","Cookware","Coffee Machines"}'),
     ('Nespresso','Home & Kitchen',1.0,'{"Coffee Machines"}'),('Fitbit','Wearables',1.0,'{"Fitness Trackers","Smartwatches"}'),
     ('Under Armour','Sportswear',0.7,NULL),('Under Armour','Footwear',0.3,'{"Running Shoes","Sneakers"}'),
     ('Xbox','Gaming',1.0,'{"Consoles","Video Games","Controllers"}'),
     ('Razer','Gaming',0.6,'{"Controllers","Gaming Headsets"}'),('Razer','Computers',0.4,'{"Laptops","Keyboards","Mice"}'),
     ('Sonos','Audio',1.0,'{"Speakers","Soundbars"}'),
     ('Patagonia','Outdoor',0.6,NULL),('Patagonia','Fashion',0.4,'{"T-Shirts","Bags"}'),
     ('Clinique','Beauty',1.0,'{"Skincare","Makeup","Fragrance"}'),('The Ordinary','Beauty',1.0,'{"Skincare"}'),
     ('Fisher-Price','Toys',1.0,'{"Baby Toys"}'),
     ('Columbia','Outdoor',0.7,NULL),('Columbia','Fashion',0.3,'{"T-Shirts","Bags"}'),
     ('Belkin','Phones & Tablets',1.0,'{"Phone Cases","Chargers"}'),('Le Creuset','Home & Kitchen',1.0,'{"Cookware"}'),
     ('Google','Phones & Tablets',0.8,NULL),('Google','Audio',0.2,'{"Earbuds","Speakers"}')
    ) AS v(brand, cat, share, subcats)
    JOIN pg_temp._demo_brand b ON b.brand = v.brand
    JOIN pg_temp._demo_cat c ON c.cat = v.cat
    ORDER BY b.brand_id, v.share DESC;
    SELECT count(*) INTO n_blocks FROM pg_temp._demo_block;
    IF generate_demo_shop.products < n_blocks THEN
        RAISE EXCEPTION 'products must be >= % (one per brand x category)', n_blocks;
    END IF;

    -- Zipf-ish brand popularity; each block gets >= 1 product, the rest in proportion to weight,
    -- laid out contiguously: block b owns product indexes [p_start, p_start + p_cnt).
    UPDATE pg_temp._demo_block SET weight = share / power(brand_id, 0.9);
    WITH w AS (
        SELECT block_id,
               coalesce(sum(weight) OVER (ORDER BY block_id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                   / sum(weight) OVER () AS lo,
               sum(weight) OVER (ORDER BY block_id) / sum(weight) OVER () AS hi,
               row_number() OVER (ORDER BY block_id) - 1 AS i
        FROM pg_temp._demo_block)
    UPDATE pg_temp._demo_block b
    SET p_start = 1 + w.i + floor((generate_demo_shop.products - n_blocks) * w.lo)::int,
        p_cnt = 1 + floor((generate_demo_shop.products - n_blocks) * w.hi)::int
                  - floor((generate_demo_shop.products - n_blocks) * w.lo)::int
    FROM w WHERE w.block_id = b.block_id;

    -- personas: ranked brand x category blocks and related personas (for a user's second taste)
    CREATE TEMP TABLE _demo_persona (persona_id int PRIMARY KEY, persona text, weight float8,
        blocks int[], nb int, related int[], cum_lo float8, cum_hi float8);
    INSERT INTO pg_temp._demo_persona (persona_id, persona, weight, blocks, nb, related)
    SELECT v.pid, v.persona, v.weight, bl.blocks, cardinality(bl.blocks), v.related
    FROM (VALUES
     (1,'runner',0.12,'{"Nike/Footwear","Asics/Footwear","Garmin/Wearables","Nike/Sportswear","New Balance/Footwear","Adidas/Footwear","Under Armour/Sportswear","Fitbit/Wearables","Apple/Wearables","Puma/Footwear","Asics/Sportswear","Adidas/Sportswear"}'::text[],'{9,8}'::int[]),
     (2,'apple_fan',0.10,'{"Apple/Phones & Tablets","Apple/Computers","Beats/Audio","Apple/Audio","Apple/Wearables","Belkin/Phones & Tablets","Anker/Phones & Tablets","Sonos/Audio","Logitech/Computers"}','{10,11}'),
     (3,'android_techie',0.09,'{"Samsung/Phones & Tablets","Xiaomi/Phones & Tablets","Google/Phones & Tablets","Samsung/Audio","Anker/Phones & Tablets","Samsung/Wearables","JBL/Audio","Xiaomi/Wearables","Lenovo/Phones & Tablets","Anker/Audio","Google/Audio"}','{4,11}'),
     (4,'gamer',0.09,'{"Nintendo/Gaming","Sony/Gaming","Xbox/Gaming","Razer/Gaming","Logitech/Gaming","Razer/Computers","Logitech/Computers","Dell/Computers","JBL/Audio"}','{3,10}'),
     (5,'parent',0.10,'{"Lego/Toys","Fisher-Price/Toys","Mattel/Toys","Hasbro/Toys","Nintendo/Gaming","Philips/Home & Kitchen","H&M/Fashion"}','{6,8}'),
     (6,'home_cook',0.08,'{"KitchenAid/Home & Kitchen","Nespresso/Home & Kitchen","Philips/Home & Kitchen","Le Creuset/Home & Kitchen","Dyson/Home & Kitchen","Xiaomi/Home & Kitchen"}','{5,7}'),
     (7,'beauty',0.10,'{"L''Oréal/Beauty","The Ordinary/Beauty","Clinique/Beauty","Nivea/Beauty","Dyson/Beauty","Philips/Beauty","Zara/Fashion"}','{8,6}'),
     (8,'fashion',0.12,'{"Zara/Fashion","H&M/Fashion","Levi''s/Fashion","Ray-Ban/Fashion","Adidas/Footwear","Nike/Footwear","Puma/Footwear","Adidas/Sportswear","Puma/Sportswear"}','{7,1}'),
     (9,'outdoor',0.07,'{"The North Face/Outdoor","Patagonia/Outdoor","Columbia/Outdoor","Garmin/Outdoor","Garmin/Wearables","Asics/Footwear","The North Face/Fashion","Patagonia/Fashion","Columbia/Fashion"}','{1}'),
     (10,'home_office',0.07,'{"Dell/Computers","Lenovo/Computers","Logitech/Computers","Apple/Computers","Bose/Audio","Anker/Phones & Tablets","Samsung/Computers","Nespresso/Home & Kitchen"}','{2,4}'),
     (11,'audiophile',0.06,'{"Bose/Audio","Sony/Audio","Sonos/Audio","JBL/Audio","Beats/Audio","Apple/Audio","Google/Audio"}','{2,4}')
    ) AS v(pid, persona, weight, names, related)
    CROSS JOIN LATERAL (
        SELECT array_agg(bk.block_id ORDER BY n.ord) AS blocks, count(bk.block_id) AS found,
               count(*) AS wanted
        FROM unnest(v.names) WITH ORDINALITY AS n(name, ord)
        LEFT JOIN (pg_temp._demo_block bk JOIN pg_temp._demo_brand b USING (brand_id)
                   JOIN pg_temp._demo_cat c USING (cat_id))
               ON b.brand || '/' || c.cat = n.name) bl;
    IF EXISTS (SELECT 1 FROM pg_temp._demo_persona WHERE array_position(blocks, NULL) IS NOT NULL) THEN
        RAISE EXCEPTION 'internal error: persona block list names an unknown brand/category';
    END IF;
    WITH c AS (
        SELECT persona_id, sum(weight) OVER (ORDER BY persona_id) / sum(weight) OVER () AS hi,
               weight / sum(weight) OVER () AS w
        FROM pg_temp._demo_persona)
    UPDATE pg_temp._demo_persona p SET cum_hi = c.hi, cum_lo = c.hi - c.w
    FROM c WHERE c.persona_id = p.persona_id;
    UPDATE pg_temp._demo_persona SET cum_hi = 2 WHERE persona_id = (SELECT max(persona_id) FROM pg_temp._demo_persona);

    -- ---------------------------------------------------------------- products ----------------
    -- price = subcategory base x brand factor x lognormal(0, 0.3); band from price / base.
    -- Within a block, lower indexes are the more popular products.
    CREATE TEMP TABLE _demo_product AS
    SELECT x.idx, x.product_id, x.brand, x.cat AS category, x.subcat AS subcategory,
           CASE WHEN x.raw >= 20 THEN round(x.raw::numeric) - 0.01 ELSE round(x.raw::numeric, 2) END AS price,
           CASE WHEN x.raw / x.base < 0.75 THEN 'budget' WHEN x.raw / x.base < 1.3 THEN 'mid'
                WHEN x.raw / x.base < 2.1 THEN 'premium' ELSE 'luxury' END AS price_band,
           CASE WHEN x.raw / x.base < 0.75 THEN 0 WHEN x.raw / x.base < 1.3 THEN 1
                WHEN x.raw / x.base < 2.1 THEN 2 ELSE 3 END AS band_no,
           format('%s %s %s %s', x.brand,
                  (ARRAY['Air','Pro','Ultra','Max','Lite','Classic','Flex','Edge','Nova','Zen','Core','Prime',
                         'Aero','Vibe','Pulse','Terra','Fusion','Swift','Echo','Orbit','Neo','Vista','Spark','Peak'])
                      [1 + floor(24 * audience._demo_rand(x.idx, s # 101))::int],
                  x.subcat, 100 + floor(900 * audience._demo_rand(x.idx, s # 102))::int) AS name
    FROM (
        SELECT p.idx, 'SKU-' || lpad(p.idx::text, 6, '0') AS product_id, b.brand, c.cat,
               sc.subcat, c.sub_price[array_position(c.subcats, sc.subcat)] AS base,
               c.sub_price[array_position(c.subcats, sc.subcat)] * b.premium
                 * exp(0.3 * sqrt(-2 * ln(greatest(audience._demo_rand(p.idx, s # 103), 1e-12)))
                           * cos(2 * pi() * audience._demo_rand(p.idx, s # 104))) AS raw
        FROM pg_temp._demo_block bk
        JOIN pg_temp._demo_brand b USING (brand_id)
        JOIN pg_temp._demo_cat c USING (cat_id)
        CROSS JOIN LATERAL generate_series(bk.p_start, bk.p_start + bk.p_cnt - 1) AS p(idx)
        CROSS JOIN LATERAL (SELECT coalesce(bk.subcats, c.subcats) AS l) AS sl
        CROSS JOIN LATERAL (SELECT sl.l[1 + floor(cardinality(sl.l) * audience._demo_rand(p.idx, s # 105))::int] AS subcat) AS sc
    ) x;
    ALTER TABLE pg_temp._demo_product ADD PRIMARY KEY (idx);

    -- the price each product had in each month (slow drift, ~12% of product-months on sale),
    -- with the jsonb properties that tracks rows copy
    CREATE TEMP TABLE _demo_price AS
    SELECT p.idx, m.m, jsonb_build_object('brand', p.brand, 'category', p.category,
               'price', round((p.price * q.f)::numeric, 2)) AS props
    FROM pg_temp._demo_product p
    CROSS JOIN generate_series(0, generate_demo_shop.months - 1) AS m(m)
    CROSS JOIN LATERAL (SELECT
        (1 + 0.04 * (audience._demo_rand(p.idx::bigint * 1000 + m.m, s # 111) - 0.5) * (m.m - generate_demo_shop.months + 1))
        * CASE WHEN audience._demo_rand(p.idx::bigint * 1000 + m.m, s # 112) < 0.12
               THEN 0.7 + 0.2 * audience._demo_rand(p.idx::bigint * 1000 + m.m, s # 113) ELSE 1 END AS f) q;
    ALTER TABLE pg_temp._demo_price ADD PRIMARY KEY (idx, m);

    -- ---------------------------------------------------------------- users -------------------
    n_inter := ceil(generate_demo_shop.events / depth_mean)::bigint;
    CREATE TEMP TABLE _demo_user AS
    WITH b AS (
        SELECT g::bigint AS user_id,
               audience._demo_rand(g, s # 201) AS u_p1, audience._demo_rand(g, s # 202) AS u_has2,
               audience._demo_rand(g, s # 203) AS u_p2, audience._demo_rand(g, s # 204) AS u_rel,
               audience._demo_rand(g, s # 205) AS u_has3, audience._demo_rand(g, s # 206) AS u_p3,
               -- signed up over the 18 months before the window or during it
               t_end - (extract(epoch FROM t_end - t_start) + 540 * 86400)
                       * audience._demo_rand(g, s # 207) * interval '1 second' AS signup_at,
               -- Pareto(1.3) activity, capped
               least(power(1 - audience._demo_rand(g, s # 208), -1 / 1.3), 400.0) AS act,
               audience._demo_rand(g, s # 209) AS u_w1, audience._demo_rand(g, s # 210) AS u_drift,
               audience._demo_rand(g, s # 211) AS u_fav, audience._demo_rand(g, s # 212) AS u_favp,
               exp(0.6 * sqrt(-2 * ln(greatest(audience._demo_rand(g, s # 213), 1e-12)))
                       * cos(2 * pi() * audience._demo_rand(g, s # 214))) AS buyer,
               audience._demo_rand(g, s # 215) AS u_band, audience._demo_rand(g, s # 216) AS u_country,
               audience._demo_rand(g, s # 217) AS u_sess
        FROM generate_series(1, generate_demo_shop.users) AS g
    ), p AS (
        SELECT b.*, p1.persona_id AS p1, p1.related,
               CASE WHEN b.u_has2 < 0.6 THEN
                    CASE WHEN b.u_rel < 0.6 THEN p1.related[1 + floor(cardinality(p1.related) * b.u_p2)::int]
                         ELSE (SELECT pp.persona_id FROM pg_temp._demo_persona pp
                               WHERE b.u_p2 >= pp.cum_lo AND b.u_p2 < pp.cum_hi) END END AS p2,
               CASE WHEN b.u_has3 < 0.25 THEN
                    (SELECT pp.persona_id FROM pg_temp._demo_persona pp
                     WHERE b.u_p3 >= pp.cum_lo AND b.u_p3 < pp.cum_hi) END AS p3,
               p1.blocks[1 + floor(p1.nb * power(b.u_fav, 2))::int] AS fav_block
        FROM b JOIN pg_temp._demo_persona p1 ON b.u_p1 >= p1.cum_lo AND b.u_p1 < p1.cum_hi
    ), w AS (
        SELECT p.*,
               greatest(p.signup_at, t_start) AS active_from,
               extract(epoch FROM t_end - greatest(p.signup_at, t_start)) / span_s AS active_frac,
               CASE WHEN p.p2 IS NULL AND p.p3 IS NULL THEN 1.0 ELSE 0.5 + 0.3 * p.u_w1 END AS w1
        FROM p
    ), a AS (
        SELECT w.*, w.act * w.active_frac AS aw,
               sum(w.act * w.active_frac) OVER (ORDER BY w.user_id) AS cum_aw,
               sum(w.act * w.active_frac) OVER () AS tot_aw
        FROM w
    )
    SELECT a.user_id, a.signup_at,
           (ARRAY['US','GB','DE','FR','CA','NL','ES','IT','AU','SE','PL','BE','AT','IE','DK'])
               [1 + floor(15 * power(a.u_country, 2.2))::int] AS country,
           a.p1, coalesce(a.p2, a.p1) AS p2, coalesce(a.p3, a.p1) AS p3,
           a.w1,
           CASE WHEN a.p3 IS NULL THEN 0 WHEN a.p2 IS NULL THEN 1 - a.w1 ELSE (1 - a.w1) * 0.35 END AS w3,
           CASE WHEN a.p2 IS NULL THEN 0 ELSE 0.6 * (a.u_drift - 0.5) END AS drift,
           a.fav_block, 0.10 + 0.35 * a.u_favp AS fav_p, a.buyer,
           -- preferred price band: 0 budget, 1 mid, 2 premium, 3 luxury
           CASE WHEN a.u_band < 0.30 THEN 0 WHEN a.u_band < 0.70 THEN 1
                WHEN a.u_band < 0.92 THEN 2 ELSE 3 END AS band,
           2 + floor(4 * a.u_sess)::int AS sess_len,
           extract(epoch FROM a.active_from)::float8 AS from_ep,
           extract(epoch FROM date_trunc('day', a.active_from))::float8 AS day0_ep,
           extract(epoch FROM t_end - a.active_from)::float8 / 86400 AS ndays,
           (floor(n_inter * a.cum_aw / a.tot_aw) - floor(n_inter * (a.cum_aw - a.aw) / a.tot_aw))::int AS n_int
    FROM a;
    -- k0: the user's first interaction number, so that k0 + j numbers all interactions 1..n.
    -- (Draw keys must stay below 2^32: hashint8extended folds the high half of a bigint into
    -- the low half, so user_id * 2^32 + j would give correlated draws.)
    ALTER TABLE pg_temp._demo_user ADD COLUMN k0 bigint;
    UPDATE pg_temp._demo_user u SET k0 = z.k0
    FROM (SELECT user_id, sum(n_int) OVER (ORDER BY user_id) - n_int AS k0 FROM pg_temp._demo_user) z
    WHERE z.user_id = u.user_id;
    ANALYZE pg_temp._demo_user;
    ALTER TABLE pg_temp._demo_user ADD PRIMARY KEY (user_id);

    -- ---------------------------------------------------------------- interactions ------------
    -- One row per product view: session (persona, day, evening-heavy hour), block choice
    -- (favourite / persona list / global popularity noise), product, funnel depth
    -- (1 = view, 2 = + add, 3 = + order) and whether it was also saved to the wishlist.
    CREATE TEMP TABLE _demo_ix AS
    SELECT fin.*,
           -- first tracks id of this view's rows: ids follow the views' time order
           sum(fin.depth) OVER (ORDER BY fin.ts_ep, fin.k ROWS UNBOUNDED PRECEDING) - fin.depth AS id0
    FROM (
    SELECT pr.user_id, pr.k, pr.ts_ep, pr.idx,
           least(floor(pr.tau * generate_demo_shop.months)::int, generate_demo_shop.months - 1) AS m,
           f.depth,
           f.u_wish < 0.02 * CASE WHEN pr.is_fav THEN 2.0 ELSE 1.0 END
                           * CASE WHEN pd.band_no >= 2 THEN 1.8 ELSE 1.0 END AS wish
    FROM (
        -- product within the block (Zipf-ish: low indexes are the popular ones)
        SELECT bl.*, bk.p_start + floor(bk.p_cnt * power(audience._demo_rand(bl.k, s # 307), 2.2))::int AS idx
        FROM (
            -- block: favourite / global popularity noise / the session persona's ranked list
            SELECT pc.user_id, pc.k, pc.ts_ep, pc.tau, pc.buyer, pc.band,
                   pc.u_mode < pc.fav_p AS is_fav,
                   CASE WHEN pc.u_mode < pc.fav_p THEN pc.fav_block
                        WHEN pc.u_mode < pc.fav_p + 0.10 THEN
                            1 + floor(n_blocks * power(audience._demo_rand(pc.k, s # 306), 1.8))::int
                        ELSE pp.blocks[1 + floor(pp.nb * power(audience._demo_rand(pc.k, s # 306), 1.6))::int]
                   END AS block_id
            FROM (
                -- the session's persona: p1 / p3 / p2, with the p1-p2 balance drifting over time
                SELECT pe.user_id, pe.k, pe.ts_ep, pe.tau, pe.fav_block, pe.fav_p, pe.buyer, pe.band,
                       CASE WHEN pe.u_pers < pe.thr1 THEN pe.p1
                            WHEN pe.u_pers < pe.thr1 + pe.w3 THEN pe.p3
                            ELSE pe.p2 END AS persona,
                       audience._demo_rand(pe.k, s # 305) AS u_mode
                FROM (
                    SELECT t.*, greatest(0.05, t.w1 - t.drift * (t.tau - 0.5)) AS thr1
                    FROM (
                        SELECT t0.*, (t0.ts_ep - t_start_ep) / span_s AS tau
                        FROM (
                            -- session time: a day in the user's active span, evening-heavy hour;
                            -- views within a session ~2.5 minutes apart
                            SELECT u.user_id, u.p1, u.p2, u.p3, u.w1, u.w3, u.drift, u.fav_block, u.fav_p,
                                   u.buyer, u.band, x.k,
                                   audience._demo_rand(x.ks, s # 304) AS u_pers,
                                   least(greatest(
                                       u.day0_ep + 86400 * floor(u.ndays * audience._demo_rand(x.ks, s # 301))
                                       + 3600 * (7 + 17 * power(audience._demo_rand(x.ks, s # 302), 0.7))
                                       + 150 * x.pos + 120 * audience._demo_rand(x.k, s # 303),
                                       u.from_ep), t_end_ep - 1) AS ts_ep
                            FROM pg_temp._demo_user u
                            CROSS JOIN LATERAL generate_series(1, u.n_int) AS j
                            CROSS JOIN LATERAL (SELECT
                                u.k0 + j AS k,                                          -- event key
                                u.k0 + 1 + (j - 1) / u.sess_len * u.sess_len AS ks,     -- session key
                                (j - 1) % u.sess_len AS pos) AS x
                            WHERE u.n_int > 0
                            OFFSET 0) t0
                        ) t
                    OFFSET 0) pe
                OFFSET 0) pc
            JOIN pg_temp._demo_persona pp ON pp.persona_id = pc.persona
            OFFSET 0) bl
        JOIN pg_temp._demo_block bk USING (block_id)
        OFFSET 0) pr
    JOIN pg_temp._demo_product pd USING (idx)
    CROSS JOIN LATERAL (SELECT
        1 + (fp.u_add < fp.p_add)::int + (fp.u_add < fp.p_add AND fp.u_ord < fp.p_ord)::int AS depth,
        fp.u_wish
        FROM (SELECT
            audience._demo_rand(pr.k, s # 308) AS u_add, audience._demo_rand(pr.k, s # 309) AS u_ord,
            audience._demo_rand(pr.k, s # 310) AS u_wish,
            least(0.9, 0.15 * pr.buyer * CASE WHEN pr.is_fav THEN 1.7 ELSE 1.0 END
                  * CASE WHEN pd.band_no = pr.band THEN 1.5 ELSE 0.9 END
                  * CASE pd.band_no WHEN 3 THEN 0.6 WHEN 2 THEN 0.85 ELSE 1.0 END) AS p_add,
            least(0.95, 0.38 * CASE WHEN pr.is_fav THEN 1.4 ELSE 1.0 END
                  * CASE pd.band_no WHEN 3 THEN 0.7 WHEN 0 THEN 1.15 ELSE 1.0 END) AS p_ord) fp) f
    OFFSET 0) fin
    ORDER BY fin.ts_ep, fin.k;

    ANALYZE pg_temp._demo_ix;

    -- ---------------------------------------------------------------- target tables -----------
    EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', sch);
    EXECUTE format('DROP TABLE IF EXISTS %1$I.tracks, %1$I.wishlist_saves, %1$I.users, %1$I.products', sch);

    EXECUTE format($q$CREATE TABLE %I.products (
        product_id text PRIMARY KEY, name text NOT NULL, brand text NOT NULL, category text NOT NULL,
        subcategory text NOT NULL, price numeric(10,2) NOT NULL, price_band text NOT NULL)$q$, sch);
    EXECUTE format($q$INSERT INTO %I.products
        SELECT product_id, name, brand, category, subcategory, price, price_band
        FROM pg_temp._demo_product ORDER BY idx$q$, sch);
    GET DIAGNOSTICS n_products = ROW_COUNT;

    EXECUTE format($q$CREATE TABLE %I.users (
        user_id bigint PRIMARY KEY, signup_at timestamptz NOT NULL, country text NOT NULL)$q$, sch);
    EXECUTE format($q$INSERT INTO %I.users
        SELECT user_id, date_trunc('second', signup_at), country FROM pg_temp._demo_user ORDER BY user_id$q$, sch);
    GET DIAGNOSTICS n_users = ROW_COUNT;

    -- ids follow the time order of the views (as in an append-only tracking table; a view's add
    -- and order take the next ids); adds follow the view by a few minutes, orders the add by
    -- minutes to two days.
    EXECUTE format($q$CREATE TABLE %I.tracks (
        id bigserial, user_id bigint NOT NULL, event text NOT NULL, product_id text NOT NULL,
        properties jsonb NOT NULL, "timestamp" timestamptz NOT NULL)$q$, sch);
    EXECUTE format($q$INSERT INTO %I.tracks (id, user_id, event, product_id, properties, "timestamp")
        SELECT ix.id0 + e.lvl + 1, ix.user_id, e.event, pd.product_id, pr.props,
               to_timestamp(floor(least($1 - 1, ix.ts_ep
                 + CASE WHEN e.lvl >= 1 THEN 30 + 1200 * audience._demo_rand(ix.k, $2 # 401) ELSE 0 END
                 + CASE WHEN e.lvl >= 2 THEN 120 + 172800 * power(audience._demo_rand(ix.k, $2 # 402), 4) ELSE 0 END)))
        FROM pg_temp._demo_ix ix
        JOIN pg_temp._demo_product pd ON pd.idx = ix.idx
        JOIN pg_temp._demo_price pr ON pr.idx = ix.idx AND pr.m = ix.m
        CROSS JOIN LATERAL (VALUES (0, 'product_viewed'), (1, 'product_added'), (2, 'order_completed')) AS e(lvl, event)
        WHERE e.lvl < ix.depth$q$, sch) USING t_end_ep, s;
    GET DIAGNOSTICS n_tracks = ROW_COUNT;
    PERFORM setval(pg_get_serial_sequence(format('%I.tracks', sch), 'id'), greatest(n_tracks, 1), n_tracks > 0);
    EXECUTE format('ALTER TABLE %I.tracks ADD PRIMARY KEY (id)', sch);

    EXECUTE format($q$CREATE TABLE %I.wishlist_saves (
        user_id bigint NOT NULL, sku text NOT NULL, saved_at timestamptz NOT NULL)$q$, sch);
    EXECUTE format($q$INSERT INTO %I.wishlist_saves
        SELECT ix.user_id, pd.product_id,
               to_timestamp(floor(least($1 - 1, ix.ts_ep + 20 + 300 * audience._demo_rand(ix.k, $2 # 403))))
        FROM pg_temp._demo_ix ix JOIN pg_temp._demo_product pd ON pd.idx = ix.idx
        WHERE ix.wish$q$, sch) USING t_end_ep, s;
    GET DIAGNOSTICS n_wish = ROW_COUNT;

    EXECUTE format('COMMENT ON TABLE %I.tracks IS %L', sch,
        'pg_audience demo shop: Segment-style tracks (product_viewed, product_added, order_completed); generated by audience.generate_demo_shop');
    EXECUTE format('COMMENT ON TABLE %I.wishlist_saves IS %L', sch,
        'pg_audience demo shop: one table per event type (wishlist saves); generated by audience.generate_demo_shop');
    EXECUTE format('ANALYZE %1$I.products, %1$I.users, %1$I.tracks, %1$I.wishlist_saves', sch);

    DROP TABLE pg_temp._demo_cat, pg_temp._demo_brand, pg_temp._demo_block, pg_temp._demo_persona,
        pg_temp._demo_product, pg_temp._demo_price, pg_temp._demo_user, pg_temp._demo_ix;

    RETURN QUERY VALUES ('products'::text, n_products), ('users', n_users),
                        ('tracks', n_tracks), ('wishlist_saves', n_wish);
END
$fn$;
COMMENT ON FUNCTION audience.generate_demo_shop(text, integer, integer, bigint, integer, double precision) IS
    'Create a deterministic demo shop (products, users, Segment-style tracks, wishlist_saves) with planted tastes in target_schema.';
