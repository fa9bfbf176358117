#!/usr/bin/env bash
# A/B of the build's scan query between two builds of the library (not a test): after
# `BENCH_KEEP=1 bench/scale.sh` (same sizes), runs the catalog's scan query alone
# (`audience._build_query`, the aggregate included) with library A, then B, ROUNDS times,
# printing wall time and the CPU time of the whole machine (/proc/stat) for each run. Run to run,
# the same code varies here by more than most changes gain: only alternated runs are compared.
#
#   A=/tmp/old.so B=/tmp/new.so bench/scan_ab.sh          # .so files built with
#                                                         # cargo build --release --lib --features pg15
# Env: A, B (required), ROUNDS (3), USERS/PRODUCTS/EVENTS as bench/scale.sh, BENCH_CLUSTER
# (bench-scale). Each library is put in place with `mv` (a new inode: a library mapped by a
# running backend must never be overwritten in place). The installed library is restored at the end.
# A_SQL, B_SQL (optional): a SQL file run before generating A's (B's) query text, e.g. a
# `CREATE OR REPLACE FUNCTION audience._build_query` that writes another scan query (B_SQL runs
# last, so it also puts the installed function back).
# A_SET, B_SET (optional): SQL run in the session before A's (B's) query, e.g. `SET jit = off`.
# A_SED, B_SED (optional): a sed expression applied to A's (B's) query text, for what-if timings
# of the query's parts, e.g. `s/s.properties AS d/NULL::pg_catalog.jsonb AS d/` (no documents).
set -euo pipefail
PGA_SCRIPT=bench-scan-ab
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/pg.sh
source scripts/pg.sh
ROUNDS="${ROUNDS:-3}"
CL="${BENCH_CLUSTER:-bench-scale}"
CAT="shop_u${USERS:-1000000}_p${PRODUCTS:-50000}_e${EVENTS:-20000000}"
pga_ab_begin "$CL"
work="$PGA_AB_WORK"
q() { pga_psql "$CL" -d postgres -Atq "$@"; }
CID="$(q -c "SELECT catalog_id FROM audience.catalogs WHERE name = '$CAT'")"
[[ -n "$CID" ]] || pga_die "no catalog $CAT in cluster $CL: run BENCH_KEEP=1 bench/scale.sh first"
# Each variant's query text, generated after its A_SQL / B_SQL (when given) ran.
for v in A B; do
    sql="${v}_SQL"
    [[ -n "${!sql:-}" ]] && q -f "${!sql}"
    set="${v}_SET" sed_expr="${v}_SED"
    { [[ -n "${!set:-}" ]] && echo "${!set};"
      echo '\timing on'; echo "SELECT x IS NOT NULL FROM ("
      q -c "SELECT query FROM audience._build_query($CID, NULL, NULL, NULL)" | sed -e "${!sed_expr:-}"
      echo ") q(x);"; } > "$work/scan_$v.sql"
    [[ -z "${!sed_expr:-}" ]] || ! cmp -s <(q -c "SELECT query FROM audience._build_query($CID, NULL, NULL, NULL)") \
        <(q -c "SELECT query FROM audience._build_query($CID, NULL, NULL, NULL)" | sed -e "${!sed_expr}") ||
        pga_die "${v}_SED changed nothing in the query"
done
cpu() { awk '/^cpu /{ print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
hz="$(getconf CLK_TCK)"
for r in $(seq "$ROUNDS"); do
    for v in A B; do
        pga_lib_put "${!v}"
        c0="$(cpu)"
        ms="$(pga_psql "$CL" -d postgres -Atf "$work/scan_$v.sql" | awk '/^Time:/ { print $2 }')"
        c1="$(cpu)"
        echo "round $r $v: wall ${ms} ms, CPU $(awk -v a="$c0" -v b="$c1" -v hz="$hz" 'BEGIN { printf "%.1f", (b - a) / hz }') s"
    done
done
