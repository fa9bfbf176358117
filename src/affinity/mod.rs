//! User-item affinity: the pure accumulator (weight, decay, merge, bytes) and the pgrx support
//! functions of the `audience.affinity` aggregate.
pub mod accumulator;
pub mod aggregate;
