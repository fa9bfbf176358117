#!/usr/bin/env bash
# Incremental builds at scale (a benchmark, not a test), after `BENCH_KEEP=1 bench/scale.sh` (same
# USERS/PRODUCTS/EVENTS: the shop, its catalog and an active model built by it).
#
#   BENCH_KEEP=1 BENCH_SKIP_IMPLICIT=1 BENCH_SKIP_CANCEL=1 BENCH_SKIP_FRESH=1 bench/scale.sh
#   bench/incremental.sh
#
# 1. Indexes the sources' time columns (as bench/scale.sh (f)), turns reading events between
#    builds off (audiences then rank the models alone), builds in full without automatic tuning
#    (tune => false, remembered: every build below uses the same knobs, so the comparison in 3.
#    shows what the incremental build changes, not a new tuning) and keeps the top-5% audiences
#    of the three most popular brands ("before").
# 2. Batch 1: 1% new events, copies of a 1% sample of tracks stamped after the model's latest
#    event, one in ten by a user the model does not know (as (f)). audience.build_incremental
#    with knn => true (the similarities computed again): seconds per phase (the model's stats),
#    peak memory (VmHWM, and the private RssAnon sampled every 0.1 s); its audiences ("grown").
# 3. A full build over the same events: its seconds and audiences ("full"). Prints the share of each full-build audience that the grown
#    model's and the model before hold.
# 4. Batch 2 (another 1%), on top of the full build: build_incremental() (the default keeps the
#    similarities at 1% more pairs), then a full build again, compared as in 3.
# 5. Deletes the new rows (vacuumed, their index entries too) and turns reading events between
#    builds back on.
# Env: USERS, PRODUCTS, EVENTS (as bench/scale.sh), BENCH_CLUSTER (bench-scale), BENCH_OUT.
set -euo pipefail
PGA_SCRIPT=bench-incremental
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/pg.sh
source scripts/pg.sh

USERS="${USERS:-1000000}"
PRODUCTS="${PRODUCTS:-50000}"
EVENTS="${EVENTS:-20000000}"
CL="${BENCH_CLUSTER:-bench-scale}"
SCH="shop_u${USERS}_p${PRODUCTS}_e${EVENTS}"
CAT="$SCH"
OUT="${BENCH_OUT:-$REPO_ROOT/target/bench/scale-u${USERS}-p${PRODUCTS}-e${EVENTS}}"
mkdir -p "$OUT"
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
q() { pga_psql "$CL" -Atq "$@"; }
hr() { printf '\n\033[1;36m== %s\033[0m\n' "$*"; }
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }

pga_cluster_start "$CL" "shared_buffers = 2GB" "max_parallel_workers_per_gather = 2" "max_wal_size = 20GB" >&2
[[ "$(q -c "SELECT count(*) FROM audience.catalogs WHERE name = '$CAT' AND active_model_id IS NOT NULL")" == 1 ]] ||
    pga_die "no built catalog $CAT in cluster $CL: run BENCH_KEEP=1 bench/scale.sh first"

hr "setup: time indexes, events between builds off, a full build without tuning, its audiences"
q -c "CREATE INDEX IF NOT EXISTS tracks_timestamp ON $SCH.tracks (\"timestamp\")" \
  -c "CREATE INDEX IF NOT EXISTS wishlist_saves_saved_at ON $SCH.wishlist_saves (saved_at)" \
  -c "SELECT 1 FROM audience.set_fresh_events('$CAT', 'off')" >/dev/null
# Every timed build meets the table of stored models vacuumed and no dirty buffers of the build
# before (pga_bench_settle; see bench/build_ab.sh).
pga_bench_compact "$CL"
pga_bench_settle "$CL"
base_total="$(q -c "SELECT round(seconds::numeric, 1) FROM audience.build('$CAT', tune => false)")"
mapfile -t BRANDS < <(q -c "SELECT value FROM audience.catalog_values WHERE catalog = '$CAT' AND property = 'brand' ORDER BY users DESC, value LIMIT 3")
q -c "DROP TABLE IF EXISTS public.bench_incr_audiences" \
  -c "CREATE TABLE public.bench_incr_audiences (model text, brand text, user_id text)"
keep() { # label: the top-5% audiences of the brands, as the active model ranks them
    local b
    for b in "${BRANDS[@]}"; do
        q -c "INSERT INTO public.bench_incr_audiences SELECT '$1', '${b//\'/\'\'}', user_id FROM audience.recommend_audience('brand', '${b//\'/\'\'}', 5, catalog => '$CAT')"
    done
}
keep before
first_new_us="$(q -c "SELECT stats->>'last_event_us' FROM audience.models m JOIN audience.catalogs c ON c.active_model_id = m.model_id WHERE c.name = '$CAT'")"

batch() { # seed: 1% new events after the active model's latest; prints how many
    local last
    last="$(q -c "SELECT stats->>'last_event_us' FROM audience.models m JOIN audience.catalogs c ON c.active_model_id = m.model_id WHERE c.name = '$CAT'")"
    q -c "WITH s AS (SELECT * FROM $SCH.tracks TABLESAMPLE SYSTEM (1) REPEATABLE ($1)
                      WHERE \"timestamp\" <= to_timestamp($first_new_us / 1e6 + 946684800))
        INSERT INTO $SCH.tracks (user_id, event, product_id, properties, \"timestamp\")
        SELECT CASE WHEN s.id % 10 = 0 THEN s.user_id + 100000000 ELSE s.user_id END, s.event, s.product_id, s.properties,
               to_timestamp($last / 1e6 + 946684800) + (1 + s.id % 86400) * interval '1 second'
          FROM s RETURNING 1" | wc -l
}
incremental() { # extra arguments of build_incremental
    local row t0 id
    pga_bench_settle "$CL"
    t0="$(now)"
    rm -f "$OUT/incremental.row" "$OUT/incremental.rc"
    (PGAPPNAME=bench_incremental q -F ' ' -c "SET client_min_messages = debug1" -c "SELECT model_id, new_rows, users, new_users, new_items, round(seconds::numeric, 2) FROM audience.build_incremental('$CAT'$1)" \
        >"$OUT/incremental.row" 2>"$OUT/incremental_debug.txt"; echo $? >"$OUT/incremental.rc") &
    # Its private memory (RssAnon; VmHWM in the stats also counts the mapped image and shared buffers).
    local bpid=$! bpg="" a max_anon_kb=0
    while [[ ! -s "$OUT/incremental.rc" ]]; do
        [[ -n "$bpg" ]] || bpg="$(q -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'bench_incremental' AND backend_type = 'client backend' LIMIT 1" 2>/dev/null || true)"
        if [[ -n "$bpg" ]]; then
            a="$(awk '/^RssAnon:/ { print $2 }' "/proc/$bpg/status" 2>/dev/null || echo 0)"
            ((${a:-0} > max_anon_kb)) && max_anon_kb="$a"
        fi
        sleep 0.1
    done
    wait "$bpid" || true
    [[ "$(cat "$OUT/incremental.rc")" == 0 ]] || { cat "$OUT/incremental_debug.txt"; pga_die "build_incremental failed"; }
    row="$(cat "$OUT/incremental.row")"
    read -r id new users new_users new_items s <<<"$row"
    echo "build_incremental('$CAT'$1): model $id, $new new rows, $users users ($new_users new), $new_items new items: ${s} s (client $(secs "$t0" "$(now)") s); peak private memory (RssAnon, sampled) $((max_anon_kb / 1024)) MB"
    q -c "SELECT 'phases: scan ' || round((stats->'seconds'->>'scan')::numeric, 2) || ' s, merge ' || round((stats->'seconds'->>'merge')::numeric, 2)
                 || ' s, als ' || round((stats->'seconds'->>'als')::numeric, 2) || ' s, knn ' || round((stats->'seconds'->>'knn')::numeric, 2)
                 || ' s, store ' || round((stats->'seconds'->>'store')::numeric, 2) || ' s; peak RSS ' || pg_size_pretty((stats->>'peak_rss_bytes')::bigint)
                 || '; users with new events ' || (stats->'incremental'->>'users_with_new_events')
                 || '; rescale error bound ' || round((stats->'incremental'->>'rescale_error_bound')::numeric, 4)
            FROM audience.models WHERE model_id = $id"
    grep -o -E '(audience: (scan query|stored model).*|grew model.*)' "$OUT/incremental_debug.txt" || true
}

held() { # reference, grown, before: the share of each reference audience the other two hold
    q -c "SELECT 'top-5% audience of ' || f.brand || ': ' || count(*) || ' users; held by the grown model ' ||
                 round(100.0 * count(g.user_id) / count(*), 1) || '%, by the model before ' || round(100.0 * count(b.user_id) / count(*), 1) || '%'
            FROM public.bench_incr_audiences f
            LEFT JOIN public.bench_incr_audiences g ON g.model = '$2' AND g.brand = f.brand AND g.user_id = f.user_id
            LEFT JOIN public.bench_incr_audiences b ON b.model = '$3' AND b.brand = f.brand AND b.user_id = f.user_id
           WHERE f.model = '$1' GROUP BY f.brand ORDER BY count(*) DESC"
}

{
    hr "batch 1 (the full build before took $base_total s)"
    echo "inserted $(batch 7) new event rows"
    q -c "ANALYZE $SCH.tracks"
    incremental ", knn => true"
    keep grown

    hr "a full build over the same events"
    pga_bench_settle "$CL"
    t0="$(now)"
    q -F ' ' -c "SELECT 'build: model ' || model_id || ', ' || users || ' users, ' || round(seconds::numeric, 1) || ' s' FROM audience.build('$CAT')"
    keep full
    held full grown before

    hr "batch 2, the default (keeps the item-kNN at 1% more pairs)"
    echo "inserted $(batch 8) new event rows"
    q -c "ANALYZE $SCH.tracks"
    incremental ""
    keep grown2
    pga_bench_settle "$CL"
    q -F ' ' -c "SELECT 'build: model ' || model_id || ', ' || users || ' users, ' || round(seconds::numeric, 1) || ' s' FROM audience.build('$CAT')"
    keep full2
    held full2 grown2 full
} | tee "$OUT/incremental.txt"


hr "cleanup"
t0="$(now)"
q -c "DELETE FROM $SCH.tracks WHERE \"timestamp\" > to_timestamp($first_new_us / 1e6 + 946684800)" \
  -c "SELECT 1 FROM audience.set_fresh_events('$CAT', 'auto')" -c "DROP TABLE public.bench_incr_audiences" >/dev/null
echo "new rows deleted in $(secs "$t0" "$(now)") s (the active model is the last full build over them: bench/scale.sh builds anew)"
# Their index entries too: VACUUM skips the indexes when under 2% of the pages have dead rows, and
# the entries left past the model's latest event would be walked by every session's check for
# new events (30-50 ms instead of 2-10 ms), skewing bench/serving.sh after this benchmark.
q -c "VACUUM (INDEX_CLEANUP ON, ANALYZE) $SCH.tracks" >/dev/null
