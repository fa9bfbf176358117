#!/usr/bin/env bash
# Scenario: one shared copy of the active model for every backend (src/api/shared.rs).
#   (a) a build writes the model's image under pg_audience/<db oid>/ when it commits; an aborted
#       build leaves no file;
#   (b) two sessions that served audiences from model A both see model B after a rebuild commits
#       between their calls, and the replaced model's file is gone;
#   (c) a terminated backend and a server restart leave no stale copy in use: the file survives
#       both, unchanged, and serves the same audience;
#   (d) a missing or damaged file is rebuilt from the stored model (same audience); with
#       audience.shared_models = off, or when the file cannot be written (a WARNING, 58030), the
#       audience is the same too;
#   (e) DROP EXTENSION / CREATE EXTENSION: the old install's files are swept by the next build.
set -euo pipefail
PGA_SCRIPT=serving
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=scripts/tests/_lib.sh
source scripts/tests/_lib.sh

t_cluster_fresh t-serving
t_gates_init

t_say "setup: demo shop (3000 users, 300 products, 60k events), catalog 'shop'"
q "SET client_min_messages = warning" "SELECT count(*) FROM audience.generate_demo_shop('demo', 3000, 300, 60000)" >/dev/null
t_register_shop shop demo
DATA_DIR="$(q "SHOW data_directory")"
DB_OID="$(q "SELECT oid FROM pg_database WHERE datname = current_database()")"
IMG_DIR="pg_audience/$DB_OID"
files() { q "SELECT coalesce(string_agg(f, ' ' ORDER BY f), '-') FROM pg_ls_dir('$IMG_DIR', true, false) f"; }
img_of() { echo "$(q "SELECT 'audience.models'::regclass::oid")_$1.img"; }
NIKE="'brand', 'Nike', 5, catalog => 'shop'"
AUD="$(t_audience_md5_sql "$NIKE")"

# ------------------------------------------------------------------ (a)
t_say "(a) the build writes the image at commit; an aborted build writes none"
MODEL_A="$(q "SELECT model_id FROM audience.build('shop')")"
t_eq "after the build, the directory holds model A's image only" "$(files)" "$(img_of "$MODEL_A")"
q "BEGIN" "SELECT model_id FROM audience.build('shop')" "ROLLBACK" >/dev/null
t_eq "after a rolled-back build, still model A's image only (no temporary file)" "$(files)" "$(img_of "$MODEL_A")"
MD5_A="$(q "$AUD")"
t_meas "audience under model A: $MD5_A"

# ------------------------------------------------------------------ (b)
t_say "(b) two sessions, a rebuild between their calls"
NEWBIE="SELECT count(*) FILTER (WHERE user_id = '999999') || '/' || count(*) FROM audience.recommend_audience($NIKE)"
for s in s1 s2; do
    t_bg "$s" -c "$NEWBIE" -c "$(t_gate_sql "go_$s")" -c "$NEWBIE"
done
t_wait_for "SELECT count(*) = 2 FROM pg_stat_activity WHERE application_name IN ('s1', 's2') AND query LIKE 'DO %'" 60 "both sessions to have served model A"
# A new user who bought Nike on 20 recent days: in the Nike audience of model B only.
q "INSERT INTO demo.tracks (user_id, event, product_id, properties, timestamp)
   SELECT 999999, 'order_completed', p.product_id, '{}', now() - d * interval '1 day'
   FROM generate_series(1, 20) d, (SELECT product_id FROM demo.products WHERE brand = 'Nike' ORDER BY product_id LIMIT 1) p"
MODEL_B="$(q "SELECT model_id FROM audience.build('shop')")"
t_eq "after the rebuild, the directory holds model B's image only" "$(files)" "$(img_of "$MODEL_B")"
t_open go_s1
t_open go_s2
for s in s1 s2; do
    t_bg_wait "$s" 60 || true
    mapfile -t out < <(t_bg_out "$s" | grep -E '^[0-9]+/[0-9]+$')
    t_meas "$s: before the rebuild ${out[0]:-?}, after ${out[1]:-?} (new user / audience size)"
    t_eq "$s served model A before the rebuild (new user absent)" "${out[0]%%/*}" 0
    t_eq "$s serves model B after it committed (new user present)" "${out[1]%%/*}" 1
done
MD5_B="$(q "$AUD")"

# ------------------------------------------------------------------ (c)
t_say "(c) a terminated backend and a server restart"
STAT="SELECT size || ' ' || modification FROM pg_stat_file('$IMG_DIR/$(img_of "$MODEL_B")')"
stat0="$(q "$STAT")"
t_bg holder -c "$AUD" -c "$(t_gate_sql never)"
t_wait_for "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = 'holder' AND query LIKE 'DO %')" 60 "the holder session to map model B"
t_eq "terminating the session holding the mapping succeeds" "$(q "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE application_name = 'holder'")" t
t_bg_wait holder 30 || true
t_eq "a new session serves the same audience" "$(q "$AUD")" "$MD5_B"
pga_cluster_stop "$CL" >/dev/null
pga_cluster_start "$CL" >/dev/null
t_eq "after a restart the image is the same file, unchanged" "$(q "$STAT")" "$stat0"
t_eq "after a restart the audience is the same" "$(q "$AUD")" "$MD5_B"

# ------------------------------------------------------------------ (d)
t_say "(d) missing and damaged images are rebuilt from the stored model"
IMG_PATH="$DATA_DIR/$IMG_DIR/$(img_of "$MODEL_B")"
pga_run_server rm -f "$IMG_PATH"
t_eq "with the file removed, a new session serves the same audience" "$(q "$AUD")" "$MD5_B"
t_eq "and wrote the file again" "$(files)" "$(img_of "$MODEL_B")"
size="$(q "SELECT size FROM pg_stat_file('$IMG_DIR/$(img_of "$MODEL_B")')")"
pga_run_server truncate -s $((size / 2)) "$IMG_PATH"
t_eq "with the file truncated, a new session serves the same audience" "$(q "$AUD")" "$MD5_B"
t_eq "and replaced the damaged file with a whole one" "$(q "SELECT size FROM pg_stat_file('$IMG_DIR/$(img_of "$MODEL_B")')")" "$size"
if grep -q "removing unusable model image" "$T_LOG"; then t_pass "the server log names the damaged file"; else t_fail "no log line about the damaged file"; fi
t_eq "audience.shared_models = off serves the same audience" "$(q "SET audience.shared_models = off" "$AUD")" "$MD5_B"
# A file that cannot be written (here: no permission; a full disk behaves the same): the session
# serves from a private copy and warns once, with SQLSTATE 58030.
pga_run_server rm -f "$IMG_PATH"
pga_run_server chmod 0500 "$DATA_DIR/$IMG_DIR"
out="$(pga_psql "$CL" -d "$DB" -Atq -v VERBOSITY=verbose -c "$AUD" -c "$AUD" 2>&1)"
pga_run_server chmod 0700 "$DATA_DIR/$IMG_DIR"
t_eq "an unwritable directory: both calls serve the same audience" "$(grep -c -x -F "$MD5_B" <<<"$out")" 2
t_eq "and the session warned once, with SQLSTATE 58030" "$(grep -c 'WARNING:  58030: could not write the shared copy' <<<"$out")" 1
t_eq "the next session writes the file again" "$(q "$AUD")|$(files)" "$MD5_B|$(img_of "$MODEL_B")"

# ------------------------------------------------------------------ (e)
t_say "(e) DROP EXTENSION, CREATE EXTENSION: the old install's files are swept"
OLD_FILE="$(img_of "$MODEL_B")"
q "SET client_min_messages = warning" "DROP EXTENSION pg_audience CASCADE" "CREATE EXTENSION pg_audience" >/dev/null
t_register_shop shop demo
MODEL_C="$(q "SELECT model_id FROM audience.build('shop')")"
NEW_FILE="$(img_of "$MODEL_C")"
t_check "the new install's model has a file of its own name ($NEW_FILE vs $OLD_FILE)" test "$NEW_FILE" != "$OLD_FILE"
t_eq "the build swept the old install's file" "$(files)" "$NEW_FILE"

t_check_server_log
t_finish
