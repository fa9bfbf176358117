//! User-item affinity: the pure accumulator (weight, decay, merge, bytes) and the pgrx support
//! functions of the `audience.affinity` aggregate.
pub mod accumulator;
pub mod aggregate;
pub mod handoff;
pub mod interner;
pub mod jsonb;
pub mod prop;
pub mod result;
pub mod state_codec;
