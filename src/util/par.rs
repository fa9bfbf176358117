//! Data-parallel loops of the core on scoped threads that do pure arithmetic (no Postgres calls).

/// Runs `f(first_user, chunk)` over `threads` contiguous chunks of `out` in parallel (scoped
/// threads doing pure arithmetic; the calling thread takes the first chunk).
pub fn par_chunks<T: Send>(out: &mut [T], threads: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    let n = out.len();
    let threads = threads.clamp(1, 64).min(n.max(1));
    if threads <= 1 || n < 65_536 {
        f(0, out);
        return;
    }
    let chunk = n.div_ceil(threads);
    std::thread::scope(|scope| {
        let mut parts = out.chunks_mut(chunk).enumerate();
        let first = parts.next();
        for (k, part) in parts {
            let f = &f;
            scope.spawn(move || f(k * chunk, part));
        }
        if let Some((_, part)) = first {
            f(0, part);
        }
    });
}
