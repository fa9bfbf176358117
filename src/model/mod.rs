//! The collaborative models, pure Rust (no pgrx): sparse matrices, implicit-feedback ALS and
//! BM25-weighted item-kNN.
pub mod als;
pub mod csr;
pub mod days;
pub mod fresh;
pub mod image;
pub mod knn;
pub mod stored;
pub mod train;
pub mod transplant;
