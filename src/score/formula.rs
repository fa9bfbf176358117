//! The hybrid score from its per-user ingredients (see [`crate::score::hybrid`] for the
//! formula): the value-independent user factors and the per-value scores. Pure Rust.
use crate::score::hybrid::{Components, HybridParams, Returns};

/// `t^exp`, with the exact values for the common exponents and `0^0 = 1`.
#[inline]
fn activity_factor(t: f32, exp: f32) -> f32 {
    if exp == 0.0 {
        1.0
    } else if t <= 0.0 {
        0.0
    } else if exp == 1.0 {
        t
    } else if exp == 0.5 {
        t.sqrt()
    } else {
        t.powf(exp)
    }
}

/// Users who already engaged with the value (`e_u > 0`): the ones a cross-sell audience drops.
pub fn engaged(c: &Components) -> Vec<bool> {
    c.e.iter().map(|&e| e > 0.0).collect()
}

/// Scores from precomputed components and activities `t` (see the module doc for the formula).
/// Never returns NaN.
pub fn score_from_components(c: &Components, t: &[f32], p: &HybridParams) -> Vec<f32> {
    score_with_factors(c, t, p, &user_factors(c, t, p))
}

/// What [`user_factors`] depends on besides the shared per-user vectors: two parameter sets with
/// the same key get the same factors from the same components.
pub type FactorKey = (u32, u8, u32, u32, (u8, u32));

/// Which volume vector scales the score: 0 = the observed activity (in the own measure's unit),
/// 1 = the ALS-predicted volume, 2 = the kNN volume; a model that is missing falls back to 0.
fn volume_kind(c: &Components, p: &HybridParams) -> u8 {
    volume_kind_of(c.knn_volume.is_some(), c.als_volume.is_some(), p)
}

pub fn factor_key(c: &Components, p: &HybridParams) -> FactorKey {
    let used = |x: f32| {
        if x != 0.0 && !x.is_nan() && c.returns.is_some() {
            x.to_bits()
        } else {
            0
        }
    };
    let kind = volume_kind(c, p);
    // The observed volume is the activity in the own measure's unit.
    let unit = if kind != 0 || p.activity_exp == 0.0 {
        (0, 0)
    } else {
        p.own.key()
    };
    (
        p.activity_exp.to_bits(),
        kind,
        used(p.days_exp),
        used(p.tenure_exp),
        unit,
    )
}

/// The per-user scale of the score, `v_u^activity_exp * d_u^days_exp * r_u^tenure_exp` (see the
/// module doc). Value-independent: it depends on `t`, the shared parts of `c` (ALS volume,
/// returns) and [`factor_key`] only.
pub fn user_factors(c: &Components, t: &[f32], p: &HybridParams) -> Vec<f32> {
    let n = c.e.len();
    assert_eq!(
        t.len(),
        n,
        "components and totals disagree on the number of users"
    );
    let volume: &[f32] = match (volume_kind(c, p), &c.als_volume, &c.knn_volume) {
        (1, Some(v), _) | (2, _, Some(v)) => v.as_slice(),
        _ => c.own_parts(p.own, t).1,
    };
    assert_eq!(
        volume.len(),
        n,
        "components and volumes disagree on the number of users"
    );
    let returns = returns_used(c.returns.as_deref(), p);
    if let Some(r) = returns {
        assert!(
            r.days.len() == n && r.tenure.len() == n,
            "components and returns disagree on the number of users"
        );
    }
    (0..n)
        .map(|u| user_factor(volume[u], returns, u, p))
        .collect()
}

/// One user's factor of [`user_factors`]: `volume^activity_exp`, times `d_u^days_exp` and
/// `r_u^tenure_exp` when `returns` are given and those exponents are used.
#[inline]
pub(crate) fn user_factor(
    volume: f32,
    returns: Option<&Returns>,
    u: usize,
    p: &HybridParams,
) -> f32 {
    let used = |x: f32| x != 0.0 && !x.is_nan();
    let mut f = activity_factor(volume, p.activity_exp);
    if let Some(r) = returns {
        if used(p.days_exp) {
            f *= activity_factor(r.days[u], p.days_exp);
        }
        if used(p.tenure_exp) {
            f *= activity_factor(r.tenure[u], p.tenure_exp);
        }
    }
    f
}

/// The volume vector [`user_factors`] scales by: 0 = the observed activity, 1 = the ALS volume,
/// 2 = the kNN volume (see [`volume_kind`]).
pub(crate) fn volume_kind_of(c_has_knn: bool, c_has_als: bool, p: &HybridParams) -> u8 {
    if p.volume >= 1.5 && c_has_knn {
        2
    } else if (0.5..1.5).contains(&p.volume) && c_has_als {
        1
    } else {
        0
    }
}

/// The returns [`user_factors`] reads (`None` when neither exponent is used).
pub(crate) fn returns_used<'r>(
    returns: Option<&'r Returns>,
    p: &HybridParams,
) -> Option<&'r Returns> {
    let used = |x: f32| x != 0.0 && !x.is_nan();
    returns.filter(|_| used(p.days_exp) || used(p.tenure_exp))
}

/// One user's score from its own engagement `e`, activity `t`, factor `f` and collaborative
/// shares (`k`: kNN, `a`: ALS; which exist is `shares`), with the knobs [`effective_knobs`] gave:
/// the arithmetic of [`score_with_factors`], bit for bit.
#[inline]
#[allow(clippy::too_many_arguments)]
pub(crate) fn score_one(
    prior: f32,
    kw: f32,
    shares: (bool, bool),
    e: f32,
    t: f32,
    f: f32,
    k: f32,
    a: f32,
) -> f32 {
    if prior == f32::INFINITY {
        not_nan(match shares {
            (true, true) => (kw * k + (1.0 - kw) * a) * f,
            (true, false) => k * f,
            (false, true) => a * f,
            (false, false) => 0.0 * f,
        })
    } else if prior == 0.0 {
        let s = e * (f / t);
        not_nan(if t > 0.0 { s } else { 0.0 })
    } else {
        not_nan(match shares {
            (true, true) => {
                let cf = kw * k + (1.0 - kw) * a;
                (e + prior * cf) * (f / (t + prior))
            }
            (true, false) => (e + prior * k) * (f / (t + prior)),
            (false, true) => (e + prior * a) * (f / (t + prior)),
            (false, false) => (e + prior * 0.0) * (f / (t + prior)),
        })
    }
}

/// The kNN weight and the prior a score uses: NaN knobs fall back (0.5, 0), the weight is clamped
/// to [0, 1], a negative prior is 0, and pure CF without any collaborative model (which would
/// score everyone 0) uses the own share instead (prior 0).
pub(crate) fn effective_knobs(c: &Components, p: &HybridParams) -> (f32, f32) {
    effective_knobs_of(c.knn_share.is_some() || c.als_share.is_some(), p)
}

/// [`effective_knobs`] given whether any collaborative share exists.
pub(crate) fn effective_knobs_of(any_share: bool, p: &HybridParams) -> (f32, f32) {
    let kw = if p.knn_weight.is_nan() {
        0.5
    } else {
        p.knn_weight.clamp(0.0, 1.0)
    };
    let prior = if p.prior.is_nan() {
        0.0
    } else {
        p.prior.max(0.0)
    };
    let prior = if prior == f32::INFINITY && !any_share {
        0.0
    } else {
        prior
    };
    (kw, prior)
}

/// [`score_from_components`] with the user factors `f` precomputed by [`user_factors`] (for the
/// same `t`, shared components and [`factor_key`]).
pub fn score_with_factors(c: &Components, t: &[f32], p: &HybridParams, f: &[f32]) -> Vec<f32> {
    let n = c.e.len();
    assert!(
        t.len() == n && f.len() == n,
        "components, totals and factors disagree on the number of users"
    );
    let (kw, prior) = effective_knobs(c, p);
    let (e, t) = c.own_parts(p.own, t);
    let (e, t, f) = (&e[..n], &t[..n], &f[..n]);
    // One branch-free loop per case (the knobs and the models present are the same for every
    // user), so that each vectorises; per user the arithmetic is the same as
    // `(e + prior * cf) * (f / (t + prior))`, bit for bit.
    let mut out = vec![0f32; n];
    let shares = match (&c.knn_share, &c.als_share) {
        (Some(k), Some(a)) => Shares::Both(&k[..n], &a[..n], kw),
        (Some(x), None) | (None, Some(x)) => Shares::One(&x[..n]),
        (None, None) => Shares::None,
    };
    if prior == f32::INFINITY {
        match shares {
            Shares::Both(k, a, kw) => {
                for (((o, &fu), &ku), &au) in out.iter_mut().zip(f).zip(k).zip(a) {
                    *o = not_nan((kw * ku + (1.0 - kw) * au) * fu);
                }
            }
            Shares::One(x) => {
                for ((o, &fu), &xu) in out.iter_mut().zip(f).zip(x) {
                    *o = not_nan(xu * fu);
                }
            }
            Shares::None => {
                for (o, &fu) in out.iter_mut().zip(f) {
                    *o = not_nan(0.0 * fu);
                }
            }
        }
    } else if prior == 0.0 {
        // e * (t^exp / t): bit-exact e_u for activity_exp = 1.
        for (((o, &eu), &tu), &fu) in out.iter_mut().zip(e).zip(t).zip(f) {
            let s = eu * (fu / tu);
            *o = not_nan(if tu > 0.0 { s } else { 0.0 });
        }
    } else {
        match shares {
            Shares::Both(k, a, kw) => {
                for (((((o, &eu), &tu), &fu), &ku), &au) in
                    out.iter_mut().zip(e).zip(t).zip(f).zip(k).zip(a)
                {
                    let cf = kw * ku + (1.0 - kw) * au;
                    *o = not_nan((eu + prior * cf) * (fu / (tu + prior)));
                }
            }
            Shares::One(x) => {
                for ((((o, &eu), &tu), &fu), &xu) in out.iter_mut().zip(e).zip(t).zip(f).zip(x) {
                    *o = not_nan((eu + prior * xu) * (fu / (tu + prior)));
                }
            }
            Shares::None => {
                for (((o, &eu), &tu), &fu) in out.iter_mut().zip(e).zip(t).zip(f) {
                    *o = not_nan((eu + prior * 0.0) * (fu / (tu + prior)));
                }
            }
        }
    }
    out
}

/// The collaborative shares a score mixes: both (with the kNN weight), one, or none.
enum Shares<'a> {
    Both(&'a [f32], &'a [f32], f32),
    One(&'a [f32]),
    None,
}

/// NaN scores count as 0.
#[inline(always)]
fn not_nan(s: f32) -> f32 {
    if s.is_nan() {
        0.0
    } else {
        s
    }
}

/// Dot product with several independent accumulators (vectorises).
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::hybrid::Own;
    use crate::util::rand::SplitMix64;

    /// The per-user formula written plainly, as before the loops were split per case.
    fn reference(c: &Components, t: &[f32], p: &HybridParams, f: &[f32]) -> Vec<f32> {
        let (kw, prior) = effective_knobs(c, p);
        let cf = |u: usize| -> f32 {
            match (&c.knn_share, &c.als_share) {
                (Some(k), Some(a)) => kw * k[u] + (1.0 - kw) * a[u],
                (Some(k), None) => k[u],
                (None, Some(a)) => a[u],
                (None, None) => 0.0,
            }
        };
        let (e, t) = c.own_parts(p.own, t);
        (0..c.e.len())
            .map(|u| {
                let s = if prior == f32::INFINITY {
                    cf(u) * f[u]
                } else if prior == 0.0 {
                    if t[u] > 0.0 {
                        e[u] * (f[u] / t[u])
                    } else {
                        0.0
                    }
                } else {
                    (e[u] + prior * cf(u)) * (f[u] / (t[u] + prior))
                };
                if s.is_nan() {
                    0.0
                } else {
                    s
                }
            })
            .collect()
    }

    /// Every case (pure CF, own only, blended; both shares, one, none; NaN knobs) gives the plain
    /// formula's scores bit for bit, zeros, infinities and NaN inputs included.
    #[test]
    fn split_loops_give_the_plain_formula_bit_for_bit() {
        let mut r = SplitMix64(9);
        let n = 1003;
        let mut v = |special: bool| -> Vec<f32> {
            (0..n)
                .map(|_| match r.next_unit() {
                    x if special && x < 0.03 => f32::NAN,
                    x if special && x < 0.06 => f32::INFINITY,
                    x if x < 0.2 => 0.0,
                    x => (x * 7.0) as f32,
                })
                .collect()
        };
        let (e, t, f, k, a) = (v(true), v(true), v(true), v(true), v(true));
        for shares in 0..4 {
            let c = Components {
                e: e.clone(),
                knn_share: (shares & 1 == 1).then(|| k.clone()),
                als_share: (shares & 2 == 2).then(|| a.clone()),
                als_volume: None,
                knn_volume: None,
                returns: None,
                own: Vec::new(),
            };
            for prior in [0.0, 1e-3, 2.5, f32::INFINITY, f32::NAN, -1.0] {
                for knn_weight in [0.0, 0.3, 1.0, f32::NAN] {
                    let p = HybridParams {
                        prior,
                        activity_exp: 1.0,
                        knn_weight,
                        volume: 0.0,
                        days_exp: 0.0,
                        tenure_exp: 0.0,
                        own: Own::Affinity,
                    };
                    let got = score_with_factors(&c, &t, &p, &f);
                    let want = reference(&c, &t, &p, &f);
                    assert!(
                        got.iter()
                            .zip(&want)
                            .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "shares {shares}, prior {prior}, knn_weight {knn_weight}"
                    );
                }
            }
        }
    }
}
