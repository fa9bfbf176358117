# shellcheck shell=bash
# Common helpers for the pg_audience scripts. Source it, don't run it:
#     source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
#
# Sets REPO_ROOT (absolute, from this file's location) and provides logging,
# root/sudo handling and pgrx-config.toml parsing.

if [[ -n "${PGA_COMMON_SOURCED:-}" ]]; then
    return 0
fi
PGA_COMMON_SOURCED=1

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"
export REPO_ROOT

# Rust installed with rustup lives in ~/.cargo/bin, which non-login shells
# (CI, sudo) may not have on PATH.
if [[ -d "${CARGO_HOME:-$HOME/.cargo}/bin" ]] && [[ ":$PATH:" != *":${CARGO_HOME:-$HOME/.cargo}/bin:"* ]]; then
    PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
    export PATH
fi

pga_log()  { printf '\033[1;34m==>\033[0m [%s] %s\n' "${PGA_SCRIPT:-pg_audience}" "$*" >&2; }
pga_info() { printf '    %s\n' "$*" >&2; }
pga_warn() { printf '\033[1;33mWARN\033[0m [%s] %s\n' "${PGA_SCRIPT:-pg_audience}" "$*" >&2; }
pga_die()  { printf '\033[1;31mERROR\033[0m [%s] %s\n' "${PGA_SCRIPT:-pg_audience}" "$*" >&2; exit 1; }

pga_is_root() { [[ "$(id -u)" -eq 0 ]]; }

# Run a command as root: directly when we are root, through sudo otherwise.
pga_as_root() {
    if pga_is_root; then
        "$@"
    else
        command -v sudo >/dev/null 2>&1 ||
            pga_die "need root for: $*  (not root and sudo is not installed)"
        sudo "$@"
    fi
}

# The PostgreSQL versions and pg_config paths of pgrx-config.toml, one
# "pgNN<TAB>/path/to/pg_config" per line, in file order.
pga_pgrx_configs() {
    local f="$REPO_ROOT/pgrx-config.toml"
    [[ -f "$f" ]] || pga_die "missing $f"
    sed -n -E 's/^[[:space:]]*(pg[0-9]+)[[:space:]]*=[[:space:]]*"([^"]*)".*$/\1\t\2/p' "$f"
}

# Stops with a hint when pgrx's own config ($PGRX_HOME/config.toml, written by `cargo pgrx
# init`) names a pg_config that no longer exists: pgrx's build script reads every entry and
# otherwise fails with a backtrace (seen after the clone moved, or another clone ran setup).
pga_check_pgrx_home() {
    local f="${PGRX_HOME:-$HOME/.pgrx}/config.toml" ver path
    [[ -f "$f" ]] || pga_die "no $f: run scripts/setup.sh first (it runs cargo pgrx init)"
    while IFS=$'\t' read -r ver path; do
        [[ -x "$path" ]] ||
            pga_die "$f names $path for $ver, which does not exist (the clone moved, or another clone ran setup): run scripts/setup.sh again"
    done < <(sed -n -E 's/^[[:space:]]*(pg[0-9]+)[[:space:]]*=[[:space:]]*"([^"]*)".*$/\1\t\2/p' "$f")
}

# pg_config of one version (default: the first one in pgrx-config.toml, or $PGA_PG).
# PGA_PG_CONFIG=/path/to/pg_config overrides the default version's entry: the scripts then
# install into, and run the servers of, that PostgreSQL (e.g. a private copy of the system one).
pga_pg_config() {
    local want="${1:-${PGA_PG:-}}"
    if [[ -n "${PGA_PG_CONFIG:-}" ]] && [[ -z "$want" || "$want" == "$(pga_pg_version)" ]]; then
        printf '%s\n' "$PGA_PG_CONFIG"
        return 0
    fi
    pga_pgrx_pg_config "$want"
}

# The pg_config pgrx-config.toml lists (what `cargo pgrx` builds against), ignoring PGA_PG_CONFIG.
pga_pgrx_pg_config() {
    local want="${1:-${PGA_PG:-}}" ver path
    while IFS=$'\t' read -r ver path; do
        if [[ -z "$want" || "$ver" == "$want" ]]; then
            printf '%s\n' "$path"
            return 0
        fi
    done < <(pga_pgrx_configs)
    pga_die "no ${want:-pgNN} entry in $REPO_ROOT/pgrx-config.toml"
}

# The pgNN name of the default version (first entry of pgrx-config.toml, or $PGA_PG).
pga_pg_version() {
    if [[ -n "${PGA_PG:-}" ]]; then
        printf '%s\n' "$PGA_PG"
        return 0
    fi
    pga_pgrx_configs | head -n1 | cut -f1
}

pga_pg_bindir() { "$(pga_pg_config "$@")" --bindir; }

# Exit status of a test that could not run here (a component is missing): reported SKIPPED.
PGA_EXIT_SKIPPED=77

# Seconds since the epoch, for phase timings.
pga_now() { date +%s; }
pga_fmt_secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }
