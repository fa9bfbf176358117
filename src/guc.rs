//! Every `audience.*` setting. A setting exists once the library is loaded (`_PG_init`).
use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Threads a build may use for training (the backend's own thread included). Training threads
/// run pure Rust only; they never call into Postgres.
pub static THREADS: GucSetting<i32> = GucSetting::<i32>::new(2);

/// Per-backend cap, in MB, on cached models used by recommend_audience (the last model is kept
/// even when larger).
pub static CACHE_MB: GucSetting<i32> = GucSetting::<i32>::new(1024);

/// Memory, in MB, a build may allocate for training beyond the affinity it scanned (0 = the
/// memory the operating system reports available).
pub static BUILD_MEMORY_MB: GucSetting<i32> = GucSetting::<i32>::new(0);

/// Whether backends serve audiences from one shared, memory-mapped copy of each model (a file
/// under the data directory) instead of each decoding its own.
pub static SHARED_MODELS: GucSetting<bool> = GucSetting::<bool>::new(true);

/// How the build's scan hands its state over (see `api::build::ScanState`).
pub static SCAN_STATE: GucSetting<crate::api::build::ScanState> =
    GucSetting::<crate::api::build::ScanState>::new(crate::api::build::ScanState::Auto);

/// How much worse (relative) than the active model a guarded build's new model may rank the
/// engagements since the active model's build and still be activated.
pub static GUARD_TOLERANCE: GucSetting<f64> = GucSetting::<f64>::new(0.05);

/// The largest share of the engagement occasions since the active model one user may hold for a
/// guarded build's model to be activated (a bot, or a duplicated feed, would top every audience).
pub static GUARD_MAX_USER_SHARE: GucSetting<f64> = GucSetting::<f64>::new(0.2);

pub fn init() {
    GucRegistry::define_float_guc(
        c"audience.guard_max_user_share",
        c"Sets the largest share of the engagement occasions since the active model one user may hold for a guarded build to activate its model.",
        c"A bot or a duplicated feed would put one user at the top of every audience. Checked when at least 1000 occasions arrived.",
        &GUARD_MAX_USER_SHARE,
        0.0,
        1.0,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"audience.guard_tolerance",
        c"Sets how much worse, relative, a guarded build's new model may score than the active one and still be activated.",
        c"0.05: refused when its score is below 95% of the active model's on the events since that model's build.",
        &GUARD_TOLERANCE,
        0.0,
        1.0,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_enum_guc(
        c"audience.scan_state",
        c"How a build's scan hands the affinity state to the build: auto or bytes.",
        c"auto: through the backend (no copy), falling back to bytes when the aggregate's final step ran in another session (Citus); bytes: always one serialized copy.",
        &SCAN_STATE,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_bool_guc(
        c"audience.shared_models",
        c"Serves audiences from one memory-mapped copy of each model shared by all backends.",
        c"The copy is a file under the data directory (pg_audience/), written from the stored model when missing. Off: each backend decodes its own copy.",
        &SHARED_MODELS,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"audience.build_memory_mb",
        c"Sets the memory, in MB, a model build may use for training (0: what the system has available).",
        c"A build whose estimate exceeds it fails with 54000 before allocating.",
        &BUILD_MEMORY_MB,
        0,
        i32::MAX,
        GucContext::Suset,
        GucFlags::UNIT_MB,
    );
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
