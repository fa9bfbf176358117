#!/usr/bin/env bash
# Scenario: concurrency of builds, reads and refreshes of one catalog (demo shop, small).
#   (a) two builds of one catalog at once: the second fails at once with SQLSTATE 55P03 (an
#       incremental build too), the first succeeds, exactly one model remains and it is the
#       active one;
#   (b) inserts into an event table during a build: the build reads one snapshot
#       (REPEATABLE READ: rows_read = count taken in the same transaction before the build,
#       while another session keeps inserting; READ COMMITTED: rows inserted after the scan
#       are not counted);
#   (c) recommend_audience / explain / views during a build answer from the previous model
#       without blocking (timed);
#   (d) pg_cron-style overlaps: refresh_audience during a build, a build during an open
#       refresh, two refreshes at once.
# Overlap is made certain, not timed: a session holding ACCESS EXCLUSIVE on demo.products stops
# a build after its scan (the products query is the build's only read of that table), and
# "gates" (scripts/tests/_lib.sh) keep a transaction open until the script opens them.
set -euo pipefail
PGA_SCRIPT=concurrency
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=scripts/tests/_lib.sh
source scripts/tests/_lib.sh

t_cluster_fresh t-concurrency
t_gates_init

t_say "setup: demo shop (5000 users, 500 products, 100k events), catalog 'shop', model A"
q "SET client_min_messages = warning" "SELECT count(*) FROM audience.generate_demo_shop('demo', 5000, 500, 100000)" >/dev/null
t_register_shop shop demo
EXPECTED="$(t_expected_rows_sql demo)"
n0="$(q "SELECT $EXPECTED")"
read -r MODEL_A rows_a secs_a < <(q "SELECT model_id, rows_read, round(seconds::numeric, 3) FROM audience.build('shop')" | tr '|' ' ')
t_meas "model A = $MODEL_A, rows_read $rows_a, ${secs_a}s"
t_eq "first build reads every registered event row" "$rows_a" "$n0"
NIKE="'brand', 'Nike', 5, catalog => 'shop'"
MD5_A="$(q "$(t_audience_md5_sql "$NIKE")")"
t_meas "audience brand=Nike top 5% under model A: $MD5_A"
q "SET client_min_messages = warning" "SELECT * FROM audience.save_audience('nike_top', 'brand', 'Nike', 5, catalog => 'shop')" >/dev/null
t_eq "saved audience nike_top refers to model A" "$(q "SELECT model_id FROM audience.saved_audiences WHERE name = 'nike_top'")" "$MODEL_A"

# Blocks the next build after its scan until the gate opens.
hold_products() { # GATE
    t_bg "lock_$1" -c "BEGIN" -c "LOCK TABLE demo.products IN ACCESS EXCLUSIVE MODE" -c "$(t_gate_sql "$1")" -c "COMMIT"
    t_wait_for "SELECT EXISTS (SELECT 1 FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'lock_$1' AND l.relation = 'demo.products'::regclass AND l.mode = 'AccessExclusiveLock' AND l.granted)" 30 "lock_$1 to lock demo.products"
}

# ------------------------------------------------------------------ (a) + (c) + (d1)
t_say "(a) two builds of one catalog at once"
hold_products a
t_bg build1 -c "SELECT 'model=' || model_id || ' rows=' || rows_read FROM audience.build('shop')"
t_wait_lock_wait build1 60
t_pass "build 1 is running (scan done, holds the catalog, waits on demo.products)"
prog="$(q "SELECT p.catalog || ' ' || p.phase || ' ' || (p.pid = a.pid) || ' ' || (p.seconds >= p.phase_seconds) FROM audience.build_progress() p JOIN pg_stat_activity a ON a.application_name = 'build1'")"
t_eq "audience.build_progress() shows build 1 from another session, in phase products" "$prog" "shop products true true"

t0="$(t_now)"
res="$(q_err "SET statement_timeout = '20s'" "SELECT * FROM audience.build('shop')")"
ms="$(t_ms "$t0" "$(t_now)")"
t_meas "second build: ${ms} ms -> $res"
t_eq "second build fails with SQLSTATE 55P03" "${res%%$'\t'*}" 55P03
t_lt "second build fails fast (ms, psql start included)" "$ms" 1000
case "$res" in
    *'catalog "shop" is being built by another session'*) t_pass "its message names the catalog and the other build" ;;
    *) t_fail "unclear message for the second build: $res" ;;
esac
res="$(q_err "SET statement_timeout = '20s'" "SELECT * FROM audience.build_incremental('shop')")"
t_eq "an incremental build meanwhile fails with SQLSTATE 55P03 too" "${res%%$'\t'*}" 55P03
# The message's detail and hint, as a user sees them.
q_full="$(pga_psql "$CL" -Atq -c "SET statement_timeout = '20s'" -c "SELECT * FROM audience.build('shop')" 2>&1 || true)"
printf '%s\n' "$q_full" | sed 's/^/      | /'

t_say "(c) reads during the build answer from model A without blocking"
reads="$(pga_psql "$CL" -Atq -c "SET statement_timeout = '10s'" -c '\timing on' \
    -c "$(t_audience_md5_sql "$NIKE")" -c "$(t_audience_md5_sql "$NIKE")" -c "$(t_audience_md5_sql "$NIKE")" \
    -c "SELECT count(*) FROM audience.explain('shop', (SELECT user_id FROM audience.recommend_audience($NIKE) ORDER BY rank LIMIT 1), 'brand', 'Nike', 3)" \
    -c "SELECT count(*) FROM audience.catalog_values WHERE catalog = 'shop'" \
    -c "SELECT model_id FROM audience.catalog_overview WHERE catalog = 'shop'" 2>&1)" || t_fail "a read during the build failed: $reads"
mapfile -t times < <(sed -n -E 's/^Time: ([0-9.]+) ms.*/\1/p' <<<"$reads")
mapfile -t vals < <(grep -v '^Time:' <<<"$reads")
t_meas "recommend_audience during build: cold ${times[0]:-?} ms, warm ${times[1]:-?} / ${times[2]:-?} ms; explain ${times[3]:-?} ms; catalog_values ${times[4]:-?} ms"
for i in 0 1 2; do t_eq "read $((i + 1)) during the build returns model A's audience" "${vals[$i]:-}" "$MD5_A"; done
t_check "explain during the build returns rows (${vals[3]:-})" test "${vals[3]:-0}" -gt 0
t_check "catalog_values during the build lists model A's values (${vals[4]:-})" test "${vals[4]:-0}" -gt 0
t_eq "catalog_overview during the build shows model A" "${vals[5]:-}" "$MODEL_A"
for i in 0 1 2 3 4; do t_lt "read $((i + 1)) did not block (ms)" "${times[$i]:-99999}" 2000; done

t_say "(d1) refresh_audience during the build"
t0="$(t_now)"
ref="$(q "SET statement_timeout = '10s'" "SELECT members || ' ' || entered || ' ' || \"left\" FROM audience.refresh_audience('nike_top')" 2>&1)" || t_fail "refresh during the build failed: $ref"
ms="$(t_ms "$t0" "$(t_now)")"
t_meas "refresh_audience during build: ${ms} ms, members/entered/left = $ref"
t_lt "refresh during the build did not block (ms)" "$ms" 3000
t_eq "refresh during the build used model A" "$(q "SELECT model_id FROM audience.saved_audiences WHERE name = 'nike_top'")" "$MODEL_A"

t_open a
t_bg_wait build1 120 || t_fail "build 1 failed: $(t_bg_out build1)"
t_bg_wait lock_a 30 || t_fail "lock session failed: $(t_bg_out lock_a)"
out1="$(t_bg_out build1)"
MODEL_B="$(sed -n -E 's/^model=([0-9]+) .*/\1/p' <<<"$out1")"
t_meas "build 1: $out1 ($(t_bg_ms build1) ms in total, most of it waiting on the lock)"
t_check "build 1 succeeded with a new model (B = ${MODEL_B:-none})" test -n "$MODEL_B" -a "$MODEL_B" != "$MODEL_A"
t_eq "exactly one model for the catalog afterwards" "$(q "SELECT count(*) FROM audience.models m JOIN audience.catalogs c USING (catalog_id) WHERE c.name = 'shop'")" 1
t_eq "the active model is build 1's" "$(q "SELECT active_model_id FROM audience.catalogs WHERE name = 'shop'")" "$MODEL_B"
t_eq "model A's data is gone" "$(q "SELECT count(*) FROM audience.model_data WHERE model_id = $MODEL_A")" 0
t_eq "recommend_audience answers from model B like from A (same events)" "$(q "$(t_audience_md5_sql "$NIKE")")" "$MD5_A"

# ------------------------------------------------------------------ (b) snapshot
t_say "(b1) REPEATABLE READ build while another session inserts events"
# The inserter commits a batch of 200 copied rows every ~20 ms; public.t_ticks counts batches
# (sequences are not transactional, so the build's transaction can watch them).
t_bg inserter -c "DO \$d\$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN
    WHILE NOT EXISTS (SELECT 1 FROM public.t_gates WHERE name = 'stop_inserter') AND clock_timestamp() - t0 < interval '120 s' LOOP
        INSERT INTO demo.tracks (user_id, event, product_id, properties, \"timestamp\")
        SELECT user_id, event, product_id, properties, \"timestamp\" FROM demo.tracks ORDER BY id LIMIT 200;
        PERFORM nextval('public.t_ticks');
        COMMIT;
        PERFORM pg_sleep(0.02);
    END LOOP; END \$d\$"
t_wait_for "SELECT last_value >= 3 AND is_called FROM public.t_ticks" 30 "the inserter to commit batches"
rr="$(q "BEGIN ISOLATION LEVEL REPEATABLE READ" \
    "SELECT 'count_before=' || ($EXPECTED)" \
    "SELECT 'ticks_before=' || last_value FROM public.t_ticks" \
    "SELECT 'build_rows=' || rows_read || ' model=' || model_id FROM audience.build('shop')" \
    "SELECT 'ticks_after=' || last_value FROM public.t_ticks" \
    "SELECT 'count_after_in_txn=' || ($EXPECTED)" \
    "COMMIT" 2>&1)" || t_fail "REPEATABLE READ build failed: $rr"
t_open stop_inserter
t_bg_wait inserter 30 || t_fail "inserter failed: $(t_bg_out inserter)"
kv() { sed -n -E "s/^.*$1=([0-9]+).*/\1/p" <<<"$2" | head -n1; }
cb="$(kv count_before "$rr")"; br="$(kv build_rows "$rr")"; tb="$(kv ticks_before "$rr")"; ta="$(kv ticks_after "$rr")"
now_rows="$(q "SELECT $EXPECTED")"
t_meas "count in txn before build $cb, build rows_read $br, batches committed during the build $((ta - tb)) ($(((ta - tb) * 200)) rows), rows now $now_rows"
t_check "inserts were committed while the build ran" test "$((ta - tb))" -gt 0
t_eq "REPEATABLE READ build: rows_read = count in its transaction before the build" "$br" "$cb"
t_check "the table grew meanwhile ($cb -> $now_rows)" test "$now_rows" -gt "$cb"

t_say "(b2) READ COMMITTED build: rows committed after its scan are not in the model"
before="$(q "SELECT $EXPECTED")"
hold_products b
t_bg build2 -c "SELECT 'model=' || model_id || ' rows=' || rows_read FROM audience.build('shop')"
t_wait_lock_wait build2 60
q "INSERT INTO demo.tracks (user_id, event, product_id, properties, \"timestamp\")
   SELECT 999999999, 'order_completed', product_id, properties, now() FROM demo.tracks ORDER BY id LIMIT 1000" >/dev/null
t_open b
t_bg_wait build2 120 || t_fail "build 2 failed: $(t_bg_out build2)"
t_bg_wait lock_b 30 || true
r2="$(sed -n -E 's/^model=[0-9]+ rows=([0-9]+).*/\1/p' <<<"$(t_bg_out build2)")"
t_meas "rows before the build $before, build rows_read ${r2:-?}, 1000 rows inserted after its scan"
t_eq "READ COMMITTED build: rows_read = count when its scan ran" "${r2:-}" "$before"
late="$(q_err "SELECT * FROM audience.explain('shop', '999999999', 'brand', 'Nike', 3)")"
case "$late" in
    42704*'is not in the model'*) t_pass "the user of the late rows is not in the model ($late)" ;;
    *) t_fail "the user of the late rows should not be in the model: $late" ;;
esac

# ------------------------------------------------------------------ (c2) + (d2)
t_say "(c2) reads while a finished build's transaction is still open (uncommitted model)"
MODEL_C="$(q "SELECT active_model_id FROM audience.catalogs WHERE name = 'shop'")"
MD5_C="$(q "$(t_audience_md5_sql "$NIKE")")"
t_bg build3 -c "BEGIN" -c "SELECT 'model=' || model_id FROM audience.build('shop')" -c "$(t_gate_sql c)" -c "COMMIT"
t_wait_for "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'build3' AND query LIKE 'DO %')" 120 "build3 to finish its build and wait"
t0="$(t_now)"
got="$(q "SET statement_timeout = '10s'" "$(t_audience_md5_sql "$NIKE")" 2>&1)" || true
ms="$(t_ms "$t0" "$(t_now)")"
t_meas "recommend_audience while the new model is uncommitted: ${ms} ms (cold session)"
t_eq "it answers from the committed model" "$got" "$MD5_C"
t_lt "it did not block (ms)" "$ms" 2000

t_say "(d2) refresh_audience while a build's transaction is open, and two refreshes at once"
t0="$(t_now)"
ref="$(q "SET statement_timeout = '10s'" "SELECT members || ' ' || entered || ' ' || \"left\" FROM audience.refresh_audience('nike_top')" 2>&1)" || t_fail "refresh failed: $ref"
ms="$(t_ms "$t0" "$(t_now)")"
t_meas "refresh during the open build transaction: ${ms} ms ($ref)"
t_lt "refresh did not block (ms)" "$ms" 3000
t_eq "it used the committed model" "$(q "SELECT model_id FROM audience.saved_audiences WHERE name = 'nike_top'")" "$MODEL_C"
t_open c
t_bg_wait build3 60 || t_fail "build 3 failed: $(t_bg_out build3)"
MODEL_D="$(sed -n -E 's/^model=([0-9]+).*/\1/p' <<<"$(t_bg_out build3)")"

# A refresh kept open, then a build and a second refresh of the same audience.
t_bg refresh1 -c "BEGIN" -c "SELECT 'r1=' || members FROM audience.refresh_audience('nike_top')" -c "$(t_gate_sql d)" -c "COMMIT"
t_wait_for "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'refresh1' AND query LIKE 'DO %')" 60 "refresh1 to refresh and wait"
t0="$(t_now)"
b4="$(q "SET statement_timeout = '30s'" "SELECT model_id FROM audience.build('shop')" 2>&1)" || t_fail "build during an open refresh failed: $b4"
ms="$(t_ms "$t0" "$(t_now)")"
t_meas "build while a refresh transaction is open: ${ms} ms (model $b4)"
t_check "the build was not blocked by the refresh (< 30 s)" test "$ms" -lt 30000
t_bg refresh2 -c "SET statement_timeout = '60s'" -c "SELECT 'r2=' || members || ' ' || entered || ' ' || \"left\" FROM audience.refresh_audience('nike_top')"
t_wait_lock_wait refresh2 30
t_pass "a second refresh of the same audience waits for the first (row lock), it does not fail"
t_open d
t_bg_wait refresh1 30 || t_fail "refresh1 failed: $(t_bg_out refresh1)"
t_bg_wait refresh2 60 || t_fail "refresh2 failed: $(t_bg_out refresh2)"
t_meas "refresh1: $(t_bg_out refresh1 | grep r1=), refresh2 (after it): $(t_bg_out refresh2 | grep r2=)"
t_eq "the saved audience now refers to the latest model" "$(q "SELECT model_id FROM audience.saved_audiences WHERE name = 'nike_top'")" "$b4"
t_eq "members match the audience of the active model" \
    "$(q "SELECT md5(string_agg(user_id, ',' ORDER BY user_id)) FROM audience.audience_members JOIN audience.saved_audiences USING (audience_id) WHERE name = 'nike_top'")" \
    "$(q "SELECT md5(string_agg(user_id, ',' ORDER BY user_id)) FROM audience.recommend_audience($NIKE)")"
t_eq "history is consistent: per user, entered/left alternate starting with entered" \
    "$(q "SELECT count(*) FROM (SELECT user_id, change, lag(change) OVER (PARTITION BY user_id ORDER BY refreshed_at) AS prev,
                                       row_number() OVER (PARTITION BY user_id ORDER BY refreshed_at) AS n
                                  FROM audience.audience_changes) x
          WHERE (n = 1 AND change <> 'entered') OR change = prev")" 0
t_eq "exactly one model remains" "$(q "SELECT count(*) FROM audience.models")" 1
[[ -n "$MODEL_D" ]] || t_fail "build 3 printed no model id"

t_say "(e) tune() while a build's transaction is open: it searches meanwhile and waits only to record its choice"
t_bg build5 -c "BEGIN" -c "SELECT 'model=' || model_id FROM audience.build('shop', tune => false)" -c "$(t_gate_sql e)" -c "COMMIT"
t_wait_for "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'build5' AND query LIKE 'DO %')" 120 "build5 to finish its build and wait"
t_bg tune1 -c "SELECT 'own=' || own FROM audience.tune('shop', 'brand')"
t_wait_lock_wait tune1 300
t_pass "tune() did not fail with 55P03: it ran its search and waits on the build's row lock to record its choice"
t_open e
t_bg_wait build5 60 || t_fail "build5 failed: $(t_bg_out build5)"
t_bg_wait tune1 120 || t_fail "tune failed: $(t_bg_out tune1)"
t_check "tune() answered after the build committed ($(t_bg_out tune1 | grep own= || true))" grep -q own= "$T_TMP/tune1.out"
t_eq "its choice is remembered beside the build's settings" \
    "$(q "SELECT (build_settings->'tuned') ? 'brand' FROM audience.catalogs WHERE name = 'shop'")" t

t_check_server_log
t_finish
