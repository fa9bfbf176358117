#!/usr/bin/env bash
# Python baselines for pg_audience, run in a private venv (target/bench-venv, created once).
#
#   bench/implicit_baseline.sh [movielens_implicit.py args]   # MovieLens 100K audience benchmark
#   bench/implicit_baseline.sh scale FILE.csv [args]           # time implicit ALS on a user,item,weight CSV
#   bench/implicit_baseline.sh repeat --events E.tsv --items I.tsv --property P [--out F.json] [args]
#                                                              # repeat-purchase audiences on any event log
#                                                              # (bench/repeat_implicit.py; bench/completejourney.sh)
#
# Env: MOVIELENS_DIR (default ../shared/data/movielens-100k), BENCH_VENV, PYTHON (the interpreter
# that creates the venv, default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${BENCH_VENV:-$ROOT/target/bench-venv}"
PY="${PYTHON:-python3}"

script="$ROOT/bench/movielens_implicit.py"
if [ "${1:-}" = "scale" ]; then
    shift
    script="$ROOT/bench/implicit_scale.py"
elif [ "${1:-}" = "repeat" ]; then
    shift
    script="$ROOT/bench/repeat_implicit.py"
    # Missing data: say so and succeed before creating any venv.
    prev=""
    for a in "$@"; do
        case "$prev" in
            --events | --items)
                if [ ! -f "$a" ]; then
                    echo "skipped: $a not found"
                    exit 0
                fi
                ;;
        esac
        prev="$a"
    done
else
    data="${MOVIELENS_DIR:-$ROOT/../shared/data/movielens-100k}"
    if [ ! -f "$data/ml-100k.inter" ] || [ ! -f "$data/ml-100k.item" ]; then
        echo "skipped: MovieLens 100K not found in $data (set MOVIELENS_DIR)"
        exit 0
    fi
    export MOVIELENS_DIR="$data"
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating venv $VENV" >&2
    "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import implicit, numpy, scipy" >/dev/null 2>&1; then
    echo "installing bench/requirements.txt into $VENV" >&2
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -r "$ROOT/bench/requirements.txt"
fi

# one BLAS thread: implicit parallelises with its own threads and warns otherwise
export OPENBLAS_NUM_THREADS="${OPENBLAS_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
exec "$VENV/bin/python" "$script" "$@"
