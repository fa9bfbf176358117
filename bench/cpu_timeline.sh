#!/usr/bin/env bash
# The machine's busy cores every 0.25 s while a command runs (not a test): where a build leaves a
# core idle. Prints "seconds-since-start busy-cores" lines (from /proc/stat) to stderr, then the
# command's own output as it comes.
#
#   bench/cpu_timeline.sh psql -c "SELECT * FROM audience.build('shop', tune => false)"
set -euo pipefail
[[ $# -gt 0 ]] || { echo "usage: $0 command [args...]" >&2; exit 2; }
busy() { awk '/^cpu /{ print $2 + $3 + $4 + $7 + $8, $2 + $3 + $4 + $5 + $6 + $7 + $8 }' /proc/stat; }
cores="$(getconf _NPROCESSORS_ONLN)"
(
    read -r b0 t0 < <(busy)
    start="$(date +%s.%N)"
    while sleep 0.25; do
        read -r b1 t1 < <(busy)
        awk -v b0="$b0" -v b1="$b1" -v t0="$t0" -v t1="$t1" -v n="$cores" -v s="$start" -v now="$(date +%s.%N)" \
            'BEGIN { if (t1 > t0) printf "%.2f %.2f\n", now - s, n * (b1 - b0) / (t1 - t0) }' >&2
        b0="$b1"; t0="$t1"
    done
) &
sampler=$!
trap 'kill "$sampler" 2>/dev/null || true' EXIT
"$@"
