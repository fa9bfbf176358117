//! The collaborative models, pure Rust (no pgrx): sparse matrices, implicit-feedback ALS and
//! BM25-weighted item-kNN.
pub mod als;
pub mod als_row;
/// Sparse matrices live in `util` (the affinity aggregate builds them too); re-exported here.
pub use crate::util::csr;
pub mod days;
pub mod fresh;
pub mod knn;
pub mod refresh;
pub mod train;
pub mod transplant;
