//! Audience scoring, pure Rust (no pgrx): the hybrid own-share / collaborative score
//! ([`hybrid`]), the size and engagement rules of a request ([`audience`]), top-k selection with the SQL tie-break ([`topk`]), and holdout evaluation and
//! parameter tuning ([`metrics`]).
pub mod audience;
pub mod explain;
pub mod formula;
pub mod hybrid;
pub mod metrics;
pub mod own;
pub mod params;
pub mod sample;
pub mod serve;
pub mod topk;
pub mod tuning;
