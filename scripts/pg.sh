# shellcheck shell=bash
# Private PostgreSQL clusters for tests and the demo. Source this file:
#
#     source "$REPO_ROOT/scripts/pg.sh"          # or: source scripts/pg.sh (cwd = repo root)
#     pga_cluster_fresh mytest                    # wiped, initdb'd, started; stopped on exit
#     pga_psql mytest -c 'CREATE EXTENSION pg_audience'
#     pga_psql mytest -d otherdb -f some.sql
#
# A cluster NAME lives in target/NAME/ (data/, run/ = unix socket dir, server.log,
# port), listens on 127.0.0.1 on a free port from 55432 up, and always has the
# superuser `postgres` with trust authentication. The server runs as the OS user
# `postgres` when the invoker is root (Postgres refuses root), as the invoker
# otherwise. Clients (psql, pg_regress, pg_dump, ...) run as the invoker.
#
# When the invoker is root and the OS user postgres cannot reach target/ (a
# checkout under /root, say), cluster directories go to
# /tmp/pg_audience-<hash of repo path>/NAME instead and target/NAME is a symlink
# to it. Set PGA_STATE_DIR to choose that base directory yourself.
#
# Functions (NAME is a cluster name such as "regress-pg"):
#   pga_cluster_start NAME [conf-line...]  init if needed, start if not running (reuse)
#   pga_cluster_fresh NAME [conf-line...]  destroy, init, start, and stop it when the
#                                          calling script exits (also on failure)
#   pga_cluster_stop NAME                  stop if running
#   pga_cluster_destroy NAME               stop and delete
#   pga_cluster_is_running NAME
#   pga_cluster_port NAME / pga_cluster_sockdir NAME / pga_cluster_dir NAME
#   pga_cluster_log NAME                   path of the server log
#   pga_cluster_env NAME                   export PGHOST/PGPORT/PGUSER(/PGDATABASE=postgres)
#   pga_conninfo NAME [DB]                 "host=... port=... user=postgres dbname=DB"
#   pga_psql NAME [psql args...]           psql -X -v ON_ERROR_STOP=1 as superuser postgres,
#                                          database "postgres" unless -d/dbname given
#   pga_run_server CMD...                  run CMD as the server's OS user (cwd /)
#   pga_on_exit 'shell command'            run at exit of the calling script (use this
#                                          instead of your own `trap ... EXIT`)
# Extra server settings for every cluster: PGA_PG_CONF (newline-separated lines).

# shellcheck source=scripts/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [[ -n "${PGA_PG_SOURCED:-}" ]]; then
    return 0
fi
PGA_PG_SOURCED=1

PGA_SUPERUSER=postgres
PGA_PORT_FIRST="${PGA_PORT_FIRST:-55432}"
PGA_PORT_LAST="${PGA_PORT_LAST:-55731}"

# ---------------------------------------------------------------- exit hooks
PGA_EXIT_HOOKS=()
PGA_TRAP_INSTALLED=""

pga__exit_handler() {
    local rc=$? i
    set +e
    # Run in reverse order of registration.
    for ((i = ${#PGA_EXIT_HOOKS[@]} - 1; i >= 0; i--)); do
        eval "${PGA_EXIT_HOOKS[$i]}"
    done
    PGA_EXIT_HOOKS=()
    exit "$rc"
}

pga_on_exit() {
    if [[ -z "$PGA_TRAP_INSTALLED" ]]; then
        # Keep an EXIT trap the caller may already have set.
        local prev
        prev="$(trap -p EXIT)"
        if [[ -n "$prev" ]]; then
            prev="${prev#trap -- \'}"
            prev="${prev%\' EXIT}"
            PGA_EXIT_HOOKS+=("$prev")
        fi
        trap pga__exit_handler EXIT
        trap 'exit 130' INT
        trap 'exit 143' TERM
        PGA_TRAP_INSTALLED=1
    fi
    PGA_EXIT_HOOKS+=("$1")
}

# ---------------------------------------------------------------- users
pga_server_user() {
    if pga_is_root; then echo postgres; else id -un; fi
}

# Run a command as the server's OS user, from / (the invoker's cwd may be unreadable to it).
pga_run_server() {
    if pga_is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

# ---------------------------------------------------------------- locations
pga__hash() { printf '%s' "$1" | md5sum | cut -c1-10; }

# Base directory that holds the cluster directories (echoes it, creates it).
pga_state_base() {
    if [[ -n "${PGA_STATE_DIR:-}" ]]; then
        mkdir -p "$PGA_STATE_DIR"
        printf '%s\n' "$PGA_STATE_DIR"
        return 0
    fi
    local base="$REPO_ROOT/target"
    mkdir -p "$base"
    if ! pga_is_root || runuser -u postgres -- test -x "$base" 2>/dev/null; then
        printf '%s\n' "$base"
        return 0
    fi
    # root, and postgres cannot traverse to target/: use a world-traversable place.
    local fb
    fb="/tmp/pg_audience-$(pga__hash "$REPO_ROOT")"
    if [[ -e "$fb" && ( ! -d "$fb" || -L "$fb" || "$(stat -c %u "$fb")" != 0 ) ]]; then
        pga_die "$fb exists but is not a root-owned directory; remove it or set PGA_STATE_DIR"
    fi
    mkdir -p "$fb"
    chmod 0755 "$fb"
    printf '%s\n' "$fb"
}

PGA_STATE_BASE="$(pga_state_base)"
PGA_BINDIR="$(pga_pg_bindir "$(pga_pg_version)")"

pga_cluster_dir() {
    local name="${1:?cluster name}"
    printf '%s/%s\n' "$PGA_STATE_BASE" "$name"
}

# Unix socket directory: <cluster>/run, or a short path under /tmp when that
# would exceed the 107-byte socket path limit.
pga_cluster_sockdir() {
    local dir
    dir="$(pga_cluster_dir "$1")"
    if ((${#dir} + 4 + 16 < 100)); then
        printf '%s/run\n' "$dir"
    else
        printf '/tmp/pga-sock-%s\n' "$(pga__hash "$dir")"
    fi
}

pga_cluster_log() { printf '%s/server.log\n' "$(pga_cluster_dir "$1")"; }

pga_cluster_port() {
    local f
    f="$(pga_cluster_dir "$1")/port"
    [[ -s "$f" ]] || pga_die "cluster $1 has no port (not started?)"
    cat "$f"
}

# ---------------------------------------------------------------- ports
pga__port_in_use() {
    local p="$1" bindir rc=0
    # Something accepting TCP connections?
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then return 0; fi
    # Listening on any address (ss from iproute2, when installed)?
    if command -v ss >/dev/null 2>&1 && [[ -n "$(ss -Hltn "sport = :$p" 2>/dev/null)" ]]; then
        return 0
    fi
    # A postgres answering on that port (any interface)?
    bindir="$PGA_BINDIR"
    "$bindir/pg_isready" -q -h 127.0.0.1 -p "$p" -t 1 >/dev/null 2>&1 || rc=$?
    [[ "$rc" -ne 2 ]]
}

pga_find_free_port() {
    local p start="${1:-$PGA_PORT_FIRST}"
    for ((p = start; p <= PGA_PORT_LAST; p++)); do
        if ! pga__port_in_use "$p"; then
            printf '%s\n' "$p"
            return 0
        fi
    done
    pga_die "no free TCP port in $start..$PGA_PORT_LAST"
}

# ---------------------------------------------------------------- clusters
pga_cluster_is_running() {
    local data bindir
    data="$(pga_cluster_dir "$1")/data"
    [[ -f "$data/PG_VERSION" ]] || return 1
    bindir="$PGA_BINDIR"
    pga_run_server "$bindir/pg_ctl" status -D "$data" >/dev/null 2>&1
}

pga_cluster_init() {
    local name="${1:?cluster name}" dir data sock bindir user
    dir="$(pga_cluster_dir "$name")"
    data="$dir/data"
    sock="$(pga_cluster_sockdir "$name")"
    user="$(pga_server_user)"
    bindir="$PGA_BINDIR"
    if [[ -f "$data/PG_VERSION" ]]; then
        return 0
    fi
    pga_log "initdb cluster '$name' in $dir (server runs as OS user $user)"
    rm -rf "$dir"
    mkdir -p "$dir" "$sock"
    if pga_is_root; then
        chown postgres: "$dir" "$sock"
        # Make target/NAME point at the cluster when it lives outside target/.
        if [[ "$(dirname "$dir")" != "$REPO_ROOT/target" ]]; then
            mkdir -p "$REPO_ROOT/target"
            ln -sfn "$dir" "$REPO_ROOT/target/$name"
        fi
    fi
    chmod 0755 "$dir"
    if ! pga_run_server "$bindir/initdb" -D "$data" -U "$PGA_SUPERUSER" -A trust -E UTF8 \
        --locale=C --no-instructions >"$dir/initdb.log" 2>&1; then
        cat "$dir/initdb.log" >&2
        pga_die "initdb failed for cluster '$name'"
    fi
    echo "include_if_exists = 'pg_audience_cluster.conf'" |
        pga_run_server tee -a "$data/postgresql.conf" >/dev/null
}

# Write the per-start settings file (port, sockets, parallelism, extras).
pga__write_conf() {
    local name="$1" port="$2" data sock
    shift 2
    data="$(pga_cluster_dir "$name")/data"
    sock="$(pga_cluster_sockdir "$name")"
    {
        echo "# written by scripts/pg.sh at every start; do not edit"
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $port"
        echo "unix_socket_directories = '$sock'"
        echo "max_connections = 100"
        echo "max_worker_processes = 16"
        echo "max_parallel_workers = 8"
        echo "max_parallel_workers_per_gather = 2"
        echo "lc_messages = 'C'"
        echo "log_line_prefix = '%m [%p] %q%u@%d '"
        if [[ -n "${PGA_PG_CONF:-}" ]]; then printf '%s\n' "$PGA_PG_CONF"; fi
        local l
        for l in "$@"; do printf '%s\n' "$l"; done
    } | pga_run_server tee "$data/pg_audience_cluster.conf" >/dev/null
}

pga_cluster_start() {
    local name="${1:?cluster name}" dir data sock bindir port log
    shift
    dir="$(pga_cluster_dir "$name")"
    data="$dir/data"
    sock="$(pga_cluster_sockdir "$name")"
    log="$dir/server.log"
    bindir="$PGA_BINDIR"
    pga_cluster_init "$name"
    if pga_cluster_is_running "$name"; then
        if [[ $# -gt 0 ]]; then
            pga_log "cluster '$name' is running; restarting it to apply settings"
            pga_cluster_stop "$name"
        else
            pga_log "cluster '$name' already running on port $(pga_cluster_port "$name")"
            return 0
        fi
    fi
    mkdir -p "$sock"
    if pga_is_root; then chown postgres: "$sock"; fi
    port="$PGA_PORT_FIRST"
    for _ in 1 2 3 4 5; do
        port="$(pga_find_free_port "$port")"
        pga__write_conf "$name" "$port" "$@"
        pga_log "starting cluster '$name' on port $port (log: $log)"
        if pga_run_server "$bindir/pg_ctl" start -w -t 120 -D "$data" -l "$log" >/dev/null 2>&1; then
            echo "$port" >"$dir/port"
            return 0
        fi
        if tail -n 20 "$log" 2>/dev/null | grep -q -i 'could not bind\|address already in use\|could not create lock file'; then
            pga_warn "port $port was taken meanwhile; trying another"
            port=$((port + 1))
            continue
        fi
        tail -n 40 "$log" >&2 || true
        pga_die "could not start cluster '$name' (see $log)"
    done
    pga_die "could not start cluster '$name' after 5 attempts (see $log)"
}

pga_cluster_stop() {
    local name="${1:?cluster name}" data bindir
    data="$(pga_cluster_dir "$name")/data"
    bindir="$PGA_BINDIR"
    if pga_cluster_is_running "$name"; then
        pga_log "stopping cluster '$name'"
        pga_run_server "$bindir/pg_ctl" stop -w -t 60 -m fast -D "$data" >/dev/null 2>&1 ||
            pga_run_server "$bindir/pg_ctl" stop -w -t 30 -m immediate -D "$data" >/dev/null 2>&1 ||
            pga_warn "could not stop cluster '$name'"
    fi
}

pga_cluster_destroy() {
    local name="${1:?cluster name}" dir sock
    dir="$(pga_cluster_dir "$name")"
    sock="$(pga_cluster_sockdir "$name")"
    pga_cluster_stop "$name"
    rm -rf "$dir"
    [[ "$sock" == /tmp/pga-sock-* ]] && rm -rf "$sock"
    if [[ -L "$REPO_ROOT/target/$name" ]]; then rm -f "$REPO_ROOT/target/$name"; fi
    return 0
}

# A brand-new cluster, stopped when the calling script exits (success or failure).
pga_cluster_fresh() {
    local name="${1:?cluster name}"
    shift
    pga_cluster_destroy "$name"
    pga_on_exit "pga_cluster_stop '$name'"
    pga_cluster_start "$name" "$@"
}

pga_conninfo() {
    local name="${1:?cluster name}" db="${2:-postgres}"
    printf 'host=%s port=%s user=%s dbname=%s\n' "$(pga_cluster_sockdir "$name")" \
        "$(pga_cluster_port "$name")" "$PGA_SUPERUSER" "$db"
}

pga_cluster_env() {
    local name="${1:?cluster name}"
    PGHOST="$(pga_cluster_sockdir "$name")"
    PGPORT="$(pga_cluster_port "$name")"
    PGUSER="$PGA_SUPERUSER"
    PGDATABASE="${PGDATABASE:-postgres}"
    export PGHOST PGPORT PGUSER PGDATABASE
}

pga_psql() {
    local name="${1:?cluster name}" sock port bindir
    shift
    sock="$(pga_cluster_sockdir "$name")"
    port="$(pga_cluster_port "$name")"
    bindir="$PGA_BINDIR"
    PGHOST="$sock" PGPORT="$port" PGUSER="$PGA_SUPERUSER" PGDATABASE=postgres \
        "$bindir/psql" -X -v ON_ERROR_STOP=1 "$@"
}

# A/B benchmarks between two builds of the library (bench/scan_ab.sh, bench/serving_ab.sh):
# pga_lib_swap_begin keeps a copy of the installed pg_audience.so, put back on exit;
# pga_lib_put FILE puts FILE in its place with `mv` (a new inode: a library mapped by a running
# backend must never be overwritten in place).
pga_lib_swap_begin() {
    PGA_LIB="$("$(pga_pg_config)" --pkglibdir)/pg_audience.so"
    PGA_LIB_SAVED="$(mktemp -d)"
    cp "$PGA_LIB" "$PGA_LIB_SAVED/installed.so"
    pga_on_exit "pga_lib_put '$PGA_LIB_SAVED/installed.so'; rm -rf '$PGA_LIB_SAVED'"
}
pga_lib_put() {
    cp "$1" "$(dirname "$PGA_LIB")/.pg_audience.so.tmp" && mv -f "$(dirname "$PGA_LIB")/.pg_audience.so.tmp" "$PGA_LIB"
}
# pga_ab_begin CLUSTER: the set-up of an A/B benchmark between two builds of the library ($A,
# $B, required): the installed library kept and put back on exit (pga_lib_swap_begin), a scratch
# directory in PGA_AB_WORK (removed on exit), CLUSTER started with the benchmarks' settings.
pga_ab_begin() {
    : "${A:?A=path of library A}" "${B:?B=path of library B}"
    pga_lib_swap_begin
    PGA_AB_WORK="$(mktemp -d)"
    pga_on_exit "rm -rf '$PGA_AB_WORK'"
    pga_bench_start "$1"
}
# pga_bench_start CLUSTER: the cluster of the timed builds (bench/build_ab.sh, scan_ab.sh,
# implicit_ab.sh ...) started, or restarted, with their settings.
pga_bench_start() {
    pga_cluster_start "$1" "shared_buffers = 2GB" "max_parallel_workers_per_gather = 2" >&2
}
# pga_bench_settle CLUSTER [DB]: before a timed build, the state a build meets when builds are
# spaced as autovacuum expects: the replaced models' rows in audience.model_data vacuumed (every
# build deletes one model's rows: 170k TOAST chunks at the 20M-event shop; after builds in quick
# succession its TOAST table held 8 GB and 4M dead chunks, throttled autovacuum ran for minutes and
# builds wrote their rows in 11 s instead of 1.7) and the dirty buffers of the builds before
# written out (a checkpoint), so one build's writes are not timed in the next.
pga_bench_settle() {
    local db="${2:-postgres}"
    pga_psql "$1" -d "$db" -Atq -c "VACUUM audience.model_data" -c "CHECKPOINT" >/dev/null
}
# pga_bench_compact CLUSTER [DB]: audience.model_data rewritten to its live rows (VACUUM FULL:
# an exclusive lock, seconds at the 20M-event shop) when its TOAST table holds over three times
# them, as left by earlier benchmarks' builds in quick succession.
pga_bench_compact() {
    local db="${2:-postgres}" bloated
    bloated="$(pga_psql "$1" -d "$db" -Atq -c "SELECT pg_catalog.pg_total_relation_size('audience.model_data') > 3 * GREATEST(1, (SELECT pg_catalog.sum(pg_catalog.length(data)) FROM audience.model_data))")"
    if [[ "$bloated" == t ]]; then
        pga_psql "$1" -d "$db" -Atq -c "VACUUM FULL audience.model_data" >/dev/null
    fi
}
