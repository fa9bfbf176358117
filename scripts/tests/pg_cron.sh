#!/usr/bin/env bash
# pg_cron recipe from the README, for real: a cron job rebuilds the catalog and refreshes every
# saved audience; the audience history shows the refresh. SKIPPED (exit 77) when Debian's
# postgresql-15-cron is not installed. Takes about a minute (pg_cron 1.4's smallest period).
set -euo pipefail
PGA_SCRIPT=pg_cron
source scripts/pg.sh
libdir="$("$(pga_pg_config)" --pkglibdir)"
if [[ ! -f "$libdir/pg_cron.so" ]]; then
    echo "skipped: pg_cron is not installed ($libdir/pg_cron.so; apt-get install postgresql-15-cron)"
    exit "$PGA_EXIT_SKIPPED"
fi
cl=t-pg-cron
pga_cluster_fresh "$cl" "shared_preload_libraries = 'pg_cron'" "cron.database_name = 'postgres'"
q() { pga_psql "$cl" -Atq -c "$1"; }
q "CREATE EXTENSION pg_audience; CREATE EXTENSION pg_cron;"
q "SET client_min_messages = warning; SELECT count(*) FROM audience.generate_demo_shop('demo', 2000, 200, 40000);" >/dev/null
q "SELECT audience.create_catalog('shop');
   SELECT audience.add_event('shop', 'demo.tracks', 'product_id', event_column => 'event', event_value => 'order_completed', weight => 5);
   SELECT audience.add_event('shop', 'demo.tracks', 'product_id', event_column => 'event', event_value => 'product_viewed', weight => 1);
   SELECT audience.map_property('shop', 'brand', column_name => 'brand', products => 'demo.products');" >/dev/null
q "SELECT model_id FROM audience.build('shop')" >/dev/null
q "SELECT members FROM audience.save_audience('nike', 'brand', 'Nike', 10)" >/dev/null
# The README's line, verbatim.
q "SELECT cron.schedule('audience-nightly', '* * * * *', \$\$SELECT audience.build('shop'); SELECT audience.refresh_all_audiences()\$\$)" >/dev/null
echo "waiting for pg_cron to run the job (up to 150 s)..."
for _ in $(seq 1 150); do
    status="$(q "SELECT status FROM cron.job_run_details ORDER BY runid DESC LIMIT 1")"
    [[ "$status" == succeeded || "$status" == failed ]] && break
    sleep 1
done
q "SELECT status, return_message FROM cron.job_run_details ORDER BY runid DESC LIMIT 1"
if [[ "$status" != succeeded ]]; then
    echo "FAIL: the cron job did not succeed (status: ${status:-none})" >&2
    exit 1
fi
refreshed="$(q "SELECT refreshed_at > created_at + interval '1 second' FROM audience.saved_audiences WHERE name = 'nike'")"
models="$(q "SELECT count(*) FROM audience.models")"
if [[ "$refreshed" != t || "$models" != 1 ]]; then
    echo "FAIL: the job ran but did not refresh the audience (refreshed: $refreshed, models: $models)" >&2
    exit 1
fi
echo "ok: pg_cron rebuilt the model and refreshed the saved audience"
