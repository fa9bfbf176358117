//! Every `audience.*` setting. A setting exists once the library is loaded (`_PG_init`).
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Threads a build may use for training (the backend's own thread included). Training threads
/// run pure Rust only; they never call into Postgres.
pub static THREADS: GucSetting<i32> = GucSetting::<i32>::new(2);

/// Per-backend cap, in MB, on cached models used by recommend_audience (the last model is kept
/// even when larger).
pub static CACHE_MB: GucSetting<i32> = GucSetting::<i32>::new(1024);

pub fn init() {
    GucRegistry::define_int_guc(
        c"audience.threads",
        c"Sets the number of threads a model build trains with.",
        c"Valid range is 1..64. The backend's own thread counts as one.",
        &THREADS,
        1,
        64,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"audience.model_cache_mb",
        c"Sets the memory, in MB, a backend may keep for cached models.",
        c"Models larger than this are loaded for each call instead of kept.",
        &CACHE_MB,
        0,
        1_048_576,
        GucContext::Suset,
        GucFlags::UNIT_MB,
    );
    #[cfg(not(any(feature = "pg13", feature = "pg14")))]
    unsafe {
        pgrx::pg_sys::MarkGUCPrefixReserved(c"audience".as_ptr());
    }
}

pub fn threads() -> usize {
    THREADS.get().max(1) as usize
}
