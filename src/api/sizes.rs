//! `audience.audience_size`, `audience.audience_size_items`, `audience._value_items` and
//! `audience.explain`: what a UI shows around an audience without returning it.
use crate::api::cache::{active, Loaded};
use crate::api::recommend::{
    known_items, model_property, non_null_values, rank_target, Ranking, Request,
};
use crate::error::{shown, AudienceError};
use crate::score::audience::cut_size;
use pgrx::prelude::*;

/// pct, users, min_score, engaged_before.
type SizeRow = (f64, i64, Option<f64>, i64);

/// The size of an audience at several cuts, without returning its users: per percentage, the
/// users it would hold, the lowest score among them and how many engaged with the value before.
fn sizes(
    l: &Loaded,
    req: &Request,
    items: Option<&[u32]>,
    pcts: Option<Vec<Option<f64>>>,
) -> Vec<SizeRow> {
    let Some(pcts) = pcts else {
        AudienceError::null("pcts").raise()
    };
    if pcts.is_empty() {
        AudienceError::invalid("pcts cannot be empty")
            .hint("Pass the cuts to size, e.g. ARRAY[1, 5, 10, 20].")
            .raise();
    }
    let pcts: Vec<f64> = pcts
        .into_iter()
        .map(|p| match p {
            None => AudienceError::new(
                pgrx::PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                "pcts cannot contain NULL",
            )
            .hint("Leave the NULL out of the array.")
            .raise(),
            Some(p) if p > 0.0 && p <= 100.0 => p,
            Some(p) => {
                AudienceError::invalid("each of pcts must be greater than 0 and at most 100")
                    .detail(format!("The value given was {p}."))
                    .raise()
            }
        })
        .collect();
    let widest = pcts.iter().cloned().fold(0.0f64, f64::max);
    let req = Request {
        max_pct: Some(widest),
        ..req.clone()
    };
    let Ranking {
        ranked,
        engaged,
        n_users,
        ..
    } = rank_target(&req, l, items);
    pcts.into_iter()
        .map(|p| {
            let k = cut_size(p, n_users, req.max_users).min(ranked.len());
            let min_score = if k > 0 {
                Some(ranked[k - 1].1 as f64)
            } else {
                None
            };
            (
                p,
                k as i64,
                min_score,
                engaged[..k].iter().filter(|&&e| e).count() as i64,
            )
        })
        .collect()
}

/// Sizes the audience of a property value at several cuts (for a slider in a UI).
#[pg_extern(stable, parallel_restricted)]
fn audience_size(
    property: Option<&str>,
    value: Option<&str>,
    pcts: default!(Option<Vec<Option<f64>>>, "'{1,5,10,20}'"),
    catalog: default!(Option<&str>, "NULL"),
    exclude_engaged: default!(Option<bool>, "false"),
) -> TableIterator<
    'static,
    (
        name!(pct, f64),
        name!(users, i64),
        name!(min_score, Option<f64>),
        name!(engaged_before, i64),
    ),
> {
    let Some(value) = value else {
        AudienceError::null("value").raise()
    };
    let req = Request {
        property,
        values: vec![value.to_string()],
        max_pct: None,
        catalog,
        max_users: None,
        min_score: None,
        exclude_engaged,
        lookback: None,
    };
    let l = active(catalog);
    TableIterator::new(sizes(&l, &req, None, pcts))
}

/// Sizes the audience of a set of items at several cuts.
#[pg_extern(stable, parallel_restricted)]
fn audience_size_items(
    items: Option<Vec<Option<String>>>,
    pcts: default!(Option<Vec<Option<f64>>>, "'{1,5,10,20}'"),
    catalog: default!(Option<&str>, "NULL"),
    exclude_engaged: default!(Option<bool>, "false"),
) -> TableIterator<
    'static,
    (
        name!(pct, f64),
        name!(users, i64),
        name!(min_score, Option<f64>),
        name!(engaged_before, i64),
    ),
> {
    let Some(items) = items else {
        AudienceError::null("items").raise()
    };
    let req = Request {
        property: None,
        values: Vec::new(),
        max_pct: None,
        catalog,
        max_users: None,
        min_score: None,
        exclude_engaged,
        lookback: None,
    };
    let l = active(catalog);
    let items = known_items(&l, items);
    TableIterator::new(sizes(&l, &req, Some(&items), pcts))
}

/// The ids of the items having any of the property values in the catalog's active model (for
/// audience.control_uplift, which looks for engagement with them in the event sources).
#[pg_extern(stable, parallel_restricted, name = "_value_items")]
fn value_items(
    catalog: Option<&str>,
    property: Option<&str>,
    values: Option<Vec<Option<String>>>,
) -> Vec<String> {
    let Some(values) = values else {
        AudienceError::null("values").raise()
    };
    let values = non_null_values(values);
    let l = active(catalog);
    let prop = model_property(&l, property);
    let wanted: Vec<&str> = values.iter().map(|s| s.as_str()).collect();
    prop.items_for(&wanted)
        .into_iter()
        .map(|i| l.model.items.get(i as usize).to_string())
        .collect()
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
    (
        name!(item_id, String),
        name!(contribution, f64),
        name!(reason, String),
        name!(share, f64),
    ),
> {
    let Some(user_id) = user_id else {
        AudienceError::null("user_id").raise()
    };
    let Some(value) = value else {
        AudienceError::null("value").raise()
    };
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
        pgrx::notice!(
            "no item in the model has {} \"{}\"",
            prop.name,
            shown(value)
        );
        return TableIterator::new(Vec::new());
    }
    let contributions = l.scorer.explain(u as u32, &items, max_items as usize);
    let total: f32 = contributions.iter().map(|c| c.1).sum();
    let out: Vec<(String, f64, String, f64)> = contributions
        .into_iter()
        .map(|(i, c)| {
            let reason = if items.binary_search(&i).is_ok() {
                "engaged with the value"
            } else {
                "similar to items with the value"
            };
            (
                l.model.items.get(i as usize).to_string(),
                c as f64,
                reason.to_string(),
                if total > 0.0 { (c / total) as f64 } else { 0.0 },
            )
        })
        .collect();
    TableIterator::new(out)
}
