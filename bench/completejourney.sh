#!/usr/bin/env bash
# Repeat-purchase audiences on real grocery data (The Complete Journey, 1,231 households, one year):
# audience.evaluate of the installed pg_audience next to the SQL an analyst writes and the Python
# `implicit` library (bench/repeat_implicit.py), on the same temporal split, one table per property.
#
#   bench/completejourney.sh                             # category and manufacturer
#   PROPERTIES=category bench/completejourney.sh
#
# Steps: data (../shared/data/completejourney/prepare.sh into target/data/completejourney unless
# present; no script and no data -> "skipped: ..." and exit 0), the Python baselines per property
# (bench/implicit_baseline.sh repeat ... -> target/bench/cj_<property>_implicit.json, or
# cj_<property>_implicit_<frac>.json for another HOLDOUT_FRAC; ~1.5 min each, reused when the file is
# there for the same split), private cluster `bench-pg` (scripts/pg.sh,
# stopped at exit unless BENCH_KEEP=1), database `grocery` (recreated: tables events, products,
# bench/completejourney_load.sql), catalog `cj` (purchases from events with event_time timestamptz,
# weight 1; properties from products), one audience.build, then per property
# audience.evaluate('cj', property, holdout => HOLDOUT_FRAC of the time span) and the macro over the
# values with >= MIN_POSITIVES positives of every method it returns, next to the Python rows.
# Without the extension installed, the table has the Python rows only.
#
# Protocol (shared with bench/repeat_implicit.py): cutoff = last event - HOLDOUT_FRAC * (last - first),
# moved back to the UTC midnight before it as audience.evaluate does; training users = users with an event before the cutoff; positives for V = training users buying an
# item having V after it; audience = top K% of the eligible users (k = max(1, floor(K/100 * eligible)),
# ties by user id as text); all users, and cross-sell (users who never bought V before the cutoff).
#
# Env:
#   CJ_DIR          data folder with events.tsv / items.tsv (default target/data/completejourney)
#   PROPERTIES      items.tsv columns to benchmark (default "category manufacturer")
#   MIN_POSITIVES   macro over values with at least this many positives, per variant (default 5)
#   HOLDOUT_FRAC    holdout = last FRAC of the time span (default 0.15)
#   CUTOFF_ALIGN    day (default: the Python side starts the holdout at the UTC midnight before, as the
#                   extension does) | none (the exact time; only for an extension that does not align)
#   CJ_IMPLICIT     auto (default: run the Python baselines unless a matching JSON exists) | always | never
#   CJ_BUILD_ARGS   extra audience.build arguments, e.g. "factors => 32" (remembered by the catalog,
#                   so evaluate trains with them)
#   BENCH_KEEP=1    leave the cluster running (psql: source scripts/pg.sh; pga_psql bench-pg -d grocery)
set -euo pipefail
# shellcheck disable=SC2034 # read by scripts/common.sh for log prefixes
PGA_SCRIPT=completejourney
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

data="${CJ_DIR:-$ROOT/target/data/completejourney}"
prepare="$ROOT/../shared/data/completejourney/prepare.sh"
if [[ ! -f "$data/events.tsv" || ! -f "$data/items.tsv" ]]; then
    if [[ -n "${CJ_DIR:-}" || ! -f "$prepare" ]]; then
        echo "skipped: Complete Journey data not found in $data (events.tsv, items.tsv) and no $prepare to make it"
        exit 0
    fi
    echo "preparing the data: bash $prepare $data" >&2
    bash "$prepare" "$data" >&2
fi
data="$(cd "$data" && pwd -P)"

expect_events=$'user_id\tevent\tproduct_id\ttimestamp'
if [[ "$(head -n 1 "$data/events.tsv" | tr -d '\r')" != "$expect_events" ]]; then
    echo "error: unexpected header in $data/events.tsv (want: ${expect_events//$'\t'/ })" >&2
    exit 1
fi
expect_items=$'product_id\tcategory\tdepartment\tmanufacturer\tbrand_type\tproduct_type'
if [[ "$(head -n 1 "$data/items.tsv" | tr -d '\r')" != "$expect_items" ]]; then
    echo "error: unexpected header in $data/items.tsv (want: ${expect_items//$'\t'/ })" >&2
    exit 1
fi

PROPERTIES="${PROPERTIES:-category manufacturer}"
MIN_POSITIVES="${MIN_POSITIVES:-5}"
HOLDOUT_FRAC="${HOLDOUT_FRAC:-0.15}"
CJ_IMPLICIT="${CJ_IMPLICIT:-auto}"
CJ_BUILD_ARGS="${CJ_BUILD_ARGS:-}"
CUTOFF_ALIGN="${CUTOFF_ALIGN:-day}"
for prop in $PROPERTIES; do
    case "$prop" in category | department | manufacturer | brand_type | product_type) ;;
        *) echo "error: unknown property '$prop' (items.tsv has category department manufacturer brand_type product_type)" >&2; exit 1 ;;
    esac
done
[[ "$MIN_POSITIVES" =~ ^[0-9]+$ ]] || { echo "error: MIN_POSITIVES must be an integer" >&2; exit 1; }
[[ "$HOLDOUT_FRAC" =~ ^0?\.[0-9]+$ ]] || { echo "error: HOLDOUT_FRAC must be a fraction like 0.15" >&2; exit 1; }
case "$CJ_IMPLICIT" in auto | always | never) ;; *) echo "error: CJ_IMPLICIT must be auto, always or never" >&2; exit 1 ;; esac
case "$CUTOFF_ALIGN" in day | none) ;; *) echo "error: CUTOFF_ALIGN must be day or none" >&2; exit 1 ;; esac

# target/bench/cj_<property>_implicit.json (…_implicit_<frac>.json for another HOLDOUT_FRAC)
implicit_json() {
    local suffix=""
    [[ "$HOLDOUT_FRAC" == 0.15 || "$HOLDOUT_FRAC" == .15 ]] || suffix="_$HOLDOUT_FRAC"
    printf '%s/target/bench/cj_%s_implicit%s.json\n' "$ROOT" "$1" "$suffix"
}

# ---- the Python baselines first (no database running meanwhile: the machine may be small)
json_matches() { # $1 = file: same events file, split and min positives as this run?
    python3 - "$1" "$data/events.tsv" "$HOLDOUT_FRAC" "$MIN_POSITIVES" "$CUTOFF_ALIGN" <<'PY' 2>/dev/null
import json, sys
d = json.load(open(sys.argv[1]))
ok = (d["events"] == sys.argv[2] and abs(d["split"]["holdout_frac"] - float(sys.argv[3])) < 1e-12
      and d["min_positives"] == int(sys.argv[4]) and d["split"].get("cutoff_align") == sys.argv[5]
      and not d.get("quick", False))
sys.exit(0 if ok else 1)
PY
}
if [[ "$CJ_IMPLICIT" != never ]]; then
    for prop in $PROPERTIES; do
        out="$(implicit_json "$prop")"
        if [[ "$CJ_IMPLICIT" == auto && -f "$out" && "$out" -nt "$data/events.tsv" ]] && json_matches "$out"; then
            echo "Python baselines for $prop: reusing $out (CJ_IMPLICIT=always to recompute)" >&2
            continue
        fi
        echo "Python baselines for $prop -> $out" >&2
        "$ROOT/bench/implicit_baseline.sh" repeat --events "$data/events.tsv" --items "$data/items.tsv" \
            --property "$prop" --holdout-frac "$HOLDOUT_FRAC" --cutoff-align "$CUTOFF_ALIGN" \
            --min-positives "$MIN_POSITIVES" \
            --dataset completejourney --out "$out" >&2
    done
fi

# shellcheck source=scripts/pg.sh
source "$ROOT/scripts/pg.sh"
CLUSTER=bench-pg
DB=grocery
pga_cluster_start "$CLUSTER"
if [[ "${BENCH_KEEP:-0}" != 1 ]]; then pga_on_exit "pga_cluster_stop '$CLUSTER'"; fi
psqlq() { pga_psql "$CLUSTER" -q "$@"; }

psqlq -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
psqlq -d "$DB" -v events="$data/events.tsv" -v items="$data/items.tsv" -f "$ROOT/bench/completejourney_load.sql" >&2

psqlq -d "$DB" -v frac="$HOLDOUT_FRAC" -v align="$CUTOFF_ALIGN" -f "$ROOT/bench/completejourney_eval.sql"

# ---- the Python rows: loaded when the file's cutoff is this split's (to the millisecond)
for prop in $PROPERTIES; do
    f="$(implicit_json "$prop")"
    [[ -f "$f" ]] || { echo "note: $f not found (CJ_IMPLICIT=never?); no Python rows for $prop" >&2; continue; }
    one="$(mktemp)"
    pga_on_exit "rm -f '$one'"
    # one line (JSON strings hold no raw newline); NaN/Infinity are not JSON, jsonb refuses them
    tr -d '\n' <"$f" | sed 's/\bNaN\b/null/g; s/-Infinity\b/null/g; s/\bInfinity\b/null/g' >"$one"
    echo >>"$one"
    psqlq -d "$DB" -v prop="$prop" -v file="$f" -v one="$one" -v minpos="$MIN_POSITIVES" <<'SQL'
CREATE TEMP TABLE doc (doc jsonb);
\set copy_doc '\\copy doc FROM ' :'one' ' WITH (FORMAT csv, DELIMITER E''\\x02'', QUOTE E''\\x01'')'
:copy_doc
SELECT (d.doc #>> '{split,cut_unix}')::float8 AS py_cut, s.cut_unix AS db_cut,
       coalesce(abs((d.doc #>> '{split,cut_unix}')::float8 - s.cut_unix) < 1e-3
                AND (d.doc ->> 'min_positives')::int = :minpos, false) AS ok
  FROM doc d, bench_cj.split s \gset
\if :ok
INSERT INTO bench_cj.implicit SELECT :'prop', :'file', doc FROM doc;
\else
\echo note: :file is for cutoff :py_cut or another MIN_POSITIVES, the cutoff of this data is :db_cut; not merged
\endif
SQL
done

have_ext="$(psqlq -d "$DB" -At -c "SELECT count(*) FROM pg_available_extensions WHERE name = 'pg_audience'")"
if [[ "$have_ext" == 1 ]]; then
    psqlq -d "$DB" -v build_args="$CJ_BUILD_ARGS" -v props="$PROPERTIES" <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION pg_audience;
SELECT audience.version() AS v \gset
\echo pg_audience :v
SELECT audience.create_catalog('cj') \gset
SELECT audience.add_event('cj', 'events', 'product_id', user_id => 'user_id', event_time => 'event_time',
                          name => 'purchases') \gset
SELECT count(audience.map_property('cj', p, column_name => p, products => 'products'::regclass,
                                   products_id => 'product_id'))
  FROM unnest(string_to_array(:'props', ' ')) p WHERE p <> '' \gset
SELECT 'SELECT * FROM audience.build(''cj''' || CASE WHEN :'build_args' <> '' THEN ', ' || :'build_args' ELSE '' END || ')'
    AS build_sql \gset
\echo :build_sql
CREATE TEMP TABLE built AS :build_sql;
SELECT 'build: ' || string_agg(key || ' ' || value, ', ') FROM built b, jsonb_each_text(to_jsonb(b)) \g (tuples_only)
SQL
    holdout="$(psqlq -d "$DB" -At -c "SELECT holdout FROM bench_cj.split")"
    for prop in $PROPERTIES; do
        echo "audience.evaluate('cj', '$prop', holdout => '$holdout') ..." >&2
        psqlq -d "$DB" -At -v prop="$prop" <<'SQL' >&2
SELECT bench_cj.evaluate('cj', :'prop', (SELECT holdout FROM bench_cj.split)) AS rid \gset
SELECT format('evaluated %s in %s s (cutoff %s; ALS %s s, kNN %s s of training; peak %s MB); settings %s',
              property, round(eval_s::numeric, 1), cutoff, round((params #>> '{seconds,als}')::numeric, 2),
              round((params #>> '{seconds,knn}')::numeric, 2),
              round((params ->> 'peak_rss_bytes')::numeric / 1048576), params -> 'model')
  FROM bench_cj.runs WHERE run_id = :rid;
SQL
    done
else
    echo "note: pg_audience is not installed in this PostgreSQL (bash scripts/install.sh); Python rows only" >&2
fi

# ---- one table per property
echo
for prop in $PROPERTIES; do
    psqlq -d "$DB" -At -v prop="$prop" -v minpos="$MIN_POSITIVES" <<'SQL'
SELECT bench_cj.report(:'prop', :minpos);
SELECT bench_cj.check(:'prop', :minpos);
SQL
    echo
done

psqlq -d "$DB" -At -v frac="$HOLDOUT_FRAC" -v align="$CUTOFF_ALIGN" <<'SQL'
SELECT format('split: holdout => %s (%s%% of the time span), cutoff %s UTC%s', holdout, trim_scale(100 * :frac),
              to_char(to_timestamp(cut_unix) AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
              CASE WHEN :'align' = 'day' THEN ' (the UTC midnight before last event - holdout)' ELSE '' END)
  FROM bench_cj.split;
SQL
cat <<EOF
pg:* = audience.evaluate('cj', property, holdout => ...) (pg:pg_audience = the extension's audiences, knobs tuned
on the validation window before the cutoff; the other pg:* rows are its built-in baselines and pure-CF modes).
py:* = bench/repeat_implicit.py (target/bench/cj_<property>_implicit.json): py:sql_* are the SQL an analyst
writes (purchase lines of the value, distinct UTC days buying it, recency-decayed lines with the half-life
chosen on validation, last purchase, all purchase lines), py:als / py:bm25_knn the implicit library (ALS
64 factors, regularization/alpha chosen on validation; BM25 item-kNN K=100), summed item scores of the value.
hit@K% = share of the top K% of eligible users buying the value in the holdout; rec@K% = share of its
buyers found there; x = cross-sell (only users who never bought the value before the cutoff).
EOF
exit 0
