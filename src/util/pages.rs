//! Large buffers on transparent huge pages.
//!
//! Training and scoring read big arrays (factor matrices, kNN tables) at random positions: with
//! 4 KiB pages nearly every such read of a 100 MB array also misses the TLB. Where the kernel
//! leaves huge pages to the program (`transparent_hugepage/enabled = madvise`, Debian's default),
//! [`zeroed`] asks for them before the buffer is first touched. A hint only: nothing changes
//! where huge pages are off or unavailable.

/// Buffers smaller than this stay as they are (a huge page is 2 MiB).
const MIN_BYTES: usize = 4 << 20;

/// A zeroed vector of `n` values whose memory is advised to be backed by huge pages.
pub fn zeroed<T: Copy + Default>(n: usize) -> Vec<T> {
    let v = vec![T::default(); n];
    advise(&v);
    v
}

/// Advises the pages of `v` (those wholly inside it) to be huge pages from their first touch.
pub fn advise<T>(v: &[T]) {
    let bytes = std::mem::size_of_val(v);
    if bytes < MIN_BYTES {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = v.as_ptr() as usize;
        let first = start.div_ceil(PAGE) * PAGE;
        let end = (start + bytes) / PAGE * PAGE;
        if end > first {
            // SAFETY: the range lies inside memory this process owns (the slice); MADV_HUGEPAGE
            // changes only how it is backed, never its contents. Errors are ignored (a hint).
            unsafe {
                libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeroed_is_zeroed_at_any_size() {
        for n in [0usize, 1, 1000, (MIN_BYTES / 4) + 12345] {
            let v: Vec<f32> = zeroed(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 0.0));
        }
    }
}
