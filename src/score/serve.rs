//! Serving one audience in one pass: the scores of every user for a value and their engagement
//! with it, computed user by user (own engagement, kNN and ALS shares, factor, score) instead of
//! one vector per ingredient and then the scores (`recommend_audience`'s hot path). The result
//! is bit for bit [`score_from_components`] of [`Scorer::components_with`]. Pure Rust.
use crate::score::formula::{
    effective_knobs_of, returns_used, score_one, user_factor, volume_kind_of,
};
use crate::score::hybrid::{part_len, value_factors, value_table, HybridParams, Own, Scorer};
use crate::score::own::{decay_tables, DayBits};
use crate::util::par::par_map;
use crate::util::prefetch;

/// Users ahead of the one being scored whose factor vector and row [`Scorer::serve`] prefetches.
const PF_STREAMS: usize = 16;

/// One audience's scores and whether each user engaged with the value before (`e_u > 0`).
pub struct Served {
    pub scores: Vec<f32>,
    pub engaged: Vec<bool>,
}

impl Scorer<'_> {
    /// The scores of every user for the value `value_items` with knobs `p`, and their engagement,
    /// in one pass; `None` when the pass does not apply (no kNN model, or an own measure other
    /// than the affinity without engagement days): then use [`Scorer::components_with`].
    pub fn serve(&self, value_items: &[u32], p: &HybridParams) -> Option<Served> {
        let kt = self.knn_t.as_deref()?;
        let days = match (p.own, self.days) {
            (Own::Affinity, _) => None,
            (_, Some(d)) => Some(d),
            (_, None) => return None,
        };
        let (n_users, n_items) = (self.n_users(), self.n_items());
        let (_, distinct) = self.value_set(value_items);
        let tab = value_table(kt, n_items, &distinct);
        let y_v: Option<Vec<f32>> = self.als.map(|m| value_factors(m, &distinct));
        let own_t = (p.own != Own::Affinity).then(|| self.own_totals(p.own));
        let tables = days.map(|(d, ref_day)| decay_tables(d, ref_day, &[p.own]));
        let fused = match (days, &tables) {
            (Some((d, ref_day)), Some(t)) => Some((p.own, d, ref_day, &t[0])),
            _ => None,
        };
        let (kw, prior) = effective_knobs_of(true, p);
        let shares = (true, self.als.is_some());
        let volume: &[f32] = match volume_kind_of(true, self.als.is_some(), p) {
            2 => &self.knn_volume,
            1 => &self.als_volume,
            _ => own_t.as_deref().map_or(&self.t[..], |t| &t[..]),
        };
        let returns = returns_used(self.returns.as_deref(), p);
        let mut scores = vec![0f32; n_users];
        let mut engaged = vec![false; n_users];
        let chunk = part_len(n_users, self.threads);
        let parts: Vec<_> = scores
            .chunks_mut(chunk)
            .zip(engaged.chunks_mut(chunk))
            .enumerate()
            .map(|(c, (s, e))| (c * chunk, s, e))
            .collect();
        par_map(parts, |(first, s_out, e_out)| {
            let mut bits = DayBits::new();
            let mut hits: Vec<u32> = Vec::new();
            for (k, (s_slot, e_slot)) in s_out.iter_mut().zip(e_out.iter_mut()).enumerate() {
                let u = first + k;
                // The streams of the user PF_STREAMS ahead, asked for now: the hardware
                // prefetchers stop at each 4 kB page of the mapped image.
                if let Some(m) = self.als {
                    let f = m.factors;
                    let p = m.user_factors.as_ptr().wrapping_add((u + PF_STREAMS) * f);
                    prefetch(p);
                    prefetch(p.wrapping_add(f.saturating_sub(1)));
                }
                if let Some(&a) = self.ui.indptr.get(u + PF_STREAMS) {
                    prefetch(self.ui.indices.as_ptr().wrapping_add(a));
                    prefetch(self.ui.data.as_ptr().wrapping_add(a));
                }
                let (eu, num, own) = self.row_pass(u, &tab, fused, &mut hits, &mut bits);
                let den = self.knn_den[u];
                let knn = if den > 0.0 {
                    (num / den).clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let als = match (self.als, &y_v) {
                    (Some(m), Some(y)) => self.als_share_of(m, y, u),
                    _ => 0.0,
                };
                let (e_own, t_own) = match &own_t {
                    None => (eu, self.t[u]),
                    Some(t) => (own, t[u]),
                };
                let f = user_factor(volume[u], returns, u, p);
                *s_slot = score_one(prior, kw, shares, e_own, t_own, f, knn, als);
                *e_slot = eu > 0.0;
            }
        });
        Some(Served { scores, engaged })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::als::AlsModel;
    use crate::model::csr::Csr;
    use crate::model::days::DayIndex;
    use crate::score::hybrid::score_from_components;
    use crate::util::rand::SplitMix64;

    /// Random users with several engagement days per pair, a random kNN and ALS model.
    fn shop(n_users: usize, n_items: usize, seed: u64) -> (Csr, DayIndex, Csr, AlsModel) {
        let mut rng = SplitMix64(seed);
        let mut below = |n: u64| rng.next_u64() % n;
        let mut trip = Vec::new();
        for u in 0..n_users {
            for _ in 0..below(9) {
                let v = if below(7) == 0 {
                    -1.0
                } else {
                    1.0 + below(5) as f32
                };
                trip.push((u as u32, below(n_items as u64) as u32, v));
            }
        }
        let ui = Csr::from_triplets(n_users, n_items, &mut trip);
        let days = crate::model::days::random_days(ui.nnz(), &mut below, (8000, 60, 3, 20, 11));
        let mut kt = Vec::new();
        for i in 0..n_items {
            for _ in 0..below(6) {
                let j = below(n_items as u64) as u32;
                if j as usize != i {
                    kt.push((i as u32, j, 0.05 + below(100) as f32 / 100.0));
                }
            }
        }
        let knn = Csr::from_triplets(n_items, n_items, &mut kt);
        let k = 8;
        let mut r = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| (below(2000) as f32 - 700.0) / 1000.0)
                .collect()
        };
        let als = AlsModel {
            factors: k,
            user_factors: r(n_users * k).into(),
            item_factors: r(n_items * k).into(),
        };
        (ui, days, knn, als)
    }

    /// Every knob case (own measures, priors 0 / finite / infinite / NaN, the three volumes,
    /// days and tenure exponents), with and without ALS, on one thread and two: the one-pass
    /// scores and engagement equal the components path's bit for bit.
    #[test]
    fn one_pass_equals_components_then_scores() {
        let (n_users, n_items) = (70_000, 300);
        let (ui, days, knn, als) = shop(n_users, n_items, 5);
        let value: Vec<u32> = (0..n_items as u32).filter(|i| i % 7 < 2).collect();
        let ref_day = 8050;
        for with_als in [true, false] {
            for threads in [1, 2] {
                let sc = Scorer::new(&ui, with_als.then_some(&als), Some(&knn))
                    .with_days(&days, ref_day)
                    .with_threads(threads);
                for (own, prior, volume, activity_exp, days_exp, tenure_exp) in [
                    (Own::Affinity, 2.0, 0.0, 0.5, 0.0, 0.0),
                    (Own::Days(f32::INFINITY), 6.0, 0.0, 1.0, 0.0, 0.0),
                    (Own::Days(30.0), 0.0, 0.0, 1.0, 0.3, 0.0),
                    (Own::Weight(20.0), f32::INFINITY, 1.0, 0.7, 0.0, 0.2),
                    (Own::Recent, 1.5, 2.0, 0.0, 0.5, 0.5),
                    (Own::Affinity, f32::NAN, 0.0, 1.0, 0.0, 0.0),
                ] {
                    let p = HybridParams {
                        prior,
                        activity_exp,
                        knn_weight: 0.3,
                        volume,
                        days_exp,
                        tenure_exp,
                        own,
                    };
                    let c = sc.components_with(&value, &[p.own]);
                    let want = score_from_components(&c, sc.totals(), &p);
                    let got = sc.serve(&value, &p).expect("the one pass applies");
                    let same = |a: &[f32], b: &[f32]| {
                        a.len() == b.len()
                            && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
                    };
                    assert!(
                        same(&got.scores, &want),
                        "scores, {p:?}, ALS {with_als}, {threads} threads"
                    );
                    let engaged: Vec<bool> = c.e.iter().map(|&x| x > 0.0).collect();
                    assert_eq!(got.engaged, engaged, "engagement, {p:?}");
                    assert!(want.iter().any(|&s| s > 0.0), "the case scores someone");
                }
            }
        }
    }

    #[test]
    fn does_not_apply_without_knn_or_days() {
        let (ui, days, knn, _) = shop(50, 20, 1);
        let p = HybridParams::own_only(Own::Days(f32::INFINITY));
        let no_knn = Scorer::new(&ui, None, None).with_days(&days, 8050);
        assert!(no_knn.serve(&[1, 2], &p).is_none());
        let no_days = Scorer::new(&ui, None, Some(&knn));
        assert!(no_days.serve(&[1, 2], &p).is_none());
        assert!(no_days
            .serve(&[1, 2], &HybridParams::own_only(Own::Affinity))
            .is_some());
    }
}
