//! The scan of a build: every registered source through the affinity aggregate (one query, or
//! one per source on Citus), the state handed over in this backend or as bytes, and the item
//! properties resolved from the events and the products tables.
use crate::affinity::accumulator::Affinity;
use crate::affinity::aggregate::take_stashed;
use crate::api::spi_util::{args, query_rows};
use crate::error::{AudienceError, OrRaise};
use crate::store::stored::split_values;
use pgrx::prelude::*;
use std::time::Instant;

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
        self.until_every(cut_day, 1)
    }

    /// [`Collected::until`] for every `step`-th user only ([`Affinity::until_every`]).
    pub fn until_every(&self, cut_day: i32, step: usize) -> Collected {
        let aff = self.aff.until_every(cut_day, step);
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

/// The affinity of the catalog's events in [since, until), the names of the properties the
/// events map (in the order of `Affinity::item_props`), how the state came and its size.
pub struct Scanned {
    pub aff: Affinity,
    pub prop_names: Vec<String>,
    pub scan_state: &'static str,
    pub state_bytes: usize,
}

/// Runs the catalog's scan (optionally restricted to [since, until)).
pub fn scan_affinity(
    cid: i32,
    since: Option<TimestampWithTimeZone>,
    until: Option<TimestampWithTimeZone>,
) -> Scanned {
    let t_query = Instant::now();
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
    let t_finish = Instant::now();
    acc.set_threads(crate::guc::threads());
    acc.canonicalize();
    let t_canon = t_finish.elapsed().as_secs_f64();
    let aff = acc
        .finish_with_threads(crate::guc::threads())
        .without_empty();
    pgrx::debug1!(
        "audience: scan query and combine in {:.2} s, state sorted in {t_canon:.2} s and made the matrix in {:.2} s",
        (t_finish - t_query).as_secs_f64(),
        t_finish.elapsed().as_secs_f64() - t_canon
    );
    Scanned {
        aff,
        prop_names,
        scan_state,
        state_bytes,
    }
}

/// Runs the catalog's scan (optionally restricted to [since, until)) and resolves item properties.
pub fn collect(
    cid: i32,
    since: Option<TimestampWithTimeZone>,
    until: Option<TimestampWithTimeZone>,
) -> Collected {
    let t0 = Instant::now();
    let Scanned {
        aff,
        prop_names,
        scan_state,
        state_bytes,
    } = scan_affinity(cid, since, until);
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
    apply_products(cid, &aff.items, &mut item_values);
    Collected {
        aff,
        item_values,
        scan_seconds,
        products_seconds: t1.elapsed().as_secs_f64(),
        state_bytes,
        scan_state,
    }
}

/// Overrides `item_values` (per property: name and, per item of `items`, its values) with the
/// catalog's products tables, which are authoritative for the properties they map; a property
/// only products tables map is added. Sorted by property name afterwards.
pub fn apply_products(
    cid: i32,
    items: &[String],
    item_values: &mut Vec<(String, Vec<Vec<String>>)>,
) {
    let n_items = items.len();
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
                if let Ok(i) = items.binary_search(&id) {
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
}
