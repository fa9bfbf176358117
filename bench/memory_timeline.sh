#!/usr/bin/env bash
# The private memory (RssAnon) of the backend running an SQL command, every 0.2 s (not a test):
# where a build's memory peaks (`bench/build_ab.sh` reports the peak only). Prints
# "seconds:MB" samples and the peak to stderr, the command's output (its NOTICEs included) to
# stdout.
#
#   bench/memory_timeline.sh bench-scale "SELECT model_id FROM audience.build('shop', tune => false)"
# Args: CLUSTER (a cluster of scripts/pg.sh, running), SQL; runs in database postgres
# (PGDATABASE to change).
set -euo pipefail
PGA_SCRIPT=bench-memory-timeline
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/pg.sh
source scripts/pg.sh
[[ $# -eq 2 ]] || pga_die "usage: $0 CLUSTER SQL"
CL="$1" SQL="$2"
DB="${PGDATABASE:-postgres}"
app="pga_memory_timeline_$$"
out="$(mktemp)"
pga_on_exit "rm -f '$out'"
PGAPPNAME="$app" PGOPTIONS="-c client_min_messages=notice ${PGOPTIONS:-}" pga_psql "$CL" -d "$DB" -Atc "$SQL" >"$out" 2>&1 &
client=$!
pid=""
for _ in $(seq 100); do
    pid="$(pga_psql "$CL" -d "$DB" -Atc "SELECT pid FROM pg_stat_activity WHERE application_name = '$app' LIMIT 1")"
    [[ -n "$pid" ]] && break
    sleep 0.05
done
[[ -n "$pid" ]] || pga_die "the command's backend did not show up in pg_stat_activity"
t0="$(date +%s.%N)"
while kill -0 "$client" 2>/dev/null; do
    kb="$(awk '/^RssAnon:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)"
    [[ -n "$kb" ]] && echo "$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') $((kb / 1024))"
    sleep 0.2
done | awk '{ if ($2 > peak) peak = $2; printf "%s:%s ", $1, $2 } END { printf "\npeak %d MB\n", peak }' | fold -w 120 >&2
wait "$client" || { cat "$out"; pga_die "the command failed"; }
cat "$out"
