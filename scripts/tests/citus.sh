#!/usr/bin/env bash
# Scenario: builds on Citus tables. A coordinator and two workers (three local clusters with
# shared_preload_libraries = citus); the demo shop's events (tracks + wishlist_saves) copied into
# one schema per layout:
#   hash       both tables distributed by user id (32 shards each), co-located
#   apart      both distributed by user id, not co-located (colocate_with => 'none')
#   single     both single-shard tables (create_distributed_table(t, NULL)): the aggregate's
#              final step runs on a worker, in another session than the build
#   mixed      tracks distributed by user id, wishlist_saves a local table on the coordinator
# Every layout must build (no XX000 "the scan's state was lost"), aggregate on the workers (one
# aggregate per source: no rows pulled to the coordinator), and give the same audiences as the
# same events in local tables for every brand; the scan's plan is printed.
#
# SKIPPED (exit 77) when citus.so is not installed into the PostgreSQL under test: Citus needs
# PostgreSQL 16-18 and is not packaged for Debian 12. bench/citus.sh CITUS_SOURCE_DIR builds it
# into the PostgreSQL 18 of scripts/pg18.sh and runs this scenario there:
#     PGA_PG=pg18 PGA_PG_CONFIG="$(scripts/pg18.sh pg_config)" scripts/tests/citus.sh
# Env: CITUS_TEST_EVENTS (300000), CITUS_KEEP=1 leaves the clusters running.
set -euo pipefail
PGA_SCRIPT=citus
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=scripts/pg.sh
source scripts/pg.sh
if [[ ! -f "$("$(pga_pg_config)" --pkglibdir)/citus.so" ]]; then
    echo "skipped: Citus is not installed into $("$(pga_pg_config)" --version) (bench/citus.sh CITUS_SOURCE_DIR builds it into the PostgreSQL 18 of scripts/pg18.sh)"
    exit "$PGA_EXIT_SKIPPED"
fi
# shellcheck source=scripts/tests/_lib.sh
source scripts/tests/_lib.sh
# shellcheck source=scripts/tests/_citus.sh
source scripts/tests/_citus.sh

EVENTS="${CITUS_TEST_EVENTS:-300000}"
citus_cluster t-citus
T_LOG="$(pga_cluster_log "$CL")"

t_say "setup: demo shop with $EVENTS events in local tables (schema demo), then one schema per layout"
q "SELECT count(*) FROM audience.generate_demo_shop('demo', $((EVENTS / 20)), $((EVENTS / 150 + 50)), $EVENTS)" >/dev/null
for layout in hash apart single mixed; do
    citus_layout demo "$layout"
done
t_meas "$(q "SELECT string_agg(format('%s: %s', logicalrelid, CASE WHEN partmethod = 'h' THEN 'hash' WHEN partkey IS NULL THEN 'single-shard' ELSE partmethod::text END), ', ' ORDER BY logicalrelid::text) FROM pg_dist_partition WHERE logicalrelid::text LIKE ANY (ARRAY['hash.%', 'apart.%', 'single.%', 'mixed.%'])")"

t_say "local tables: the reference"
t_register_shop local demo
q "SELECT audience.build('local', tune => false)" >/dev/null
# The audiences of every brand, one line per brand: brand, md5 of the ranked users, count.
audiences() {
    q "SELECT b.brand || ' ' || (SELECT md5(string_agg(user_id || ':' || rank, ',' ORDER BY rank)) || ' ' || count(*)
         FROM audience.recommend_audience('brand', b.brand, 10, catalog => '$1'))
       FROM (SELECT DISTINCT brand FROM demo.products) b ORDER BY b.brand"
}
audiences local >"$T_TMP/local.txt"
# How the active model of catalog $1 was built: rows, scan seconds, how the state came over.
scan_of() {
    q "SELECT format('%s rows, scan %s s (state: %s)', rows_read, round((stats->'seconds'->>'scan')::numeric, 2), stats->>'scan_state')
       FROM audience.models m JOIN audience.catalogs c ON c.active_model_id = m.model_id WHERE c.name = '$1'"
}
t_meas "$(wc -l <"$T_TMP/local.txt") brands; $(scan_of local)"

for layout in hash apart single mixed; do
    t_say "layout $layout"
    t_register_shop "$layout" "$layout"
    plan="$(citus_scan_plan "$layout")"
    if [[ "$layout" == hash ]]; then
        t_meas "the scan's plan on the hash layout:"
        sed 's/^/      /' <<<"$plan"
    fi
    if [[ "$layout" != single ]]; then
        t_eq "$layout: the plan aggregates on the workers (no rows pulled to the coordinator)" \
            "$(grep -c -E 'read_intermediate_result|Distributed Subplan' <<<"$plan" || true)" 0
    fi
    t_meas "scan plan: $(grep -o -E "Custom Scan \(Citus [A-Za-z]+\)|Partial Aggregate|worker_binary_partial_agg|coord_binary_combine_agg|Task Count: [0-9]+|read_intermediate_result" <<<"$plan" | sort | uniq -c | tr -s ' ' | paste -sd ',' -)"
    out="$(pga_psql "$CL" -Atq -v VERBOSITY=verbose -v ON_ERROR_STOP=0 -c "SET client_min_messages = notice" \
        -c "SELECT 'built ' || rows_read FROM audience.build('$layout', tune => false)" 2>&1)"
    st="$(t_sqlstate_of <<<"$out")"
    t_eq "$layout: the build succeeds" "${st%%$'\t'*}" NOERROR
    t_eq "$layout: it reads the same rows as the local tables" "$(sed -n 's/^built //p' <<<"$out")" \
        "$(q "SELECT rows_read FROM audience.models m JOIN audience.catalogs c ON c.active_model_id = m.model_id WHERE c.name = 'local'")"
    t_meas "$layout: $(scan_of "$layout")"
    audiences "$layout" >"$T_TMP/$layout.txt"
    t_eq "$layout: the audience of every brand equals the local one (brands differing)" \
        "$(diff "$T_TMP/local.txt" "$T_TMP/$layout.txt" | grep -c '^>' || true)" 0
done

t_check_server_log
t_finish
