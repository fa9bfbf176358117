#!/usr/bin/env bash
# THE scale benchmark of pg_audience (not a test): the demo shop at scale, built in the database,
# against exporting the same user-item weights, training `implicit` ALS and loading the factors
# back.
#
#   bench/scale.sh                                            # 1M users, 50k products, 20M events
#   USERS=200000 PRODUCTS=20000 EVENTS=4000000 bench/scale.sh # quicker
#
# Env: USERS, PRODUCTS, EVENTS, MONTHS (6), SEED (0.42): the shop (generated once per size into
# schema shop_u<USERS>_p<PRODUCTS>_e<EVENTS> and reused while it exists); BENCH_CLUSTER
# (bench-scale); BENCH_KEEP=1 leaves the cluster running; BENCH_SKIP_IMPLICIT=1 skips (d);
# BENCH_SKIP_CANCEL=1 skips (e), CANCEL_IN="scan:5 tune:20 als:10 knn:3 store:2" sets where (e)
# cancels (seconds into each build phase); BENCH_ONLY_CANCEL=1 runs (e) alone (the catalog is
# registered afresh, so without an active model to keep); BENCH_SKIP_FRESH=1 skips (f),
# BENCH_ONLY_FRESH=1 runs (f) alone (after a build with tune => false); BENCH_REPEATED=1 times (b)'s
# warm calls as the very same call repeated (the session's memo of rankings) instead of computed;
# BENCH_OUT (target/bench/scale-<size>): CSV files and the JSON summary.
# Cluster: shared_buffers=2GB, max_parallel_workers_per_gather=2, max_wal_size=20GB.
#
# Prints: (a) audience.build: rows_read, scan rows/s, seconds per phase, peak RSS, and whether
# the scan ran with parallel workers (sampled from pg_stat_activity during the build);
# (b) recommend_audience('brand', <most popular brand>, 5): first call (cold: loads the model)
# and 10 warm calls, min/median; (c) EXPLAIN of the build's scan query; (d) the comparison:
# in-database build vs \copy of the weighted user-item sums to CSV + bench/implicit_baseline.sh
# scale (ALS, 32 factors, 10 iterations, 2 threads, factors written to CSV) + \copy of the
# factors back into tables.
set -euo pipefail
PGA_SCRIPT=bench-scale
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/pg.sh
source scripts/pg.sh

USERS="${USERS:-1000000}"
PRODUCTS="${PRODUCTS:-50000}"
EVENTS="${EVENTS:-20000000}"
MONTHS="${MONTHS:-6}"
SEED="${SEED:-0.42}"
CL="${BENCH_CLUSTER:-bench-scale}"
SCH="shop_u${USERS}_p${PRODUCTS}_e${EVENTS}"
CAT="$SCH"
OUT="${BENCH_OUT:-$REPO_ROOT/target/bench/scale-u${USERS}-p${PRODUCTS}-e${EVENTS}}"
mkdir -p "$OUT"
chmod 0777 "$OUT"

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
# NOTICEs (a build reports its automatic tuning as one) would land in captured values.
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
q() { pga_psql "$CL" -Atq "$@"; }
hr() { printf '\n\033[1;36m== %s\033[0m\n' "$*"; }
load() { cut -d' ' -f1-3 /proc/loadavg; }

hr "cluster $CL (load average $(load), $(nproc) CPUs, $(free -g | awk '/^Mem:/ { print $2 " GB RAM, " $7 " GB available" }'))"
pga_cluster_start "$CL" "shared_buffers = 2GB" "max_parallel_workers_per_gather = 2" "max_wal_size = 20GB" >&2
if [[ "${BENCH_KEEP:-}" != 1 ]]; then pga_on_exit "pga_cluster_stop '$CL'"; fi
# A fresh extension every run (the shop tables are not part of it): the installed library and
# its SQL always match.
q -c "SET client_min_messages = warning" -c "DROP EXTENSION IF EXISTS pg_audience CASCADE" -c "CREATE EXTENSION pg_audience"
q -c "CREATE TABLE IF NOT EXISTS public.bench_shops (schema_name text PRIMARY KEY, users int, products int, events bigint,
        months int, seed float8, gen_seconds float8, generated_at timestamptz DEFAULT now())"

# ------------------------------------------------------------------ the shop
have="$(q -c "SELECT count(*) FROM public.bench_shops b WHERE schema_name = '$SCH' AND users = $USERS AND products = $PRODUCTS
                 AND events = $EVENTS AND months = $MONTHS AND seed = $SEED AND to_regclass('$SCH.tracks') IS NOT NULL")"
if [[ "$have" == 1 ]]; then
    hr "reusing shop $SCH ($(q -c "SELECT 'generated ' || generated_at::timestamp(0) || ' in ' || round(gen_seconds) || ' s' FROM public.bench_shops WHERE schema_name = '$SCH'"))"
else
    hr "generating shop $SCH: $USERS users, $PRODUCTS products, $EVENTS events, $MONTHS months (load $(load))"
    t0="$(now)"
    q -c "SET client_min_messages = warning" -c "SELECT table_name || ' ' || row_count FROM audience.generate_demo_shop('$SCH', $USERS, $PRODUCTS, $EVENTS, $MONTHS, $SEED)"
    t1="$(now)"
    q -c "VACUUM (ANALYZE) $SCH.tracks, $SCH.wishlist_saves, $SCH.products"
    gen="$(secs "$t0" "$t1")"
    echo "generated in ${gen} s, vacuumed in $(secs "$t1" "$(now)") s"
    q -c "INSERT INTO public.bench_shops (schema_name, users, products, events, months, seed, gen_seconds)
          VALUES ('$SCH', $USERS, $PRODUCTS, $EVENTS, $MONTHS, $SEED, $gen)
          ON CONFLICT (schema_name) DO UPDATE SET users = excluded.users, products = excluded.products, events = excluded.events,
             months = excluded.months, seed = excluded.seed, gen_seconds = excluded.gen_seconds, generated_at = now()"
fi
q -c "SELECT 'tracks: ' || count(*) || ' rows, ' || pg_size_pretty(pg_total_relation_size('$SCH.tracks')) FROM $SCH.tracks" \
  -c "SELECT 'wishlist_saves: ' || count(*) || ' rows; products: ' || (SELECT count(*) FROM $SCH.products) FROM $SCH.wishlist_saves"

# ------------------------------------------------------------------ the catalog (as sql/demo.sql)
q -c "SET client_min_messages = warning" \
  -c "SELECT audience.create_catalog('$CAT')" \
  -c "SELECT audience.add_event('$CAT', '$SCH.tracks', 'product_id', event_column => 'event', event_value => 'order_completed', weight => 5, half_life => '60 days')" \
  -c "SELECT audience.add_event('$CAT', '$SCH.tracks', 'product_id', event_column => 'event', event_value => 'product_added', weight => 3, half_life => '30 days')" \
  -c "SELECT audience.add_event('$CAT', '$SCH.tracks', 'product_id', event_column => 'event', event_value => 'product_viewed', weight => 1, half_life => '14 days')" \
  -c "SELECT audience.add_event('$CAT', '$SCH.wishlist_saves', 'sku', event_time => 'saved_at', weight => 2, half_life => '30 days')" \
  -c "SELECT audience.map_property('$CAT', 'brand', column_name => 'brand', products => '$SCH.products')" \
  -c "SELECT audience.map_property('$CAT', 'price_band', column_name => 'price_band', products => '$SCH.products')" \
  -c "SELECT audience.map_property('$CAT', 'category', json_key => 'category', json_column => 'properties', event => e) FROM unnest(ARRAY['order_completed', 'product_added', 'product_viewed']) e" \
  >/dev/null
CID="$(q -c "SELECT catalog_id FROM audience.catalogs WHERE name = '$CAT'")"

# (c), (a), (b): skipped with BENCH_ONLY_CANCEL=1.
measure_build_and_serving() {
# ------------------------------------------------------------------ (c) EXPLAIN first (cheap)
hr "(c) EXPLAIN of the build's scan query"
SCAN_Q="$(q -c "SELECT query FROM audience._build_query($CID, NULL, NULL, NULL)")"
q -c "EXPLAIN $SCAN_Q" | tee "$OUT/explain.txt"
if grep -q 'Workers Planned' "$OUT/explain.txt"; then
    echo "-> the planner gives the scan $(sed -n -E 's/.*Workers Planned: ([0-9]+).*/\1/p' "$OUT/explain.txt" | head -n1) parallel workers"
else
    echo "-> the planner runs the scan without parallel workers"
fi

# ------------------------------------------------------------------ (a) build
hr "(a) audience.build('$CAT') (load average before: $(load))"
rm -f "$OUT/build.out" "$OUT/build.rc"
t0="$(now)"
(PGAPPNAME=bench_build pga_psql "$CL" -At -c "SELECT model_id || ' ' || rows_read || ' ' || users || ' ' || items || ' ' || pairs || ' ' || seconds FROM audience.build('$CAT')" >"$OUT/build.out" 2>&1; echo $? >"$OUT/build.rc") &
bpid=$!
max_workers=0
max_anon_kb=0
bpg=""
# Sample: parallel workers of the build's backend, and its private memory (RssAnon: VmHWM in
# stats.peak_rss_bytes also counts the shared_buffers pages the backend touched).
while [[ ! -s "$OUT/build.rc" ]]; do
    [[ -n "$bpg" ]] || bpg="$(q -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'bench_build' AND backend_type = 'client backend' LIMIT 1" 2>/dev/null || true)"
    if [[ -n "$bpg" ]]; then
        w="$(q -c "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'parallel worker' AND leader_pid = $bpg" 2>/dev/null || echo 0)"
        ((w > max_workers)) && max_workers="$w"
        a="$(awk '/^RssAnon:/ { print $2 }' "/proc/$bpg/status" 2>/dev/null || echo 0)"
        ((${a:-0} > max_anon_kb)) && max_anon_kb="$a"
    fi
    sleep 0.25
done
wait "$bpid" || true
t1="$(now)"
[[ "$(cat "$OUT/build.rc")" == 0 ]] || { cat "$OUT/build.out"; pga_die "the build failed"; }
read -r MODEL rows users items pairs _ <"$OUT/build.out"
q -c "SELECT jsonb_pretty(stats) FROM audience.models WHERE model_id = $MODEL" >"$OUT/build_stats.json"
read -r s_scan s_products s_als s_knn s_store s_total rss state model_bytes < <(q -F ' ' -c "
    SELECT round((stats->'seconds'->>'scan')::numeric, 2), round((stats->'seconds'->>'products')::numeric, 2),
           round((stats->'seconds'->>'als')::numeric, 2), round((stats->'seconds'->>'knn')::numeric, 2),
           round((stats->'seconds'->>'store')::numeric, 2), round((stats->'seconds'->>'total')::numeric, 2),
           stats->>'peak_rss_bytes', stats->>'affinity_state_bytes',
           (SELECT sum(octet_length(data)) FROM audience.model_data d WHERE d.model_id = m.model_id)
      FROM audience.models m WHERE model_id = $MODEL")
mb() { awk -v b="$1" 'BEGIN { printf "%.0f MB", b / 1048576 }'; }
rate="$(awk -v r="$rows" -v s="$s_scan" 'BEGIN { printf "%.0f", r / s }')"
echo "model $MODEL: rows_read $rows, users $users, items $items, pairs $pairs"
echo "build total ${s_total} s (client wall $(secs "$t0" "$t1") s): scan ${s_scan} s ($rate rows/s), products ${s_products} s, als ${s_als} s, knn ${s_knn} s, store ${s_store} s"
echo "peak RSS (VmHWM, includes touched shared buffers) $(mb "$rss"); peak private memory (RssAnon, sampled) $(mb $((max_anon_kb * 1024))); affinity state $(mb "$state"); stored model $(mb "$model_bytes")"
echo "parallel workers seen during the build (max at once): $max_workers; load average after: $(load)"

# ------------------------------------------------------------------ (b) recommend latency
BRAND="$(q -c "SELECT value FROM audience.catalog_values WHERE catalog = '$CAT' AND property = 'brand' ORDER BY users DESC, value LIMIT 1")"
hr "(b) recommend_audience('brand', '$BRAND', 5): one session, first call cold, then 10 warm"
# Warm calls are computed: each passes another min_score below every score (the same audience,
# a request the session's memo of rankings has not seen); BENCH_REPEATED=1 repeats the very
# same call instead (served from that memo after the first).
latency() { # extra SQL before the calls
    local args=(-c "$1" -c '\timing on') i ms
    for i in $(seq 11); do
        ms="-$i"
        [[ "${BENCH_REPEATED:-}" == 1 ]] && ms=NULL
        args+=(-c "SELECT count(*) FROM audience.recommend_audience('brand', '${BRAND//\'/\'\'}', 5, catalog => '$CAT', min_score => $ms)")
    done
    q "${args[@]}" | sed -n -E 's/^Time: ([0-9.]+) ms.*/\1/p'
}
summarize() { # label, times (first = cold)
    local label="$1" cold="$2"
    shift 2
    printf '%s\n' "$@" | sort -g | awk -v l="$label" -v cold="$cold" '{ w[++n] = $1 } END {
        med = (n % 2) ? w[(n + 1) / 2] : (w[n / 2] + w[n / 2 + 1]) / 2
        printf "%s: cold %.1f ms; warm (n=%d) min %.1f ms, median %.1f ms, max %.1f ms\n", l, cold, n, w[1], med, w[n] }'
}
size="$(q -c "SELECT count(*) FROM audience.recommend_audience('brand', '${BRAND//\'/\'\'}', 5, catalog => '$CAT')")"
mapfile -t t_default < <(latency "SELECT 1")
summarize "audience size $size; model_cache_mb = $(q -c "LOAD 'pg_audience'" -c 'SHOW audience.model_cache_mb')" "${t_default[@]}" | tee "$OUT/latency.txt"
if ((model_bytes > 900 * 1048576)); then
    mapfile -t t_big < <(latency "SET audience.model_cache_mb = 16384")
    summarize "model_cache_mb = 16384 (the model is $(mb "$model_bytes") stored)" "${t_big[@]}" | tee -a "$OUT/latency.txt"
fi

}
if [[ "${BENCH_ONLY_CANCEL:-}" != 1 && "${BENCH_ONLY_FRESH:-}" != 1 ]]; then
    measure_build_and_serving
fi

# ------------------------------------------------------------------ (f) events since the build
# 1% new events (copies of a 1% sample of tracks, stamped after the model's latest event; one in
# ten by a user the model does not know), read at query time (audience.set_fresh_events 'auto':
# needs the index on the time columns, created here once). Reports the plain audience call (fresh
# events off) against the first call of a session with them (reads and folds them in) and the
# warm calls after it; then deletes the new rows. BENCH_ONLY_FRESH=1 runs it alone (after a
# build without automatic tuning).
measure_fresh() {
    hr "(f) audience calls with 1% new events since the build"
    t0="$(now)"
    q -c "CREATE INDEX IF NOT EXISTS tracks_timestamp ON $SCH.tracks (\"timestamp\")" \
      -c "CREATE INDEX IF NOT EXISTS wishlist_saves_saved_at ON $SCH.wishlist_saves (saved_at)"
    echo "indexes on the time columns: $(secs "$t0" "$(now)") s"
    BRAND="$(q -c "SELECT value FROM audience.catalog_values WHERE catalog = '$CAT' AND property = 'brand' ORDER BY users DESC, value LIMIT 1")"
    last="$(q -c "SELECT stats->>'last_event_us' FROM audience.models m JOIN audience.catalogs c ON c.active_model_id = m.model_id WHERE c.name = '$CAT'")"
    calls() { # extra SQL before the calls; prints the times of 1 + 10 calls in one session
        # (each computed: another min_score below every score, as in (b))
        local args=(-c "$1" -c '\timing on') i
        for i in $(seq 11); do args+=(-c "SELECT count(*) FROM audience.recommend_audience('brand', '${BRAND//\'/\'\'}', 5, catalog => '$CAT', min_score => -$i)"); done
        q "${args[@]}" | sed -n -E 's/^Time: ([0-9.]+) ms.*/\1/p'
    }
    fsum() { printf '%s\n' "$@" | tail -n +2 | sort -g | awk '{ w[++n] = $1 } END { printf "%.1f", (n % 2) ? w[(n + 1) / 2] : (w[n / 2] + w[n / 2 + 1]) / 2 }'; }
    q -c "SELECT 1 FROM audience.set_fresh_events('$CAT', 'off')" >/dev/null
    mapfile -t plain < <(calls "SELECT 1")
    t0="$(now)"
    n_new="$(q -c "WITH s AS (SELECT * FROM $SCH.tracks TABLESAMPLE SYSTEM (1) REPEATABLE (7))
        INSERT INTO $SCH.tracks (user_id, event, product_id, properties, \"timestamp\")
        SELECT CASE WHEN s.id % 10 = 0 THEN s.user_id + 100000000 ELSE s.user_id END, s.event, s.product_id, s.properties,
               to_timestamp($last / 1e6 + 946684800) + (1 + s.id % 86400) * interval '1 second'
          FROM s RETURNING 1" | wc -l)"
    q -c "ANALYZE $SCH.tracks"
    echo "inserted $n_new new event rows in $(secs "$t0" "$(now)") s"
    q -c "SELECT 1 FROM audience.set_fresh_events('$CAT', 'auto', max_rows => 10000000)" >/dev/null
    mapfile -t fresh1 < <(calls "SELECT 1")
    mapfile -t fresh2 < <(calls "SELECT 1")
    members="$(q -c "SELECT count(*) FILTER (WHERE user_id::bigint > 100000000) || ' new users of ' || count(*) FROM audience.recommend_audience('brand', '${BRAND//\'/\'\'}', 5, catalog => '$CAT')")"
    {
        echo "plain call (fresh events off): first ${plain[0]} ms, warm median $(fsum "${plain[@]}") ms"
        echo "with $n_new new rows: first call of a session ${fresh1[0]} ms (again in a new session: ${fresh2[0]} ms), warm median $(fsum "${fresh1[@]}") ms"
        awk -v a="$(fsum "${fresh1[@]}")" -v b="$(fsum "${plain[@]}")" -v c="${fresh1[0]}" 'BEGIN { printf "warm ratio %.2fx a plain call; first call of a session %.1fx\n", a / b, c / b }'
        echo "the audience (top 5%) holds $members users"
    } | tee "$OUT/fresh.txt"
    t0="$(now)"
    q -c "DELETE FROM $SCH.tracks WHERE \"timestamp\" > to_timestamp($last / 1e6 + 946684800)" -c "SELECT 1 FROM audience.set_fresh_events('$CAT', 'auto', max_rows => NULL)" >/dev/null
    echo "new rows deleted in $(secs "$t0" "$(now)") s"
}
if [[ "${BENCH_ONLY_FRESH:-}" == 1 ]]; then
    q -c "SELECT model_id FROM audience.build('$CAT', tune => false)" >/dev/null
    measure_fresh
    exit 0
fi
if [[ "${BENCH_SKIP_FRESH:-}" != 1 && "${BENCH_ONLY_CANCEL:-}" != 1 ]]; then
    measure_fresh
fi

# ------------------------------------------------------------------ (e) cancel during a build
# A second build is cancelled in each of its phases (as audience.build_progress() reports them:
# CANCEL_IN="phase:seconds-into-it ...") and once stopped by statement_timeout; each must end
# within 1 s with 57014 and keep the active model.
if [[ "${BENCH_SKIP_CANCEL:-}" != 1 ]]; then
    CANCEL_IN="${CANCEL_IN:-scan:5 tune:20 als:10 knn:3 store:2}"
    hr "(e) cancel and statement_timeout during a build (in: $CANCEL_IN)"
    q -c "CREATE TABLE IF NOT EXISTS public.bench_marks (name text, at timestamptz)" -c "TRUNCATE public.bench_marks"
    active_before="$(q -c "SELECT active_model_id FROM audience.catalogs WHERE name = '$CAT'")"
    worst=0
    for spec in $CANCEL_IN; do
        ph="${spec%%:*}"
        off="${spec##*:}"
        (PGAPPNAME=bench_cancel pga_psql "$CL" -At -v ON_ERROR_STOP=0 \
            -c "SELECT model_id FROM audience.build('$CAT')" \
            -c "INSERT INTO public.bench_marks VALUES ('end_$ph', clock_timestamp())" >"$OUT/cancel_$ph.out" 2>&1) &
        bp=$!
        bpid=""
        until [[ -n "$bpid" ]]; do
            sleep 0.1
            bpid="$(q -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'bench_cancel' AND backend_type = 'client backend'")"
        done
        until [[ "$(q -c "SELECT EXISTS (SELECT 1 FROM audience.build_progress() WHERE pid = $bpid AND phase = '$ph')")" == t ]] || ! kill -0 "$bp" 2>/dev/null; do
            sleep 0.1
        done
        sleep "$off"
        q -c "INSERT INTO public.bench_marks SELECT 'sent_$ph', clock_timestamp() FROM (SELECT pg_cancel_backend($bpid)) x"
        wait "$bp" || true
        ms="$(q -c "SELECT round(extract(epoch FROM (SELECT at FROM public.bench_marks WHERE name = 'end_$ph') - (SELECT at FROM public.bench_marks WHERE name = 'sent_$ph')) * 1000)")"
        err="$(grep -o 'ERROR:.*' "$OUT/cancel_$ph.out" | head -n1)"
        echo "cancel ${off} s into the $ph phase: cancel -> error ${ms} ms (${err:-no error: the build finished first})"
        [[ -n "$err" && "$ms" -gt "$worst" ]] && worst="$ms"
    done
    t0="$(now)"
    err="$(q -c "SET statement_timeout = '10s'" -c "SELECT model_id FROM audience.build('$CAT')" 2>&1 | grep -o 'ERROR:.*' | head -n1 || true)"
    echo "statement_timeout 10 s: the build ended after $(secs "$t0" "$(now)") s (${err:-no error})"
    active_after="$(q -c "SELECT active_model_id FROM audience.catalogs WHERE name = '$CAT'")"
    echo "active model before: $active_before, after: $active_after; slowest cancel -> error: ${worst} ms"
    if [[ "$active_before" != "$active_after" || "$worst" -gt 1000 ]]; then
        echo "FAIL: a cancelled build must stop within 1 s and keep the previous model" >&2
    fi
fi

# ------------------------------------------------------------------ (d) export + implicit + load
if [[ "${BENCH_SKIP_IMPLICIT:-}" == 1 || "${BENCH_ONLY_CANCEL:-}" == 1 ]]; then
    echo "(d) skipped (BENCH_SKIP_IMPLICIT=1)"
    exit 0
fi
hr "(d) export the same user-item weights, train implicit ALS, load the factors back"
EVT="'order_completed', 'product_added', 'product_viewed'"
EXPORT_SQL="SELECT u, i, sum(w * power(2::float8, -extract(epoch FROM ref.t - ev.t)::float8 / h)) AS affinity
  FROM (SELECT user_id::text AS u, product_id AS i,
               CASE event WHEN 'order_completed' THEN 5 WHEN 'product_added' THEN 3 ELSE 1 END::float8 AS w,
               \"timestamp\" AS t,
               CASE event WHEN 'order_completed' THEN 60 WHEN 'product_added' THEN 30 ELSE 14 END * 86400.0::float8 AS h
          FROM $SCH.tracks WHERE event IN ($EVT)
        UNION ALL
        SELECT user_id::text, sku, 2, saved_at, 30 * 86400.0 FROM $SCH.wishlist_saves) ev,
       (SELECT greatest((SELECT max(\"timestamp\") FROM $SCH.tracks WHERE event IN ($EVT)),
                        (SELECT max(saved_at) FROM $SCH.wishlist_saves)) AS t) ref
 GROUP BY u, i"
CSV="$OUT/user_item.csv"
rm -f "$CSV"
t0="$(now)"
q -c "\\copy ($EXPORT_SQL) TO '$CSV' CSV"
t_export="$(secs "$t0" "$(now)")"
n_csv="$(wc -l <"$CSV")"
echo "export: ${t_export} s, $n_csv rows, $(du -h "$CSV" | cut -f1) (in-database pairs: $pairs)"

t0="$(now)"
bench/implicit_baseline.sh scale "$CSV" --factors 32 --iterations 10 --threads 2 \
    --factors-out "$OUT/factors" --json "$OUT/implicit.json" | tee "$OUT/implicit.txt"
t_py="$(secs "$t0" "$(now)")"
read -r py_load py_train py_write py_rss < <(python3 -c "
import json; r = json.load(open('$OUT/implicit.json'))
print('%.2f %.2f %.2f %.0f' % (r['load_seconds'], r['train_seconds'], r['write_seconds'] or 0, r['peak_rss_mb']))")

q -c "DROP TABLE IF EXISTS public.bench_user_factors, public.bench_item_factors" \
  -c "CREATE TABLE public.bench_user_factors (id text, $(seq -s, 0 31 | sed -E 's/([0-9]+)/f\1 real/g'))" \
  -c "CREATE TABLE public.bench_item_factors (id text, $(seq -s, 0 31 | sed -E 's/([0-9]+)/f\1 real/g'))"
t0="$(now)"
q -c "\\copy public.bench_user_factors FROM '$OUT/factors_users.csv' CSV" -c "\\copy public.bench_item_factors FROM '$OUT/factors_items.csv' CSV"
t_load="$(secs "$t0" "$(now)")"
echo "load back: ${t_load} s ($(q -c "SELECT count(*) FROM public.bench_user_factors") user rows, $(q -c "SELECT count(*) FROM public.bench_item_factors") item rows)"

hr "summary: $SCH ($rows rows read; load average now $(load))"
t_ext="$(awk -v a="$t_export" -v b="$t_py" -v c="$t_load" 'BEGIN { printf "%.2f", a + b + c }')"
{
    printf '%-52s %10s\n' "step" "seconds"
    printf '%-52s %10s\n' "in-database audience.build (total)" "$s_total"
    printf '%-52s %10s\n' "  scan + affinity ($rate rows/s)" "$s_scan"
    printf '%-52s %10s\n' "  item properties" "$s_products"
    printf '%-52s %10s\n' "  ALS (32 factors, 10 iterations, 2 threads)" "$s_als"
    printf '%-52s %10s\n' "  item kNN" "$s_knn"
    printf '%-52s %10s\n' "  store" "$s_store"
    printf '%-52s %10s\n' "export \\copy of weighted user-item sums to CSV" "$t_export"
    printf '%-52s %10s\n' "implicit_baseline.sh scale (process wall time)" "$t_py"
    printf '%-52s %10s\n' "  CSV load + matrix" "$py_load"
    printf '%-52s %10s\n' "  ALS train (32 factors, 10 iterations, 2 threads)" "$py_train"
    printf '%-52s %10s\n' "  write factors CSV" "$py_write"
    printf '%-52s %10s\n' "\\copy factors back into tables" "$t_load"
    printf '%-52s %10s\n' "export + train + load (total)" "$t_ext"
    printf '%-52s %10s\n' "peak memory MB: build VmHWM / RssAnon / python" "$(awk -v b="$rss" 'BEGIN { printf "%.0f", b / 1048576 }') / $((max_anon_kb / 1024)) / $py_rss"
} | tee "$OUT/summary.txt"
python3 - "$OUT/summary.json" <<EOF
import json, sys
json.dump({"schema": "$SCH", "users": $USERS, "products": $PRODUCTS, "events": $EVENTS, "rows_read": $rows,
           "model_users": $users, "items": $items, "pairs": $pairs,
           "build": {"total": $s_total, "scan": $s_scan, "products": $s_products, "als": $s_als, "knn": $s_knn, "store": $s_store,
                     "scan_rows_per_s": $rate, "peak_rss_bytes": $rss, "affinity_state_bytes": $state, "model_bytes": $model_bytes,
                     "parallel_workers_seen": $max_workers, "peak_rss_anon_bytes": $((max_anon_kb * 1024))},
           "latency": open("$OUT/latency.txt").read(),
           "external": {"export": $t_export, "python_wall": $t_py, "python_load": $py_load, "train": $py_train,
                        "write": $py_write, "load_back": $t_load, "total": $t_ext, "csv_rows": $n_csv}},
          open(sys.argv[1], "w"), indent=1)
EOF
echo "(files in $OUT)"
