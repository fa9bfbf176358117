#!/usr/bin/env bash
# A full build alternated with `implicit`'s ALS fit alone on the same weights (not a test): the
# ratio the build-speed targets are stated in, both measured in one sitting, since this machine's
# speed moves by up to a half between hours. Each round, for each configuration: a build
# (`audience.build(<catalog>, tune => false, factors, iterations)`: its seconds per phase from
# the model's `stats`), then `bench/implicit_baseline.sh scale` on the user-item CSV of
# `bench/scale.sh`'s step (d) with the same factors and iterations and 2 threads (the fit's own
# seconds: no load, no export), and their ratio.
#
#   bench/implicit_ab.sh                        # after bench/scale.sh with BENCH_KEEP=1 and step (d)
#
# Env: ROUNDS (2), CONFIGS ("32x10 64x15": factors x iterations), USERS/PRODUCTS/EVENTS as
# bench/scale.sh, BENCH_CLUSTER (bench-scale). The catalog remembers the knobs of its last build:
# it is built once more at 32 factors and 10 iterations at the end.
set -euo pipefail
PGA_SCRIPT=bench-implicit-ab
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/pg.sh
source scripts/pg.sh
ROUNDS="${ROUNDS:-2}"
CONFIGS="${CONFIGS:-32x10 64x15}"
CL="${BENCH_CLUSTER:-bench-scale}"
SIZE="u${USERS:-1000000}-p${PRODUCTS:-50000}-e${EVENTS:-20000000}"
CAT="shop_${SIZE//-/_}"
CSV="$REPO_ROOT/target/bench/scale-$SIZE/user_item.csv"
[[ -s "$CSV" ]] || pga_die "no $CSV: run BENCH_KEEP=1 bench/scale.sh (with its step (d)) first"
pga_bench_start "$CL"
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
q() { pga_psql "$CL" -d postgres -Atq "$@"; }
[[ "$(q -c "SELECT count(*) FROM audience.catalogs WHERE name = '$CAT'")" == 1 ]] ||
    pga_die "no catalog $CAT in cluster $CL: run BENCH_KEEP=1 bench/scale.sh first"
pga_bench_compact "$CL"
json="$(mktemp)"
pga_on_exit "rm -f '$json'"
for r in $(seq "$ROUNDS"); do
    for c in $CONFIGS; do
        f="${c%x*}" it="${c#*x}"
        pga_bench_settle "$CL"
        mid="$(q -c "SELECT model_id FROM audience.build('$CAT', tune => false, guard => false, factors => $f, iterations => $it)")"
        build="$(q -c "SELECT format('%s s = scan %s, als %s, knn %s, store %s',
                     round((m.stats->'seconds'->>'total')::numeric, 2),
                     round((m.stats->'seconds'->>'scan')::numeric, 1), round((m.stats->'seconds'->>'als')::numeric, 1),
                     round((m.stats->'seconds'->>'knn')::numeric, 1), round((m.stats->'seconds'->>'store')::numeric, 1))
                FROM audience.models m WHERE m.model_id = $mid")"
        bench/implicit_baseline.sh scale "$CSV" --factors "$f" --iterations "$it" --threads 2 --json "$json" >/dev/null
        fit="$(python3 -c "import json; print('%.2f' % json.load(open('$json'))['train_seconds'])")"
        awk -v r="$r" -v c="$c" -v b="$build" -v fit="$fit" \
            'BEGIN { split(b, t, " "); printf "round %s %s: build %s; implicit fit %s s; ratio %.2f\n", r, c, b, fit, t[1] / fit }'
    done
done
q -c "SELECT model_id FROM audience.build('$CAT', tune => false, guard => false, factors => 32, iterations => 10)" >/dev/null
