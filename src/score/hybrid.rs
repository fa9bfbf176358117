//! The hybrid audience score: a user's own share of engagement with a value, smoothed toward a
//! collaborative (item-kNN and/or ALS) estimate of that share, scaled by the user's activity.
//!
//! For a value `V` (a set of item ids) and user `u` with affinities `a_ui`:
//!
//! ```text
//! e_u         = sum_{i in V} a_ui                       own engagement with the value
//! t_u         = sum_i a_ui                              activity
//! knn_share_u = sum_j a_uj S_V(j) / sum_j a_uj S_all(j) (0 when the denominator is 0)
//!               S_V(j) = sum_{i in V} S(j,i), S_all(j) = sum_i S(j,i)
//! als_share_u = clamp(x_u . Y_V / x_u . Y_all, 0, 1)    (0 when the denominator is <= 0)
//!               Y_V = sum_{i in V} y_i, Y_all = sum_i y_i
//! cf_u        = knn_weight * knn_share_u + (1 - knn_weight) * als_share_u
//!               (only the model that exists when there is one; 0 when there is none)
//! share_u     = (e_u + prior * cf_u) / (t_u + prior)    (0 when t_u + prior = 0)
//! d_u         = number of distinct (UTC) days among the user's latest event times per item
//! r_u         = 1 + days from the first to the last of those days (tenure)
//! score_u     = share_u * t_u ^ activity_exp * d_u ^ days_exp * r_u ^ tenure_exp
//! ```
//!
//! `d_u` and `r_u` measure how the user *returns*, as opposed to how much they do: `d_u` is the
//! frequency of RFM analysis (separate days with activity), `r_u` the span between the first and
//! the latest of them (the "recency" of BG/NBD-style customer-lifetime models). A user who came
//! back over months is more likely to come back in the next window than one with the same volume
//! in a single burst; `days_exp` and `tenure_exp` (tuned, often 0) say how much that counts.
//! Without event times (`Scorer::with_last_seen` not called) both factors are 1.
//!
//! **The user's own engagement** `e_u` / `t_u` above is measured in one of four ways, the knob
//! `own` ([`Own`]), with the activity `t_u` always in the same unit (own engagement with every
//! item): the catalog's decayed affinity (`Affinity`, the default); the summed weight of the
//! engagement days, decayed with its own half-life `h` (`Weight(h)`, `h = inf`: the plain summed
//! weight); the number of **distinct days** with engagement, each counted `2^(-age/h)`
//! (`Days(h)`, `h = inf`: `count(DISTINCT date)`, the strongest simple SQL on repeat-purchase
//! data); and the recency of the last engagement, `1 / (1 + days since)` (`Recent`). Each of
//! them with `prior = 0, activity_exp = 1` is exactly one of the SQL baselines of
//! `audience.evaluate`, so tuning can always fall back to the best of them. Ages are counted in
//! days to the model's reference day.
//!
//! `share_u` is the posterior mean of the user's share of engagement going to `V` under a prior of
//! strength `prior` (in affinity units) centred on the collaborative estimate. Special settings:
//!
//! * `prior = 0, activity_exp = 1` gives exactly `e_u` — the "past engagers by weighted frequency"
//!   SQL baseline (computed as `e_u * (t_u / t_u)`, so the value is bit-identical to `e_u`);
//! * `prior = +inf` is the **pure-CF mode**: `share_u = cf_u`, so `score_u = cf_u * t_u^activity_exp`
//!   (with `activity_exp = 1` an activity-like ranking reweighted by taste; with 0 pure taste);
//! * `activity_exp = 0` ranks by share alone, `1` by expected engagement volume.

use crate::model::als::AlsModel;
use crate::model::csr::Csr;
use crate::model::days::DayIndex;
use crate::score::formula::dot;
pub use crate::score::formula::{
    engaged, factor_key, score_from_components, score_with_factors, user_factors, FactorKey,
};
pub use crate::score::own::Own;
use crate::score::own::{decay_tables, DayBits, DecayTable, OwnAcc};
pub use crate::score::params::{Components, HybridParams, OwnPart};
pub use crate::score::sample::{Returns, Sample};
use crate::util::buf::Buf;
use crate::util::par::{par_chunks, par_map};
use crate::util::prefetch;
use std::borrow::Cow;
use std::sync::{Arc, Mutex};

/// Users ahead of the one being scored whose day pointers ([`PF_FAR`]) and days ([`PF_NEAR`])
/// [`prefetch_days`] asks the CPU for.
const PF_FAR: usize = 12;
const PF_NEAR: usize = 5;

/// Prefetches the day pointers of user `u + PF_FAR`'s pairs and the days of user `u + PF_NEAR`'s
/// (their first and last cache lines).
#[inline(always)]
fn prefetch_days(indptr: &[usize], days: &DayIndex, u: usize) {
    if let Some(w) = indptr.get(u + PF_FAR..u + PF_FAR + 2) {
        prefetch(days.ptr.as_ptr().wrapping_add(w[0]));
        prefetch(days.ptr.as_ptr().wrapping_add(w[1]));
    }
    if let Some(w) = indptr.get(u + PF_NEAR..u + PF_NEAR + 2) {
        if let (Some(&a), Some(&b)) = (days.ptr.get(w[0]), days.ptr.get(w[1])) {
            prefetch(days.day.as_ptr().wrapping_add(a as usize));
            prefetch(days.day.as_ptr().wrapping_add(b as usize));
        }
    }
}

/// The users per part when `n` users are cut into `threads` parts (one part when there are fewer
/// than 65,536 users, as [`par_chunks`]); at least 1.
pub(crate) fn part_len(n: usize, threads: usize) -> usize {
    let threads = threads.clamp(1, 64).min(n.max(1));
    if threads <= 1 || n < 65_536 {
        n.max(1)
    } else {
        n.div_ceil(threads)
    }
}

/// Three per-user outputs cut at the same places into `threads` parts (one when there are fewer
/// than 65,536 users, as [`par_chunks`]): `(first user, e, share, own)` per part. `own` may be
/// empty (no fused own measure): its parts are then empty too.
#[allow(clippy::type_complexity)]
pub(crate) fn split3<'s>(
    e: &'s mut [f32],
    share: &'s mut [f32],
    own: &'s mut [f32],
    threads: usize,
) -> Vec<(usize, &'s mut [f32], &'s mut [f32], &'s mut [f32])> {
    let n = e.len();
    let chunk = part_len(n, threads);
    let mut own_parts: Vec<&mut [f32]> = own.chunks_mut(chunk).collect();
    own_parts.resize_with(n.div_ceil(chunk).max(1), Default::default);
    e.chunks_mut(chunk)
        .zip(share.chunks_mut(chunk))
        .zip(own_parts)
        .enumerate()
        .map(|(k, ((e, s), o))| (k * chunk, e, s, o))
        .collect()
}

/// `tab[j] = ([j in V], S_V(j))` for the value's distinct items (`kt`: the transposed kNN
/// matrix): the serving pass reads one entry per stored affinity.
pub(crate) fn value_table(kt: &Csr, n_items: usize, distinct: &[u32]) -> Vec<[f32; 2]> {
    let mut tab = vec![[0f32; 2]; n_items];
    for &i in distinct {
        tab[i as usize][0] = 1.0;
        let (js, ss) = kt.row(i as usize);
        for (&j, &s) in js.iter().zip(ss) {
            tab[j as usize][1] += s;
        }
    }
    tab
}

/// `Y_V`, the sum of the value's item factors (accumulated in f64).
pub(crate) fn value_factors(m: &AlsModel, distinct: &[u32]) -> Vec<f32> {
    let mut y = vec![0f64; m.factors];
    for &i in distinct {
        for (acc, &x) in y.iter_mut().zip(m.item(i as usize)) {
            *acc += x as f64;
        }
    }
    y.into_iter().map(|x| x as f32).collect()
}

/// Scores users for values against one affinity matrix and optional models. Everything that does
/// not depend on the value (activity, CF denominators, kNN transpose, `Y_all`) is computed in
/// [`Scorer::new`].
pub struct Scorer<'a> {
    pub(crate) ui: &'a Csr,
    pub(crate) als: Option<&'a AlsModel>,
    pub(crate) knn: Option<&'a Csr>,
    /// Transposed kNN matrix: row `i` lists the items `j` having `i` as a neighbour, with `S(j,i)`.
    pub(crate) knn_t: Option<Cow<'a, Csr>>,
    /// `t_u`.
    pub(crate) t: Buf<f32>,
    /// `sum_j a_uj S_all(j)` (empty without kNN).
    pub(crate) knn_den: Buf<f32>,
    /// `x_u . Y_all` (empty without ALS).
    pub(crate) als_den: Buf<f32>,
    pub(crate) als_volume: Arc<Buf<f32>>,
    pub(crate) knn_volume: Arc<Buf<f32>>,
    /// `d_u` and `r_u`, `None` until [`Scorer::with_days`].
    pub(crate) returns: Option<std::sync::Arc<Returns>>,
    /// Engagement days per stored pair and the reference day ages are counted to.
    pub(crate) days: Option<(&'a DayIndex, i32)>,
    /// Activity totals of the own measures computed so far.
    pub(crate) own_totals: Mutex<Vec<(Own, Arc<Buf<f32>>)>>,
    /// Threads for the per-user loops of [`Scorer::components`] (1 = the calling thread only).
    pub(crate) threads: usize,
}

/// What [`Scorer::new`] and [`Scorer::with_days`] precompute, plus the activity totals of chosen own
/// measures: written to a model's serving image and read back in place, so a backend serves a
/// model without recomputing them.
#[derive(Clone, Debug, PartialEq)]
pub struct ScorerParts {
    pub t: Buf<f32>,
    pub knn_den: Buf<f32>,
    pub als_den: Buf<f32>,
    pub knn_t: Option<Csr>,
    pub als_volume: Buf<f32>,
    pub returns: Option<Returns>,
    pub own_totals: Vec<(Own, Buf<f32>)>,
}

impl<'a> Scorer<'a> {
    /// Uses `threads` threads for scoring (results do not depend on it).
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// Precomputes the value-independent parts. Panics if the model shapes do not match `ui`
    /// (kNN must be items x items, ALS must have `n_users` user and `n_items` item vectors).
    pub fn new(ui: &'a Csr, als: Option<&'a AlsModel>, knn: Option<&'a Csr>) -> Self {
        Self::with_transpose(ui, als, knn, knn.map(|s| Cow::Owned(s.transpose())))
    }

    /// A scorer of other users' rows `ui` over the same items and collaborative models: the kNN
    /// matrix and its transpose are shared, not recomputed (users with events since the build;
    /// `als` holds their folded-in factors and this model's item factors). Engagement days as
    /// for [`Scorer::with_days`], against this scorer's reference day.
    pub fn for_rows<'b>(
        &'b self,
        ui: &'b Csr,
        als: Option<&'b AlsModel>,
        days: Option<&'b DayIndex>,
    ) -> Scorer<'b> {
        let s = Scorer::with_transpose(ui, als, self.knn, self.knn_t.as_deref().map(Cow::Borrowed))
            .with_threads(self.threads);
        match (days, self.days) {
            (Some(d), Some((_, ref_day))) => s.with_days(d, ref_day),
            _ => s,
        }
    }

    fn with_transpose(
        ui: &'a Csr,
        als: Option<&'a AlsModel>,
        knn: Option<&'a Csr>,
        knn_t: Option<Cow<'a, Csr>>,
    ) -> Self {
        let (n_users, n_items) = (ui.n_rows, ui.n_cols);
        let t: Vec<f32> = (0..n_users)
            .map(|u| ui.row(u).1.iter().map(|&a| a as f64).sum::<f64>() as f32)
            .collect();
        let mut knn_den = Vec::new();
        if let Some(s) = knn {
            assert!(
                s.n_rows == n_items && s.n_cols == n_items,
                "kNN matrix must be items x items"
            );
            let s_all: Vec<f32> = (0..n_items)
                .map(|j| s.row(j).1.iter().map(|&x| x as f64).sum::<f64>() as f32)
                .collect();
            knn_den = (0..n_users)
                .map(|u| {
                    let (items, vals) = ui.row(u);
                    items
                        .iter()
                        .zip(vals)
                        .map(|(&j, &a)| a as f64 * s_all[j as usize] as f64)
                        .sum::<f64>() as f32
                })
                .collect();
        }
        let mut als_den = Vec::new();
        if let Some(m) = als {
            let k = m.factors;
            assert!(
                m.user_factors.len() == n_users * k && m.item_factors.len() == n_items * k,
                "ALS model shape does not match the affinity matrix"
            );
            let mut y_all = vec![0f64; k];
            for i in 0..n_items {
                for (acc, &y) in y_all.iter_mut().zip(m.item(i)) {
                    *acc += y as f64;
                }
            }
            let y_all: Vec<f32> = y_all.into_iter().map(|x| x as f32).collect();
            als_den = (0..n_users).map(|u| dot(m.user(u), &y_all)).collect();
        }
        let als_volume = Arc::new(
            als_den
                .iter()
                .map(|&d| if d > 0.0 { d } else { 0.0 })
                .collect(),
        );
        let knn_volume = Arc::new(Buf::from(knn_den.clone()));
        Scorer {
            ui,
            als,
            knn,
            knn_t,
            t: t.into(),
            knn_den: knn_den.into(),
            als_den: als_den.into(),
            als_volume,
            knn_volume,
            returns: None,
            days: None,
            own_totals: Mutex::new(Vec::new()),
            threads: 1,
        }
    }

    /// The precomputed parts, with the activity totals of `owns` computed now (for a serving image).
    pub fn parts(&self, owns: &[Own]) -> ScorerParts {
        let mut own_totals: Vec<(Own, Buf<f32>)> = Vec::new();
        for &o in owns {
            if o != Own::Affinity && self.has_days() && !own_totals.iter().any(|(x, _)| *x == o) {
                own_totals.push((o, (*self.own_totals(o)).clone()));
            }
        }
        ScorerParts {
            t: self.t.clone(),
            knn_den: self.knn_den.clone(),
            als_den: self.als_den.clone(),
            // A scorer of other rows (`for_rows`) borrows its model's transpose: not part of its parts.
            knn_t: match &self.knn_t {
                Some(Cow::Owned(t)) => Some(t.clone()),
                _ => None,
            },
            als_volume: (*self.als_volume).clone(),
            returns: self.returns.as_deref().cloned(),
            own_totals,
        }
    }

    /// A scorer from parts computed earlier by [`Scorer::parts`] for the same matrices (as read
    /// from a serving image): nothing is recomputed. Panics when the shapes do not match.
    pub fn from_parts(
        ui: &'a Csr,
        als: Option<&'a AlsModel>,
        knn: Option<&'a Csr>,
        days: Option<(&'a DayIndex, i32)>,
        mut parts: ScorerParts,
    ) -> Self {
        let knn_t = parts.knn_t.take().map(Cow::Owned);
        Self::from_parts_with(ui, als, knn, days, parts, knn_t)
    }

    /// [`Scorer::for_rows`] from parts its [`Scorer::parts`] gave earlier (rows that did not
    /// change since): nothing is recomputed.
    pub fn rows_from_parts<'b>(
        &'b self,
        ui: &'b Csr,
        als: Option<&'b AlsModel>,
        days: Option<&'b DayIndex>,
        parts: ScorerParts,
    ) -> Scorer<'b> {
        let days = match (days, self.days) {
            (Some(d), Some((_, ref_day))) => Some((d, ref_day)),
            _ => None,
        };
        let knn_t = self.knn_t.as_deref().map(Cow::Borrowed);
        Scorer::from_parts_with(ui, als, self.knn, days, parts, knn_t).with_threads(self.threads)
    }

    fn from_parts_with(
        ui: &'a Csr,
        als: Option<&'a AlsModel>,
        knn: Option<&'a Csr>,
        days: Option<(&'a DayIndex, i32)>,
        parts: ScorerParts,
        knn_t: Option<Cow<'a, Csr>>,
    ) -> Self {
        let n = ui.n_rows;
        assert!(parts.t.len() == n, "one activity per user");
        assert!(
            knn.is_none()
                || (parts.knn_den.len() == n
                    && knn_t.as_ref().is_some_and(|t| t.n_rows == ui.n_cols)),
            "kNN parts"
        );
        assert!(
            als.is_none() || (parts.als_den.len() == n && parts.als_volume.len() == n),
            "ALS parts"
        );
        assert!(
            days.is_none()
                || parts
                    .returns
                    .as_ref()
                    .is_some_and(|r| r.days.len() == n && r.tenure.len() == n),
            "day parts"
        );
        assert!(
            parts.own_totals.iter().all(|(_, t)| t.len() == n),
            "own totals per user"
        );
        if let Some((d, _)) = days {
            assert_eq!(d.pairs(), ui.nnz(), "one day list per stored affinity");
        }
        Scorer {
            ui,
            als,
            knn,
            knn_volume: Arc::new(parts.knn_den.clone()),
            knn_t,
            t: parts.t,
            knn_den: parts.knn_den,
            als_den: parts.als_den,
            als_volume: Arc::new(parts.als_volume),
            returns: if days.is_some() {
                parts.returns.map(Arc::new)
            } else {
                None
            },
            days,
            own_totals: Mutex::new(
                parts
                    .own_totals
                    .into_iter()
                    .map(|(o, t)| (o, Arc::new(t)))
                    .collect(),
            ),
            threads: 1,
        }
    }

    /// Supplies the engagement days of every stored affinity (same order as the matrix entries)
    /// and the reference day ages are counted to (days since 2000-01-01): the active days `d_u`,
    /// tenures `r_u` and the own measures other than [`Own::Affinity`] come from them. Panics if
    /// the index does not match the matrix.
    pub fn with_days(mut self, days: &'a DayIndex, reference_day: i32) -> Self {
        assert_eq!(
            days.pairs(),
            self.ui.nnz(),
            "one day list per stored affinity"
        );
        self.returns = Some(std::sync::Arc::new(Returns::from_days(self.ui, days)));
        self.days = Some((days, reference_day));
        self
    }

    /// Whether own measures other than [`Own::Affinity`] can be computed.
    pub fn has_days(&self) -> bool {
        self.days.is_some()
    }

    /// Per-user active days and tenures, when known.
    pub fn returns(&self) -> Option<&Returns> {
        self.returns.as_deref()
    }

    pub fn n_users(&self) -> usize {
        self.ui.n_rows
    }

    pub fn n_items(&self) -> usize {
        self.ui.n_cols
    }

    /// Per-user activity `t_u`.
    pub fn totals(&self) -> &[f32] {
        &self.t
    }

    pub fn has_knn(&self) -> bool {
        self.knn.is_some()
    }

    pub fn has_als(&self) -> bool {
        self.als.is_some()
    }

    /// Membership mask of the value and its distinct in-range items (ids >= n_items are ignored, so
    /// are duplicates; the input need not be sorted).
    pub(crate) fn value_set(&self, value_items: &[u32]) -> (Vec<bool>, Vec<u32>) {
        let mut mask = vec![false; self.n_items()];
        let mut distinct = Vec::with_capacity(value_items.len());
        for &i in value_items {
            if let Some(m) = mask.get_mut(i as usize) {
                if !*m {
                    *m = true;
                    distinct.push(i);
                }
            }
        }
        (mask, distinct)
    }

    /// The value-dependent ingredients `e`, `knn_share`, `als_share` for every user.
    pub fn components(&self, value_items: &[u32]) -> Components {
        self.components_with(value_items, &[])
    }

    /// [`Scorer::components`] with the own-engagement measures `owns` too (those needing days are
    /// zero without [`Scorer::with_days`]; [`Own::Affinity`] is always there).
    pub fn components_with(&self, value_items: &[u32], owns: &[Own]) -> Components {
        let (n_users, n_items) = (self.n_users(), self.n_items());
        let (mask, distinct) = self.value_set(value_items);
        let mut wanted: Vec<Own> = Vec::new();
        for &o in owns {
            if o != Own::Affinity && !wanted.contains(&o) {
                wanted.push(o);
            }
        }
        let mut fused_own: Option<OwnPart> = None;
        let mut e = vec![0f32; n_users];
        let mut knn_share = None;
        if let Some(kt) = self.knn_t.as_deref() {
            let tab = value_table(kt, n_items, &distinct);
            // (e_u, knn_share_u, own_u) per user, in parallel chunks. One own measure (serving an
            // audience) is computed in the same pass, while the user's row is in cache.
            let fused = match (&wanted[..], self.days) {
                ([o], Some((days, ref_day))) => {
                    Some((*o, days, ref_day, decay_tables(days, ref_day, &[*o])))
                }
                _ => None,
            };
            // Written in place per user: e, the kNN share and (fused) the own measure.
            let mut share = vec![0f32; n_users];
            let mut own_e = vec![0f32; if fused.is_some() { n_users } else { 0 }];
            let parts = split3(&mut e, &mut share, &mut own_e, self.threads);
            let fused_ref = fused
                .as_ref()
                .map(|(o, days, ref_day, tables)| (*o, *days, *ref_day, &tables[0]));
            par_map(parts, |(first, e_out, share_out, own_out)| {
                let mut bits = DayBits::new();
                let mut hits: Vec<u32> = Vec::new();
                for k in 0..e_out.len() {
                    let u = first + k;
                    let (eu, num, own) = self.row_pass(u, &tab, fused_ref, &mut hits, &mut bits);
                    if fused.is_some() {
                        own_out[k] = own;
                    }
                    let den = self.knn_den[u];
                    e_out[k] = eu;
                    share_out[k] = if den > 0.0 {
                        (num / den).clamp(0.0, 1.0)
                    } else {
                        0.0
                    };
                }
            });
            if let Some((o, ..)) = fused {
                fused_own = Some(OwnPart {
                    own: o,
                    e: own_e,
                    t: self.own_totals(o),
                });
            }
            knn_share = Some(share);
        } else {
            for (u, eu) in e.iter_mut().enumerate() {
                let (items, vals) = self.ui.row(u);
                *eu = items
                    .iter()
                    .zip(vals)
                    .map(|(&j, &a)| if mask[j as usize] { a } else { 0.0 })
                    .sum();
            }
        }
        let als_share = self.als.map(|m| {
            let y_v = value_factors(m, &distinct);
            let mut share = vec![0f32; n_users];
            par_chunks(&mut share, self.threads, |first, out| {
                for (k, slot) in out.iter_mut().enumerate() {
                    let u = first + k;
                    *slot = self.als_share_of(m, &y_v, u);
                }
            });
            share
        });
        let als_volume = self.als.map(|_| self.als_volume.clone());
        let knn_volume = self.knn.map(|_| self.knn_volume.clone());
        let own = match fused_own {
            Some(part) => vec![part],
            None => self.own_parts(&mask, &e, &wanted),
        };
        Components {
            e,
            knn_share,
            als_share,
            als_volume,
            knn_volume,
            returns: self.returns.clone(),
            own,
        }
    }

    /// User `u`'s row against the value's table `tab` (`[j in V]`, `S_V(j)` per item): the
    /// engagement `e_u`, the kNN numerator and, with `fused` (an own measure, the days, the
    /// reference day, its decay table), the own measure (0 when `e_u <= 0`). `hits` and `bits` are
    /// scratch space kept between users.
    #[inline(always)]
    pub(crate) fn row_pass(
        &self,
        u: usize,
        tab: &[[f32; 2]],
        fused: Option<(Own, &DayIndex, i32, &DecayTable)>,
        hits: &mut Vec<u32>,
        bits: &mut DayBits,
    ) -> (f32, f32, f32) {
        let (items, vals) = self.ui.row(u);
        let (mut eu, mut num) = (0f32, 0f32);
        let Some((o, days, ref_day, table)) = fused else {
            for (&j, &a) in items.iter().zip(vals) {
                let w = tab[j as usize];
                eu += a * w[0];
                num += a * w[1];
            }
            return (eu, num, 0.0);
        };
        // The own measure in the same pass, from the pairs of the value's items. Only the value's
        // pairs read their days, so those reads skip through the day index, which the hardware
        // prefetchers do not follow: the day pointers of the user PF_FAR ahead and the days of
        // the one PF_NEAR ahead are prefetched (the pointers were, PF_FAR - PF_NEAR users ago).
        prefetch_days(&self.ui.indptr, days, u);
        let first = self.ui.indptr[u];
        // The value's pairs are noted without a branch (which would be mispredicted at every
        // turn between value and other items), then read.
        if hits.len() < items.len() {
            hits.resize(items.len(), 0);
        }
        let mut n = 0usize;
        for (k, (&j, &a)) in items.iter().zip(vals).enumerate() {
            let w = tab[j as usize];
            eu += a * w[0];
            num += a * w[1];
            hits[n] = k as u32;
            n += (w[0] != 0.0) as usize;
        }
        let mut acc = OwnAcc::new(o, table, days, ref_day);
        for &k in &hits[..n] {
            let (ds, ws) = days.of(first + k as usize);
            acc.add(ds, ws, bits);
        }
        let m = acc.finish(bits);
        (eu, num, if eu > 0.0 { m } else { 0.0 })
    }

    /// `als_share_u = clamp(x_u . Y_V / x_u . Y_all, 0, 1)` (0 when the denominator is not
    /// positive or the ratio is NaN).
    #[inline(always)]
    pub(crate) fn als_share_of(&self, m: &AlsModel, y_v: &[f32], u: usize) -> f32 {
        let den = self.als_den[u];
        if den > 0.0 {
            let s = dot(m.user(u), y_v) / den;
            if s.is_nan() {
                0.0
            } else {
                s.clamp(0.0, 1.0)
            }
        } else {
            0.0
        }
    }

    /// One score per user for the value.
    pub fn score(&self, value_items: &[u32], p: &HybridParams) -> Vec<f32> {
        score_from_components(&self.components_with(value_items, &[p.own]), &self.t, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::own::{own_measure, own_measure_one};

    /// The serving pass's single own measure is bit for bit the general one, for every measure,
    /// on random users with several engagement days per pair (shared days, negative ages).
    #[test]
    fn own_measure_one_equals_own_measure() {
        let mut rng = crate::util::rand::SplitMix64(7);
        let mut below = |n: u64| rng.next_u64() % n;
        let (n_users, n_items) = (60usize, 25usize);
        let mut trip = Vec::new();
        for u in 0..n_users {
            for i in 0..n_items {
                if below(3) == 0 {
                    trip.push((u as u32, i as u32, 1.0 + below(5) as f32));
                }
            }
        }
        let ui = Csr::from_triplets(n_users, n_items, &mut trip);
        let days = crate::model::days::random_days(ui.nnz(), &mut below, (8000, 40, 4, 9, 7));
        let ref_day = 8030; // some days are after it (negative ages)
        let mask: Vec<bool> = (0..n_items).map(|i| i % 3 != 1).collect();
        let (mut bits, mut buf) = (DayBits::new(), Vec::new());
        for own in [
            Own::Weight(f32::INFINITY),
            Own::Weight(20.0),
            Own::Days(f32::INFINITY),
            Own::Days(10.0),
            Own::Recent,
        ] {
            let tables = decay_tables(&days, ref_day, &[own]);
            for u in 0..n_users {
                let mut want = [0f32];
                own_measure(
                    &ui,
                    &days,
                    ref_day,
                    u,
                    Some(&mask),
                    &[own],
                    &tables,
                    &mut buf,
                    &mut want,
                );
                let got =
                    own_measure_one(&ui, &days, ref_day, u, &mask, own, &tables[0], &mut bits);
                assert_eq!(
                    got.to_bits(),
                    want[0].to_bits(),
                    "{own:?}, user {u}: {got} vs {}",
                    want[0]
                );
            }
        }
        assert!(
            bits.words.iter().all(|&w| w == 0),
            "the bit set is left cleared"
        );
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-5 * (1.0 + a.abs().max(b.abs()))
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                close(*g, *w),
                "user {i}: got {g}, want {w} ({got:?} vs {want:?})"
            );
        }
    }

    /// 4 users x 4 items. User 3 has no history.
    fn ui() -> Csr {
        Csr::from_triplets(
            4,
            4,
            &mut [
                (0, 0, 2.0),
                (0, 1, 1.0),
                (1, 1, 3.0),
                (1, 2, 1.0),
                (2, 3, 4.0),
            ],
        )
    }

    /// Hand kNN: S(0,1)=1, S(1,0)=1, S(1,2)=2, S(2,1)=2, S(3,0)=0.5, S(3,2)=1.5.
    fn knn() -> Csr {
        Csr::from_triplets(
            4,
            4,
            &mut [
                (0, 1, 1.0),
                (1, 0, 1.0),
                (1, 2, 2.0),
                (2, 1, 2.0),
                (3, 0, 0.5),
                (3, 2, 1.5),
            ],
        )
    }

    /// k = 2: users (1,0),(0,1),(1,1),(0,0); items (1,0),(0,1),(0,2),(2,0).
    fn als() -> AlsModel {
        AlsModel {
            factors: 2,
            user_factors: vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0].into(),
            item_factors: vec![1.0, 0.0, 0.0, 1.0, 0.0, 2.0, 2.0, 0.0].into(),
        }
    }

    #[test]
    fn components_match_hand_computation() {
        let (ui, knn, als) = (ui(), knn(), als());
        let sc = Scorer::new(&ui, Some(&als), Some(&knn));
        assert_eq!(sc.totals(), &[3.0, 4.0, 4.0, 0.0]);
        // V = {0, 2}. S_V = [0, 1+2, 0, 0.5+1.5] = [0, 3, 0, 2]; S_all = [1, 3, 2, 2].
        let c = sc.components(&[0, 2]);
        assert_close(&c.e, &[2.0, 1.0, 0.0, 0.0]);
        // u0: (2*0 + 1*3) / (2*1 + 1*3) = 3/5; u1: (3*3 + 1*0)/(3*3 + 1*2) = 9/11; u2: 4*2/(4*2) = 1.
        assert_close(c.knn_share.as_ref().unwrap(), &[0.6, 9.0 / 11.0, 1.0, 0.0]);
        // Y_V = (1,0)+(0,2) = (1,2); Y_all = (3,3).
        // u0 (1,0): 1/3; u1 (0,1): 2/3; u2 (1,1): 3/6; u3 zero vector -> 0.
        assert_close(
            c.als_share.as_ref().unwrap(),
            &[1.0 / 3.0, 2.0 / 3.0, 0.5, 0.0],
        );
        // Unsorted, duplicated and out-of-range ids give the same result.
        assert_eq!(sc.components(&[2, 0, 2, 99]), c);
    }

    #[test]
    fn score_formula_and_modes() {
        let (ui, knn, als) = (ui(), knn(), als());
        let sc = Scorer::new(&ui, Some(&als), Some(&knn));
        let v = [0u32, 2];
        let p = HybridParams {
            prior: 2.0,
            activity_exp: 0.5,
            knn_weight: 0.25,
            volume: 0.0,
            days_exp: 0.0,
            tenure_exp: 0.0,
            own: Own::Affinity,
        };
        let knn_s = [0.6f32, 9.0 / 11.0, 1.0, 0.0];
        let als_s = [1.0f32 / 3.0, 2.0 / 3.0, 0.5, 0.0];
        let (e, t) = ([2.0f32, 1.0, 0.0, 0.0], [3.0f32, 4.0, 4.0, 0.0]);
        let want: Vec<f32> = (0..4)
            .map(|u| {
                let cf = 0.25 * knn_s[u] + 0.75 * als_s[u];
                (e[u] + 2.0 * cf) / (t[u] + 2.0) * t[u].sqrt()
            })
            .collect();
        assert_close(&sc.score(&v, &p), &want);
        // Past engagers baseline: exactly e.
        assert_eq!(sc.score(&v, &HybridParams::PAST_ENGAGERS), e.to_vec());
        // Pure CF with activity: cf * t.
        let pc = sc.score(&v, &HybridParams::pure_cf(1.0, 1.0));
        assert_close(&pc, &[0.6 * 3.0, 9.0 / 11.0 * 4.0, 4.0, 0.0]);
        // Share only (activity_exp 0) with no prior: e / t, users without history score 0.
        let p0 = HybridParams {
            prior: 0.0,
            activity_exp: 0.0,
            knn_weight: 0.5,
            volume: 0.0,
            days_exp: 0.0,
            tenure_exp: 0.0,
            own: Own::Affinity,
        };
        assert_close(&sc.score(&v, &p0), &[2.0 / 3.0, 0.25, 0.0, 0.0]);
        // Volume mode: pure ALS scaled by the predicted volume x_u . Y_all is the summed
        // prediction x_u . Y_V with Y_V = (1,2): u0 (1,0) -> 1, u1 (0,1) -> 2, u2 (1,1) -> 3.
        let raw = HybridParams {
            volume: 1.0,
            ..HybridParams::pure_cf(1.0, 0.0)
        };
        assert_close(&sc.score(&v, &raw), &[1.0, 2.0, 3.0, 0.0]);
        // kNN volume: pure kNN scaled by sum_j a_uj S_all(j) is the summed similarity to the value,
        // sum_j a_uj S_V(j) with S_V = [0, 3, 0, 2]: u0 1*3 = 3, u1 3*3 = 9, u2 4*2 = 8.
        let knn_sum = HybridParams {
            volume: 2.0,
            ..HybridParams::pure_cf(1.0, 1.0)
        };
        assert_close(&sc.score(&v, &knn_sum), &[3.0, 9.0, 8.0, 0.0]);
        // Without an ALS model, volume 1 falls back to the observed activity.
        let no_als = Scorer::new(&ui, None, Some(&knn));
        assert_eq!(
            no_als.score(&v, &raw),
            no_als.score(&v, &HybridParams::pure_cf(1.0, 0.0))
        );
    }

    #[test]
    fn single_model_and_no_model() {
        let (ui, knn, als) = (ui(), knn(), als());
        let v = [0u32, 2];
        let p = HybridParams {
            prior: 1.0,
            activity_exp: 1.0,
            knn_weight: 0.9,
            volume: 0.0,
            days_exp: 0.0,
            tenure_exp: 0.0,
            own: Own::Affinity,
        };
        let t = [3.0f32, 4.0, 4.0, 0.0];
        let e = [2.0f32, 1.0, 0.0, 0.0];
        let expect = |cf: [f32; 4]| -> Vec<f32> {
            (0..4)
                .map(|u| (e[u] + cf[u]) / (t[u] + 1.0) * t[u])
                .collect()
        };
        let only_knn = Scorer::new(&ui, None, Some(&knn));
        assert!(only_knn.components(&v).als_share.is_none());
        assert_close(
            &only_knn.score(&v, &p),
            &expect([0.6, 9.0 / 11.0, 1.0, 0.0]),
        );
        let only_als = Scorer::new(&ui, Some(&als), None);
        assert!(only_als.components(&v).knn_share.is_none());
        assert_close(
            &only_als.score(&v, &p),
            &expect([1.0 / 3.0, 2.0 / 3.0, 0.5, 0.0]),
        );
        let none = Scorer::new(&ui, None, None);
        assert_close(&none.score(&v, &p), &expect([0.0; 4]));
        assert_eq!(none.components(&v).e, e.to_vec());
        // Without any model, pure CF falls back to the own share (prior 0).
        let share_only = HybridParams {
            prior: 0.0,
            ..HybridParams::pure_cf(0.0, 0.5)
        };
        assert_eq!(
            none.score(&v, &HybridParams::pure_cf(0.0, 0.5)),
            none.score(&v, &share_only)
        );
        assert_close(&none.score(&v, &share_only), &[2.0 / 3.0, 0.25, 0.0, 0.0]);
    }

    #[test]
    fn returns_count_days_and_tenure_and_scale_scores() {
        let ui = ui();
        // Entry times in minutes (1440 per day), one per stored affinity, row by row.
        let nnz = ui.nnz();
        let row_of: Vec<usize> = (0..ui.n_rows)
            .flat_map(|u| std::iter::repeat_n(u, ui.indptr[u + 1] - ui.indptr[u]))
            .collect();
        // u0: every item on day 3; others: item k of the row on day 2 * k (so days = tenure-ish);
        // negative times fall on negative days (div_euclid).
        let mut seen = vec![0i32; nnz];
        let mut k_in_row = 0;
        for p in 0..nnz {
            if p > 0 && row_of[p] != row_of[p - 1] {
                k_in_row = 0;
            }
            seen[p] = if row_of[p] == 0 {
                3 * 1440 + 5
            } else {
                2 * 1440 * k_in_row - 1
            };
            k_in_row += 1;
        }
        let r = Returns::from_last_seen(&ui, &seen, 1440);
        // One engagement day per pair: the exact counts from the days agree.
        let ptr: Vec<u32> = (0..=nnz as u32).collect();
        let days = DayIndex::from_records(&ptr, &seen, &vec![1.0; nnz]);
        assert_eq!(Returns::from_days(&ui, &days), r);
        let len = |u: usize| (ui.indptr[u + 1] - ui.indptr[u]) as f32;
        assert_eq!(r.days[0], 1.0);
        assert_eq!(r.tenure[0], 1.0);
        for u in 1..3 {
            // Days -1, 1, 3, ...: n distinct days spanning 2(n - 1) + 1.
            assert_eq!(r.days[u], len(u), "user {u}");
            assert_eq!(r.tenure[u], 2.0 * (len(u) - 1.0) + 1.0, "user {u}");
        }
        assert_eq!((r.days[3], r.tenure[3]), (0.0, 0.0));
        assert_eq!(r.pick(&[2, 0]).days, vec![r.days[2], r.days[0]]);
        let v = [0u32, 2];
        let plain = Scorer::new(&ui, None, None);
        let with = Scorer::new(&ui, None, None).with_days(&days, 10);
        let base = HybridParams {
            prior: 1.0,
            activity_exp: 1.0,
            knn_weight: 0.5,
            volume: 0.0,
            days_exp: 0.0,
            tenure_exp: 0.0,
            own: Own::Affinity,
        };
        let s0 = plain.score(&v, &base);
        // Exponents 0 change nothing; without times the factors are 1.
        assert_eq!(with.score(&v, &base), s0);
        let dp = HybridParams {
            days_exp: 2.0,
            tenure_exp: 0.5,
            ..base
        };
        assert_eq!(plain.score(&v, &dp), s0);
        let got = with.score(&v, &dp);
        let want: Vec<f32> = (0..4)
            .map(|u| s0[u] * r.days[u].powi(2) * r.tenure[u].sqrt())
            .collect();
        assert_close(&got, &want);
        // A sample scores its users exactly as the whole population does.
        let (knn, als) = (knn(), als());
        let full = Scorer::new(&ui, Some(&als), Some(&knn)).with_days(&days, 10);
        let sample = Sample::every(&full, 2);
        assert_eq!(sample.users, vec![0, 2]);
        let owns = [Own::Days(f32::INFINITY), Own::Weight(14.0), Own::Recent];
        let c = sample.components(&full.components_with(&v, &owns));
        // Computing the own measures for the sample's users only gives the same components.
        assert_eq!(sample.components_with(&full, &v, &owns), c);
        // One own measure (serving) is computed in the kNN pass: the same values as with several.
        let all = full.components_with(&v, &owns);
        for (k, &o) in owns.iter().enumerate() {
            let one = full.components_with(&v, &[o]);
            assert_eq!(one.own.len(), 1);
            assert_eq!(one.own[0].e, all.own[k].e, "{o:?}");
        }
        let mut ps = vec![
            dp,
            HybridParams { volume: 1.0, ..dp },
            HybridParams::pure_cf(1.0, 0.5),
        ];
        ps.extend(owns.iter().map(|&own| HybridParams { own, ..dp }));
        for p in ps {
            let whole = full.score(&v, &p);
            assert_eq!(
                score_from_components(&c, &sample.pick(full.totals()), &p),
                sample.pick(&whole)
            );
        }
    }

    #[test]
    fn engaged_flags_users_with_value_engagement() {
        let ui = ui();
        let sc = Scorer::new(&ui, None, None);
        assert_eq!(
            engaged(&sc.components(&[0, 2])),
            vec![true, true, false, false]
        );
        assert_eq!(
            engaged(&sc.components(&[3])),
            vec![false, false, true, false]
        );
        assert_eq!(engaged(&sc.components(&[])), vec![false; 4]);
    }

    #[test]
    fn explain_orders_contributions() {
        let (ui, knn) = (ui(), knn());
        let sc = Scorer::new(&ui, None, Some(&knn));
        // u0, V={0,2}: own item 0 -> 2; CF: scale t/den = 3/5; item0: 2*S_V(0)=0; item1: 1*3*0.6=1.8.
        let ex0 = sc.explain(0, &[0, 2], 10);
        assert_eq!(ex0.iter().map(|x| x.0).collect::<Vec<_>>(), vec![0, 1]);
        assert!(close(ex0[0].1, 2.0) && close(ex0[1].1, 1.8), "{ex0:?}");
        assert_eq!(sc.explain(0, &[0, 2], 1), vec![(0, 2.0)]);
        // u1, V={0,2}: own item 2 -> 1; CF scale 4/11: item1 3*3*4/11 = 36/11, item2 1*0 -> total 1.
        let ex = sc.explain(1, &[0, 2], 10);
        assert_eq!(ex.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!(close(ex[0].1, 36.0 / 11.0) && close(ex[1].1, 1.0));
        // Contributions sum to e_u + knn_share_u * t_u.
        let sum: f32 = ex.iter().map(|x| x.1).sum();
        assert!(close(sum, 1.0 + 9.0 / 11.0 * 4.0));
        // Ties broken by item id: user with two equal own items, no kNN.
        let ui2 = Csr::from_triplets(1, 3, &mut [(0, 2, 1.0), (0, 0, 1.0), (0, 1, 5.0)]);
        let sc2 = Scorer::new(&ui2, None, None);
        assert_eq!(sc2.explain(0, &[0, 2], 5), vec![(0, 1.0), (2, 1.0)]);
        assert_eq!(
            sc2.explain(0, &[1, 0, 2], 5),
            vec![(1, 5.0), (0, 1.0), (2, 1.0)]
        );
        assert!(sc2.explain(7, &[0], 5).is_empty());
        assert!(sc2.explain(0, &[0], 0).is_empty());
    }

    #[test]
    fn threads_do_not_change_components() {
        // Large enough (>= 65,536 users) for the parallel path.
        let (n_users, n_items) = (70_000usize, 40usize);
        let mut x = 12345u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut t = Vec::new();
        for u in 0..n_users {
            for _ in 0..3 {
                t.push((
                    u as u32,
                    (next() % n_items as u64) as u32,
                    1.0 + (next() % 5) as f32,
                ));
            }
        }
        let ui = Csr::from_triplets(n_users, n_items, &mut t);
        let mut kt: Vec<(u32, u32, f32)> = (0..n_items as u32)
            .flat_map(|i| {
                [
                    (i, (i + 1) % n_items as u32, 0.5),
                    (i, (i + 7) % n_items as u32, 0.25),
                ]
            })
            .collect();
        let knn = Csr::from_triplets(n_items, n_items, &mut kt);
        let k = 4;
        let als = AlsModel {
            factors: k,
            user_factors: (0..n_users * k)
                .map(|_| (next() % 100) as f32 / 100.0)
                .collect(),
            item_factors: (0..n_items * k)
                .map(|_| (next() % 100) as f32 / 100.0)
                .collect(),
        };
        let v = [1u32, 5, 9];
        let one = Scorer::new(&ui, Some(&als), Some(&knn)).components(&v);
        let three = Scorer::new(&ui, Some(&als), Some(&knn))
            .with_threads(3)
            .components(&v);
        assert_eq!(one, three);
        assert!(one.e.iter().any(|&e| e > 0.0));
    }
}
