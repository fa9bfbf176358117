#!/usr/bin/env bash
# Scenario: cancelling a long build (demo shop with ~2.5M events; env CANCEL_EVENTS to change).
#   - model A built; then builds cancelled with pg_cancel_backend during the scan, during ALS
#     training, during kNN training and while storing (the phases as audience.build_progress()
#     reports them): each must stop within 1 s of the cancel with SQLSTATE
#     57014, leave no training thread behind, and leave model A active and usable;
#   - the same with SET statement_timeout (in the scan and in training);
#   - pg_terminate_backend during a build: the server does not crash;
#   - a cancelled session can build again; SET work_mem = '64kB' builds fine;
#   - the server log shows no PANIC / crash.
# Times are taken on the server (clock_timestamp() at pg_cancel_backend and right after the
# error in the cancelled session), so psql start-up is not included.
set -euo pipefail
PGA_SCRIPT=cancel
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=scripts/tests/_lib.sh
source scripts/tests/_lib.sh

EVENTS="${CANCEL_EVENTS:-2500000}"
t_cluster_fresh t-cancel
t_gates_init
q "CREATE TABLE public.t_marks (name text PRIMARY KEY, at timestamptz)"

t_say "setup: demo shop with $EVENTS events (100000 users, 10000 products)"
t0="$(t_now)"
q "SET client_min_messages = warning" "SELECT count(*) FROM audience.generate_demo_shop('demo', 100000, 10000, $EVENTS)" >/dev/null
t_meas "generate_demo_shop: $(t_ms "$t0" "$(t_now)") ms; load average $(cut -d' ' -f1-3 /proc/loadavg)"
t_register_shop shop demo
# tune => false (remembered for every build below): the cancel times are computed from model A's
# phases (scan, ALS, kNN, store), and the automatic tuning would run between scan and ALS.
read -r MODEL_A rows_a secs_a < <(q "SELECT model_id, rows_read, round(seconds::numeric, 2) FROM audience.build('shop', tune => false)" | tr '|' ' ')
read -r scan_s als_s knn_s store_s < <(q "SELECT round((stats->'seconds'->>'scan')::numeric, 2), round((stats->'seconds'->>'als')::numeric, 2),
    round((stats->'seconds'->>'knn')::numeric, 2), round((stats->'seconds'->>'store')::numeric, 2) FROM audience.models WHERE model_id = $MODEL_A" | tr '|' ' ')
t_meas "model A = $MODEL_A: rows_read $rows_a, ${secs_a}s (scan ${scan_s}s, als ${als_s}s, knn ${knn_s}s, store ${store_s}s)"
NIKE="'brand', 'Nike', 5, catalog => 'shop'"
MD5_A="$(q "$(t_audience_md5_sql "$NIKE")")"

BUILD="SELECT 'model=' || model_id FROM audience.build('shop')"
# Waits until session NAME runs the build.
wait_building() {
    t_wait_for "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = '$1' AND state = 'active' AND query LIKE '%audience.build%')" 60 "$1 to start building"
}
# cancel_at NAME SECONDS FUNC: FUNC (pg_cancel_backend / pg_terminate_backend) SECONDS after the
# build of session NAME started; records the server time of the call as mark NAME_sent.
cancel_at() {
    local name="$1" after="$2" fn="$3" pid
    wait_building "$name"
    pid="$(t_bg_pid "$name")"
    sleep "$after"
    q "INSERT INTO public.t_marks SELECT '${name}_sent', clock_timestamp() FROM (SELECT $fn($pid)) x" >/dev/null
    echo "$pid"
}
# cancel_in NAME PHASE SECONDS: pg_cancel_backend SECONDS after the build of session NAME entered
# PHASE (as audience.build_progress() reports it); records mark NAME_sent. Prints the pid.
cancel_in() {
    local name="$1" phase="$2" after="$3" pid
    wait_building "$name"
    pid="$(t_bg_pid "$name")"
    t_wait_for "SELECT EXISTS (SELECT 1 FROM audience.build_progress() WHERE pid = $pid AND phase = '$phase')" 120 "$name to reach the $phase phase"
    sleep "$after"
    q "INSERT INTO public.t_marks SELECT '${name}_sent', clock_timestamp() FROM (SELECT pg_cancel_backend($pid)) x" >/dev/null
    echo "$pid"
}
mark_ms() { q "SELECT round(extract(epoch FROM (SELECT at FROM public.t_marks WHERE name = '$2') - (SELECT at FROM public.t_marks WHERE name = '$1')) * 1000)"; }

# check_cancelled NAME WHAT [BUILDS]: the session's build failed with 57014, within 1 s of the
# cancel (BUILDS: how many builds the session ran after it, default 0).
check_cancelled() {
    local name="$1" what="$2" later="${3:-0}" st ms
    st="$(t_sqlstate_of <"$T_TMP/$name.out")"
    ms="$(mark_ms "${name}_sent" "${name}_error")"
    t_meas "$what: cancel -> error ${ms} ms; $st"
    if (($(grep -c '^model=' "$T_TMP/$name.out" || true) > later)); then
        t_fail "$what: the build finished before the cancel arrived (make it bigger: CANCEL_EVENTS)"
        return
    fi
    t_eq "$what: SQLSTATE" "${st%%$'\t'*}" 57014
    t_lt "$what: the build stopped within 1 s of the cancel (ms)" "${ms:-99999}" 1000
}

check_model_a() {
    t_eq "$1: model A is still the active model" "$(q "SELECT active_model_id FROM audience.catalogs WHERE name = 'shop'")" "$MODEL_A"
    t_eq "$1: no other model was stored" "$(q "SELECT count(*) FROM audience.models")" 1
}

# ------------------------------------------------------------------ pg_cancel_backend
t_say "pg_cancel_backend during the scan (1.5 s into the build)"
t_bg c_scan -v ON_ERROR_STOP=0 -c "$BUILD" -c "INSERT INTO public.t_marks VALUES ('c_scan_error', clock_timestamp())"
cancel_at c_scan 1.5 pg_cancel_backend >/dev/null
t_bg_wait c_scan 120 || true
check_cancelled c_scan "cancel in the scan"

als_at="$(awk -v a="$als_s" 'BEGIN { printf "%.2f", a / 3 }')"
t_say "pg_cancel_backend during ALS training (${als_at} s into the phase)"
t_bg c_als -v ON_ERROR_STOP=0 -c "$BUILD" -c "INSERT INTO public.t_marks VALUES ('c_als_error', clock_timestamp())" -c "$(t_gate_sql c_als)"
pid="$(cancel_in c_als als "$als_at")"
t_wait_for "SELECT EXISTS (SELECT 1 FROM public.t_marks WHERE name = 'c_als_error')" 60 "the cancelled build to end"
sleep 0.2
threads="$(awk '/^Threads:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo '?')"
rss="$(awk '/^VmRSS:/ { print $2 " " $3 }' "/proc/$pid/status" 2>/dev/null || echo '?')"
hwm="$(awk '/^VmHWM:/ { print $2 " " $3 }' "/proc/$pid/status" 2>/dev/null || echo '?')"
t_meas "backend $pid after the cancel: threads $threads, RSS $rss (peak $hwm)"
t_eq "no training thread is left running in the backend" "$threads" 1
t_open c_als
t_bg_wait c_als 30 || true
check_cancelled c_als "cancel in ALS"

# cancel_phase NAME PHASE PHASE_SECONDS WHAT: a build cancelled a third into PHASE stops in time.
cancel_phase() {
    local name="$1" phase="$2" at
    at="$(awk -v t="$3" 'BEGIN { printf "%.2f", t / 3 }')"
    t_say "pg_cancel_backend $4 (${at} s into the $phase phase)"
    t_bg "$name" -v ON_ERROR_STOP=0 -c "$BUILD" -c "INSERT INTO public.t_marks VALUES ('${name}_error', clock_timestamp())"
    cancel_in "$name" "$phase" "$at" >/dev/null
    t_bg_wait "$name" 120 || true
    check_cancelled "$name" "cancel in $phase"
}
# item-kNN runs on a worker thread beside the backend's own: the cancel must stop both quickly
# (not after the worker finished all its items).
cancel_phase c_knn knn "$knn_s" "during item-kNN training"
# The store writes the model's rows in 8 MB chunks and its serving image with interrupt checks.
cancel_phase c_store store "$store_s" "while storing the model"
IMG_DIR="pg_audience/$(q "SELECT oid FROM pg_database WHERE datname = current_database()")"
t_eq "no image file but model A's is left behind" \
    "$(q "SELECT string_agg(f, ' ' ORDER BY f) FROM pg_ls_dir('$IMG_DIR', true, false) f")" \
    "$(q "SELECT 'audience.models'::regclass::oid")_${MODEL_A}.img"

check_model_a "after the cancels"
t_eq "recommend_audience still answers as before" "$(q "$(t_audience_md5_sql "$NIKE")")" "$MD5_A"

# ------------------------------------------------------------------ statement_timeout
for spec in "scan:1500" "als:$(awk -v s="$scan_s" -v a="$als_s" 'BEGIN { printf "%d", (s + a / 2) * 1000 }')"; do
    phase="${spec%%:*}"
    ms="${spec##*:}"
    t_say "SET statement_timeout = '${ms}ms' (timeout in the $phase)"
    out="$(pga_psql "$CL" -Atq -v VERBOSITY=verbose -v ON_ERROR_STOP=0 \
        -c "INSERT INTO public.t_marks VALUES ('st_${phase}_start', clock_timestamp())" \
        -c "SET statement_timeout = '${ms}ms'" -c "$BUILD" -c "RESET statement_timeout" \
        -c "INSERT INTO public.t_marks VALUES ('st_${phase}_end', clock_timestamp())" 2>&1)" || true
    st="$(t_sqlstate_of <<<"$out")"
    total="$(mark_ms "st_${phase}_start" "st_${phase}_end")"
    t_meas "statement_timeout ${ms} ms: the statement ended after ${total} ms; $st"
    t_eq "statement_timeout in the $phase: SQLSTATE" "${st%%$'\t'*}" 57014
    t_lt "statement_timeout in the $phase: ended within 1 s of the timeout (ms over)" "$((total - ms))" 1000
done
check_model_a "after the timeouts"

# ------------------------------------------------------------------ pg_terminate_backend
t_say "pg_terminate_backend during the scan"
t_bg c_term -c "$BUILD"
cancel_at c_term 1.0 pg_terminate_backend >/dev/null
t_bg_wait c_term 60 || true
st="$(t_sqlstate_of <"$T_TMP/c_term.out")"
t_meas "terminated session: $st"
t_eq "the session ends with SQLSTATE 57P01 (admin shutdown)" "${st%%$'\t'*}" 57P01
t_eq "the server is up" "$(q "SELECT 1")" 1
check_model_a "after terminate"
t_eq "recommend_audience still answers as before" "$(q "$(t_audience_md5_sql "$NIKE")")" "$MD5_A"

# ------------------------------------------------------------------ same session builds again
t_say "a session whose build was cancelled builds again"
t_bg c_again -v ON_ERROR_STOP=0 -c "$BUILD" -c "INSERT INTO public.t_marks VALUES ('c_again_error', clock_timestamp())" -c "$BUILD"
cancel_at c_again 1.0 pg_cancel_backend >/dev/null
t_bg_wait c_again 180 || true
check_cancelled c_again "cancel before rebuilding" 1
MODEL_B="$(sed -n -E 's/^model=([0-9]+)$/\1/p' "$T_TMP/c_again.out")"
t_check "the second build in the same session succeeded (model ${MODEL_B:-none})" test -n "$MODEL_B"
t_eq "it is the active model" "$(q "SELECT active_model_id FROM audience.catalogs WHERE name = 'shop'")" "${MODEL_B:-}"

# ------------------------------------------------------------------ work_mem
t_say "SET work_mem = '64kB', then build"
out="$(q "SET work_mem = '64kB'" "SELECT model_id || ' ' || rows_read || ' ' || round(seconds::numeric, 2) FROM audience.build('shop')" 2>&1)" || t_fail "build with work_mem 64kB failed: $out"
read -r model_c rows_c secs_c <<<"$out"
t_meas "work_mem 64kB: model ${model_c:-?}, rows_read ${rows_c:-?}, ${secs_c:-?}s (default work_mem: ${secs_a}s); peak RSS $(q "SELECT pg_size_pretty((stats->>'peak_rss_bytes')::bigint) FROM audience.models WHERE model_id = ${model_c:-0}")"
t_eq "work_mem 64kB build reads the same rows" "${rows_c:-}" "$rows_a"
t_eq "it is active" "$(q "SELECT active_model_id FROM audience.catalogs WHERE name = 'shop'")" "${model_c:-}"

t_check_server_log
t_finish
