//! The deploy guard of `audience.build(..., guard => true)`: a new model becomes active only if it
//! is not worse than the active one on the most recent data.
//!
//! A model cannot be judged on events it was trained on, and the newest events are in the new
//! model. So both models are judged as forecasters of the **events since the active model's
//! build** (from the UTC day after its latest event on): each model's item side (item-kNN
//! similarities, ALS item factors) and scoring knobs rank every user from their history *before*
//! that window (ALS user factors folded in against each model's item factors), and the metric is
//! the tuning objective (mean hit rate at the top 1/5/10/20% of users, macro over the values
//! with the most window engagements; [`crate::api::tuning::knob_objective`]). Whatever the new
//! data did to the new model's item side and knobs (a bot's co-occurrences, a broken feed, a
//! half-loaded table, a bad tuning) shows in how it ranks real users' next engagements. The new
//! model's item side has also seen the window, which can only flatter it: the guard refuses only
//! clear losses (`audience.guard_tolerance`, relative).
//!
//! A forecast cannot see one harm: a user who appears in the window with an absurd volume (a bot,
//! a feed loaded twice for one account) is a "hit" for every value, and the new model puts it at
//! the top of every audience. So the guard also refuses a model when one user holds more than
//! `audience.guard_max_user_share` of the engagement occasions (user, item, day) since the
//! active model, once there are at least [`crate::model::fresh::MIN_SHARE_OCCASIONS`] of them.
use crate::affinity::accumulator::day_of;
use crate::api::build::{als_params_from_json, train, BuildParams, Collected};
use crate::api::spi_util::{args, query_rows};
use crate::api::tuning::{knob_objective, positives_after, scorer};
use crate::model::als::{fold_in, AlsModel, AlsParams};
use crate::model::fresh::{top_user, TopUser};
use crate::model::train::damped;
use crate::model::transplant::{item_map, remap_factors, remap_knn};
use crate::store::stored::Model;

/// What the guard prepared before training: the window, the histories before it and the window's
/// engagements.
pub struct Prepared {
    active_id: i64,
    cut_day: i32,
    /// The events before the window, as a model without collaborative parts.
    base: Model,
    /// Per property: validation positives per value (users of `base`).
    positives: Vec<(String, Vec<Vec<u32>>)>,
    /// Engagement occasions (user, item, day) in the window, and the user with the most of them.
    top: TopUser,
    top_name: String,
}

/// The guard's decision and its report (stored in `models.guard` and returned by `build`).
pub struct Verdict {
    pub activate: bool,
    pub report: serde_json::Value,
}

fn skip(reason: String, active_id: Option<i64>) -> Result<Prepared, Verdict> {
    Err(Verdict {
        activate: true,
        report: serde_json::json!({ "active_model_id": active_id, "activated": true, "compared": false, "reason": reason }),
    })
}

/// Sets up the comparison for catalog `cid` before `c` is trained on, or the verdict when there is
/// nothing to compare (no active model, no events since it, too few engagements): activate.
pub fn prepare(cid: i32, c: &Collected) -> Result<Prepared, Verdict> {
    let active = query_rows(
        "SELECT c.active_model_id, (m.stats OPERATOR(pg_catalog.->>) 'last_event_us')::pg_catalog.int8
           FROM audience.catalogs c LEFT JOIN audience.models m ON m.model_id OPERATOR(pg_catalog.=) c.active_model_id
          WHERE c.catalog_id OPERATOR(pg_catalog.=) $1",
        &args![cid],
        |r| (r.get::<i64>(1).ok().flatten(), r.get::<i64>(2).ok().flatten()),
    );
    let Some((Some(active_id), last)) = active.into_iter().next() else {
        return skip("the catalog has no active model".into(), None);
    };
    let Some(last) = last else {
        return skip(
            "the active model does not record its latest event".into(),
            Some(active_id),
        );
    };
    let cut_day = day_of(last) + 1;
    if day_of(c.aff.max_time_us) < cut_day {
        return skip(
            "no events on days after the active model's latest event".into(),
            Some(active_id),
        );
    }
    let top = top_user(&c.aff, cut_day);
    let top_name = top.user.map(|u| c.aff.users[u].clone()).unwrap_or_default();
    let pre = c.until(cut_day);
    if pre.aff.users.is_empty() {
        return skip(
            "no events before the active model's latest event".into(),
            Some(active_id),
        );
    }
    let no_models = BuildParams {
        als: None,
        knn: None,
        ..crate::api::build::build_params_default()
    };
    let base = train(pre, &no_models).model;
    let positives: Vec<(String, Vec<Vec<u32>>)> = base
        .properties
        .iter()
        .map(|p| {
            (
                p.name.clone(),
                positives_after(c, cut_day, &p.name, &p.values, &base.users),
            )
        })
        .collect();
    Ok(Prepared {
        active_id,
        cut_day,
        base,
        positives,
        top,
        top_name,
    })
}

/// The objective of a model's item side and knobs on the prepared histories and window.
fn objective(
    p: &mut Prepared,
    model: &Model,
    als: Option<&AlsParams>,
) -> (Option<f64>, serde_json::Value) {
    let map = item_map(&model.items, &p.base.items);
    p.base.knn = model.knn.as_ref().map(|s| remap_knn(s, &map));
    p.base.als = match (&model.als, als) {
        (Some(m), Some(a)) if a.factors == m.factors => {
            let y = remap_factors(&m.item_factors, m.factors, &map);
            let conf = damped(&p.base.ui);
            let x = fold_in(
                &conf,
                &y,
                a,
                2,
                None,
                &mut crate::api::build::interrupt_check,
            )
            .unwrap_or_else(|_| crate::api::build::raise_interrupted("the deploy guard"));
            Some(AlsModel {
                factors: m.factors,
                user_factors: x,
                item_factors: y,
            })
        }
        _ => None,
    };
    p.base.params = model.params;
    p.base.cross_params = model.cross_params;
    p.base.property_params = model.property_params.clone();
    let sc = scorer(&p.base);
    let mut per = serde_json::Map::new();
    let mut sum = 0.0;
    let mut n = 0usize;
    for (name, pos) in &p.positives {
        if let Some(o) = knob_objective(&p.base, &sc, name, pos) {
            per.insert(name.clone(), serde_json::json!(o));
            sum += o;
            n += 1;
        }
    }
    (
        (n > 0).then(|| sum / n as f64),
        serde_json::Value::Object(per),
    )
}

/// Compares the new model with the active one (see the module doc).
pub fn judge(mut p: Prepared, candidate: &Model, candidate_params: &BuildParams) -> Verdict {
    crate::api::progress::phase("guard", format!("against model {}", p.active_id));
    let (name, active_params) = query_rows(
        "SELECT c.name, m.params FROM audience.models m JOIN audience.catalogs c ON c.catalog_id OPERATOR(pg_catalog.=) m.catalog_id WHERE m.model_id OPERATOR(pg_catalog.=) $1",
        &args![p.active_id],
        |r| {
            (
                r.get::<String>(1).ok().flatten().unwrap_or_default(),
                r.get::<pgrx::JsonB>(2).ok().flatten().map(|j| j.0).unwrap_or_default(),
            )
        },
    )
    .into_iter()
    .next()
    .unwrap_or_default();
    let tolerance = crate::guc::GUARD_TOLERANCE.get();
    let window_from = crate::api::tuning::day_iso(p.cut_day);
    let Some(active) = crate::api::cache::load(p.active_id, &name) else {
        return Verdict {
            activate: true,
            report: serde_json::json!({ "active_model_id": p.active_id, "activated": true, "compared": false,
                                        "reason": "the active model could not be read" }),
        };
    };
    let (new_obj, new_per) = objective(&mut p, candidate, candidate_params.als.as_ref());
    let (old_obj, old_per) = objective(
        &mut p,
        &active,
        als_params_from_json(&active_params).as_ref(),
    );
    drop(active);
    let max_share = crate::guc::GUARD_MAX_USER_SHARE.get();
    let (share, dominated) = (p.top.share(), p.top.dominates(max_share));
    let (activate, compared, reason) = match (new_obj, old_obj) {
        _ if dominated => (
            false,
            new_obj.is_some() && old_obj.is_some(),
            format!(
                "user \"{}\" holds {:.0}% of the engagement occasions since {window_from} (a bot, or a duplicated feed?), above audience.guard_max_user_share ({:.0}%)",
                crate::error::shown(&p.top_name),
                share * 100.0,
                max_share * 100.0
            ),
        ),
        (Some(n), Some(o)) if n < o * (1.0 - tolerance) => (
            false,
            true,
            format!(
                "the new model ranks the engagements since {window_from} worse than the active one ({n:.4} vs {o:.4}, tolerance {:.0}%)",
                tolerance * 100.0
            ),
        ),
        (Some(n), Some(o)) => (
            true,
            true,
            format!("the new model is not worse ({n:.4} vs {o:.4})"),
        ),
        _ => (
            true,
            false,
            format!("too few engagements since {window_from} to compare the models"),
        ),
    };
    let positives: usize = p
        .positives
        .iter()
        .map(|(_, v)| v.iter().map(|x| x.len()).sum::<usize>())
        .sum();
    Verdict {
        activate,
        report: serde_json::json!({
            "active_model_id": p.active_id,
            "window_from": window_from,
            "window_engagements": positives,
            "window_occasions": p.top.total,
            "top_user": p.top_name,
            "top_user_share": share,
            "new_score": new_obj,
            "active_score": old_obj,
            "new_by_property": new_per,
            "active_by_property": old_per,
            "tolerance": tolerance,
            "compared": compared,
            "activated": activate,
            "reason": reason,
        }),
    }
}
