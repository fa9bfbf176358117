//! Top-k selection of users by score.

use crate::util::par::par_map;
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
pub fn top_k<F: Fn(usize) -> bool + Sync + ?Sized>(
    scores: &[f32],
    k: usize,
    keep: &F,
) -> Vec<(u32, f32)> {
    top_k_threads(scores, k, keep, 1)
}

/// Users per thread below which [`top_k_threads`] stays on the calling thread.
const PAR_MIN: usize = 1 << 16;

/// Every how many users [`top_k_threads`] samples for its first guess of the floor.
const SAMPLE_STRIDE: usize = 8;

/// Users below which [`top_k_threads`] counts every user instead of a sample.
const SAMPLE_MIN: usize = 1 << 17;

/// [`top_k`] with its passes over the users split among `threads` threads (the same result for
/// any number of threads).
///
/// A histogram of the scores' top 16 key bits finds the bucket (the floor) holding the k-th best,
/// so only the users at or above it (about k) are collected and sorted: O(n) with a small
/// constant, instead of a selection over every user. On many users the histogram counts every
/// [`SAMPLE_STRIDE`]-th user only, with a margin for the sample's error, and every user is
/// counted only when fewer than `k` kept users turn out to be at or above that floor: the result
/// is the same either way (every user at or above a floor that at least `k` reach is collected).
pub fn top_k_threads<F: Fn(usize) -> bool + Sync + ?Sized>(
    scores: &[f32],
    k: usize,
    keep: &F,
    threads: usize,
) -> Vec<(u32, f32)> {
    if k == 0 {
        return Vec::new();
    }
    let threads = threads.clamp(1, 64).min(scores.len() / PAR_MIN).max(1);
    let chunk = scores.len().div_ceil(threads).max(1);
    // Counts of the kept users' keys by their top 16 bits, of every `stride`-th user (users
    // `first + j` with `(first + j) % stride == 0`).
    let histogram = |first: usize, part: &[f32], stride: usize| {
        let mut hist = vec![0u32; 1 << 16];
        let mut n = 0usize;
        let skip = (stride - first % stride) % stride;
        for (j, &s) in part.iter().enumerate().skip(skip).step_by(stride) {
            if !s.is_nan() && keep(first + j) {
                hist[(order_key(s) >> 16) as usize] += 1;
                n += 1;
            }
        }
        (hist, n)
    };
    // Candidates as one integer each ([`rank_key`]: integer sorts are several times faster than
    // comparing float pairs).
    let collect = |first: usize, part: &[f32], floor: u32| -> Vec<u64> {
        part.iter()
            .enumerate()
            .filter(|&(j, &s)| !s.is_nan() && (order_key(s) >> 16) >= floor && keep(first + j))
            .map(|(j, &s)| rank_key(s, (first + j) as u32))
            .collect()
    };
    let parts: Vec<(usize, &[f32])> = scores
        .chunks(chunk)
        .enumerate()
        .map(|(c, p)| (c * chunk, p))
        .collect();
    // The floor whose bucket and those above hold at least `want` counted users (0 when all
    // counted users are fewer than that: every kept user is a candidate).
    let floor_of = |stride: usize, want: usize| {
        let (mut hist, mut n) = (vec![0u32; 1 << 16], 0usize);
        for (h, m) in par_map(parts.clone(), |(first, part)| {
            histogram(first, part, stride)
        }) {
            for (a, b) in hist.iter_mut().zip(h) {
                *a += b;
            }
            n += m;
        }
        let mut floor = 0u32;
        if n > want {
            let mut seen = 0usize;
            for b in (0..hist.len()).rev() {
                seen += hist[b] as usize;
                if seen >= want {
                    floor = b as u32;
                    break;
                }
            }
        }
        floor
    };
    let collect_all = |floor: u32| -> Vec<u64> {
        par_map(parts.clone(), |(first, part)| collect(first, part, floor))
            .into_iter()
            .flatten()
            .collect()
    };
    // First from the sample (the sample's share of the k best, plus a twentieth and three
    // standard deviations), then, when fewer than k reach that floor, from every user.
    let t = k.div_ceil(SAMPLE_STRIDE);
    let sampled = (scores.len() >= SAMPLE_MIN).then(|| {
        (
            SAMPLE_STRIDE,
            t + t / 20 + 3 * (t as f64).sqrt().ceil() as usize + 8,
        )
    });
    let mut cand: Vec<u64> = Vec::new();
    for (stride, want) in sampled.into_iter().chain([(1, k)]) {
        let floor = floor_of(stride, want);
        cand = collect_all(floor);
        if floor == 0 || cand.len() >= k {
            break;
        }
    }
    if cand.len() > k {
        cand.select_nth_unstable(k - 1);
        cand.truncate(k);
    }
    cand.sort_unstable();
    cand.into_iter()
        .map(|c| {
            let u = c as u32;
            (u, scores[u as usize])
        })
        .collect()
}

/// A key whose ascending order is [`rank_order`]: the score's [`order_key`] inverted (best first),
/// then the user index. Not for NaN.
#[inline]
pub(crate) fn rank_key(score: f32, user: u32) -> u64 {
    ((!order_key(score) as u64) << 32) | user as u64
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

    /// The kept users of `s` sorted by [`rank_order`] (the reference result).
    fn full_sort(s: &[f32], keep: &dyn Fn(usize) -> bool) -> Vec<(u32, f32)> {
        let mut all: Vec<(u32, f32)> = s
            .iter()
            .enumerate()
            .filter(|p| keep(p.0))
            .map(|(u, &v)| (u as u32, v))
            .collect();
        all.sort_by(rank_order);
        all
    }

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
        let all = full_sort(&s, &keep);
        for k in [1, 7, 100, 3333, 4000] {
            assert_eq!(
                top_k(&s, k, &keep),
                all[..k.min(all.len())].to_vec(),
                "k={k}"
            );
        }
    }

    #[test]
    fn threads_do_not_change_the_result() {
        let mut x = 99u64;
        let s: Vec<f32> = (0..3 * PAR_MIN + 17)
            .map(|_| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if x.is_multiple_of(97) {
                    f32::NAN
                } else {
                    ((x >> 33) % 1000) as f32 / 7.0
                }
            })
            .collect();
        let keep = |u: usize| u % 5 != 1;
        for k in [1, 500, 40_000, 200_000] {
            let one = top_k(&s, k, &keep);
            for t in [2, 3, 8] {
                assert_eq!(top_k_threads(&s, k, &keep, t), one, "k={k} threads={t}");
            }
        }
    }

    /// Many users: the floor is first guessed from a sample of every eighth user. Scores whose
    /// sampled users are all far above the others (the guess too high: fewer than k collected,
    /// so every user is counted again) and ordinary ones give the full sort's result.
    #[test]
    fn sampled_floor_matches_full_sort() {
        let n = SAMPLE_MIN + 4321;
        let mut rng = crate::util::rand::SplitMix64(7);
        let mut rnd = || rng.next_u64() >> 33;
        let skewed: Vec<f32> = (0..n)
            .map(|u| {
                let r = (rnd() % 1000) as f32;
                if u % SAMPLE_STRIDE == 0 {
                    1e6 + r
                } else {
                    r
                }
            })
            .collect();
        let plain: Vec<f32> = (0..n).map(|_| (rnd() % 100_000) as f32 / 3.0).collect();
        let keep = |u: usize| u % 11 != 4;
        for s in [&skewed, &plain] {
            let all = full_sort(s, &keep);
            for k in [1, 100, n / 20, n / 5, n] {
                for t in [1, 2] {
                    assert_eq!(
                        top_k_threads(s, k, &keep, t),
                        all[..k.min(all.len())].to_vec(),
                        "k={k} threads={t}"
                    );
                }
            }
        }
    }
}
