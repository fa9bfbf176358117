#!/usr/bin/env bash
# Scenario: pg_dump -Fc / pg_restore of a database using pg_audience.
# Source database: demo shop (small) in schema demo, catalog "shop" with a model built with
# remembered settings, two saved audiences with history (entered/left rows). Restored twice:
# plain pg_restore into "dst" and pg_restore -j 2 into "dst_j". In each restored database:
#   - the extension's tables are extension members again (not plain tables) and hold the same
#     rows (catalog views, raw tables, model bytes compared by md5);
#   - recommend_audience and explain return the same users as before (md5 of ordered results);
#   - refresh_audience works (and finds no change), build works with the remembered settings,
#     new catalogs / audiences get fresh ids (sequences restored).
# Both a serial and a parallel (`pg_restore -j 2`) restore are checked: the extension's tables have
# no foreign keys between them (deletes cascade through triggers), because parallel restore loads
# configuration tables in any order while the extension's constraints already exist.
set -euo pipefail
PGA_SCRIPT=dump_restore
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=scripts/tests/_lib.sh
source scripts/tests/_lib.sh

t_cluster_fresh t-dump-restore
BIN="$PGA_BINDIR"
pga_psql "$CL" -q -c "CREATE DATABASE src"
DB=src
t_create_extension src

t_say "source database: demo shop, catalog, model, saved audiences with history"
q "SET client_min_messages = warning" "SELECT count(*) FROM audience.generate_demo_shop('demo', 5000, 500, 100000)" >/dev/null
t_register_shop shop demo
q "SELECT model_id FROM audience.build('shop')" >/dev/null
q "SET client_min_messages = warning" \
  "SELECT * FROM audience.save_audience('nike_top', 'brand', 'Nike', 5, catalog => 'shop')" \
  "SELECT * FROM audience.save_audience('apple_new', 'brand', ARRAY['Apple', 'Beats'], 10, catalog => 'shop', exclude_engaged => true)" >/dev/null
# A rebuild with other (remembered) settings changes the audiences: history gets entered/left rows.
q "SELECT model_id FROM audience.build('shop', factors => 16, prior => 5)" >/dev/null
q "SET client_min_messages = warning" "SELECT * FROM audience.refresh_all_audiences()" >/dev/null
hist="$(q "SELECT count(*) FILTER (WHERE change = 'entered') || ' entered, ' || count(*) FILTER (WHERE change = 'left') || ' left' FROM audience.audience_changes")"
t_meas "history rows in the source: $hist"
t_eq "the source has history with both kinds of change" "$(q "SELECT count(DISTINCT change) = 2 FROM audience.audience_changes")" t

# The state compared between source and restored databases, one "name md5" line each.
state_sql="
SELECT name || ' ' || coalesce(h, 'empty') FROM (
  SELECT 'view catalog_overview' AS name, md5(string_agg(x::text, E'\n' ORDER BY x::text)) AS h FROM audience.catalog_overview x
  UNION ALL SELECT 'view catalog_events', md5(string_agg(x::text, E'\n' ORDER BY x::text)) FROM audience.catalog_events x
  UNION ALL SELECT 'view catalog_properties', md5(string_agg(x::text, E'\n' ORDER BY x::text)) FROM audience.catalog_properties x
  UNION ALL SELECT 'view catalog_values', md5(string_agg(x::text, E'\n' ORDER BY x::text)) FROM audience.catalog_values x
  UNION ALL SELECT 'table catalogs', md5(string_agg(x::text, E'\n' ORDER BY x::text)) FROM audience.catalogs x
  UNION ALL SELECT 'table models', md5(string_agg(x::text, E'\n' ORDER BY x::text)) FROM audience.models x
  UNION ALL SELECT 'table model_data', md5(string_agg(model_id || '/' || part || '/' || chunk || '/' || md5(data), ',' ORDER BY model_id, part, chunk)) FROM audience.model_data
  UNION ALL SELECT 'table saved_audiences', md5(string_agg(x::text, E'\n' ORDER BY x::text)) FROM audience.saved_audiences x
  UNION ALL SELECT 'table audience_members', md5(string_agg(x::text, E'\n' ORDER BY x::text)) FROM audience.audience_members x
  UNION ALL SELECT 'table audience_changes', md5(string_agg(x::text, E'\n' ORDER BY x::text)) FROM audience.audience_changes x
  UNION ALL SELECT 'rows demo.tracks', count(*)::text FROM demo.tracks
  UNION ALL SELECT 'extension member relations', count(*)::text FROM pg_depend d JOIN pg_extension e ON e.oid = d.refobjid
         WHERE e.extname = 'pg_audience' AND d.classid = 'pg_class'::regclass AND d.deptype = 'e'
  UNION ALL SELECT 'audience nike_top', (SELECT md5(string_agg(user_id || ':' || rank, ',' ORDER BY rank)) || ' n=' || count(*) FROM audience.recommend_audience('brand', 'Nike', 5, catalog => 'shop'))
  UNION ALL SELECT 'audience apple_new', (SELECT md5(string_agg(user_id || ':' || rank, ',' ORDER BY rank)) || ' n=' || count(*) FROM audience.recommend_audience('brand', ARRAY['Apple', 'Beats'], 10, catalog => 'shop', exclude_engaged => true))
  UNION ALL SELECT 'explain top user', (SELECT md5(string_agg(x::text, ',' ORDER BY x.contribution DESC, x.item_id)) FROM audience.explain('shop',
         (SELECT user_id FROM audience.recommend_audience('brand', 'Nike', 5, catalog => 'shop') ORDER BY rank LIMIT 1), 'brand', 'Nike', 5) x)
) s ORDER BY name"
SRC_STATE="$(q "$state_sql")"
printf '%s\n' "$SRC_STATE" | sed 's/^/      src: /'

t_say "pg_dump -Fc"
DUMP="$T_TMP/src.dump"
t0="$(t_now)"
PGHOST="$(pga_cluster_sockdir "$CL")" PGPORT="$(pga_cluster_port "$CL")" PGUSER=postgres \
    "$BIN/pg_dump" -Fc -d src -f "$DUMP" 2>"$T_TMP/pg_dump.err" || t_die "pg_dump failed: $(cat "$T_TMP/pg_dump.err")"
t_meas "pg_dump: $(t_ms "$t0" "$(t_now)") ms, $(du -h "$DUMP" | cut -f1); stderr: $(tr '\n' ' ' <"$T_TMP/pg_dump.err")"
t_check "pg_dump printed no warnings" test ! -s "$T_TMP/pg_dump.err"
"$BIN/pg_restore" -l "$DUMP" >"$T_TMP/toc.txt"
t_eq "the dump holds no CREATE TABLE for the extension's tables (they come with CREATE EXTENSION)" \
    "$(grep -cE ' TABLE audience ' "$T_TMP/toc.txt" || true)" 0
t_meas "TABLE DATA entries for schema audience: $(grep -cE 'TABLE DATA audience ' "$T_TMP/toc.txt" || true); SEQUENCE SET: $(grep -cE 'SEQUENCE SET audience ' "$T_TMP/toc.txt" || true)"

for target in dst:"" dst_j:"-j 2"; do
    tdb="${target%%:*}"
    jobs="${target#*:}"
    t_say "pg_restore ${jobs:+$jobs }into database $tdb"
    DB=postgres
    q "CREATE DATABASE $tdb"
    t0="$(t_now)"
    rc=0
    # shellcheck disable=SC2086
    PGHOST="$(pga_cluster_sockdir "$CL")" PGPORT="$(pga_cluster_port "$CL")" PGUSER=postgres \
        "$BIN/pg_restore" $jobs --exit-on-error -d "$tdb" "$DUMP" 2>"$T_TMP/restore_$tdb.err" || rc=$?
    t_meas "pg_restore: exit $rc, $(t_ms "$t0" "$(t_now)") ms; stderr: $(head -c 600 "$T_TMP/restore_$tdb.err" | tr '\n' ' ')"
    t_eq "pg_restore ${jobs:+$jobs }into $tdb exits 0" "$rc" 0
    t_check "pg_restore into $tdb printed no errors or warnings" test ! -s "$T_TMP/restore_$tdb.err"
    DB="$tdb"
    got="$(q "$state_sql" 2>&1)" || t_fail "reading the restored state failed: $got"
    while IFS= read -r line; do
        name="${line% *}"
        want="$(grep -F "$name " <<<"$SRC_STATE" | head -n1)"
        t_eq "$tdb: $name" "$line" "$want"
    done <<<"$got"

    ref="$(q "SET client_min_messages = warning" "SELECT audience || ' ' || members || ' ' || entered || ' ' || \"left\" FROM audience.refresh_all_audiences()" 2>&1)" ||
        t_fail "$tdb: refresh_all_audiences failed: $ref"
    t_meas "$tdb: refresh: $(tr '\n' ';' <<<"$ref")"
    t_eq "$tdb: refresh finds no change (same model)" "$(awk '{ s += $3 + $4 } END { print s + 0 }' <<<"$ref")" 0
    old_max="$(q "SELECT max(model_id) FROM audience.models")"
    b="$(q "SELECT model_id || ' ' || rows_read FROM audience.build('shop')" 2>&1)" || t_fail "$tdb: build failed: $b"
    t_meas "$tdb: build -> model/rows_read $b"
    t_check "$tdb: the new model id is above the restored ones (sequence restored)" test "${b%% *}" -gt "$old_max"
    t_eq "$tdb: the build used the remembered settings" \
        "$(q "SELECT params FROM audience.models WHERE model_id = ${b%% *}")" \
        "$(DB=src q "SELECT m.params FROM audience.models m JOIN audience.catalogs c ON c.active_model_id = m.model_id")"
    t_eq "$tdb: exactly one model remains" "$(q "SELECT count(*) FROM audience.models")" 1
    t_eq "$tdb: the rebuilt model gives the same Nike audience" \
        "$(q "SELECT md5(string_agg(user_id || ':' || rank, ',' ORDER BY rank)) || ' n=' || count(*) FROM audience.recommend_audience('brand', 'Nike', 5, catalog => 'shop')")" \
        "$(grep '^audience nike_top ' <<<"$SRC_STATE" | cut -d' ' -f3-)"
    ids="$(q "SET client_min_messages = warning" "SELECT audience.create_catalog('other_$tdb')" \
        "SELECT audience_id FROM audience.saved_audiences WHERE name = 'nike_top'" 2>&1)" || t_fail "$tdb: create_catalog failed: $ids"
    t_check "$tdb: a new catalog gets a fresh id ($(head -n1 <<<"$ids"))" test "$(head -n1 <<<"$ids")" -gt 1
    sa="$(q "SET client_min_messages = warning" "SELECT members FROM audience.save_audience('third', 'brand', 'Sony', 5, catalog => 'shop')" 2>&1)" ||
        t_fail "$tdb: save_audience of a new audience failed: $sa"
    t_check "$tdb: save_audience of a new audience works ($sa members)" test "${sa:-0}" -gt 0
done

t_check_server_log
t_finish
