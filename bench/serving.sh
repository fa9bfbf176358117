#!/usr/bin/env bash
# Serving benchmark of pg_audience (not a test): audiences from the shop of bench/scale.sh, served
# by many sessions from one shared, memory-mapped copy of the model (src/api/shared.rs).
#
#   bench/scale.sh && bench/serving.sh        # 1M users, 50k products, 20M events
#   USERS=200000 PRODUCTS=20000 EVENTS=4000000 bench/serving.sh
#
# Env: USERS, PRODUCTS, EVENTS (as bench/scale.sh, whose shop and catalog must exist; the model is
# built here when the catalog has none), BENCH_CLUSTER (bench-scale), CLIENTS (20), DURATION
# (60 s per pgbench run), BENCH_SKIP_REBUILD=1 skips (e).
#
# Prints: (a) the model image (bytes) and the stored model; (b) the first recommend_audience of
# 5 new sessions (brand audiences, top 5%), and of one session with audience.shared_models = off
# (each backend decoding its own copy, as before 0.3.0); (c) 10 warm calls in one session, min /
# median; (d) pgbench, CLIENTS sessions calling recommend_audience on random brands for DURATION
# seconds: throughput, latency, failures, and the backends' memory sampled mid-run (anonymous =
# private, and proportional set size); (e) the same in 10-second pgbench runs while a rebuild
# commits: audiences served, failures, and the image files left.
set -euo pipefail
PGA_SCRIPT=bench-serving
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/pg.sh
source scripts/pg.sh

USERS="${USERS:-1000000}"
PRODUCTS="${PRODUCTS:-50000}"
EVENTS="${EVENTS:-20000000}"
CL="${BENCH_CLUSTER:-bench-scale}"
CAT="shop_u${USERS}_p${PRODUCTS}_e${EVENTS}"
CLIENTS="${CLIENTS:-20}"
DURATION="${DURATION:-60}"
OUT="$REPO_ROOT/target/bench/serving-u${USERS}-p${PRODUCTS}-e${EVENTS}"
mkdir -p "$OUT"
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
q() { pga_psql "$CL" -Atq "$@"; }
hr() { printf '\n\033[1;36m== %s\033[0m\n' "$*"; }
BIN="$("$(pga_pg_config)" --bindir)"

pga_cluster_start "$CL" "shared_buffers = 2GB" "max_parallel_workers_per_gather = 2" "max_wal_size = 20GB" "max_connections = 100" >&2
if [[ "${BENCH_KEEP:-}" != 1 ]]; then pga_on_exit "pga_cluster_stop '$CL'"; fi
if [[ "$(q -c "SELECT count(*) FROM pg_extension WHERE extname = 'pg_audience'")" != 1 ||
      "$(q -c "SELECT count(*) FROM audience.catalogs WHERE name = '$CAT'")" != 1 ]]; then
    echo "no catalog $CAT in cluster $CL: run bench/scale.sh with the same USERS/PRODUCTS/EVENTS first" >&2
    exit 1
fi
if [[ "$(q -c "SELECT active_model_id IS NULL FROM audience.catalogs WHERE name = '$CAT'")" == t ]]; then
    hr "building the model of $CAT"
    q -c "SELECT model_id, round(seconds::numeric, 1) FROM audience.build('$CAT')"
fi

# ------------------------------------------------------------------ (a)
q -c "CREATE TABLE IF NOT EXISTS public.bench_brands (i int PRIMARY KEY, brand text)" \
  -c "TRUNCATE public.bench_brands" \
  -c "INSERT INTO public.bench_brands SELECT row_number() OVER (ORDER BY value), value FROM audience.catalog_values WHERE catalog = '$CAT' AND property = 'brand'"
NBRANDS="$(q -c "SELECT count(*) FROM public.bench_brands")"
BRAND="$(q -c "SELECT value FROM audience.catalog_values WHERE catalog = '$CAT' AND property = 'brand' ORDER BY users DESC, value LIMIT 1")"
CALL="SELECT count(*) FROM audience.recommend_audience('brand', '${BRAND//\'/\'\'}', 5, catalog => '$CAT')"
MODEL="$(q -c "SELECT active_model_id FROM audience.catalogs WHERE name = '$CAT'")"
q -c "$CALL" >/dev/null # makes sure the image exists (written by the build, or now from the table)
IMG="pg_audience/$(q -c "SELECT oid FROM pg_database WHERE datname = current_database()")/$(q -c "SELECT 'audience.models'::regclass::oid")_$MODEL.img"
IMG_BYTES="$(q -c "SELECT size FROM pg_stat_file('$IMG')")"
hr "(a) model $MODEL: image $IMG, $((IMG_BYTES >> 20)) MB; stored model $(q -c "SELECT pg_size_pretty(sum(pg_catalog.length(data))) FROM audience.model_data WHERE model_id = $MODEL")"

# ------------------------------------------------------------------ (b)
ms_of() { sed -n -E 's/^Time: ([0-9.]+) ms.*/\1/p'; }
median() { sort -n | awk '{ a[NR] = $1 } END { if (NR == 0) print "?"; else print a[int((NR + 1) / 2)] }'; }
hr "(b) first call in a new session: recommend_audience('brand', '$BRAND', 5)"
firsts=()
for i in 1 2 3 4 5; do
    firsts+=("$(q -c '\timing on' -c "$CALL" | ms_of)")
done
echo "first call of 5 new sessions (ms): ${firsts[*]}; median $(printf '%s\n' "${firsts[@]}" | median)"
off="$(q -c "SET audience.shared_models = off" -c '\timing on' -c "$CALL" | ms_of)"
echo "first call with audience.shared_models = off (private decode): $off ms"

# ------------------------------------------------------------------ (c)
hr "(c) warm calls in one session"
# Computed: each call passes another min_score below every score (the same audience, a request
# the session's memo of rankings has not seen). Repeated: the very same call (from the memo).
args=(-c '\timing on')
for i in $(seq 11); do args+=(-c "${CALL%)}, min_score => -$i)"); done
mapfile -t t < <(q "${args[@]}" | ms_of)
warm=("${t[@]:1}")
echo "computed: first ${t[0]} ms; 10 warm (ms): ${warm[*]}; min $(printf '%s\n' "${warm[@]}" | sort -n | head -1), median $(printf '%s\n' "${warm[@]}" | median)"
args=(-c '\timing on')
for i in $(seq 11); do args+=(-c "$CALL"); done
mapfile -t t < <(q "${args[@]}" | ms_of)
warm=("${t[@]:1}")
echo "repeated: first ${t[0]} ms; 10 more (ms): ${warm[*]}; min $(printf '%s\n' "${warm[@]}" | sort -n | head -1), median $(printf '%s\n' "${warm[@]}" | median)"

# ------------------------------------------------------------------ (d) + (e)
cat >"$OUT/pgbench.sql" <<SQL
\set i random(1, $NBRANDS)
SELECT count(*) FROM audience.recommend_audience('brand', (SELECT b.brand FROM public.bench_brands b WHERE b.i = :i), 5, catalog => '$CAT');
SQL
chmod 0644 "$OUT/pgbench.sql"

# Sums memory over the pgbench backends: anonymous (private) RSS and proportional set size, MB.
sample_memory() {
    local pid anon=0 pss=0 n=0 a p
    for pid in $(q -c "SELECT pid FROM pg_stat_activity WHERE application_name = 'pgbench'"); do
        a="$(awk '/^RssAnon:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)"
        p="$(awk '/^Pss:/ { print $2 }' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)"
        anon=$((anon + ${a:-0}))
        pss=$((pss + ${p:-0}))
        n=$((n + 1))
    done
    echo "$n backends: private (anonymous) $((anon >> 10)) MB in total, $((anon / (n > 0 ? n : 1) >> 10)) MB each; PSS $((pss >> 10)) MB in total (image $((IMG_BYTES >> 20)) MB, counted once across them)"
}

run_pgbench() { # NAME SECONDS
    PGAPPNAME=pgbench "$BIN/pgbench" -n -h "$(pga_cluster_sockdir "$CL")" -p "$(pga_cluster_port "$CL")" -U postgres \
        -c "$CLIENTS" -j 2 -T "$2" -f "$OUT/pgbench.sql" postgres >"$OUT/$1.out" 2>&1 || true
}
report() { # NAME
    grep -E "number of (transactions actually processed|failed transactions)|latency average|^tps|aborted" "$OUT/$1.out" | sed 's/^/   /'
    if grep -q "aborted in command" "$OUT/$1.out"; then echo "   errors:"; grep -E "ERROR|aborted in command" "$OUT/$1.out" | head -5 | sed 's/^/     /'; fi
}

hr "(d) pgbench: $CLIENTS sessions, random brands of $NBRANDS, ${DURATION}s"
run_pgbench steady "$DURATION" &
bench_pid=$!
sleep $((DURATION / 2))
sample_memory
wait "$bench_pid"
report steady

if [[ "${BENCH_SKIP_REBUILD:-}" != 1 ]]; then
    hr "(e) pgbench while a rebuild commits mid-run"
    # pgbench in 10-second runs, back to back, from 10 s before the rebuild starts until 30 s after
    # it committed; their counts are summed.
    q -c "SELECT 'rebuilt: model ' || model_id || ' in ' || round(seconds::numeric, 1) || ' s' FROM audience.build('$CAT')" >"$OUT/rebuild.out" 2>&1 &
    build_pid=$!
    rm -f "$OUT"/seg_*.out
    i=0
    after=0
    while ((after < 3)); do
        i=$((i + 1))
        run_pgbench "seg_$i" 10 &
        if ((i == 2)); then
            sleep 5
            sample_memory
        fi
        wait "$!" || true
        if ! kill -0 "$build_pid" 2>/dev/null; then after=$((after + 1)); fi
    done
    wait "$build_pid" || true
    cat "$OUT/rebuild.out"
    awk '/number of transactions actually processed/ { n += $NF } /number of failed transactions/ { f += $5 } /aborted in command/ { a++ }
         END { printf "   %d runs of 10 s: %d audiences, %d failed, %d clients aborted; %.1f audiences/s\n", '"$i"', n, f, a, n / ('"$i"' * 10) }' "$OUT"/seg_*.out
    grep -h -E "ERROR|aborted in command" "$OUT"/seg_*.out | sort | uniq -c | head -5 || true
    NEW="$(q -c "SELECT active_model_id FROM audience.catalogs WHERE name = '$CAT'")"
    echo "   image files now: $(q -c "SELECT string_agg(f, ' ') FROM pg_ls_dir('$(dirname "$IMG")') f") (model $NEW active)"
fi
