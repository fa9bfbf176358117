//! Small std-only helpers shared by the core: a fast non-cryptographic hasher for interning
//! tables ([`hash`]), a little-endian byte codec for aggregate states and model blobs ([`codec`]) and
//! a small deterministic random generator ([`rand`]), compressed sparse row matrices ([`csr`]),
//! interrupt polling for long loops ([`interrupt`]), buffers on huge pages ([`pages`]) and cache
//! prefetch hints ([`prefetch`], [`prefetch_l2`]).

pub mod buf;
pub mod codec;
pub mod csr;
pub mod hash;
pub mod interrupt;
pub mod pages;
pub mod par;
pub mod rand;

/// Hints the CPU to load the cache line holding `p` (no-op off x86_64; never faults).
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    prefetch_to::<false, T>(p)
}

/// Hints the CPU to load the cache line holding `p` into the second-level cache, not the first:
/// for data wanted a few hundred cycles later, which would otherwise take a first-level miss
/// buffer (of which a core has few) all that time.
#[inline(always)]
pub fn prefetch_l2<T>(p: *const T) {
    prefetch_to::<true, T>(p)
}

/// [`prefetch`], or [`prefetch_l2`] when `L2`.
#[inline(always)]
pub fn prefetch_to<const L2: bool, T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching is a hint; it does not dereference the pointer architecturally and cannot
    // fault, whatever the address.
    #[allow(unused_unsafe)]
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        if L2 {
            _mm_prefetch::<_MM_HINT_T1>(p as *const i8);
        } else {
            _mm_prefetch::<_MM_HINT_T0>(p as *const i8);
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
