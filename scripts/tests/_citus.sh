# shellcheck shell=bash
# Helpers for Citus (scripts/tests/citus.sh, bench/citus.sh); source after scripts/tests/_lib.sh.
# Not a test (not executable).
#
#   citus_cluster NAME [conf-line...]   NAME-coord + NAME-w1 + NAME-w2 with Citus, the workers added
#                                       to the coordinator, pg_audience created (propagated to the
#                                       workers); sets CL to the coordinator. Stopped at exit unless
#                                       CITUS_KEEP=1.
#   citus_layout SRC LAYOUT             the demo shop tables of schema SRC copied into schema LAYOUT
#                                       (hash, apart, single, mixed: see scripts/tests/citus.sh)
#   citus_scan_plan CATALOG             EXPLAIN of the catalog's build scan on Citus: one aggregate
#                                       per source (the queries build runs)

citus_cluster() {
    local name="$1" n port
    shift
    local conf=("shared_preload_libraries = 'citus'" "max_connections = 200"
        "citus.allow_aggregate_worker_combine_on_internal_types = on" "$@")
    for n in w1 w2 coord; do
        if [[ "${CITUS_KEEP:-}" == 1 ]]; then
            pga_cluster_destroy "$name-$n" >&2
            pga_cluster_start "$name-$n" "${conf[@]}" >&2
        else
            pga_cluster_fresh "$name-$n" "${conf[@]}" >&2
        fi
        pga_psql "$name-$n" -q -c 'SET client_min_messages = warning' -c 'CREATE EXTENSION citus'
    done
    CL="$name-coord"
    q "SELECT citus_set_coordinator_host('127.0.0.1', $(pga_cluster_port "$CL"))" >/dev/null
    for n in w1 w2; do
        port="$(pga_cluster_port "$name-$n")"
        q "SELECT citus_add_node('127.0.0.1', $port)" >/dev/null
    done
    t_create_extension postgres
    if [[ "$(pga_psql "$name-w1" -Atqc "SELECT count(*) FROM pg_extension WHERE extname = 'pg_audience'")" != 1 ]]; then
        t_die "CREATE EXTENSION pg_audience was not propagated to the workers"
    fi
}

citus_layout() {
    local src="$1" l="$2" t dist
    q "SET client_min_messages = warning" "DROP SCHEMA IF EXISTS $l CASCADE" "CREATE SCHEMA $l" >/dev/null
    for t in tracks wishlist_saves products; do
        # No constraints: a primary key must include the distribution column.
        q "CREATE TABLE $l.$t AS SELECT * FROM $src.$t WITH NO DATA" >/dev/null
    done
    for t in tracks wishlist_saves; do
        case "$l:$t" in
            hash:tracks) dist="'user_id', shard_count => 32" ;;
            hash:wishlist_saves) dist="'user_id', colocate_with => 'hash.tracks'" ;;
            apart:*) dist="'user_id', shard_count => 32, colocate_with => 'none'" ;;
            single:*) dist="NULL" ;;
            mixed:tracks) dist="'user_id', shard_count => 32" ;;
            mixed:wishlist_saves) dist="" ;;
            *) t_die "unknown layout $l" ;;
        esac
        if [[ -n "$dist" ]]; then
            q "SELECT create_distributed_table('$l.$t', $dist)" >/dev/null
        fi
        q "INSERT INTO $l.$t SELECT * FROM $src.$t" >/dev/null
    done
    q "INSERT INTO $l.products SELECT * FROM $src.products" "ANALYZE $l.tracks" "ANALYZE $l.wishlist_saves" "ANALYZE $l.products" >/dev/null
}

citus_scan_plan() {
    local query
    while IFS= read -r query; do
        q "EXPLAIN (COSTS OFF) $query"
    done < <(q "SELECT unnest(source_queries) FROM audience._build_query((SELECT catalog_id FROM audience.catalogs WHERE name = '$1'), NULL, NULL, NULL)")
}
