//! Top-k selection of users by score.

use std::cmp::Ordering;

/// Score descending, then user index ascending (user indices follow id-text order, so this is the
/// SQL `ORDER BY score DESC, id` tie-break). Inputs never contain NaN; -0.0 and 0.0 are equal.
#[inline]
pub fn rank_order(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    b.1.partial_cmp(&a.1)
        .unwrap_or(Ordering::Equal)
        .then(a.0.cmp(&b.0))
}

/// The `k` best users among those with `keep(user)`, as `(user, score)` sorted by score descending
/// then user index ascending. NaN scores are never returned. O(n + k log k).
/// Generic over `keep` so that the predicate is inlined into the two passes over all users.
pub fn top_k<F: Fn(usize) -> bool + ?Sized>(scores: &[f32], k: usize, keep: &F) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    // A histogram of the scores' top 16 key bits finds the bucket holding the k-th best, so only
    // the users at or above it (about k) are collected and sorted: O(n) with a small constant,
    // instead of a selection over every user.
    let mut hist = vec![0u32; 1 << 16];
    let mut n = 0usize;
    for (u, &s) in scores.iter().enumerate() {
        if !s.is_nan() && keep(u) {
            hist[(order_key(s) >> 16) as usize] += 1;
            n += 1;
        }
    }
    let mut floor = 0u32;
    if n > k {
        let mut seen = 0usize;
        for b in (0..hist.len()).rev() {
            seen += hist[b] as usize;
            if seen >= k {
                floor = b as u32;
                break;
            }
        }
    }
    let mut cand: Vec<(u32, f32)> = scores
        .iter()
        .enumerate()
        .filter(|&(u, &s)| !s.is_nan() && (order_key(s) >> 16) >= floor && keep(u))
        .map(|(u, &s)| (u as u32, s))
        .collect();
    if cand.len() > k {
        cand.select_nth_unstable_by(k - 1, rank_order);
        cand.truncate(k);
    }
    cand.sort_unstable_by(rank_order);
    cand
}

/// A u32 whose order is the float order (non-NaN floats; -0.0 counts as 0.0, so equal scores
/// always have equal keys).
#[inline]
fn order_key(s: f32) -> u32 {
    let b = if s == 0.0 { 0u32 } else { s.to_bits() };
    if b >> 31 == 1 {
        !b
    } else {
        b | 0x8000_0000
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_score_then_index() {
        let s = [1.0, 3.0, 2.0, 3.0, 0.5, 2.0];
        assert_eq!(top_k(&s, 3, &|_| true), vec![(1, 3.0), (3, 3.0), (2, 2.0)]);
        assert_eq!(
            top_k(&s, 4, &|_| true),
            vec![(1, 3.0), (3, 3.0), (2, 2.0), (5, 2.0)]
        );
        // Ties at the boundary keep the smaller index.
        let t = [5.0f32; 10];
        assert_eq!(top_k(&t, 3, &|_| true), vec![(0, 5.0), (1, 5.0), (2, 5.0)]);
        // -0.0 and 0.0 tie.
        assert_eq!(top_k(&[-0.0, 0.0], 1, &|_| true), vec![(0, -0.0)]);
        assert_eq!(
            top_k(&[f32::NEG_INFINITY, -1.0], 2, &|_| true),
            vec![(1, -1.0), (0, f32::NEG_INFINITY)]
        );
    }

    #[test]
    fn edge_cases() {
        let s = [1.0, f32::NAN, 2.0];
        assert_eq!(top_k(&s, 10, &|_| true), vec![(2, 2.0), (0, 1.0)]);
        assert!(top_k(&s, 0, &|_| true).is_empty());
        assert!(top_k(&s, 2, &|_| false).is_empty());
        assert!(top_k(&[], 2, &|_| true).is_empty());
        assert_eq!(top_k(&s, 1, &|u| u != 2), vec![(0, 1.0)]);
    }

    #[test]
    fn matches_full_sort_on_pseudo_random_input() {
        let mut x = 12345u64;
        let s: Vec<f32> = (0..5000)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((x >> 33) % 50) as f32
            })
            .collect();
        let keep = |u: usize| !u.is_multiple_of(3);
        let mut all: Vec<(u32, f32)> = s
            .iter()
            .enumerate()
            .filter(|p| keep(p.0))
            .map(|(u, &v)| (u as u32, v))
            .collect();
        all.sort_by(rank_order);
        for k in [1, 7, 100, 3333, 4000] {
            assert_eq!(
                top_k(&s, k, &keep),
                all[..k.min(all.len())].to_vec(),
                "k={k}"
            );
        }
    }
}
