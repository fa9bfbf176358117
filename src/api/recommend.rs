//! `audience.recommend_audience` and `audience.explain`.
//!
//! These set-returning functions do not pin `search_path` with a SET clause: when they returned
//! their rows one call per row, a SET clause saved and restored the setting on every call (20% of
//! a 50,000-user audience's time, measured with perf). `recommend_audience` now returns its rows
//! in materialize mode (one call), `explain` still per row. All SQL they run is schema-qualified,
//! operators included (see cache.rs).
use crate::api::cache::{active, Loaded};
use crate::api::spi_util::{args, query_rows};
use crate::error::{shown, AudienceError};
use crate::score::audience::{cut_size, engaged_since};
use crate::score::topk::top_k_threads;
use crate::store::image::ServedProperty;
use pgrx::prelude::*;

/// The property of the model, or an error that says whether it is unmapped or just unbuilt.
pub fn model_property<'a>(l: &'a Loaded, name: Option<&str>) -> &'a ServedProperty {
    let Some(name) = name else {
        AudienceError::null("property").raise()
    };
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
        AudienceError::undefined(format!(
            "property \"{}\" is not in the model of catalog \"{}\"",
            shown(name),
            shown(&l.catalog)
        ))
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
                AudienceError::new(
                    pgrx::PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
                    "values cannot contain NULL",
                )
                .hint("Leave the NULL out of the array.")
                .raise()
            })
        })
        .collect()
}

/// Arguments of an audience request, validated.
#[derive(Clone)]
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

/// The model's item indexes of the given item ids (unknown ids are counted, not errors; an empty
/// array or a NULL element is).
pub fn items_of(l: &Loaded, ids: Vec<Option<String>>) -> (Vec<u32>, usize) {
    if ids.iter().any(|i| i.is_none()) {
        AudienceError::new(
            pgrx::PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
            "items cannot contain NULL",
        )
        .hint("Leave the NULL out of the array.")
        .raise();
    }
    let ids: Vec<String> = ids.into_iter().flatten().collect();
    if ids.is_empty() {
        AudienceError::invalid("items cannot be empty")
            .hint("Pass at least one product id, e.g. ARRAY['SKU-1'].")
            .raise();
    }
    let mut wanted: Vec<&str> = ids.iter().map(|s| s.as_str()).collect();
    wanted.sort_unstable();
    wanted.dedup();
    let mut found: Vec<u32> = Vec::with_capacity(wanted.len());
    for (i, id) in l.model.items.iter().enumerate() {
        if wanted.binary_search(&id).is_ok() {
            found.push(i as u32);
        }
    }
    (found, wanted.len())
}

/// An audience: (user index, score) in rank order, per returned user whether they engaged with
/// the value before, and the ids of the users the model does not know (events since the build):
/// index `n_model_users + j` is `new_users[j]`.
#[derive(Clone)]
pub struct Ranking {
    pub ranked: Vec<(u32, f32)>,
    pub engaged: Vec<bool>,
    pub new_users: Vec<String>,
    /// Users ranked (the model's and the new ones).
    pub n_users: usize,
}

impl Ranking {
    /// Approximate heap bytes (what the memo of rankings counts).
    fn bytes(&self) -> usize {
        self.ranked.len() * 8
            + self.engaged.len()
            + self.new_users.iter().map(|u| u.len() + 24).sum::<usize>()
    }

    fn empty(n_users: usize) -> Ranking {
        Ranking {
            ranked: Vec::new(),
            engaged: Vec::new(),
            new_users: Vec::new(),
            n_users,
        }
    }

    /// The id of ranked user `u`.
    pub fn user_id<'a>(&'a self, l: &'a Loaded, u: u32) -> &'a str {
        let n = l.model.users.len();
        if (u as usize) < n {
            l.model.users.get(u as usize)
        } else {
            &self.new_users[u as usize - n]
        }
    }
}

/// Ranks users for the request's property values, or for `items` (model item indexes) when given.
pub fn rank_target(req: &Request, l: &Loaded, items: Option<&[u32]>) -> Ranking {
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
            AudienceError::invalid("max_users cannot be negative")
                .detail(format!("The value given was {m}."))
                .raise();
        }
    }
    if let Some(s) = req.min_score {
        if s.is_nan() {
            AudienceError::invalid("min_score cannot be NaN").raise();
        }
    }
    let (items, knob_property): (Vec<u32>, Option<String>) = match items {
        Some(items) => {
            if items.is_empty() {
                pgrx::notice!("none of the items is in the model; the audience is empty");
                return Ranking::empty(l.model.users.len());
            }
            (items.to_vec(), None)
        }
        None => {
            let prop = model_property(l, req.property);
            if req.values.is_empty() {
                AudienceError::invalid("at least one value must be given")
                    .hint("Pass a value such as 'Nike', or an array of values.")
                    .raise();
            }
            let wanted: Vec<&str> = req.values.iter().map(|s| s.as_str()).collect();
            let items = prop.items_for(&wanted);
            if items.is_empty() {
                pgrx::notice!(
                    "no item in the model has {} {}; the audience is empty",
                    prop.name,
                    if wanted.len() == 1 {
                        format!("\"{}\"", shown(wanted[0]))
                    } else {
                        format!("in ({})", shown(&wanted.join(", ")))
                    }
                );
                return Ranking::empty(l.model.users.len());
            }
            (items, Some(prop.name.clone()))
        }
    };
    let tf = std::time::Instant::now();
    let fresh = crate::api::fresh::fresh_for(l);
    let fresh_ms = tf.elapsed().as_secs_f64() * 1000.0;
    let n_model_users = l.model.users.len();
    let n_users = n_model_users + fresh.as_ref().map_or(0, |f| f.rows.new_users());
    let k = cut_size(max_pct, n_users, req.max_users);
    // Cross-sell audiences rank users new to the value with their own knobs (see audience.tune).
    // A set of items has no property of its own: the model's knobs.
    let (all_knobs, cross_knobs) = match &knob_property {
        Some(p) => l.model.knobs_for(p),
        None => (&l.model.params, &l.model.cross_params),
    };
    let knobs = if req.exclude_engaged.unwrap_or(false) {
        cross_knobs
    } else {
        all_knobs
    };
    // The same request against the same model and new events as a recent call of this session
    // (paging with LIMIT/OFFSET, a count then the list): its ranking again.
    let key = req.lookback.is_none().then(|| MemoKey {
        model_id: l.model_id,
        models_oid: l.models_oid,
        items: items.clone(),
        k,
        knobs: *knobs,
        exclude: req.exclude_engaged.unwrap_or(false),
        min_score: req.min_score,
        fresh: fresh.clone(),
    });
    if let Some(r) = key.as_ref().and_then(memo_get) {
        pgrx::debug1!(
            "audience: the ranking of the same request in this session reused (events since the build checked in {fresh_ms:.1} ms)"
        );
        return r;
    }
    // One pass over the affinity matrix gives both the scores and who already engaged (e_u > 0).
    let t0 = std::time::Instant::now();
    let (mut scores, mut e) = scores_of(&l.scorer, &items, knobs);
    let t1 = std::time::Instant::now();
    // Users with events since the build: their merged rows replace the snapshot's, new users
    // are appended (index n_model_users + j for the j-th new one).
    let mut new_users: Vec<String> = Vec::new();
    if let Some(f) = fresh.as_deref() {
        let t = std::time::Instant::now();
        let fs = f.scorer(l);
        let t_sc = t.elapsed().as_secs_f64() * 1000.0;
        let (fscores, fe) = scores_of(&fs, &items, knobs);
        pgrx::debug1!(
            "audience: events since the build read in {fresh_ms:.1} ms; {} users with new events scored in {:.1} ms (scorer {t_sc:.1} ms)",
            f.rows.users.len(),
            t.elapsed().as_secs_f64() * 1000.0
        );
        for (j, row) in f.rows.model_row.iter().enumerate() {
            match row {
                Some(u) => {
                    scores[*u as usize] = fscores[j];
                    e[*u as usize] = fe[j];
                }
                None => {
                    scores.push(fscores[j]);
                    e.push(fe[j]);
                }
            }
            if row.is_none() {
                new_users.push(f.rows.users[j].clone());
            }
        }
    }
    pgrx::debug1!(
        "audience: {} items, events since the build checked in {fresh_ms:.1} ms, scores in {:.1} ms (+ {:.1} ms for users with new events)",
        items.len(),
        (t1 - t0).as_secs_f64() * 1000.0,
        t1.elapsed().as_secs_f64() * 1000.0
    );
    let t_rank = std::time::Instant::now();
    let excluded: Option<std::borrow::Cow<[bool]>> = if req.exclude_engaged.unwrap_or(false) {
        Some(match &req.lookback {
            None => std::borrow::Cow::Borrowed(&e[..]),
            Some(iv) => {
                let lb = crate::affinity::aggregate::interval_micros_for(iv, "lookback");
                if lb <= 0 {
                    AudienceError::invalid("lookback must be positive")
                        .hint("Pass an interval such as '90 days': users who engaged with the value within it are left out.")
                        .raise();
                }
                let since_us = now_micros().saturating_sub(lb);
                let since_min = since_us
                    .div_euclid(60_000_000)
                    .clamp(i32::MIN as i64, i32::MAX as i64) as i32;
                let m = &l.model;
                let mut mask = vec![false; m.items.len()];
                for &i in &items {
                    mask[i as usize] = true;
                }
                let mut out = engaged_since(&m.ui, &m.last_seen, &mask, since_min);
                if let Some(f) = fresh.as_deref() {
                    let fe = engaged_since(&f.rows.ui, &f.rows.last_seen, &mask, since_min);
                    for (j, row) in f.rows.model_row.iter().enumerate() {
                        match row {
                            Some(u) => out[*u as usize] = fe[j],
                            None => out.push(fe[j]),
                        }
                    }
                }
                std::borrow::Cow::Owned(out)
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
    let ranked = top_k_threads(
        &scores,
        k,
        &|u| {
            let s = scores[u];
            s > 0.0 && min_score.is_none_or(|m| s >= m) && !excluded.as_ref().is_some_and(|e| e[u])
        },
        crate::guc::threads(),
    );
    let engaged = ranked.iter().map(|&(u, _)| e[u as usize]).collect();
    pgrx::debug1!(
        "audience: top {k} selected in {:.1} ms",
        t_rank.elapsed().as_secs_f64() * 1000.0
    );
    let ranking = Ranking {
        ranked,
        engaged,
        new_users,
        n_users,
    };
    if let Some(key) = key {
        memo_put(key, &ranking);
    }
    ranking
}

/// Every user's score for the value and whether they engaged with it before (`e_u > 0`): in one
/// pass when it applies, else from the components.
fn scores_of(
    sc: &crate::score::hybrid::Scorer,
    items: &[u32],
    knobs: &crate::score::hybrid::HybridParams,
) -> (Vec<f32>, Vec<bool>) {
    if let Some(s) = sc.serve(items, knobs) {
        return (s.scores, s.engaged);
    }
    let c = sc.components_with(items, &[knobs.own]);
    let scores = crate::score::hybrid::score_from_components(&c, sc.totals(), knobs);
    (scores, c.e.iter().map(|&x| x > 0.0).collect())
}

/// What a ranking depends on besides the model's fixed data: the model, the value's items, the
/// cut, the knobs, the request's filters and the new events read since the build (the very
/// state read: a new read is a new `Rc`, kept alive here so its address is never reused).
struct MemoKey {
    model_id: i64,
    models_oid: u32,
    items: Vec<u32>,
    k: usize,
    knobs: crate::score::hybrid::HybridParams,
    exclude: bool,
    min_score: Option<f64>,
    fresh: Option<std::rc::Rc<crate::api::fresh::Fresh>>,
}

impl PartialEq for MemoKey {
    fn eq(&self, o: &MemoKey) -> bool {
        self.model_id == o.model_id
            && self.models_oid == o.models_oid
            && self.items == o.items
            && self.k == o.k
            && self.knobs == o.knobs
            && self.exclude == o.exclude
            && self.min_score.map(f64::to_bits) == o.min_score.map(f64::to_bits)
            && match (&self.fresh, &o.fresh) {
                (None, None) => true,
                (Some(a), Some(b)) => std::rc::Rc::ptr_eq(a, b),
                _ => false,
            }
    }
}

/// Rankings kept per session, and the bytes they may hold together (a ranked user takes 9: index,
/// score and the engaged flag; a 5% audience of 1M users about 0.45 MB).
const MEMO_ENTRIES: usize = 4;
const MEMO_BYTES: usize = 16 << 20;

thread_local! {
    /// The latest rankings of this session, most recent last.
    static MEMO: std::cell::RefCell<Vec<(MemoKey, Ranking)>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn memo_get(key: &MemoKey) -> Option<Ranking> {
    MEMO.with(|m| {
        let mut m = m.borrow_mut();
        let pos = m.iter().position(|(k, _)| k == key)?;
        let hit = m.remove(pos);
        let r = hit.1.clone();
        m.push(hit);
        Some(r)
    })
}

fn memo_put(key: MemoKey, r: &Ranking) {
    MEMO.with(|m| {
        let mut m = m.borrow_mut();
        // A newer read of the events since the build supersedes the older ones: their rankings
        // (and the states they keep alive) go.
        m.retain(|(k, _)| {
            (k.model_id, k.models_oid) != (key.model_id, key.models_oid)
                || match (&k.fresh, &key.fresh) {
                    (Some(a), Some(b)) => std::rc::Rc::ptr_eq(a, b),
                    (None, _) => true,
                    (Some(_), None) => false,
                }
        });
        if r.bytes() > MEMO_BYTES {
            return;
        }
        while m.len() >= MEMO_ENTRIES
            || m.iter().map(|(_, x)| x.bytes()).sum::<usize>() + r.bytes() > MEMO_BYTES
        {
            m.remove(0);
        }
        m.push((key, r.clone()));
    });
}

fn now_micros() -> i64 {
    let ts: TimestampWithTimeZone = unsafe { pg_sys::GetCurrentTransactionStartTimestamp() }
        .try_into()
        .unwrap_or_else(|_| AudienceError::internal("no transaction timestamp").raise());
    ts.into()
}

/// The fmgr records of the audience functions' entry points (what `PG_FUNCTION_INFO_V1` declares).
macro_rules! finfo_v1 {
    ($($name:ident),*) => {$(
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub extern "C" fn $name() -> &'static pg_sys::Pg_finfo_record {
            const V1_API: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
            &V1_API
        }
    )*};
}
finfo_v1!(
    pg_finfo_recommend_audience_wrapper,
    pg_finfo_recommend_audience_values_wrapper,
    pg_finfo_recommend_audience_items_wrapper
);

/// Argument `i` of the call, converted as pgrx's generated wrappers do (`oid`: its SQL type).
///
/// # Safety
/// `fcinfo` is the current call's, with more than `i` arguments of type `oid`.
unsafe fn arg<T: FromDatum>(
    fcinfo: pg_sys::FunctionCallInfo,
    i: usize,
    oid: pg_sys::Oid,
) -> Option<T> {
    unsafe {
        let a = (*fcinfo).args.as_slice((*fcinfo).nargs as usize)[i];
        T::from_polymorphic_datum(a.value, a.isnull, oid)
    }
}

/// The arguments after the property and value(s), or the items: max_pct, catalog, max_users,
/// min_score, exclude_engaged, lookback, from position `at` on.
///
/// # Safety
/// As [`arg`], with the audience functions' argument types.
unsafe fn request_tail<'a>(
    fcinfo: pg_sys::FunctionCallInfo,
    at: usize,
    property: Option<&'a str>,
    values: Vec<String>,
) -> Request<'a> {
    unsafe {
        Request {
            property,
            values,
            max_pct: arg::<f64>(fcinfo, at, pg_sys::FLOAT8OID),
            catalog: arg::<&str>(fcinfo, at + 1, pg_sys::TEXTOID),
            max_users: arg::<i64>(fcinfo, at + 2, pg_sys::INT8OID),
            min_score: arg::<f64>(fcinfo, at + 3, pg_sys::FLOAT8OID),
            exclude_engaged: arg::<bool>(fcinfo, at + 4, pg_sys::BOOLOID),
            lookback: arg::<Interval>(fcinfo, at + 5, pg_sys::INTERVALOID),
        }
    }
}

/// The tuple store a materialize-mode call returns its rows in, with the call's row type; an
/// error (0A000) when the caller cannot take a set that way.
///
/// # Safety
/// `fcinfo` is the current call's.
unsafe fn materialized_result(
    fcinfo: pg_sys::FunctionCallInfo,
) -> (*mut pg_sys::Tuplestorestate, pg_sys::TupleDesc) {
    unsafe {
        let rsinfo = (*fcinfo).resultinfo as *mut pg_sys::ReturnSetInfo;
        if rsinfo.is_null()
            || (*rsinfo).type_ != pg_sys::NodeTag::T_ReturnSetInfo
            || (*rsinfo).allowedModes & pg_sys::SetFunctionReturnMode::SFRM_Materialize as i32 == 0
        {
            AudienceError::new(
                pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
                "set-valued function called in context that cannot accept a set",
            )
            .hint("Call it in FROM, e.g. SELECT * FROM audience.recommend_audience('brand', 'Nike', 5).")
            .raise()
        }
        let old = pg_sys::MemoryContextSwitchTo((*(*rsinfo).econtext).ecxt_per_query_memory);
        let mut desc: pg_sys::TupleDesc = std::ptr::null_mut();
        if pg_sys::get_call_result_type(fcinfo, std::ptr::null_mut(), &mut desc)
            != pg_sys::TypeFuncClass::TYPEFUNC_COMPOSITE
        {
            pg_sys::MemoryContextSwitchTo(old);
            AudienceError::internal("the audience function's row type is not composite").raise()
        }
        let desc = pg_sys::CreateTupleDescCopy(desc);
        let random = (*rsinfo).allowedModes
            & pg_sys::SetFunctionReturnMode::SFRM_Materialize_Random as i32
            != 0;
        // The rows stay in memory up to hash_mem (work_mem x hash_mem_multiplier, what Postgres
        // grants an operation that holds its rows in memory): with work_mem alone, a top 5% of
        // 1M users (~4.4 MB of tuples) went to a temporary file and back (~4 ms of a call).
        let hash_kb = (pg_sys::get_hash_memory_limit() / 1024).min(i32::MAX as usize) as i32;
        let store = pg_sys::tuplestore_begin_heap(random, false, pg_sys::work_mem.max(hash_kb));
        (*rsinfo).returnMode = pg_sys::SetFunctionReturnMode::SFRM_Materialize;
        (*rsinfo).setResult = store;
        (*rsinfo).setDesc = desc;
        pg_sys::MemoryContextSwitchTo(old);
        (store, desc)
    }
}

/// Puts the audience's rows (user_id, score, rank, percentile) in the call's tuple store. Each id is
/// written as a text value into one reused buffer, which the store copies: no allocation per row.
///
/// # Safety
/// `store` and `desc` are from [`materialized_result`] for this call.
unsafe fn put_rows(
    store: *mut pg_sys::Tuplestorestate,
    desc: pg_sys::TupleDesc,
    l: &Loaded,
    ranking: &Ranking,
) {
    let n = ranking.n_users.max(1) as f64;
    // Words, so the varlena header is 4-byte aligned.
    let mut text: Vec<u32> = Vec::new();
    let mut nulls = [false; 4];
    // The ids are read in rank order, i.e. at random places of the model: the offsets of the id
    // 16 rows ahead and the bytes of the one 8 rows ahead are asked for early (measured: the two
    // cache misses per row were most of the rows' time).
    let users = &l.model.users;
    let ahead = |r: usize| {
        ranking
            .ranked
            .get(r)
            .map(|x| x.0 as usize)
            .filter(|&u| u < users.len())
    };
    for (r, &(u, s)) in ranking.ranked.iter().enumerate() {
        if r % 4096 == 0 {
            pgrx::check_for_interrupts!();
        }
        if let Some(v) = ahead(r + 16) {
            users.prefetch(v, false);
        }
        if let Some(v) = ahead(r + 8) {
            users.prefetch(v, true);
        }
        let id = ranking.user_id(l, u).as_bytes();
        let len = pg_sys::VARHDRSZ + id.len();
        if len > i32::MAX as usize / 4 {
            AudienceError::internal("user id too long for a text value").raise()
        }
        text.clear();
        text.resize(len.div_ceil(4), 0);
        let ptr = text.as_mut_ptr() as *mut u8;
        let mut values = [
            pg_sys::Datum::from(ptr),
            (s as f64).into_datum().unwrap_or(pg_sys::Datum::from(0)),
            (r as i64 + 1)
                .into_datum()
                .unwrap_or(pg_sys::Datum::from(0)),
            (100.0 * (r as f64 + 1.0) / n)
                .into_datum()
                .unwrap_or(pg_sys::Datum::from(0)),
        ];
        unsafe {
            // SAFETY: the buffer holds len bytes (rounded up to words); the id fits after the header.
            std::ptr::copy_nonoverlapping(id.as_ptr(), ptr.add(pg_sys::VARHDRSZ), id.len());
            pgrx::set_varsize_4b(ptr as *mut pg_sys::varlena, len as i32);
            pg_sys::tuplestore_putvalues(store, desc, values.as_mut_ptr(), nulls.as_mut_ptr());
        }
    }
}

/// Ranks the request and returns its rows in materialize mode (once per call, not once per row as
/// a value-per-call set-returning function: 50,000 rows took 14 ms more that way); with
/// `client_min_messages = debug1`, reports where the time went.
///
/// # Safety
/// `fcinfo` is the current call's.
unsafe fn serve_materialized(
    fcinfo: pg_sys::FunctionCallInfo,
    req: &Request,
    items: Option<Vec<Option<String>>>,
) -> pg_sys::Datum {
    let (store, desc) = unsafe { materialized_result(fcinfo) };
    let t0 = std::time::Instant::now();
    let l = active(req.catalog);
    let t1 = std::time::Instant::now();
    let items = items.map(|ids| known_items(&l, ids));
    let ranking = rank_target(req, &l, items.as_deref());
    let t2 = std::time::Instant::now();
    unsafe { put_rows(store, desc, &l, &ranking) };
    let ms = |a: std::time::Instant, b: std::time::Instant| (b - a).as_secs_f64() * 1000.0;
    pgrx::debug1!(
        "audience: model {} ({} copy) resolved in {:.1} ms, ranked in {:.1} ms, {} rows made in {:.1} ms",
        l.model_id,
        if l.shared { "shared" } else { "private" },
        ms(t0, t1),
        ms(t1, t2),
        ranking.ranked.len(),
        ms(t2, std::time::Instant::now())
    );
    pg_sys::Datum::from(0)
}

/// The model's indexes of item ids, with a NOTICE for ids it does not know.
pub(crate) fn known_items(l: &Loaded, ids: Vec<Option<String>>) -> Vec<u32> {
    let (found, asked) = items_of(l, ids);
    if found.len() < asked {
        pgrx::notice!(
            "{} of the {asked} items are not in the model of catalog \"{}\" (no events, or new since its build)",
            asked - found.len(),
            shown(&l.catalog)
        );
    }
    found
}

/// `audience.recommend_audience(property, value, max_pct, ...)`: the users most likely to engage
/// with items whose `property` equals `value`, best first, capped at the top `max_pct` percent of
/// the users known to the catalog's model. Declared in `extension_sql!` below under the symbol
/// pgrx gave it before (installed SQL unchanged); parallel restricted, since each parallel worker
/// would load its own copy of the model.
///
/// # Safety
/// Called by the function manager with the eight arguments declared.
#[unsafe(no_mangle)]
#[doc(hidden)]
#[pg_guard]
pub unsafe extern "C-unwind" fn recommend_audience_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        assert!(
            (*fcinfo).nargs == 8,
            "recommend_audience takes eight arguments"
        );
        let property = arg::<&str>(fcinfo, 0, pg_sys::TEXTOID);
        let Some(value) = arg::<&str>(fcinfo, 1, pg_sys::TEXTOID) else {
            AudienceError::null("value").raise()
        };
        let req = request_tail(fcinfo, 2, property, vec![value.to_string()]);
        serve_materialized(fcinfo, &req, None)
    }
}

/// `audience.recommend_audience(property, value text[], ...)`: the same for several values at once
/// (brand IN (...)): items having any of the values.
///
/// # Safety
/// Called by the function manager with the eight arguments declared.
#[unsafe(no_mangle)]
#[doc(hidden)]
#[pg_guard]
pub unsafe extern "C-unwind" fn recommend_audience_values_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        assert!(
            (*fcinfo).nargs == 8,
            "recommend_audience takes eight arguments"
        );
        let property = arg::<&str>(fcinfo, 0, pg_sys::TEXTOID);
        let Some(values) = arg::<Vec<Option<String>>>(fcinfo, 1, pg_sys::TEXTARRAYOID) else {
            AudienceError::null("value").raise()
        };
        let req = request_tail(fcinfo, 2, property, non_null_values(values));
        serve_materialized(fcinfo, &req, None)
    }
}

/// `audience.recommend_audience_items(items, ...)`: the users most likely to engage with any of the
/// given items (product ids): a single product, or any predicate over the products table, e.g.
/// `items => (SELECT array_agg(product_id) FROM products WHERE price_band = 'premium')`.
///
/// # Safety
/// Called by the function manager with the seven arguments declared.
#[unsafe(no_mangle)]
#[doc(hidden)]
#[pg_guard]
pub unsafe extern "C-unwind" fn recommend_audience_items_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    unsafe {
        assert!(
            (*fcinfo).nargs == 7,
            "recommend_audience_items takes seven arguments"
        );
        let Some(items) = arg::<Vec<Option<String>>>(fcinfo, 0, pg_sys::TEXTARRAYOID) else {
            AudienceError::null("items").raise()
        };
        let req = request_tail(fcinfo, 1, None, Vec::new());
        serve_materialized(fcinfo, &req, Some(items))
    }
}

extension_sql!(
    r#"
CREATE FUNCTION audience."recommend_audience"(
	"property" TEXT,
	"value" TEXT,
	"max_pct" double precision,
	"catalog" TEXT DEFAULT NULL,
	"max_users" bigint DEFAULT NULL,
	"min_score" double precision DEFAULT NULL,
	"exclude_engaged" bool DEFAULT false,
	"lookback" interval DEFAULT NULL
) RETURNS TABLE (
	"user_id" TEXT,
	"score" double precision,
	"rank" bigint,
	"percentile" double precision
)
STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'recommend_audience_wrapper';

CREATE FUNCTION audience."recommend_audience"(
	"property" TEXT,
	"value" TEXT[],
	"max_pct" double precision,
	"catalog" TEXT DEFAULT NULL,
	"max_users" bigint DEFAULT NULL,
	"min_score" double precision DEFAULT NULL,
	"exclude_engaged" bool DEFAULT false,
	"lookback" interval DEFAULT NULL
) RETURNS TABLE (
	"user_id" TEXT,
	"score" double precision,
	"rank" bigint,
	"percentile" double precision
)
STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'recommend_audience_values_wrapper';

CREATE FUNCTION audience."recommend_audience_items"(
	"items" TEXT[],
	"max_pct" double precision,
	"catalog" TEXT DEFAULT NULL,
	"max_users" bigint DEFAULT NULL,
	"min_score" double precision DEFAULT NULL,
	"exclude_engaged" bool DEFAULT false,
	"lookback" interval DEFAULT NULL
) RETURNS TABLE (
	"user_id" TEXT,
	"score" double precision,
	"rank" bigint,
	"percentile" double precision
)
STABLE PARALLEL RESTRICTED
LANGUAGE c
AS 'MODULE_PATHNAME', 'recommend_audience_items_wrapper';
"#,
    name = "recommend_audience_functions",
    requires = ["schema"]
);
