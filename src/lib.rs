//! pg_audience: product-based audiences inside PostgreSQL.
//!
//! Layout: `affinity` (accumulator + aggregate support), `model` (CSR, ALS, item-kNN, stored
//! model), `score` (hybrid scoring, top-k, metrics) and `util` are pure Rust that plain
//! `cargo test` covers; `api` is the thin SQL layer; `sql/` holds the tables, the catalog
//! functions (PL/pgSQL) and the demo generator.
use pgrx::prelude::*;

pub mod affinity;
pub mod api;
pub mod error;
pub mod guc;
pub mod model;
pub mod score;
pub mod store;
pub mod util;

::pgrx::pg_module_magic!(name, version);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    // Errors raised inside SPI calls come back through a Rust panic; with RUST_BACKTRACE set in
    // the server's environment pgrx would append a Rust backtrace to the user's DETAIL line.
    // Keep error text clean unless RUST_LIB_BACKTRACE is set explicitly.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        std::env::set_var("RUST_LIB_BACKTRACE", "0");
    }
    guc::init();
    util::interrupt::set_hook(raise_pending_interrupt);
}

/// The core's interrupt hook: raises a pending cancel, timeout or terminate (backend thread only).
fn raise_pending_interrupt() {
    pgrx::check_for_interrupts!();
}

extension_sql_file!("../sql/schema.sql", name = "schema", bootstrap);
extension_sql_file!(
    "../sql/catalog.sql",
    name = "catalog",
    requires = ["schema"]
);
extension_sql_file!(
    "../sql/demo_shop.sql",
    name = "demo_shop",
    requires = ["schema"]
);
extension_sql_file!("../sql/audiences.sql", name = "audiences", finalize);

/// The extension's version, as installed.
#[pg_extern(immutable, parallel_safe)]
#[search_path(pg_catalog, @extschema@)]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use pgrx::prelude::*;

    #[pg_test]
    fn version_matches_cargo() {
        let v = Spi::get_one::<String>("SELECT audience.version()").unwrap();
        assert_eq!(v.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    }
}

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
