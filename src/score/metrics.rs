//! Evaluation of a user ranking against holdout truth, and tuning of [`HybridParams`] on it.
//!
//! A ranking is cut at the top `pct` percent of eligible users: `k = max(1, floor(pct/100 *
//! eligible))` (capped at `eligible`; 0 when nobody is eligible), in [`top_k`] order (score
//! descending, user index ascending). For each cut: `hits` = positives among the top `k`,
//! `hit_rate = hits / k` (the share of the audience that engages), `recall = hits / positives`,
//! `lift = hit_rate / base_rate` with `base_rate = positives / eligible`. AUC is the Mann-Whitney
//! statistic over eligible users with ties counted half (0.5 when there are no positives or no
//! negatives). Degenerate ratios (division by zero) are 0.
//!
//! **Tuning objective** ([`tune`]): for each grid point, the mean over values of the mean `hit_rate`
//! over the cuts; values without any eligible positive are skipped (they cannot discriminate). The
//! grid point with the highest objective wins; ties go to the earliest grid point. Averaging the
//! hit rate (not lift) means values with a high base rate weigh more; it measures directly what a
//! campaign buys: the share of the chosen audience that engages.

#[cfg(test)]
use crate::score::hybrid::Own;
use crate::score::hybrid::{
    factor_key, score_from_components, score_with_factors, user_factors, Components, FactorKey,
    HybridParams,
};
use crate::score::topk::rank_key;
#[cfg(doc)]
use crate::score::topk::rank_order;
use crate::score::topk::top_k;

/// Metrics of one cut of a ranking.
#[derive(Clone, Debug, PartialEq)]
pub struct CutMetrics {
    pub pct: f64,
    pub k: usize,
    pub hits: usize,
    /// hits / k: the share of the audience that engages.
    pub hit_rate: f64,
    /// hits / positives.
    pub recall: f64,
    /// hit_rate / base_rate.
    pub lift: f64,
}

/// Metrics of one ranking against holdout positives.
#[derive(Clone, Debug, PartialEq)]
pub struct RankingMetrics {
    /// Eligible positives.
    pub positives: usize,
    /// Eligible users.
    pub eligible: usize,
    /// positives / eligible.
    pub base_rate: f64,
    pub cuts: Vec<CutMetrics>,
    pub auc: f64,
}

impl RankingMetrics {
    /// Mean hit rate over the cuts (the per-value tuning objective).
    pub fn mean_hit_rate(&self) -> f64 {
        if self.cuts.is_empty() {
            0.0
        } else {
            self.cuts.iter().map(|c| c.hit_rate).sum::<f64>() / self.cuts.len() as f64
        }
    }
}

/// The audience size of each cut: `max(1, floor(pct/100 * eligible))`, at most `eligible`.
pub fn cut_sizes(pcts: &[f64], eligible: usize) -> Vec<usize> {
    pcts.iter()
        .map(|&pct| {
            if eligible == 0 {
                return 0;
            }
            // pct * eligible / 100 is exact for integral pct, so floor() does not misround.
            let k = (pct.max(0.0) * eligible as f64 / 100.0).floor();
            (k as usize).max(1).min(eligible)
        })
        .collect()
}

/// Number of positives among the first `k` of `ranked`, for each `k` in `ks`.
fn hits_at(ranked: &[(u32, f32)], positive: &[bool], ks: &[usize]) -> Vec<usize> {
    let mut prefix = Vec::with_capacity(ranked.len() + 1);
    prefix.push(0usize);
    for &(u, _) in ranked {
        prefix.push(prefix.last().unwrap() + positive[u as usize] as usize);
    }
    ks.iter().map(|&k| prefix[k.min(ranked.len())]).collect()
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Evaluates `scores` (one per user) against `positive` (holdout engagement) over the users with
/// `eligible(user)`, at the cuts `pcts` (percent of eligible users). See the module doc.
pub fn evaluate_ranking(
    scores: &[f32],
    positive: &[bool],
    eligible: &(dyn Fn(usize) -> bool + Sync),
    pcts: &[f64],
) -> RankingMetrics {
    assert_eq!(
        scores.len(),
        positive.len(),
        "scores and positives disagree on the number of users"
    );
    let (mut n_elig, mut n_pos) = (0usize, 0usize);
    let mut pairs: Vec<(f32, bool)> = Vec::new();
    for (u, (&s, &p)) in scores.iter().zip(positive).enumerate() {
        if eligible(u) {
            n_elig += 1;
            n_pos += p as usize;
            pairs.push((if s.is_nan() { f32::NEG_INFINITY } else { s }, p));
        }
    }
    let ks = cut_sizes(pcts, n_elig);
    let kmax = ks.iter().copied().max().unwrap_or(0);
    let ranked = top_k(scores, kmax, eligible);
    let hits = hits_at(&ranked, positive, &ks);
    let base_rate = ratio(n_pos as f64, n_elig as f64);
    let cuts = pcts
        .iter()
        .zip(ks.iter().zip(hits))
        .map(|(&pct, (&k, hits))| {
            let hit_rate = ratio(hits as f64, k as f64);
            CutMetrics {
                pct,
                k,
                hits,
                hit_rate,
                recall: ratio(hits as f64, n_pos as f64),
                lift: ratio(hit_rate, base_rate),
            }
        })
        .collect();
    RankingMetrics {
        positives: n_pos,
        eligible: n_elig,
        base_rate,
        cuts,
        auc: auc(pairs),
    }
}

/// Mann-Whitney AUC of (score, positive) pairs with ties counted half; 0.5 if a class is empty.
fn auc(mut pairs: Vec<(f32, bool)>) -> f64 {
    pairs.sort_unstable_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let n = pairs.len();
    let n_pos = pairs.iter().filter(|p| p.1).count();
    let n_neg = n - n_pos;
    if n_pos == 0 || n_neg == 0 {
        return 0.5;
    }
    // Sum over positives of (negatives strictly below + half the tied negatives).
    let (mut wins, mut neg_below, mut i) = (0f64, 0usize, 0usize);
    while i < n {
        let mut j = i;
        let (mut pos, mut neg) = (0usize, 0usize);
        while j < n && pairs[j].0 == pairs[i].0 {
            if pairs[j].1 {
                pos += 1;
            } else {
                neg += 1;
            }
            j += 1;
        }
        wins += pos as f64 * (neg_below as f64 + 0.5 * neg as f64);
        neg_below += neg;
        i = j;
    }
    wins / (n_pos as f64 * n_neg as f64)
}

/// Picks the grid point with the best objective (see the module doc) over all users; returns it and
/// its objective.
pub fn tune(
    components_per_value: &[(Components, Vec<bool>)],
    t: &[f32],
    grid: &[HybridParams],
    pcts: &[f64],
) -> (HybridParams, f64) {
    tune_eligible(
        components_per_value,
        t,
        grid,
        pcts,
        &|_, _| true,
        1,
        &mut || {},
    )
}

/// Positives among the best `k` eligible users by [`rank_order`], for each `k` in `ks` (any order).
/// The same counts as ranking with [`top_k`] and counting prefixes, in O(n + sum k) instead of
/// O(n + k log k): nested selections from the largest cut down on integer keys, since the order
/// is total.
///
/// Only the best `max(ks)` users matter: a threshold estimated from a strided sample of the
/// scores keeps the candidates at or above it, when at least `max(ks)` are (else all are kept).
/// Every user left out scores strictly below every user kept, so the selections are the same.
fn hits_at_cuts(
    scores: &[f32],
    positive: &[bool],
    eligible: &[bool],
    ks: &[usize],
    cand: &mut Vec<u64>,
) -> Vec<usize> {
    let k_max = ks.iter().copied().max().unwrap_or(0);
    let thr = sampled_threshold(scores, eligible, k_max);
    let mut n_cand = compact_keys(scores, eligible, thr, cand);
    if n_cand < k_max && thr > f32::NEG_INFINITY {
        n_cand = compact_keys(scores, eligible, f32::NEG_INFINITY, cand);
    }
    let mut order: Vec<usize> = (0..ks.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(ks[i]));
    let mut hits = vec![0usize; ks.len()];
    let mut len = n_cand;
    for i in order {
        let k = ks[i].min(len);
        if k == 0 {
            continue;
        }
        if k < len {
            cand[..len].select_nth_unstable(k - 1);
            len = k;
        }
        hits[i] = cand[..k]
            .iter()
            .filter(|&&key| positive[key as u32 as usize])
            .count();
    }
    hits
}

/// Writes the rank keys of the eligible users scoring at least `thr` (never NaN) to the front of
/// `cand` (grown to the number of users + 1, never shrunk); returns how many. Branch-free: every key is written and the end advances only for the
/// kept ones (whether a score passes is unpredictable, and a branch per user cost more than the
/// rest of the ranking).
fn compact_keys(scores: &[f32], eligible: &[bool], thr: f32, cand: &mut Vec<u64>) -> usize {
    let n = scores.len().min(eligible.len());
    if cand.len() < n + 1 {
        cand.resize(n + 1, 0);
    }
    let mut len = 0usize;
    for (u, (&s, &e)) in scores.iter().zip(eligible).enumerate() {
        cand[len] = rank_key(s, u as u32);
        len += (e & (s >= thr)) as usize;
    }
    len
}

/// A score that about `1.3 * k + 16` of the eligible users reach, from a sample of about 1,024
/// eligible scores (-inf: keep every user, when the sample is too small to tell). NaN never
/// passes `s >= threshold`, as the plain selection drops NaN scores.
fn sampled_threshold(scores: &[f32], eligible: &[bool], k: usize) -> f32 {
    let n = scores.len();
    if n < 4096 || k == 0 {
        return f32::NEG_INFINITY;
    }
    let stride = n / 1024;
    let mut sample: Vec<f32> = (0..n)
        .step_by(stride)
        .filter(|&u| eligible[u] && !scores[u].is_nan())
        .map(|u| scores[u])
        .collect();
    if sample.len() < 256 {
        return f32::NEG_INFINITY;
    }
    // The share of eligible users the cut takes, estimated from the sample, with a margin.
    let est_eligible = sample.len() * stride;
    let want =
        ((k as f64 * 1.3 + 16.0) / est_eligible as f64 * sample.len() as f64).ceil() as usize;
    if want >= sample.len() {
        return f32::NEG_INFINITY;
    }
    let (_, &mut t, _) = sample.select_nth_unstable_by(want, |a, b| b.total_cmp(a));
    t
}

/// [`tune`] with an eligibility predicate `eligible(value_index, user)` (e.g. to exclude users who
/// already engaged with the value before the holdout), scoring grid points on `threads` threads
/// (the result does not depend on it). `check` runs on the calling thread between batches of grid
/// points, with no other thread running: the place for an interrupt check.
pub fn tune_eligible(
    components_per_value: &[(Components, Vec<bool>)],
    t: &[f32],
    grid: &[HybridParams],
    pcts: &[f64],
    eligible: &(dyn Fn(usize, usize) -> bool + Sync),
    threads: usize,
    check: &mut dyn FnMut(),
) -> (HybridParams, f64) {
    assert!(!grid.is_empty(), "empty tuning grid");
    let objs = grid_objectives(
        components_per_value,
        t,
        grid,
        pcts,
        eligible,
        threads,
        check,
    );
    best_of(grid, &objs)
}

/// The first grid point with the highest objective (earlier points win ties).
pub fn best_of(grid: &[HybridParams], objs: &[f64]) -> (HybridParams, f64) {
    let mut best = (grid[0], f64::NEG_INFINITY);
    for (p, &o) in grid.iter().zip(objs) {
        if o > best.1 {
            best = (*p, o);
        }
    }
    best
}

/// The tuning objective (see the module doc) of every grid point, in grid order; arguments as
/// for [`tune_eligible`].
pub fn grid_objectives(
    components_per_value: &[(Components, Vec<bool>)],
    t: &[f32],
    grid: &[HybridParams],
    pcts: &[f64],
    eligible: &(dyn Fn(usize, usize) -> bool + Sync),
    threads: usize,
    check: &mut dyn FnMut(),
) -> Vec<f64> {
    grid_objectives_multi(
        components_per_value,
        t,
        grid,
        pcts,
        &[eligible],
        threads,
        check,
    )
    .pop()
    .expect("one eligibility")
}

/// [`grid_objectives`] for several eligibility predicates at once (all users and cross-sell, say):
/// each grid point's scores are computed once per value and ranked for every predicate. One
/// vector of objectives per predicate, each the same as [`grid_objectives`] with that predicate.
pub fn grid_objectives_multi(
    components_per_value: &[(Components, Vec<bool>)],
    t: &[f32],
    grid: &[HybridParams],
    pcts: &[f64],
    eligibles: &[&(dyn Fn(usize, usize) -> bool + Sync)],
    threads: usize,
    check: &mut dyn FnMut(),
) -> Vec<Vec<f64>> {
    // Per predicate, per value: eligibility mask and cut sizes, or None when the value has no
    // eligible positive.
    type Plan = Option<(Vec<bool>, Vec<usize>)>;
    let plans: Vec<Vec<Plan>> = eligibles
        .iter()
        .map(|eligible| {
            components_per_value
                .iter()
                .enumerate()
                .map(|(v, (_, pos))| {
                    let mask: Vec<bool> = (0..pos.len()).map(|u| eligible(v, u)).collect();
                    let n_elig = mask.iter().filter(|&&b| b).count();
                    let n_pos = pos.iter().zip(&mask).filter(|&(&p, &m)| p && m).count();
                    (n_pos > 0 && !pcts.is_empty()).then(|| (mask, cut_sizes(pcts, n_elig)))
                })
                .collect()
        })
        .collect();
    // The user factors depend on few knobs and on the shared parts of the components: when every
    // value shares them (as the scorer's components do), compute each distinct factor vector once.
    let shared = components_per_value
        .windows(2)
        .all(|w| w[0].0.shares_user_parts(&w[1].0));
    let mut factors: std::collections::HashMap<FactorKey, Vec<f32>> =
        std::collections::HashMap::new();
    if let (true, Some((c0, _))) = (shared, components_per_value.first()) {
        for p in grid {
            factors
                .entry(factor_key(c0, p))
                .or_insert_with(|| user_factors(c0, t, p));
        }
    }
    let n_e = eligibles.len();
    // The objectives of one grid point, one per predicate.
    let objective = |p: &HybridParams, cand: &mut Vec<u64>, out: &mut [f64]| {
        let (mut sum, mut n) = (vec![0f64; n_e], vec![0usize; n_e]);
        for (v, (c, pos)) in components_per_value.iter().enumerate() {
            if plans.iter().all(|pl| pl[v].is_none()) {
                continue;
            }
            let scores = match factors.get(&factor_key(c, p)) {
                Some(f) => score_with_factors(c, t, p, f),
                None => score_from_components(c, t, p),
            };
            for (e, pl) in plans.iter().enumerate() {
                let Some((mask, ks)) = &pl[v] else { continue };
                let hits = hits_at_cuts(&scores, pos, mask, ks, cand);
                sum[e] += ks
                    .iter()
                    .zip(&hits)
                    .map(|(&k, &h)| ratio(h as f64, k as f64))
                    .sum::<f64>()
                    / ks.len() as f64;
                n[e] += 1;
            }
        }
        for e in 0..n_e {
            out[e] = if n[e] > 0 { sum[e] / n[e] as f64 } else { 0.0 };
        }
    };
    let threads = threads.clamp(1, 64);
    // Grid point g's objectives at objs[g * n_e..(g + 1) * n_e].
    let mut objs = vec![f64::NEG_INFINITY; grid.len() * n_e];
    let per_batch = threads * 4;
    for (batch, out) in grid.chunks(per_batch).zip(objs.chunks_mut(per_batch * n_e)) {
        check();
        if threads == 1 {
            let mut cand = Vec::new();
            for (p, o) in batch.iter().zip(out.chunks_mut(n_e)) {
                objective(p, &mut cand, o);
            }
            continue;
        }
        std::thread::scope(|scope| {
            let per = batch.len().div_ceil(threads);
            for (ps, os) in batch.chunks(per).zip(out.chunks_mut(per * n_e)) {
                let objective = &objective;
                scope.spawn(move || {
                    let mut cand = Vec::new();
                    for (p, o) in ps.iter().zip(os.chunks_mut(n_e)) {
                        objective(p, &mut cand, o);
                    }
                });
            }
        });
    }
    check();
    (0..n_e)
        .map(|e| (0..grid.len()).map(|g| objs[g * n_e + e]).collect())
        .collect()
}

/// Relative prior multipliers of [`default_grid`] (the last is the pure-CF mode). The first is
/// not 0 but tiny: the user's own share ranks everyone who engaged, and the collaborative
/// estimate only orders the users who did not (who would otherwise tie at 0 and fill the deeper
/// cuts in user-id order). The exact own-only baselines (`prior = 0`) are scored separately
/// ([`crate::score::tuning`]).
pub const DEFAULT_PRIORS: [f32; 6] = [1e-3, 0.5, 2.0, 8.0, 32.0, f32::INFINITY];
pub const DEFAULT_KNN_WEIGHTS: [f32; 3] = [0.0, 0.5, 1.0];
/// Activity exponents of [`default_grid`], in grid order: {1, 0.5, 0} first (so ties keep favouring
/// the past-engagers baseline and the shares), then the activity-leaning {1.5, 2, 3}. Values above 1
/// let the score lean on activity while the share still reorders the most active users: on MovieLens
/// 100K (bench/movielens.sh) the validation objective rose with them for every property and each of
/// four temporal splits, and holdout macro hit@1% rose too (mean of the splits: genre 0.39 -> 0.40,
/// release_year 0.09 -> 0.12, decade 0.18 -> 0.23).
pub const DEFAULT_ACTIVITY_EXPS: [f32; 6] = [1.0, 0.5, 0.0, 1.5, 2.0, 3.0];
/// `(days_exp, tenure_exp)` pairs of [`default_grid`], in grid order ((0, 0) first: ties keep
/// ignoring how users return). On MovieLens 100K the users who rate again are the ones who came
/// back over weeks, not the ones with the most ratings (bench/movielens_returns.sql), and validation
/// picks tenure_exp = 1; on the demo shop and the 20M-event shop it picks days_exp = 0.5.
pub const DEFAULT_RETURN_EXPS: [(f32, f32); 5] =
    [(0.0, 0.0), (0.5, 0.0), (1.0, 0.0), (0.0, 0.5), (0.0, 1.0)];
/// Points of [`default_grid`] per `(days_exp, tenure_exp)` pair: one per activity exponent for the
/// smallest prior, three knn weights otherwise, and 6 ALS-volume-scaled pure-CF points.
pub const DEFAULT_GRID_BLOCK: usize =
    DEFAULT_ACTIVITY_EXPS.len() * (1 + (DEFAULT_PRIORS.len() - 1) * DEFAULT_KNN_WEIGHTS.len()) + 6;
/// Points of [`default_grid`].
pub const DEFAULT_GRID_LEN: usize = DEFAULT_RETURN_EXPS.len() * DEFAULT_GRID_BLOCK;

/// The default tuning grid, [`DEFAULT_GRID_LEN`] (510) points: for each pair of
/// [`DEFAULT_RETURN_EXPS`],
/// 96 points with `volume = 0` and `prior` in **units of the typical activity** (multiples
/// {0, 0.5, 2, 8, 32, +inf}; scale with [`scaled_grid`] or use [`default_grid_for`] before tuning),
/// `activity_exp` in {0, 0.5, 1, 1.5, 2, 3} and `knn_weight` in {0, 0.5, 1} (only 0.5 for prior 0,
/// where it has no effect), then 6 pure-CF points scaled by the ALS volume. Starts with the
/// past-engagers baseline, so ties favour simpler settings.
pub fn default_grid() -> Vec<HybridParams> {
    let mut g = Vec::with_capacity(DEFAULT_GRID_LEN);
    for &(days_exp, tenure_exp) in &DEFAULT_RETURN_EXPS {
        for &prior in &DEFAULT_PRIORS {
            for &activity_exp in &DEFAULT_ACTIVITY_EXPS {
                if prior == DEFAULT_PRIORS[0] {
                    g.push(HybridParams {
                        prior,
                        activity_exp,
                        knn_weight: 0.5,
                        volume: 0.0,
                        days_exp,
                        tenure_exp,
                        own: crate::score::hybrid::Own::Affinity,
                    });
                } else {
                    for &knn_weight in &DEFAULT_KNN_WEIGHTS {
                        g.push(HybridParams {
                            prior,
                            activity_exp,
                            knn_weight,
                            volume: 0.0,
                            days_exp,
                            tenure_exp,
                            own: crate::score::hybrid::Own::Affinity,
                        });
                    }
                }
            }
        }
        // Pure collaborative filtering scaled by the ALS-predicted volume (volume = 1): with
        // knn_weight 0 and activity_exp 1 this is the summed-ALS-predictions ranking.
        for &activity_exp in &[1.0f32, 0.5, 1.5] {
            for &knn_weight in &[0.0f32, 0.5] {
                g.push(HybridParams {
                    prior: f32::INFINITY,
                    activity_exp,
                    knn_weight,
                    volume: 1.0,
                    days_exp,
                    tenure_exp,
                    own: crate::score::hybrid::Own::Affinity,
                });
            }
        }
        // (Pure CF scaled by the kNN volume, `volume = 2`, is not in the grid: on the grocery
        // data validation picked it for cross-sell and it did worse on the holdout, category
        // cross-sell hit@1% 0.139 -> 0.115, bench/completejourney.sh.)
    }
    g
}

/// The typical activity used to scale priors: the median of the positive `t_u` (1 if none).
pub fn typical_activity(t: &[f32]) -> f32 {
    let mut pos: Vec<f32> = t
        .iter()
        .copied()
        .filter(|&x| x > 0.0 && x.is_finite())
        .collect();
    if pos.is_empty() {
        return 1.0;
    }
    let mid = pos.len() / 2;
    *pos.select_nth_unstable_by(mid, |a, b| a.partial_cmp(b).unwrap())
        .1
}

/// [`default_grid`] for the own-engagement measure `own`, priors in multiples of the typical
/// activity `t` measured in that unit.
pub fn default_grid_own(t: &[f32], own: crate::score::hybrid::Own) -> Vec<HybridParams> {
    default_grid_for(t)
        .into_iter()
        .map(|p| HybridParams { own, ..p })
        .collect()
}

/// `grid` with every prior multiplied by `scale`.
pub fn scaled_grid(grid: &[HybridParams], scale: f32) -> Vec<HybridParams> {
    grid.iter()
        .map(|p| HybridParams {
            prior: p.prior * scale,
            ..*p
        })
        .collect()
}

/// [`default_grid`] with priors in affinity units: multiples of [`typical_activity`]`(t)`.
pub fn default_grid_for(t: &[f32]) -> Vec<HybridParams> {
    scaled_grid(&default_grid(), typical_activity(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn hand_example_all_eligible() {
        let s = [0.9, 0.8, 0.7, 0.7, 0.1, 0.0];
        let pos = [true, false, true, false, true, false];
        let m = evaluate_ranking(&s, &pos, &|_| true, &[50.0, 34.0, 1.0]);
        assert_eq!((m.positives, m.eligible), (3, 6));
        assert!(close(m.base_rate, 0.5));
        // Top 3 = users 0, 1, 2 (2 before 3 on the tie): 2 hits.
        let c = &m.cuts[0];
        assert_eq!((c.k, c.hits), (3, 2));
        assert!(
            close(c.hit_rate, 2.0 / 3.0) && close(c.recall, 2.0 / 3.0) && close(c.lift, 4.0 / 3.0)
        );
        let c = &m.cuts[1];
        assert_eq!((c.k, c.hits), (2, 1));
        assert!(close(c.hit_rate, 0.5) && close(c.recall, 1.0 / 3.0) && close(c.lift, 1.0));
        // 1% of 6 floors to 0, raised to 1.
        assert_eq!((m.cuts[2].k, m.cuts[2].hits), (1, 1));
        // Positives {0.9, 0.7, 0.1} vs negatives {0.8, 0.7, 0.0}: 3 + 1.5 + 1 = 5.5 of 9 pairs.
        assert!(close(m.auc, 5.5 / 9.0), "{}", m.auc);
        assert!(close(m.mean_hit_rate(), (2.0 / 3.0 + 0.5 + 1.0) / 3.0));
    }

    #[test]
    fn eligibility_and_tie_at_the_cut() {
        let s = [0.9, 0.8, 0.7, 0.7, 0.1, 0.0];
        let pos = [true, false, false, true, true, false];
        let m = evaluate_ranking(&s, &pos, &|u| u != 0, &[60.0]);
        assert_eq!((m.positives, m.eligible), (2, 5));
        // k = 3: users 1, 2, 3 -> 1 hit. With the tie resolved the other way it would still be 1;
        // at k = 2 (40%) the tie decides: user 2 (negative) wins over user 3.
        assert_eq!((m.cuts[0].k, m.cuts[0].hits), (3, 1));
        let m2 = evaluate_ranking(&s, &pos, &|u| u != 0, &[40.0]);
        assert_eq!((m2.cuts[0].k, m2.cuts[0].hits), (2, 0));
        assert!(close(m.base_rate, 0.4) && close(m.cuts[0].lift, (1.0 / 3.0) / 0.4));
        // Positives {0.7, 0.1} vs negatives {0.8, 0.7, 0.0}: 1.5 + 1 = 2.5 of 6.
        assert!(close(m.auc, 2.5 / 6.0));
    }

    #[test]
    fn degenerate_cases() {
        let m = evaluate_ranking(&[1.0, 2.0], &[false, false], &|_| true, &[50.0]);
        assert_eq!(
            (m.positives, m.auc, m.cuts[0].recall, m.cuts[0].lift),
            (0, 0.5, 0.0, 0.0)
        );
        let m = evaluate_ranking(&[1.0, 2.0], &[true, false], &|_| false, &[50.0]);
        assert_eq!((m.eligible, m.cuts[0].k, m.cuts[0].hit_rate), (0, 0, 0.0));
        // Perfect and reversed rankings; all-tied ranking has AUC 0.5.
        let pos = [true, true, false, false];
        assert_eq!(
            evaluate_ranking(&[4.0, 3.0, 2.0, 1.0], &pos, &|_| true, &[]).auc,
            1.0
        );
        assert_eq!(
            evaluate_ranking(&[1.0, 2.0, 3.0, 4.0], &pos, &|_| true, &[]).auc,
            0.0
        );
        assert_eq!(evaluate_ranking(&[1.0; 4], &pos, &|_| true, &[]).auc, 0.5);
        assert_eq!(cut_sizes(&[10.0, 200.0, 0.0], 30), vec![3, 30, 1]);
    }

    /// Components where the kNN share ranks the holdout positives first, the own engagement
    /// ranks them last and the ALS share is noise.
    fn case(n: usize, positives: &[usize]) -> (Components, Vec<bool>) {
        let pos: Vec<bool> = (0..n).map(|u| positives.contains(&u)).collect();
        let knn: Vec<f32> = (0..n)
            .map(|u| if pos[u] { 0.5 + u as f32 / 100.0 } else { 0.1 })
            .collect();
        let e: Vec<f32> = (0..n)
            .map(|u| if pos[u] { 0.0 } else { 1.0 + u as f32 })
            .collect();
        let als: Vec<f32> = (0..n).map(|u| ((u * 7) % 5) as f32 / 5.0).collect();
        (
            Components {
                e,
                knn_share: Some(knn),
                als_share: Some(als),
                als_volume: None,
                knn_volume: None,
                returns: None,
                own: Vec::new(),
            },
            pos,
        )
    }

    #[test]
    fn tune_picks_the_known_best_params() {
        let t = vec![10.0f32; 10];
        let values = vec![case(10, &[1, 4, 7]), case(10, &[0, 9])];
        let engagers = HybridParams::PAST_ENGAGERS;
        let knn_only = HybridParams::pure_cf(0.0, 1.0);
        let als_only = HybridParams::pure_cf(0.0, 0.0);
        let grid = [
            engagers,
            als_only,
            knn_only,
            HybridParams {
                prior: 5.0,
                activity_exp: 1.0,
                knn_weight: 1.0,
                volume: 0.0,
                days_exp: 0.0,
                tenure_exp: 0.0,
                own: Own::Affinity,
            },
        ];
        let (best, obj) = tune(&values, &t, &grid, &[20.0, 30.0]);
        assert_eq!(best, knn_only);
        // Value 1: k=2 -> 2/2, k=3 -> 3/3. Value 2: k=2 -> 2/2, k=3 -> 2/3.
        assert!(close(obj, (1.0 + (1.0 + 2.0 / 3.0) / 2.0) / 2.0), "{obj}");
        // The objective agrees with evaluate_ranking.
        let per_value: Vec<f64> = values
            .iter()
            .map(|(c, pos)| {
                evaluate_ranking(
                    &score_from_components(c, &t, &knn_only),
                    pos,
                    &|_| true,
                    &[20.0, 30.0],
                )
                .mean_hit_rate()
            })
            .collect();
        assert!(close(obj, per_value.iter().sum::<f64>() / 2.0));
        // On the default grid something collaborative and kNN-heavy wins, never past engagers.
        let (best, obj2) = tune(&values, &t, &default_grid_for(&t), &[20.0, 30.0]);
        assert!(
            best.prior > 0.0 && best.knn_weight > 0.5 && close(obj2, obj),
            "{best:?} {obj2}"
        );
        // Ties go to the first grid point; a value without positives is ignored.
        let mut v3 = values.clone();
        v3.push(case(10, &[]));
        assert_eq!(tune(&v3, &t, &[knn_only, knn_only], &[20.0]).0, knn_only);
        assert!(close(tune(&v3, &t, &[knn_only], &[20.0, 30.0]).1, obj));
        // With eligibility excluding the positives of value 1, it no longer counts.
        let (_, o) = tune_eligible(
            &values,
            &t,
            &[knn_only],
            &[20.0],
            &|v, u| v == 1 || ![1, 4, 7].contains(&u),
            1,
            &mut || {},
        );
        assert!(close(o, 1.0));
    }

    #[test]
    fn default_grid_shape_and_scaling() {
        let g = default_grid();
        assert_eq!(g.len(), DEFAULT_GRID_LEN);
        assert_eq!(g.len(), 510);
        assert!(DEFAULT_RETURN_EXPS.iter().all(|&(d, r)| g
            .iter()
            .filter(|p| p.days_exp == d && p.tenure_exp == r)
            .count()
            == DEFAULT_GRID_BLOCK));
        assert_eq!(
            g[0],
            HybridParams {
                prior: DEFAULT_PRIORS[0],
                ..HybridParams::PAST_ENGAGERS
            }
        );
        let mut dedup = g.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), DEFAULT_GRID_LEN);
        assert!(g.iter().any(|p| p.activity_exp == 3.0) && g.iter().any(|p| p.activity_exp == 0.0));
        assert_eq!(typical_activity(&[0.0, 4.0, 1.0, 9.0, 0.0]), 4.0);
        assert_eq!(typical_activity(&[0.0]), 1.0);
        let s = default_grid_for(&[2.0, 2.0, 2.0]);
        assert!(s
            .iter()
            .zip(&g)
            .all(|(a, b)| a.prior == b.prior * 2.0 && a.activity_exp == b.activity_exp));
        assert!(s.iter().any(|p| p.prior == f32::INFINITY));
    }

    /// Deterministic pseudo-random numbers in [0, 1).
    fn noise(seed: u64) -> impl FnMut() -> f64 {
        let mut g = crate::util::rand::SplitMix64(seed);
        move || g.next_unit()
    }

    #[test]
    fn hits_at_cuts_matches_ranking_with_top_k() {
        let mut r = noise(7);
        for n in [1usize, 2, 17, 300, 2000] {
            // Few distinct scores (many ties), negative ones, -0.0 next to 0.0, some NaN.
            let scores: Vec<f32> = (0..n)
                .map(|_| match r() {
                    x if x < 0.05 => f32::NAN,
                    x if x < 0.10 => -0.0,
                    x if x < 0.20 => -((r() * 4.0).floor() as f32) - 0.5,
                    _ => (r() * 8.0).floor() as f32,
                })
                .collect();
            let pos: Vec<bool> = (0..n).map(|_| r() < 0.3).collect();
            // A third of the users ineligible.
            let elig: Vec<bool> = (0..n).map(|_| r() < 0.67).collect();
            let n_elig = elig.iter().filter(|&&b| b).count();
            let ks = cut_sizes(&[5.0, 1.0, 50.0, 20.0, 100.0], n_elig);
            let mut cand = Vec::new();
            let got = hits_at_cuts(&scores, &pos, &elig, &ks, &mut cand);
            let ranked = top_k(&scores, n, &|u| elig[u]);
            let want = hits_at(&ranked, &pos, &ks);
            assert_eq!(got, want, "n = {n}, ks = {ks:?}");
        }
    }

    /// Large rankings take the sampled threshold: the same hits as the full ranking, with ties,
    /// NaN, infinities, eligibility patterns that line up with the sample's stride, and cuts up
    /// to everyone (no threshold then).
    #[test]
    fn hits_at_cuts_with_a_sampled_threshold_matches_top_k() {
        let mut r = noise(23);
        for (case, n) in [5000usize, 20000, 60000, 60000, 20000]
            .into_iter()
            .enumerate()
        {
            let scores: Vec<f32> = (0..n)
                .map(|u| match case {
                    // Few distinct scores: many ties at any threshold.
                    0 => (r() * 6.0).floor() as f32,
                    // Continuous, with NaN and infinities.
                    1 => match r() {
                        x if x < 0.01 => f32::NAN,
                        x if x < 0.02 => f32::INFINITY,
                        x if x < 0.03 => f32::NEG_INFINITY,
                        x => (x * 1000.0) as f32,
                    },
                    // Scores rising with the user id (the sample is strided).
                    2 => u as f32 * 0.5,
                    // Most scores 0 (users without signal), -0.0 among them.
                    3 => match r() {
                        x if x < 0.85 => 0.0,
                        x if x < 0.90 => -0.0,
                        x => x as f32,
                    },
                    _ => r() as f32,
                })
                .collect();
            let pos: Vec<bool> = (0..n).map(|_| r() < 0.2).collect();
            let elig: Vec<bool> = (0..n)
                .map(|u| match case {
                    // Eligibility on the sample's stride only, or never on it.
                    2 => u % (n / 1024) == 0,
                    4 => u % (n / 1024) != 0,
                    _ => r() < 0.7,
                })
                .collect();
            let n_elig = elig.iter().filter(|&&b| b).count();
            for pcts in [&[1.0, 5.0, 10.0, 20.0][..], &[0.1][..], &[30.0, 100.0][..]] {
                let ks = cut_sizes(pcts, n_elig);
                let mut cand = Vec::new();
                let got = hits_at_cuts(&scores, &pos, &elig, &ks, &mut cand);
                let ranked = top_k(&scores, n, &|u| elig[u]);
                assert_eq!(
                    got,
                    hits_at(&ranked, &pos, &ks),
                    "case {case}, n = {n}, ks = {ks:?}"
                );
            }
        }
    }

    #[test]
    fn tuning_does_not_depend_on_threads_and_checks_between_batches() {
        let mut r = noise(11);
        let n = 500;
        let t: Vec<f32> = (0..n).map(|_| (r() * 50.0) as f32).collect();
        let days: Vec<f32> = (0..n).map(|_| 1.0 + (r() * 10.0).floor() as f32).collect();
        let tenure: Vec<f32> = days
            .iter()
            .map(|&d| d + (r() * 30.0).floor() as f32)
            .collect();
        let returns = std::sync::Arc::new(crate::score::hybrid::Returns {
            days: days.clone().into(),
            tenure: tenure.into(),
        });
        let vol = std::sync::Arc::new(
            (0..n)
                .map(|_| r() as f32 * 10.0)
                .collect::<crate::util::buf::Buf<f32>>(),
        );
        let values: Vec<(Components, Vec<bool>)> = (0..6)
            .map(|_| {
                let e: Vec<f32> = t
                    .iter()
                    .map(|&x| if r() < 0.3 { x * r() as f32 } else { 0.0 })
                    .collect();
                let knn = (0..n).map(|_| r() as f32).collect();
                let als = (0..n).map(|_| r() as f32).collect();
                let vol = vol.clone();
                let pos = (0..n)
                    .map(|u| r() < 0.05 + 0.3 * (e[u] > 0.0) as u8 as f64 + 0.02 * days[u] as f64)
                    .collect();
                let c = Components {
                    e,
                    knn_share: Some(knn),
                    als_share: Some(als),
                    als_volume: Some(vol),
                    knn_volume: None,
                    returns: Some(returns.clone()),
                    own: Vec::new(),
                };
                (c, pos)
            })
            .collect();
        let grid = default_grid_for(&t);
        let cuts = [1.0, 5.0, 10.0, 20.0];
        let elig = |v: usize, u: usize| values[v].0.e[u] <= 0.0 || u.is_multiple_of(3);
        let mut calls = 0;
        let one = tune_eligible(&values, &t, &grid, &cuts, &elig, 1, &mut || calls += 1);
        assert_eq!(calls, DEFAULT_GRID_LEN.div_ceil(4) + 1);
        for threads in [2, 3, 8] {
            assert_eq!(
                tune_eligible(&values, &t, &grid, &cuts, &elig, threads, &mut || {}),
                one,
                "{threads} threads"
            );
        }
        // Several predicates in one pass: each the same objectives as alone, on any thread count.
        let all = |_: usize, _: usize| true;
        let none = |_: usize, _: usize| false;
        for threads in [1, 3] {
            let multi = grid_objectives_multi(
                &values,
                &t,
                &grid,
                &cuts,
                &[&elig, &all, &none],
                threads,
                &mut || {},
            );
            assert_eq!(multi.len(), 3);
            assert_eq!(
                multi[0],
                grid_objectives(&values, &t, &grid, &cuts, &elig, 1, &mut || {})
            );
            assert_eq!(
                multi[1],
                grid_objectives(&values, &t, &grid, &cuts, &all, 2, &mut || {})
            );
            assert_eq!(
                multi[2],
                vec![0.0; grid.len()],
                "no eligible user: objective 0"
            );
        }
        // Values sharing their user parts (as above) use cached user factors; unshared copies
        // take the direct path: the same result.
        assert!(values[0].0.shares_user_parts(&values[1].0));
        let unshared: Vec<(Components, Vec<bool>)> = values
            .iter()
            .map(|(c, pos)| {
                let c = Components {
                    als_volume: c
                        .als_volume
                        .as_deref()
                        .map(|v| std::sync::Arc::new(v.clone())),
                    returns: c.returns.as_deref().map(|r| std::sync::Arc::new(r.clone())),
                    ..c.clone()
                };
                (c, pos.clone())
            })
            .collect();
        assert!(!unshared[0].0.shares_user_parts(&unshared[1].0));
        assert_eq!(
            tune_eligible(&unshared, &t, &grid, &cuts, &elig, 2, &mut || {}),
            one
        );
        // The winner's objective is the mean over values of evaluate_ranking's mean hit rate.
        let per_value: Vec<f64> = values
            .iter()
            .enumerate()
            .map(|(v, (c, pos))| {
                evaluate_ranking(
                    &score_from_components(c, &t, &one.0),
                    pos,
                    &|u| elig(v, u),
                    &cuts,
                )
                .mean_hit_rate()
            })
            .collect();
        assert!(
            close(
                one.1,
                per_value.iter().sum::<f64>() / per_value.len() as f64
            ),
            "{one:?} {per_value:?}"
        );
    }
}
