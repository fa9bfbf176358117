#!/usr/bin/env bash
# Scenario: who may do what. pg_audience's functions are not SECURITY DEFINER (but for the
# internal delete-cascade trigger; EXECUTE is granted
# to PUBLIC as usual), so the caller's privileges on the audience.* tables and on the event
# sources decide. The minimal grants below were found by removing one privilege at a time
# from a full set until the call failed (roles: analyst, editor, nosel).
#
# ---------------------------------------------------------------- GRANTs found
# -- analyst: reads audiences, cannot edit catalogs or build.
# GRANT USAGE ON SCHEMA audience TO analyst;
# GRANT SELECT ON ALL TABLES IN SCHEMA audience TO analyst;        -- tables and the 4 views
# --   minimal per use:  recommend_audience / explain: SELECT ON audience.catalogs, audience.model_data
# --                     a catalog_* view:            SELECT on that view only (the view reads as its owner)
# --                     saved audiences:             SELECT ON audience.saved_audiences, audience.audience_members,
# --                                                  audience.audience_changes
# -- (no privilege on the event sources is needed to score: the model is in audience.model_data)
#
# -- editor: registers catalogs, builds, saves and refreshes audiences (minimal set).
# GRANT USAGE ON SCHEMA audience TO editor;
# GRANT SELECT, INSERT, UPDATE ON audience.catalogs TO editor;      -- build locks + updates the row
# GRANT SELECT, INSERT ON audience.events, audience.property_mappings TO editor;
# GRANT SELECT, INSERT, UPDATE, DELETE ON audience.models TO editor; -- build replaces the old model
# GRANT SELECT, INSERT ON audience.model_data TO editor;            -- (its rows go with the model: FK cascade)
# GRANT INSERT ON audience.property_values TO editor;
# GRANT SELECT, INSERT, UPDATE, DELETE ON audience.saved_audiences, audience.audience_members TO editor;
# GRANT INSERT ON audience.audience_changes TO editor;
# GRANT USAGE ON ALL SEQUENCES IN SCHEMA audience TO editor;
# -- and on every registered source it adds or builds from:
# GRANT USAGE ON SCHEMA demo TO editor;
# GRANT SELECT ON demo.tracks, demo.wishlist_saves, demo.products TO editor;
# -- (forget_user also needs DELETE on the sources; drop_catalog DELETE on audience.catalogs;
# --  evaluate/tune SELECT, INSERT on audience.evaluations, audience.evaluation_results.)
#
# -- nosel = editor's grants without SELECT ON demo.tracks: add_event(demo.tracks) and the
# -- build of a catalog that reads demo.tracks (registered by someone else) fail with 42501.
# ----------------------------------------------------------------
# Note: SELECT on audience.model_data is read access to per-user item affinities (explain()
# lists the items a user engaged with), even without SELECT on the event tables.
set -euo pipefail
PGA_SCRIPT=privileges
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=scripts/tests/_lib.sh
source scripts/tests/_lib.sh

t_cluster_fresh t-privileges

t_say "setup (superuser): demo shop, catalog 'shop' on demo.tracks + demo.wishlist_saves, model, saved audience"
q "SET client_min_messages = warning" "SELECT count(*) FROM audience.generate_demo_shop('demo', 3000, 300, 50000)" >/dev/null
t_register_shop shop demo
q "SELECT model_id FROM audience.build('shop')" >/dev/null
q "SET client_min_messages = warning" "SELECT members FROM audience.save_audience('nike_top', 'brand', 'Nike', 5, catalog => 'shop')" >/dev/null
TOP_USER="$(q "SELECT user_id FROM audience.recommend_audience('brand', 'Nike', 5, catalog => 'shop') ORDER BY rank LIMIT 1")"

q "CREATE ROLE analyst" "CREATE ROLE editor" "CREATE ROLE nosel" \
  "GRANT USAGE ON SCHEMA audience TO analyst" \
  "GRANT SELECT ON ALL TABLES IN SCHEMA audience TO analyst"
for r in editor nosel; do
    q "GRANT USAGE ON SCHEMA audience TO $r" \
      "GRANT SELECT, INSERT, UPDATE ON audience.catalogs TO $r" \
      "GRANT SELECT, INSERT ON audience.events, audience.property_mappings TO $r" \
      "GRANT SELECT, INSERT, UPDATE, DELETE ON audience.models TO $r" \
      "GRANT SELECT, INSERT ON audience.model_data TO $r" \
      "GRANT INSERT ON audience.property_values TO $r" \
      "GRANT SELECT, INSERT, UPDATE, DELETE ON audience.saved_audiences, audience.audience_members TO $r" \
      "GRANT INSERT ON audience.audience_changes TO $r" \
      "GRANT USAGE ON ALL SEQUENCES IN SCHEMA audience TO $r" \
      "GRANT USAGE ON SCHEMA demo TO $r" \
      "GRANT SELECT ON demo.wishlist_saves, demo.products TO $r"
done
q "GRANT SELECT ON demo.tracks TO editor"
# The one exception: the trigger that cascades deletes between the extension's own tables (as a
# foreign key's cascade would, as the owner); it is not callable by users (trigger, no EXECUTE).
t_check "functions are not SECURITY DEFINER (except the delete-cascade trigger)" test "$(q "SELECT coalesce(string_agg(proname, ','), '') FROM pg_proc WHERE pronamespace = 'audience'::regnamespace AND prosecdef")" = "_cascade_delete"
t_check "nobody but the owner may execute the cascade trigger function" test "$(q "SELECT has_function_privilege('analyst', 'audience._cascade_delete()', 'EXECUTE')")" = f

# as ROLE SQL: run SQL as ROLE (SET ROLE in a superuser session); prints the result.
as() { local r="$1"; shift; q "SET client_min_messages = warning" "SET ROLE $r" "$@"; }
# expect_ok ROLE WHAT SQL...
expect_ok() {
    local r="$1" what="$2" out
    shift 2
    if out="$(as "$r" "$@" 2>&1)"; then
        t_pass "$r: $what works ($(tail -n1 <<<"$out" | cut -c1-60))"
    else
        t_fail "$r: $what should work: $out"
    fi
}
# expect_denied ROLE WHAT SQL...: fails with 42501.
expect_denied() {
    local r="$1" what="$2" res
    shift 2
    res="$(q_err "SET client_min_messages = warning" "SET ROLE $r" "$@")"
    if [[ "${res%%$'\t'*}" == 42501 ]]; then
        t_pass "$r: $what is denied: 42501 ${res#*$'\t'}"
    else
        t_fail "$r: $what should fail with 42501, got: $res"
    fi
}

t_say "analyst: USAGE ON SCHEMA audience + SELECT ON ALL TABLES IN SCHEMA audience"
expect_ok analyst "recommend_audience" "SELECT count(*) FROM audience.recommend_audience('brand', 'Nike', 5, catalog => 'shop')"
expect_ok analyst "explain" "SELECT count(*) FROM audience.explain('shop', '$TOP_USER', 'brand', 'Nike', 5)"
for v in catalog_overview catalog_events catalog_properties catalog_values; do
    expect_ok analyst "view audience.$v" "SELECT count(*) FROM audience.$v"
done
expect_ok analyst "reading saved audience members" "SELECT count(*) FROM audience.audience_members JOIN audience.saved_audiences USING (audience_id) WHERE name = 'nike_top'"
expect_denied analyst "create_catalog" "SELECT audience.create_catalog('analyst_cat')"
expect_denied analyst "add_event" "SELECT audience.add_event('shop', 'demo.wishlist_saves', 'sku', event_time => 'saved_at', name => 'again')"
expect_denied analyst "map_property" "SELECT audience.map_property('shop', 'brand2', column_name => 'brand', products => 'demo.products')"
expect_denied analyst "build" "SELECT * FROM audience.build('shop')"
expect_denied analyst "build_incremental" "SELECT * FROM audience.build_incremental('shop')"
expect_denied analyst "save_audience" "SELECT * FROM audience.save_audience('mine', 'brand', 'Sony', 5, catalog => 'shop')"
expect_denied analyst "refresh_audience" "SELECT * FROM audience.refresh_audience('nike_top')"
expect_denied analyst "drop_catalog" "SELECT audience.drop_catalog('shop')"
expect_denied analyst "forget_user" "SELECT * FROM audience.forget_user('$TOP_USER', rebuild => false)"
# What a q_err-denied analyst add_event says when it can read the source (the catalog write is refused):
q "GRANT USAGE ON SCHEMA demo TO analyst" "GRANT SELECT ON demo.wishlist_saves TO analyst"
expect_denied analyst "add_event with SELECT on the source" "SELECT audience.add_event('shop', 'demo.wishlist_saves', 'sku', event_time => 'saved_at', name => 'again')"
q "REVOKE SELECT ON demo.wishlist_saves FROM analyst" "REVOKE USAGE ON SCHEMA demo FROM analyst"

t_say "analyst, minimal: only SELECT ON audience.catalogs, audience.model_data (+ USAGE)"
q "CREATE ROLE scorer" "GRANT USAGE ON SCHEMA audience TO scorer" "GRANT SELECT ON audience.catalogs, audience.model_data, audience.catalog_values TO scorer"
expect_ok scorer "recommend_audience" "SELECT count(*) FROM audience.recommend_audience('brand', 'Nike', 5, catalog => 'shop')"
expect_ok scorer "explain" "SELECT count(*) FROM audience.explain('shop', '$TOP_USER', 'brand', 'Nike', 5)"
expect_ok scorer "view catalog_values with SELECT on the view only" "SELECT count(*) FROM audience.catalog_values"
expect_denied scorer "view catalog_overview (no SELECT on it)" "SELECT count(*) FROM audience.catalog_overview"
expect_denied scorer "audience.models (no SELECT on it)" "SELECT count(*) FROM audience.models"

t_say "editor (the minimal editing grants + SELECT on every source): the control"
expect_ok editor "create_catalog" "SELECT audience.create_catalog('ed_cat', is_default => false)"
expect_ok editor "add_event on demo.tracks" "SELECT audience.add_event('ed_cat', 'demo.tracks', 'product_id', event_column => 'event', event_value => 'order_completed', weight => 5)"
expect_ok editor "map_property" "SELECT audience.map_property('ed_cat', 'brand', column_name => 'brand', products => 'demo.products')"
expect_ok editor "build of its own catalog" "SELECT rows_read FROM audience.build('ed_cat')"
expect_ok editor "build of catalog 'shop' (registered by the superuser)" "SELECT rows_read FROM audience.build('shop')"
expect_ok editor "save_audience" "SELECT members FROM audience.save_audience('ed_aud', 'brand', 'Sony', 5, catalog => 'shop')"
expect_ok editor "refresh_audience" "SELECT members FROM audience.refresh_audience('nike_top')"
q "INSERT INTO demo.tracks (user_id, event, product_id, properties, \"timestamp\")
   SELECT user_id, event, product_id, properties, \"timestamp\" + interval '1 day' FROM demo.tracks ORDER BY \"timestamp\" DESC LIMIT 20" >/dev/null
expect_denied nosel "build_incremental of 'shop' (reads demo.tracks)" "SELECT * FROM audience.build_incremental('shop')"
expect_ok editor "build_incremental of catalog 'shop' (20 new events)" "SELECT new_rows FROM audience.build_incremental('shop')"
expect_ok editor "drop_audience" "SELECT audience.drop_audience('ed_aud')"

t_say "nosel: the editor's grants without SELECT ON demo.tracks"
expect_denied nosel "add_event on demo.tracks" "SELECT audience.add_event('shop', 'demo.tracks', 'product_id', event_column => 'event', event_value => 'product_viewed', weight => 1, name => 'views2')"
expect_denied nosel "build of 'shop' (reads demo.tracks; registered by someone else)" "SELECT * FROM audience.build('shop')"
expect_denied nosel "the affinity aggregate on demo.tracks" "SELECT audience.affinity(user_id::text, product_id, 1, \"timestamp\", NULL, NULL) FROM demo.tracks"
expect_denied nosel "forget_user (needs DELETE on audience.audience_changes)" "SELECT * FROM audience.forget_user('$TOP_USER', rebuild => false)"
t_eq "the failed build left the model in place" "$(q "SELECT count(*) FROM audience.models m JOIN audience.catalogs c ON c.active_model_id = m.model_id WHERE c.name = 'shop'")" 1
expect_ok nosel "create_catalog + add_event on demo.wishlist_saves (readable)" "SELECT audience.create_catalog('ns_cat', is_default => false)" \
    "SELECT audience.add_event('ns_cat', 'demo.wishlist_saves', 'sku', event_time => 'saved_at')"
expect_ok nosel "build of a catalog on sources it can read" "SELECT rows_read FROM audience.build('ns_cat')"
# By design, reading the model needs only audience.* privileges:
out="$(as nosel "SELECT count(*) FROM audience.explain('shop', '$TOP_USER', 'brand', 'Nike', 5)" 2>&1 || true)"
t_meas "nosel can still run explain() on catalog 'shop' (model-derived, per-user items): $out rows"

t_say "CREATE EXTENSION refuses a schema 'audience' that another (non-superuser) role prepared"
q "CREATE DATABASE planted" "CREATE ROLE mallory"
res="$(DB=planted q_err "CREATE SCHEMA audience AUTHORIZATION mallory" "CREATE EXTENSION pg_audience")"
t_eq "CREATE EXTENSION into mallory's schema audience: SQLSTATE" "${res%%$'\t'*}" 42501
t_meas "${res#*$'\t'}"
t_eq "nothing was installed" "$(DB=planted q "SELECT count(*) FROM pg_extension WHERE extname = 'pg_audience'")" 0
res="$(DB=planted q_err "ALTER SCHEMA audience OWNER TO CURRENT_USER" "CREATE EXTENSION pg_audience" "SELECT audience.version()")"
t_eq "after ALTER SCHEMA audience OWNER TO the installer, it installs" "$res" OK
q "DROP DATABASE planted" "DROP ROLE mallory"

t_check_server_log
t_finish
