//! `audience.evaluate` (temporal backtest against SQL baselines) and `audience.tune` (choose the
//! hybrid knobs by temporal validation on the user's own data). Both scan the sources once: the
//! training and validation splits are cut from the occasions the scan keeps.
use crate::affinity::accumulator::day_of;
use crate::api::build::{collect, knobs_json, remembered_params, train, Collected};
use crate::api::spi_util::{args, query_rows};
use crate::api::tuning::{
    baseline_objectives, cannot_tune, dense, positives_after, scorer, tune_split, CUTS,
};
use crate::error::{AudienceError, OrRaise};
use crate::score::hybrid::{score_from_components, HybridParams, Own};
use crate::score::metrics::{evaluate_ranking, RankingMetrics};
use crate::store::stored::{Model, Property};
use pgrx::prelude::*;

fn ts(us: i64) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(us)
        .unwrap_or_else(|_| AudienceError::internal("timestamp out of range").raise())
}

/// The whole history of the catalog (one scan), or an error when it holds no usable event.
fn scan_all(cid: i32) -> Collected {
    let c = collect(cid, None, None);
    if c.aff.users.is_empty() {
        AudienceError::not_ready("the catalog's event sources hold no usable events")
            .hint("Register sources with audience.add_event() and check them with SELECT * FROM audience.catalog_events.")
            .raise();
    }
    c
}

fn model_property<'a>(model: &'a Model, name: &str) -> &'a Property {
    model.property(name).unwrap_or_else(|| {
        AudienceError::undefined(format!(
            "property \"{}\" is not mapped",
            crate::error::shown(name)
        ))
        .detail(format!(
            "Mapped properties are: {}.",
            model
                .properties
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .hint("Map it with audience.map_property().")
        .raise()
    })
}

/// One output row of `evaluate`: method, value, cross_sell, cut_pct, audience_size, positives,
/// hits, hit_rate, recall, lift, auc.
type ResultRow = (String, String, bool, f64, i64, i64, i64, f64, f64, f64, f64);

struct Row {
    method: &'static str,
    value: String,
    cross_sell: bool,
    m: RankingMetrics,
}

fn default_holdout(first: i64, last: i64, holdout: Option<Interval>) -> i64 {
    match holdout {
        Some(iv) => {
            let h = crate::affinity::aggregate::interval_micros_for(&iv, "holdout");
            if h <= 0 {
                AudienceError::invalid("holdout must be positive").raise();
            }
            if h >= last - first {
                AudienceError::invalid("holdout must be shorter than the span of the events")
                    .detail(format!(
                        "The events span {:.1} days.",
                        (last - first) as f64 / 86_400e6
                    ))
                    .raise();
            }
            h
        }
        // The last fifth of the time span.
        None => ((last - first) / 5).max(1),
    }
}

/// Backtests audiences for every value (or the given values) of a property: trains on events
/// before (last event - holdout), ranks users and measures who engages in the holdout window.
#[pg_extern(volatile)]
#[search_path(pg_catalog, @extschema@, pg_temp)]
#[allow(clippy::type_complexity)] // the named output columns of the SQL function
fn evaluate(
    catalog: Option<&str>,
    property: Option<&str>,
    holdout: default!(Option<Interval>, "NULL"),
    values: default!(Option<Vec<Option<String>>>, "NULL"),
    tune: default!(bool, true),
) -> TableIterator<
    'static,
    (
        name!(method, String),
        name!(value, String),
        name!(cross_sell, bool),
        name!(cut_pct, f64),
        name!(audience_size, i64),
        name!(positives, i64),
        name!(hits, i64),
        name!(hit_rate, f64),
        name!(recall, f64),
        name!(lift, f64),
        name!(auc, f64),
    ),
> {
    let Some(property) = property else {
        AudienceError::null("property").raise()
    };
    // Arguments are checked before the (long) scan and training.
    let values: Option<Vec<String>> = values.map(crate::api::recommend::non_null_values);
    if values.as_ref().is_some_and(|v| v.is_empty()) {
        AudienceError::invalid("values cannot be empty")
            .hint("Pass NULL (or leave the argument out) to evaluate every value, or an array of values.")
            .raise();
    }
    let cid = catalog_id(catalog);
    let params = remembered_params(cid, serde_json::json!({}));
    let full = scan_all(cid);
    if !full.item_values.iter().any(|(n, _)| n == property) {
        let names: Vec<&str> = full.item_values.iter().map(|(n, _)| n.as_str()).collect();
        AudienceError::undefined(format!(
            "property \"{}\" is not mapped",
            crate::error::shown(property)
        ))
        .detail(format!("Mapped properties are: {}.", names.join(", ")))
        .hint("Map it with audience.map_property().")
        .raise();
    }
    let (first, last) = (full.aff.min_time_us, full.aff.max_time_us);
    let h = default_holdout(first, last, holdout);
    // The holdout starts at the midnight (UTC) before last - h: whole days on both sides.
    let cut_day = day_of(last - h);
    let train_c = full.until(cut_day);
    if train_c.aff.users.is_empty() {
        AudienceError::not_ready("no events fall before the holdout")
            .hint("Use a shorter holdout.")
            .raise();
    }
    let props = vec![property.to_string()];
    // Tuned as a build would tune (automatically, unless the catalog has explicit knobs), or
    // always with tune => true.
    let tuned = if tune
        || (params.auto_tune
            && !params.knobs_explicit
            && !params.by_property.iter().any(|k| k.property == property))
    {
        match tune_split(&train_c, h, &params, &props, true) {
            Ok(r) => Some(r),
            Err(reason) if tune => cannot_tune(&reason),
            Err(_) => None,
        }
    } else {
        None
    };
    let baselines: Vec<(Own, f64)> = match &tuned {
        Some(r) => r
            .per_property
            .iter()
            .find(|(n, _)| n == property)
            .map(|(_, t)| t.baselines.clone())
            .unwrap_or_default(),
        None => baseline_objectives(&train_c, h, property),
    };
    let params = tuned.as_ref().map(|t| t.params.clone()).unwrap_or(params);
    // The recency-decayed weight baseline: the half-life that validated best.
    let decayed = baselines
        .iter()
        .filter(|(o, _)| matches!(o, Own::Weight(h) if h.is_finite()))
        .fold((Own::Weight(30.0), f64::NEG_INFINITY), |acc, &(o, v)| {
            if v > acc.1 {
                (o, v)
            } else {
                acc
            }
        })
        .0;
    let trained = train(train_c, &params);
    let model = &trained.model;
    let prop = model_property(model, property);
    let wanted: Option<Vec<String>> = values.map(|mut v| {
        v.sort();
        v.dedup();
        v
    });
    let values: Vec<String> = wanted.unwrap_or_else(|| prop.values.clone());
    // Sparse positives: memory follows the holdout engagements, not values x users.
    let positives = positives_after(&full, cut_day, property, &values, &model.users);
    drop(full);
    let sc = scorer(model);
    let totals = sc.totals().to_vec();
    let (ours, ours_cross) = model.knobs_for(property);
    let (ours, ours_cross) = (*ours, *ours_cross);
    let methods: [(&'static str, Option<HybridParams>); 8] = [
        ("pg_audience", Some(ours)),
        // The SQL an analyst writes: summed weight, distinct days, recency-decayed weight (the
        // half-life chosen on validation), the most recent engagement, total activity.
        (
            "past_engagers",
            Some(HybridParams::own_only(Own::Weight(f32::INFINITY))),
        ),
        (
            "past_engagers_days",
            Some(HybridParams::own_only(Own::Days(f32::INFINITY))),
        ),
        (
            "past_engagers_decayed",
            Some(HybridParams::own_only(decayed)),
        ),
        ("most_recent", Some(HybridParams::own_only(Own::Recent))),
        ("most_active", None),
        // Summed ALS predictions x_u . Y_V, as the implicit library ranks.
        (
            "als",
            Some(HybridParams {
                volume: 1.0,
                ..HybridParams::pure_cf(1.0, 0.0)
            }),
        ),
        // Summed item-kNN similarities to the value, as the implicit library ranks.
        (
            "knn",
            Some(HybridParams {
                volume: 2.0,
                ..HybridParams::pure_cf(1.0, 1.0)
            }),
        ),
    ];
    let owns: Vec<Own> = methods
        .iter()
        .filter_map(|(_, p)| p.map(|p| p.own))
        .chain([ours_cross.own])
        .collect();
    let mut rows: Vec<Row> = Vec::new();
    for (v, value) in values.iter().enumerate() {
        pgrx::check_for_interrupts!();
        let c = sc.components_with(&prop.items_for(&[value.as_str()]), &owns);
        let engaged = crate::score::hybrid::engaged(&c);
        let positive = dense(&positives[v], model.users.len());
        for (name, p) in methods.iter() {
            if (*name == "als" && model.als.is_none()) || (*name == "knn" && model.knn.is_none()) {
                continue;
            }
            let scores: Vec<f32> = match p {
                Some(p) => score_from_components(&c, &totals, p),
                None => totals.clone(),
            };
            for cross in [false, true] {
                let m = if cross {
                    let scores = if *name == "pg_audience" && ours_cross != ours {
                        score_from_components(&c, &totals, &ours_cross)
                    } else {
                        scores.clone()
                    };
                    evaluate_ranking(&scores, &positive, &|u| !engaged[u], &CUTS)
                } else {
                    evaluate_ranking(&scores, &positive, &|_| true, &CUTS)
                };
                rows.push(Row {
                    method: name,
                    value: value.clone(),
                    cross_sell: cross,
                    m,
                });
            }
        }
    }
    let cutoff = cut_day as i64 * 86_400_000_000;
    // Macro averages over values with at least one positive.
    let mut out: Vec<ResultRow> = Vec::new();
    for r in &rows {
        for c in &r.m.cuts {
            out.push((
                r.method.to_string(),
                r.value.clone(),
                r.cross_sell,
                c.pct,
                c.k as i64,
                r.m.positives as i64,
                c.hits as i64,
                c.hit_rate,
                c.recall,
                c.lift,
                r.m.auc,
            ));
        }
    }
    for (name, _) in methods.iter() {
        for cross in [false, true] {
            let sel: Vec<&Row> = rows
                .iter()
                .filter(|r| r.method == *name && r.cross_sell == cross && r.m.positives > 0)
                .collect();
            if sel.is_empty() {
                continue;
            }
            let n = sel.len() as f64;
            for (ci, pct) in CUTS.iter().enumerate() {
                let mean = |f: &dyn Fn(&Row) -> f64| sel.iter().map(|r| f(r)).sum::<f64>() / n;
                out.push((
                    name.to_string(),
                    "(macro)".to_string(),
                    cross,
                    *pct,
                    sel.iter().map(|r| r.m.cuts[ci].k as i64).sum(),
                    sel.iter().map(|r| r.m.positives as i64).sum(),
                    sel.iter().map(|r| r.m.cuts[ci].hits as i64).sum(),
                    mean(&|r| r.m.cuts[ci].hit_rate),
                    mean(&|r| r.m.cuts[ci].recall),
                    mean(&|r| r.m.cuts[ci].lift),
                    mean(&|r| r.m.auc),
                ));
            }
        }
    }
    let params_json = serde_json::json!({
        "holdout_seconds": h as f64 / 1e6,
        "tuned": tuned.as_ref().map(|t| t.report.clone()),
        "decayed_baseline_half_life_days": crate::api::build::json_f32(decayed.half_life()),
        "model": crate::api::build::params_json(&params),
        "seconds": { "als": trained.als_seconds, "knn": trained.knn_seconds },
        // The backend's peak resident memory so far (VmHWM: includes shared buffers it touched).
        "peak_rss_bytes": crate::api::build::peak_rss_bytes(),
    });
    let eval_id: i64 = Spi::get_one_with_args(
        "INSERT INTO audience.evaluations (catalog_id, property, cutoff, params) VALUES ($1, $2, $3, $4) RETURNING evaluation_id",
        &args![cid, property, ts(cutoff), pgrx::JsonB(params_json)],
    )
    .or_raise("recording the evaluation")
    .unwrap_or_else(|| AudienceError::internal("no evaluation id").raise());
    Spi::run_with_args(
        "INSERT INTO audience.evaluation_results
         SELECT $1, m, v, x, c, k, p, h, hr, r, l, a
           FROM ROWS FROM (pg_catalog.unnest($2::pg_catalog.text[]), pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.bool[]),
                           pg_catalog.unnest($5::pg_catalog.float8[]), pg_catalog.unnest($6::pg_catalog.int8[]), pg_catalog.unnest($7::pg_catalog.int8[]),
                           pg_catalog.unnest($8::pg_catalog.int8[]), pg_catalog.unnest($9::pg_catalog.float8[]), pg_catalog.unnest($10::pg_catalog.float8[]),
                           pg_catalog.unnest($11::pg_catalog.float8[]), pg_catalog.unnest($12::pg_catalog.float8[])) AS t(m, v, x, c, k, p, h, hr, r, l, a)",
        &args![
            eval_id,
            out.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
            out.iter().map(|r| r.1.clone()).collect::<Vec<_>>(),
            out.iter().map(|r| r.2).collect::<Vec<_>>(),
            out.iter().map(|r| r.3).collect::<Vec<_>>(),
            out.iter().map(|r| r.4).collect::<Vec<_>>(),
            out.iter().map(|r| r.5).collect::<Vec<_>>(),
            out.iter().map(|r| r.6).collect::<Vec<_>>(),
            out.iter().map(|r| r.7).collect::<Vec<_>>(),
            out.iter().map(|r| r.8).collect::<Vec<_>>(),
            out.iter().map(|r| r.9).collect::<Vec<_>>(),
            out.iter().map(|r| r.10).collect::<Vec<_>>()
        ],
    )
    .or_raise("recording evaluation results");
    TableIterator::new(out)
}

/// Chooses a catalog's ALS settings, its scoring knobs and its cross-sell knobs by temporal
/// validation on its own events (see `tune_on`) and remembers them for later builds. Returns the
/// chosen scoring knobs.
#[pg_extern(volatile)]
#[search_path(pg_catalog, @extschema@, pg_temp)]
#[allow(clippy::type_complexity)] // the named output columns of the SQL function
fn tune(
    catalog: Option<&str>,
    property: Option<&str>,
    holdout: default!(Option<Interval>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(prior, f64),
        name!(activity_exp, f64),
        name!(knn_weight, f64),
        name!(volume, f64),
        name!(days_exp, f64),
        name!(tenure_exp, f64),
        name!(own, String),
        name!(own_half_life_days, Option<f64>),
        name!(objective, f64),
    ),
> {
    let Some(property) = property else {
        AudienceError::null("property").raise()
    };
    // No catalog lock for the search (a build may run meanwhile); the result is merged into
    // build_settings by one UPDATE at the end, under that statement's row lock.
    let cid = catalog_id(catalog);
    let params = remembered_params(cid, serde_json::json!({}));
    let full = scan_all(cid);
    if !full.item_values.iter().any(|(n, _)| n == property) {
        AudienceError::undefined(format!(
            "property \"{}\" is not mapped",
            crate::error::shown(property)
        ))
        .hint("Map it with audience.map_property().")
        .raise();
    }
    let (first, last) = (full.aff.min_time_us, full.aff.max_time_us);
    let h = default_holdout(first, last, holdout);
    // Validate on the most recent window: train before it, validate on the rest.
    let r = tune_split(&full, h, &params, &[property.to_string()], true)
        .unwrap_or_else(|reason| cannot_tune(&reason));
    let (_, t) = r
        .per_property
        .into_iter()
        .find(|(n, _)| n == property)
        .unwrap_or_else(|| cannot_tune("no validation engagement"));
    let p = t.params;
    let mut settings = serde_json::json!({});
    if let Some(a) = &r.params.als {
        settings["factors"] = serde_json::json!(a.factors);
        settings["iterations"] = serde_json::json!(a.iterations);
        settings["regularization"] = serde_json::json!(a.regularization);
        settings["alpha"] = serde_json::json!(a.alpha);
    }
    let tuned =
        serde_json::json!({"params": knobs_json(&p), "cross_sell": knobs_json(&t.cross_params)});
    // One statement reads and writes build_settings, so a build committing meanwhile loses nothing.
    let _ = query_rows(
        "UPDATE audience.catalogs c
            SET build_settings = c.build_settings OPERATOR(pg_catalog.||) $2
                OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('tuned',
                    (CASE WHEN pg_catalog.jsonb_typeof(c.build_settings OPERATOR(pg_catalog.->) 'tuned') OPERATOR(pg_catalog.=) 'object'
                          THEN c.build_settings OPERATOR(pg_catalog.->) 'tuned' ELSE '{}'::pg_catalog.jsonb END)
                    OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object($3::pg_catalog.text, $4::pg_catalog.jsonb))
          WHERE c.catalog_id OPERATOR(pg_catalog.=) $1 RETURNING 1",
        &args![cid, pgrx::JsonB(settings), property, pgrx::JsonB(tuned)],
        |_| (),
    );
    TableIterator::once((
        p.prior as f64,
        p.activity_exp as f64,
        p.knn_weight as f64,
        p.volume as f64,
        p.days_exp as f64,
        p.tenure_exp as f64,
        p.own.name().to_string(),
        if p.own.half_life().is_finite() {
            Some(p.own.half_life() as f64)
        } else {
            None
        },
        t.objective,
    ))
}

/// The catalog's id (an error naming the catalogs when it does not exist); no lock taken.
fn catalog_id(catalog: Option<&str>) -> i32 {
    Spi::get_one_with_args("SELECT audience._catalog_id($1)", &args![catalog])
        .or_raise("resolving the catalog")
        .unwrap_or_else(|| AudienceError::internal("no catalog").raise())
}
