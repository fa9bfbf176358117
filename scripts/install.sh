#!/usr/bin/env bash
# Builds pg_audience in release mode and installs it into the PostgreSQL whose
# pg_config is listed in pgrx-config.toml (the first entry, or PGA_PG=pgNN).
# Uses `sudo` for the copy when not root and the PostgreSQL directories are not
# writable by the invoker.
set -euo pipefail
PGA_SCRIPT=install
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

pg_config="$(pga_pg_config)"
args=(install --release --pg-config "$pg_config")
if ! pga_is_root; then
    if [[ -w "$("$pg_config" --pkglibdir)" && -w "$("$pg_config" --sharedir)/extension" ]]; then
        :
    else
        command -v sudo >/dev/null 2>&1 || pga_die "not root, PostgreSQL dirs not writable and no sudo"
        args+=(--sudo)
    fi
fi
pga_log "cargo pgrx ${args[*]}"
cargo pgrx "${args[@]}"
pga_log "installed into $("$pg_config" --pkglibdir) and $("$pg_config" --sharedir)/extension"
