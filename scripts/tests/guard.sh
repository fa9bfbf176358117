#!/usr/bin/env bash
# Scenario: builds that never make audiences worse (build(..., guard => true), src/api/guard.rs).
#   (a) a guarded build on good new data compares the two models on the events since the active
#       model's build and activates the new one; the comparison is stored in models.guard;
#   (b) a bad batch (one bot user with 100k events since the active model) is refused: the build
#       warns, stores the new model beside the active one, the previous model stays active and
#       serves the very same audience, without the bot;
#   (c) audience.activate(model_id) serves the refused model anyway (and shows why it was refused:
#       the bot tops the audience); the activation is recorded in models.guard;
#   (d) the next build, guarded by the remembered setting, drops the refused model.
set -euo pipefail
PGA_SCRIPT=guard
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
# shellcheck source=scripts/tests/_lib.sh
source scripts/tests/_lib.sh

t_cluster_fresh t-guard

t_say "setup: demo shop (3000 users, 300 products, 60k events over 6 months), catalog 'shop'"
q "SET client_min_messages = warning" "SELECT count(*) FROM audience.generate_demo_shop('demo', 3000, 300, 60000)" >/dev/null
t_register_shop shop demo
NIKE="'brand', 'Nike', 5, catalog => 'shop'"
AUD="$(t_audience_md5_sql "$NIKE")"
active() { q "SELECT active_model_id FROM audience.catalogs WHERE name = 'shop'"; }
# The active model: trained on the events until two weeks ago, so the last two weeks are new.
build_old() { q "SET client_min_messages = warning" "SELECT model_id FROM audience.build('shop', until => now() - interval '14 days', guard => false)"; }

# ------------------------------------------------------------------ (a)
t_say "(a) good new data: compared and activated"
MODEL_A="$(build_old)"
OUT="$(q "SET client_min_messages = warning" "SELECT model_id || '|' || (guard->>'compared') || '|' || (guard->>'activated') || '|' || round((guard->>'new_score')::numeric, 4) || '|' || round((guard->>'active_score')::numeric, 4) FROM audience.build('shop', guard => true)")"
IFS='|' read -r MODEL_B COMPARED ACTIVATED NEW_SCORE OLD_SCORE <<<"$OUT"
t_meas "model $MODEL_B vs model $MODEL_A on the events of the last two weeks: $NEW_SCORE vs $OLD_SCORE (mean hit rate at 1/5/10/20%)"
t_eq "the two models were compared" "$COMPARED" "true"
t_eq "the new model was activated" "$ACTIVATED/$(active)" "true/$MODEL_B"
t_eq "the comparison is stored in models.guard" \
    "$(q "SELECT guard->>'active_model_id' FROM audience.models WHERE model_id = $MODEL_B")" "$MODEL_A"

# ------------------------------------------------------------------ (b)
t_say "(b) a bot with 100k events since the active model: refused"
MODEL_C="$(build_old)"
BEFORE="$(q "$AUD")"
q "INSERT INTO demo.tracks (user_id, event, product_id, properties, timestamp)
   SELECT 888888, 'product_added', p.product_id, '{}', now() - (g % 13) * interval '1 day' - (g % 997) * interval '1 minute'
     FROM generate_series(1, 100000) g
     JOIN LATERAL (SELECT product_id FROM demo.products ORDER BY product_id OFFSET (g * 7919) % 300 LIMIT 1) p ON true"
OUT="$(pga_psql "$CL" -d "$DB" -Atq -c "SET client_min_messages = warning" \
    -c "SELECT model_id || '|' || (guard->>'activated') || '|' || (guard->>'top_user') FROM audience.build('shop', guard => true)" 2>&1)"
IFS='|' read -r MODEL_D ACTIVATED TOP <<<"$(grep -E '^[0-9]+\|' <<<"$OUT")"
t_meas "build: $(grep -E '^WARNING' <<<"$OUT" | head -n1)"
t_check "the build warns that its model is not activated" grep -q "WARNING:  deploy guard: .*stored but not activated" <<<"$OUT"
t_eq "the report names the bot and says not activated" "$ACTIVATED/$TOP" "false/888888"
t_eq "the previous model is still active" "$(active)" "$MODEL_C"
t_eq "both models are stored" \
    "$(q "SELECT string_agg(model_id::text, ',' ORDER BY model_id) FROM audience.models m JOIN audience.catalogs c USING (catalog_id) WHERE c.name = 'shop'")" \
    "$MODEL_C,$MODEL_D"
t_eq "the audience is the very same as before the refused build" "$(q "$AUD")" "$BEFORE"
t_check "audiences between builds leave the bot out too (NOTICE)" \
    grep -q "888888.*left out of audiences until a build" <<<"$(pga_psql "$CL" -d "$DB" -Atq -c "SET client_min_messages = notice" -c "SELECT count(*) FROM audience.recommend_audience($NIKE)" 2>&1)"
t_eq "the bot is not in it" "$(q "SELECT count(*) FROM audience.recommend_audience($NIKE) WHERE user_id = '888888'")" "0"

# ------------------------------------------------------------------ (c)
t_say "(c) audience.activate serves the refused model anyway"
t_eq "activate returns the catalog and the models" \
    "$(q "SELECT catalog || ',' || active_model_id || ',' || previous_model_id FROM audience.activate($MODEL_D)")" "shop,$MODEL_D,$MODEL_C"
t_eq "the refused model is active" "$(active)" "$MODEL_D"
t_eq "and the bot is in its Nike audience (why it was refused)" \
    "$(q "SELECT count(*) FROM audience.recommend_audience($NIKE) WHERE user_id = '888888'")" "1"
t_eq "the activation is recorded" \
    "$(q "SELECT (guard->>'activated_by') IS NOT NULL AND (guard->>'replaced_model_id')::bigint = $MODEL_C FROM audience.models WHERE model_id = $MODEL_D")" "t"

# ------------------------------------------------------------------ (d)
t_say "(d) the next build (guard remembered) replaces both"
q "DELETE FROM demo.tracks WHERE user_id = 888888"
OUT="$(q "SET client_min_messages = warning" "SELECT model_id || '|' || (guard IS NOT NULL) FROM audience.build('shop')")"
IFS='|' read -r MODEL_E GUARDED <<<"$OUT"
t_eq "guarded by the remembered setting" "$GUARDED" "true"
t_eq "one model left" \
    "$(q "SELECT count(*) FROM audience.models m JOIN audience.catalogs c USING (catalog_id) WHERE c.name = 'shop'")" "1"

t_check_server_log
t_finish
