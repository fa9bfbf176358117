//! Small SPI helpers shared by the SQL layer.
use crate::error::OrRaise;
use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;
use pgrx::spi::SpiHeapTupleData;

/// `args![a, b]` builds the argument slice of an SPI call from Rust values.
macro_rules! args {
    ($($e:expr),* $(,)?) => { [$(::pgrx::datum::DatumWithOid::from($e)),*] };
}
pub(crate) use args;

/// Runs a read-only query and maps each row.
pub fn query_rows<T>(
    query: &str,
    args: &[DatumWithOid],
    f: impl Fn(&SpiHeapTupleData) -> T,
) -> Vec<T> {
    Spi::connect(|client| {
        let table = client.select(query, None, args).or_raise("query");
        table.map(|row| f(&row)).collect()
    })
}

/// Runs `f` with `jit = off`, restored afterwards as a function's `SET` clause restores its
/// settings (by the transaction's or subtransaction's abort when `f` raises an error). For the
/// small queries a call runs against the user's tables (the check for events since the build):
/// when the planner expects many rows there, JIT compiling them costs 50-200 ms a call.
pub fn without_jit<T>(f: impl FnOnce() -> T) -> T {
    // SAFETY: plain GUC calls in a backend, paired as fmgr's SET clause handling pairs them.
    let level = unsafe {
        let level = pg_sys::NewGUCNestLevel();
        pg_sys::set_config_option(
            c"jit".as_ptr(),
            c"off".as_ptr(),
            pg_sys::GucContext::PGC_USERSET,
            pg_sys::GucSource::PGC_S_SESSION,
            pg_sys::GucAction::GUC_ACTION_SAVE,
            true,
            0,
            false,
        );
        level
    };
    let out = f();
    // SAFETY: closes the nesting level opened above.
    unsafe { pg_sys::AtEOXact_GUC(true, level) };
    out
}
