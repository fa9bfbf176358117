//! `#[pg_test]`s for SQL-surface edge cases (each runs in a transaction that is rolled back).
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    fn run(sql: &str) {
        Spi::run(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    /// Catalog `catalog` over table `table`: 400 events of 23 users on 9 products, hourly back
    /// from `ago` before now; property `b` is `x` for products p0-p3, `y` for the others. Built
    /// without tuning, 2 factors, 2 neighbours.
    fn two_value_catalog(table: &str, catalog: &str, ago: &str) {
        run(&format!(
            r#"CREATE TABLE {table} (user_id int, product_id text, "timestamp" timestamptz, b text);
               INSERT INTO {table} SELECT g % 23, 'p' || (g % 9), now() - interval '{ago}' - g * interval '1 hour', CASE WHEN g % 9 < 4 THEN 'x' ELSE 'y' END
                 FROM generate_series(1, 400) g;
               SELECT audience.create_catalog('{catalog}');
               SELECT audience.add_event('{catalog}', '{table}', 'product_id');
               SELECT audience.map_property('{catalog}', 'b', column_name => 'b');
               SELECT audience.build('{catalog}', factors => 2, neighbours => 2, tune => false);"#
        ));
    }

    fn values(property: &str) -> Vec<String> {
        Spi::connect(|c| {
            c.select(
                "SELECT value FROM audience.catalog_values WHERE property = $1 ORDER BY value",
                None,
                &[property.into()],
            )
            .unwrap()
            .map(|r| r.get::<String>(1).unwrap().unwrap())
            .collect()
        })
    }

    /// Parallel workers hand partial states of 1 MB or more to the leader in files, which the
    /// leader reads once and removes: the result is the serial plan's, and no file is left.
    #[pg_test]
    fn parallel_states_handed_over_in_files() {
        run("CREATE TABLE handoff_ev AS
               SELECT (g % 40000)::text AS u, (g % 1999)::text AS i, (1 + g % 3)::float8 AS w,
                      '2024-01-01'::timestamptz + (g % 5000) * interval '1 minute' AS t
                 FROM generate_series(1, 400000) g;
             ANALYZE handoff_ev;
             SET LOCAL parallel_setup_cost = 0;
             SET LOCAL parallel_tuple_cost = 0;
             SET LOCAL min_parallel_table_scan_size = 0;
             SET LOCAL parallel_leader_participation = off;
             SET LOCAL max_parallel_workers_per_gather = 2;");
        let q = "SELECT audience.affinity(u, i, w, t, '3 days', NULL) FROM handoff_ev";
        let files = || {
            Spi::get_one::<i64>(
                "SELECT count(*) FROM pg_catalog.pg_ls_tmpdir() WHERE name LIKE 'pgsql\\_tmp\\_pga\\_%'",
            )
            .unwrap()
            .unwrap()
        };
        // Every row asked for (a row limit, as Spi::get_one sets, turns the parallel plan off).
        let all = |q: &str| {
            crate::api::spi_util::query_rows(q, &[], |r| r.get::<pgrx::JsonB>(1).unwrap())
                .pop()
                .flatten()
                .unwrap()
                .0
        };
        let before = crate::affinity::aggregate::states_from_files();
        let parallel = all(q);
        let read = crate::affinity::aggregate::states_from_files() - before;
        assert!(read >= 1, "no partial state came through a file");
        assert_eq!(files(), 0);
        run("SET LOCAL max_parallel_workers_per_gather = 0");
        let serial = all(q);
        assert_eq!(
            crate::affinity::aggregate::states_from_files() - before,
            read
        );
        assert_eq!(parallel, serial);
        assert_eq!(serial.as_object().unwrap().len(), 40000);
    }

    /// A table's event types are tested in the order of their share of its rows once the table
    /// is analyzed (the event column's most common values), in registration order before.
    #[pg_test]
    fn scan_query_tests_frequent_event_types_first() {
        run(
            r#"CREATE TABLE freq_ev (user_id int, product_id text, "timestamp" timestamptz, event text);
               INSERT INTO freq_ev SELECT g % 50, 'p' || (g % 7), now() - g * interval '1 minute',
                      CASE WHEN g % 10 = 0 THEN 'order' WHEN g % 10 < 3 THEN 'cart' ELSE 'view' END
                 FROM generate_series(1, 3000) g;
               SELECT audience.create_catalog('freq');
               SELECT audience.add_event('freq', 'freq_ev', 'product_id', event_column => 'event', event_value => 'order', weight => 5);
               SELECT audience.add_event('freq', 'freq_ev', 'product_id', event_column => 'event', event_value => 'cart', weight => 3);
               SELECT audience.add_event('freq', 'freq_ev', 'product_id', event_column => 'event', event_value => 'view', weight => 1);"#,
        );
        // The ANY list of the filter (in the time range's query: once analyzed, the scan's
        // leaves it to the weight, every row being of a mapped type), and the value of the
        // weight's first WHEN.
        let order = || {
            Spi::get_two::<String, String>(
                r#"SELECT substring(b.time_query from $$ANY \('([^']*)'$$),
                          substring(b.query from $$AS i_num, CASE WHEN s\.event::pg_catalog\.text OPERATOR\(pg_catalog\.=\) '([a-z]*)'$$)
                     FROM audience._build_query((SELECT catalog_id FROM audience.catalogs WHERE name = 'freq'), NULL, NULL, NULL) b"#,
            )
            .map(|(a, b)| (a.unwrap_or_default(), b.unwrap_or_default()))
            .unwrap()
        };
        assert_eq!(order(), ("{order,cart,view}".into(), "order".into()));
        let rows = || {
            Spi::get_one::<i64>(
                "SELECT b.rows_read FROM audience.build('freq', factors => 2, neighbours => 2, tune => false) b",
            )
            .unwrap()
            .unwrap()
        };
        assert_eq!(rows(), 3000);
        run("ANALYZE freq_ev");
        assert_eq!(order(), ("{view,cart,order}".into(), "view".into()));
        // The build reads the same rows either way.
        assert_eq!(rows(), 3000);
    }

    /// A table whose rows are, by pg_stats, at least 95% of mapped event types is scanned
    /// without the filter on the event column: the weight's CASE is NULL for the other types and
    /// the aggregate skips those rows, so the build reads the same rows into the same state; the
    /// time range of the events keeps the filter. Below 95% (or before ANALYZE) the filter stays.
    #[pg_test]
    fn scan_query_leaves_the_event_filter_to_the_weight_when_mapped_types_dominate() {
        run(
            r#"CREATE TABLE cut_ev (user_id int, product_id text, "timestamp" timestamptz, event text, properties jsonb);
               INSERT INTO cut_ev SELECT g % 50, 'p' || (g % 7), '2026-01-01'::timestamptz + g * interval '1 minute',
                      CASE WHEN g % 100 = 0 THEN 'page' WHEN g % 10 = 0 THEN 'order' ELSE 'view' END,
                      jsonb_build_object('category', 'c' || (g % 3))
                 FROM generate_series(1, 3000) g;
               -- The latest event is of the unmapped type: the time range must not reach it.
               INSERT INTO cut_ev VALUES (1, 'p1', '2027-01-01', 'page', '{"category": "late"}');
               SELECT audience.create_catalog('cut');
               SELECT audience.add_event('cut', 'cut_ev', 'product_id', event_column => 'event', event_value => 'order', weight => 5);
               SELECT audience.add_event('cut', 'cut_ev', 'product_id', event_column => 'event', event_value => 'view', weight => 1);
               SELECT audience.map_property('cut', 'category', json_key => 'category', json_column => 'properties', event => e)
                 FROM unnest(ARRAY['order', 'view']) e;
               SELECT audience.create_catalog('cut1');
               SELECT audience.add_event('cut1', 'cut_ev', 'product_id', event_column => 'event', event_value => 'view', weight => 2);"#,
        );
        let q = |cat: &str, col: &str| {
            Spi::get_one::<String>(&format!(
                "SELECT b.{col} FROM audience._build_query((SELECT catalog_id FROM audience.catalogs WHERE name = '{cat}'), NULL, NULL, NULL) b"
            ))
            .unwrap()
            .unwrap()
        };
        // The state of the catalog's scan query, and whether its time range ends before the
        // unmapped type's late event.
        let state = |cat: &str| {
            let bytes = Spi::get_one::<Vec<u8>>(
                &q(cat, "query").replace("_affinity_collect(", "_affinity_collect_bytes("),
            )
            .unwrap()
            .unwrap();
            let early = Spi::get_one::<bool>(&format!(
                "SELECT r.max < '2026-06-01'::timestamptz FROM ({}) r",
                q(cat, "time_query")
            ))
            .unwrap()
            .unwrap();
            (bytes, early)
        };
        let before = (state("cut"), state("cut1"));
        for cat in ["cut", "cut1"] {
            assert!(
                q(cat, "query").contains("ANY ("),
                "{cat}: not analyzed, the filter stays"
            );
        }
        // 1% of the rows are of the unmapped type: the scan leaves the filter to the weight.
        run("ANALYZE cut_ev");
        assert!(!q("cut", "query").contains("ANY ("));
        assert!(q("cut", "time_query").contains("ANY ("));
        assert!(q("cut", "query").contains("AS w"));
        // One mapped type of 90% of the rows: below 95%, the filter stays.
        assert!(q("cut1", "query").contains("ANY ("));
        assert_eq!((state("cut"), state("cut1")), before);
        assert!(before.0 .1 && before.1 .1);
        let rows = Spi::get_one::<i64>(
            "SELECT b.rows_read FROM audience.build('cut', factors => 2, neighbours => 2, tune => false) b",
        )
        .unwrap()
        .unwrap();
        assert_eq!(rows, 2970);
    }

    /// Integer id columns (0.9.0) reach the scan's aggregate as they are (`u_num`, `i_num`),
    /// written in decimal as `::text` writes them: the same state, byte for byte, as their text,
    /// for bigint, integer and smallint columns with negative values and both extremes; a text
    /// column still goes as text, and a build reads every row.
    #[pg_test]
    fn integer_ids_are_passed_as_they_are_and_give_the_state_of_their_text() {
        run(
            r#"CREATE TABLE nid (user_id bigint, product_id integer, sku smallint, code text, "timestamp" timestamptz, props jsonb);
               INSERT INTO nid SELECT CASE g % 5 WHEN 0 THEN -g WHEN 1 THEN 9223372036854775807 - g
                                                 WHEN 2 THEN -9223372036854775807 - 1 + g ELSE g % 40 END,
                      CASE WHEN g % 3 = 0 THEN -2147483648 + g % 4 ELSE g % 17 END, (g % 9 - 4)::smallint,
                      'c' || (g % 11), '2026-01-01'::timestamptz + g * interval '1 hour',
                      jsonb_build_object('kind', 'k' || (g % 4))
                 FROM generate_series(1, 500) g;
               INSERT INTO nid VALUES (-9223372036854775807 - 1, 2147483647, -32768, 'x', '2026-02-01', '{"kind": "z"}'),
                                      (0, 0, 32767, 'y', '2026-02-02', '{}');
               SELECT audience.create_catalog('nid');
               SELECT audience.add_event('nid', 'nid', 'product_id');
               SELECT audience.create_catalog('nid_sku');
               SELECT audience.add_event('nid_sku', 'nid', 'sku');
               SELECT audience.create_catalog('nid_text');
               SELECT audience.add_event('nid_text', 'nid', 'code');"#,
        );
        let bytes = |u: &str, i: &str, un: &str, inum: &str| {
            Spi::get_one::<Vec<u8>>(&format!(
                "SELECT audience._affinity_collect_bytes({u}, {i}, 1, \"timestamp\", '7 days', NULL, 0, NULL, NULL, NULL, {un}, {inum}) FROM nid"
            ))
            .unwrap()
            .unwrap()
        };
        let text = bytes("user_id::text", "product_id::text", "NULL", "NULL");
        assert_eq!(bytes("NULL", "NULL", "user_id", "product_id"), text);
        assert_eq!(bytes("user_id::text", "NULL", "NULL", "product_id"), text);
        assert_eq!(
            bytes("NULL", "NULL", "user_id", "sku"),
            bytes("user_id::text", "sku::text", "NULL", "NULL")
        );
        // With a property read from the row's document (`doc` and `keys`), as the build passes it.
        let with_doc = |u: &str, i: &str, un: &str, inum: &str| {
            Spi::get_one::<Vec<u8>>(&format!(
                "SELECT audience._affinity_collect_bytes({u}, {i}, 1, \"timestamp\", NULL, NULL, 1, NULL, props, 'kind'{un}{inum}) FROM nid"
            ))
            .unwrap()
            .unwrap()
        };
        assert_eq!(
            with_doc("NULL", "NULL", ", user_id", ", product_id"),
            with_doc("user_id::text", "product_id::text", "", "")
        );
        // The ten-argument aggregate (text ids) gives the same state.
        let ten = Spi::get_one::<Vec<u8>>(
            "SELECT audience._affinity_collect_bytes(user_id::text, product_id::text, 1, \"timestamp\", '7 days', NULL, 0, NULL, NULL, NULL) FROM nid",
        )
        .unwrap()
        .unwrap();
        assert_eq!(ten, text);
        let q = |cat: &str| {
            Spi::get_one::<String>(&format!(
                "SELECT b.query FROM audience._build_query((SELECT catalog_id FROM audience.catalogs WHERE name = '{cat}'), NULL, NULL, NULL) b"
            ))
            .unwrap()
            .unwrap()
        };
        assert!(q("nid").contains(
            "NULL::pg_catalog.text AS u, s.user_id::pg_catalog.int8 AS u_num, NULL::pg_catalog.text AS i, s.product_id::pg_catalog.int8 AS i_num"
        ));
        assert!(q("nid_sku").contains("s.sku::pg_catalog.int8 AS i_num"));
        assert!(
            q("nid_text").contains("s.code::pg_catalog.text AS i, NULL::pg_catalog.int8 AS i_num")
        );
        let built = |cat: &str| {
            Spi::get_one::<i64>(&format!(
                "SELECT b.rows_read FROM audience.build('{cat}', factors => 2, neighbours => 2, tune => false) b"
            ))
            .unwrap()
            .unwrap()
        };
        run("SELECT audience.map_property('nid', 'kind', json_key => 'kind', json_column => 'props')");
        assert_eq!(built("nid"), 502);
        assert_eq!(
            Spi::get_one::<String>(
                "SELECT string_agg(value, ',' ORDER BY value) FROM audience.property_values v JOIN audience.catalogs c ON c.active_model_id = v.model_id WHERE c.name = 'nid' AND v.property = 'kind'",
            )
            .unwrap()
            .unwrap_or_default(),
            // Each product's latest non-null value.
            Spi::get_one::<String>(
                "SELECT string_agg(DISTINCT kind, ',' ORDER BY kind) FROM (SELECT DISTINCT ON (product_id) props->>'kind' AS kind FROM nid WHERE props ? 'kind' ORDER BY product_id, \"timestamp\" DESC) x",
            )
            .unwrap()
            .unwrap()
        );
        assert_eq!(built("nid_text"), 502);
    }

    /// Keys of one jsonb column are read by the aggregate in place (the row's document and the
    /// keys as its `doc` and `keys`): the same state, byte for byte, as the values' text from
    /// `->>`, for every kind of value and document (strings with escapes, numbers, booleans,
    /// null, nested containers, a missing key, arrays and scalars, more than 32 keys, compressed
    /// and out-of-line documents, NULL).
    #[pg_test]
    fn jsonb_keys_read_in_place_give_the_state_of_the_arrow_operator() {
        run(
            r#"CREATE TABLE tdoc (user_id int, product_id text, "timestamp" timestamptz, properties jsonb);
               INSERT INTO tdoc SELECT g % 7, 'p' || g, '2026-01-01'::timestamptz + g * interval '1 hour',
                 CASE g % 12
                   WHEN 0 THEN '{"category": "Footwear", "brand": "Puma"}'
                   WHEN 1 THEN '{"category": 12.50, "brand": true}'
                   WHEN 2 THEN '{"category": null, "brand": false}'
                   WHEN 3 THEN '{"category": {"a": [1, 2]}, "brand": ["x", "y"]}'
                   WHEN 4 THEN '{"brand": "only a brand"}'
                   WHEN 5 THEN '["category", "brand"]'
                   WHEN 6 THEN '"category"'
                   WHEN 7 THEN '{"category": "naïve \u00e9 \"quoted\"\ttab", "brand": ""}'
                   WHEN 8 THEN (SELECT jsonb_object_agg('k' || i, i::text) FROM generate_series(1, 100) i)
                               || '{"category": "many keys", "brand": "x"}'
                   WHEN 9 THEN jsonb_build_object('category', repeat('long ', 2000), 'brand', 'compressed')
                   WHEN 10 THEN jsonb_build_object('category', (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 300) i), 'brand', 'out of line')
                 END
               FROM generate_series(1, 240) g;"#,
        );
        let stored = Spi::get_one::<i64>(
            "SELECT count(*) FROM tdoc WHERE pg_column_size(properties) < octet_length(properties::text) / 2",
        )
        .unwrap()
        .unwrap();
        assert!(stored >= 20, "compressed documents: {stored}");
        let toast = Spi::get_one::<String>(
            "SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = 'tdoc'::regclass",
        )
        .unwrap()
        .unwrap();
        let chunks = Spi::get_one::<i64>(&format!("SELECT count(*) FROM {toast}"))
            .unwrap()
            .unwrap();
        assert!(chunks > 0, "out-of-line documents: none in {toast}");
        let q = |props: &str, doc: &str, keys: &str| {
            format!(
                "SELECT audience._affinity_collect_bytes(user_id::text, product_id, 1, \"timestamp\", NULL, '2026-03-01', 2, {props}, {doc}, {keys}) FROM tdoc"
            )
        };
        let bytes = |sql: String| Spi::get_one::<Vec<u8>>(&sql).unwrap().unwrap();
        let text = bytes(q(
            "coalesce(properties ->> 'brand', '') || chr(30) || coalesce(properties ->> 'category', '')",
            "NULL",
            "NULL",
        ));
        let doc = bytes(q("NULL", "properties", "'brand' || chr(30) || 'category'"));
        assert!(text == doc, "the states differ");
        // One key, and a property the source does not map (an empty key).
        let one = |doc: &str, keys: &str| {
            bytes(format!(
                "SELECT audience._affinity_collect_bytes(user_id::text, product_id, 1, \"timestamp\", NULL, '2026-03-01', 1, {}, {doc}, {keys}) FROM tdoc",
                if doc == "NULL" { "properties ->> 'category'" } else { "NULL" }
            ))
        };
        assert!(one("NULL", "NULL") == one("properties", "'category'"));
        let skipped = bytes(q("NULL", "properties", "chr(30) || 'category'"));
        let text_skipped = bytes(q(
            "chr(30) || coalesce(properties ->> 'category', '')",
            "NULL",
            "NULL",
        ));
        assert!(skipped == text_skipped, "an empty key maps nothing");
        // Items met again, out of time order and at equal times with other values (each item's
        // latest value wins, the larger one at equal times): the same state.
        let again = |props: &str, doc: &str, keys: &str| {
            bytes(format!(
                "SELECT audience._affinity_collect_bytes(user_id::text, 'q' || substr(product_id, 2)::int % 13, 1, '2026-01-01'::timestamptz + (substr(product_id, 2)::int * 37 % 50) * interval '1 hour', NULL, '2026-03-01', 2, {props}, {doc}, {keys}) FROM tdoc"
            ))
        };
        let again_text = again(
            "coalesce(properties ->> 'brand', '') || chr(30) || coalesce(properties ->> 'category', '')",
            "NULL",
            "NULL",
        );
        let again_doc = again("NULL", "properties", "'brand' || chr(30) || 'category'");
        assert!(
            again_text == again_doc,
            "the states of items met again differ"
        );
        // Not vacuous: the values are there, rendered as ->> renders them.
        let aff = crate::affinity::accumulator::Accumulator::deserialize(&doc)
            .unwrap()
            .finish();
        let value = |item: &str, p: usize| {
            let i = aff.items.binary_search(&item.to_string()).unwrap();
            aff.item_props[p][i].clone()
        };
        assert_eq!(value("p12", 0).as_deref(), Some("Puma"));
        assert_eq!(value("p12", 1).as_deref(), Some("Footwear"));
        assert_eq!(value("p1", 0).as_deref(), Some("true"));
        assert_eq!(value("p1", 1).as_deref(), Some("12.50"));
        assert_eq!(value("p2", 0).as_deref(), Some("false"));
        assert_eq!(value("p2", 1), None);
        assert_eq!(value("p3", 1).as_deref(), Some(r#"{"a": [1, 2]}"#));
        assert_eq!(value("p5", 0), None);
        assert_eq!(value("p7", 1).as_deref(), Some("naïve é \"quoted\"\ttab"));
        assert_eq!(value("p8", 1).as_deref(), Some("many keys"));
        assert_eq!(value("p10", 0).as_deref(), Some("out of line"));
        assert_eq!(value("p11", 0), None);
    }

    /// The scan query passes a jsonb column's document and keys when every event type of the
    /// table maps its properties to keys of it (no delimiter), and the values' text otherwise
    /// (a json column, a delimiter).
    #[pg_test]
    fn scan_query_reads_jsonb_keys_in_place_when_it_can() {
        run(
            r#"CREATE TABLE jev (user_id int, product_id text, "timestamp" timestamptz, event text, props jsonb, jprops json);
               INSERT INTO jev SELECT g % 5, 'p' || (g % 3), now() - g * interval '1 minute',
                      CASE WHEN g % 2 = 0 THEN 'order' ELSE 'view' END,
                      jsonb_build_object('category', 'c' || (g % 3), 'tags', 'a,b'),
                      json_build_object('category', 'c' || (g % 3))
                 FROM generate_series(1, 60) g;
               SELECT audience.create_catalog('j');
               SELECT audience.add_event('j', 'jev', 'product_id', event_column => 'event', event_value => 'order', weight => 5);
               SELECT audience.add_event('j', 'jev', 'product_id', event_column => 'event', event_value => 'view', weight => 1);
               SELECT audience.map_property('j', 'category', json_key => 'category', json_column => 'props', event => e)
                 FROM unnest(ARRAY['order', 'view']) e;"#,
        );
        let query = || {
            Spi::get_one::<String>(
                "SELECT b.query FROM audience._build_query((SELECT catalog_id FROM audience.catalogs WHERE name = 'j'), NULL, NULL, NULL) b",
            )
            .unwrap()
            .unwrap()
        };
        let built = || {
            Spi::get_one::<i64>(
                "SELECT b.rows_read FROM audience.build('j', factors => 2, neighbours => 2, tune => false) b",
            )
            .unwrap()
            .unwrap()
        };
        let values = || {
            Spi::get_one::<String>(
                "SELECT string_agg(value, ',' ORDER BY value) FROM audience.property_values v JOIN audience.catalogs c ON c.active_model_id = v.model_id WHERE c.name = 'j' AND v.property = 'category'",
            )
            .unwrap()
            .unwrap_or_default()
        };
        let q = query();
        assert!(
            q.contains(
                "NULL::pg_catalog.text AS p, s.props AS d, 'category'::pg_catalog.text AS k"
            ),
            "{q}"
        );
        assert!(!q.contains("->>"), "{q}");
        assert_eq!(built(), 60);
        assert_eq!(values(), "c0,c1,c2");
        // Two keys of the same column.
        run("SELECT audience.map_property('j', 'tag', json_key => 'tags', json_column => 'props', event => e) FROM unnest(ARRAY['order', 'view']) e");
        let q = query();
        assert!(
            q.contains(&format!("'category{}tags'::pg_catalog.text AS k", '\u{1e}')),
            "{q}"
        );
        assert_eq!(built(), 60);
        // A delimiter: the values' text (split by the engine).
        run("SELECT audience.unmap_property('j', 'tag')");
        run("SELECT audience.map_property('j', 'tag', json_key => 'tags', json_column => 'props', event => e, delimiter => ',') FROM unnest(ARRAY['order', 'view']) e");
        let q = query();
        assert!(q.contains("NULL::pg_catalog.jsonb AS d"), "{q}");
        assert!(q.contains("->>"), "{q}");
        assert_eq!(built(), 60);
        assert_eq!(values(), "c0,c1,c2");
        // A json (not jsonb) column: ->>.
        run("SELECT audience.unmap_property('j', 'tag')");
        run("SELECT audience.unmap_property('j', 'category')");
        run("SELECT audience.map_property('j', 'category', json_key => 'category', json_column => 'jprops', event => e) FROM unnest(ARRAY['order', 'view']) e");
        let q = query();
        assert!(q.contains("NULL::pg_catalog.jsonb AS d"), "{q}");
        assert_eq!(built(), 60);
        assert_eq!(values(), "c0,c1,c2");
    }

    /// Quoted names everywhere: a mixed-case schema, table and columns with spaces and quotes.
    #[pg_test]
    fn names_needing_quotes_work() {
        run(r#"CREATE SCHEMA "My Shop";
               CREATE TABLE "My Shop"."Order ""Lines""" ("User Id" text, "Product-Id" int, "When" date, "Brand Name" text);
               INSERT INTO "My Shop"."Order ""Lines""" VALUES ('a', 1, '2024-01-01', 'X'), ('b', 2, '2024-01-02', 'Y'), ('a', 2, '2024-01-03', 'Y');
               SELECT audience.create_catalog('Quoted "Cat"');
               SELECT audience.add_event('Quoted "Cat"', '"My Shop"."Order ""Lines"""', 'Product-Id', user_id => 'User Id', event_time => 'When');
               SELECT audience.map_property('Quoted "Cat"', 'brand', column_name => 'Brand Name');
               SELECT audience.build('Quoted "Cat"', factors => 2, neighbours => 2);"#);
        assert_eq!(values("brand"), vec!["X", "Y"]);
        let n = Spi::get_one::<i64>("SELECT count(*) FROM audience.recommend_audience('brand', 'Y', 100, catalog => 'Quoted \"Cat\"')")
            .unwrap()
            .unwrap();
        assert_eq!(n, 2);
    }

    /// Multi-valued properties: array columns, delimited strings and JSON arrays.
    #[pg_test]
    fn multi_valued_properties_split() {
        run(
            r#"CREATE TABLE ev (user_id int, product_id text, "timestamp" timestamptz, props jsonb, tags text[], genres text);
               INSERT INTO ev VALUES
                 (1, 'm1', '2024-01-01', '{"cast": ["Ann", "Bob"]}', '{red,blue}', 'Action|Comedy'),
                 (2, 'm2', '2024-01-02', '{"cast": "Cid"}', '{blue}', 'Drama');
               SELECT audience.create_catalog('m');
               SELECT audience.add_event('m', 'ev', 'product_id');
               SELECT audience.map_property('m', 'cast', json_key => 'cast', json_column => 'props');
               SELECT audience.map_property('m', 'tag', column_name => 'tags');
               SELECT audience.map_property('m', 'genre', column_name => 'genres', delimiter => '|');
               SELECT audience.build('m', factors => 2, neighbours => 2);"#,
        );
        assert_eq!(values("cast"), vec!["Ann", "Bob", "Cid"]);
        assert_eq!(values("tag"), vec!["blue", "red"]);
        assert_eq!(values("genre"), vec!["Action", "Comedy", "Drama"]);
        let users = Spi::get_one::<i64>(
            "SELECT users FROM audience.catalog_values WHERE property = 'tag' AND value = 'blue'",
        )
        .unwrap()
        .unwrap();
        assert_eq!(users, 2);
    }

    /// With one mapped property the scan hands the value over as it is: a value holding the
    /// separator the scan puts between several properties' values (chr(30)) is not cut there.
    #[pg_test]
    fn one_property_value_with_the_separator_is_kept_whole() {
        run(
            r#"CREATE TABLE ev1 (user_id int, product_id text, "timestamp" timestamptz, brand text);
               INSERT INTO ev1 VALUES (1, 'p', '2024-01-01', 'A' || chr(30) || 'B'), (2, 'q', '2024-01-02', 'C');
               SELECT audience.create_catalog('sep');
               SELECT audience.add_event('sep', 'ev1', 'product_id');
               SELECT audience.map_property('sep', 'brand', column_name => 'brand');
               SELECT audience.build('sep', factors => 2, neighbours => 2, tune => false);"#,
        );
        assert_eq!(
            values("brand"),
            vec!["A\u{1e}B".to_string(), "C".to_string()]
        );
    }

    /// Conflicting values for one item: the most recent event wins; a products table wins over events.
    #[pg_test]
    fn most_recent_event_wins_and_products_table_overrides() {
        run(
            r#"CREATE TABLE ev (user_id int, product_id text, "timestamp" timestamptz, brand text, cat text);
               INSERT INTO ev VALUES (1, 'p', '2024-01-01', 'Old', 'c1'), (2, 'p', '2024-02-01', 'New', 'c2'), (3, 'p', '2024-01-15', 'Mid', 'c3');
               CREATE TABLE products (product_id text, cat text);
               INSERT INTO products VALUES ('p', 'catalogued');
               SELECT audience.create_catalog('w');
               SELECT audience.add_event('w', 'ev', 'product_id');
               SELECT audience.map_property('w', 'brand', column_name => 'brand');
               SELECT audience.map_property('w', 'cat', column_name => 'cat');
               SELECT audience.map_property('w', 'cat', column_name => 'cat', products => 'products');
               SELECT audience.build('w', factors => 2, neighbours => 2);"#,
        );
        assert_eq!(values("brand"), vec!["New"]);
        assert_eq!(values("cat"), vec!["catalogued"]);
    }

    /// A source whose events carry no property mapping, read in the same scan as one that does.
    #[pg_test]
    fn sources_with_and_without_mappings_mix() {
        run(
            r#"CREATE TABLE views (user_id int, product_id text, "timestamp" timestamptz);
               CREATE TABLE orders (user_id int, product_id text, "timestamp" timestamptz, brand text);
               INSERT INTO views SELECT g, 'p' || (g % 5), '2024-01-01' FROM generate_series(1, 50) g;
               INSERT INTO orders VALUES (1, 'p1', '2024-01-02', 'B1'), (2, 'p2', '2024-01-02', 'B2');
               SELECT audience.create_catalog('mix');
               SELECT audience.add_event('mix', 'views', 'product_id');
               SELECT audience.add_event('mix', 'orders', 'product_id', weight => 5);
               SELECT audience.map_property('mix', 'brand', column_name => 'brand', event => 'orders');
               SELECT audience.build('mix', factors => 2, neighbours => 2);"#,
        );
        assert_eq!(values("brand"), vec!["B1", "B2"]);
    }

    /// Ids of any scalar type come out as text; NULL ids and times are skipped, not errors.
    #[pg_test]
    fn id_types_and_null_rows() {
        run(
            r#"CREATE TABLE ev (user_id uuid, product_id bigint, ts bigint);
               INSERT INTO ev VALUES ('00000000-0000-0000-0000-000000000001', 10, 1700000000),
                                     ('00000000-0000-0000-0000-000000000002', 10, 1700000100),
                                     (NULL, 10, 1700000000), ('00000000-0000-0000-0000-000000000003', NULL, 1700000000),
                                     ('00000000-0000-0000-0000-000000000004', 11, NULL);
               SELECT audience.create_catalog('ids');
               SELECT audience.add_event('ids', 'ev', 'product_id', event_time => 'ts');"#,
        );
        let (rows, users) = Spi::get_two::<i64, i64>(
            "SELECT rows_read, users FROM audience.build('ids', factors => 2, neighbours => 2)",
        )
        .unwrap();
        assert_eq!((rows, users), (Some(2), Some(2)));
    }

    /// Event types of one tracks table are read in one scan and keep their own weights.
    #[pg_test]
    fn event_types_of_one_table_keep_their_weights() {
        run(
            r#"CREATE TABLE tracks (user_id int, event text, product_id text, "timestamp" timestamptz, brand text);
               INSERT INTO tracks VALUES (1, 'order', 'p1', '2024-01-01', 'B'), (1, 'view', 'p1', '2024-01-01', 'B'),
                                         (1, 'view', 'p2', '2024-01-01', 'B'), (1, 'ignored', 'p2', '2024-01-01', 'B'),
                                         (2, 'view', 'p2', '2024-01-01', 'B');
               SELECT audience.create_catalog('t');
               SELECT audience.add_event('t', 'tracks', 'product_id', event_column => 'event', event_value => 'order', weight => 5);
               SELECT audience.add_event('t', 'tracks', 'product_id', event_column => 'event', event_value => 'view', weight => 1);
               SELECT audience.map_property('t', 'brand', column_name => 'brand');"#,
        );
        let rows = Spi::get_one::<i64>(
            "SELECT rows_read FROM audience.build('t', factors => 0, neighbours => 0)",
        )
        .unwrap();
        assert_eq!(rows, Some(4));
        let c = Spi::get_one::<f64>("SELECT contribution FROM audience.explain('t', '1', 'brand', 'B') WHERE item_id = 'p1'").unwrap();
        assert_eq!(c, Some(6.0));
        let c = Spi::get_one::<f64>("SELECT contribution FROM audience.explain('t', '1', 'brand', 'B') WHERE item_id = 'p2'").unwrap();
        assert_eq!(c, Some(1.0));
    }

    /// A per-row weight column multiplies the event weight; a NULL there counts as 1.
    #[pg_test]
    fn weight_column_multiplies() {
        run(
            r#"CREATE TABLE ratings (user_id int, item text, t bigint, rating real, g text);
               INSERT INTO ratings VALUES (1, 'm1', 1000, 4, 'x'), (1, 'm2', 1000, NULL, 'x');
               SELECT audience.create_catalog('wc');
               SELECT audience.add_event('wc', 'ratings', 'item', event_time => 't', weight => 2, weight_column => 'rating');
               SELECT audience.map_property('wc', 'g', column_name => 'g');
               SELECT audience.build('wc', factors => 0, neighbours => 0);"#,
        );
        let c = |item: &str| {
            Spi::get_one_with_args::<f64>(
                "SELECT contribution FROM audience.explain('wc', '1', 'g', 'x') WHERE item_id = $1",
                &[item.into()],
            )
            .unwrap()
        };
        assert_eq!(c("m1"), Some(8.0));
        assert_eq!(c("m2"), Some(2.0));
    }

    #[pg_test(error = "catalog \"nope\" does not exist")]
    fn unknown_catalog_is_an_error() {
        run("SELECT audience.build('nope')");
    }

    #[pg_test(error = "max_pct must be greater than 0 and at most 100")]
    fn max_pct_out_of_range() {
        run(
            r#"CREATE TABLE ev (user_id int, product_id text, "timestamp" timestamptz, b text);
               INSERT INTO ev VALUES (1, 'p', now(), 'x');
               SELECT audience.create_catalog('r');
               SELECT audience.add_event('r', 'ev', 'product_id');
               SELECT audience.map_property('r', 'b', column_name => 'b');
               SELECT audience.build('r', factors => 2, neighbours => 2);
               SELECT * FROM audience.recommend_audience('b', 'x', 'NaN');"#,
        );
    }

    /// A model replaced by a build that committed after it was resolved has no rows any more:
    /// loading it says so (and the caller resolves again) instead of reporting a corrupt model.
    #[pg_test]
    fn a_replaced_model_is_not_reported_as_corrupt() {
        run(
            r#"CREATE TABLE ev (user_id int, product_id text, "timestamp" timestamptz, b text);
               INSERT INTO ev SELECT g % 7, 'p' || (g % 5), now() - g * interval '1 hour', 'x' FROM generate_series(1, 60) g;
               SELECT audience.create_catalog('rep');
               SELECT audience.add_event('rep', 'ev', 'product_id');
               SELECT audience.map_property('rep', 'b', column_name => 'b');
               SELECT audience.build('rep', factors => 2, neighbours => 2, tune => false);"#,
        );
        let first =
            Spi::get_one::<i64>("SELECT active_model_id FROM audience.catalogs WHERE name = 'rep'")
                .unwrap()
                .unwrap();
        assert!(crate::api::cache::load(first, "rep").is_some());
        run("SELECT audience.build('rep', factors => 2, neighbours => 2, tune => false)");
        // The first model's rows are gone: None, not an error.
        assert!(crate::api::cache::load(first, "rep").is_none());
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM audience.recommend_audience('b', 'x', 100, catalog => 'rep')",
        )
        .unwrap()
        .unwrap();
        assert!(n > 0);
    }

    /// The audience functions return the same rows, in rank order, in FROM, in the select list,
    /// when rescanned per outer row (LATERAL), and for each of the three entry points.
    #[pg_test]
    fn audience_rows_are_the_same_in_every_calling_context() {
        two_value_catalog("ev", "mat", "0");
        let one = |sql: &str| -> String {
            Spi::get_one::<String>(sql)
                .unwrap_or_else(|e| panic!("{sql}: {e}"))
                .unwrap_or_default()
        };
        let from = one(
            "SELECT string_agg(user_id || ':' || rank || ':' || round(percentile::numeric, 6), ',' ORDER BY rank)
               FROM audience.recommend_audience('b', 'x', 100, catalog => 'mat')",
        );
        assert!(from.starts_with(&format!(
            "{}:1:",
            one("SELECT user_id FROM audience.recommend_audience('b', 'x', 100, catalog => 'mat') LIMIT 1")
        )));
        let select_list = one(
            "SELECT string_agg((r).user_id || ':' || (r).rank || ':' || round((r).percentile::numeric, 6), ',' ORDER BY (r).rank)
               FROM (SELECT audience.recommend_audience('b', 'x', 100, catalog => 'mat') r) s",
        );
        assert_eq!(select_list, from);
        let array_form = one(
            "SELECT string_agg(user_id || ':' || rank || ':' || round(percentile::numeric, 6), ',' ORDER BY rank)
               FROM audience.recommend_audience('b', ARRAY['x'], 100, catalog => 'mat')",
        );
        assert_eq!(array_form, from);
        let items_form = one(
            "SELECT string_agg(user_id || ':' || rank || ':' || round(percentile::numeric, 6), ',' ORDER BY rank)
               FROM audience.recommend_audience_items(ARRAY['p0', 'p1', 'p2', 'p3'], 100, catalog => 'mat')",
        );
        assert_eq!(items_form, from, "the items of value x, asked for by id");
        // Ranks 1..n without gaps, scores never increasing, percentiles of the 23 users ranked.
        let checks = Spi::get_one::<bool>(
            "SELECT bool_and(rank = rn) AND bool_and(score <= prev) AND bool_and(abs(percentile - 100.0 * rank / 23) < 1e-9)
               FROM (SELECT rank, score, percentile, row_number() OVER (ORDER BY rank) AS rn,
                            coalesce(lag(score) OVER (ORDER BY rank), 'Infinity') AS prev
                       FROM audience.recommend_audience('b', 'x', 100, catalog => 'mat')) t",
        )
        .unwrap()
        .unwrap();
        assert!(checks);
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM audience.recommend_audience('b', 'x', 100, catalog => 'mat')",
        )
        .unwrap()
        .unwrap();
        assert!(n > 0 && n <= 23);
        let lateral = Spi::get_one::<i64>(
            "SELECT count(*) FROM (VALUES ('x'), ('y'), ('x')) v(val),
                    LATERAL audience.recommend_audience('b', v.val, 100, catalog => 'mat')",
        )
        .unwrap()
        .unwrap();
        let n_y = Spi::get_one::<i64>(
            "SELECT count(*) FROM audience.recommend_audience('b', 'y', 100, catalog => 'mat')",
        )
        .unwrap()
        .unwrap();
        assert_eq!(lateral, 2 * n + n_y);
        // An audience that is empty (no item has the value) is zero rows, not an error.
        let none = Spi::get_one::<i64>(
            "SELECT count(*) FROM audience.recommend_audience('b', 'no such value', 100, catalog => 'mat')",
        )
        .unwrap()
        .unwrap();
        assert_eq!(none, 0);
    }

    /// A repeated request in a session is answered from the session's memo of rankings, but
    /// never across what changes the answer: events read since the build and a rebuild. The
    /// truth each time is a request the memo has not seen (a `min_score` that keeps every user).
    #[pg_test]
    fn repeated_requests_follow_new_events_and_rebuilds() {
        two_value_catalog("mev", "memo", "1 day");
        let list = |min_score: &str| -> String {
            Spi::get_one::<String>(&format!(
                "SELECT string_agg(user_id || ':' || round(score::numeric, 6), ',' ORDER BY rank)
                   FROM audience.recommend_audience('b', 'x', 100, catalog => 'memo', min_score => {min_score})"
            ))
            .unwrap()
            .unwrap_or_default()
        };
        let user = |l: &str, i: usize| {
            l.split(',')
                .nth(i)
                .unwrap()
                .split(':')
                .next()
                .unwrap()
                .to_string()
        };
        let first = list("NULL");
        assert_eq!(list("NULL"), first, "the same request, the same rows");
        // Events after the build for the last user ranked (the model knows them: the same cut).
        let last = user(&first, 22);
        run(&format!(
            "INSERT INTO mev SELECT {last}, 'p1', now() - g * interval '1 minute', 'x' FROM generate_series(1, 30) g"
        ));
        let fresh = list("NULL");
        assert_ne!(fresh, first, "{last}'s new events count");
        assert_eq!(fresh, list("0"));
        // A rebuild without the top user's events of the value (the same users: the same cut):
        // a new model, whose ranking is computed.
        let top = user(&first, 0);
        run(&format!(
            "DELETE FROM mev WHERE user_id = {top} AND b = 'x'; SELECT audience.build('memo', factors => 2, neighbours => 2, tune => false);"
        ));
        let rebuilt = list("NULL");
        assert_ne!(
            user(&rebuilt, 0),
            top,
            "{top} is no longer first: {rebuilt}"
        );
        assert_eq!(rebuilt, list("-1"));
    }

    /// An incremental build ranks like a full build over all events. 400 users buy from 60
    /// products of 6 brands, mostly their group's; in the 5 newest days (12% of the events) a
    /// third of them turn to the next brand. The grown model has the full build's users, items,
    /// pairs and users per value, and its top-20% audiences reach at least 97% of the buyers
    /// of the next two weeks that the full build's reach, more than the model the incremental
    /// build started from. The item-kNN is computed again when the pairs grew 5% or new items
    /// arrived, and kept otherwise.
    #[pg_test]
    fn incremental_build_ranks_like_a_full_build() {
        let events = |from: i32, to: i32, turn: &str, rate: i32| {
            format!(
                "INSERT INTO grow_ev SELECT u, 'p' || p, '2024-01-01'::timestamptz + d * interval '1 day' + u * interval '1 minute', 'b' || (p % 6)
                   FROM generate_series(1, 400) u, generate_series({from}, {to}) d,
                        LATERAL (SELECT abs(hashint4(u * 1000 + d)) AS h, {turn} AS t) r,
                        LATERAL (SELECT CASE WHEN r.h % 10 < 7 THEN (u + r.t) % 6 + 6 * ((r.h / 10) % 10) ELSE (r.h / 10) % 60 END AS p) x
                  WHERE r.h % 100 < {rate}"
            )
        };
        let turned = "CASE WHEN u % 3 = 0 THEN 1 ELSE 0 END";
        // Catalogs: g grown, w whole, s the model g started from. The audiences rank the
        // models alone (no events read between builds).
        run(&format!(
            r#"CREATE TABLE grow_ev (user_id int, product_id text, "timestamp" timestamptz, brand text);
               {};
               SELECT audience.create_catalog(c) FROM unnest(ARRAY['g', 'w', 's']) c;
               SELECT audience.add_event(c, 'grow_ev', 'product_id', half_life => '30 days') FROM unnest(ARRAY['g', 'w', 's']) c;
               SELECT audience.map_property(c, 'brand', column_name => 'brand') FROM unnest(ARRAY['g', 'w', 's']) c;
               SELECT audience.set_fresh_events(c, 'off') FROM unnest(ARRAY['g', 'w', 's']) c;
               SELECT audience.build(c, factors => 8, neighbours => 10, tune => false) FROM unnest(ARRAY['g', 's']) c;
               {};"#,
            events(0, 94, "0", 12),
            events(95, 99, turned, 30)
        ));
        let share_new = Spi::get_one::<f64>(
            "SELECT count(*) FILTER (WHERE \"timestamp\" >= '2024-04-05')::float8 / count(*) FROM grow_ev",
        )
        .unwrap()
        .unwrap();
        assert!((0.08..0.16).contains(&share_new), "{share_new}");
        let grown = Spi::get_one::<i64>(
            "SELECT model_id - base_model_id FROM audience.build_incremental('g')",
        )
        .unwrap()
        .unwrap();
        assert!(grown > 0, "a new model");
        run("SELECT audience.build('w', factors => 8, neighbours => 10, tune => false)");
        let counts = |c: &str| {
            Spi::get_one::<String>(&format!(
                "SELECT m.users || '/' || m.items || '/' || m.pairs || ' ' ||
                        (SELECT string_agg(value || ':' || items || ':' || users, ',' ORDER BY value) FROM audience.catalog_values WHERE catalog = '{c}')
                   FROM audience.models m JOIN audience.catalogs c ON c.active_model_id = m.model_id WHERE c.name = '{c}'"
            ))
            .unwrap()
            .unwrap()
        };
        assert_eq!(counts("g"), counts("w"));
        assert_ne!(
            counts("s"),
            counts("w"),
            "the new events changed the counts"
        );
        run(&events(100, 114, turned, 12));
        let hits = |c: &str| {
            Spi::get_one::<i64>(&format!(
                "SELECT sum((SELECT count(DISTINCT a.user_id) FROM audience.recommend_audience('brand', 'b' || b, 20, '{c}') a
                              JOIN grow_ev e ON e.user_id::text = a.user_id AND e.brand = 'b' || b AND e.\"timestamp\" >= '2024-04-10'))::int8
                   FROM generate_series(0, 5) b"
            ))
            .unwrap()
            .unwrap()
        };
        let (g, w, s) = (hits("g"), hits("w"), hits("s"));
        assert!(g as f64 >= 0.97 * w as f64, "grown {g}, whole {w}");
        assert!(g > s, "grown {g}, started from {s}");
        // The similarities were computed again (12% more pairs); a few more events keep them,
        // a new item has them computed again.
        let recomputed = |c: &str| {
            Spi::get_one::<bool>(&format!(
                "SELECT (m.stats -> 'incremental' ->> 'knn_recomputed')::bool FROM audience.models m
                   JOIN audience.catalogs c ON c.active_model_id = m.model_id WHERE c.name = '{c}'"
            ))
            .unwrap()
            .unwrap()
        };
        assert!(recomputed("g"));
        // (The two weeks of events above first.)
        run("SELECT audience.build_incremental('g')");
        run(
            "INSERT INTO grow_ev SELECT u, 'p1', '2024-05-01', 'b1' FROM generate_series(1, 5) u;
             SELECT audience.build_incremental('g');",
        );
        assert!(!recomputed("g"), "5 more events keep the similarities");
        run(
            "INSERT INTO grow_ev VALUES (1, 'p-new', '2024-05-02', 'b1');
             SELECT audience.build_incremental('g');",
        );
        assert!(recomputed("g"), "a new item has them computed again");
    }

    /// The check for new events runs its queries with `jit = off` (`without_jit`): off inside,
    /// the caller's setting afterwards, whatever it was.
    #[pg_test]
    fn queries_of_the_check_for_new_events_run_without_jit() {
        let jit = || Spi::get_one::<String>("SELECT pg_catalog.current_setting('jit')").unwrap();
        for outside in ["on", "off"] {
            run(&format!("SET jit = {outside}"));
            let inside = crate::api::spi_util::without_jit(jit);
            assert_eq!(inside.as_deref(), Some("off"));
            assert_eq!(jit().as_deref(), Some(outside), "restored");
        }
    }

    /// The probe before reading new events: whether any source has a row at or after a time,
    /// over every source of the catalog (quoted names, `date` and `timestamptz` columns); no
    /// answer for an epoch-seconds column or a source gone (the read then decides).
    #[pg_test]
    fn the_probe_for_new_events_reads_every_source() {
        run(r#"CREATE SCHEMA "Sh op";
               CREATE TABLE "Sh op"."Lines" ("U" text, "P" text, "When" timestamptz);
               CREATE TABLE days (user_id text, product_id text, d date);
               INSERT INTO "Sh op"."Lines" VALUES ('a', 'p1', '2024-01-01 10:00+00');
               INSERT INTO days VALUES ('b', 'p2', '2024-01-03');
               SELECT audience.create_catalog('probe');
               SELECT audience.add_event('probe', '"Sh op"."Lines"', 'P', user_id => 'U', event_time => 'When');
               SELECT audience.add_event('probe', 'days', 'product_id', event_time => 'd');"#);
        let cid =
            Spi::get_one::<i32>("SELECT catalog_id FROM audience.catalogs WHERE name = 'probe'")
                .unwrap()
                .unwrap();
        let at = |t: &str| {
            Spi::get_one::<i64>(&format!(
                "SELECT (extract(epoch FROM '{t}'::timestamptz) * 1000000)::int8 - 946684800000000"
            ))
            .unwrap()
            .unwrap()
        };
        let probe = |t: &str| crate::api::fresh::any_row_since(cid, at(t));
        run("SET TimeZone = 'UTC'");
        assert_eq!(probe("2024-01-01 09:00+00"), Some(true));
        // The date column's row (2024-01-03 00:00 in UTC) is the latest.
        assert_eq!(probe("2024-01-02 00:00+00"), Some(true));
        assert_eq!(
            probe("2024-01-03 00:00+00"),
            Some(true),
            "at the time: included"
        );
        assert_eq!(probe("2024-01-03 00:00:00.000001+00"), Some(false));
        run(r#"INSERT INTO "Sh op"."Lines" VALUES (NULL, NULL, '2024-02-01 00:00+00')"#);
        assert_eq!(
            probe("2024-01-03 00:00:00.000001+00"),
            Some(true),
            "any row counts, even one the read would skip"
        );
        run(
            "CREATE TABLE epochs (user_id text, product_id text, t bigint);
             SELECT audience.add_event('probe', 'epochs', 'product_id', event_time => 't');",
        );
        assert_eq!(
            probe("2024-01-01 00:00+00"),
            None,
            "epoch seconds: left to the read"
        );
        run("DROP TABLE epochs");
        assert_eq!(
            probe("2024-01-01 00:00+00"),
            None,
            "a source gone: left to the read"
        );
    }

    /// Ids stored compressed or out of line reach the scan's aggregate whole (its plain-text fast
    /// path reads only inline, uncompressed values; the others go through pgrx's conversion).
    #[pg_test]
    fn compressed_and_out_of_line_ids_are_read_whole() {
        run(
            r#"CREATE TABLE tev (user_id int, product_id text, "timestamp" timestamptz);
               ALTER TABLE tev ALTER COLUMN product_id SET STORAGE EXTENDED;
               INSERT INTO tev SELECT g % 4,
                   CASE g % 3 WHEN 0 THEN 'short'
                              WHEN 1 THEN repeat('compressible', 600)
                              ELSE (SELECT string_agg(md5(i::text || 'x'), '') FROM generate_series(1, 200) i) END,
                   now() - g * interval '1 hour'
                 FROM generate_series(1, 30) g;"#,
        );
        let kinds = Spi::get_one::<String>(
            "SELECT string_agg(k, ',' ORDER BY k) FROM (SELECT DISTINCT CASE WHEN pg_column_size(product_id) < octet_length(product_id) THEN 'compressed' ELSE 'plain' END AS k FROM tev) s",
        )
        .unwrap()
        .unwrap();
        assert!(kinds.contains("compressed"), "{kinds}");
        let q = "SELECT audience._affinity_collect(user_id::text, product_id, 1, \"timestamp\", NULL, NULL, 0, NULL, NULL, NULL) FROM tev";
        let token = Spi::get_one::<i64>(q).unwrap().unwrap();
        let aff = crate::affinity::aggregate::take_stashed(token)
            .expect("our own token finds the state")
            .finish();
        let mut lens: Vec<usize> = aff.items.iter().map(|i| i.len()).collect();
        lens.sort_unstable();
        assert_eq!(lens, vec![5, 32 * 200, 12 * 600]);
        assert_eq!(aff.users.len(), 4);
    }

    /// A stash token names the backend that made it: a token from another session (the scan's
    /// final step ran elsewhere) is never found here, even when its counter matches one of ours.
    #[pg_test]
    fn stash_tokens_are_unique_to_the_session() {
        run(
            r#"CREATE TABLE tev (user_id int, product_id text, "timestamp" timestamptz);
               INSERT INTO tev SELECT g % 5, 'p' || (g % 3), now() - g * interval '1 hour' FROM generate_series(1, 30) g;"#,
        );
        let q = "SELECT audience._affinity_collect(user_id::text, product_id, 1, \"timestamp\", NULL, NULL, 0, NULL, NULL, NULL) FROM tev";
        let token = Spi::get_one::<i64>(q).unwrap().unwrap();
        assert!(crate::affinity::aggregate::token_is_ours(token));
        let foreign = token ^ (1i64 << 40);
        assert!(!crate::affinity::aggregate::token_is_ours(foreign));
        assert!(
            crate::affinity::aggregate::take_stashed(foreign).is_none(),
            "another session's token matches nothing"
        );
        let acc =
            crate::affinity::aggregate::take_stashed(token).expect("our own token finds the state");
        assert_eq!(acc.finish().users.len(), 5);
        assert!(
            crate::affinity::aggregate::take_stashed(token).is_none(),
            "a state is taken once"
        );
        // The bytes path gives the same state.
        let bytes =
            Spi::get_one::<Vec<u8>>(&q.replace("_affinity_collect(", "_affinity_collect_bytes("))
                .unwrap()
                .unwrap();
        let acc = crate::affinity::accumulator::Accumulator::deserialize(&bytes).unwrap();
        assert_eq!(acc.finish().users.len(), 5);
    }
}
