#!/usr/bin/env bash
# Runs the pg_regress tests tests/pg_regress/sql/*.sql (alphabetical order) against
# a fresh private cluster (target/regress-pg), in database pg_audience_regress,
# which pg_regress drops and creates. The extension must be installed first
# (scripts/install.sh); each test does its own CREATE EXTENSION.
#
#   scripts/regress.sh                 all tests
#   scripts/regress.sh foo bar.sql     only foo and bar (names, with or without .sql)
#
# Expected output: tests/pg_regress/expected/NAME.out (pg_regress also accepts
# alternatives NAME_1.out ... NAME_9.out). A test without NAME.out FAILS: its actual
# output is left in target/regress/results/NAME.out so you can review and copy it.
# Outputs: target/regress/{results/,regression.diffs,regression.out}.
# pg_regress and psql run as the invoker with cwd = target/regress/input, a copy of
# tests/pg_regress (so \i / \copy may use paths relative to tests/pg_regress);
# PG_ABS_SRCDIR points at that copy (use `\getenv abs_srcdir PG_ABS_SRCDIR`).
# Optional tests/pg_regress/postgresql.conf: extra settings for the regress cluster
# (shared_preload_libraries, ...); tests SET their own GUCs otherwise.
# Exit status: 0 all passed, non-zero otherwise.
set -euo pipefail
PGA_SCRIPT=regress
# shellcheck source=scripts/pg.sh
source "$(dirname "${BASH_SOURCE[0]}")/pg.sh"
cd "$REPO_ROOT"

src="$REPO_ROOT/tests/pg_regress"
work="$REPO_ROOT/target/regress"
db=pg_audience_regress
cluster=regress-pg
pg_regress="${PGA_PG_REGRESS:-$("$(pga_pg_config)" --pkglibdir)/pgxs/src/test/regress/pg_regress}"
[[ -x "$pg_regress" ]] || pga_die "pg_regress not found at $pg_regress (install postgresql-server-dev-NN: scripts/setup.sh)"
[[ -d "$src/sql" ]] || pga_die "no $src/sql directory"

# ------------------------------------------------------------ which tests
tests=()
if (($# > 0)); then
    for t in "$@"; do
        t="$(basename "$t")"
        t="${t%.sql}"
        [[ -f "$src/sql/$t.sql" ]] || pga_die "no such test: tests/pg_regress/sql/$t.sql"
        tests+=("$t")
    done
else
    while IFS= read -r f; do
        tests+=("$(basename "$f" .sql)")
    done < <(find "$src/sql" -maxdepth 1 -type f -name '*.sql' | LC_ALL=C sort)
fi
((${#tests[@]} > 0)) || pga_die "no tests in tests/pg_regress/sql/"

# ------------------------------------------------------------ stage inputs
rm -rf "$work"
mkdir -p "$work/input" "$work/results"
(cd "$src" && tar --exclude=./results --exclude=./regression.diffs --exclude=./regression.out -cf - .) |
    (cd "$work/input" && tar -xf -)
mkdir -p "$work/input/expected"
missing=()
for t in "${tests[@]}"; do
    if [[ ! -f "$src/expected/$t.out" ]]; then
        missing+=("$t")
        # An empty expectation makes pg_regress fail this test and keep its output.
        : >"$work/input/expected/$t.out"
    fi
done
if ((${#missing[@]} > 0)); then
    pga_warn "no expected output for: ${missing[*]} (these tests will FAIL)"
fi

# ------------------------------------------------------------ cluster
conf=("fsync = off" "synchronous_commit = off" "full_page_writes = off")
if [[ -f "$src/postgresql.conf" ]]; then
    # Extra server settings for the regress cluster (e.g. shared_preload_libraries).
    while IFS= read -r line || [[ -n "$line" ]]; do
        conf+=("$line")
    done <"$src/postgresql.conf"
    pga_log "extra server settings from tests/pg_regress/postgresql.conf"
fi
pga_cluster_fresh "$cluster" "${conf[@]}"
port="$(pga_cluster_port "$cluster")"
sock="$(pga_cluster_sockdir "$cluster")"

pga_log "running ${#tests[@]} test(s) with pg_regress: ${tests[*]}"
rc=0
(
    cd "$work/input"
    unset PGDATABASE PGSERVICE PGOPTIONS PGPASSWORD
    "$pg_regress" \
        --bindir="$PGA_BINDIR" \
        --inputdir="$work/input" \
        --outputdir="$work" \
        --host="$sock" --port="$port" --user="$PGA_SUPERUSER" \
        --dbname="$db" \
        "${tests[@]}"
) || rc=$?

if ((${#missing[@]} > 0)); then
    for t in "${missing[@]}"; do
        pga_warn "MISSING tests/pg_regress/expected/$t.out — actual output: target/regress/results/$t.out"
        pga_info "review it, then: cp target/regress/results/$t.out tests/pg_regress/expected/$t.out"
    done
    rc=1
fi
if ((rc != 0)); then
    if [[ -s "$work/regression.diffs" ]]; then
        echo "------------------------------------------------ regression.diffs" >&2
        cat "$work/regression.diffs" >&2
        echo "------------------------------------------------ end of regression.diffs" >&2
    fi
    pga_warn "server log: $(pga_cluster_log "$cluster")"
    pga_die "pg_regress FAILED (diffs: target/regress/regression.diffs)"
fi
pga_log "all ${#tests[@]} pg_regress test(s) passed"
