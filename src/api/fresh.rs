//! Events since the build, at query time: `recommend_audience` and everything built on it
//! (`audience_size`, `save_audience`, `refresh_audience`) also read the registered sources' rows
//! newer than the model's latest event, fold them into those users' rows (core:
//! [`crate::model::fresh`]), give them ALS factors by fold-in against the model's item factors
//! ([`crate::model::als::fold_in`]) and rank them with everyone else.
//!
//! Per catalog (`audience.set_fresh_events`): `auto` (the default) reads new rows when the plan
//! of that read scans no large table from end to end (an index on the event time column makes it
//! a range scan); `on` reads them regardless and warns about a large scan; `off` serves the
//! snapshot. Past `max_rows` new rows it serves the snapshot with a NOTICE that a build is due.
//!
//! Work per call is bounded: this backend keeps what it read (the aggregate's state, the merged
//! rows and their factors) per model, and the next call reads only rows newer than the latest it
//! has seen. Rows stamped earlier than that but committed later are left to the next build.
use crate::affinity::accumulator::StateView;
use crate::api::cache::Loaded;
use crate::api::spi_util::{args, query_rows};
use crate::error::{shown, AudienceError, OrRaise};
use crate::model::als::{fold_in, AlsModel, AlsParams};
use crate::model::fresh::{merge, top_user, Base, FreshRows};
use crate::score::hybrid::{Own, Scorer, ScorerParts};
use pgrx::prelude::*;
use std::cell::RefCell;
use std::rc::Rc;

/// New rows a call folds in by default before it serves the snapshot instead.
pub const DEFAULT_MAX_ROWS: i64 = 1_000_000;

/// In `auto` mode, a plan that reads a source of more rows than this from end to end is too
/// costly to run on every audience call.
const SEQ_SCAN_ROWS: i64 = 100_000;

/// What this backend read since a model's build.
pub struct Fresh {
    pub model_id: i64,
    /// Rows with an event time after this (microseconds since 2000-01-01) are not read yet.
    high_water_us: i64,
    /// The aggregate's state over every row read so far (serialized), to merge later reads into.
    state: Option<Vec<u8>>,
    pub rows: FreshRows,
    /// The model's item factors and the fresh users' folded-in factors.
    pub als: Option<AlsModel>,
    /// What the scorer of these rows precomputes (activity, CF denominators, active days, the
    /// totals of the model's own measures), computed once per read.
    pub parts: ScorerParts,
}

impl Fresh {
    /// The scorer of the fresh rows, beside the model's.
    pub fn scorer<'b>(&'b self, l: &'b Loaded) -> Scorer<'b> {
        l.scorer.rows_from_parts(
            &self.rows.ui,
            self.als.as_ref(),
            Some(&self.rows.days),
            self.parts.clone(),
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Auto,
    On,
    Off,
}

thread_local! {
    static FRESH: RefCell<Option<Rc<Fresh>>> = const { RefCell::new(None) };
    /// Models whose new-row read needs a large scan, skipped in `auto` mode (told once).
    static SKIP: RefCell<Vec<i64>> = const { RefCell::new(Vec::new()) };
    /// Models whose unreadable sources this backend reported already.
    static TOLD: RefCell<Vec<i64>> = const { RefCell::new(Vec::new()) };
    /// Models whose left-out user (a bot) this backend reported already.
    static TOLD_BOT: RefCell<Vec<i64>> = const { RefCell::new(Vec::new()) };
    /// Models (`audience.models`' oid, id) whose read of new rows EXPLAIN found to need no large
    /// scan in this backend: not planned twice.
    static EXPLAINED: RefCell<Vec<(u32, i64)>> = const { RefCell::new(Vec::new()) };
}

/// The catalog's settings and the model's times, in one query.
struct Settings {
    mode: Mode,
    max_rows: i64,
    catalog_id: i32,
    last_event_us: i64,
    reference_us: i64,
    als: Option<AlsParams>,
    /// What the build's check found (see [`build_check`]).
    built: Option<BuiltCheck>,
}

/// The build's check before reading new events, as stored in the model's `stats`: a read would
/// scan this relation from end to end, or (`None`) would not. Only a relation's name is kept
/// there, never a query: a role that may update `audience.models` must not choose SQL that
/// other roles' calls run.
struct BuiltCheck {
    /// The sources' indexes and the row budget then (see [`fingerprint`]).
    fingerprint: String,
    scan: Option<String>,
}

fn settings(model_id: i64) -> Option<Settings> {
    let rows = query_rows(
        "SELECT c.catalog_id, c.build_settings OPERATOR(pg_catalog.->>) 'fresh_events', (c.build_settings OPERATOR(pg_catalog.->>) 'fresh_max_rows')::pg_catalog.int8,
                (m.stats OPERATOR(pg_catalog.->>) 'last_event_us')::pg_catalog.int8, (m.stats OPERATOR(pg_catalog.->>) 'reference_us')::pg_catalog.int8,
                m.params OPERATOR(pg_catalog.->) 'als',
                m.stats OPERATOR(pg_catalog.->) 'fresh_check' OPERATOR(pg_catalog.->>) 'scan',
                m.stats OPERATOR(pg_catalog.->) 'fresh_check' OPERATOR(pg_catalog.->>) 'fingerprint'
           FROM audience.models m JOIN audience.catalogs c ON c.catalog_id OPERATOR(pg_catalog.=) m.catalog_id
          WHERE m.model_id OPERATOR(pg_catalog.=) $1",
        &args![model_id],
        |r| {
            (
                r.get::<i32>(1).ok().flatten(),
                r.get::<String>(2).ok().flatten(),
                r.get::<i64>(3).ok().flatten(),
                r.get::<i64>(4).ok().flatten(),
                r.get::<i64>(5).ok().flatten(),
                r.get::<pgrx::JsonB>(6).ok().flatten(),
                r.get::<String>(7).ok().flatten(),
                r.get::<String>(8).ok().flatten(),
            )
        },
    );
    let (cid, mode, max_rows, last, reference, als, scan, fingerprint) = rows.into_iter().next()?;
    let mode = match mode.as_deref() {
        Some("on") => Mode::On,
        Some("off") => Mode::Off,
        _ => Mode::Auto,
    };
    let als = als
        .and_then(|j| crate::api::build::als_params_from_json(&serde_json::json!({ "als": j.0 })));
    Some(Settings {
        mode,
        max_rows: max_rows.unwrap_or(DEFAULT_MAX_ROWS),
        catalog_id: cid?,
        last_event_us: last?,
        reference_us: reference?,
        als,
        built: fingerprint.map(|fingerprint| BuiltCheck { fingerprint, scan }),
    })
}

/// A read of the rows after `since_us`: its query, the query counting up to `budget + 1` of
/// them, and (when `explain`) the relation it would scan from end to end (past `SEQ_SCAN_ROWS`
/// rows, by EXPLAIN). `Err` says why no read can be made; `Ok(None)`: a malformed answer.
struct PlannedRead {
    query: String,
    count_q: String,
    scan: Option<String>,
}

fn plan_read(
    cid: i32,
    since_us: i64,
    budget: i64,
    explain: bool,
) -> Result<Option<PlannedRead>, String> {
    let (query, time_query, error): (Option<String>, Option<String>, Option<String>) =
        Spi::get_three_with_args(
            "SELECT query, time_query, error FROM audience._fresh_query($1, $2)",
            &args![cid, ts(since_us)],
        )
        .or_raise("planning the read of new events");
    if let Some(e) = error {
        return Err(e);
    }
    let (Some(query), Some(time_query)) = (query, time_query) else {
        return Ok(None);
    };
    let Some(from) =
        time_query.strip_prefix("SELECT pg_catalog.min(ev.t), pg_catalog.max(ev.t) FROM ")
    else {
        return Ok(None);
    };
    let count_q = format!(
        "SELECT pg_catalog.count(*)::pg_catalog.int8 FROM (SELECT 1 FROM {from} LIMIT {}) x",
        budget.max(0) + 1
    );
    let scan = if explain {
        let plan: Option<pgrx::Json> =
            Spi::get_one(&format!("EXPLAIN (FORMAT JSON, VERBOSE) {count_q}"))
                .or_raise("planning the read of new events");
        plan.and_then(|p| large_seq_scan(&p.0, SEQ_SCAN_ROWS))
    } else {
        None
    };
    Ok(Some(PlannedRead {
        query,
        count_q,
        scan,
    }))
}

/// Whether any source of the catalog holds a row stamped at or after `since_us`, whatever its
/// event type, user or product: `Some(false)` lets a call skip generating the read of new events
/// (`audience._fresh_query`, ~5 ms of a session's first call) and counting them. `None` when it
/// cannot tell from the catalogs alone (a source or its time column gone, a time column that is
/// not a `timestamptz`, `timestamp` or `date`): then the read decides, and reports what is wrong.
/// Its queries read the time column as the read does (`audience._time_expr`), so they use the
/// same index: call it only when the read is known to need no large scan.
pub(crate) fn any_row_since(cid: i32, since_us: i64) -> Option<bool> {
    let sources = query_rows(
        "SELECT DISTINCT pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(c.relname),
                pg_catalog.quote_ident(a.attname::pg_catalog.text), a.atttypid::pg_catalog.regtype::pg_catalog.text
           FROM audience.events e
           LEFT JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(pg_catalog.format('%I.%I', e.source_schema, e.source_table))::pg_catalog.oid
           LEFT JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
           LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid OPERATOR(pg_catalog.=) c.oid AND a.attname OPERATOR(pg_catalog.=) e.time_column
                AND a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped
          WHERE e.catalog_id OPERATOR(pg_catalog.=) $1",
        &args![cid],
        |r| {
            (
                r.get::<String>(1).ok().flatten(),
                r.get::<String>(2).ok().flatten(),
                r.get::<String>(3).ok().flatten(),
            )
        },
    );
    let since = ts(since_us)?;
    if sources.is_empty() {
        return None;
    }
    let mut probes = Vec::with_capacity(sources.len());
    for (rel, col, ty) in sources {
        let (rel, col, ty) = (rel?, col?, ty?);
        // As audience._time_expr reads these types (epoch-second numbers: left to the read).
        let t = match ty.as_str() {
            "timestamp with time zone" => format!("s.{col}"),
            "timestamp without time zone" | "date" => format!("s.{col}::pg_catalog.timestamptz"),
            _ => return None,
        };
        probes.push(format!(
            "SELECT EXISTS (SELECT 1 FROM {rel} s WHERE {t} OPERATOR(pg_catalog.>=) $1)"
        ));
    }
    for q in probes {
        let found: Option<bool> =
            Spi::get_one_with_args(&q, &args![since]).or_raise("looking for new events");
        if found != Some(false) {
            return Some(true);
        }
    }
    Some(false)
}

/// What the check before a read depends on besides the data: each source table's oid and its
/// valid indexes, and the row budget. None when a source is not an ordinary table (a view's or a
/// partitioned table's plan depends on other relations' indexes): then every session checks.
fn fingerprint(cid: i32, max_rows: i64) -> Option<String> {
    query_rows(
        "SELECT pg_catalog.bool_and(c.relkind OPERATOR(pg_catalog.=) 'r'),
                pg_catalog.string_agg(c.oid::pg_catalog.text OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) coalesce(
                    (SELECT pg_catalog.string_agg(i.indexrelid::pg_catalog.text, '+' ORDER BY i.indexrelid)
                       FROM pg_catalog.pg_index i
                      WHERE i.indrelid OPERATOR(pg_catalog.=) c.oid AND i.indisvalid), ''), ',' ORDER BY c.oid)
           FROM audience.events e
           LEFT JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) pg_catalog.to_regclass(pg_catalog.format('%I.%I', e.source_schema, e.source_table))::pg_catalog.oid
          WHERE e.catalog_id OPERATOR(pg_catalog.=) $1",
        &args![cid],
        |r| {
            (
                r.get::<bool>(1).ok().flatten(),
                r.get::<String>(2).ok().flatten(),
            )
        },
    )
    .into_iter()
    .next()
    .and_then(|(tables, fp)| (tables == Some(true)).then(|| fp.map(|f| format!("{f}/{max_rows}")))?)
}

/// The build's check before reading new events (stored in the model's `stats` as
/// `fresh_check`: the relation a read would scan from end to end, or null, and [`fingerprint`]):
/// sessions of the model whose sources' indexes are unchanged take its answer instead of
/// planning the read again (the first call of each session saves an EXPLAIN, ~4 ms on the
/// 20M-event shop), and skip a read that would scan a large source.
pub fn build_check(cid: i32, last_event_us: i64) -> serde_json::Value {
    let max_rows = query_rows(
        "SELECT (c.build_settings OPERATOR(pg_catalog.->>) 'fresh_max_rows')::pg_catalog.int8 FROM audience.catalogs c WHERE c.catalog_id OPERATOR(pg_catalog.=) $1",
        &args![cid],
        |r| r.get::<i64>(1).ok().flatten(),
    )
    .into_iter()
    .next()
    .flatten()
    .unwrap_or(DEFAULT_MAX_ROWS);
    let scan = match plan_read(cid, last_event_us.saturating_add(1), max_rows, true) {
        Ok(Some(PlannedRead { scan, .. })) => scan,
        _ => return serde_json::Value::Null,
    };
    match fingerprint(cid, max_rows) {
        Some(fp) => serde_json::json!({ "scan": scan, "fingerprint": fp }),
        None => serde_json::Value::Null,
    }
}

/// Tells, once per model and session, that the snapshot is served because a read would scan `rel`.
fn tell_skipped(l: &Loaded, rel: &str) {
    SKIP.with(|x| x.borrow_mut().push(l.model_id));
    pgrx::notice!(
        "audiences of catalog \"{}\" do not include events since the build: reading them would scan all of {rel}",
        shown(&l.catalog)
    );
    pgrx::notice!("{SCAN_HINT}");
}

const SCAN_HINT: &str = "Create an index on the event time column of each source (CREATE INDEX ON <source> (<time column>)), or turn the read off with audience.set_fresh_events(catalog, 'off').";

fn ts(us: i64) -> Option<TimestampWithTimeZone> {
    TimestampWithTimeZone::try_from(us).ok()
}

/// Whether `plan` (EXPLAIN's JSON, VERBOSE: only then do scans name their schema) reads, from end
/// to end, a relation with more than `limit` rows (its name is returned).
fn large_seq_scan(plan: &serde_json::Value, limit: i64) -> Option<String> {
    fn walk(node: &serde_json::Value, out: &mut Vec<(String, String)>) {
        if let Some(t) = node.get("Node Type").and_then(|v| v.as_str()) {
            if t == "Seq Scan" {
                if let (Some(s), Some(r)) = (
                    node.get("Schema").and_then(|v| v.as_str()),
                    node.get("Relation Name").and_then(|v| v.as_str()),
                ) {
                    out.push((s.to_string(), r.to_string()));
                }
            }
        }
        if let Some(children) = node.get("Plans").and_then(|v| v.as_array()) {
            for c in children {
                walk(c, out);
            }
        }
    }
    let mut scans = Vec::new();
    for p in plan.as_array().into_iter().flatten() {
        if let Some(root) = p.get("Plan") {
            walk(root, &mut scans);
        }
    }
    scans.into_iter().find_map(|(s, r)| {
        let n = query_rows(
            // Never analyzed or vacuumed (reltuples -1): estimated from its size, 100 bytes a row.
            "SELECT CASE WHEN c.reltuples OPERATOR(pg_catalog.>=) 0 THEN c.reltuples::pg_catalog.int8
                         ELSE pg_catalog.pg_relation_size(c.oid) OPERATOR(pg_catalog./) 100 END
               FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) c.relnamespace
              WHERE n.nspname OPERATOR(pg_catalog.=) $1 AND c.relname OPERATOR(pg_catalog.=) $2",
            &args![s.as_str(), r.as_str()],
            |row| row.get::<i64>(1).ok().flatten(),
        )
        .into_iter()
        .next()
        .flatten()
        .unwrap_or(0);
        (n > limit).then(|| format!("{}.{}", quote_ident(&s), quote_ident(&r)))
    })
}

fn quote_ident(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !s.is_empty()
    {
        s.to_string()
    } else {
        format!("\"{}\"", s.replace('"', "\"\""))
    }
}

/// Whether the current role may read every source of the catalog (else the snapshot is served:
/// an audience never needs more than SELECT on the stored models).
fn sources_readable(cid: i32) -> bool {
    query_rows(
        "SELECT pg_catalog.bool_and(CASE
                    WHEN NOT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace n WHERE n.nspname OPERATOR(pg_catalog.=) e.source_schema) THEN false
                    WHEN NOT pg_catalog.has_schema_privilege(e.source_schema::pg_catalog.text, 'USAGE') THEN false
                    ELSE coalesce(pg_catalog.has_table_privilege(pg_catalog.to_regclass(pg_catalog.format('%I.%I', e.source_schema, e.source_table)), 'SELECT'), false) END)
           FROM audience.events e WHERE e.catalog_id OPERATOR(pg_catalog.=) $1",
        &args![cid],
        |r| r.get::<bool>(1).ok().flatten(),
    )
    .into_iter()
    .next()
    .flatten()
    .unwrap_or(false)
}

/// The rows of the users with events since the build of `l`'s model, or None to serve the
/// snapshot (fresh events off, nothing new, too many new rows, or sources the role cannot read).
pub fn fresh_for(l: &Loaded) -> Option<Rc<Fresh>> {
    crate::api::spi_util::without_jit(|| fresh_read(l))
}

/// [`fresh_for`], its queries run without JIT.
fn fresh_read(l: &Loaded) -> Option<Rc<Fresh>> {
    // A role that may read only the stored models gets the snapshot.
    let may_read = query_rows(
        "SELECT pg_catalog.has_table_privilege('audience.models'::pg_catalog.regclass, 'SELECT')
            AND pg_catalog.has_table_privilege('audience.events'::pg_catalog.regclass, 'SELECT')",
        &[],
        |r| r.get::<bool>(1).ok().flatten(),
    );
    if may_read.into_iter().next().flatten() != Some(true) {
        return None;
    }
    let s = settings(l.model_id)?;
    if s.mode == Mode::Off {
        return None;
    }
    if SKIP.with(|x| x.borrow().contains(&l.model_id)) && s.mode == Mode::Auto {
        return None;
    }
    let cached = FRESH.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|f| f.model_id == l.model_id)
            .cloned()
    });
    let high = cached.as_ref().map_or(s.last_event_us, |f| f.high_water_us);
    let already = cached.as_ref().map_or(0, |f| f.rows.rows as i64);
    if !sources_readable(s.catalog_id) {
        pgrx::debug1!(
            "audience: events since the build not read: the role cannot read every source"
        );
        return None;
    }
    // Rows after the latest one read: `since` is inclusive. Once per model and backend (no
    // earlier read, no earlier EXPLAIN): would reading new rows scan a large table in full?
    let key = (l.models_oid, l.model_id);
    let budget = (s.max_rows - already).max(0);
    let mut explain = cached.is_none() && !EXPLAINED.with(|x| x.borrow().contains(&key));
    // The build planned the same read, and the sources' indexes and the row budget are as they
    // were then: its answer stands. A large scan is skipped (`auto`) without planning the read
    // again; no large scan: the read runs without an EXPLAIN in this session.
    if explain {
        if let Some(b) = &s.built {
            let scan_skipped = b.scan.is_some() && s.mode == Mode::Auto;
            if (b.scan.is_none() || scan_skipped)
                && fingerprint(s.catalog_id, s.max_rows).as_deref() == Some(b.fingerprint.as_str())
            {
                match &b.scan {
                    Some(rel) => {
                        tell_skipped(l, rel);
                        return None;
                    }
                    None => {
                        EXPLAINED.with(|x| x.borrow_mut().push(key));
                        explain = false;
                    }
                }
            }
        }
    }
    // The read is known to need no large scan (this session's EXPLAIN or the build's check):
    // when no source has a row since the last one read, there is nothing to generate or count.
    if !explain && any_row_since(s.catalog_id, high.saturating_add(1)) == Some(false) {
        return cached.filter(|f| f.rows.ui.n_rows > 0);
    }
    let planned = plan_read(s.catalog_id, high.saturating_add(1), budget, explain);
    let planned = match planned {
        Err(e) => {
            if !TOLD.with(|x| x.borrow().contains(&l.model_id)) {
                TOLD.with(|x| x.borrow_mut().push(l.model_id));
                pgrx::notice!(
                    "audiences of catalog \"{}\" do not include events since the build: {}",
                    shown(&l.catalog),
                    e
                );
            }
            return None;
        }
        Ok(p) => p?,
    };
    if explain && planned.scan.is_none() {
        EXPLAINED.with(|x| x.borrow_mut().push(key));
    }
    let PlannedRead {
        query,
        count_q,
        scan,
    } = planned;
    if let Some(rel) = scan {
        if s.mode == Mode::Auto {
            tell_skipped(l, &rel);
            return None;
        }
        AudienceError::new(
            pgrx::PgSqlErrorCode::ERRCODE_WARNING,
            format!("reading the events since the build scans all of {rel}"),
        )
        .hint(SCAN_HINT)
        .warn();
    }
    let new_rows: i64 = Spi::get_one(&count_q)
        .or_raise("counting new events")
        .unwrap_or(0);
    if new_rows > budget {
        pgrx::notice!(
            "more than {} events arrived since the build of catalog \"{}\": the audience ranks the model's snapshot; a build is due",
            s.max_rows,
            shown(&l.catalog)
        );
        pgrx::notice!("Run audience.build() (or raise max_rows with audience.set_fresh_events()).");
        return None;
    }
    if new_rows == 0 {
        return cached.filter(|f| f.rows.ui.n_rows > 0);
    }
    let t0 = std::time::Instant::now();
    let (mut acc, _) = crate::api::build::scan_one(&query, crate::guc::SCAN_STATE.get());
    let t_scan = t0.elapsed().as_secs_f64() * 1000.0;
    if let Some(prev) = cached.as_ref().and_then(|f| f.state.as_ref()) {
        let kept = StateView::parse(prev).unwrap_or_else(|e| {
            AudienceError::internal(format!("the kept state of new events cannot be read: {e}"))
                .raise()
        });
        acc.merge_view(kept);
    }
    // Decayed to the model's reference time, as the model's own rows (the events keep their
    // times: the aggregate's reference argument would move later events to it, merging days).
    acc.set_reference(Some(s.reference_us));
    let state = acc.serialize();
    let delta = acc.finish();
    let high_water_us = delta.max_time_us.max(high);
    let m = &l.model;
    // The deploy guard's rule for builds holds for the new events too: a user holding most of
    // them (a bot, a feed loaded twice) is left out until a build decides.
    let top = top_user(&delta, i32::MIN);
    let skip = top
        .user
        .filter(|_| top.dominates(crate::guc::GUARD_MAX_USER_SHARE.get()));
    if let Some(u) = skip {
        if !TOLD_BOT.with(|x| x.borrow().contains(&l.model_id)) {
            TOLD_BOT.with(|x| x.borrow_mut().push(l.model_id));
            pgrx::notice!(
                "user \"{}\" holds {:.0}% of the engagement occasions since the build of catalog \"{}\" (above audience.guard_max_user_share): left out of audiences until a build",
                shown(&delta.users[u]),
                100.0 * top.share(),
                shown(&l.catalog)
            );
        }
    }
    let rows = merge(
        &Base {
            users: &m.users,
            items: &m.items,
            ui: &m.ui,
            last_seen: m.last_seen.as_slice(),
            days: &m.days,
        },
        &delta,
        skip,
    );
    drop(delta);
    let t_merge = t0.elapsed().as_secs_f64() * 1000.0 - t_scan;
    let als = match (&m.als, &s.als) {
        (Some(model_als), Some(p)) if p.factors == model_als.factors => {
            let conf = crate::model::train::damped(&rows.ui);
            // Known users start from their factors (one sweep, as a training iteration), new
            // users from zero (two).
            let k = model_als.factors;
            let mut init = vec![0f32; rows.users.len() * k];
            for (j, r) in rows.model_row.iter().enumerate() {
                if let Some(u) = r {
                    init[j * k..(j + 1) * k].copy_from_slice(model_als.user(*u as usize));
                }
            }
            let check = &mut crate::api::build::interrupt_check;
            let stop = |_| crate::api::build::raise_interrupted("reading new events");
            let mut user_factors = fold_in(&conf, &model_als.item_factors, p, 1, Some(init), check)
                .unwrap_or_else(stop)
                .into_vec();
            // A second sweep for the new users only.
            let new: Vec<usize> = (0..rows.users.len())
                .filter(|&j| rows.model_row[j].is_none())
                .collect();
            if !new.is_empty() {
                let sub = conf.select_rows(&new);
                let init: Vec<f32> = new
                    .iter()
                    .flat_map(|&j| user_factors[j * k..(j + 1) * k].iter().copied())
                    .collect();
                let x = fold_in(&sub, &model_als.item_factors, p, 1, Some(init), check)
                    .unwrap_or_else(stop);
                for (n, &j) in new.iter().enumerate() {
                    user_factors[j * k..(j + 1) * k].copy_from_slice(&x[n * k..(n + 1) * k]);
                }
            }
            let user_factors = user_factors.into();
            Some(AlsModel {
                factors: model_als.factors,
                user_factors,
                item_factors: model_als.item_factors.clone(),
            })
        }
        _ => None,
    };
    if m.als.is_some() && als.is_none() {
        // Without the model's ALS settings the new rows cannot be scored alike: serve the snapshot.
        return None;
    }
    pgrx::debug1!(
        "audience: {} new event rows ({} in all since the build) for {} users ({} new) folded in {:.1} ms (scan {t_scan:.1}, merge {t_merge:.1}, ALS fold-in {:.1})",
        new_rows,
        rows.rows,
        rows.users.len(),
        rows.new_users(),
        t0.elapsed().as_secs_f64() * 1000.0,
        t0.elapsed().as_secs_f64() * 1000.0 - t_scan - t_merge
    );
    let t1 = std::time::Instant::now();
    let parts = {
        let m = &l.model;
        let mut owns: Vec<Own> = Vec::new();
        let all = [&m.params, &m.cross_params].into_iter().chain(
            m.property_params
                .iter()
                .flat_map(|k| [&k.params, &k.cross_params]),
        );
        for p in all {
            if !owns.contains(&p.own) {
                owns.push(p.own);
            }
        }
        l.scorer
            .for_rows(&rows.ui, als.as_ref(), Some(&rows.days))
            .parts(&owns)
    };
    pgrx::debug1!(
        "audience: scorer parts of the {} users with new events in {:.1} ms",
        rows.users.len(),
        t1.elapsed().as_secs_f64() * 1000.0
    );
    let fresh = Rc::new(Fresh {
        model_id: l.model_id,
        high_water_us,
        state: Some(state),
        rows,
        als,
        parts,
    });
    FRESH.with(|c| *c.borrow_mut() = Some(fresh.clone()));
    Some(fresh)
}

/// `audience.set_fresh_events`: whether audiences of a catalog include the events since its
/// build, and up to how many new rows.
#[pg_extern(volatile)]
#[search_path(pg_catalog, @extschema@, pg_temp)]
fn set_fresh_events(
    catalog: Option<&str>,
    mode: default!(Option<&str>, "'auto'"),
    max_rows: default!(Option<i64>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(catalog, String),
        name!(mode, String),
        name!(max_rows, i64),
    ),
> {
    let mode = match mode {
        Some(m @ ("auto" | "on" | "off")) => m,
        Some(m) => AudienceError::invalid(format!("unknown fresh-events mode \"{}\"", shown(m)))
            .hint("Use 'auto' (read new events when an index makes it cheap), 'on' or 'off'.")
            .raise(),
        None => AudienceError::null("mode").raise(),
    };
    if let Some(n) = max_rows {
        if n < 0 {
            AudienceError::invalid("max_rows cannot be negative")
                .detail(format!("The value given was {n}."))
                .raise();
        }
    }
    let row: (Option<String>, Option<i64>) = Spi::get_two_with_args(
        "UPDATE audience.catalogs c
            SET build_settings = c.build_settings OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object('fresh_events', $2::pg_catalog.text)
                                 OPERATOR(pg_catalog.||) CASE WHEN $3::pg_catalog.int8 IS NULL THEN '{}'::pg_catalog.jsonb
                                     ELSE pg_catalog.jsonb_build_object('fresh_max_rows', $3::pg_catalog.int8) END,
                updated_at = pg_catalog.now()
          WHERE c.catalog_id OPERATOR(pg_catalog.=) audience._catalog_id($1)
          RETURNING c.name, (c.build_settings OPERATOR(pg_catalog.->>) 'fresh_max_rows')::pg_catalog.int8",
        &args![catalog, mode, max_rows],
    )
    .or_raise("changing the catalog's settings");
    let row = (row.0.unwrap_or_default(), row.1);
    TableIterator::once((row.0, mode.to_string(), row.1.unwrap_or(DEFAULT_MAX_ROWS)))
}
