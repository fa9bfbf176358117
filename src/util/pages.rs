//! Large buffers on transparent huge pages.
//!
//! ALS reads the other side's factor vectors at random positions (a 1M-user matrix of 32 factors
//! is 128 MB): with 4 KiB pages nearly every such read also misses the TLB. Where the kernel
//! leaves huge pages to the program (`transparent_hugepage/enabled = madvise`, Debian's default),
//! [`filled`] asks for them before the buffer is first touched. A hint only: nothing changes
//! where huge pages are off or unavailable.

/// Buffers smaller than this stay as they are (a huge page is 2 MiB).
const MIN_BYTES: usize = 4 << 20;

/// A zeroed vector of `n` values whose memory is advised to be backed by huge pages.
pub fn zeroed<T: Copy + Default>(n: usize) -> Vec<T> {
    filled(n, T::default())
}

/// A vector of `n` copies of `v` whose memory is advised to be backed by huge pages (advised
/// before it is written, so that its pages are huge from their first touch).
pub fn filled<T: Clone>(n: usize, v: T) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(n);
    advise_range(
        out.as_ptr() as usize,
        n.saturating_mul(std::mem::size_of::<T>()),
    );
    out.resize(n, v);
    out
}

/// An empty vector with room for `n` values, whose memory is advised to be backed by huge pages
/// (scratch space filled right after: a fresh large allocation is otherwise faulted in 4 KiB at a
/// time, and given back to the system when dropped).
pub fn with_capacity<T>(n: usize) -> Vec<T> {
    let out: Vec<T> = Vec::with_capacity(n);
    advise_range(
        out.as_ptr() as usize,
        n.saturating_mul(std::mem::size_of::<T>()),
    );
    out
}

/// A copy of `s` in memory advised to be backed by huge pages.
pub fn copied<T: Copy>(s: &[T]) -> Vec<T> {
    let mut out = with_capacity(s.len());
    out.extend_from_slice(s);
    out
}

/// Advises the not yet used capacity of `v` (after a `reserve`) to be backed by huge pages.
pub fn advise_spare<T>(v: &Vec<T>) {
    let size = std::mem::size_of::<T>();
    advise_range(
        v.as_ptr() as usize + v.len() * size,
        (v.capacity() - v.len()).saturating_mul(size),
    );
}

/// Advises the pages wholly inside `[start, start + bytes)` to be huge pages from their first
/// touch.
fn advise_range(start: usize, bytes: usize) {
    if bytes < MIN_BYTES {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let first = start.div_ceil(PAGE) * PAGE;
        let end = (start + bytes) / PAGE * PAGE;
        if end > first {
            // SAFETY: the range lies inside memory this process allocated; MADV_HUGEPAGE
            // changes only how it is backed, never its contents. Errors are ignored (a hint).
            unsafe {
                libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = start;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_at_any_size() {
        for n in [0usize, 1, 1000, (MIN_BYTES / 4) + 12345] {
            let v: Vec<f32> = zeroed(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 0.0));
            let w: Vec<(u32, u8)> = filled(n, (7, 1));
            assert_eq!(w.len(), n);
            assert!(w.iter().all(|&x| x == (7, 1)));
        }
    }

    #[test]
    fn advised_scratch_keeps_its_contents() {
        for n in [0usize, 3, (MIN_BYTES / 8) + 777] {
            let src: Vec<u64> = (0..n as u64).map(|x| x * 3 + 1).collect();
            let c = copied(&src);
            assert_eq!(c, src);
            let mut v: Vec<u64> = with_capacity(n);
            assert!(v.is_empty() && v.capacity() >= n);
            v.extend_from_slice(&src);
            v.reserve_exact(2 * n + 1);
            advise_spare(&v);
            v.extend_from_slice(&src);
            assert_eq!(v.len(), 2 * n);
            assert_eq!(&v[..n], &src[..]);
            assert_eq!(&v[n..], &src[..]);
        }
    }
}
