//! Choosing a catalog's settings on its own events: a validation window at the end of the
//! training period, models trained before it, the scoring knobs tuned per property
//! ([`crate::score::tuning`]). Used by `audience.build` (automatically, for catalogs without
//! tuned settings), `audience.tune` and `audience.evaluate`. The validation split is cut from the
//! one scan the caller already made (the occasions it keeps), never by scanning again.
use crate::affinity::accumulator::day_of;
use crate::api::build::{train, BuildParams, Collected};
use crate::error::AudienceError;
use crate::model::als::AlsParams;
use crate::score::hybrid::{Components, Own, Sample, Scorer};
use crate::score::metrics::grid_objectives;
use crate::score::tuning::{own_candidates, tune_knobs_with, Tuned, STAGE2_OWNS};
use crate::store::stored::{Model, PropertyKnobs};
use pgrx::prelude::*;

pub const CUTS: [f64; 4] = [1.0, 5.0, 10.0, 20.0];
/// Values used for tuning at least (spread over those engaged with in the validation window).
const TUNE_VALUES: usize = 40;
/// Smaller catalogs tune on more values, up to this many (values x sampled users), so the knobs
/// fit the macro average over many values instead of 40 noisy ones (time and the components'
/// memory follow values x users: a catalog of 100,000 users tunes on 40 values, one of 2,000 on
/// 2,000). On the grocery data (1,231 households, 264 categories) the cross-sell knobs tuned on
/// 40 categories scored 0.122 at hit@1% on the test window, tuned on all of them 0.151.
const TUNE_VALUE_USERS: usize = 4_000_000;
/// The most values tuning is scored on.
const MAX_TUNE_VALUES: usize = 2_000;
/// Users the tuning grid is scored on (a fixed sample above this).
const TUNE_USERS: usize = 100_000;
/// Catalogs with more users than this are tuned lighter, so tuning costs about one build: a
/// sample of [`LARGE_TUNE_USERS`] users and the full grid for the best own measure only (at 1M
/// users and 20M events the full search added 120 s to a 75 s build, bench/scale.sh).
const LARGE_USERS: usize = 200_000;
const LARGE_TUNE_USERS: usize = 50_000;
/// On a large catalog the validation model is trained on every k-th user only, about this many
/// (the grid scores a sample of [`LARGE_TUNE_USERS`] of them anyway; the item side still sees a
/// quarter of a 1M-user catalog's pairs): at 1M users and 20M events this cut the validation
/// training from ~31 s to ~8 s (bench/scale.sh).
const LARGE_MODEL_USERS: usize = 250_000;
/// The ALS settings tried besides the catalog's own: fewer factors and a much larger confidence
/// scale. On MovieLens 100K they win clearly (bench/movielens.sh); on the demo shop the
/// defaults win. Which one a catalog gets is decided on its own validation window.
pub const ALT_ALS: (usize, usize, f32, f32) = (16, 15, 0.01, 100.0);
/// Automatic tuning in a build trains the alternative ALS settings only up to this many
/// user-item pairs, so that it costs at most about one more build.
const AUTO_ALT_ALS_MAX_PAIRS: usize = 2_000_000;
/// The shortest history automatic tuning accepts (days from the first to the last event).
const MIN_HISTORY_DAYS: i64 = 14;
/// Validation positives (user, value) needed for tuning to mean anything.
const MIN_POSITIVES: usize = 20;

const MICROS_PER_DAY: f64 = 86_400e6;

/// An interval in days (a month counts 30 days).
pub fn interval_days(iv: &Interval) -> f64 {
    crate::affinity::aggregate::interval_micros_for(iv, "own_half_life") as f64 / MICROS_PER_DAY
}

/// Per value of `values` (sorted), the users of `users` (sorted) who engaged on a day
/// `>= cut_day` with an item having the value, per `c`'s occasions and item values of
/// `property`: sorted user indices, so memory follows the positives, not values x users.
pub fn positives_after(
    c: &Collected,
    cut_day: i32,
    property: &str,
    values: &[String],
    users: &[String],
) -> Vec<Vec<u32>> {
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); values.len()];
    let Some((_, per_item)) = c.item_values.iter().find(|(n, _)| n == property) else {
        return out;
    };
    let item_vals: Vec<Vec<u32>> = per_item
        .iter()
        .map(|vs| {
            vs.iter()
                .filter_map(|v| values.binary_search(v).ok().map(|i| i as u32))
                .collect()
        })
        .collect();
    let (aff, occ) = (&c.aff, &c.aff.occasions);
    let mut j = 0usize;
    for (u, name) in aff.users.iter().enumerate() {
        if u % 65_536 == 0 {
            pgrx::check_for_interrupts!();
        }
        // Both user lists are sorted: walk them together.
        while j < users.len() && users[j] < *name {
            j += 1;
        }
        if j == users.len() {
            break;
        }
        if users[j] != *name {
            continue;
        }
        for p in aff.matrix.indptr[u]..aff.matrix.indptr[u + 1] {
            let r = occ.range(p);
            if r.is_empty() || occ.day(r.end - 1) < cut_day {
                continue;
            }
            for &v in &item_vals[aff.matrix.indices[p] as usize] {
                if out[v as usize].last() != Some(&(j as u32)) {
                    out[v as usize].push(j as u32);
                }
            }
        }
    }
    for v in &mut out {
        v.sort_unstable();
        v.dedup();
    }
    out
}

/// Dense positives of one value for `n` users.
pub fn dense(list: &[u32], n: usize) -> Vec<bool> {
    let mut d = vec![false; n];
    for &u in list {
        d[u as usize] = true;
    }
    d
}

/// The scorer of a model, with its engagement days.
pub fn scorer(model: &Model) -> Scorer<'_> {
    Scorer::new(&model.ui, model.als.as_ref(), model.knn.as_ref())
        .with_days(&model.days, model.reference_day)
        .with_threads(crate::guc::threads())
}

/// Per-value components and validation positives of the (at most [`tune_values_for`]) values with
/// the most positives, on a fixed user sample, with every own measure.
fn tuning_inputs(
    model: &Model,
    sc: &Scorer,
    positives: &[Vec<u32>],
    values: &[String],
    property: &str,
    sample_users: usize,
    large: bool,
) -> (Vec<(Components, Vec<bool>)>, Vec<f32>) {
    let prop = model.property(property).expect("property of the model");
    // On large catalogs the grid is scored on a fixed sample of users (every k-th), which keeps
    // tuning to seconds; the knobs are per-user formulas, so a sample ranks them alike.
    let sample = Sample::every(sc, sc.n_users().div_ceil(sample_users.max(1)));
    let max_values = if large {
        TUNE_VALUES
    } else {
        tune_values_for(sample.users.len())
    };
    let order = tuning_values(
        &positives.iter().map(|p| p.len()).collect::<Vec<_>>(),
        max_values,
    );
    let owns = own_candidates(sc.has_days());
    let per_value = order
        .iter()
        .map(|&v| {
            pgrx::check_for_interrupts!();
            let c = sample.components_with(sc, &prop.items_for(&[values[v].as_str()]), &owns);
            (c, sample.pick(&dense(&positives[v], sc.n_users())))
        })
        .collect();
    (per_value, sample.pick(sc.totals()))
}

/// Values with at least this many validation positives represent the property when tuning.
const MIN_VALUE_POSITIVES: usize = 5;

/// How many values tuning scores for `users` (sampled) users: [`TUNE_VALUE_USERS`] / users,
/// between [`TUNE_VALUES`] and [`MAX_TUNE_VALUES`].
pub fn tune_values_for(users: usize) -> usize {
    (TUNE_VALUE_USERS / users.max(1)).clamp(TUNE_VALUES, MAX_TUNE_VALUES)
}

/// The values tuning is scored on, given each value's validation positives: at most
/// `max_values`, spread evenly over the ranks of the values with at least
/// [`MIN_VALUE_POSITIVES`] positives (from the most engaged-with down), so the knobs fit the
/// macro average over values, small ones included; the most engaged-with values when too few
/// have that many.
pub fn tuning_values(positives: &[usize], max_values: usize) -> Vec<usize> {
    let max_values = max_values.max(2);
    let mut order: Vec<usize> = (0..positives.len()).filter(|&v| positives[v] > 0).collect();
    order.sort_by_key(|&v| (std::cmp::Reverse(positives[v]), v));
    let strong = order
        .iter()
        .filter(|&&v| positives[v] >= MIN_VALUE_POSITIVES)
        .count();
    if strong <= max_values {
        order.truncate(max_values);
        return order;
    }
    let mut picked: Vec<usize> = (0..max_values)
        .map(|k| order[k * (strong - 1) / (max_values - 1)])
        .collect();
    picked.dedup();
    picked
}

/// The validation cut of `c` for a holdout of `holdout_us`, or why the history is too short.
fn validation_cut(c: &Collected, holdout_us: i64) -> Result<i32, String> {
    let (first, last) = (c.aff.min_time_us, c.aff.max_time_us);
    let span_days = (last - first) / 86_400_000_000;
    if c.aff.users.is_empty() || span_days < MIN_HISTORY_DAYS {
        return Err(format!(
            "the events span {span_days} days; tuning needs at least {MIN_HISTORY_DAYS}"
        ));
    }
    let cut = day_of(last - holdout_us);
    if cut <= day_of(first) {
        return Err("the validation window covers the whole history".into());
    }
    Ok(cut)
}

/// What [`tune_split`] chose.
pub struct TuneResult {
    pub params: BuildParams,
    /// Per tuned property: what was chosen and the validation objectives.
    pub per_property: Vec<(String, Tuned)>,
    pub report: serde_json::Value,
}

/// Tunes on `c` (the training events): validation = the events on days from
/// `max - holdout_us` on, models trained on the days before. Tunes `properties` (their knobs
/// replace those in `p.by_property`) and, unless `p.als_explicit` or not `try_alt_als`, the ALS
/// settings among the catalog's and [`ALT_ALS`].
pub fn tune_split(
    c: &Collected,
    holdout_us: i64,
    p: &BuildParams,
    properties: &[String],
    try_alt_als: bool,
) -> Result<TuneResult, String> {
    let cut = validation_cut(c, holdout_us)?;
    // Large catalogs: the validation model on a user sample (see LARGE_MODEL_USERS).
    let large = c.aff.users.len() > LARGE_USERS;
    let step = if large {
        c.aff.users.len().div_ceil(LARGE_MODEL_USERS)
    } else {
        1
    };
    let train_c = c.until_every(cut, step);
    if train_c.aff.users.is_empty() {
        return Err("no events fall before the validation window".into());
    }
    let mut candidates = vec![p.clone()];
    if let (Some(a), true) = (&p.als, try_alt_als && !p.als_explicit) {
        let (factors, iterations, regularization, alpha) = ALT_ALS;
        let alt = AlsParams {
            factors,
            iterations,
            regularization,
            alpha,
            ..a.clone()
        };
        if alt != *a {
            candidates.push(BuildParams {
                als: Some(alt),
                ..p.clone()
            });
        }
    }
    // (objective, parameters, per-property choice) of the best ALS candidate so far.
    type Best = (f64, BuildParams, Vec<(String, Tuned)>);
    let mut best: Option<Best> = None;
    let mut positives_total = 0usize;
    for cand in candidates {
        let trained = train(train_c.clone(), &cand);
        let model = &trained.model;
        let sc = scorer(model);
        let mut tuned: Vec<(String, Tuned)> = Vec::new();
        for name in properties {
            let Some(prop) = model.property(name) else {
                continue;
            };
            let pos = positives_after(c, cut, name, &prop.values, &model.users);
            positives_total = pos
                .iter()
                .map(|v| v.len())
                .sum::<usize>()
                .max(positives_total);
            if pos.iter().map(|v| v.len()).sum::<usize>() < MIN_POSITIVES {
                continue;
            }
            let sample_users = if large { LARGE_TUNE_USERS } else { TUNE_USERS };
            let stage2 = if large { 1 } else { STAGE2_OWNS };
            let (per_value, totals) =
                tuning_inputs(model, &sc, &pos, &prop.values, name, sample_users, large);
            let mut check = || {
                pgrx::check_for_interrupts!();
            };
            let t = tune_knobs_with(
                &per_value,
                &totals,
                sc.has_days(),
                &CUTS,
                stage2,
                crate::guc::threads(),
                &mut check,
            );
            tuned.push((name.clone(), t));
        }
        if tuned.is_empty() {
            return Err(format!(
                "the validation window holds {positives_total} (user, value) engagements; tuning needs at least {MIN_POSITIVES}"
            ));
        }
        let obj = tuned.iter().map(|(_, t)| t.objective).sum::<f64>() / tuned.len() as f64;
        if best.as_ref().is_none_or(|b| obj > b.0) {
            best = Some((obj, cand, tuned));
        }
    }
    let (_, mut params, per_property) = best.expect("at least one candidate");
    params
        .by_property
        .retain(|k| !per_property.iter().any(|(n, _)| *n == k.property));
    for (name, t) in &per_property {
        params.by_property.push(PropertyKnobs {
            property: name.clone(),
            params: t.params,
            cross_params: t.cross_params,
        });
    }
    params
        .by_property
        .sort_by(|a, b| a.property.cmp(&b.property));
    let report = serde_json::json!({
        "validation_days": holdout_us as f64 / MICROS_PER_DAY,
        "validation_from": day_iso(cut),
        "als": params.als.as_ref().map(|a| serde_json::json!({
            "factors": a.factors, "iterations": a.iterations, "regularization": a.regularization, "alpha": a.alpha })),
        "properties": serde_json::Value::Object(per_property.iter().map(|(n, t)| (n.clone(), tuned_json(t))).collect()),
    });
    Ok(TuneResult {
        params,
        per_property,
        report,
    })
}

fn own_label(o: Own) -> String {
    match o {
        Own::Weight(h) | Own::Days(h) if h.is_finite() => {
            format!("{} (half-life {} days)", o.name(), h)
        }
        _ => o.name().to_string(),
    }
}

fn tuned_json(t: &Tuned) -> serde_json::Value {
    let (best_base, best_obj) =
        t.baselines
            .iter()
            .fold((Own::Affinity, f64::NEG_INFINITY), |acc, &(o, v)| {
                if v > acc.1 {
                    (o, v)
                } else {
                    acc
                }
            });
    serde_json::json!({
        "params": crate::api::build::knobs_json(&t.params),
        "cross_sell": crate::api::build::knobs_json(&t.cross_params),
        "objective": t.objective,
        "cross_sell_objective": t.cross_objective,
        "best_baseline": own_label(best_base),
        "best_baseline_objective": best_obj,
        "values": t.values_used,
    })
}

/// A day number (since 2000-01-01) as an ISO date.
pub fn day_iso(day: i32) -> String {
    // Civil-from-days (Howard Hinnant's algorithm), days since 1970-01-01.
    let z = day as i64 + 10_957 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}-{m:02}-{d:02}")
}

/// The automatic tuning of `audience.build`: when the catalog has no explicit scoring knobs and
/// `tune` is not off, tunes every property without tuned knobs on the last fifth of the
/// history. Returns the parameters to train with and the report for the build result (`None`
/// when nothing was tuned; `{"skipped": reason}` when the history does not allow it).
pub fn auto_tune(c: &Collected, p: BuildParams) -> (BuildParams, Option<serde_json::Value>) {
    if !p.auto_tune || p.knobs_explicit {
        return (p, None);
    }
    let todo: Vec<String> = c
        .item_values
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| !p.by_property.iter().any(|k| k.property == *n))
        .collect();
    if todo.is_empty() {
        return (p, None);
    }
    let holdout = ((c.aff.max_time_us - c.aff.min_time_us) / 5).max(1);
    let try_alt = c.aff.matrix.nnz() <= AUTO_ALT_ALS_MAX_PAIRS;
    match tune_split(c, holdout, &p, &todo, try_alt) {
        Ok(r) => {
            for (name, t) in &r.per_property {
                pgrx::notice!(
                    "tuned the knobs of property \"{}\" on the last {:.0} days: own engagement = {}, validation hit rate {:.3} (best SQL baseline {:.3})",
                    crate::error::shown(name),
                    holdout as f64 / MICROS_PER_DAY,
                    own_label(t.params.own),
                    t.objective,
                    t.baselines.iter().map(|b| b.1).fold(f64::NEG_INFINITY, f64::max)
                );
            }
            let mut report = r.report;
            report["automatic"] = serde_json::json!(true);
            (r.params, Some(report))
        }
        Err(reason) => {
            pgrx::notice!("the scoring knobs were not tuned: {reason}; using the defaults");
            (p, Some(serde_json::json!({ "skipped": reason })))
        }
    }
}

/// The stage-1 objectives (each own measure alone) of `property` on the validation window of
/// `c`, without training collaborative models: what `evaluate` uses to choose the half-life of
/// its decayed baseline when no tuning ran.
pub fn baseline_objectives(c: &Collected, holdout_us: i64, property: &str) -> Vec<(Own, f64)> {
    let Ok(cut) = validation_cut(c, holdout_us) else {
        return Vec::new();
    };
    let train_c = c.until(cut);
    let no_models = BuildParams {
        als: None,
        knn: None,
        ..crate::api::build::build_params_default()
    };
    let trained = train(train_c, &no_models);
    let model = &trained.model;
    let Some(prop) = model.property(property) else {
        return Vec::new();
    };
    let sc = scorer(model);
    let pos = positives_after(c, cut, property, &prop.values, &model.users);
    let (per_value, totals) = tuning_inputs(
        model,
        &sc,
        &pos,
        &prop.values,
        property,
        TUNE_USERS,
        sc.n_users() > LARGE_USERS,
    );
    let owns = own_candidates(true);
    let grid: Vec<_> = owns
        .iter()
        .map(|&o| crate::score::hybrid::HybridParams::own_only(o))
        .collect();
    let mut check = || {
        pgrx::check_for_interrupts!();
    };
    let objs = grid_objectives(
        &per_value,
        &totals,
        &grid,
        &CUTS,
        &|_, _| true,
        crate::guc::threads(),
        &mut check,
    );
    owns.into_iter().zip(objs).collect()
}

/// The tuning objective of `model`'s own knobs for `property` (all users), on validation
/// `positives` per value of the property (as [`positives_after`] gives them for `model.users`):
/// what the deploy guard compares. None when the positives are too few to mean anything.
pub fn knob_objective(
    model: &Model,
    sc: &Scorer,
    property: &str,
    positives: &[Vec<u32>],
) -> Option<f64> {
    let prop = model.property(property)?;
    if positives.iter().map(|v| v.len()).sum::<usize>() < MIN_POSITIVES {
        return None;
    }
    let (per_value, totals) = tuning_inputs(
        model,
        sc,
        positives,
        &prop.values,
        property,
        TUNE_USERS,
        sc.n_users() > LARGE_USERS,
    );
    let knobs = *model.knobs_for(property).0;
    let mut check = || {
        pgrx::check_for_interrupts!();
    };
    grid_objectives(
        &per_value,
        &totals,
        &[knobs],
        &CUTS,
        &|_, _| true,
        crate::guc::threads(),
        &mut check,
    )
    .pop()
}

/// Raised when a caller asked for tuning explicitly and it cannot run.
pub fn cannot_tune(reason: &str) -> ! {
    AudienceError::not_ready(format!("cannot tune: {reason}"))
        .hint("Use a shorter holdout, or load more history.")
        .raise()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaller_catalogs_tune_on_more_values() {
        assert_eq!(tune_values_for(100_000), TUNE_VALUES);
        assert_eq!(tune_values_for(1_000_000), TUNE_VALUES);
        assert_eq!(tune_values_for(20_000), 200);
        assert_eq!(
            tune_values_for(1_231),
            MAX_TUNE_VALUES.min(4_000_000 / 1_231)
        );
        assert_eq!(tune_values_for(0), MAX_TUNE_VALUES);
    }

    #[test]
    fn tuning_values_spread_over_the_strong_values() {
        // 10 values with >= 5 positives (positives 100 down to 10), 3 weak ones, one without.
        let mut pos: Vec<usize> = (0..10).map(|k| 100 - 10 * k).collect();
        pos.extend([3, 1, 2, 0]);
        let all = tuning_values(&pos, 20);
        assert_eq!(all.len(), 13, "every value with a positive when they fit");
        assert_eq!(&all[..3], &[0, 1, 2]);
        let four = tuning_values(&pos, 4);
        assert_eq!(
            four,
            vec![0, 3, 6, 9],
            "spread from the strongest to the weakest strong value"
        );
    }
}
