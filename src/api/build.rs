//! `audience.build`: one scan of every registered source through the affinity aggregate, item
//! properties, training, and an atomic swap of the stored model.
use crate::affinity::accumulator::Affinity;
use crate::affinity::aggregate::take_stashed;
use crate::api::spi_util::{args, query_rows};
use crate::error::{AudienceError, OrRaise};
use crate::model::als::{train_als, AlsParams};
use crate::model::days::DayIndex;
use crate::model::knn::{train_knn, KnnParams};
use crate::model::train::{damped, value_user_counts};
use crate::score::hybrid::{HybridParams, Own};
use crate::store::stored::{split_values, Model, Property, PropertyKnobs};
use crate::util::interrupt::Interrupted;
use pgrx::prelude::*;
use std::time::Instant;

/// Model knobs of one build (NULL arguments take these defaults).
#[derive(Clone, Debug)]
pub struct BuildParams {
    pub als: Option<AlsParams>,
    pub knn: Option<KnnParams>,
    pub hybrid: HybridParams,
    /// Knobs for cross-sell audiences (`exclude_engaged => true`); set by `audience.tune`.
    pub cross_sell: HybridParams,
    /// Knobs tuned per property (override `hybrid` / `cross_sell` for that property).
    pub by_property: Vec<PropertyKnobs>,
    /// Whether a build tunes the knobs of untuned properties on a validation window itself.
    pub auto_tune: bool,
    /// Whether the ALS settings were given explicitly (then tuning keeps them).
    pub als_explicit: bool,
    /// Whether catalog-level scoring knobs were given explicitly (then builds do not auto-tune).
    pub knobs_explicit: bool,
    /// Whether a build activates its model only when the deploy guard finds it not worse.
    pub guard: bool,
}

/// The knobs of an untuned catalog: pure collaborative filtering (kNN and ALS shares averaged)
/// scaled by the square roots of the ALS-predicted volume and of the active days. It is the
/// setting validation picked, or next to it, on the demo shop (brand, category), the 20M-event
/// shop and MovieLens (README, "Quality"); untuned builds with the earlier default (prior 2,
/// activity_exp 0.5, volume 0, days_exp 0) scored hit@1% 0.39 / 0.65 / 0.18 on demo brand, demo
/// category and MovieLens genre, these 0.63 / 0.89 / 0.47 (bench/untuned.sql).
pub const DEFAULT_HYBRID: HybridParams = HybridParams {
    prior: f32::INFINITY,
    activity_exp: 0.5,
    knn_weight: 0.5,
    volume: 1.0,
    days_exp: 0.5,
    tenure_exp: 0.0,
    own: Own::Affinity,
};

/// What the scan produced, before training.
#[derive(Clone)]
pub struct Collected {
    pub aff: Affinity,
    /// Per property: name and, per item, its values.
    pub item_values: Vec<(String, Vec<Vec<String>>)>,
    pub scan_seconds: f64,
    pub products_seconds: f64,
    pub state_bytes: usize,
    /// How the scan handed its state over: "stash" (in this backend), "bytes" (serialized), or
    /// "bytes after a second scan" (the final step ran in another session).
    pub scan_state: &'static str,
}

impl Collected {
    /// The events on days before `cut_day` (a training split), from the occasions the scan
    /// kept: no second scan. Items without pairs before the cut are dropped with their values.
    pub fn until(&self, cut_day: i32) -> Collected {
        let aff = self.aff.until(cut_day);
        // Both item lists are sorted: walk them together to keep the surviving items' values.
        let mut keep = Vec::with_capacity(aff.items.len());
        let mut j = 0usize;
        for (i, name) in self.aff.items.iter().enumerate() {
            if j < aff.items.len() && aff.items[j] == *name {
                keep.push(i);
                j += 1;
            }
        }
        let item_values = self
            .item_values
            .iter()
            .map(|(n, per_item)| {
                (
                    n.clone(),
                    keep.iter().map(|&i| per_item[i].clone()).collect(),
                )
            })
            .collect();
        Collected {
            aff,
            item_values,
            scan_seconds: 0.0,
            products_seconds: 0.0,
            state_bytes: 0,
            scan_state: self.scan_state,
        }
    }
}

/// Runs `f` with `debug_parallel_query` (PostgreSQL 16+; `force_parallel_mode` before) off.
/// When it is on, the planner may run the whole scan, final function included, in one parallel
/// worker under a single-copy Gather, and the worker's stash is not the caller's.
fn without_single_copy_gather<T>(f: impl FnOnce() -> T) -> T {
    let name = if pg_sys::PG_VERSION_NUM >= 160000 {
        "debug_parallel_query"
    } else {
        "force_parallel_mode"
    };
    with_setting(name, "off", f)
}

/// Runs `f` with the setting `name` at `value` when the setting exists and differs, and puts it
/// back afterwards (an error aborts the transaction, which restores it too).
fn with_setting<T>(name: &str, value: &str, f: impl FnOnce() -> T) -> T {
    let old: Option<String> =
        Spi::get_one_with_args("SELECT pg_catalog.current_setting($1, true)", &args![name])
            .or_raise("reading a setting");
    let change = old.as_deref().is_some_and(|v| v != value);
    if change {
        Spi::run_with_args(
            "SELECT pg_catalog.set_config($1, $2, true)",
            &args![name, value],
        )
        .or_raise("changing a setting");
    }
    let out = f();
    if let (true, Some(v)) = (change, old) {
        Spi::run_with_args(
            "SELECT pg_catalog.set_config($1, $2, true)",
            &args![name, v],
        )
        .or_raise("restoring a setting");
    }
    out
}

/// The check the core's long loops call on the backend's own thread. A pending cancel, statement
/// timeout or terminate is returned as `Err(Interrupted)` instead of raised: raising here would
/// unwind through `std::thread::scope`, which waits for the worker threads to finish all their work
/// first (the whole kNN training). The core stops its workers and returns, and the caller raises
/// the proper error with [`raise_interrupted`]. Other pending interrupts are processed as usual.
pub fn interrupt_check() -> Result<(), Interrupted> {
    // SAFETY: flags set by signal handlers (volatile sig_atomic_t in C), read on the backend's thread.
    unsafe {
        if std::ptr::read_volatile(&raw const pg_sys::InterruptPending) != 0 {
            if std::ptr::read_volatile(&raw const pg_sys::QueryCancelPending) != 0
                || std::ptr::read_volatile(&raw const pg_sys::ProcDiePending) != 0
            {
                return Err(Interrupted);
            }
            pg_sys::ProcessInterrupts();
        }
    }
    Ok(())
}

/// Raises the error of the interrupt that stopped `what` (see [`interrupt_check`]): the cancel's
/// or terminate's own error, or 57014 when PostgreSQL holds it off for now.
pub fn raise_interrupted(what: &str) -> ! {
    pgrx::check_for_interrupts!();
    AudienceError::new(
        pgrx::PgSqlErrorCode::ERRCODE_QUERY_CANCELED,
        format!("{what} was interrupted"),
    )
    .raise()
}

/// How the scan hands its state to the build (`audience.scan_state`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, pgrx::PostgresGucEnum)]
pub enum ScanState {
    /// Through this backend's stash (no copy), falling back to bytes when the final step ran in
    /// another session.
    #[name = c"auto"]
    Auto,
    /// Always as bytes (one serialized copy of the state; under 1 GB).
    #[name = c"bytes"]
    Bytes,
}

/// Whether one of the catalog's sources is a Citus distributed table (false without Citus).
fn has_distributed_source(cid: i32) -> bool {
    let citus = Spi::get_one::<bool>(
        "SELECT pg_catalog.to_regclass('pg_catalog.pg_dist_partition') IS NOT NULL",
    )
    .or_raise("looking for Citus")
    .unwrap_or(false);
    citus
        && Spi::get_one_with_args::<bool>(
            "SELECT EXISTS (SELECT 1 FROM audience.events e JOIN pg_catalog.pg_dist_partition d
                ON d.logicalrelid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(pg_catalog.format('%I.%I', e.source_schema, e.source_table))
              WHERE e.catalog_id OPERATOR(pg_catalog.=) $1)",
            &args![cid],
        )
        .or_raise("looking for distributed sources")
        .unwrap_or(false)
}

/// Runs the scan with the aggregate that returns the finished state as bytes.
fn scan_as_bytes(query: &str) -> crate::affinity::accumulator::Accumulator {
    let q = query.replacen(
        "audience._affinity_collect(",
        "audience._affinity_collect_bytes(",
        1,
    );
    let bytes: Vec<u8> = without_single_copy_gather(|| {
        query_rows(&q, &[], |row| row.get::<Vec<u8>>(1).ok().flatten())
    })
    .into_iter()
    .next()
    .flatten()
    .unwrap_or_else(|| AudienceError::internal("the scan returned no state").raise());
    crate::affinity::accumulator::Accumulator::deserialize(&bytes).unwrap_or_else(|e| {
        AudienceError::corrupt(format!("the scan's state cannot be read: {e}")).raise()
    })
}

/// Runs one scan query, handing the state over as `state` says; returns it and how it came.
pub(crate) fn scan_one(
    query: &str,
    state: ScanState,
) -> (crate::affinity::accumulator::Accumulator, &'static str) {
    if state == ScanState::Bytes {
        return (scan_as_bytes(query), "bytes");
    }
    let token: i64 = without_single_copy_gather(|| {
        query_rows(query, &[], |row| row.get::<i64>(1).ok().flatten())
    })
    .into_iter()
    .next()
    .flatten()
    .unwrap_or_else(|| AudienceError::internal("the scan returned no state").raise());
    match take_stashed(token) {
        Some(acc) => (acc, "stash"),
        None => {
            // The aggregate's final step ran in another session (a single-shard Citus table,
            // say): its state is not here. Scan again, returning the state as bytes.
            pgrx::notice!(
                "the scan's final step ran in another session{}; scanning again and transferring the state as bytes",
                if crate::affinity::aggregate::token_is_ours(token) {
                    ""
                } else {
                    " (a distributed table?)"
                }
            );
            (scan_as_bytes(query), "bytes after a second scan")
        }
    }
}

/// The scan of a catalog with a Citus distributed source: one aggregate per source, merged here.
/// Citus runs an aggregate as partial aggregates on the workers (combined and finished in this
/// session) only over one distributed table; over the UNION ALL of all sources it would pull every
/// row to the coordinator. Citus main combines aggregates with an internal state on the workers
/// only when `citus.allow_aggregate_worker_combine_on_internal_types` is on: it is, for these
/// scans. A single-shard table runs the whole aggregate on its worker: its source is scanned
/// again with the state as bytes (`audience.scan_state = bytes` scans it once).
fn scan_distributed(
    source_queries: &[String],
    state: ScanState,
) -> (crate::affinity::accumulator::Accumulator, &'static str) {
    with_setting(
        "citus.allow_aggregate_worker_combine_on_internal_types",
        "on",
        || {
            let mut acc: Option<crate::affinity::accumulator::Accumulator> = None;
            let mut how = "stash, one scan per source";
            for q in source_queries {
                let (part, h) = scan_one(q, state);
                if h != "stash" {
                    how = if h == "bytes" {
                        "bytes, one scan per source"
                    } else {
                        "one scan per source, single-shard ones again as bytes"
                    };
                }
                match acc.as_mut() {
                    None => acc = Some(part),
                    Some(a) => a.merge(part),
                }
                pgrx::check_for_interrupts!();
            }
            let acc = acc.unwrap_or_else(|| AudienceError::internal("no scan query").raise());
            (acc, how)
        },
    )
}

/// Runs the catalog's scan (optionally restricted to [since, until)) and resolves item properties.
pub fn collect(
    cid: i32,
    since: Option<TimestampWithTimeZone>,
    until: Option<TimestampWithTimeZone>,
) -> Collected {
    let t0 = Instant::now();
    type Texts = Option<Vec<Option<String>>>;
    let (query, props, source_queries): (Option<String>, Texts, Texts) = Spi::get_three_with_args(
        "SELECT query, properties, source_queries FROM audience._build_query($1, $2, $3, NULL)",
        &args![cid, since, until],
    )
    .or_raise("planning the scan");
    let source_queries: Vec<String> = source_queries
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect();
    let query = query.unwrap_or_else(|| AudienceError::internal("no scan query").raise());
    let prop_names: Vec<String> = props.unwrap_or_default().into_iter().flatten().collect();
    // No row limit: the executor only runs a plan with parallel workers when it may fetch every
    // row (Spi::get_one asks for one, which silently disabled the parallel scan).
    let state = crate::guc::SCAN_STATE.get();
    let (mut acc, scan_state) = if has_distributed_source(cid) {
        scan_distributed(&source_queries, state)
    } else {
        scan_one(&query, state)
    };
    // Decay is measured to the latest event, but never to a time after `until` or now: one event
    // stamped in the future must not decay every other event away.
    let now: i64 = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() };
    acc.set_reference_cap(Some(until.map(i64::from).unwrap_or(now).min(now)));
    let state_bytes = acc.memory_bytes();
    pgrx::check_for_interrupts!();
    let aff = acc.finish().without_empty();
    let scan_seconds = t0.elapsed().as_secs_f64();
    crate::api::progress::phase("products", format!("{} items", aff.items.len()));

    let t1 = Instant::now();
    let n_items = aff.items.len();
    let mut item_values: Vec<(String, Vec<Vec<String>>)> = prop_names
        .iter()
        .enumerate()
        .map(|(p, name)| {
            let per_item = aff
                .item_props
                .get(p)
                .map(|col| {
                    col.iter()
                        .map(|v| v.as_deref().map(split_values).unwrap_or_default())
                        .collect()
                })
                .unwrap_or_else(|| vec![Vec::new(); n_items]);
            (name.clone(), per_item)
        })
        .collect();
    // Products tables are authoritative for the properties they map.
    let products = query_rows::<(String, String)>(
        "SELECT property, query FROM audience._products_queries($1)",
        &args![cid],
        |row| {
            (
                row.get::<String>(1).ok().flatten().unwrap_or_default(),
                row.get::<String>(2).ok().flatten().unwrap_or_default(),
            )
        },
    );
    for (name, q) in products {
        let mut per_item: Vec<Vec<String>> = vec![Vec::new(); n_items];
        let rows = query_rows::<(Option<String>, Option<String>)>(&q, &[], |row| {
            (
                row.get::<String>(1).ok().flatten(),
                row.get::<String>(2).ok().flatten(),
            )
        });
        for (id, val) in rows {
            if let (Some(id), Some(val)) = (id, val) {
                if let Ok(i) = aff.items.binary_search(&id) {
                    per_item[i] = split_values(&val);
                }
            }
        }
        match item_values.iter_mut().find(|(n, _)| *n == name) {
            Some((_, existing)) => {
                for (slot, vals) in existing.iter_mut().zip(per_item) {
                    if !vals.is_empty() {
                        *slot = vals;
                    }
                }
            }
            None => item_values.push((name, per_item)),
        }
    }
    item_values.sort_by(|a, b| a.0.cmp(&b.0));
    Collected {
        aff,
        item_values,
        scan_seconds,
        products_seconds: t1.elapsed().as_secs_f64(),
        state_bytes,
        scan_state,
    }
}

pub struct Trained {
    pub model: Model,
    pub als_seconds: f64,
    pub knn_seconds: f64,
}

/// Memory available to a build, in bytes: `audience.build_memory_mb`, or what the operating
/// system reports available (MemAvailable), or no limit when neither is known.
fn build_memory_limit() -> Option<u64> {
    let mb = crate::guc::BUILD_MEMORY_MB.get();
    if mb > 0 {
        return Some(mb as u64 * 1024 * 1024);
    }
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kb| kb * 1024)
}

/// Refuses (54000) a training whose memory estimate exceeds what the build may use, before
/// anything is allocated, naming the settings that lower it.
pub fn check_training_memory(n_users: usize, n_items: usize, nnz: usize, p: &BuildParams) {
    let als = p
        .als
        .as_ref()
        .map(|a| crate::model::als::memory_estimate(n_users, n_items, nnz, a))
        .unwrap_or(0);
    let knn = p
        .knn
        .as_ref()
        .map(|k| crate::model::knn::memory_estimate(n_users, n_items, nnz, k))
        .unwrap_or(0);
    // The damped confidence copy of the affinity matrix.
    let need = (als + knn + nnz * 8 + n_users * 8) as u64;
    let Some(limit) = build_memory_limit() else {
        return;
    };
    if need > limit {
        let mb = |b: u64| b.div_ceil(1024 * 1024);
        AudienceError::new(pgrx::PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED, "training this model needs more memory than the build may use")
            .detail(format!(
                "Estimated {} MB (ALS {} MB, item-kNN {} MB) for {n_users} users, {n_items} items and {nnz} pairs; {} MB may be used.",
                mb(need),
                mb(als as u64),
                mb(knn as u64),
                mb(limit)
            ))
            .hint(format!(
                "Lower factors (now {}) or neighbours (now {}), or raise audience.build_memory_mb.",
                p.als.as_ref().map_or(0, |a| a.factors),
                p.knn.as_ref().map_or(0, |k| k.neighbours)
            ))
            .raise();
    }
}

/// Trains the collaborative models on collected affinity. Pure apart from interrupt checks.
pub fn train(c: Collected, p: &BuildParams) -> Trained {
    let aff = c.aff;
    check_training_memory(aff.users.len(), aff.items.len(), aff.matrix.nnz(), p);
    let conf = damped(&aff.matrix);
    let t0 = Instant::now();
    if let Some(ap) = &p.als {
        crate::api::progress::phase(
            "als",
            format!(
                "{} factors, {} iterations, {} users x {} items",
                ap.factors,
                ap.iterations,
                aff.users.len(),
                aff.items.len()
            ),
        );
    }
    let als = p.als.as_ref().map(|ap| {
        train_als(&conf, ap, &mut interrupt_check)
            .unwrap_or_else(|_| raise_interrupted("ALS training"))
    });
    let als_seconds = t0.elapsed().as_secs_f64();
    if let Some(ap) = &p.als {
        crate::api::progress::finished(
            format!(
                "trained ALS ({} factors, {} iterations)",
                ap.factors, ap.iterations
            ),
            als_seconds,
        );
    }
    let t1 = Instant::now();
    if let Some(kp) = &p.knn {
        crate::api::progress::phase("knn", format!("{} neighbours", kp.neighbours));
    }
    let knn = p.knn.as_ref().map(|kp| {
        train_knn(&conf, kp, &mut interrupt_check)
            .unwrap_or_else(|_| raise_interrupted("item-kNN training"))
    });
    let knn_seconds = t1.elapsed().as_secs_f64();
    if let Some(kp) = &p.knn {
        crate::api::progress::finished(
            format!("trained item-kNN ({} neighbours)", kp.neighbours),
            knn_seconds,
        );
    }
    drop(conf);
    let n_items = aff.items.len();
    let properties = c
        .item_values
        .iter()
        .map(|(name, per_item)| Property::from_item_values(name, n_items, per_item))
        .collect();
    // Minutes since 2000-01-01 keep the per-entry time in 4 bytes.
    let last_seen = aff
        .last_seen
        .iter()
        .map(|&us| (us.div_euclid(60_000_000)).clamp(i32::MIN as i64, i32::MAX as i64) as i32)
        .collect();
    let days = DayIndex::from_records(
        &aff.occasions.ptr,
        &aff.occasions.minute,
        &aff.occasions.value,
    );
    let reference_day = crate::affinity::accumulator::day_of(aff.reference_us);
    let model = Model {
        users: aff.users,
        items: aff.items,
        ui: aff.matrix,
        last_seen,
        als,
        knn,
        properties,
        params: p.hybrid,
        cross_params: p.cross_sell,
        days,
        reference_day,
        property_params: p.by_property.clone(),
    };
    Trained {
        model,
        als_seconds,
        knn_seconds,
    }
}

/// A memory figure of this backend from /proc/self/status, in bytes (Linux only).
fn proc_status_bytes(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident memory (VmHWM). It includes the shared buffers the scan touched.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_bytes("VmHWM:")
}

/// Private (anonymous) resident memory now: the backend's own allocations, without shared buffers.
pub fn private_rss_bytes() -> Option<u64> {
    proc_status_bytes("RssAnon:")
}

/// Bytes per model_data row: small enough that a cancel between rows is noticed quickly.
const CHUNK: usize = 8 << 20;

/// Stores a model, in the caller's transaction, as the catalog's new active model (dropping the
/// catalog's older models), or, when `activate` is false (refused by the deploy guard, whose
/// report is `guard`), beside the active model (dropping the other inactive ones). Returns the
/// new model id.
#[allow(clippy::too_many_arguments)]
pub fn store(
    cid: i32,
    model: &Model,
    rows_read: i64,
    until: Option<TimestampWithTimeZone>,
    reference_us: i64,
    params: &serde_json::Value,
    stats: &serde_json::Value,
    activate: bool,
    guard: Option<&serde_json::Value>,
) -> i64 {
    let reference = TimestampWithTimeZone::try_from(reference_us).ok();
    let model_id: i64 = Spi::get_one_with_args::<i64>(
        "INSERT INTO audience.models (catalog_id, train_until, reference_time, rows_read, users, items, pairs, params, stats, guard)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING model_id",
        &args![
            cid,
            until,
            reference,
            rows_read,
            model.users.len() as i64,
            model.items.len() as i64,
            model.ui.nnz() as i64,
            pgrx::JsonB(params.clone()),
            pgrx::JsonB(stats.clone()),
            guard.map(|g| pgrx::JsonB(g.clone()))
        ],
    )
    .or_raise("storing the model")
    .unwrap_or_else(|| AudienceError::internal("no model id").raise());
    let t0 = Instant::now();
    let bytes = model
        .encode_with(&mut interrupt_check)
        .unwrap_or_else(|_| raise_interrupted("storing the model"));
    let t_encode = t0.elapsed().as_secs_f64();
    for (n, chunk) in bytes.chunks(CHUNK).enumerate() {
        pgrx::check_for_interrupts!();
        Spi::run_with_args(
            "INSERT INTO audience.model_data (model_id, part, chunk, data) VALUES ($1, 'model', $2, $3)",
            &args![model_id, n as i32, chunk],
        )
        .or_raise("storing the model data");
    }
    let (t_rows, n_bytes) = (t0.elapsed().as_secs_f64() - t_encode, bytes.len());
    drop(bytes);
    for prop in &model.properties {
        pgrx::check_for_interrupts!();
        let items: Vec<i64> = (0..prop.values.len())
            .map(|v| prop.value_items.row(v).0.len() as i64)
            .collect();
        let users = value_user_counts(&model.ui, &prop.value_items);
        Spi::run_with_args(
            "INSERT INTO audience.property_values (model_id, property, value, items, users)
             SELECT $1, $2, v, i, u FROM ROWS FROM (pg_catalog.unnest($3::pg_catalog.text[]), pg_catalog.unnest($4::pg_catalog.int8[]), pg_catalog.unnest($5::pg_catalog.int8[])) AS t(v, i, u)",
            &args![model_id, prop.name.as_str(), prop.values.clone(), items, users],
        )
        .or_raise("storing property values");
    }
    if activate {
        Spi::run_with_args(
            "UPDATE audience.catalogs SET active_model_id = $2, updated_at = pg_catalog.now() WHERE catalog_id OPERATOR(pg_catalog.=) $1",
            &args![cid, model_id],
        )
        .or_raise("activating the model");
    }
    // Kept: the new model and the active one.
    let replaced: Vec<i64> = Spi::connect_mut(|client| {
        let table = client
            .update(
                "DELETE FROM audience.models m WHERE m.catalog_id OPERATOR(pg_catalog.=) $1 AND m.model_id OPERATOR(pg_catalog.<>) $2
                   AND m.model_id IS DISTINCT FROM (SELECT c.active_model_id FROM audience.catalogs c WHERE c.catalog_id OPERATOR(pg_catalog.=) $1)
                 RETURNING m.model_id",
                None,
                &args![cid, model_id],
            )
            .or_raise("dropping older models");
        table
            .filter_map(|r| r.get::<i64>(1).ok().flatten())
            .collect()
    });
    let t_rest = t0.elapsed().as_secs_f64() - t_encode - t_rows;
    // The shared serving copy, made visible when this transaction commits.
    let t1 = Instant::now();
    crate::api::shared::stage_for_build(model, model_id, replaced);
    pgrx::debug1!(
        "audience: stored model {model_id}: encoded {} MB in {t_encode:.2} s, wrote its rows in {t_rows:.2} s, property values and older models in {t_rest:.2} s, serving image in {:.2} s",
        n_bytes >> 20,
        t1.elapsed().as_secs_f64()
    );
    model_id
}

fn positive_int(v: Option<i32>, what: &str, default: usize, min: i32, max: i32) -> usize {
    match v {
        None => default,
        Some(x) if x >= min && x <= max => x as usize,
        Some(x) => AudienceError::invalid(format!("{what} must be between {min} and {max}"))
            .detail(format!("The value given was {x}."))
            .raise(),
    }
}

/// A float as PostgreSQL prints it (Infinity, -Infinity, NaN).
fn sql_float(x: f64) -> String {
    match x {
        f64::INFINITY => "Infinity".into(),
        f64::NEG_INFINITY => "-Infinity".into(),
        x => x.to_string(),
    }
}

fn finite_nonneg(v: Option<f64>, what: &str, default: f32) -> f32 {
    match v {
        None => default,
        Some(x) if x.is_finite() && x >= 0.0 => x as f32,
        Some(x) => AudienceError::invalid(format!("{what} must be a finite number not below zero"))
            .detail(format!("The value given was {}.", sql_float(x)))
            .hint(
                "Pass NULL (or leave the argument out) to keep the remembered or default setting.",
            )
            .raise(),
    }
}

/// Parses build arguments into parameters (NULL = default).
#[allow(clippy::too_many_arguments)]
pub fn build_params(
    factors: Option<i32>,
    iterations: Option<i32>,
    regularization: Option<f64>,
    alpha: Option<f64>,
    neighbours: Option<i32>,
    prior: Option<f64>,
    activity_exp: Option<f64>,
    knn_weight: Option<f64>,
    volume: Option<f64>,
    days_exp: Option<f64>,
    tenure_exp: Option<f64>,
    own: Option<&str>,
    own_half_life_days: Option<f64>,
) -> BuildParams {
    let threads = crate::guc::threads();
    let d = AlsParams::default();
    let factors = positive_int(factors, "factors", d.factors, 0, 1024);
    let als = (factors > 0).then(|| AlsParams {
        factors,
        iterations: positive_int(iterations, "iterations", d.iterations, 1, 1000),
        regularization: finite_nonneg(regularization, "regularization", d.regularization),
        alpha: finite_nonneg(alpha, "alpha", d.alpha),
        threads,
        ..d
    });
    let kd = KnnParams::default();
    let neighbours = positive_int(neighbours, "neighbours", kd.neighbours, 0, 10_000);
    let knn = (neighbours > 0).then_some(KnnParams {
        neighbours,
        threads,
        ..kd
    });
    let kw = finite_nonneg(knn_weight, "knn_weight", DEFAULT_HYBRID.knn_weight);
    if kw > 1.0 {
        AudienceError::invalid("knn_weight must be between 0 and 1").raise();
    }
    let hybrid = HybridParams {
        // +infinity is the pure collaborative mode (the user's own history only scales the score).
        prior: match prior {
            Some(x) if x == f64::INFINITY => f32::INFINITY,
            other => finite_nonneg(other, "prior", DEFAULT_HYBRID.prior),
        },
        activity_exp: finite_nonneg(activity_exp, "activity_exp", DEFAULT_HYBRID.activity_exp),
        knn_weight: kw,
        volume: match volume {
            None => DEFAULT_HYBRID.volume,
            Some(v) if v == 0.0 || v == 1.0 || v == 2.0 => v as f32,
            Some(v) => AudienceError::invalid("volume must be 0, 1 or 2")
                .detail(format!("The value given was {}.", sql_float(v)))
                .hint("0 scales scores by observed activity, 1 by the activity the ALS model predicts, 2 by the item-kNN volume.")
                .raise(),
        },
        days_exp: finite_nonneg(days_exp, "days_exp", DEFAULT_HYBRID.days_exp),
        tenure_exp: finite_nonneg(tenure_exp, "tenure_exp", DEFAULT_HYBRID.tenure_exp),
        own: parse_own(own, own_half_life_days),
    };
    BuildParams {
        als,
        knn,
        hybrid,
        cross_sell: hybrid,
        by_property: Vec::new(),
        auto_tune: true,
        als_explicit: false,
        knobs_explicit: false,
        guard: false,
    }
}

/// The parameters of a catalog with nothing remembered.
pub fn build_params_default() -> BuildParams {
    build_params(
        None, None, None, None, None, None, None, None, None, None, None, None, None,
    )
}

/// The own-engagement measure from its name and half-life in days (NULL = the default).
pub fn parse_own(own: Option<&str>, half_life_days: Option<f64>) -> Own {
    if let Some(h) = half_life_days {
        if h.is_nan() || h <= 0.0 {
            AudienceError::invalid("own_half_life must be positive")
                .detail(format!("The value given was {} days.", sql_float(h)))
                .hint("Pass an interval such as '30 days', or NULL for no decay.")
                .raise();
        }
    }
    let Some(name) = own else {
        if half_life_days.is_some() {
            AudienceError::invalid("own_half_life needs own => 'days' or own => 'weight'").raise();
        }
        return DEFAULT_HYBRID.own;
    };
    match Own::from_name(name, half_life_days.map(|h| h as f32)) {
        Some(o @ (Own::Affinity | Own::Recent)) if half_life_days.is_some() => {
            AudienceError::invalid(format!("own => '{}' takes no half-life", o.name()))
                .hint("Only own => 'days' and own => 'weight' decay with own_half_life.")
                .raise()
        }
        Some(o) => o,
        None => AudienceError::invalid(format!(
            "unknown own-engagement measure \"{}\"",
            crate::error::shown(name)
        ))
        .hint("Use one of 'affinity', 'weight', 'days', 'recent'.")
        .raise(),
    }
}

/// Hybrid knobs from a JSON object such as `{"prior": 2, "activity_exp": 1, ...}` (as stored by
/// `audience.tune`); missing or invalid entries keep `base`'s values.
pub fn knobs_from_json(v: Option<&serde_json::Value>, base: HybridParams) -> HybridParams {
    let Some(v) = v else { return base };
    let num = |k: &str| {
        v.get(k).and_then(|x| match x {
            serde_json::Value::String(s) if s == "Infinity" => Some(f32::INFINITY),
            x => x.as_f64().map(|f| f as f32),
        })
    };
    let ok = |x: f32| x >= 0.0 && !x.is_nan();
    let own = v
        .get("own")
        .and_then(|o| o.as_str())
        .and_then(|o| Own::from_name(o, num("own_half_life_days")))
        .unwrap_or(base.own);
    HybridParams {
        own,
        prior: num("prior").filter(|&x| ok(x)).unwrap_or(base.prior),
        activity_exp: num("activity_exp")
            .filter(|&x| ok(x) && x.is_finite())
            .unwrap_or(base.activity_exp),
        knn_weight: num("knn_weight")
            .filter(|&x| (0.0..=1.0).contains(&x))
            .unwrap_or(base.knn_weight),
        volume: num("volume")
            .filter(|&x| x == 0.0 || x == 1.0 || x == 2.0)
            .unwrap_or(base.volume),
        days_exp: num("days_exp")
            .filter(|&x| ok(x) && x.is_finite())
            .unwrap_or(base.days_exp),
        tenure_exp: num("tenure_exp")
            .filter(|&x| ok(x) && x.is_finite())
            .unwrap_or(base.tenure_exp),
    }
}

pub fn knobs_json(p: &HybridParams) -> serde_json::Value {
    serde_json::json!({
        "prior": json_f32(p.prior), "activity_exp": p.activity_exp, "knn_weight": p.knn_weight, "volume": p.volume,
        "days_exp": p.days_exp, "tenure_exp": p.tenure_exp, "own": p.own.name(),
        "own_half_life_days": json_f32(p.own.half_life()),
    })
}

/// Per-property knobs as `{"<property>": {"params": {...}, "cross_sell": {...}}}`.
pub fn property_knobs_json(k: &[PropertyKnobs]) -> serde_json::Value {
    serde_json::Value::Object(
        k.iter()
            .map(|k| {
                (k.property.clone(), serde_json::json!({"params": knobs_json(&k.params), "cross_sell": knobs_json(&k.cross_params)}))
            })
            .collect(),
    )
}

/// Inverse of [`property_knobs_json`] (entries that do not parse are skipped).
pub fn property_knobs_from_json(
    v: Option<&serde_json::Value>,
    base: HybridParams,
) -> Vec<PropertyKnobs> {
    let Some(serde_json::Value::Object(m)) = v else {
        return Vec::new();
    };
    let mut out: Vec<PropertyKnobs> = m
        .iter()
        .map(|(prop, k)| {
            let params = knobs_from_json(k.get("params"), base);
            let cross_params = knobs_from_json(k.get("cross_sell"), params);
            PropertyKnobs {
                property: prop.clone(),
                params,
                cross_params,
            }
        })
        .collect();
    out.sort_by(|a, b| a.property.cmp(&b.property));
    out
}

/// A float for JSON, with +infinity as the string "Infinity" (JSON has no infinity).
pub fn json_f32(x: f32) -> serde_json::Value {
    if x == f32::INFINITY {
        serde_json::Value::String("Infinity".into())
    } else {
        serde_json::json!(x)
    }
}

pub fn params_json(p: &BuildParams) -> serde_json::Value {
    serde_json::json!({
        "als": p.als.as_ref().map(|a| serde_json::json!({
            "factors": a.factors, "iterations": a.iterations, "regularization": a.regularization,
            "alpha": a.alpha, "cg_steps": a.cg_steps, "seed": a.seed })),
        "knn": p.knn.as_ref().map(|k| serde_json::json!({ "neighbours": k.neighbours, "k1": k.k1, "b": k.b })),
        "hybrid": knobs_json(&p.hybrid),
        "cross_sell": knobs_json(&p.cross_sell),
        "properties": property_knobs_json(&p.by_property),
    })
}

/// The ALS settings a model was trained with, from its `params` (see [`params_json`]), with this
/// session's threads; None without ALS.
pub fn als_params_from_json(params: &serde_json::Value) -> Option<AlsParams> {
    let a = params.get("als")?;
    let d = AlsParams::default();
    Some(AlsParams {
        factors: a.get("factors")?.as_u64()? as usize,
        iterations: a
            .get("iterations")
            .and_then(|v| v.as_u64())
            .map_or(d.iterations, |v| v as usize),
        regularization: a.get("regularization")?.as_f64()? as f32,
        alpha: a.get("alpha")?.as_f64()? as f32,
        cg_steps: a
            .get("cg_steps")
            .and_then(|v| v.as_u64())
            .map_or(d.cg_steps, |v| v as usize),
        threads: crate::guc::threads(),
        ..d
    })
}

/// Merges explicit (non-null) build arguments into the catalog's remembered settings and returns
/// the parameters to use: an argument given once applies to later builds (pg_cron, forget_user)
/// until given again.
pub fn remembered_params(cid: i32, explicit: serde_json::Value) -> BuildParams {
    let explicit: serde_json::Map<String, serde_json::Value> = match explicit {
        serde_json::Value::Object(m) => m.into_iter().filter(|(_, v)| !v.is_null()).collect(),
        _ => serde_json::Map::new(),
    };
    let merged = Spi::get_one_with_args::<pgrx::JsonB>(
        "UPDATE audience.catalogs SET build_settings = build_settings OPERATOR(pg_catalog.||) $2 WHERE catalog_id OPERATOR(pg_catalog.=) $1 RETURNING build_settings",
        &args![cid, pgrx::JsonB(serde_json::Value::Object(explicit))],
    )
    .or_raise("reading build settings")
    .map(|j| j.0)
    .unwrap_or_default();
    let int = |k: &str| {
        merged
            .get(k)
            .and_then(|v| v.as_i64())
            .map(|v| v.clamp(i32::MIN as i64, i32::MAX as i64) as i32)
    };
    let num = |k: &str| {
        merged.get(k).and_then(|v| match v {
            serde_json::Value::String(s) if s == "Infinity" => Some(f64::INFINITY),
            v => v.as_f64(),
        })
    };
    let mut p = build_params(
        int("factors"),
        int("iterations"),
        num("regularization"),
        num("alpha"),
        int("neighbours"),
        num("prior"),
        num("activity_exp"),
        num("knn_weight"),
        num("volume"),
        num("days_exp"),
        num("tenure_exp"),
        merged.get("own").and_then(|v| v.as_str()),
        num("own_half_life_days").filter(|h| h.is_finite()),
    );
    p.cross_sell = knobs_from_json(merged.get("cross_sell"), p.hybrid);
    p.by_property = property_knobs_from_json(merged.get("tuned"), p.hybrid);
    p.auto_tune = merged.get("tune").and_then(|v| v.as_bool()).unwrap_or(true);
    p.guard = merged
        .get("guard")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    p.als_explicit = ["factors", "iterations", "regularization", "alpha"]
        .iter()
        .any(|k| merged.get(*k).is_some());
    p.knobs_explicit = [
        "prior",
        "activity_exp",
        "knn_weight",
        "volume",
        "days_exp",
        "tenure_exp",
        "own",
        "cross_sell",
    ]
    .iter()
    .any(|k| merged.get(*k).is_some());
    p
}

/// Locks the catalog for a build (fails fast when another build holds it) and returns its id.
pub fn lock_catalog(catalog: Option<&str>) -> i32 {
    Spi::get_one_with_args::<i32>("SELECT audience._lock_for_build($1)", &args![catalog])
        .or_raise("locking the catalog")
        .unwrap_or_else(|| AudienceError::internal("no catalog id").raise())
}

/// Builds (or rebuilds) the catalog's model from its registered events and makes it active.
#[pg_extern(volatile)]
#[search_path(pg_catalog, @extschema@, pg_temp)]
#[allow(clippy::too_many_arguments, clippy::type_complexity)] // the named output columns of the SQL function
fn build(
    catalog: default!(Option<&str>, "NULL"),
    factors: default!(Option<i32>, "NULL"),
    iterations: default!(Option<i32>, "NULL"),
    regularization: default!(Option<f64>, "NULL"),
    alpha: default!(Option<f64>, "NULL"),
    neighbours: default!(Option<i32>, "NULL"),
    prior: default!(Option<f64>, "NULL"),
    activity_exp: default!(Option<f64>, "NULL"),
    knn_weight: default!(Option<f64>, "NULL"),
    volume: default!(Option<f64>, "NULL"),
    days_exp: default!(Option<f64>, "NULL"),
    tenure_exp: default!(Option<f64>, "NULL"),
    until: default!(Option<TimestampWithTimeZone>, "NULL"),
    own: default!(Option<&str>, "NULL"),
    own_half_life: default!(Option<Interval>, "NULL"),
    tune: default!(Option<bool>, "NULL"),
    guard: default!(Option<bool>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(model_id, i64),
        name!(rows_read, i64),
        name!(users, i64),
        name!(items, i64),
        name!(pairs, i64),
        name!(seconds, f64),
        name!(tuning, Option<pgrx::JsonB>),
        name!(guard, Option<pgrx::JsonB>),
    ),
> {
    let t0 = Instant::now();
    // Validate the explicit arguments before anything is stored.
    let own_hl_days = own_half_life
        .as_ref()
        .map(crate::api::tuning::interval_days);
    build_params(
        factors,
        iterations,
        regularization,
        alpha,
        neighbours,
        prior,
        activity_exp,
        knn_weight,
        volume,
        days_exp,
        tenure_exp,
        own,
        own_hl_days,
    );
    let cid = lock_catalog(catalog);
    if own.is_some() && own_half_life.is_none() {
        // A measure given without a half-life has none: forget the one remembered for the last.
        Spi::run_with_args(
            "UPDATE audience.catalogs SET build_settings = build_settings OPERATOR(pg_catalog.-) 'own_half_life_days'::pg_catalog.text WHERE catalog_id OPERATOR(pg_catalog.=) $1",
            &args![cid],
        )
        .or_raise("updating build settings");
    }
    let params = remembered_params(
        cid,
        serde_json::json!({
            "factors": factors, "iterations": iterations, "regularization": regularization, "alpha": alpha,
            "neighbours": neighbours, "prior": prior.map(|p| json_f32(p as f32)), "activity_exp": activity_exp, "knn_weight": knn_weight,
            "volume": volume, "days_exp": days_exp, "tenure_exp": tenure_exp, "own": own,
            "own_half_life_days": own_hl_days, "tune": tune, "guard": guard,
        }),
    );
    let catalog_name: String = Spi::get_one_with_args(
        "SELECT c.name FROM audience.catalogs c WHERE c.catalog_id OPERATOR(pg_catalog.=) $1",
        &args![cid],
    )
    .or_raise("reading the catalog")
    .unwrap_or_default();
    let _progress = crate::api::progress::begin(&catalog_name);
    let mut guard_report: Option<serde_json::Value> = None;
    let collected = collect(cid, None, until);
    let rows_read = collected.aff.rows as i64;
    if collected.aff.users.is_empty() {
        AudienceError::not_ready("the catalog's event sources hold no usable events")
            .detail(format!("{rows_read} rows were read; rows without a user id, a product id or a finite time are skipped."))
            .hint("Check the registered sources with SELECT * FROM audience.catalog_events.")
            .raise();
    }
    let (scan_s, products_s, state_bytes, scan_state) = (
        collected.scan_seconds,
        collected.products_seconds,
        collected.state_bytes,
        collected.scan_state,
    );
    let (min_t, max_t, ref_t) = (
        collected.aff.min_time_us,
        collected.aff.max_time_us,
        collected.aff.reference_us,
    );
    crate::api::progress::finished(
        format!(
            "scanned {rows_read} event rows ({} users, {} items, {} pairs; {} MB of state)",
            collected.aff.users.len(),
            collected.aff.items.len(),
            collected.aff.matrix.nnz(),
            state_bytes >> 20
        ),
        scan_s + products_s,
    );
    let prepared = if params.guard {
        match crate::api::guard::prepare(cid, &collected) {
            Ok(p) => Some(p),
            Err(v) => {
                pgrx::notice!(
                    "deploy guard: {}; the new model is activated",
                    v.report["reason"].as_str().unwrap_or("")
                );
                guard_report = Some(v.report);
                None
            }
        }
    } else {
        None
    };
    crate::api::progress::phase("tune", "");
    let t_tune = Instant::now();
    let (params, tuning) = crate::api::tuning::auto_tune(&collected, params);
    let tune_s = t_tune.elapsed().as_secs_f64();
    crate::api::progress::phase("training", "");
    if tuning.is_some() {
        crate::api::progress::finished("automatic tuning", tune_s);
    }
    let trained = train(collected, &params);
    // Measured with the affinity matrix and the trained models in memory, the build's high point.
    let private_bytes = private_rss_bytes();
    let t_guard = Instant::now();
    let mut activate = true;
    if let Some(p) = prepared {
        let v = crate::api::guard::judge(p, &trained.model, &params);
        activate = v.activate;
        if activate {
            pgrx::notice!(
                "deploy guard: {}; the new model is activated",
                v.report["reason"].as_str().unwrap_or("")
            );
        } else {
            crate::error::AudienceError::new(
                pgrx::PgSqlErrorCode::ERRCODE_WARNING,
                format!("deploy guard: {}; the new model is stored but not activated", v.report["reason"].as_str().unwrap_or("")),
            )
            .hint("Inspect it (audience.models.guard), then SELECT audience.activate(model_id) to serve it anyway.")
            .warn();
        }
        guard_report = Some(v.report);
    }
    let guard_s = t_guard.elapsed().as_secs_f64();
    crate::api::progress::phase("store", "");
    let t_store = Instant::now();
    let m = &trained.model;
    let (users, items, pairs) = (
        m.users.len() as i64,
        m.items.len() as i64,
        m.ui.nnz() as i64,
    );
    let stats = serde_json::json!({
        "seconds": { "scan": scan_s, "products": products_s, "tune": tune_s, "als": trained.als_seconds, "knn": trained.knn_seconds, "guard": guard_s },
        "tuning": tuning.clone(),
        "affinity_state_bytes": state_bytes,
        "scan_state": scan_state,
        "peak_rss_bytes": peak_rss_bytes(),
        "private_rss_after_training_bytes": private_bytes,
        "first_event_us": min_t, "last_event_us": max_t, "reference_us": ref_t,
    });
    let model_id = store(
        cid,
        m,
        rows_read,
        until,
        ref_t,
        &params_json(&params),
        &stats,
        activate,
        guard_report.as_ref(),
    );
    let store_s = t_store.elapsed().as_secs_f64();
    crate::api::progress::finished(
        format!("stored model {model_id} and its serving image"),
        store_s,
    );
    let total = t0.elapsed().as_secs_f64();
    Spi::run_with_args(
        "UPDATE audience.models SET stats = stats OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('seconds', (stats OPERATOR(pg_catalog.->) 'seconds') OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('store', $2::pg_catalog.float8, 'total', $3::pg_catalog.float8), 'peak_rss_bytes', $4::pg_catalog.int8) WHERE model_id OPERATOR(pg_catalog.=) $1",
        &args![model_id, store_s, total, peak_rss_bytes().map(|b| b as i64)],
    )
    .or_raise("recording build statistics");
    TableIterator::once((
        model_id,
        rows_read,
        users,
        items,
        pairs,
        total,
        tuning.map(pgrx::JsonB),
        guard_report.map(pgrx::JsonB),
    ))
}
