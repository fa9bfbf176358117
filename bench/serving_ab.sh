#!/usr/bin/env bash
# A/B of recommend_audience between two builds of the library (not a test): after
# `BENCH_KEEP=1 bench/scale.sh` (same sizes), runs CALLS computed calls of
# recommend_audience('brand', <the brand most users engaged with>, 5) in one new session (each
# with another min_score below every score, so none is answered from the session's memo) with
# library A, then B, ROUNDS times, and prints the first call of each session (a new session's:
# the library loaded, the model's file mapped) and the median and minimum of the calls after it.
# Run to run, this machine varies by more than many changes gain: only alternated runs are
# compared.
#
#   A=/tmp/old.so B=/tmp/new.so bench/serving_ab.sh      # .so files built with
#                                                        # cargo build --release --lib --features pg15
# Env: A, B (required), ROUNDS (3), CALLS (7), USERS/PRODUCTS/EVENTS as bench/scale.sh,
# BENCH_CLUSTER (bench-scale). Each library is put in place with `mv` (a new inode: a library
# mapped by a running backend must never be overwritten in place). The installed library is
# restored at the end.
set -euo pipefail
PGA_SCRIPT=bench-serving-ab
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/pg.sh
source scripts/pg.sh
ROUNDS="${ROUNDS:-3}"
CALLS="${CALLS:-7}"
CL="${BENCH_CLUSTER:-bench-scale}"
CAT="shop_u${USERS:-1000000}_p${PRODUCTS:-50000}_e${EVENTS:-20000000}"
pga_ab_begin "$CL"
work="$PGA_AB_WORK"
q() { pga_psql "$CL" -d postgres -Atq "$@"; }
BRAND="$(q -c "SELECT value FROM audience.catalog_values WHERE catalog = '$CAT' AND property = 'brand' ORDER BY users DESC, value LIMIT 1")"
[[ -n "$BRAND" ]] || pga_die "no catalog $CAT in cluster $CL: run BENCH_KEEP=1 bench/scale.sh first"
{ echo '\timing on'
  for i in $(seq "$CALLS"); do
      echo "SELECT count(*) FROM audience.recommend_audience('brand', '${BRAND//\'/\'\'}', 5, catalog => '$CAT', min_score => -$i);"
  done; } > "$work/calls.sql"
echo "recommend_audience('brand', '$BRAND', 5): $CALLS calls a session"
for r in $(seq "$ROUNDS"); do
    for v in A B; do
        pga_lib_put "${!v}"
        pga_psql "$CL" -d postgres -Atf "$work/calls.sql" | awk '/^Time:/ { print $2 }' > "$work/times"
        tail -n +2 "$work/times" | sort -n |
            awk -v v="$v" -v r="$r" -v f="$(head -n 1 "$work/times")" '{ a[NR] = $1 } END { printf "round %d %s: first %.1f ms; the others median %.1f ms, min %.1f ms\n", r, v, f, a[int((NR + 1) / 2)], a[1] }'
    done
done
