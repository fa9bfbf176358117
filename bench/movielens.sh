#!/usr/bin/env bash
# MovieLens 100K audience benchmark of the installed pg_audience extension, on the same task and split
# as bench/movielens_implicit.py, printed as one table together with that script's rows
# (target/bench/movielens_implicit.json, written by bench/implicit_baseline.sh) when present.
#
#   bash scripts/install.sh                        # the extension under test
#   bench/implicit_baseline.sh                     # optional: the Python baselines (~15 s)
#   bench/movielens.sh                             # holdout = last 20% of the time range
#   HOLDOUT_DAYS=30 bench/movielens.sh             # holdout = last 30 days
#
# Steps: private cluster `bench-pg` (scripts/pg.sh, stopped at exit unless BENCH_KEEP=1), database
# `movielens` (recreated), tables ratings/items (bench/movielens_load.sql), catalog `ml` with ratings
# as the event source and properties genre (space-delimited), release_year and decade from items,
# one audience.build (its settings are remembered by the catalog and used by evaluate), then
# audience.evaluate per property (hybrid knobs tuned on the validation window inside the training
# period) and the macro over values with >= MIN_POSITIVES positives (bench/movielens_eval.sql).
#
# Env:
#   MOVIELENS_DIR    data folder (default ../shared/data/movielens-100k from the repo root);
#                    missing files -> "skipped: ..." and exit 0
#   HOLDOUT_DAYS     holdout = last N days (default: last 20% of the time range)
#   PROPERTIES       default "genre release_year decade"
#   MIN_POSITIVES    default 5 (as movielens_implicit.py)
#   ML_WEIGHT        rating (weight_column => 'rating', default) | one (every rating weighs 1) |
#                    rating_rows (a view repeating each rating `rating` times at weight 1: the same
#                    affinities as `rating`; used as a fallback when weight_column fails)
#   ML_HALF_LIFE     add_event half_life, e.g. '180 days' (default none)
#   ML_FACTORS ML_ITERATIONS ML_REGULARIZATION ML_ALPHA ML_NEIGHBOURS
#                    audience.build arguments (default: the extension's defaults)
#   IMPLICIT_JSON    movielens_implicit.py output to merge (default target/bench/movielens_implicit.json,
#                    or target/bench/movielens_implicit_<N>d.json with HOLDOUT_DAYS=N); rows are merged
#                    only when its split matches this run's
#   BENCH_CLUSTER    private cluster name (default bench-pg)
#   BENCH_KEEP=1     leave the cluster running (psql: source scripts/pg.sh; pga_psql bench-pg -d movielens)
set -euo pipefail
# shellcheck disable=SC2034 # read by scripts/common.sh for log prefixes
PGA_SCRIPT=movielens
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)"

data="${MOVIELENS_DIR:-$ROOT/../shared/data/movielens-100k}"
if [[ ! -f "$data/ml-100k.inter" || ! -f "$data/ml-100k.item" ]]; then
    echo "skipped: MovieLens 100K not found in $data (ml-100k.inter, ml-100k.item; set MOVIELENS_DIR)"
    exit 0
fi
data="$(cd "$data" && pwd -P)"

# The RecBole headers we read by position.
expect_inter=$'user_id:token\titem_id:token\trating:float\ttimestamp:float'
expect_item=$'item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq'
if [[ "$(head -n 1 "$data/ml-100k.inter" | tr -d '\r')" != "$expect_inter" ]]; then
    echo "error: unexpected header in $data/ml-100k.inter (want: ${expect_inter//$'\t'/ })" >&2
    exit 1
fi
if [[ "$(head -n 1 "$data/ml-100k.item" | tr -d '\r')" != "$expect_item" ]]; then
    echo "error: unexpected header in $data/ml-100k.item (want: ${expect_item//$'\t'/ })" >&2
    exit 1
fi

# shellcheck source=scripts/pg.sh
source "$ROOT/scripts/pg.sh"

CLUSTER="${BENCH_CLUSTER:-bench-pg}"
DB=movielens
PROPERTIES="${PROPERTIES:-genre release_year decade}"
MIN_POSITIVES="${MIN_POSITIVES:-5}"
ML_WEIGHT="${ML_WEIGHT:-rating}"
if [[ -n "${HOLDOUT_DAYS:-}" ]]; then
    holdout_sql="'${HOLDOUT_DAYS} days'::interval"
    split_desc="last ${HOLDOUT_DAYS} days"
    implicit_default="$ROOT/target/bench/movielens_implicit_${HOLDOUT_DAYS}d.json"
else
    holdout_sql="NULL"
    split_desc="last 20% of the time range"
    implicit_default="$ROOT/target/bench/movielens_implicit.json"
fi
IMPLICIT_JSON="${IMPLICIT_JSON:-$implicit_default}"

sqlnum() { if [[ -n "${1:-}" ]]; then printf '%s' "$1"; else printf 'NULL'; fi; }
half_life_arg=""
if [[ -n "${ML_HALF_LIFE:-}" ]]; then half_life_arg=", half_life => '${ML_HALF_LIFE}'"; fi
case "$ML_WEIGHT" in rating | one | rating_rows) ;; *) pga_die "ML_WEIGHT must be rating, one or rating_rows" ;; esac

pga_cluster_start "$CLUSTER"
if [[ "${BENCH_KEEP:-0}" != 1 ]]; then pga_on_exit "pga_cluster_stop '$CLUSTER'"; fi
psqlq() { pga_psql "$CLUSTER" -q "$@"; }

psqlq -c "DROP DATABASE IF EXISTS $DB" -c "CREATE DATABASE $DB"
psqlq -d "$DB" -v inter="$data/ml-100k.inter" -v item="$data/ml-100k.item" -f "$ROOT/bench/movielens_load.sql"
psqlq -d "$DB" -f "$ROOT/bench/movielens_eval.sql"

psqlq -d "$DB" <<'SQL'
SET client_min_messages = warning;
CREATE EXTENSION pg_audience;
-- Each rating repeated `rating` times at weight 1: the same affinity as weight_column => 'rating'
-- (affinities are sums), for ML_WEIGHT=rating_rows and as the fallback when weight_column fails.
CREATE VIEW ratings_rows AS SELECT r.* FROM ratings r, generate_series(1, r.rating::int);
SELECT audience.create_catalog('ml') \gset
SELECT audience.map_property('ml', 'genre', column_name => 'genres', products => 'items'::regclass,
                             products_id => 'item_id', delimiter => ' ') \gset
SELECT audience.map_property('ml', 'release_year', column_name => 'release_year', products => 'items'::regclass,
                             products_id => 'item_id') \gset
SELECT audience.map_property('ml', 'decade', column_name => 'decade', products => 'items'::regclass,
                             products_id => 'item_id') \gset
SQL

# Registers the ratings source ($1 = rating | one | rating_rows) and builds once with the ML_* settings
# (the catalog remembers them; audience.evaluate trains with them).
register_and_build() {
    local mode="$1" src=ratings weight="weight => 1"
    case "$mode" in
        rating) weight="weight_column => 'rating'" ;;
        rating_rows) src=ratings_rows ;;
    esac
    psqlq -d "$DB" <<SQL
SET client_min_messages = warning;
SELECT count(*) AS dropped FROM (SELECT audience.drop_event('ml', 'ratings') FROM audience.events e
  JOIN audience.catalogs c USING (catalog_id) WHERE c.name = 'ml' AND e.name = 'ratings') d \gset
SELECT audience.add_event('ml', '$src', 'item_id', user_id => 'user_id', event_time => 'timestamp',
                          $weight $half_life_arg, name => 'ratings') \gset
SELECT seconds AS build_s, users, items, pairs
  FROM audience.build('ml', factors => $(sqlnum "${ML_FACTORS:-}"), iterations => $(sqlnum "${ML_ITERATIONS:-}"),
                      regularization => $(sqlnum "${ML_REGULARIZATION:-}"), alpha => $(sqlnum "${ML_ALPHA:-}"),
                      neighbours => $(sqlnum "${ML_NEIGHBOURS:-}")) \gset
\echo catalog ml: events $src ($weight${ML_HALF_LIFE:+, half_life $ML_HALF_LIFE}); full build :users users x :items items (:pairs pairs) in :build_s s
SELECT m.params -> 'als' AS als, m.params -> 'knn' AS knn
  FROM audience.models m JOIN audience.catalogs c ON c.active_model_id = m.model_id WHERE c.name = 'ml' \gset
\echo settings: als :als knn :knn
SQL
}
if ! register_and_build "$ML_WEIGHT"; then
    [[ "$ML_WEIGHT" == rating ]] || pga_die "audience.build failed"
    pga_warn "weight_column => 'rating' failed (above); falling back to ML_WEIGHT=rating_rows (same affinities)"
    register_and_build rating_rows
fi

echo "split: $split_desc; evaluating: $PROPERTIES" >&2
for prop in $PROPERTIES; do
    psqlq -d "$DB" -At >&2 <<SQL
SELECT bench.evaluate('main', 'ml', '$prop', $holdout_sql) AS rid \gset
SELECT 'evaluated $prop in ' || round(eval_s::numeric, 1) || ' s; tuned ' || coalesce((eval_params->'tuned')::text, '-')
  FROM bench.runs WHERE run_id = :rid;
SQL
done

# The implicit rows: merged when the file exists and its split is this run's.
# (JSON has no NaN/Infinity, which Python writes; jsonb refuses them.)
implicit=""
docfile="$(mktemp)"
pga_on_exit "rm -f '$docfile'"
echo null >"$docfile"
if [[ -f "$IMPLICIT_JSON" ]]; then
    sed 's/\bNaN\b/null/g; s/-Infinity\b/null/g; s/\bInfinity\b/null/g' "$IMPLICIT_JSON" >"$docfile"
    split_json="$(psqlq -d "$DB" -At -v docfile="$docfile" <<'SQL'
\set doc `cat :'docfile'`
SELECT :'doc'::jsonb #>> '{split,holdout}';
SQL
)"
    if [[ "$split_json" == "$split_desc" ]]; then
        implicit="$IMPLICIT_JSON"
    else
        echo "note: $IMPLICIT_JSON is for split '$split_json', not '$split_desc'; not merged" >&2
        echo null >"$docfile"
    fi
else
    echo "note: $IMPLICIT_JSON not found; run bench/implicit_baseline.sh${HOLDOUT_DAYS:+ --holdout-days $HOLDOUT_DAYS --out $IMPLICIT_JSON} to add the implicit rows" >&2
fi

echo
psqlq -d "$DB" -At -v docfile="$docfile" -v minpos="$MIN_POSITIVES" <<'SQL'
\set doc `cat :'docfile'`
WITH latest AS (
    SELECT DISTINCT ON (property) run_id, property, eval_params FROM bench.runs WHERE label = 'main'
     ORDER BY property, run_id DESC),
pg AS (
    SELECT l.property, m.variant, 'pg:' || m.method AS method,
           array_position(ARRAY['pg_audience', 'past_engagers', 'most_active', 'als', 'knn'], m.method) AS ord,
           m.n_values, m.hit1, m.hit5, m.recall10, m.lift5, m.auc,
           CASE m.method WHEN 'pg_audience' THEN (l.eval_params #>> '{seconds,als}')::float8 + (l.eval_params #>> '{seconds,knn}')::float8
                         WHEN 'als' THEN (l.eval_params #>> '{seconds,als}')::float8
                         WHEN 'knn' THEN (l.eval_params #>> '{seconds,knn}')::float8 END AS train_s,
           CASE WHEN m.method = 'pg_audience' THEN (l.eval_params ->> 'peak_rss_bytes')::float8 / 1e6 END AS peak_mb
      FROM latest l JOIN bench.macro(:minpos) m USING (run_id)),
py AS (
    SELECT r ->> 'property' AS property, r ->> 'variant' AS variant, 'implicit:' || (r ->> 'method') AS method,
           10 + ord AS ord, (r #>> '{macro,values}')::bigint, (r #>> '{macro,hit@1%}')::float8, (r #>> '{macro,hit@5%}')::float8,
           (r #>> '{macro,recall@10%}')::float8, (r #>> '{macro,lift@5%}')::float8, (r #>> '{macro,auc}')::float8,
           (r ->> 'train_seconds')::float8, (r ->> 'peak_rss_mb')::float8
      FROM jsonb_array_elements(coalesce(:'doc'::jsonb -> 'results', '[]')) WITH ORDINALITY AS t(r, ord)),
allrows AS (SELECT * FROM pg UNION ALL SELECT * FROM py),
props AS (SELECT p, o FROM unnest(string_to_array('genre release_year decade', ' ')) WITH ORDINALITY AS u(p, o))
SELECT line FROM (
    SELECT 0 AS o1, '' AS o2, 0 AS o3,
           rpad('property', 13) || rpad('variant', 11) || rpad('method', 34) || lpad('values', 6) || lpad('hit@1%', 8) ||
           lpad('hit@5%', 8) || lpad('recall@10%', 11) || lpad('lift@5%', 8) || lpad('AUC', 7) || lpad('train_s', 9) ||
           lpad('peak_MB', 9) AS line
    UNION ALL SELECT 0, '', 1, repeat('-', 116)
    UNION ALL
    SELECT coalesce(pr.o, 99), a.variant, a.ord,
           rpad(a.property, 13) || rpad(a.variant, 11) || rpad(a.method, 34) || lpad(a.n_values::text, 6) ||
           lpad(to_char(a.hit1, 'FM0.000'), 8) || lpad(to_char(a.hit5, 'FM0.000'), 8) ||
           lpad(to_char(a.recall10, 'FM0.000'), 11) || lpad(to_char(a.lift5, 'FM990.00'), 8) ||
           lpad(coalesce(to_char(a.auc, 'FM0.000'), '-'), 7) || lpad(coalesce(to_char(a.train_s, 'FM9990.000'), '-'), 9) ||
           lpad(coalesce(to_char(a.peak_mb, 'FM99990'), '-'), 9)
      FROM allrows a LEFT JOIN props pr ON pr.p = a.property
     WHERE a.property IN (SELECT property FROM latest)
) x ORDER BY o1, o2, o3;

-- The headline comparison on genre (all users): the hybrid against the better SQL baseline and implicit ALS.
WITH latest AS (SELECT run_id FROM bench.runs WHERE label = 'main' AND property = 'genre' ORDER BY run_id DESC LIMIT 1),
m AS (SELECT b.* FROM latest JOIN bench.macro(:minpos) b USING (run_id) WHERE b.variant = 'all'),
ours AS (SELECT hit1, hit5 FROM m WHERE method = 'pg_audience'),
sqlb AS (SELECT max(hit1) AS hit1, max(hit5) AS hit5 FROM m WHERE method IN ('past_engagers', 'most_active')),
imp AS (SELECT (r #>> '{macro,hit@1%}')::float8 AS hit1, (r #>> '{macro,hit@5%}')::float8 AS hit5
          FROM jsonb_array_elements(coalesce(:'doc'::jsonb -> 'results', '[]')) r
         WHERE r ->> 'property' = 'genre' AND r ->> 'variant' = 'all' AND r ->> 'method' = 'als')
SELECT format(E'\ngenre, all users: pg_audience hit@1%% %s (%sx the better SQL baseline %s%s), hit@5%% %s (%sx SQL %s%s)',
              to_char(o.hit1, 'FM0.000'), to_char(o.hit1 / nullif(q.hit1, 0), 'FM90.00'), to_char(q.hit1, 'FM0.000'),
              coalesce('; implicit ALS ' || to_char(i.hit1, 'FM0.000'), ''),
              to_char(o.hit5, 'FM0.000'), to_char(o.hit5 / nullif(q.hit5, 0), 'FM90.00'), to_char(q.hit5, 'FM0.000'),
              coalesce('; implicit ALS ' || to_char(i.hit5, 'FM0.000'), ''))
  FROM ours o CROSS JOIN sqlb q LEFT JOIN imp i ON true;
SQL
echo
echo "split: $split_desc; macro over values with >= $MIN_POSITIVES positives (per variant), as movielens_implicit.py."
echo "pg:* = audience.evaluate (pg:pg_audience = the hybrid, knobs tuned per property on the validation window;"
echo "pg:als / pg:knn = its pure-CF modes); train_s = model training on the training split (ALS + kNN for the hybrid);"
echo "peak_MB (pg) = VmHWM of the backend that ran audience.evaluate (tuning, training, scoring; includes the shared"
echo "buffers it touched); (implicit) = max RSS of the Python process."
[[ -n "$implicit" ]] && echo "implicit:* = $IMPLICIT_JSON (ALS/hybrid knobs chosen on validation, on genre)."
exit 0
