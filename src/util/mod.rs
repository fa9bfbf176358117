//! Small std-only helpers shared by the core: a fast non-cryptographic hasher for interning
//! tables ([`hash`]) and a little-endian byte codec for aggregate states and model blobs ([`codec`]).

pub mod codec;
pub mod hash;
