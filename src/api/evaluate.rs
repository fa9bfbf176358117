//! `audience.evaluate` (temporal backtest against SQL baselines) and `audience.tune` (choose the
//! hybrid knobs by temporal validation on the user's own data).
use crate::api::build::{collect, knobs_json, remembered_params, train, BuildParams, Collected};
use crate::api::spi_util::{args, query_rows};
use crate::error::{AudienceError, OrRaise};
use crate::model::als::AlsParams;
use crate::model::stored::{Model, Property, MINUTES_PER_DAY};
use crate::score::hybrid::{score_from_components, Components, HybridParams, Sample, Scorer};
use crate::score::metrics::{default_grid_for, evaluate_ranking, tune_eligible, RankingMetrics};
use pgrx::prelude::*;

pub const CUTS: [f64; 4] = [1.0, 5.0, 10.0, 20.0];
/// Values used for tuning (the most engaged-with in the validation window), to bound memory.
const TUNE_VALUES: usize = 40;
/// Users the tuning grid is scored on (a fixed sample above this).
const TUNE_USERS: usize = 100_000;

/// The catalog's first and last event times (microseconds since 2000-01-01).
fn time_range(cid: i32) -> (i64, i64) {
    let q: Option<String> = Spi::get_one_with_args("SELECT time_query FROM audience._build_query($1, NULL, NULL, NULL)", &args![cid])
        .or_raise("planning the scan");
    let q = q.unwrap_or_else(|| AudienceError::internal("no time query").raise());
    // Without a row limit, so the scan may run in parallel (see build::collect).
    let (lo, hi): (Option<TimestampWithTimeZone>, Option<TimestampWithTimeZone>) =
        query_rows(&q, &[], |r| (r.get(1).ok().flatten(), r.get(2).ok().flatten())).into_iter().next().unwrap_or((None, None));
    match (lo, hi) {
        (Some(lo), Some(hi)) => (lo.into(), hi.into()),
        _ => AudienceError::not_ready("the catalog's event sources hold no usable events")
            .hint("Register sources with audience.add_event() and check them with SELECT * FROM audience.catalog_events.")
            .raise(),
    }
}

fn ts(us: i64) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(us).unwrap_or_else(|_| AudienceError::internal("timestamp out of range").raise())
}

/// Holdout truth: for each value of the (training) property, which training users engage with it
/// in the holdout window. Items unseen in training take their values from the holdout scan.
pub struct Truth {
    pub values: Vec<String>,
    pub value_items: Vec<Vec<u32>>,
    pub positives: Vec<Vec<bool>>,
}

pub fn truth(model: &Model, prop: &Property, holdout: &Collected, wanted: Option<&[String]>) -> Truth {
    let n_users = model.users.len();
    let mut values: Vec<String> = match wanted {
        Some(w) => w.to_vec(),
        None => prop.values.clone(),
    };
    values.sort();
    values.dedup();
    let vindex = |v: &str| values.binary_search_by(|x| x.as_str().cmp(v)).ok();
    let holdout_values = holdout.item_values.iter().find(|(n, _)| *n == prop.name).map(|(_, iv)| iv);
    let item_values_t = prop.value_items.transpose();
    // Values of each holdout item.
    let hv: Vec<Vec<usize>> = (0..holdout.aff.items.len())
        .map(|j| {
            let mut out: Vec<usize> = Vec::new();
            if let Some(iv) = holdout_values {
                out.extend(iv[j].iter().filter_map(|v| vindex(v)));
            }
            if out.is_empty() {
                if let Ok(ti) = model.items.binary_search(&holdout.aff.items[j]) {
                    out.extend(item_values_t.row(ti).0.iter().filter_map(|&v| vindex(&prop.values[v as usize])));
                }
            }
            out
        })
        .collect();
    let mut positives = vec![vec![false; n_users]; values.len()];
    for (hu, name) in holdout.aff.users.iter().enumerate() {
        let Ok(u) = model.users.binary_search(name) else { continue };
        for &j in holdout.aff.matrix.row(hu).0 {
            for &v in &hv[j as usize] {
                positives[v][u] = true;
            }
        }
    }
    let value_items = values.iter().map(|v| prop.items_for(&[v.as_str()])).collect();
    Truth { values, value_items, positives }
}

fn model_property<'a>(model: &'a Model, name: &str) -> &'a Property {
    model.property(name).unwrap_or_else(|| {
        AudienceError::undefined(format!("property \"{}\" is not mapped", crate::error::shown(name)))
            .detail(format!(
                "Mapped properties are: {}.",
                model.properties.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ")
            ))
            .hint("Map it with audience.map_property().")
            .raise()
    })
}

/// The ALS settings tried besides the catalog's own when tuning: fewer factors and a much larger
/// confidence scale. On MovieLens 100K they win clearly (bench/movielens.sh); on the demo shop the
/// defaults win. Which one a catalog gets is decided on its own validation window.
pub const ALT_ALS: (usize, usize, f32, f32) = (16, 15, 0.01, 100.0);

/// Chooses the model settings on a validation window [cutoff - holdout, cutoff) with models trained
/// before it: the ALS settings among the catalog's own and [`ALT_ALS`], and the hybrid knobs on the
/// default grid. Returns the chosen parameters and the objective (mean hit rate over the cuts,
/// macro over values).
pub fn tune_on(cid: i32, property: &str, cutoff: i64, holdout: i64, p: &BuildParams) -> (BuildParams, f64) {
    let val_cut = cutoff - holdout;
    let train_c = collect(cid, None, Some(ts(val_cut)));
    if train_c.aff.users.is_empty() {
        AudienceError::not_ready("no events fall before the validation window")
            .hint("Use a shorter holdout.")
            .raise();
    }
    let val_c = collect(cid, Some(ts(val_cut)), Some(ts(cutoff)));
    let mut candidates = vec![p.clone()];
    if let Some(a) = &p.als {
        let (factors, iterations, regularization, alpha) = ALT_ALS;
        let alt = AlsParams { factors, iterations, regularization, alpha, ..a.clone() };
        if alt != *a {
            candidates.push(BuildParams { als: Some(alt), ..p.clone() });
        }
    }
    let mut best: Option<(BuildParams, f64)> = None;
    for cand in candidates {
        let trained = train(train_c.clone(), &cand);
        let model = &trained.model;
        let prop = model_property(model, property);
        let t = truth(model, prop, &val_c, None);
        let scorer = Scorer::new(&model.ui, model.als.as_ref(), model.knn.as_ref())
            .with_last_seen(&model.last_seen, MINUTES_PER_DAY).with_threads(crate::guc::threads());
        // The most engaged-with values, so memory stays bounded on wide properties.
        let mut order: Vec<usize> = (0..t.values.len()).collect();
        order.sort_by_key(|&v| std::cmp::Reverse(t.positives[v].iter().filter(|&&b| b).count()));
        order.truncate(TUNE_VALUES);
        // On large catalogs the grid is scored on a fixed sample of users (every k-th), which
        // keeps tuning to seconds; the knobs are per-user formulas, so a sample ranks them alike.
        let sample = Sample::every(&scorer, scorer.n_users().div_ceil(TUNE_USERS));
        let per_value: Vec<(Components, Vec<bool>)> = order
            .iter()
            .map(|&v| {
                pgrx::check_for_interrupts!();
                let c = sample.components(&scorer.components(&t.value_items[v]));
                (c, sample.pick(&t.positives[v]))
            })
            .collect();
        let totals = sample.pick(scorer.totals());
        let grid = default_grid_for(&totals);
        let threads = crate::guc::threads();
        let mut check = || {
            pgrx::check_for_interrupts!();
        };
        let (hp, obj) = tune_eligible(&per_value, &totals, &grid, &CUTS, &|_, _| true, threads, &mut check);
        if best.as_ref().is_none_or(|b| obj > b.1) {
            pgrx::check_for_interrupts!();
            // Cross-sell knobs: the same grid, scored only on users new to each value.
            let (xs, _) =
                tune_eligible(&per_value, &totals, &grid, &CUTS, &|v, u| per_value[v].0.e[u] <= 0.0, threads, &mut check);
            best = Some((BuildParams { hybrid: hp, cross_sell: xs, ..cand }, obj));
        }
    }
    best.expect("at least one candidate")
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
            let h = crate::affinity::aggregate::interval_micros(&iv);
            if h <= 0 {
                AudienceError::invalid("holdout must be positive").raise();
            }
            if h >= last - first {
                AudienceError::invalid("holdout must be shorter than the span of the events")
                    .detail(format!("The events span {:.1} days.", (last - first) as f64 / 86_400e6))
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
#[search_path(@extschema@, pg_catalog, pg_temp)]
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
    let Some(property) = property else { AudienceError::null("property").raise() };
    let cid: i32 = Spi::get_one_with_args("SELECT audience._catalog_id($1)", &args![catalog])
        .or_raise("resolving the catalog")
        .unwrap_or_else(|| AudienceError::internal("no catalog").raise());
    let params = remembered_params(cid, serde_json::json!({}));
    let (first, last) = time_range(cid);
    let h = default_holdout(first, last, holdout);
    let cutoff = last - h;
    let tuned = if tune { Some(tune_on(cid, property, cutoff, h, &params)) } else { None };
    let params = tuned.as_ref().map(|t| t.0.clone()).unwrap_or(params);
    let train_c = collect(cid, None, Some(ts(cutoff)));
    let test_c = collect(cid, Some(ts(cutoff)), None);
    let trained = train(train_c, &params);
    let model = &trained.model;
    let prop = model_property(model, property);
    let wanted: Option<Vec<String>> = values.map(|v| v.into_iter().flatten().collect());
    let t = truth(model, prop, &test_c, wanted.as_deref());
    let scorer = Scorer::new(&model.ui, model.als.as_ref(), model.knn.as_ref())
            .with_last_seen(&model.last_seen, MINUTES_PER_DAY);
    let totals = scorer.totals().to_vec();
    let ours = params.hybrid;
    let methods: [(&'static str, Option<HybridParams>); 5] = [
        ("pg_audience", Some(ours)),
        ("past_engagers", Some(HybridParams::PAST_ENGAGERS)),
        ("most_active", None),
        // Summed ALS predictions x_u . Y_V, as the implicit library ranks.
        ("als", Some(HybridParams { volume: 1.0, ..HybridParams::pure_cf(1.0, 0.0) })),
        ("knn", Some(HybridParams::pure_cf(1.0, 1.0))),
    ];
    let mut rows: Vec<Row> = Vec::new();
    for (v, value) in t.values.iter().enumerate() {
        pgrx::check_for_interrupts!();
        let c = scorer.components(&t.value_items[v]);
        let engaged = crate::score::hybrid::engaged(&c);
        for (name, p) in methods.iter() {
            if (*name == "als" && model.als.is_none()) || (*name == "knn" && model.knn.is_none()) {
                continue;
            }
            let scores: Vec<f32> = match p {
                Some(p) => score_from_components(&c, &totals, p),
                None => totals.clone(),
            };
            for cross in [false, true] {
                let scores = if *name == "pg_audience" && cross && params.cross_sell != params.hybrid {
                    score_from_components(&c, &totals, &params.cross_sell)
                } else {
                    scores.clone()
                };
                let m = if cross {
                    evaluate_ranking(&scores, &t.positives[v], &|u| !engaged[u], &CUTS)
                } else {
                    evaluate_ranking(&scores, &t.positives[v], &|_| true, &CUTS)
                };
                rows.push(Row { method: name, value: value.clone(), cross_sell: cross, m });
            }
        }
    }
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
            let sel: Vec<&Row> = rows.iter().filter(|r| r.method == *name && r.cross_sell == cross && r.m.positives > 0).collect();
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
        "tuned": tuned.as_ref().map(|(_, obj)| serde_json::json!({"objective": obj})),
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
           FROM ROWS FROM (pg_catalog.unnest($2::text[]), pg_catalog.unnest($3::text[]), pg_catalog.unnest($4::bool[]),
                           pg_catalog.unnest($5::float8[]), pg_catalog.unnest($6::bigint[]), pg_catalog.unnest($7::bigint[]),
                           pg_catalog.unnest($8::bigint[]), pg_catalog.unnest($9::float8[]), pg_catalog.unnest($10::float8[]),
                           pg_catalog.unnest($11::float8[]), pg_catalog.unnest($12::float8[])) AS t(m, v, x, c, k, p, h, hr, r, l, a)",
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
#[search_path(@extschema@, pg_catalog, pg_temp)]
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
        name!(objective, f64),
    ),
> {
    let Some(property) = property else { AudienceError::null("property").raise() };
    let cid = crate::api::build::lock_catalog(catalog);
    let params = remembered_params(cid, serde_json::json!({}));
    let (first, last) = time_range(cid);
    let h = default_holdout(first, last, holdout);
    // Validate on the most recent window: train before (last - h), validate on the rest.
    let (chosen, obj) = tune_on(cid, property, last, h, &params);
    let p = chosen.hybrid;
    let mut settings = knobs_json(&p);
    settings["cross_sell"] = knobs_json(&chosen.cross_sell);
    if let Some(a) = &chosen.als {
        settings["factors"] = serde_json::json!(a.factors);
        settings["iterations"] = serde_json::json!(a.iterations);
        settings["regularization"] = serde_json::json!(a.regularization);
        settings["alpha"] = serde_json::json!(a.alpha);
    }
    let _ = query_rows(
        "UPDATE audience.catalogs SET build_settings = build_settings || $2 WHERE catalog_id = $1 RETURNING 1",
        &args![cid, pgrx::JsonB(settings)],
        |_| (),
    );
    TableIterator::once((p.prior as f64, p.activity_exp as f64, p.knn_weight as f64, p.volume as f64, p.days_exp as f64, p.tenure_exp as f64, obj))
}
