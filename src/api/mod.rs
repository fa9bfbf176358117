//! The thin SQL layer: `#[pg_extern]` wrappers that parse arguments, call the core and map errors.
pub mod build;
pub mod cache;
pub mod evaluate;
pub mod fresh;
pub mod guard;
pub mod incremental;
pub mod params;
pub mod progress;
pub mod recommend;
pub mod scan;
pub mod shared;
pub mod sizes;
pub mod spi_util;
mod tests;
pub mod tuning;
