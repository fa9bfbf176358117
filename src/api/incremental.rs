//! `audience.build_incremental`: the active model grown by the events since its build, without
//! scanning the older events again (core: [`crate::model::refresh`]).
//!
//! It reads the registered sources' rows newer than the model's latest event, adds their
//! affinities to the model's (rescaled to the new reference time: exactly with one half-life,
//! within a bound it records and warns about with several, see [`rescale`]), re-reads the
//! products tables, continues ALS from the model's factors over the users with new events and
//! every item, and keeps the item-kNN similarities unless new items arrived or the pairs grew by
//! [`KNN_GROWTH`] since they were computed (`knn` decides otherwise). The knobs are the model's.
//! A catalog whose sources or property mappings changed since the build, or whose models may hold
//! a forgotten user, needs a full build.
use crate::api::build::{interrupt_check, lock_catalog, raise_interrupted, store};
use crate::api::spi_util::{args, query_rows};
use crate::error::{shown, AudienceError, OrRaise};
use crate::model::als::{continue_als_rows_with, AlsModel};
use crate::model::fresh::Base;
use crate::model::refresh::{grow, rescale};
use crate::model::transplant::remap_factors;
use crate::store::image::Served;
use crate::store::stored::{Model, Property};
use pgrx::prelude::*;
use std::time::Instant;

/// Growth of the pairs since the item-kNN similarities were computed past which an incremental
/// build computes them again by default.
pub const KNN_GROWTH: f64 = 0.05;

/// ALS iterations an incremental build runs from the previous factors by default.
pub const DEFAULT_ITERATIONS: i32 = 1;

/// The catalog's event sources and property mappings as they bear on a build, as one
/// fingerprint (kept in a model's `stats` as `registration`): a model built from another
/// registration cannot be grown by new events. Weights and half-lives enter in their binary
/// form, so the session's `extra_float_digits` and `IntervalStyle` do not change it.
pub fn registration(cid: i32) -> Option<String> {
    Spi::get_one_with_args::<String>(
        "SELECT pg_catalog.md5(pg_catalog.concat_ws('|',
                (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(',', e.event_id, e.source_schema, e.source_table, e.user_column, e.product_column,
                        e.time_column, e.event_column, e.event_value, pg_catalog.encode(pg_catalog.float8send(e.weight), 'hex'), e.weight_column,
                        pg_catalog.encode(pg_catalog.interval_send(e.half_life), 'hex')), ';' ORDER BY e.event_id)
                   FROM audience.events e WHERE e.catalog_id OPERATOR(pg_catalog.=) $1),
                (SELECT pg_catalog.string_agg(pg_catalog.concat_ws(',', m.mapping_id, m.property, m.event_id, m.products_schema, m.products_table,
                        m.products_id_column, m.column_name, m.json_key, m.delimiter), ';' ORDER BY m.mapping_id)
                   FROM audience.property_mappings m WHERE m.catalog_id OPERATOR(pg_catalog.=) $1)))",
        &args![cid],
    )
    .or_raise("reading the catalog's registration")
}

/// The active model's row, as the incremental build needs it.
struct Active {
    catalog: String,
    model_id: i64,
    rows_read: i64,
    first_event_us: Option<i64>,
    last_event_us: i64,
    reference_us: i64,
    /// The reference time of the last full build this model grew from (its own when it is one).
    full_reference_us: i64,
    /// The pairs of the affinity its item-kNN similarities were computed from.
    knn_pairs: i64,
    registration: Option<String>,
    /// Why the model may not be grown (a user forgotten since its build), if so.
    full_build_due: Option<String>,
    params: serde_json::Value,
    tuning: Option<serde_json::Value>,
}

fn active(cid: i32) -> Active {
    type Row = (
        Option<String>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<pgrx::JsonB>,
        Option<pgrx::JsonB>,
    );
    let row: Option<Row> = query_rows(
        "SELECT c.name, m.model_id, m.rows_read, m.pairs, m.params, m.stats
           FROM audience.catalogs c LEFT JOIN audience.models m ON m.model_id OPERATOR(pg_catalog.=) c.active_model_id
          WHERE c.catalog_id OPERATOR(pg_catalog.=) $1",
        &args![cid],
        |r| {
            (
                r.get::<String>(1).ok().flatten(),
                r.get::<i64>(2).ok().flatten(),
                r.get::<i64>(3).ok().flatten(),
                r.get::<i64>(4).ok().flatten(),
                r.get::<pgrx::JsonB>(5).ok().flatten(),
                r.get::<pgrx::JsonB>(6).ok().flatten(),
            )
        },
    )
    .into_iter()
    .next();
    let Some((name, id, rows, pairs, params, stats)) = row else {
        AudienceError::internal("the locked catalog is gone").raise()
    };
    let catalog = name.unwrap_or_default();
    let stats = stats.map(|j| j.0).unwrap_or(serde_json::Value::Null);
    let int = |key: &str| stats.get(key).and_then(|v| v.as_i64());
    let text = |key: &str| stats.get(key).and_then(|v| v.as_str()).map(str::to_string);
    let (Some(model_id), Some(last_event_us), Some(reference_us)) =
        (id, int("last_event_us"), int("reference_us"))
    else {
        AudienceError::not_ready(format!(
            "catalog \"{}\" has no active model to grow",
            shown(&catalog)
        ))
        .hint("Run a full build first: SELECT * FROM audience.build(...).")
        .raise()
    };
    let pairs = pairs.unwrap_or(0);
    Active {
        catalog,
        model_id,
        rows_read: rows.unwrap_or(0),
        first_event_us: int("first_event_us"),
        last_event_us,
        reference_us,
        full_reference_us: int("full_reference_us").unwrap_or(reference_us),
        knn_pairs: int("knn_pairs").unwrap_or(pairs),
        registration: text("registration"),
        full_build_due: text("full_build_due"),
        params: params.map(|j| j.0).unwrap_or(serde_json::Value::Null),
        tuning: stats.get("tuning").cloned().filter(|t| !t.is_null()),
    }
}

/// The distinct half-lives of the catalog's sources, in microseconds (`None`: no decay).
fn half_lives(cid: i32) -> Vec<Option<i64>> {
    query_rows(
        "SELECT DISTINCT e.half_life FROM audience.events e WHERE e.catalog_id OPERATOR(pg_catalog.=) $1",
        &args![cid],
        |r| r.get::<pgrx::datum::Interval>(1).ok().flatten(),
    )
    .into_iter()
    .map(|iv| iv.map(|iv| crate::affinity::aggregate::interval_micros(&iv)))
    .collect()
}

/// Above this relative error of the rescaled affinities (sources with several half-lives, see
/// [`rescale`]) an incremental build warns that a full build is due.
const RESCALE_WARN: f64 = 0.05;

/// Per property of `model`, per item of the grown list (by `item_from`), the model's values.
fn item_values_of(model: &Served, item_from: &[Option<u32>]) -> Vec<(String, Vec<Vec<String>>)> {
    model
        .properties
        .iter()
        .map(|p| {
            let mut per_old: Vec<Vec<String>> = vec![Vec::new(); model.items.len()];
            for (v, value) in p.values.iter().enumerate() {
                for &i in p.value_items.row(v).0 {
                    per_old[i as usize].push(value.to_string());
                }
            }
            let per_item = item_from
                .iter()
                .map(|f| f.map(|f| per_old[f as usize].clone()).unwrap_or_default())
                .collect();
            (p.name.clone(), per_item)
        })
        .collect()
}

/// Grows the catalog's active model by the events since its build and makes the result active.
#[pg_extern(volatile)]
#[search_path(pg_catalog, @extschema@, pg_temp)]
#[allow(clippy::type_complexity)] // the named output columns of the SQL function
fn build_incremental(
    catalog: default!(Option<&str>, "NULL"),
    iterations: default!(Option<i32>, "NULL"),
    knn: default!(Option<bool>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(model_id, i64),
        name!(base_model_id, i64),
        name!(new_rows, i64),
        name!(users, i64),
        name!(items, i64),
        name!(pairs, i64),
        name!(new_users, i64),
        name!(new_items, i64),
        name!(seconds, f64),
    ),
> {
    let t0 = Instant::now();
    let iterations = iterations.unwrap_or(DEFAULT_ITERATIONS);
    if !(0..=100).contains(&iterations) {
        AudienceError::invalid(format!(
            "iterations must be between 0 and 100, not {iterations}"
        ))
        .hint("The ALS iterations run from the previous model's factors; 1 is the default.")
        .raise();
    }
    let cid = lock_catalog(catalog);
    let b = active(cid);
    if let Some(why) = &b.full_build_due {
        AudienceError::not_ready(format!(
            "the active model of catalog \"{}\" cannot be grown: {why}",
            shown(&b.catalog)
        ))
        .detail("An incremental build keeps every user of the model it grows; a full build reads the events as they are now.")
        .hint("Run a full build: SELECT * FROM audience.build(...).")
        .raise();
    }
    let now_registration = registration(cid);
    if b.registration.is_none() || b.registration != now_registration {
        AudienceError::not_ready(format!(
            "the event sources or property mappings of catalog \"{}\" changed since its active model was built",
            shown(&b.catalog)
        ))
        .detail(if b.registration.is_none() {
            "The model was built by an earlier version of pg_audience, which did not record them."
        } else {
            "An incremental build only adds new events to what the model was built from."
        })
        .hint("Run a full build: SELECT * FROM audience.build(...).")
        .raise();
    }
    let half_lives = half_lives(cid);
    // Without an index on a source's time column the read of the new events scans the whole
    // source: still correct, but most of what an incremental build saves.
    if let Some(rel) = crate::api::fresh::build_check(cid, b.last_event_us)
        .get("scan")
        .and_then(|v| v.as_str())
    {
        AudienceError::new(
            pgrx::PgSqlErrorCode::ERRCODE_WARNING,
            format!("reading the events since the build scans all of {rel}"),
        )
        .hint("Create an index on the event time column of each source: CREATE INDEX ON <source> (<time column>).")
        .warn();
    }
    let _progress = crate::api::progress::begin(&b.catalog);
    crate::api::progress::phase("scan", "events since the last build");
    let since = TimestampWithTimeZone::try_from(b.last_event_us.saturating_add(1)).ok();
    let scanned = crate::api::scan::scan_affinity(cid, since, None);
    let delta = scanned.aff;
    let new_rows = delta.rows as i64;
    let scan_s = t0.elapsed().as_secs_f64();
    if delta.matrix.nnz() == 0 {
        pgrx::notice!(
            "no usable events since the build of the active model of catalog \"{}\": it stays active",
            shown(&b.catalog)
        );
        let (users, items, pairs): (Option<i64>, Option<i64>, Option<i64>) =
            Spi::get_three_with_args(
                "SELECT users, items, pairs FROM audience.models WHERE model_id OPERATOR(pg_catalog.=) $1",
                &args![b.model_id],
            )
            .or_raise("reading the model");
        return TableIterator::once((
            b.model_id,
            b.model_id,
            new_rows,
            users.unwrap_or(0),
            items.unwrap_or(0),
            pairs.unwrap_or(0),
            0,
            0,
            t0.elapsed().as_secs_f64(),
        ));
    }
    crate::api::progress::finished(
        format!(
            "scanned {new_rows} new event rows ({} users, {} pairs)",
            delta.users.len(),
            delta.matrix.nnz()
        ),
        scan_s,
    );
    crate::api::progress::phase("merge", format!("onto model {}", b.model_id));
    let t_merge = Instant::now();
    // The serving image of the active model (the shared mapping when there is one): read in
    // place, not decoded.
    let loaded = crate::api::cache::active(Some(&b.catalog));
    if loaded.model_id != b.model_id {
        AudienceError::internal("the active model changed during an incremental build").raise();
    }
    let prev = &loaded.model;
    let t_load = t_merge.elapsed().as_secs_f64();
    // The rule of the deploy guard and of audiences between builds: a user holding most of the
    // new events (a bot, a feed loaded twice) is left out until a full build decides.
    let top = crate::model::fresh::top_user(&delta, i32::MIN);
    let skip = top
        .user
        .filter(|_| top.dominates(crate::guc::GUARD_MAX_USER_SHARE.get()));
    if let Some(u) = skip {
        pgrx::notice!(
            "user \"{}\" holds {:.0}% of the engagement occasions since the last build (above audience.guard_max_user_share): left out of the incremental build",
            shown(&delta.users[u]),
            100.0 * top.share()
        );
    }
    let reference_us = delta.reference_us.max(b.reference_us);
    let (scale, _) = rescale(&half_lives, reference_us - b.reference_us);
    let (_, error_bound) = rescale(&half_lives, reference_us - b.full_reference_us);
    if error_bound > RESCALE_WARN {
        AudienceError::new(
            pgrx::PgSqlErrorCode::ERRCODE_WARNING,
            format!(
                "the older affinities of catalog \"{}\" are now within {:.0}% of a full build's",
                shown(&b.catalog),
                100.0 * error_bound
            ),
        )
        .detail(format!(
            "Its sources decay with different half-lives, and {:.1} days passed since its last full build: an incremental build rescales the stored affinities, which mix them, by one factor.",
            (reference_us - b.full_reference_us) as f64 / 86_400_000_000.0
        ))
        .hint("Run a full build (audience.build) to make them exact; incremental builds after it start again from there.")
        .warn();
    }
    let grown = grow(
        &Base {
            users: &prev.users,
            items: &prev.items,
            ui: &prev.ui,
            last_seen: prev.last_seen.as_slice(),
            days: &prev.days,
        },
        &delta,
        scale,
        skip,
        &mut interrupt_check,
    )
    .unwrap_or_else(|_| raise_interrupted("the incremental build"));
    // Item properties: the model's, then the newest value the new events carry, then the
    // products tables (authoritative), as a full build resolves them.
    let mut item_values = item_values_of(prev, &grown.item_from);
    for (p, name) in scanned.prop_names.iter().enumerate() {
        let Some(col) = delta.item_props.get(p) else {
            continue;
        };
        let slot = match item_values.iter().position(|(n, _)| n == name) {
            Some(s) => s,
            None => {
                item_values.push((name.clone(), vec![Vec::new(); grown.items.len()]));
                item_values.len() - 1
            }
        };
        for (d, v) in col.iter().enumerate() {
            if let Some(v) = v {
                if let Ok(g) = grown.items.binary_search(&delta.items[d]) {
                    item_values[slot].1[g] = crate::store::stored::split_values(v);
                }
            }
        }
    }
    crate::api::scan::apply_products(cid, &grown.items, &mut item_values);
    let n_items = grown.items.len();
    let properties = item_values
        .iter()
        .map(|(name, per_item)| Property::from_item_values(name, n_items, per_item))
        .collect();
    let merge_s = t_merge.elapsed().as_secs_f64();
    crate::api::progress::finished(
        format!(
            "grew model {} by {} users with new events ({} new) and {} new items (read it in {t_load:.2} s)",
            b.model_id,
            grown.touched.len(),
            grown.new_users(),
            grown.new_items()
        ),
        merge_s,
    );
    // What the grown model keeps of the previous one: knobs, similarities, factors to start from.
    let (params, cross_params, property_params) =
        (prev.params, prev.cross_params, prev.property_params.clone());
    // The similarities are computed again when asked, or by default when new items arrived (they
    // have none) or the pairs grew by KNN_GROWTH since they were computed.
    let growth = grown.ui.nnz() as f64 / b.knn_pairs.max(1) as f64 - 1.0;
    let knn = knn.unwrap_or(grown.new_items() > 0 || growth >= KNN_GROWTH);
    let kept_knn = if knn {
        None
    } else {
        prev.knn
            .as_ref()
            .map(|s| crate::model::transplant::remap_knn(s, &grown.item_from))
    };
    let knn_params = match (
        &prev.knn,
        crate::api::build::knn_params_from_json(&b.params),
    ) {
        (Some(_), Some(p)) if knn => Some(p),
        (Some(_), None) if knn => AudienceError::corrupt(format!(
            "model {} does not record the item-kNN settings its similarities were computed with",
            b.model_id
        ))
        .hint("Run a full build: SELECT * FROM audience.build(...).")
        .raise(),
        _ => None,
    };
    let als_params = crate::api::build::als_params_from_json(&b.params);
    // Before the factors are copied: what the training will hold.
    let mut bp = crate::api::build::build_params_default();
    bp.als = als_params.clone().filter(|_| prev.als.is_some());
    bp.knn = knn_params;
    crate::api::build::check_training_memory(grown.users.len(), n_items, grown.ui.nnz(), &bp);
    let start = match (prev.als.as_ref(), als_params) {
        (Some(m), Some(p)) if p.factors == m.factors => Some((
            p,
            AlsModel {
                factors: m.factors,
                user_factors: remap_factors(&m.user_factors, m.factors, &grown.user_from),
                item_factors: remap_factors(&m.item_factors, m.factors, &grown.item_from),
            },
        )),
        (None, _) => None,
        _ => AudienceError::corrupt(format!(
            "model {} does not record the ALS settings its factors were trained with",
            b.model_id
        ))
        .hint("Run a full build: SELECT * FROM audience.build(...).")
        .raise(),
    };
    drop(loaded);
    let recompute_knn = knn_params.is_some();
    let conf = (start.is_some() || recompute_knn)
        .then(|| crate::model::train::damped_on(&grown.ui, crate::guc::threads()));
    let t_als = Instant::now();
    // One transpose of the matrix for ALS's item half-sweeps and item-kNN, as a build.
    let mut iu = conf.as_ref().filter(|_| start.is_some()).map(|c| {
        crate::model::als::transpose_checked(c, crate::guc::threads(), &mut interrupt_check)
            .unwrap_or_else(|_| raise_interrupted("ALS training"))
    });
    let als = start.zip(conf.as_ref()).map(|((p, start), conf)| {
        crate::api::progress::phase(
            "als",
            format!(
                "{iterations} iterations from model {}'s factors",
                b.model_id
            ),
        );
        let trained = continue_als_rows_with(
            conf,
            iu.as_ref(),
            &p,
            start,
            &grown.touched,
            iterations as usize,
            &mut interrupt_check,
        )
        .unwrap_or_else(|_| raise_interrupted("ALS training"));
        crate::api::progress::finished(
            format!("continued ALS ({iterations} iterations)"),
            t_als.elapsed().as_secs_f64(),
        );
        trained
    });
    let als_s = t_als.elapsed().as_secs_f64();
    // Item-kNN computed again trains while the model is stored (as in a full build).
    let knn_run = knn_params
        .zip(conf)
        .map(|(kp, conf)| crate::api::build::KnnRun::start(conf, iu.take(), kp));
    drop(iu);
    let (touched, new_users, new_items, dropped) = (
        grown.touched.len(),
        grown.new_users(),
        grown.new_items(),
        grown.dropped_pairs,
    );
    let mut model = Model {
        users: grown.users,
        items: grown.items,
        ui: grown.ui,
        last_seen: grown.last_seen,
        als,
        // None when item-kNN is computed again (set by the store when it is done).
        knn: kept_knn,
        properties,
        params,
        cross_params,
        days: grown.days,
        reference_day: crate::affinity::accumulator::day_of(reference_us),
        property_params,
    };
    let t_store = Instant::now();
    let last_event_us = delta.max_time_us.max(b.last_event_us);
    let stats = serde_json::json!({
        "seconds": { "scan": scan_s, "merge": merge_s, "als": als_s, "knn": knn_run.is_none().then_some(0.0) },
        "tuning": b.tuning,
        "incremental": {
            "base_model_id": b.model_id, "new_rows": new_rows, "users_with_new_events": touched,
            "new_users": new_users, "new_items": new_items, "dropped_pairs": dropped,
            "als_iterations": iterations, "knn_recomputed": recompute_knn, "decay_since_base": scale,
            "rescale_error_bound": error_bound,
        },
        "affinity_state_bytes": scanned.state_bytes,
        "scan_state": scanned.scan_state,
        "first_event_us": b.first_event_us.map_or(delta.min_time_us, |f| f.min(delta.min_time_us)),
        "last_event_us": last_event_us, "reference_us": reference_us,
        "full_reference_us": b.full_reference_us,
        "knn_pairs": if recompute_knn { model.ui.nnz() as i64 } else { b.knn_pairs },
        "fresh_check": crate::api::fresh::build_check(cid, last_event_us),
        "registration": now_registration,
    });
    let (users, items, pairs) = (
        model.users.len() as i64,
        model.items.len() as i64,
        model.ui.nnz() as i64,
    );
    let stored = store(
        cid,
        &mut model,
        knn_run,
        b.rows_read + new_rows,
        None,
        reference_us,
        &b.params,
        &stats,
        true,
        None,
    );
    let model_id = stored.model_id;
    let store_s = crate::api::build::stored_report(&stored, t_store);
    let total = t0.elapsed().as_secs_f64();
    crate::api::build::record_final_stats(model_id, store_s, total, stored.knn.as_ref());
    TableIterator::once((
        model_id,
        b.model_id,
        new_rows,
        users,
        items,
        pairs,
        new_users as i64,
        new_items as i64,
        total,
    ))
}
