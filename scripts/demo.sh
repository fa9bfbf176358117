#!/usr/bin/env bash
# THE main command: installs everything, builds and installs pg_audience, starts a
# private PostgreSQL (target/demo-pg, left running), recreates the database
# pg_audience_demo with the extension, and runs sql/demo.sql in it.
#
#   scripts/demo.sh          set up / rebuild / (re)start / rerun the demo
#   scripts/demo.sh stop     stop the demo server
#   scripts/demo.sh destroy  stop it and delete its data
#   scripts/demo.sh psql     open psql on the demo database (further arguments go to psql)
set -euo pipefail
PGA_SCRIPT=demo
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd -P)"
cluster=demo-pg
db=pg_audience_demo

case "${1:-run}" in
run) ;;
stop | destroy | psql)
    # shellcheck source=scripts/pg.sh
    source "$here/pg.sh"
    case "$1" in
    stop) pga_cluster_stop "$cluster" ;;
    destroy) pga_cluster_destroy "$cluster" ;;
    psql) exec "$PGA_BINDIR/psql" "$(pga_conninfo "$cluster" "$db")" "${@:2}" ;;
    esac
    exit 0
    ;;
*)
    echo "usage: $0 [run|stop|destroy|psql]" >&2
    exit 2
    ;;
esac

bash "$here/setup.sh"
bash "$here/install.sh"

# shellcheck source=scripts/pg.sh
source "$here/pg.sh"
cd "$REPO_ROOT"

pga_cluster_start "$cluster"
# The freshly installed .so is only picked up by new backends: fine, we reconnect.
pga_log "recreating database $db"
pga_psql "$cluster" -q -c "SET client_min_messages = warning" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
pga_psql "$cluster" -d "$db" -q -c "CREATE EXTENSION pg_audience"

if [[ -f sql/demo.sql ]]; then
    pga_log "running sql/demo.sql"
    pga_psql "$cluster" -d "$db" -f sql/demo.sql
else
    pga_log "sql/demo.sql not found; showing the installed version"
    pga_psql "$cluster" -d "$db" -c "SELECT audience.version();"
fi

sock="$(pga_cluster_sockdir "$cluster")"
port="$(pga_cluster_port "$cluster")"
cat <<EOF

The demo server is still running (data: $(pga_cluster_dir "$cluster"), log: $(pga_cluster_log "$cluster")).
  Connect:  psql -h $sock -p $port -U postgres $db
       or:  psql "host=127.0.0.1 port=$port user=postgres dbname=$db"
       or:  scripts/demo.sh psql
  Stop:     scripts/demo.sh stop        (delete it: scripts/demo.sh destroy)
EOF
