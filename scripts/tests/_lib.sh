# shellcheck shell=bash
# Helpers for the scenario tests in scripts/tests/. Not a test itself (not executable, so
# scripts/test.sh skips it). Source it from a test, with cwd = repo root:
#
#     PGA_SCRIPT=mytest
#     source scripts/tests/_lib.sh
#     t_cluster_fresh t-mytest            # fresh cluster, extension created in db postgres; sets CL
#     q "SELECT 1"                        # one value, unaligned (-Atq), ON_ERROR_STOP
#     t_check "what" test-command...      # record FAIL (and continue) when the command fails
#     t_finish                            # exit 1 if anything failed
#
# Background sessions (application_name = NAME, output in $T_TMP/NAME.{out,rc,t0,t1}):
#     t_bg NAME [psql args...]            # psql -v VERBOSITY=verbose -At ... in the background
#     t_bg_wait NAME [timeout_s]          # waits, returns its exit code
#     t_wait_for "SQL returning t" [timeout_s] [what]
#     t_gate_sql NAME                     # SQL (a DO block) that waits until `t_open NAME`
#     t_open NAME                         # opens that gate (commits a row in public.t_gates)

# shellcheck source=scripts/pg.sh
source scripts/pg.sh
# Scenario checks compare psql output: NOTICEs (a build reports its automatic tuning as one) are
# not part of what they check.
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"

T_FAILS=0
T_CHECKS=0
T_TMP="$(mktemp -d "/tmp/pga-${PGA_SCRIPT:-test}.XXXXXX")"
chmod 0755 "$T_TMP"
T_BG_PIDS=()
pga_on_exit "t__cleanup"
T_SO="$("$(pga_pg_config)" --pkglibdir)/pg_audience.so"
T_SO_STAMP="$(stat -c '%Y %s' "$T_SO" 2>/dev/null || echo none)"

t__cleanup() {
    local p
    for p in "${T_BG_PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    if [[ "${T_KEEP_TMP:-}" == 1 || "$T_FAILS" -gt 0 ]]; then
        echo "(outputs kept in $T_TMP)" >&2
    else
        rm -rf "$T_TMP"
    fi
}

t_say()  { printf '\033[1;36m--\033[0m %s\n' "$*"; }
t_meas() { printf '   measured: %s\n' "$*"; }
t_pass() { T_CHECKS=$((T_CHECKS + 1)); printf '   \033[32mok\033[0m  %s\n' "$*"; }
t_fail() {
    T_CHECKS=$((T_CHECKS + 1))
    T_FAILS=$((T_FAILS + 1))
    printf '   \033[1;31mFAIL\033[0m %s\n' "$*"
    printf '\033[1;31mFAIL\033[0m [%s] %s\n' "${PGA_SCRIPT:-test}" "$*" >&2
    # scripts/test.sh repeats every failed check in its summary (a CI log may keep only its tail).
    if [[ -n "${PGA_FAILED_CHECKS:-}" ]]; then
        printf '[%s] %s\n' "${PGA_SCRIPT:-test}" "$*" >>"$PGA_FAILED_CHECKS"
    fi
}
t_die() { t_fail "$@"; exit 1; }

# t_check WHAT CMD...: pass if CMD succeeds.
t_check() {
    local what="$1"
    shift
    if "$@"; then t_pass "$what"; else t_fail "$what"; fi
}
# t_eq WHAT GOT WANT
t_eq() {
    if [[ "$2" == "$3" ]]; then t_pass "$1 ($2)"; else t_fail "$1: got '$2', expected '$3'"; fi
}
# t_lt WHAT GOT LIMIT (numbers, may be decimals)
t_lt() {
    if awk -v a="$2" -v b="$3" 'BEGIN { exit !(a + 0 < b + 0) }'; then
        t_pass "$1 ($2 < $3)"
    else
        t_fail "$1: $2 is not below $3"
    fi
}

t_now() { date +%s.%N; }
# t_ms T0 T1: milliseconds between two t_now stamps.
t_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%d", (b - a) * 1000 }'; }

# ------------------------------------------------------------------ cluster and SQL
CL=""
DB=postgres

# t_cluster_fresh NAME [conf-line...]: fresh cluster, CREATE EXTENSION in db postgres.
t_cluster_fresh() {
    CL="$1"
    shift
    pga_cluster_fresh "$CL" "$@" >&2
    T_LOG="$(pga_cluster_log "$CL")"
    t_create_extension postgres
}

t_create_extension() {
    local db="$1"
    pga_psql "$CL" -d "$db" -q -c 'SET client_min_messages = warning' -c 'CREATE EXTENSION IF NOT EXISTS pg_audience' ||
        t_die "CREATE EXTENSION pg_audience failed in $db (run scripts/install.sh)"
    if [[ "$(pga_psql "$CL" -d "$db" -Atqc "SELECT count(DISTINCT proname) = 3 FROM pg_proc WHERE pronamespace = 'audience'::regnamespace AND proname IN ('generate_demo_shop', 'build', 'recommend_audience')")" != t ]]; then
        t_die "the installed pg_audience lacks generate_demo_shop or build (an install racing another one?); rerun scripts/install.sh"
    fi
}

# q SQL...: run in $DB, print unaligned tuples only.
q() {
    local a=() s
    for s in "$@"; do a+=(-c "$s"); done
    pga_psql "$CL" -d "$DB" -Atq "${a[@]}"
}

# q_err SQL...: run expecting an error; prints "SQLSTATE<TAB>message" of the first error (or
# "OK" when there was none). Never fails.
q_err() {
    local a=() s out
    for s in "$@"; do a+=(-c "$s"); done
    out="$(pga_psql "$CL" -d "$DB" -Atq -v VERBOSITY=verbose "${a[@]}" 2>&1)" && { echo OK; return 0; }
    t_sqlstate_of <<<"$out"
}

# Reads psql output (VERBOSITY=verbose) on stdin; prints "SQLSTATE<TAB>message" of the first
# ERROR or FATAL.
t_sqlstate_of() {
    sed -n -E 's/^(psql:[^ ]* )?(ERROR|FATAL):  ([0-9A-Z]{5}): (.*)$/\3\t\4/p' | head -n1 | grep . || echo "NOERROR"
}

# ------------------------------------------------------------------ background sessions
# t_bg NAME [psql args...]
t_bg() {
    local name="$1"
    shift
    rm -f "$T_TMP/$name".{out,rc,t0,t1}
    (
        t_now >"$T_TMP/$name.t0"
        rc=0
        PGAPPNAME="$name" pga_psql "$CL" -d "$DB" -At -v VERBOSITY=verbose "$@" >"$T_TMP/$name.out" 2>&1 || rc=$?
        t_now >"$T_TMP/$name.t1"
        echo "$rc" >"$T_TMP/$name.rc"
    ) &
    T_BG_PIDS+=("$!")
    eval "T_BG_PID_${name//[^A-Za-z0-9_]/_}=$!"
}

# t_bg_wait NAME [timeout_s]: waits for the session; returns its psql exit code (124 on timeout).
t_bg_wait() {
    local name="$1" timeout="${2:-120}" i
    for ((i = 0; i < timeout * 20; i++)); do
        if [[ -s "$T_TMP/$name.rc" ]]; then
            return "$(cat "$T_TMP/$name.rc")"
        fi
        sleep 0.05
    done
    t_fail "background session $name did not finish within ${timeout}s"
    return 124
}
t_bg_out() { cat "$T_TMP/$1.out"; }
# Seconds the session ran (psql start to exit).
t_bg_ms() { t_ms "$(cat "$T_TMP/$1.t0")" "$(cat "$T_TMP/$1.t1")"; }
t_bg_pid() { q "SELECT pid FROM pg_stat_activity WHERE application_name = '$1' AND backend_type = 'client backend'"; }

# t_wait_for "SQL returning t" [timeout_s] [what]
t_wait_for() {
    local sql="$1" timeout="${2:-60}" what="${3:-$1}" i
    for ((i = 0; i < timeout * 20; i++)); do
        if [[ "$(q "$sql" 2>/dev/null)" == t ]]; then return 0; fi
        sleep 0.05
    done
    t_die "timed out after ${timeout}s waiting for: $what"
}

# Waits until session NAME is waiting for a heavyweight lock.
t_wait_lock_wait() {
    t_wait_for "SELECT EXISTS (SELECT 1 FROM pg_stat_activity a JOIN pg_locks l ON l.pid = a.pid WHERE a.application_name = '$1' AND NOT l.granted)" \
        "${2:-60}" "session $1 to wait on a lock"
}

# Gates: a session runs the SQL of t_gate_sql NAME and waits there (inside its transaction if
# it has one open) until another session calls t_open NAME. Bounded by a 120 s timeout.
t_gates_init() {
    q "CREATE TABLE IF NOT EXISTS public.t_gates (name text PRIMARY KEY)" "CREATE UNLOGGED SEQUENCE IF NOT EXISTS public.t_ticks"
}
t_gate_sql() {
    printf "DO \$g\$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN WHILE NOT EXISTS (SELECT 1 FROM public.t_gates WHERE name = '%s') LOOP IF clock_timestamp() - t0 > interval '120 s' THEN RAISE EXCEPTION 'gate %s never opened'; END IF; PERFORM pg_sleep(0.02); END LOOP; END \$g\$" "$1" "$1"
}
t_open() { q "INSERT INTO public.t_gates VALUES ('$1') ON CONFLICT DO NOTHING"; }

# ------------------------------------------------------------------ demo shop
# t_register_shop CATALOG SCHEMA: the catalog of sql/demo.sql on a generated shop in SCHEMA.
t_register_shop() {
    local c="$1" s="$2"
    q "SET client_min_messages = warning" \
      "SELECT audience.create_catalog('$c')" \
      "SELECT audience.add_event('$c', '$s.tracks', 'product_id', event_column => 'event', event_value => 'order_completed', weight => 5, half_life => '60 days')" \
      "SELECT audience.add_event('$c', '$s.tracks', 'product_id', event_column => 'event', event_value => 'product_added', weight => 3, half_life => '30 days')" \
      "SELECT audience.add_event('$c', '$s.tracks', 'product_id', event_column => 'event', event_value => 'product_viewed', weight => 1, half_life => '14 days')" \
      "SELECT audience.add_event('$c', '$s.wishlist_saves', 'sku', event_time => 'saved_at', weight => 2, half_life => '30 days')" \
      "SELECT audience.map_property('$c', 'brand', column_name => 'brand', products => '$s.products')" \
      "SELECT audience.map_property('$c', 'price_band', column_name => 'price_band', products => '$s.products')" \
      "SELECT audience.map_property('$c', 'category', json_key => 'category', json_column => 'properties', event => e) FROM unnest(ARRAY['order_completed', 'product_added', 'product_viewed']) e" \
      >/dev/null
}
# SQL: the number of rows a build of that catalog reads (in the caller's snapshot).
t_expected_rows_sql() {
    echo "(SELECT count(*) FROM $1.tracks WHERE event IN ('order_completed', 'product_added', 'product_viewed')) + (SELECT count(*) FROM $1.wishlist_saves)"
}
# SQL: md5 of an audience (user ids in rank order).
t_audience_md5_sql() {
    echo "SELECT md5(string_agg(user_id || ':' || rank, ',' ORDER BY rank)) || ' ' || count(*) FROM audience.recommend_audience($1)"
}

# ------------------------------------------------------------------ server log
# Fails when the server log shows a crash. Mentions a concurrent reinstall of the library.
t_check_server_log() {
    local bad
    bad="$(grep -E 'PANIC|TRAP:|terminated by signal|all server processes terminated|database system was interrupted|segfault' "$T_LOG" || true)"
    if [[ -z "$bad" ]]; then
        t_pass "server log has no PANIC / crash / 'terminated by signal'"
        return 0
    fi
    local now
    now="$(stat -c '%Y %s' "$T_SO" 2>/dev/null || echo none)"
    if [[ "$now" != "$T_SO_STAMP" ]]; then
        t_fail "server log shows a crash, and $T_SO was replaced while the test ran (a concurrent scripts/install.sh overwrites the library in place: SIGBUS in running backends); rerun the test. Log lines:"
    else
        t_fail "server log shows a crash:"
    fi
    printf '%s\n' "$bad" | head -20 | sed 's/^/      /'
}

t_finish() {
    echo
    if ((T_FAILS > 0)); then
        printf '\033[1;31m%s: %d of %d checks FAILED\033[0m\n' "${PGA_SCRIPT:-test}" "$T_FAILS" "$T_CHECKS"
        exit 1
    fi
    printf '\033[1;32m%s: all %d checks passed\033[0m\n' "${PGA_SCRIPT:-test}" "$T_CHECKS"
    exit 0
}
