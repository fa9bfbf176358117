//! Small std-only helpers shared by the core: a fast non-cryptographic hasher for interning
//! tables ([`hash`]), a little-endian byte codec for aggregate states and model blobs ([`codec`]) and
//! a small deterministic random generator ([`rand`]), and interrupt polling for long loops
//! ([`interrupt`]).

pub mod buf;
pub mod codec;
pub mod hash;
pub mod interrupt;
pub mod rand;
