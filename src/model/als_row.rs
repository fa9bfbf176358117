//! The per-row step of ALS ([`crate::model::als`]): a few conjugate-gradient steps on one row's
//! normal equations, warm-started from its factors, and the small dense kernels it runs on
//! (written so that the compiler vectorises them without reassociating floats). Pure Rust.
use crate::model::als::{AlsParams, Scratch, CG_EPS, GATHER_MAX_NNZ};
// ---------------------------------------------------------------------------------------------
// The per-row conjugate-gradient update

/// The part of every row's normal equations that does not depend on the row: the Gram matrix
/// `G = Y^T Y + lambda I` of the other side's factors ([`Dense`]), or, once those factors were
/// rotated into `G`'s eigenbasis (`y -> Q^T y`, see `crate::model::als`), its eigenvalues and the
/// rotation ([`Diagonal`]): a row's factors are then first rotated the same way (the warm start
/// of its steps), and each step multiplies by the eigenvalues (`k` products) instead of `G`
/// (`k^2`). Conjugate gradient commutes with an orthogonal change of basis, so both give the same
/// factors up to the rotation (and rounding), and every score `x . y` is unchanged. A type
/// parameter rather than an enum: each kernel instance holds only its own arithmetic (a branch
/// between them in the row loop made the dense instance at 32 factors 1.8x slower).
pub(crate) trait Prior: Copy {
    /// Whether the products by `G` are by a diagonal (the rows' work estimate).
    const DIAGONAL: bool;
    /// The same prior with its slices cut to `k` factors (a constant in the fixed-size kernels).
    fn sized(self, k: usize) -> Self;
    /// Moves a row's warm start `x` into the prior's basis (`tmp`: `k` floats of scratch).
    fn start<const F: bool>(self, x: &mut [f32], tmp: &mut [f32]);
    /// `out = G v`, in the prior's basis.
    fn apply<const F: bool>(self, v: &[f32], out: &mut [f32]);
}

/// `G`, `k x k` row-major (with `lambda I`).
#[derive(Clone, Copy)]
pub(crate) struct Dense<'a>(pub(crate) &'a [f32]);

impl Prior for Dense<'_> {
    const DIAGONAL: bool = false;

    #[inline(always)]
    fn sized(self, k: usize) -> Self {
        Dense(&self.0[..k * k])
    }

    #[inline(always)]
    fn start<const F: bool>(self, _x: &mut [f32], _tmp: &mut [f32]) {}

    #[inline(always)]
    fn apply<const F: bool>(self, v: &[f32], out: &mut [f32]) {
        symv::<F>(self.0, v, out)
    }
}

/// `d` (`k` eigenvalues of `G`, with `lambda`) and `q` (`k x k` row-major; its columns are the
/// eigenvectors).
#[derive(Clone, Copy)]
pub(crate) struct Diagonal<'a> {
    pub(crate) d: &'a [f32],
    pub(crate) q: &'a [f32],
}

impl Prior for Diagonal<'_> {
    const DIAGONAL: bool = true;

    #[inline(always)]
    fn sized(self, k: usize) -> Self {
        Diagonal {
            d: &self.d[..k],
            q: &self.q[..k * k],
        }
    }

    #[inline(always)]
    fn start<const F: bool>(self, x: &mut [f32], tmp: &mut [f32]) {
        rotate::<F>(self.q, x, tmp)
    }

    #[inline(always)]
    fn apply<const F: bool>(self, v: &[f32], out: &mut [f32]) {
        for ((o, &dj), &vj) in out.iter_mut().zip(self.d).zip(v) {
            *o = dj * vj;
        }
    }
}

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

/// Floats per 64-byte cache line.
const LINE_FLOATS: usize = 16;
/// Vectors ahead of the one being gathered whose cache lines are asked for.
const GATHER_AHEAD: usize = 8;
/// Vectors ahead of the one being gathered whose cache lines are asked for into the second-level
/// cache ([`crate::util::prefetch_l2`]): an item's row gathers a few hundred users' vectors
/// from a matrix far larger than the caches, and 8 vectors ahead (16 lines in flight, as many as
/// a core's first-level cache tracks) did not cover the wait for memory. A hint: no result changes.
const GATHER_AHEAD_L2: usize = 32;

/// Asks for the cache lines of the first [`GATHER_AHEAD`] vectors of a row (the next row's,
/// while this one's conjugate-gradient steps run: the gather of a row only asks for the vectors
/// `GATHER_AHEAD` ahead of itself, so without this a row's first vectors, half of them on an
/// average shopper's row, arrive at memory latency). A hint: no result changes.
#[inline(always)]
pub(crate) fn prefetch_row_start(cols: &[u32], other: &[f32], k: usize) {
    if cols.len() > GATHER_MAX_NNZ {
        return;
    }
    for &f in cols.iter().take(GATHER_AHEAD) {
        let ptr = other.as_ptr().wrapping_add(f as usize * k);
        prefetch_vector::<false>(ptr, k);
    }
}

/// Asks for every cache line of the `k` floats at `ptr` (a factor row: 64-byte aligned when `k`
/// is a multiple of 16), into the first-level cache or, with `L2`, the second.
#[inline(always)]
fn prefetch_vector<const L2: bool>(ptr: *const f32, k: usize) {
    const LINE: usize = LINE_FLOATS;
    let mut j = 0;
    while j < k {
        crate::util::prefetch_to::<L2, f32>(ptr.wrapping_add(j));
        j += LINE;
    }
    if !k.is_multiple_of(LINE) {
        crate::util::prefetch_to::<L2, f32>(ptr.wrapping_add(k - 1));
    }
}

/// Updates one row's factors `x` in place.
#[inline(always)]
pub(crate) fn update_row<const F: bool, P: Prior>(
    cols: &[u32],
    vals: &[f32],
    other: &[f32],
    prior: P,
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
        // The buffer only grows (no refill per row); the row uses `nnz * k` floats from its first
        // cache-line boundary, so that the steps' 8-float loads never straddle two lines.
        let n = cols.len();
        if ys.len() < n * k + LINE_FLOATS {
            ys.resize(n * k + LINE_FLOATS, 0.0);
        }
        let at = ys.as_ptr().align_offset(64).min(LINE_FLOATS);
        let ys = &mut ys[at..at + n * k];
        cs.clear();
        for (n, ((&i, &v), dst)) in cols
            .iter()
            .zip(vals)
            .zip(ys.chunks_exact_mut(k))
            .enumerate()
        {
            if let Some(&f) = cols.get(n + GATHER_AHEAD) {
                let ptr = other.as_ptr().wrapping_add(f as usize * k);
                prefetch_vector::<false>(ptr, k);
            }
            if let Some(&f) = cols.get(n + GATHER_AHEAD_L2) {
                let ptr = other.as_ptr().wrapping_add(f as usize * k);
                prefetch_vector::<true>(ptr, k);
            }
            let s = i as usize * k;
            copy_vector(dst, &other[s..s + k]);
            cs.push(params.alpha * v);
        }
        let e = Gathered { ys, cs, k };
        cg_any::<F, _, _>(&e, prior, x, r, p, ap, params.cg_steps);
    } else {
        let e = Direct {
            cols,
            vals,
            other,
            alpha: params.alpha,
            k,
        };
        cg_any::<F, _, _>(
            &e,
            prior,
            x,
            &mut sc.r,
            &mut sc.p,
            &mut sc.ap,
            params.cg_steps,
        );
    }
}

/// `y -> Q^T y` for every `k`-float row of `rows` (the other side's factors moved into the
/// eigenbasis of their Gram matrix, see [`Prior`]); `tmp` holds `k` floats.
#[inline(always)]
pub(crate) fn rotate_rows<const F: bool>(q: &[f32], rows: &mut [f32], k: usize, tmp: &mut [f32]) {
    let tmp = &mut tmp[..k];
    for y in rows.chunks_exact_mut(k) {
        rotate::<F>(q, y, tmp);
    }
}

/// `v = Q^T v` (the sum of `Q`'s rows weighted by `v`), through `tmp` (`v.len()` floats).
#[inline(always)]
fn rotate<const F: bool>(q: &[f32], v: &mut [f32], tmp: &mut [f32]) {
    symv::<F>(q, v, tmp);
    v.copy_from_slice(tmp);
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

/// [`cg`], with the vectors in registers for the usual factor counts (16, 32, 64): `k` known
/// at compile time, the accumulations over a row's entries (`r`, `A p`) stay in registers
/// instead of making each entry wait for the previous one's store. The same arithmetic in the
/// same order, so the same factors.
#[inline(always)]
fn cg_any<const F: bool, E: Entries, P: Prior>(
    e: &E,
    prior: P,
    x: &mut [f32],
    r: &mut [f32],
    p: &mut [f32],
    ap: &mut [f32],
    steps: usize,
) {
    match x.len() {
        16 => cg_fixed::<F, 16, E, P>(e, prior, x, steps),
        32 => cg_fixed::<F, 32, E, P>(e, prior, x, steps),
        64 => cg_fixed::<F, 64, E, P>(e, prior, x, steps),
        _ => cg::<F, E, P>(e, prior, x, r, p, ap, steps),
    }
}

/// [`cg`] for `K` factors, on local arrays.
#[inline(always)]
fn cg_fixed<const F: bool, const K: usize, E: Entries, P: Prior>(
    e: &E,
    prior: P,
    x: &mut [f32],
    steps: usize,
) {
    let (mut xv, mut r, mut p, mut ap) = ([0f32; K], [0f32; K], [0f32; K], [0f32; K]);
    xv.copy_from_slice(x);
    cg::<F, E, P>(e, prior.sized(K), &mut xv, &mut r, &mut p, &mut ap, steps);
    x.copy_from_slice(&xv);
}

/// `steps` CG steps on `(G + sum_i c_i y_i y_i^T) x = sum_i (1 + c_i) y_i`, from the current `x`
/// (with a [`Diagonal`] prior, from `Q^T x`, in the eigenbasis: see [`Prior`]). `G` already
/// includes `lambda I`.
#[inline(always)]
pub(crate) fn cg<const F: bool, E: Entries, P: Prior>(
    e: &E,
    prior: P,
    x: &mut [f32],
    r: &mut [f32],
    p: &mut [f32],
    ap: &mut [f32],
    steps: usize,
) {
    prior.start::<F>(x, r);
    // r = b - A x = -G x + sum_i (1 + c_i - c_i (y_i . x)) y_i
    prior.apply::<F>(x, r);
    for v in r.iter_mut() {
        *v = -*v;
    }
    // Each entry's vector sliced to `x`'s length: in the fixed-size instances that length is a
    // constant, so the dot products and updates below are unrolled into whole 8-float fused
    // multiply-adds (with the vector's own length they were loops the compiler split into
    // 2-float pieces: a third of the kernel's time at 64 factors). Every entry's vector has
    // exactly `k` floats (gathered in chunks of `k`, or sliced so in place): the `get` never
    // fails; it is a check the compiler can fold instead of a panic path, which made the closure
    // too large to inline into the fused-kernel function (it then called `fmaf`: 4x slower).
    let k = x.len();
    e.for_each(|y, c| {
        if let Some(y) = y.get(..k) {
            axpy::<F>(r, 1.0 + c - c * dot_k::<F>(y, x), y)
        }
    });
    p.copy_from_slice(r);
    let mut rs = dot_k::<F>(r, r);
    for _ in 0..steps {
        if rs.is_nan() || rs <= CG_EPS {
            break;
        }
        prior.apply::<F>(p, ap);
        e.for_each(|y, c| {
            if let Some(y) = y.get(..k) {
                axpy::<F>(ap, c * dot_k::<F>(y, p), y)
            }
        });
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
pub(crate) fn madd<const F: bool>(a: f32, b: f32, c: f32) -> f32 {
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
    #[cfg(target_arch = "x86_64")]
    if F {
        // SAFETY: the fused instances run only inside `avx2,fma` functions (see `madd`).
        return unsafe { dot_fma(a, b) };
    }
    dot_lanes::<F>(a, b)
}

/// The dot product in 8 lanes: lane `j` sums the products of elements `j mod 8` in order, the
/// elements after the last whole 8 are summed first on their own, then the lanes as
/// `((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7))`, plus that tail.
#[inline(always)]
fn dot_lanes<const F: bool>(a: &[f32], b: &[f32]) -> f32 {
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

/// [`dot_k`]'s fused instance in AVX instructions: the same multiply-adds and the same sums in
/// the same order, so the same result bit for bit. Written out because the compiler, given the
/// 8-float accumulator and its reduction, split the products into 2-float pieces with their
/// operands spilled to the stack (a third of ALS's time). Only called where the CPU has AVX2
/// and FMA (inside the `avx2,fma` kernels).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn dot_fma(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let full = n / LANES * LANES;
    let mut tail = 0f32;
    for (x, y) in a[full..n].iter().zip(&b[full..n]) {
        tail = x.mul_add(*y, tail);
    }
    // SAFETY: every load reads 8 floats at j < full <= n, within both slices; the caller runs
    // on a CPU with AVX and FMA.
    unsafe {
        let mut acc = _mm256_setzero_ps();
        let mut j = 0;
        while j < full {
            let x = _mm256_loadu_ps(a.as_ptr().add(j));
            let y = _mm256_loadu_ps(b.as_ptr().add(j));
            acc = _mm256_fmadd_ps(x, y, acc);
            j += LANES;
        }
        // h = [a0 + a4, a1 + a5, a2 + a6, a3 + a7]; then (h0 + h2) + (h1 + h3), as `dot_k`.
        let h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps::<1>(acc));
        let s = _mm_add_ps(h, _mm_movehl_ps(h, h));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s))) + tail
    }
}

/// `y += a * x`
#[inline(always)]
pub(crate) fn axpy<const F: bool>(y: &mut [f32], a: f32, x: &[f32]) {
    for (yv, &xv) in y.iter_mut().zip(x) {
        *yv = madd::<F>(a, xv, *yv);
    }
}

/// `out = G^T v` for the `k x k` matrix `G` (`k = v.len()`), as a sum of scaled rows: `G v` for
/// a symmetric `G`.
#[inline(always)]
fn symv<const F: bool>(g: &[f32], v: &[f32], out: &mut [f32]) {
    let k = v.len();
    out.fill(0.0);
    for (row, &vb) in g.chunks_exact(k).zip(v) {
        axpy::<F>(out, vb, row);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::rand::SplitMix64;

    /// A random symmetric positive definite `k x k` matrix (with `lambda I` in it, as `cg` gets
    /// it), random entries and a random start.
    fn problem(k: usize, nnz: usize, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>, Vec<f32>) {
        let mut rng = SplitMix64(seed);
        let mut f = || (rng.next_unit() as f32) - 0.5;
        let m: Vec<f32> = (0..k * k).map(|_| f()).collect();
        let mut g = vec![0f32; k * k];
        for a in 0..k {
            for b in 0..k {
                g[a * k + b] = (0..k).map(|c| m[c * k + a] * m[c * k + b]).sum::<f32>();
            }
            g[a * k + a] += 0.1;
        }
        let ys: Vec<f32> = (0..nnz * k).map(|_| f()).collect();
        let cs: Vec<f32> = (0..nnz).map(|_| 10.0 * (f() + 0.5)).collect();
        let x: Vec<f32> = (0..k).map(|_| f()).collect();
        (g, ys, cs, x)
    }

    /// The general and the fixed-size CG on one problem, with its Gram matrix (`diagonal`
    /// false) or with a diagonal prior (the Gram matrix's diagonal, and the matrix itself as the
    /// start's rotation: any matrix does for comparing the two).
    fn both<const F: bool>(k: usize, seed: u64, diagonal: bool) -> (Vec<f32>, Vec<f32>) {
        let (g, ys, cs, x0) = problem(k, 37, seed);
        let e = Gathered {
            ys: &ys,
            cs: &cs,
            k,
        };
        let (mut r, mut p, mut ap) = (vec![0f32; k], vec![0f32; k], vec![0f32; k]);
        let (mut general, mut any) = (x0.clone(), x0.clone());
        if diagonal {
            let d: Vec<f32> = (0..k).map(|j| g[j * k + j]).collect();
            let prior = Diagonal { d: &d, q: &g };
            cg::<F, _, _>(&e, prior, &mut general, &mut r, &mut p, &mut ap, 3);
            cg_any::<F, _, _>(&e, prior, &mut any, &mut r, &mut p, &mut ap, 3);
        } else {
            cg::<F, _, _>(&e, Dense(&g), &mut general, &mut r, &mut p, &mut ap, 3);
            cg_any::<F, _, _>(&e, Dense(&g), &mut any, &mut r, &mut p, &mut ap, 3);
        }
        (general, any)
    }

    /// The fused dot product in AVX instructions sums in [`dot_lanes`]'s order, bit for bit (the
    /// factors of a model do not depend on it); a reordered reduction fails this.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx_dot_is_the_lane_order() {
        if !(std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma"))
        {
            return;
        }
        let mut rng = SplitMix64(7);
        let mut differs = 0;
        for n in 0..80 {
            for _ in 0..20 {
                let mut f = || ((rng.next_unit() as f32) - 0.5) * 3.0;
                let a: Vec<f32> = (0..n).map(|_| f()).collect();
                let b: Vec<f32> = (0..n + 3).map(|_| f()).collect();
                let want = dot_lanes::<true>(&a, &b);
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                let got = unsafe { dot_fma(&a, &b) };
                assert_eq!(got.to_bits(), want.to_bits(), "n = {n}");
                let seq = a.iter().zip(&b).fold(0f32, |s, (x, y)| x.mul_add(*y, s));
                differs += usize::from(seq.to_bits() != want.to_bits());
            }
        }
        // The lanes' order is not the sequential one (or the test would not tell them apart).
        assert!(differs > 100, "{differs}");
    }

    /// The register-resident CG of the usual factor counts is the general one, bit for bit (the
    /// factors of a model do not depend on which one ran), with either kind of prior.
    #[test]
    fn fixed_sizes_are_the_general_cg() {
        for diagonal in [false, true] {
            for k in [16, 32, 64, 8, 48] {
                for seed in 0..3 {
                    let (general, any) = both::<false>(k, seed, diagonal);
                    assert!(general.iter().any(|&v| v != 0.0));
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&general),
                        bits(&any),
                        "k = {k}, seed {seed}, diagonal {diagonal}"
                    );
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn fused(k: usize, seed: u64, diagonal: bool) -> (Vec<f32>, Vec<f32>) {
                both::<true>(k, seed, diagonal)
            }
            for diagonal in [false, true] {
                for k in [16, 32, 64] {
                    // SAFETY: the CPU has AVX2 and FMA (checked above).
                    let (general, any) = unsafe { fused(k, 5, diagonal) };
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&general),
                        bits(&any),
                        "fused, k = {k}, diagonal {diagonal}"
                    );
                }
            }
        }
    }
}
