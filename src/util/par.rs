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
    let parts: Vec<(usize, &mut [T])> = out
        .chunks_mut(chunk)
        .enumerate()
        .map(|(k, part)| (k * chunk, part))
        .collect();
    par_map(parts, |(first, part)| f(first, part));
}

/// `f` of every part, in order, each part on its own thread (scoped threads doing pure
/// arithmetic; the calling thread takes the first part).
pub fn par_map<P: Send, R: Send>(parts: Vec<P>, f: impl Fn(P) -> R + Sync) -> Vec<R> {
    if parts.len() <= 1 {
        return parts.into_iter().map(f).collect();
    }
    std::thread::scope(|scope| {
        let f = &f;
        let mut parts = parts.into_iter();
        let first = parts.next();
        let others: Vec<_> = parts.map(|p| scope.spawn(move || f(p))).collect();
        let mut out: Vec<R> = first.into_iter().map(f).collect();
        for h in others {
            out.push(h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)));
        }
        out
    })
}
