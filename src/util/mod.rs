//! Small std-only helpers shared by the core: a fast non-cryptographic hasher for interning
//! tables ([`hash`]), a little-endian byte codec for aggregate states and model blobs ([`codec`]) and
//! a small deterministic random generator ([`rand`]), compressed sparse row matrices ([`csr`]),
//! interrupt polling for long loops ([`interrupt`]) and buffers on huge pages ([`pages`]).

pub mod buf;
pub mod codec;
pub mod csr;
pub mod hash;
pub mod interrupt;
pub mod pages;
pub mod par;
pub mod rand;
