//! The stored model, one layer above the core it stores: the trained parts ([`crate::model`]) with
//! the scoring knobs ([`crate::score`]), in the extension's binary format ([`stored`]) and as the
//! memory-mapped serving image every backend reads in place ([`image`]). Pure Rust.
pub mod image;
pub mod stored;
