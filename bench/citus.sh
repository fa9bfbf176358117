#!/usr/bin/env bash
# Citus benchmark (not a test, not in CI: CI cannot fetch Citus). Builds Citus from a checkout of
# citusdata/citus main against the PostgreSQL 18 of scripts/pg18.sh, installs pg_audience there,
# then
#   (a) runs scripts/tests/citus.sh on it: coordinator + two workers, the demo shop's events in
#       four layouts (hash co-located, hash not co-located, single-shard, local + distributed),
#       each built and its audiences compared with the same events in local tables, plans shown;
#   (b) times the scan at scale: the demo shop (USERS, PRODUCTS, EVENTS; 1M / 50k / 20M) in local
#       tables and the same events hash-distributed by user id (32 shards on the two workers),
#       each built once (tune => false), scan seconds and rows/s of both.
#
#   bench/citus.sh /path/to/citus            # Citus main (PR #8505's worker combine is needed)
#   EVENTS=4000000 USERS=200000 PRODUCTS=20000 bench/citus.sh /path/to/citus
#
# Env: USERS, PRODUCTS, EVENTS (0 skips (b)); CITUS_REBUILD=1 rebuilds Citus even when citus.so
# is installed; BENCH_SKIP_INSTALL=1 keeps the installed pg_audience; CITUS_KEEP=1 leaves the
# clusters running. Needs (installed when missing): liblz4-dev libzstd-dev libcurl4-openssl-dev.
# Note: PostgreSQL 18's PGXS carries GCC 14's -Wmissing-variable-declarations, which Debian 12's
# gcc 12 rejects; Citus is compiled with the same CFLAGS without it.
set -euo pipefail
PGA_SCRIPT=bench-citus
cd "$(dirname "${BASH_SOURCE[0]}")/.."
SRC="${1:?usage: bench/citus.sh CITUS_SOURCE_DIR (a checkout of citusdata/citus main)}"
[[ -f "$SRC/configure" && -d "$SRC/src/backend/distributed" ]] || { echo "not a Citus source tree: $SRC" >&2; exit 2; }
SRC="$(cd "$SRC" && pwd)"
P18="$(bash scripts/pg18.sh fetch)"
export PGA_PG=pg18 PGA_PG_CONFIG="$P18"
# shellcheck source=scripts/pg.sh
source scripts/pg.sh

USERS="${USERS:-1000000}"
PRODUCTS="${PRODUCTS:-50000}"
EVENTS="${EVENTS:-20000000}"

# ------------------------------------------------------------------ Citus and pg_audience
if [[ "${BENCH_SKIP_INSTALL:-}" != 1 ]]; then
    bash scripts/install.sh
fi
libdir="$("$P18" --pkglibdir)"
if [[ ! -f "$libdir/citus.so" || "${CITUS_REBUILD:-}" == 1 ]]; then
    missing=()
    for p in liblz4-dev libzstd-dev libcurl4-openssl-dev; do
        dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
    done
    if ((${#missing[@]})); then
        pga_log "installing ${missing[*]}"
        pga_as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    build="$REPO_ROOT/target/citus-build"
    pga_log "building Citus ($SRC) in $build"
    rm -rf "$build"
    mkdir -p "$build"
    (cd "$SRC" && tar --exclude=.git -cf - .) | tar -xf - -C "$build"
    cflags="$("$P18" --cflags | sed 's/-Wmissing-variable-declarations//')"
    t0="$(pga_now)"
    (cd "$build" && ./configure PG_CONFIG="$P18" CFLAGS="$cflags" >configure.log 2>&1 &&
        make -j"$(nproc)" CFLAGS="$cflags" >make.log 2>&1 && make install >install.log 2>&1) ||
        pga_die "building Citus failed (logs in $build)"
    chmod -R a+rX "$libdir" "$("$P18" --sharedir)/extension"
    pga_log "Citus built and installed in $(($(pga_now) - t0)) s"
fi
pga_log "Citus: $(sed -n "s/^default_version = '\(.*\)'/\1/p" "$("$P18" --sharedir)/extension/citus.control")"

# ------------------------------------------------------------------ (a) layouts
printf '\n== (a) layouts: scripts/tests/citus.sh on PostgreSQL 18 + Citus\n'
bash scripts/tests/citus.sh

# ------------------------------------------------------------------ (b) the scan at scale
if ((EVENTS == 0)); then
    exit 0
fi
printf '\n== (b) the scan at %s events (%s users, %s products): local tables vs hash-distributed\n' "$EVENTS" "$USERS" "$PRODUCTS"
PGA_SCRIPT=bench-citus
# shellcheck source=scripts/tests/_lib.sh
source scripts/tests/_lib.sh
# shellcheck source=scripts/tests/_citus.sh
source scripts/tests/_citus.sh
citus_cluster bench-citus "shared_buffers = 2GB" "max_wal_size = 20GB" "max_parallel_workers_per_gather = 2"
t0="$(pga_now)"
q "SET client_min_messages = warning" "SELECT count(*) FROM audience.generate_demo_shop('demo', $USERS, $PRODUCTS, $EVENTS)" >/dev/null
pga_log "generated in $(($(pga_now) - t0)) s; copying into hash-distributed tables"
t0="$(pga_now)"
citus_layout demo hash
pga_log "distributed in $(($(pga_now) - t0)) s"
for c in local:demo hash:hash; do
    t_register_shop "${c%%:*}" "${c##*:}"
done
pga_log "plan of the distributed scan:"
citus_scan_plan hash | sed 's/^/    /'
printf '\n%-8s %12s %9s %12s %10s %s\n' layout rows_read scan_s rows_per_s total_s scan_state
for c in local hash; do
    q "SELECT audience.build('$c', tune => false)" >/dev/null
    q "SELECT format('%-8s %12s %9s %12s %10s %s', '$c', rows_read, round((stats->'seconds'->>'scan')::numeric, 2),
            round(rows_read / (stats->'seconds'->>'scan')::numeric), round((stats->'seconds'->>'total')::numeric, 1), stats->>'scan_state')
       FROM audience.models m JOIN audience.catalogs c ON c.active_model_id = m.model_id WHERE c.name = '$c'"
done
