#!/usr/bin/env bash
# Builds pg_audience in release mode and installs it into the PostgreSQL whose
# pg_config is listed in pgrx-config.toml (the first entry, or PGA_PG=pgNN).
# Uses `sudo` for the copy when not root and the PostgreSQL directories are not
# writable by the invoker. Files are replaced atomically (see below).
set -euo pipefail
PGA_SCRIPT=install
# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$REPO_ROOT"

pga_check_pgrx_home
pg_config="$(pga_pg_config)"
libdir="$("$pg_config" --pkglibdir)"
extdir="$("$pg_config" --sharedir)/extension"
# Build into a staging tree, then move each file into place with rename(2): a backend that has
# the old pg_audience.so mapped keeps its (unlinked) copy instead of crashing with SIGBUS, as it
# would if the file were overwritten in place.
# The staging tree holds what `cargo pgrx package` wrote: the library, the control file, the
# generated pg_audience--<version>.sql and the upgrade scripts sql/pg_audience--<from>--<to>.sql.
# Emptied first, so a script generated for an earlier version number is not installed again.
pgmajor="$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')"
stage="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/pg_audience-pg$pgmajor"
rm -rf "$stage"
pga_log "cargo pgrx package --pg-config $pg_config"
cargo pgrx package --pg-config "$pg_config"
[[ -d "$stage" ]] || pga_die "no package tree at $stage"
sudo_cmd=()
if ! pga_is_root && ! { [[ -w "$libdir" ]] && [[ -w "$extdir" ]]; }; then
    command -v sudo >/dev/null 2>&1 || pga_die "not root, PostgreSQL dirs not writable and no sudo"
    sudo_cmd=(sudo)
fi
put() { # put SRC DESTDIR: atomic replace of DESTDIR/basename(SRC)
    local src="$1" dest="$2/$(basename "$1")"
    "${sudo_cmd[@]}" install -m 0644 "$src" "$dest.tmp.$$"
    "${sudo_cmd[@]}" mv -f "$dest.tmp.$$" "$dest"
}
while IFS= read -r f; do put "$f" "$libdir"; done < <(find "$stage$libdir" -maxdepth 1 -type f -name '*.so')
while IFS= read -r f; do put "$f" "$extdir"; done < <(find "$stage$extdir" -maxdepth 1 -type f \( -name '*.control' -o -name '*.sql' \))
pga_log "installed into $libdir and $extdir"
