//! The knobs of the hybrid score ([`HybridParams`], see [`crate::score::hybrid`] for the
//! formula) and its per-user ingredients for one value ([`Components`]). Pure Rust.
use crate::score::hybrid::Returns;
use crate::score::own::Own;
use crate::util::buf::Buf;
use std::sync::Arc;

/// The knobs of the hybrid score (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HybridParams {
    /// Strength of the collaborative prior, in affinity units (compare with typical `t_u`); `+inf`
    /// selects the pure-CF mode (which falls back to 0 when there is no collaborative model).
    /// Must be >= 0.
    pub prior: f32,
    /// Exponent of the activity factor `t_u ^ activity_exp`.
    pub activity_exp: f32,
    /// Weight of the kNN share in `cf_u` (clamped to [0, 1]; ignored unless both models exist).
    pub knn_weight: f32,
    /// Which activity scales the share: 0 = the observed activity `t_u`; 1 = the ALS-predicted
    /// engagement volume `x_u . Y_all` (with `prior = +inf`, `knn_weight = 0`, `activity_exp = 1`
    /// this ranks by the summed ALS predictions `x_u . Y_V`, as users of the `implicit` library
    /// do); 2 = the kNN volume `sum_j a_uj S_all(j)` (with `prior = +inf`, `knn_weight = 1`,
    /// `activity_exp = 1`: the summed item-kNN similarities to the value, `implicit`'s item-kNN
    /// ranking). Without the model, 1 and 2 fall back to `t_u`.
    pub volume: f32,
    /// Exponent of the active-days factor `d_u ^ days_exp` (0 = ignore how often the user returns).
    pub days_exp: f32,
    /// Exponent of the tenure factor `r_u ^ tenure_exp` (0 = ignore how long the user has returned).
    pub tenure_exp: f32,
    /// How the user's own engagement `e_u` and activity `t_u` are measured.
    pub own: Own,
}

impl HybridParams {
    /// The "past engagers by weighted frequency" baseline: `score_u = e_u`.
    pub const PAST_ENGAGERS: HybridParams = HybridParams {
        prior: 0.0,
        activity_exp: 1.0,
        knn_weight: 0.5,
        volume: 0.0,
        days_exp: 0.0,
        tenure_exp: 0.0,
        own: Own::Affinity,
    };

    /// The SQL baseline ranking by the own engagement measure `own` alone (`score_u = e_u`).
    pub fn own_only(own: Own) -> HybridParams {
        HybridParams {
            own,
            ..HybridParams::PAST_ENGAGERS
        }
    }

    /// Pure collaborative mode: `score_u = cf_u * t_u^activity_exp`.
    pub fn pure_cf(activity_exp: f32, knn_weight: f32) -> HybridParams {
        HybridParams {
            prior: f32::INFINITY,
            activity_exp,
            knn_weight,
            volume: 0.0,
            days_exp: 0.0,
            tenure_exp: 0.0,
            own: Own::Affinity,
        }
    }
}

/// Per-user, value-dependent ingredients of the score, independent of [`HybridParams`] (so a grid of
/// parameters can be evaluated without recomputing them). Each vector has one entry per user.
#[derive(Clone, Debug, PartialEq)]
pub struct Components {
    /// `e_u`, own engagement with the value.
    pub e: Vec<f32>,
    /// `knn_share_u`, `None` without a kNN model.
    pub knn_share: Option<Vec<f32>>,
    /// `als_share_u`, `None` without an ALS model.
    pub als_share: Option<Vec<f32>>,
    /// The ALS-predicted volume `max(0, x_u . Y_all)` (value-independent, shared), `None` without ALS.
    pub als_volume: Option<Arc<Buf<f32>>>,
    /// The kNN volume `sum_j a_uj S_all(j)` (value-independent, shared), `None` without kNN:
    /// `knn_share_u` times it is the summed item-kNN similarity to the value, the ranking of the
    /// `implicit` library's item-kNN recommenders.
    pub knn_volume: Option<Arc<Buf<f32>>>,
    /// Active days `d_u` and tenure `r_u` (value-independent, shared), `None` when the event
    /// times are unknown.
    pub returns: Option<std::sync::Arc<Returns>>,
    /// The own-engagement measures other than [`Own::Affinity`] that were asked for.
    pub own: Vec<OwnPart>,
}

/// One own-engagement measure for a value: `e` per user, and the matching activity `t` over all
/// items (value-independent, shared).
#[derive(Clone, Debug, PartialEq)]
pub struct OwnPart {
    pub own: Own,
    pub e: Vec<f32>,
    pub t: Arc<Buf<f32>>,
}

impl Components {
    /// Whether both hold the very same value-independent vectors (ALS volume, returns), so
    /// [`user_factors`] gives the same result for both.
    pub fn shares_user_parts(&self, other: &Components) -> bool {
        fn same<T>(a: &Option<std::sync::Arc<T>>, b: &Option<std::sync::Arc<T>>) -> bool {
            match (a, b) {
                (None, None) => true,
                (Some(x), Some(y)) => std::sync::Arc::ptr_eq(x, y),
                _ => false,
            }
        }
        same(&self.als_volume, &other.als_volume)
            && same(&self.knn_volume, &other.knn_volume)
            && same(&self.returns, &other.returns)
            && self.own.len() == other.own.len()
            && self
                .own
                .iter()
                .zip(&other.own)
                .all(|(a, b)| a.own == b.own && Arc::ptr_eq(&a.t, &b.t))
    }

    /// The own engagement `e` and activity `t` for `own` (`t_affinity` are the affinity totals).
    /// Panics when the measure was not computed (a caller bug: ask for it in
    /// [`Scorer::components_with`]).
    pub fn own_parts<'a>(&'a self, own: Own, t_affinity: &'a [f32]) -> (&'a [f32], &'a [f32]) {
        if own == Own::Affinity {
            return (&self.e, t_affinity);
        }
        let p = self
            .own
            .iter()
            .find(|p| p.own == own)
            .unwrap_or_else(|| panic!("own measure {own:?} not computed"));
        (&p.e, &p.t)
    }
}
