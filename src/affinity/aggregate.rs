//! Support functions of the parallel-safe affinity aggregates.
//!
//! pgrx 0.18.1's `#[pg_aggregate]` generates a wrong deserial signature for `internal` states
//! (pgrx issue #2351), so the support functions are plain `#[pg_extern]`s (the build's
//! transition function a hand-written fmgr entry point, see
//! [`_affinity_collect_sfunc_wrapper`]) and the aggregates are created with `CREATE AGGREGATE` in
//! `extension_sql!` below.
//!
//! The support functions run no SQL, so they do not pin `search_path`: a `SET` clause makes
//! Postgres save and restore the setting around every call, which cost 60% of the aggregate's
//! time per row (measured with perf on the demo shop).
//!
//! Two aggregates share the state:
//! - `audience.affinity(user, item, weight, time, half_life, reference) -> jsonb` for people;
//! - `audience._affinity_collect(..., props text, doc jsonb, keys text[, user_num bigint,
//!   item_num bigint]) -> bigint` for `audience.build`, which hands the finished state to the
//!   caller through a backend-local stash instead of copying it into a datum (the integer ids,
//!   0.9.0, stand for a NULL `user_id` or `item_id`: an integer column passed without a cast).
//!
//! A parallel scan's final step decodes nothing: the deserialize function checks a partial
//! state's bytes and keeps them as they are ([`AggState::Unread`]), and the combine function
//! merges them into the final state straight from the bytes (the leader's serial tail of a
//! build's scan; each partial state's entries are not copied into a vector of their own first).
use crate::affinity::accumulator::{Accumulator, StateView};
use crate::affinity::handoff;
use crate::error::AudienceError;
use pgrx::prelude::*;
use pgrx::{Internal, PgMemoryContexts};
use std::cell::RefCell;
use std::path::Path;

/// Microseconds per unit of an interval, as `extract(epoch from interval)` counts them.
const USECS_PER_DAY: i64 = 86_400_000_000;

/// The interval in microseconds (a month counts 30 days, as in interval arithmetic with
/// justify_days), or `None` when it does not fit in 64 bits (about 292,000 years).
pub fn interval_micros_checked(iv: &Interval) -> Option<i64> {
    let us = (iv.months() as i128 * 30 + iv.days() as i128) * USECS_PER_DAY as i128
        + iv.micros() as i128;
    i64::try_from(us).ok()
}

/// The interval in microseconds; an interval too long to count in microseconds is an error
/// (`22023`) naming the argument `what`, never a wrapped value.
pub fn interval_micros_for(iv: &Interval, what: &str) -> i64 {
    interval_micros_checked(iv).unwrap_or_else(|| {
        AudienceError::invalid(format!("{what} is too long"))
            .detail("Intervals up to about 290,000 years can be used.")
            .hint(format!("Pass a shorter {what}."))
            .raise()
    })
}

/// [`interval_micros_for`] for a half-life.
pub fn interval_micros(iv: &Interval) -> i64 {
    interval_micros_for(iv, "half_life")
}

fn finite_time(t: TimestampWithTimeZone) -> Option<i64> {
    let v: i64 = t.into();
    if v == i64::MAX || v == i64::MIN {
        None
    } else {
        Some(v)
    }
}

/// What an `internal` state of these aggregates points to. One per aggregate call, so its size
/// does not matter; boxing the accumulator would add a pointer chase to every row.
#[allow(clippy::large_enum_variant)]
enum AggState {
    /// A state.
    Acc(Accumulator),
    /// A partial state as the deserialize function found it: its bytes checked, read in place.
    /// Postgres runs deserialize functions in the per-input-tuple memory context and passes the
    /// result straight to the combine function; the bytes (the input tuple's datum, or a
    /// detoasted copy in that context) outlive that context's next reset, and this value is
    /// allocated in it, so it cannot outlive its bytes (the `'static` is that context's life).
    /// The mapping, when there is one, holds the bytes of a parallel worker's state handed over
    /// in a file ([`handoff`]); it is declared after the view, so it is dropped after it.
    Unread(StateView<'static>, Option<handoff::Mapping>),
}

impl AggState {
    /// The accumulator (a state read in place is decoded first).
    fn acc(&mut self) -> &mut Accumulator {
        if let AggState::Unread(..) = self {
            if let AggState::Unread(v, mapping) =
                std::mem::replace(self, AggState::Acc(Accumulator::new(0)))
            {
                *self = AggState::Acc(v.into_accumulator());
                drop(mapping);
            }
        }
        match self {
            AggState::Acc(a) => a,
            AggState::Unread(..) => unreachable!("decoded above"),
        }
    }
}

/// The accumulator of an `internal` state, if it has one.
unsafe fn acc_of(state: &mut Internal) -> Option<&mut Accumulator> {
    state.get_mut::<AggState>().map(|s| s.acc())
}

/// The memory context of the current aggregate call; an error outside aggregates.
unsafe fn agg_context(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::MemoryContext {
    let mut agg_ctx: pg_sys::MemoryContext = std::ptr::null_mut();
    if pg_sys::AggCheckCallContext(fcinfo, &mut agg_ctx) == 0 {
        AudienceError::new(
            pgrx::PgSqlErrorCode::ERRCODE_FEATURE_NOT_SUPPORTED,
            "affinity support function called in non-aggregate context",
        )
        .hint("Call the aggregate audience.affinity(), not its support functions.")
        .raise();
    }
    agg_ctx
}

/// The state of the current aggregate call, created in the aggregate's memory context.
unsafe fn state_mut(
    state: &mut Internal,
    fcinfo: pg_sys::FunctionCallInfo,
    n_props: usize,
) -> &mut Accumulator {
    if state.initialized() {
        return acc_of(state).expect("initialized state");
    }
    if partial_for_this_backend(fcinfo) {
        // The leader of a parallel scan: its workers may leave files for it (see `handoff`).
        register_cleanup();
    }
    let ptr = PgMemoryContexts::For(agg_context(fcinfo))
        .leak_and_drop_on_delete(AggState::Acc(Accumulator::new(n_props)));
    *state = Internal::from(Some(pg_sys::Datum::from(ptr)));
    (*ptr).acc()
}

#[allow(clippy::too_many_arguments)]
fn push_row(
    acc: &mut Accumulator,
    user: Option<&str>,
    item: Option<&str>,
    weight: Option<f64>,
    time: Option<TimestampWithTimeZone>,
    half_life: Option<Interval>,
    reference: Option<TimestampWithTimeZone>,
    props: Option<&[Option<&str>]>,
) {
    let (Some(user), Some(item), Some(time)) = (user, item, time.and_then(finite_time)) else {
        return; // rows without a user, an item or a finite time carry no affinity
    };
    let reference = reference.and_then(finite_time);
    if acc.rows() == 0 {
        acc.set_reference(reference);
    }
    let half_life = half_life.map(|h| interval_micros(&h));
    if let Some(h) = half_life {
        if h <= 0 {
            AudienceError::invalid("half_life must be positive")
                .hint("Pass NULL for no recency decay, or e.g. '30 days'.")
                .raise();
        }
    }
    // An event after the reference time counts as if it happened at the reference time.
    let time = match reference {
        Some(r) if time > r => r,
        _ => time,
    };
    if !acc.accepts_half_life(half_life) {
        AudienceError::new(
            pgrx::PgSqlErrorCode::ERRCODE_PROGRAM_LIMIT_EXCEEDED,
            "too many distinct half-life values in one affinity aggregate",
        )
        .detail("One aggregate call supports at most 256 distinct half-lives.")
        .hint("Use one half-life per event type.")
        .raise();
    }
    acc.push(user, item, weight.unwrap_or(1.0), time, half_life, props);
}

#[pg_extern(parallel_safe)]
#[allow(clippy::too_many_arguments)]
fn _affinity_sfunc(
    mut state: Internal,
    user_id: Option<&str>,
    item_id: Option<&str>,
    weight: Option<f64>,
    event_time: Option<TimestampWithTimeZone>,
    half_life: Option<Interval>,
    reference_time: Option<TimestampWithTimeZone>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Internal {
    let acc = unsafe { state_mut(&mut state, fcinfo, 0) };
    push_row(
        acc,
        user_id,
        item_id,
        weight,
        event_time,
        half_life,
        reference_time,
        None,
    );
    state
}

/// Separates the values of several properties in the `props` argument of `_affinity_collect`
/// (ASCII record separator); an empty segment is a NULL value.
pub const PROPS_SEPARATOR: char = '\u{1e}';

/// The fmgr record of [`_affinity_collect_sfunc_wrapper`] (what `PG_FUNCTION_INFO_V1` declares).
#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo__affinity_collect_sfunc_wrapper() -> &'static pg_sys::Pg_finfo_record {
    const V1_API: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1_API
}

/// The entry point of `audience._affinity_collect_sfunc` (declared in `extension_sql!` below under
/// the symbol pgrx gave it, so installed SQL is unchanged): the build's scan calls it once per
/// event row. It reads its eleven arguments straight from `fcinfo`, converting each with the same
/// `FromDatum` as pgrx's generated wrapper, which fetched them through an out-of-line iterator
/// call per argument (9% of a 20M-row scan's CPU, `perf`). Nine arguments (no `doc` and `keys`)
/// are 0.6.0's declaration, which a database still runs between installing this library and
/// `ALTER EXTENSION pg_audience UPDATE`; eleven the declaration before 0.9.0's integer ids
/// (still the one for text ids), thirteen 0.9.0's with `user_num` and `item_num`.
///
/// # Safety
/// Called by the function manager with nine, eleven or thirteen arguments, as declared.
#[unsafe(no_mangle)]
#[doc(hidden)]
#[pg_guard]
pub unsafe extern "C-unwind" fn _affinity_collect_sfunc_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    let nargs = (*fcinfo).nargs as usize;
    assert!(
        nargs == 9 || nargs == 11 || nargs == 13,
        "_affinity_collect_sfunc takes nine, eleven or thirteen arguments"
    );
    let args = (*fcinfo).args.as_slice(nargs);
    fn get<T: FromDatum>(a: &pg_sys::NullableDatum, oid: pg_sys::Oid) -> Option<T> {
        // SAFETY: the argument has the SQL type the function is declared with (`oid`).
        unsafe { T::from_polymorphic_datum(a.value, a.isnull, oid) }
    }
    let state = Internal::from(if args[0].isnull {
        None
    } else {
        Some(args[0].value)
    });
    // An integer id (0.9.0's `user_num` and `item_num`, passed instead of the text when the
    // source's column is an integer) as its decimal text, formatted here on the stack instead of
    // by the query's `::text` cast (`int8out` and a palloc'd text per row).
    let (mut ubuf, mut ibuf) = ([0u8; I64_DIGITS], [0u8; I64_DIGITS]);
    let num = |k: usize| {
        (nargs == 13)
            .then(|| get::<i64>(&args[k], pg_sys::INT8OID))
            .flatten()
    };
    let user = id_in_place(&args[1], num(11), &mut ubuf);
    let item = id_in_place(&args[2], num(12), &mut ibuf);
    let out = _affinity_collect_sfunc(
        state,
        user,
        item,
        get::<f64>(&args[3], pg_sys::FLOAT8OID),
        get::<TimestampWithTimeZone>(&args[4], pg_sys::TIMESTAMPTZOID),
        get::<Interval>(&args[5], pg_sys::INTERVALOID),
        get::<TimestampWithTimeZone>(&args[6], pg_sys::TIMESTAMPTZOID),
        get::<i32>(&args[7], pg_sys::INT4OID),
        match (nargs, text_in_place(&args[8])) {
            (11 | 13, None) if !args[10].isnull => Props::Doc {
                doc: &args[9],
                keys: text_in_place(&args[10]).unwrap_or_default(),
            },
            (_, props) => Props::Text(props),
        },
        fcinfo,
    );
    match out.into_datum() {
        Some(d) => d,
        None => {
            (*fcinfo).isnull = true;
            pg_sys::Datum::from(0usize)
        }
    }
}

/// Bytes of the longest `i64` in decimal (`-9223372036854775808`).
const I64_DIGITS: usize = 20;

/// A user or item id: the `text` argument ([`text_in_place`]), or when it is NULL the integer
/// `num` in decimal, written in `buf`.
///
/// # Safety
/// `text` is an argument of SQL type `text`.
unsafe fn id_in_place<'a>(
    text: &pg_sys::NullableDatum,
    num: Option<i64>,
    buf: &'a mut [u8; I64_DIGITS],
) -> Option<&'a str> {
    // SAFETY: the caller's contract.
    match unsafe { text_in_place(text) } {
        None => num.map(|v| decimal(v, buf)),
        t => t,
    }
}

/// `v` in decimal, as PostgreSQL's `int8out` (and so `::text`) writes it, in `buf`.
fn decimal(v: i64, buf: &mut [u8; I64_DIGITS]) -> &str {
    let mut n = v.unsigned_abs();
    let mut at = I64_DIGITS;
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    // ASCII digits and a sign only.
    std::str::from_utf8(&buf[at..]).unwrap_or_default()
}

/// A `text` argument as `&str`: what pgrx's conversion gives, read in place without its call
/// into PostgreSQL (`pg_detoast_datum_packed` through a `sigsetjmp` guard, three times a row:
/// ~5% of a scan's pushing CPU, `perf`) when the value is plain already (inline, not
/// compressed) and the database is UTF-8; any other value goes through pgrx's conversion.
///
/// # Safety
/// `a` is an argument of SQL type `text`.
unsafe fn text_in_place<'a>(a: &pg_sys::NullableDatum) -> Option<&'a str> {
    if a.isnull {
        return None;
    }
    let utf8 = database_is_utf8();
    let p = a.value.cast_mut_ptr::<pg_sys::varlena>() as *const pg_sys::varlena;
    // SAFETY: a text datum is a varlena; these read its header only.
    let plain = unsafe {
        (pgrx::varlena::varatt_is_1b(p) && !pgrx::varlena::varatt_is_1b_e(p))
            || pgrx::varlena::varatt_is_4b_u(p)
    };
    if utf8 && plain {
        // SAFETY: a plain varlena in a UTF-8 database, as pgrx's own conversion reads it.
        return Some(unsafe { pgrx::varlena::text_to_rust_str_unchecked(p) });
    }
    // SAFETY: the argument has SQL type text.
    unsafe { <&str as FromDatum>::from_polymorphic_datum(a.value, false, pg_sys::TEXTOID) }
}

/// The mapped property values of a build's event row, as the scan query passes them.
pub(crate) enum Props<'a> {
    /// `n_props` values joined by [`PROPS_SEPARATOR`] in one text (NULL: none).
    Text(Option<&'a str>),
    /// Keys of the row's jsonb document (`keys`: `n_props` keys joined by [`PROPS_SEPARATOR`],
    /// an empty one for a property the source does not map), read in place
    /// ([`crate::affinity::jsonb`]) instead of the query's `doc ->> key` per property. An empty
    /// value is NULL, as an empty segment of the text is.
    Doc {
        doc: &'a pg_sys::NullableDatum,
        keys: &'a str,
    },
}

/// `doc ->> key` of a jsonb argument: read in place when it is plain (not compressed, not
/// stored out of line) and the value is a string, `null` or a boolean in a UTF-8 database;
/// otherwise PostgreSQL's own `->>` (`jsonb_object_field_text`), whose text lives in the
/// current (per-row) memory context.
///
/// # Safety
/// `doc` is a non-null argument of SQL type jsonb.
unsafe fn doc_field<'a>(doc: &'a pg_sys::NullableDatum, key: &str) -> Option<&'a str> {
    use crate::affinity::jsonb::{object_field, Field};
    let p = doc.value.cast_mut_ptr::<pg_sys::varlena>() as *const pg_sys::varlena;
    // SAFETY: a jsonb datum is a varlena; these read its header only.
    let plain = unsafe {
        (pgrx::varlena::varatt_is_1b(p) && !pgrx::varlena::varatt_is_1b_e(p))
            || pgrx::varlena::varatt_is_4b_u(p)
    };
    if plain && database_is_utf8() {
        // SAFETY: a plain varlena: its data follows its header in place.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                pgrx::varlena::vardata_any(p) as *const u8,
                pgrx::varlena::varsize_any_exhdr(p),
            )
        };
        match object_field(bytes, key.as_bytes()) {
            Field::Null => return None,
            Field::Bool(b) => return Some(if b { "true" } else { "false" }),
            // SAFETY: jsonb keeps its strings in the database's encoding, validated on input
            // (as `text_in_place` trusts a text argument's bytes).
            Field::Str(s) => return Some(unsafe { std::str::from_utf8_unchecked(s) }),
            Field::Other => {}
        }
    }
    // SAFETY: jsonb_object_field_text(jsonb, text) returns text or NULL, allocated (as the
    // key's text) in the current memory context, which outlives this row's push.
    unsafe {
        pgrx::direct_function_call::<&str>(
            pg_sys::jsonb_object_field_text,
            &[Some(doc.value), key.into_datum()],
        )
    }
}

/// Whether the database's encoding is UTF-8 (then text and jsonb strings are read in place).
fn database_is_utf8() -> bool {
    static UTF8: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *UTF8.get_or_init(|| {
        // SAFETY: the database's encoding is fixed for the life of the backend.
        unsafe { pg_sys::GetDatabaseEncoding() == pg_sys::pg_enc::PG_UTF8 as i32 }
    })
}

/// Transition function of `audience._affinity_collect`: like the public aggregate plus the
/// catalog's mapped property values of the row ([`Props`]; one text per row is much cheaper than
/// building and unpacking an array).
#[allow(clippy::too_many_arguments)]
fn _affinity_collect_sfunc(
    mut state: Internal,
    user_id: Option<&str>,
    item_id: Option<&str>,
    weight: Option<f64>,
    event_time: Option<TimestampWithTimeZone>,
    half_life: Option<Interval>,
    reference_time: Option<TimestampWithTimeZone>,
    n_props: Option<i32>,
    props: Props<'_>,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Internal {
    // A NULL weight is an event type the catalog does not map: the scan query leaves out that
    // filter on a table whose rows are (almost) all of mapped types, and the weight's CASE then
    // tells the other rows apart (`audience._build_query`; the query never passes NULL for a
    // mapped type). Such a row is not read, as if filtered out.
    if weight.is_none() {
        return state;
    }
    let n = n_props.unwrap_or(0).clamp(0, 1024) as usize;
    let acc = unsafe { state_mut(&mut state, fcinfo, n) };
    if n > acc.n_props() {
        // The state was created by a combine step without properties: widen it once.
        let old = std::mem::replace(acc, Accumulator::new(n));
        acc.merge(old);
    }
    // Catalogs rarely map more than a few properties: keep the per-row values on the stack.
    let mut small: [Option<&str>; 8] = [None; 8];
    let mut heap: Vec<Option<&str>> = Vec::new();
    let vals: &mut [Option<&str>] = if n <= small.len() {
        &mut small[..n]
    } else {
        heap.resize(n, None);
        &mut heap
    };
    let any = match props {
        Props::Text(Some(p)) if n > 0 => {
            if n == 1 {
                // One property: the text is its value (no separator to look for).
                vals[0] = (!p.is_empty()).then_some(p);
            } else {
                for (slot, v) in vals.iter_mut().zip(p.split(PROPS_SEPARATOR)) {
                    *slot = (!v.is_empty()).then_some(v);
                }
            }
            true
        }
        Props::Doc { doc, keys } if n > 0 => {
            if !doc.isnull {
                // An empty key maps nothing; an empty value is NULL, as in the text.
                // SAFETY: the argument is a non-null jsonb.
                let read = |key: &str| {
                    (!key.is_empty())
                        .then(|| unsafe { doc_field(doc, key) })
                        .flatten()
                        .filter(|v| !v.is_empty())
                };
                if n == 1 {
                    // One property: the text is its key (no separator to look for).
                    vals[0] = read(keys);
                } else {
                    for (slot, key) in vals.iter_mut().zip(keys.split(PROPS_SEPARATOR)) {
                        *slot = read(key);
                    }
                }
            }
            true
        }
        _ => false,
    };
    push_row(
        acc,
        user_id,
        item_id,
        weight,
        event_time,
        half_life,
        reference_time,
        any.then_some(&*vals),
    );
    state
}

#[pg_extern(parallel_safe)]
fn _affinity_combine(
    mut a: Internal,
    mut b: Internal,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Internal {
    unsafe {
        let Some(right) = b.get_mut::<AggState>() else {
            return a;
        };
        // Always into `a` (created in the aggregate's context when null): `b` lives only as long
        // as the input tuple it was read from.
        let left = state_mut(&mut a, fcinfo, 0);
        // The leader's combine steps run while the workers wait: sort and merge on its threads.
        if pg_sys::ParallelWorkerNumber < 0 {
            left.set_threads(crate::guc::threads());
        }
        match std::mem::replace(right, AggState::Acc(Accumulator::new(0))) {
            AggState::Unread(v, mapping) => {
                left.merge_view(v);
                drop(mapping);
            }
            AggState::Acc(acc) => left.merge(acc),
        }
    }
    a
}

#[pg_extern(strict, parallel_safe)]
fn _affinity_serial(mut state: Internal, fcinfo: pg_sys::FunctionCallInfo) -> Vec<u8> {
    let Some(acc) = (unsafe { acc_of(&mut state) }) else {
        return Accumulator::new(0).serialize();
    };
    if unsafe { partial_for_this_backend(fcinfo) } {
        let acc = std::mem::replace(acc, Accumulator::new(0));
        return local_partial_put(acc).to_vec();
    }
    acc.canonicalize();
    if acc.serialized_bytes_estimate() >= handoff::MIN_BYTES {
        if let Some(mut ticket) = unsafe { handoff_ticket() } {
            use std::io::Write;
            let written = handoff::write(Path::new(handoff::DIR), &ticket, |f| {
                acc.serialize_into(|b| f.write_all(b))
            });
            // Otherwise (a full disk, say) the bytes go through the tuple queue as before.
            if let Ok(len) = written {
                ticket.len = len;
                return ticket.encode().to_vec();
            }
        }
    }
    acc.serialize()
}

/// The ticket for handing a parallel worker's state to its leader in a file (its `len` set once
/// the file is written); `None` outside parallel workers (every other caller of the serialize
/// function may send the bytes elsewhere: Citus sends them to another server).
unsafe fn handoff_ticket() -> Option<handoff::Ticket> {
    thread_local! {
        static SEQ: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }
    unsafe {
        if pg_sys::ParallelWorkerNumber < 0 || pg_sys::MyProc.is_null() {
            return None;
        }
        let leader = (*pg_sys::MyProc).lockGroupLeader;
        if leader.is_null() || leader == pg_sys::MyProc {
            return None;
        }
        let seq = SEQ.with(|c| {
            c.set(c.get() + 1);
            c.get()
        });
        Some(handoff::Ticket {
            leader: (*leader).pid as u32,
            worker: pg_sys::MyProcPid as u32,
            seq,
            len: 0,
        })
    }
}

/// The first bytes of a partial state kept in this backend (see [`local_partial_put`]); never the
/// start of a serialized state (whose magic is [`MAGIC`](crate::affinity::accumulator::MAGIC)).
const LOCAL_MAGIC: [u8; 8] = *b"PGAlocal";

thread_local! {
    /// Partial states of this backend's own part of a parallel scan, by token, until the
    /// finalizing step of the same query takes them (cleared at the end of the transaction).
    static LOCAL_PARTIALS: RefCell<std::collections::HashMap<i64, Accumulator>> =
        RefCell::new(std::collections::HashMap::new());
    /// Whether this transaction has registered the clean-up of [`LOCAL_PARTIALS`] (once per
    /// transaction: a grouped aggregate keeps and takes a state per group).
    static LOCAL_CLEANUP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Partial states this backend has read from its parallel workers' files (see [`handoff`]).
    static STATES_FROM_FILES: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// How many partial states this backend has read from its parallel workers' files.
pub fn states_from_files() -> u64 {
    STATES_FROM_FILES.with(|c| c.get())
}

/// Whether the serialize function was called by a Partial Aggregate node of the leader of a
/// parallel plan (or of a partition-wise plan): its output goes to the Finalize Aggregate node of
/// the same backend, through Gather, and never leaves the process. Parallel workers, and any
/// caller that is not such a node (Citus's partial aggregates, which send the bytes to another
/// server, call it from their own functions), get the bytes.
unsafe fn partial_for_this_backend(fcinfo: pg_sys::FunctionCallInfo) -> bool {
    unsafe {
        if pg_sys::ParallelWorkerNumber >= 0 || fcinfo.is_null() {
            return false;
        }
        let ctx = (*fcinfo).context;
        if ctx.is_null() || (*ctx).type_ != pg_sys::NodeTag::T_AggState {
            return false;
        }
        (*(ctx as *mut pg_sys::AggState)).aggsplit == pg_sys::AggSplit::AGGSPLIT_INITIAL_SERIAL
    }
}

/// Keeps `acc` in this backend and returns the 16 bytes that stand for it (the leader's own
/// partial state is not encoded, copied and decoded again on its way to the combine step).
fn local_partial_put(acc: Accumulator) -> [u8; 16] {
    let token = next_token();
    register_cleanup();
    LOCAL_PARTIALS.with(|s| s.borrow_mut().insert(token, acc));
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&LOCAL_MAGIC);
    out[8..].copy_from_slice(&token.to_le_bytes());
    out
}

/// Registers, once per transaction, what its end drops: the partial states kept in this backend
/// that a failed query never took, and the files its parallel workers wrote for it and it never
/// read (see [`handoff`]; files an earlier process with the same pid left behind go with them).
/// Not at registration: a leader that takes no part in the scan registers when it reads its
/// first worker's file, while the others' files wait to be read.
fn register_cleanup() {
    if LOCAL_CLEANUP.with(|c| c.replace(true)) {
        return;
    }
    fn clean() {
        // SAFETY: MyProcPid is set at backend start.
        let pid = unsafe { pg_sys::MyProcPid } as u32;
        handoff::remove_for_leader(Path::new(handoff::DIR), pid);
    }
    for ev in [
        pgrx::PgXactCallbackEvent::Abort,
        pgrx::PgXactCallbackEvent::Commit,
        pgrx::PgXactCallbackEvent::Prepare,
    ] {
        pgrx::register_xact_callback(ev, || {
            LOCAL_PARTIALS.with(|s| s.borrow_mut().clear());
            LOCAL_CLEANUP.with(|c| c.set(false));
            clean();
        });
    }
}

/// The state that `bytes` (from [`local_partial_put`]) stand for; `None` when they are not such
/// bytes. An error when they are but the state is not here (another backend's, or taken).
fn local_partial_take(bytes: &[u8]) -> Option<Accumulator> {
    let token = i64::from_le_bytes(bytes.strip_prefix(&LOCAL_MAGIC)?.try_into().ok()?);
    let found = LOCAL_PARTIALS.with(|s| s.borrow_mut().remove(&token));
    Some(found.unwrap_or_else(|| {
        AudienceError::corrupt("affinity state kept by another session or already read")
            .hint(
                "Partial states of audience.affinity() are only read by the query that made them.",
            )
            .raise()
    }))
}

#[pg_extern(strict, parallel_safe)]
fn _affinity_deserial(
    bytes: &[u8],
    _unused: Internal,
    fcinfo: pg_sys::FunctionCallInfo,
) -> Internal {
    unsafe { agg_context(fcinfo) };
    if let Some(acc) = local_partial_take(bytes) {
        let ptr =
            PgMemoryContexts::CurrentMemoryContext.leak_and_drop_on_delete(AggState::Acc(acc));
        return Internal::from(Some(pg_sys::Datum::from(ptr)));
    }
    let mapping = handoff::Ticket::decode(bytes).map(|ticket| {
        register_cleanup();
        // SAFETY: MyProcPid is set at backend start.
        if ticket.leader != unsafe { pg_sys::MyProcPid } as u32 {
            AudienceError::corrupt("affinity state handed to another session")
                .hint("Partial states of audience.affinity() are only read by the query that made them.")
                .raise()
        }
        let mapping = handoff::Mapping::take(Path::new(handoff::DIR), &ticket).unwrap_or_else(|e| {
            AudienceError::new(
                PgSqlErrorCode::ERRCODE_IO_ERROR,
                format!("could not read a parallel worker's affinity state: {e}"),
            )
            .hint("The file a parallel worker wrote under base/pgsql_tmp was removed or changed; run the query again.")
            .raise()
        });
        STATES_FROM_FILES.with(|c| c.set(c.get() + 1));
        mapping
    });
    let bytes: &[u8] = match &mapping {
        Some(m) => m.bytes(),
        None => bytes,
    };
    let view = StateView::parse(bytes).unwrap_or_else(|e| {
        AudienceError::corrupt(format!("invalid affinity state: {e}"))
            .hint("The bytes must come from audience._affinity_serial().")
            .raise()
    });
    // SAFETY: only the lifetime changes; the value is allocated in the current (per-input-tuple)
    // memory context, which the bytes outlive (see `AggState::Unread`), and a mapping is moved
    // into the same value, after the view (its pages do not move when the `Mapping` does).
    let view: StateView<'static> = unsafe { std::mem::transmute(view) };
    let ptr = PgMemoryContexts::CurrentMemoryContext
        .leak_and_drop_on_delete(AggState::Unread(view, mapping));
    Internal::from(Some(pg_sys::Datum::from(ptr)))
}

/// The finished affinity of the aggregated rows as `{"user": {"item": affinity, ...}, ...}`.
#[pg_extern(parallel_safe)]
fn _affinity_final_jsonb(mut state: Internal) -> pgrx::JsonB {
    let acc = match unsafe { acc_of(&mut state) } {
        Some(acc) => std::mem::replace(acc, Accumulator::new(0)),
        None => Accumulator::new(0),
    };
    let aff = acc.finish().without_empty();
    let mut users = serde_json::Map::with_capacity(aff.users.len());
    for (u, name) in aff.users.iter().enumerate() {
        let (cols, vals) = aff.matrix.row(u);
        let mut items = serde_json::Map::with_capacity(cols.len());
        for (&c, &v) in cols.iter().zip(vals) {
            items.insert(
                aff.items[c as usize].clone(),
                serde_json::json!((v as f64 * 1e6).round() / 1e6),
            );
        }
        users.insert(name.clone(), serde_json::Value::Object(items));
    }
    pgrx::JsonB(serde_json::Value::Object(users))
}

thread_local! {
    static STASH: RefCell<Vec<(i64, Accumulator)>> = const { RefCell::new(Vec::new()) };
    static NEXT_TOKEN: RefCell<u32> = const { RefCell::new(0) };
}

/// A token no other live session can hand out: this backend's pid in the high 32 bits, a
/// per-backend counter in the low ones. A token that comes back from another session (the final
/// function ran elsewhere, as on a single-shard Citus table) is never found here, so it can never
/// match a stale state of this session.
fn next_token() -> i64 {
    // SAFETY: MyProcPid is set at backend start.
    let pid = unsafe { pg_sys::MyProcPid } as u32 as i64;
    let n = NEXT_TOKEN.with(|t| {
        let mut t = t.borrow_mut();
        *t = t.wrapping_add(1).max(1);
        *t
    });
    (pid << 32) | n as i64
}

/// Whether `token` was handed out by this backend (see [`next_token`]).
pub fn token_is_ours(token: i64) -> bool {
    // SAFETY: as in next_token.
    (token >> 32) == unsafe { pg_sys::MyProcPid } as u32 as i64
}

/// Moves the finished state into this backend's stash and returns a token for `take_stashed`.
#[pg_extern(parallel_safe)]
fn _affinity_final_stash(mut state: Internal) -> i64 {
    let acc = match unsafe { acc_of(&mut state) } {
        Some(acc) => std::mem::replace(acc, Accumulator::new(0)),
        None => Accumulator::new(0),
    };
    let token = next_token();
    STASH.with(|s| {
        let mut s = s.borrow_mut();
        // Only the most recent states are kept: a direct caller that never takes them cannot
        // grow the backend without bound.
        if s.len() >= 2 {
            s.remove(0);
        }
        s.push((token, acc));
    });
    token
}

/// The finished state as bytes: what `audience.build` reads when the final function ran in
/// another session (its stash token is not found here), e.g. on Citus.
#[pg_extern(parallel_safe)]
fn _affinity_final_bytes(mut state: Internal) -> Vec<u8> {
    match unsafe { acc_of(&mut state) } {
        Some(acc) => acc.serialize(),
        None => Accumulator::new(0).serialize(),
    }
}

/// Takes a stashed state (see `_affinity_final_stash`).
pub fn take_stashed(token: i64) -> Option<Accumulator> {
    STASH.with(|s| {
        let mut s = s.borrow_mut();
        let pos = s.iter().position(|(t, _)| *t == token)?;
        Some(s.remove(pos).1)
    })
}

extension_sql!(
    r#"
CREATE FUNCTION audience."_affinity_collect_sfunc"(
	"state" internal,
	"user_id" TEXT,
	"item_id" TEXT,
	"weight" double precision,
	"event_time" timestamp with time zone,
	"half_life" interval,
	"reference_time" timestamp with time zone,
	"n_props" INT,
	"props" TEXT,
	"doc" jsonb,
	"keys" TEXT
) RETURNS internal
PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_affinity_collect_sfunc_wrapper';
"#,
    name = "affinity_collect_sfunc",
    requires = ["schema"]
);

extension_sql!(
    r#"
CREATE FUNCTION audience."_affinity_collect_sfunc"(
	"state" internal,
	"user_id" TEXT,
	"item_id" TEXT,
	"weight" double precision,
	"event_time" timestamp with time zone,
	"half_life" interval,
	"reference_time" timestamp with time zone,
	"n_props" INT,
	"props" TEXT,
	"doc" jsonb,
	"keys" TEXT,
	"user_num" bigint,
	"item_num" bigint
) RETURNS internal
PARALLEL SAFE
LANGUAGE c
AS 'MODULE_PATHNAME', '_affinity_collect_sfunc_wrapper';
"#,
    name = "affinity_collect_sfunc_numeric_ids",
    requires = ["affinity_collect_sfunc"]
);

extension_sql!(
    r#"
CREATE AGGREGATE audience.affinity(user_id text, item_id text, weight double precision,
                                   event_time timestamptz, half_life interval, reference_time timestamptz) (
    sfunc = audience._affinity_sfunc,
    stype = internal,
    finalfunc = audience._affinity_final_jsonb,
    finalfunc_modify = read_write,
    combinefunc = audience._affinity_combine,
    serialfunc = audience._affinity_serial,
    deserialfunc = audience._affinity_deserial,
    parallel = safe
);
COMMENT ON AGGREGATE audience.affinity(text, text, double precision, timestamptz, interval, timestamptz) IS
'User-item affinity: sum of weight * 2^(-(reference_time - event_time) / half_life) per (user, item), as jsonb {user: {item: affinity}}. NULL half_life: no decay. NULL reference_time: the latest event time. Parallel safe.';

CREATE AGGREGATE audience._affinity_collect(user_id text, item_id text, weight double precision,
                                            event_time timestamptz, half_life interval, reference_time timestamptz,
                                            n_props integer, props text, doc jsonb, keys text) (
    sfunc = audience._affinity_collect_sfunc,
    stype = internal,
    finalfunc = audience._affinity_final_stash,
    finalfunc_modify = read_write,
    combinefunc = audience._affinity_combine,
    serialfunc = audience._affinity_serial,
    deserialfunc = audience._affinity_deserial,
    parallel = safe
);

CREATE AGGREGATE audience._affinity_collect_bytes(user_id text, item_id text, weight double precision,
                                                  event_time timestamptz, half_life interval, reference_time timestamptz,
                                                  n_props integer, props text, doc jsonb, keys text) (
    sfunc = audience._affinity_collect_sfunc,
    stype = internal,
    finalfunc = audience._affinity_final_bytes,
    finalfunc_modify = read_write,
    combinefunc = audience._affinity_combine,
    serialfunc = audience._affinity_serial,
    deserialfunc = audience._affinity_deserial,
    parallel = safe
);

-- 0.9.0: the same with integer ids (user_num, item_num) for a NULL user_id or item_id: the
-- build's scan passes an integer column as it is, not cast to text per row.
CREATE AGGREGATE audience._affinity_collect(user_id text, item_id text, weight double precision,
                                            event_time timestamptz, half_life interval, reference_time timestamptz,
                                            n_props integer, props text, doc jsonb, keys text,
                                            user_num bigint, item_num bigint) (
    sfunc = audience._affinity_collect_sfunc,
    stype = internal,
    finalfunc = audience._affinity_final_stash,
    finalfunc_modify = read_write,
    combinefunc = audience._affinity_combine,
    serialfunc = audience._affinity_serial,
    deserialfunc = audience._affinity_deserial,
    parallel = safe
);

CREATE AGGREGATE audience._affinity_collect_bytes(user_id text, item_id text, weight double precision,
                                                  event_time timestamptz, half_life interval, reference_time timestamptz,
                                                  n_props integer, props text, doc jsonb, keys text,
                                                  user_num bigint, item_num bigint) (
    sfunc = audience._affinity_collect_sfunc,
    stype = internal,
    finalfunc = audience._affinity_final_bytes,
    finalfunc_modify = read_write,
    combinefunc = audience._affinity_combine,
    serialfunc = audience._affinity_serial,
    deserialfunc = audience._affinity_deserial,
    parallel = safe
);
"#,
    name = "affinity_aggregates",
    requires = [
        _affinity_sfunc,
        "affinity_collect_sfunc",
        "affinity_collect_sfunc_numeric_ids",
        _affinity_combine,
        _affinity_serial,
        _affinity_deserial,
        _affinity_final_jsonb,
        _affinity_final_stash,
        _affinity_final_bytes
    ]
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Integer ids in decimal as PostgreSQL's `int8out` writes them (what `::text` gives).
    #[test]
    fn decimal_is_the_integer_text() {
        let mut buf = [0u8; I64_DIGITS];
        let mut v: i64 = 1;
        let mut cases = vec![
            0,
            1,
            -1,
            9,
            10,
            -10,
            99,
            100,
            i64::MAX,
            i64::MIN,
            i64::MIN + 1,
        ];
        for _ in 0..64 {
            cases.extend([v, -v, v - 1, v + 1]);
            v = v.wrapping_mul(7).wrapping_add(3);
        }
        for c in cases {
            assert_eq!(decimal(c, &mut buf), c.to_string(), "{c}");
        }
    }
}
