#!/usr/bin/env bash
# A/B of a full build between two builds of the library (not a test): after
# `BENCH_KEEP=1 bench/scale.sh` (same sizes), runs `audience.build(<catalog>, tune => false)`
# with library A, then B, ROUNDS times, printing each build's seconds per phase (the model's
# `stats`) and its peak memory: `peak RSS` is the backend's VmHWM (which also counts the shared
# buffers it touched), `private` the largest RssAnon of the backend sampled every 0.1 s. Run to
# run, the same code varies here by up to a third: only alternated runs are compared.
#
#   A=/tmp/old.so B=/tmp/new.so bench/build_ab.sh         # .so files built with
#                                                         # cargo build --release --lib --features pg15
# Env: A, B (required), ROUNDS (2), FACTORS and ITERATIONS (the catalog's remembered ones when
# unset; when set, passed to the build, and the catalog remembers them), USERS/PRODUCTS/EVENTS as bench/scale.sh, BENCH_CLUSTER (bench-scale). Each library is
# put in place with `mv` (a new inode: a library mapped by a running backend must never be
# overwritten in place). The installed library is restored at the end. Each build replaces the
# catalog's active model. A_SQL, B_SQL (optional): a SQL file run before each build of A (of B),
# e.g. a `CREATE OR REPLACE FUNCTION audience._build_query` that generates another scan query
# (put the installed one back with B_SQL when only A replaces it).
set -euo pipefail
PGA_SCRIPT=bench-build-ab
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/pg.sh
source scripts/pg.sh
ROUNDS="${ROUNDS:-2}"
CL="${BENCH_CLUSTER:-bench-scale}"
CAT="shop_u${USERS:-1000000}_p${PRODUCTS:-50000}_e${EVENTS:-20000000}"
pga_ab_begin "$CL"
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
q() { pga_psql "$CL" -d postgres -Atq "$@"; }
[[ "$(q -c "SELECT count(*) FROM audience.catalogs WHERE name = '$CAT'")" == 1 ]] ||
    pga_die "no catalog $CAT in cluster $CL: run BENCH_KEEP=1 bench/scale.sh first"
args="'$CAT', tune => false, guard => false"
[[ -n "${FACTORS:-}" ]] && args+=", factors => $FACTORS"
[[ -n "${ITERATIONS:-}" ]] && args+=", iterations => $ITERATIONS"
echo "audience.build($args)"
# Each build meets the table of stored models vacuumed and no dirty buffers of the build before
# (pga_bench_settle: rows written in 1.7 s instead of up to 11 s while autovacuum worked through
# earlier builds' deleted rows).
pga_bench_compact "$CL"
# One build in a session of its own, whose backend's RssAnon is sampled every 0.1 s; prints the
# model id and the largest sample in MB.
build_sampled() {
    local out="$PGA_AB_WORK/build.out" pid="" kb peak=0 ps
    : > "$out"
    pga_psql "$CL" -d postgres -Atq -c "SELECT pg_backend_pid()" \
        -c "SELECT model_id FROM audience.build($args)" > "$out" &
    ps=$!
    while kill -0 "$ps" 2>/dev/null; do
        [[ -n "$pid" ]] || pid="$(head -n 1 "$out")"
        if [[ -n "$pid" ]]; then
            kb="$(awk '/^RssAnon:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)"
            (( ${kb:-0} > peak )) && peak="$kb"
        fi
        sleep 0.1
    done
    wait "$ps"
    echo "$(sed -n 2p "$out") $((peak / 1024))"
}
for r in $(seq "$ROUNDS"); do
    for v in A B; do
        pga_lib_put "${!v}"
        sql="${v}_SQL"
        [[ -n "${!sql:-}" ]] && q -f "${!sql}"
        pga_bench_settle "$CL"
        read -r mid private < <(build_sampled)
        q -c "SELECT format('round %s $v: %s s = scan %s, als %s, knn %s, store %s; peak RSS %s MB, private $private MB', $r,
                     round((m.stats->'seconds'->>'total')::numeric, 1),
                     round((m.stats->'seconds'->>'scan')::numeric, 1), round((m.stats->'seconds'->>'als')::numeric, 1),
                     round((m.stats->'seconds'->>'knn')::numeric, 1), round((m.stats->'seconds'->>'store')::numeric, 1),
                     (m.stats->>'peak_rss_bytes')::bigint >> 20)
                FROM audience.models m WHERE m.model_id = $mid"
    done
done
