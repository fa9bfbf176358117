//! The per-row step of ALS ([`crate::model::als`]): a few conjugate-gradient steps on one row's
//! normal equations, warm-started from its factors, and the small dense kernels it runs on
//! (written so that the compiler vectorises them without reassociating floats). Pure Rust.
use crate::model::als::{AlsParams, Scratch, CG_EPS, GATHER_MAX_NNZ};
// ---------------------------------------------------------------------------------------------
// The per-row conjugate-gradient update

/// The other-side vectors `y_i` of one row with their weights `c_ui - 1`.
pub(crate) trait Entries {
    fn for_each(&self, f: impl FnMut(&[f32], f32));
}

/// Vectors copied contiguously into scratch.
struct Gathered<'a> {
    ys: &'a [f32],
    cs: &'a [f32],
    k: usize,
}

impl Entries for Gathered<'_> {
    #[inline(always)]
    fn for_each(&self, mut f: impl FnMut(&[f32], f32)) {
        for (y, &c) in self.ys.chunks_exact(self.k).zip(self.cs) {
            f(y, c);
        }
    }
}

/// Vectors read in place (rows too long to gather).
pub(crate) struct Direct<'a> {
    pub(crate) cols: &'a [u32],
    pub(crate) vals: &'a [f32],
    pub(crate) other: &'a [f32],
    pub(crate) alpha: f32,
    pub(crate) k: usize,
}

impl Entries for Direct<'_> {
    #[inline(always)]
    fn for_each(&self, mut f: impl FnMut(&[f32], f32)) {
        let k = self.k;
        for (&i, &v) in self.cols.iter().zip(self.vals) {
            let s = i as usize * k;
            f(&self.other[s..s + k], self.alpha * v);
        }
    }
}

/// Updates one row's factors `x` in place.
#[inline(always)]
pub(crate) fn update_row<const F: bool>(
    cols: &[u32],
    vals: &[f32],
    other: &[f32],
    gram: &[f32],
    x: &mut [f32],
    sc: &mut Scratch,
    params: &AlsParams,
) {
    if cols.is_empty() {
        // Optimum with no stored entries: b = 0, so x = 0.
        x.fill(0.0);
        return;
    }
    let k = x.len();
    if cols.len() <= GATHER_MAX_NNZ {
        let Scratch { r, p, ap, ys, cs } = sc;
        // The buffer only grows (no refill per row); the row uses its first `nnz * k` floats.
        let n = cols.len();
        if ys.len() < n * k {
            ys.resize(n * k, 0.0);
        }
        let ys = &mut ys[..n * k];
        cs.clear();
        for ((&i, &v), dst) in cols.iter().zip(vals).zip(ys.chunks_exact_mut(k)) {
            let s = i as usize * k;
            copy_vector(dst, &other[s..s + k]);
            cs.push(params.alpha * v);
        }
        let e = Gathered { ys, cs, k };
        cg::<F, _>(&e, gram, x, r, p, ap, params.cg_steps);
    } else {
        let e = Direct {
            cols,
            vals,
            other,
            alpha: params.alpha,
            k,
        };
        cg::<F, _>(
            &e,
            gram,
            x,
            &mut sc.r,
            &mut sc.p,
            &mut sc.ap,
            params.cg_steps,
        );
    }
}

/// `dst = src` in 8-float moves (a `memcpy` call per vector costs more than the copy).
#[inline(always)]
fn copy_vector(dst: &mut [f32], src: &[f32]) {
    let n = dst.len().min(src.len()) / LANES * LANES;
    for (d, s) in dst[..n]
        .chunks_exact_mut(LANES)
        .zip(src[..n].chunks_exact(LANES))
    {
        if let (Ok(d), Ok(s)) = (
            <&mut [f32; LANES]>::try_from(d),
            <&[f32; LANES]>::try_from(s),
        ) {
            *d = *s;
        }
    }
    for (d, s) in dst[n..].iter_mut().zip(&src[n..]) {
        *d = *s;
    }
}

/// `steps` CG steps on `(G + sum_i c_i y_i y_i^T) x = sum_i (1 + c_i) y_i`, from the current `x`.
/// `G` already includes `lambda I`.
#[inline(always)]
pub(crate) fn cg<const F: bool, E: Entries>(
    e: &E,
    gram: &[f32],
    x: &mut [f32],
    r: &mut [f32],
    p: &mut [f32],
    ap: &mut [f32],
    steps: usize,
) {
    // r = b - A x = -G x + sum_i (1 + c_i - c_i (y_i . x)) y_i
    symv::<F>(gram, x, r);
    for v in r.iter_mut() {
        *v = -*v;
    }
    e.for_each(|y, c| axpy::<F>(r, 1.0 + c - c * dot_k::<F>(y, x), y));
    p.copy_from_slice(r);
    let mut rs = dot_k::<F>(r, r);
    for _ in 0..steps {
        if rs.is_nan() || rs <= CG_EPS {
            break;
        }
        symv::<F>(gram, p, ap);
        e.for_each(|y, c| axpy::<F>(ap, c * dot_k::<F>(y, p), y));
        let pap = dot_k::<F>(p, ap);
        if !pap.is_finite() || pap <= 0.0 {
            break;
        }
        let a = rs / pap;
        axpy::<F>(x, a, p);
        axpy::<F>(r, -a, ap);
        let rs_new = dot_k::<F>(r, r);
        let beta = rs_new / rs;
        for (pj, &rj) in p.iter_mut().zip(r.iter()) {
            *pj = madd::<F>(beta, *pj, rj);
        }
        rs = rs_new;
    }
}

// ---------------------------------------------------------------------------------------------
// Small dense kernels (written so that the compiler vectorises them without reassociating floats)

const LANES: usize = 8;

/// `a * b + c`, fused when `F` (only instantiated inside `avx2,fma` functions).
#[inline(always)]
fn madd<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
    if F {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_k::<false>(a, b)
}

#[inline(always)]
fn dot_k<const F: bool>(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let ca = a.chunks_exact(LANES);
    let cb = b.chunks_exact(LANES);
    let mut tail = 0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail = madd::<F>(*x, *y, tail);
    }
    for (xa, ya) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(xa).zip(ya) {
            *s = madd::<F>(x, y, *s);
        }
    }
    let h = [
        acc[0] + acc[4],
        acc[1] + acc[5],
        acc[2] + acc[6],
        acc[3] + acc[7],
    ];
    (h[0] + h[2]) + (h[1] + h[3]) + tail
}

/// `y += a * x`
#[inline(always)]
pub(crate) fn axpy<const F: bool>(y: &mut [f32], a: f32, x: &[f32]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv = madd::<F>(a, xv, *yv);
    }
}

/// `out = G v` for the symmetric `k x k` matrix `G` (`k = v.len()`), as a sum of scaled rows.
#[inline(always)]
fn symv<const F: bool>(g: &[f32], v: &[f32], out: &mut [f32]) {
    let k = v.len();
    out.fill(0.0);
    for (row, &vb) in g.chunks_exact(k).zip(v) {
        axpy::<F>(out, vb, row);
    }
}
