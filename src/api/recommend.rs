//! `audience.recommend_audience` and `audience.explain`.
//!
//! These set-returning functions do not pin `search_path` with a SET clause: Postgres calls a
//! value-per-call SRF once per row, and a SET clause saves and restores the setting on every
//! call (20% of a 50,000-user audience's time, measured with perf). All SQL they run is
//! schema-qualified instead, operators included (see cache.rs).
use crate::api::cache::{active, Loaded};
use crate::api::spi_util::{args, query_rows};
use crate::error::{shown, AudienceError};
use crate::model::image::ServedProperty;
use crate::score::topk::top_k;
use pgrx::prelude::*;

/// The property of the model, or an error that says whether it is unmapped or just unbuilt.
pub fn model_property<'a>(l: &'a Loaded, name: Option<&str>) -> &'a ServedProperty {
    let Some(name) = name else { AudienceError::null("property").raise() };
    if let Some(p) = l.model.property(name) {
        return p;
    }
    let known: Vec<&str> = l.model.properties.iter().map(|p| p.name.as_str()).collect();
    let mapped_now = query_rows(
        "SELECT 1 FROM audience.property_mappings m JOIN audience.catalogs c ON c.catalog_id OPERATOR(pg_catalog.=) m.catalog_id WHERE c.name OPERATOR(pg_catalog.=) $1 AND m.property OPERATOR(pg_catalog.=) $2",
        &args![l.catalog.as_str(), name],
        |_| (),
    );
    let detail = if known.is_empty() {
        "The model has no mapped properties.".to_string()
    } else {
        format!("Mapped properties are: {}.", known.join(", "))
    };
    if !mapped_now.is_empty() {
        AudienceError::undefined(format!("property \"{}\" is not in the model of catalog \"{}\"", shown(name), shown(&l.catalog)))
            .detail(format!("It was mapped after the last build. {detail}"))
            .hint("Rebuild the model with audience.build().")
            .raise()
    }
    AudienceError::undefined(format!("property \"{}\" is not mapped", shown(name)))
        .detail(detail)
        .hint("Map it with audience.map_property(), then run audience.build().")
        .raise()
}

/// The values of a value array argument: a NULL element is an error (22004), not skipped.
pub fn non_null_values(values: Vec<Option<String>>) -> Vec<String> {
    values
        .into_iter()
        .map(|v| {
            v.unwrap_or_else(|| {
                AudienceError::new(pgrx::PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED, "values cannot contain NULL")
                    .hint("Leave the NULL out of the array.")
                    .raise()
            })
        })
        .collect()
}

/// Arguments of an audience request, validated.
pub struct Request<'a> {
    pub property: Option<&'a str>,
    pub values: Vec<String>,
    pub max_pct: Option<f64>,
    pub catalog: Option<&'a str>,
    pub max_users: Option<i64>,
    pub min_score: Option<f64>,
    pub exclude_engaged: Option<bool>,
    pub lookback: Option<Interval>,
}

/// Ranks users for the request; returns (user index, score) in rank order and the number of users.
pub fn rank(req: &Request, l: &Loaded) -> Vec<(u32, f32)> {
    let max_pct = match req.max_pct {
        None => AudienceError::null("max_pct").raise(),
        Some(p) if p > 0.0 && p <= 100.0 => p,
        Some(p) => AudienceError::invalid("max_pct must be greater than 0 and at most 100")
            .detail(format!("The value given was {p}."))
            .hint("Pass the share of users to return as a percentage, e.g. 5 for the top 5%.")
            .raise(),
    };
    if let Some(m) = req.max_users {
        if m < 0 {
            AudienceError::invalid("max_users cannot be negative").detail(format!("The value given was {m}.")).raise();
        }
    }
    if let Some(s) = req.min_score {
        if s.is_nan() {
            AudienceError::invalid("min_score cannot be NaN").raise();
        }
    }
    let prop = model_property(l, req.property);
    if req.values.is_empty() {
        AudienceError::invalid("at least one value must be given").hint("Pass a value such as 'Nike', or an array of values.").raise();
    }
    let wanted: Vec<&str> = req.values.iter().map(|s| s.as_str()).collect();
    let items = prop.items_for(&wanted);
    if items.is_empty() {
        pgrx::notice!(
            "no item in the model has {} {}; the audience is empty",
            prop.name,
            if wanted.len() == 1 { format!("\"{}\"", shown(wanted[0])) } else { format!("in ({})", shown(&wanted.join(", "))) }
        );
        return Vec::new();
    }
    let n_users = l.model.users.len();
    let mut k = ((max_pct / 100.0) * n_users as f64).floor() as usize;
    k = k.max(1).min(n_users);
    if let Some(m) = req.max_users {
        k = k.min(m as usize);
    }
    // Cross-sell audiences rank users new to the value with their own knobs (see audience.tune).
    let (all_knobs, cross_knobs) = l.model.knobs_for(&prop.name);
    let knobs = if req.exclude_engaged.unwrap_or(false) { cross_knobs } else { all_knobs };
    // One pass over the affinity matrix gives both the scores and who already engaged (e_u > 0).
    let t0 = std::time::Instant::now();
    let c = l.scorer.components_with(&items, &[knobs.own]);
    let t1 = std::time::Instant::now();
    let scores = crate::score::hybrid::score_from_components(&c, l.scorer.totals(), knobs);
    pgrx::debug1!(
        "audience: {} items, components in {:.1} ms, scores in {:.1} ms",
        items.len(),
        (t1 - t0).as_secs_f64() * 1000.0,
        t1.elapsed().as_secs_f64() * 1000.0
    );
    let excluded: Option<Vec<bool>> = if req.exclude_engaged.unwrap_or(false) {
        Some(match &req.lookback {
            None => crate::score::hybrid::engaged(&c),
            Some(iv) => {
                let lb = crate::affinity::aggregate::interval_micros_for(iv, "lookback");
                if lb <= 0 {
                    AudienceError::invalid("lookback must be positive")
                        .hint("Pass an interval such as '90 days': users who engaged with the value within it are left out.")
                        .raise();
                }
                let since_us = now_micros().saturating_sub(lb);
                engaged_since(l, &items, since_us.div_euclid(60_000_000).clamp(i32::MIN as i64, i32::MAX as i64) as i32)
            }
        })
    } else {
        if req.lookback.is_some() {
            AudienceError::invalid("lookback needs exclude_engaged => true")
                .hint("Pass exclude_engaged => true to drop users who engaged with the value within the look-back interval.")
                .raise();
        }
        None
    };
    let min_score = req.min_score.map(|s| s as f32);
    top_k(&scores, k, &|u| {
        let s = scores[u];
        s > 0.0 && min_score.is_none_or(|m| s >= m) && !excluded.as_ref().is_some_and(|e| e[u])
    })
}

fn now_micros() -> i64 {
    let ts: TimestampWithTimeZone = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() }.try_into().unwrap_or_else(|_| {
        AudienceError::internal("no transaction timestamp").raise()
    });
    ts.into()
}

/// Users with an engagement with one of `items` whose latest event is at or after `since_min`
/// (minutes since 2000-01-01).
fn engaged_since(l: &Loaded, items: &[u32], since_min: i32) -> Vec<bool> {
    let m = &l.model;
    let mut mask = vec![false; m.items.len()];
    for &i in items {
        mask[i as usize] = true;
    }
    (0..m.ui.n_rows)
        .map(|u| {
            let (a, b) = (m.ui.indptr[u], m.ui.indptr[u + 1]);
            (a..b).any(|p| mask[m.ui.indices[p] as usize] && m.last_seen[p] >= since_min)
        })
        .collect()
}

fn rows(l: &Loaded, ranked: Vec<(u32, f32)>) -> Vec<(String, f64, i64, f64)> {
    let n = l.model.users.len().max(1) as f64;
    ranked
        .into_iter()
        .enumerate()
        .map(|(r, (u, s))| (l.model.users.get(u as usize).to_string(), s as f64, r as i64 + 1, 100.0 * (r as f64 + 1.0) / n))
        .collect()
}

// Parallel restricted: each parallel worker would load its own copy of the model.
/// The users most likely to engage with items whose `property` equals `value`, best first,
/// capped at the top `max_pct` percent of the users known to the catalog's model.
#[pg_extern(stable, parallel_restricted, name = "recommend_audience")]
#[allow(clippy::too_many_arguments)]
fn recommend_audience(
    property: Option<&str>,
    value: Option<&str>,
    max_pct: Option<f64>,
    catalog: default!(Option<&str>, "NULL"),
    max_users: default!(Option<i64>, "NULL"),
    min_score: default!(Option<f64>, "NULL"),
    exclude_engaged: default!(Option<bool>, "false"),
    lookback: default!(Option<Interval>, "NULL"),
) -> TableIterator<'static, (name!(user_id, String), name!(score, f64), name!(rank, i64), name!(percentile, f64))> {
    let Some(value) = value else { AudienceError::null("value").raise() };
    let req = Request {
        property,
        values: vec![value.to_string()],
        max_pct,
        catalog,
        max_users,
        min_score,
        exclude_engaged,
        lookback,
    };
    serve(&req)
}

/// Ranks and returns the rows; with `client_min_messages = debug1`, reports where the time went.
fn serve(req: &Request) -> TableIterator<'static, (name!(user_id, String), name!(score, f64), name!(rank, i64), name!(percentile, f64))> {
    let t0 = std::time::Instant::now();
    let l = active(req.catalog);
    let t1 = std::time::Instant::now();
    let ranked = rank(req, &l);
    let t2 = std::time::Instant::now();
    let out = rows(&l, ranked);
    let ms = |a: std::time::Instant, b: std::time::Instant| (b - a).as_secs_f64() * 1000.0;
    pgrx::debug1!(
        "audience: model {} ({} copy) resolved in {:.1} ms, ranked in {:.1} ms, {} rows made in {:.1} ms",
        l.model_id,
        if l.shared { "shared" } else { "private" },
        ms(t0, t1),
        ms(t1, t2),
        out.len(),
        ms(t2, std::time::Instant::now())
    );
    TableIterator::new(out)
}

/// The same for several values at once (brand IN (...)): items having any of the values.
#[pg_extern(stable, parallel_restricted, name = "recommend_audience")]
#[allow(clippy::too_many_arguments)]
fn recommend_audience_values(
    property: Option<&str>,
    value: Option<Vec<Option<String>>>,
    max_pct: Option<f64>,
    catalog: default!(Option<&str>, "NULL"),
    max_users: default!(Option<i64>, "NULL"),
    min_score: default!(Option<f64>, "NULL"),
    exclude_engaged: default!(Option<bool>, "false"),
    lookback: default!(Option<Interval>, "NULL"),
) -> TableIterator<'static, (name!(user_id, String), name!(score, f64), name!(rank, i64), name!(percentile, f64))> {
    let Some(values) = value else { AudienceError::null("value").raise() };
    let req = Request {
        property,
        values: non_null_values(values),
        max_pct,
        catalog,
        max_users,
        min_score,
        exclude_engaged,
        lookback,
    };
    serve(&req)
}

/// The items of a user's history that contributed most to their score for a value.
// Parallel restricted: each parallel worker would load its own copy of the model.
#[pg_extern(stable, parallel_restricted)]
fn explain(
    catalog: Option<&str>,
    user_id: Option<&str>,
    property: Option<&str>,
    value: Option<&str>,
    max_items: default!(i32, 10),
) -> TableIterator<
    'static,
    (name!(item_id, String), name!(contribution, f64), name!(reason, String), name!(share, f64)),
> {
    let Some(user_id) = user_id else { AudienceError::null("user_id").raise() };
    let Some(value) = value else { AudienceError::null("value").raise() };
    if max_items < 1 {
        AudienceError::invalid("max_items must be at least 1").raise();
    }
    let l = active(catalog);
    let prop = model_property(&l, property);
    let Ok(u) = l.model.users.binary_search(user_id) else {
        AudienceError::undefined(format!("user \"{}\" is not in the model of catalog \"{}\"", shown(user_id), shown(&l.catalog)))
            .hint("Users appear in the model once they have events in a registered source and the model is rebuilt.")
            .raise()
    };
    let items = prop.items_for(&[value]);
    if items.is_empty() {
        pgrx::notice!("no item in the model has {} \"{}\"", prop.name, shown(value));
        return TableIterator::new(Vec::new());
    }
    let contributions = l.scorer.explain(u as u32, &items, max_items as usize);
    let total: f32 = contributions.iter().map(|c| c.1).sum();
    let out: Vec<(String, f64, String, f64)> = contributions
        .into_iter()
        .map(|(i, c)| {
            let reason = if items.binary_search(&i).is_ok() { "engaged with the value" } else { "similar to items with the value" };
            (l.model.items.get(i as usize).to_string(), c as f64, reason.to_string(), if total > 0.0 { (c / total) as f64 } else { 0.0 })
        })
        .collect();
    TableIterator::new(out)
}
