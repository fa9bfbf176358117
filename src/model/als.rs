//! Implicit-feedback alternating least squares (ALS), pure Rust, std only.
//!
//! Model: Hu, Koren & Volinsky, "Collaborative Filtering for Implicit Feedback Datasets" (ICDM 2008).
//! Every user `u` and item `i` gets a `k`-dimensional factor vector `x_u`, `y_i`; the loss is
//!
//! ```text
//! L = sum_{u,i} c_ui (p_ui - x_u . y_i)^2 + lambda (sum_u |x_u|^2 + sum_i |y_i|^2)
//! ```
//!
//! over ALL user x item pairs, with preference `p_ui = 1` and confidence `c_ui = 1 + alpha r_ui` where
//! the affinity `r_ui > 0` is stored, and `p_ui = 0`, `c_ui = 1` elsewhere.
//!
//! Solver: alternating half-sweeps (all users given the items, then all items given the users). Each row's
//! normal equations `(Y^T Y + lambda I + sum_i (c_ui - 1) y_i y_i^T) x_u = sum_i c_ui y_i` are not solved
//! exactly but with a few conjugate-gradient steps warm-started from the previous factors, as in Takacs,
//! Pilaszy & Tikk, "Applications of the conjugate gradient method for implicit feedback collaborative
//! filtering" (RecSys 2011). The Gram matrix `Y^T Y` is computed once per half-sweep; the sparse
//! correction `sum_i (c_ui - 1) y_i y_i^T` is applied implicitly (two length-`k` passes per stored entry),
//! never formed. Every CG step monotonically decreases that row's part of the loss, so the loss is
//! non-increasing across sweeps. From 32 factors, a half-sweep with many more rows than fixed
//! vectors (the users of a shop) runs in the eigenbasis of the Gram matrix ([`rotation_pays`]):
//! the fixed vectors and each row's start are rotated, and the steps multiply by its eigenvalues
//! instead of the whole matrix; the scores `x . y` are those of the same solve in the old basis.
//!
//! Cost per half-sweep over `n` rows with `nnz` stored entries and `k` factors:
//! `O(nnz * k * cg_steps + n * k^2 * cg_steps)` time (plus `O(n_other * k^2)` for the Gram matrix).
//! Memory besides the result (`(n_users + n_items) * k` f32): a transposed copy of the input
//! (`8 * nnz + 8 * n_items` bytes) and per thread a gather buffer of at most `GATHER_MAX_NNZ * k` f32
//! (2 MiB at k = 32). Rows with more entries than that are read in place (no gathering).
//!
//! Threads: rows are cut into tasks of roughly equal estimated work, tasks into batches; each batch runs
//! on `threads` threads (`threads - 1` scoped workers plus the calling thread) which do nothing but
//! arithmetic on plain slices. Between batches the calling thread alone calls `check`, so an
//! interrupt is noticed within a few milliseconds of work (a single very long row, e.g. an item with
//! hundreds of thousands of users, is one indivisible unit of some tens of milliseconds). Each row's
//! update depends only on the other side's (fixed) factors, its own previous value and a Gram matrix
//! reduced in a fixed block order, so results are bit-identical for any thread count, and for
//! any order of the item half-sweep's rows ([`train_als_ordered`]: items that share users after
//! each other find those users' vectors still in the cache).
//!
//! Kernels: small dense loops written to auto-vectorise; on x86-64 CPUs with AVX2 and FMA (detected at
//! run time) the same code is used compiled for those features, with fused multiply-adds. The two
//! variants round differently, so bit-identical results hold per CPU family, not across them.

use crate::model::als_row::{
    axpy, dot, madd, prefetch_row_start, rotate_rows, update_row, Dense, Diagonal, Prior,
};
use crate::model::csr::Csr;
use crate::util::buf::Buf;
use crate::util::rand::SplitMix64;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Training hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct AlsParams {
    /// Latent dimension `k`.
    pub factors: usize,
    /// Number of full sweeps (users then items).
    pub iterations: usize,
    /// L2 regularization `lambda`.
    pub regularization: f32,
    /// Confidence scale: `c_ui = 1 + alpha * r_ui`.
    pub alpha: f32,
    /// Conjugate-gradient steps per row per half-sweep.
    pub cg_steps: usize,
    /// Seed of the item-factor initialisation.
    pub seed: u64,
    /// Threads to use (the calling thread included); 0 is treated as 1.
    pub threads: usize,
}

impl Default for AlsParams {
    fn default() -> Self {
        AlsParams {
            factors: 32,
            iterations: 10,
            regularization: 0.05,
            alpha: 2.0,
            cg_steps: 3,
            seed: 42,
            threads: 2,
        }
    }
}

/// Trained factors, both row-major: user `u` is `user_factors[u*factors..(u+1)*factors]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlsModel {
    pub factors: usize,
    pub user_factors: Buf<f32>,
    pub item_factors: Buf<f32>,
}

pub use crate::util::interrupt::Interrupted;

impl AlsModel {
    /// Number of users (rows of `user_factors`).
    pub fn n_users(&self) -> usize {
        self.user_factors
            .len()
            .checked_div(self.factors)
            .unwrap_or(0)
    }

    /// Number of items (rows of `item_factors`).
    pub fn n_items(&self) -> usize {
        self.item_factors
            .len()
            .checked_div(self.factors)
            .unwrap_or(0)
    }

    /// Factor vector of user `u`.
    #[inline]
    pub fn user(&self, u: usize) -> &[f32] {
        &self.user_factors[u * self.factors..(u + 1) * self.factors]
    }

    /// Factor vector of item `i`.
    #[inline]
    pub fn item(&self, i: usize) -> &[f32] {
        &self.item_factors[i * self.factors..(i + 1) * self.factors]
    }

    /// Predicted preference of user `u` for item `i`: `x_u . y_i`.
    #[inline]
    pub fn score(&self, u: usize, i: usize) -> f32 {
        dot(self.user(u), self.item(i))
    }
}

/// Target estimated work (multiply-adds) of one task: about 0.3 ms on one core with AVX2+FMA.
const TASK_WORK: u64 = 1 << 21;
/// Tasks per thread in one batch; `check` runs between batches (a few ms of work apart).
const TASKS_PER_THREAD: usize = 16;
/// Rows with at most this many stored entries have their other-side vectors gathered into a
/// contiguous per-thread buffer once, so the CG passes run from cache.
pub(crate) const GATHER_MAX_NNZ: usize = 1 << 14;
/// Rows per partial Gram matrix (the fixed reduction order that keeps results thread-count independent).
const GRAM_ROWS: usize = 2048;
/// Stored entries handled between two `check` calls while transposing.
const TRANSPOSE_CHUNK: usize = 1 << 20;
/// Upper bound on threads, whatever the caller asks.
const MAX_THREADS: usize = 256;
/// CG stops when the squared residual norm falls below this.
pub(crate) const CG_EPS: f32 = 1e-20;
/// Standard deviation of the initial item factors.
const INIT_STD: f32 = 0.01;

/// Trains an implicit-feedback ALS model.
///
/// `ui` is users x items with affinity values r_ui > 0. Confidence c_ui = 1 + alpha * r_ui
/// (Hu, Koren, Volinsky 2008), preference p_ui = 1. Solved with conjugate gradient (Takacs, Pilaszy,
/// Tikk 2011), warm-started from the previous factors, `cg_steps` CG steps per row per sweep. `check`
/// is called on the CALLING thread between blocks of rows (at least every ~20 ms of work) and the
/// whole call returns `Err(Interrupted)` as soon as it returns `Err`.
///
/// Users start at zero and are solved first; items start uniform with standard deviation 0.01 from
/// `seed`. Users or items with no stored entries end with all-zero factors (score 0). With 0 users,
/// 0 items or 0 factors the result has the right shape and all zeros.
pub fn train_als(
    ui: &Csr,
    params: &AlsParams,
    check: &mut dyn FnMut() -> Result<(), Interrupted>,
) -> Result<AlsModel, Interrupted> {
    train_als_tuned(ui, None, None, params, check, TASK_WORK, true)
}

/// [`train_als`] given `iu`, the transpose of `ui` ([`transpose_checked`]; a build computes it
/// once for ALS and item-kNN). Panics when `iu`'s shape is not `ui`'s transposed.
pub fn train_als_with(
    ui: &Csr,
    iu: &Csr,
    params: &AlsParams,
    check: &mut dyn FnMut() -> Result<(), Interrupted>,
) -> Result<AlsModel, Interrupted> {
    train_als_tuned(ui, Some(iu), None, params, check, TASK_WORK, true)
}

/// [`train_als_with`] visiting the items of every item half-sweep in `item_order`, a permutation
/// of the items (from [`crate::model::knn::walk_order`], say: items that share users after
/// each other, so that the users' vectors one item gathers are still in the cache for the next).
/// The same factors bit for bit as in the items' own order: each item's update reads only the
/// fixed user factors and its own row. Panics when `item_order` is not a permutation of `ui`'s
/// columns or `iu`'s shape is not `ui`'s transposed.
pub fn train_als_ordered(
    ui: &Csr,
    iu: &Csr,
    item_order: &[u32],
    params: &AlsParams,
    check: &mut dyn FnMut() -> Result<(), Interrupted>,
) -> Result<AlsModel, Interrupted> {
    assert!(
        is_permutation(item_order, ui.n_cols),
        "item_order is a permutation of the items"
    );
    train_als_tuned(
        ui,
        Some(iu),
        Some(item_order),
        params,
        check,
        TASK_WORK,
        true,
    )
}

/// Whether `order` holds every number below `n` once.
fn is_permutation(order: &[u32], n: usize) -> bool {
    let mut seen = vec![false; n];
    order.len() == n
        && order.iter().all(|&i| {
            let i = i as usize;
            i < n && !std::mem::replace(&mut seen[i], true)
        })
}

#[allow(clippy::too_many_arguments)]
fn train_als_tuned(
    ui: &Csr,
    iu: Option<&Csr>,
    item_order: Option<&[u32]>,
    params: &AlsParams,
    check: &mut dyn FnMut() -> Result<(), Interrupted>,
    task_work: u64,
    simd: bool,
) -> Result<AlsModel, Interrupted> {
    check()?;
    let k = params.factors;
    let (n_users, n_items) = (ui.n_rows, ui.n_cols);
    let mut model = AlsModel {
        factors: k,
        user_factors: Buf::zeroed_on_lines(n_users * k),
        item_factors: Buf::zeroed_on_lines(n_items * k),
    };
    if k == 0 || n_users == 0 || n_items == 0 {
        return Ok(model);
    }
    init_uniform(&mut model.item_factors, params.seed, INIT_STD, check)?;
    sweeps(
        ui,
        iu,
        item_order,
        params,
        model,
        params.iterations,
        check,
        task_work,
        simd,
    )
}

/// Continues training `model` (factors of `ui`'s users and items, e.g. a previous model's
/// placed at the rows of a grown matrix, zeros for new rows) for `iterations` more iterations,
/// users first, as [`train_als`] does after its start. The incremental build's warm start.
/// Panics when the model's shape is not `ui`'s.
pub fn continue_als(
    ui: &Csr,
    params: &AlsParams,
    model: AlsModel,
    iterations: usize,
    check: &mut dyn FnMut() -> Result<(), Interrupted>,
) -> Result<AlsModel, Interrupted> {
    assert_eq!(model.factors, params.factors, "same factors");
    assert_eq!(
        model.user_factors.len(),
        ui.n_rows * model.factors,
        "one vector per user"
    );
    assert_eq!(
        model.item_factors.len(),
        ui.n_cols * model.factors,
        "one vector per item"
    );
    check()?;
    sweeps(
        ui, None, None, params, model, iterations, check, TASK_WORK, true,
    )
}

/// Continues training `model` where its data changed: `iterations` times, the users `rows`
/// (sorted and unique: the users with new events, new users among them) are solved against the
/// item factors, then every item against all users' factors. The other users keep their factors
/// (they were solved against item factors that move little when a few users' rows change).
/// With every user in `rows` this is [`continue_als`] up to rounding and a rotation of both
/// sides' factors (that one may solve in the Gram matrix's eigenbasis: [`rotation_pays`]). The
/// incremental build's default: a user half-sweep costs about as much as an item half-sweep per
/// stored pair plus `k^2` per row, so skipping the unchanged users saves most of it. Panics when
/// the model's shape is not `ui`'s or a row is out of range.
pub fn continue_als_rows(
    ui: &Csr,
    params: &AlsParams,
    model: AlsModel,
    rows: &[usize],
    iterations: usize,
    check: &mut dyn FnMut() -> Result<(), Interrupted>,
) -> Result<AlsModel, Interrupted> {
    continue_als_rows_with(ui, None, params, model, rows, iterations, check)
}

/// [`continue_als_rows`] given `iu`, the transpose of `ui` ([`transpose_checked`]; computed here
/// when `None`).
pub fn continue_als_rows_with(
    ui: &Csr,
    iu: Option<&Csr>,
    params: &AlsParams,
    mut model: AlsModel,
    rows: &[usize],
    iterations: usize,
    check: &mut dyn FnMut() -> Result<(), Interrupted>,
) -> Result<AlsModel, Interrupted> {
    let k = model.factors;
    assert_eq!(k, params.factors, "same factors");
    assert_eq!(
        model.user_factors.len(),
        ui.n_rows * k,
        "one vector per user"
    );
    assert_eq!(
        model.item_factors.len(),
        ui.n_cols * k,
        "one vector per item"
    );
    assert!(rows.iter().all(|&r| r < ui.n_rows), "rows in range");
    check()?;
    if iterations == 0 || k == 0 || ui.n_rows == 0 || ui.n_cols == 0 {
        return Ok(model);
    }
    // A warm start not on cache lines (a model's factors read from its image) is moved onto them,
    // as fresh factors are (an incremental build's remapped ones already are).
    model.user_factors = std::mem::take(&mut model.user_factors).on_lines();
    model.item_factors = std::mem::take(&mut model.item_factors).on_lines();
    let mut own = None;
    let iu = given_or_transposed(ui, iu, &mut own, params.threads, check)?;
    let sub = ui.select_rows(rows);
    check()?;
    let mut x: Vec<f32> = Vec::with_capacity(rows.len() * k);
    for &r in rows {
        x.extend_from_slice(&model.user_factors[r * k..(r + 1) * k]);
    }
    let mut cfg = Sweep::new(params, k, TASK_WORK, true);
    for _ in 0..iterations {
        cfg.half_sweep(&sub, &model.item_factors, &mut x, check)?;
        for (n, &r) in rows.iter().enumerate() {
            model.user_factors[r * k..(r + 1) * k].copy_from_slice(&x[n * k..(n + 1) * k]);
        }
        cfg.half_sweep(iu, &model.user_factors, &mut model.item_factors, check)?;
    }
    Ok(model)
}

/// `iterations` alternating sweeps (users, then items) over `model`; `iu` is `ui`'s transpose
/// (computed here when `None`); the items visited in `item_order` when given (a permutation).
#[allow(clippy::too_many_arguments)]
fn sweeps(
    ui: &Csr,
    iu: Option<&Csr>,
    item_order: Option<&[u32]>,
    params: &AlsParams,
    mut model: AlsModel,
    iterations: usize,
    check: &mut dyn FnMut() -> Result<(), Interrupted>,
    task_work: u64,
    simd: bool,
) -> Result<AlsModel, Interrupted> {
    let k = model.factors;
    if iterations == 0 || k == 0 || ui.n_rows == 0 || ui.n_cols == 0 {
        return Ok(model);
    }
    // A warm start not on cache lines (a model's factors read from its image) is moved onto them,
    // as fresh factors are (an incremental build's remapped ones already are).
    model.user_factors = std::mem::take(&mut model.user_factors).on_lines();
    model.item_factors = std::mem::take(&mut model.item_factors).on_lines();
    let mut own = None;
    let iu = given_or_transposed(ui, iu, &mut own, params.threads, check)?;
    let mut cfg = Sweep::new(params, k, task_work, simd);
    let users_rotated = rotation_pays(ui.n_rows, ui.n_cols, k, params.cg_steps);
    let items_rotated = rotation_pays(ui.n_cols, ui.n_rows, k, params.cg_steps);
    for _ in 0..iterations {
        if users_rotated {
            cfg.half_sweep_rotated(
                ui,
                &mut model.item_factors,
                &mut model.user_factors,
                None,
                check,
            )?;
        } else {
            cfg.half_sweep(ui, &model.item_factors, &mut model.user_factors, check)?;
        }
        if items_rotated {
            cfg.half_sweep_rotated(
                iu,
                &mut model.user_factors,
                &mut model.item_factors,
                item_order,
                check,
            )?;
        } else {
            cfg.half_sweep_in(
                iu,
                &model.user_factors,
                &mut model.item_factors,
                item_order,
                check,
            )?;
        }
    }
    Ok(model)
}

/// Whether a half-sweep over `n_rows` rows against `n_other` fixed vectors costs less in the
/// eigenbasis of the Gram matrix ([`Diagonal`]): each row then saves `cg_steps` products by
/// `G` (`k^2` each; its warm start's rotation costs one), and the `n_other` vectors are rotated
/// once (`k^2` each). At the 20M-event shop the users' half-sweeps are (984k users against 50k
/// items), the items' are not. From 32 factors: there the users' half-sweep takes 10% less time
/// (fastest of a build's ten, three builds alternated: 0.296 / 0.262 / 0.257 s against 0.363 /
/// 0.299 / 0.274 s) once the item factors sit on cache lines, and 4-10% less ALS time at 64
/// (`BENCH_ONLY_ALS=1 cargo bench --bench core`); below it the factors stay those of the dense
/// solve bit for bit.
fn rotation_pays(n_rows: usize, n_other: usize, k: usize, cg_steps: usize) -> bool {
    k >= 32 && (n_rows as u64) * (cg_steps as u64) > n_other as u64 + 16 * k as u64
}

/// Eigen-decomposition of the symmetric `k x k` matrix `a` (row-major) by cyclic Jacobi
/// rotations, in f64: returns `(w, v)` with `a = v diag(w) v^T`, the columns of `v` orthonormal
/// eigenvectors. Sequential and deterministic; `O(k^3)` per sweep, a few sweeps (well under a
/// millisecond at 64 factors).
fn sym_eigen(mut a: Vec<f64>, k: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0f64; k * k];
    for j in 0..k {
        v[j * k + j] = 1.0;
    }
    for _sweep in 0..64 {
        let (mut off, mut diag) = (0f64, 0f64);
        for p in 0..k {
            diag += a[p * k + p] * a[p * k + p];
            for q in p + 1..k {
                off += a[p * k + q] * a[p * k + q];
            }
        }
        // Converged (or not a number: the caller checked the input is finite).
        if off.is_nan() || off <= 1e-30 * diag {
            break;
        }
        for p in 0..k {
            for q in p + 1..k {
                let apq = a[p * k + q];
                if apq == 0.0 {
                    continue;
                }
                // The rotation of the (p, q) plane that zeroes a[p][q] (the smaller angle).
                let theta = (a[q * k + q] - a[p * k + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for r in 0..k {
                    let (arp, arq) = (a[r * k + p], a[r * k + q]);
                    a[r * k + p] = c * arp - s * arq;
                    a[r * k + q] = s * arp + c * arq;
                }
                for r in 0..k {
                    let (apr, aqr) = (a[p * k + r], a[q * k + r]);
                    a[p * k + r] = c * apr - s * aqr;
                    a[q * k + r] = s * apr + c * aqr;
                }
                for r in 0..k {
                    let (vrp, vrq) = (v[r * k + p], v[r * k + q]);
                    v[r * k + p] = c * vrp - s * vrq;
                    v[r * k + q] = s * vrp + c * vrq;
                }
            }
        }
    }
    ((0..k).map(|j| a[j * k + j]).collect(), v)
}

/// The rotation `Q` (f32, `k x k` row-major, columns the eigenvectors of `gram`) and the diagonal
/// `d_j = q_j^T (gram + lambda I) q_j` of the rotated Gram matrix, computed with the rounded `Q`.
/// `None` when `gram` is not finite (the dense path then gives the same NaNs it always did).
fn eigenbasis(gram: &[f32], k: usize, lambda: f32) -> Option<(Vec<f32>, Vec<f32>)> {
    if !gram.iter().all(|g| g.is_finite()) {
        return None;
    }
    let (_, v) = sym_eigen(gram.iter().map(|&g| g as f64).collect(), k);
    let q: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    let d = (0..k)
        .map(|j| {
            let (mut quad, mut norm) = (0f64, 0f64);
            for a in 0..k {
                let qa = q[a * k + j] as f64;
                let ga: f64 = (0..k)
                    .map(|b| gram[a * k + b] as f64 * q[b * k + j] as f64)
                    .sum();
                quad += qa * ga;
                norm += qa * qa;
            }
            (quad + lambda as f64 * norm) as f32
        })
        .collect();
    Some((d, q))
}

/// The ALS "fold-in": factors for the rows of `ui` (confidence input, as in training) against
/// the fixed `item_factors` of a trained model, without touching the model. Each user's row is
/// solved like training's user step (`sweeps` half-sweeps of `params.cg_steps` CG steps, from
/// zero), so a user the model never saw, or whose row changed since, gets the factors training
/// would have given them for these items. `init` (one vector per row) warm-starts the solve, as
/// training does between sweeps (a user's factors before their row changed). `check` runs on the
/// calling thread between blocks of rows, as in [`train_als`]. Panics when `item_factors` does
/// not hold `ui.n_cols` vectors or `init` not `ui.n_rows`.
pub fn fold_in(
    ui: &Csr,
    item_factors: &[f32],
    params: &AlsParams,
    sweeps: usize,
    init: Option<Vec<f32>>,
    check: &mut dyn FnMut() -> Result<(), Interrupted>,
) -> Result<Buf<f32>, Interrupted> {
    let k = params.factors;
    assert_eq!(
        item_factors.len(),
        ui.n_cols * k,
        "one item vector per column"
    );
    let mut out = init.unwrap_or_else(|| vec![0f32; ui.n_rows * k]);
    assert_eq!(out.len(), ui.n_rows * k, "one initial vector per row");
    if k == 0 || ui.n_rows == 0 || ui.n_cols == 0 {
        return Ok(out.into());
    }
    check()?;
    let mut cfg = Sweep::new(params, k, TASK_WORK, true);
    for _ in 0..sweeps.max(1) {
        cfg.half_sweep(ui, item_factors, &mut out, check)?;
    }
    Ok(out.into())
}

/// The training loss `L` of the module documentation for `model` on `ui`, in f64. Costs
/// `O(nnz * k + (n_users + n_items) * k^2)`; single-threaded (meant for tests and diagnostics).
pub fn loss(ui: &Csr, model: &AlsModel, params: &AlsParams) -> f64 {
    let k = model.factors;
    if k == 0 {
        return ui
            .data
            .iter()
            .map(|&r| 1.0 + params.alpha as f64 * r as f64)
            .sum();
    }
    let gram64 = |f: &[f32]| {
        let mut g = vec![0f64; k * k];
        for v in f.chunks_exact(k) {
            for a in 0..k {
                let va = v[a] as f64;
                for (gb, &vb) in g[a * k..(a + 1) * k].iter_mut().zip(v) {
                    *gb += va * vb as f64;
                }
            }
        }
        g
    };
    let xtx = gram64(&model.user_factors);
    let yty = gram64(&model.item_factors);
    // sum over all pairs of s^2 = trace(X^T X Y^T Y)
    let mut total: f64 = xtx.iter().zip(&yty).map(|(a, b)| a * b).sum();
    let alpha = params.alpha as f64;
    for u in 0..ui.n_rows {
        let (cols, vals) = ui.row(u);
        let x = model.user(u);
        for (&i, &r) in cols.iter().zip(vals) {
            let y = model.item(i as usize);
            let s: f64 = x.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum();
            let c = 1.0 + alpha * r as f64;
            total += c * (1.0 - s) * (1.0 - s) - s * s;
        }
    }
    let sq = |f: &[f32]| f.iter().map(|&v| v as f64 * v as f64).sum::<f64>();
    total + params.regularization as f64 * (sq(&model.user_factors) + sq(&model.item_factors))
}

// ---------------------------------------------------------------------------------------------
// Sweeps and threading

/// Per-thread scratch space, reused across rows and batches.
pub(crate) struct Scratch {
    pub(crate) r: Vec<f32>,
    pub(crate) p: Vec<f32>,
    pub(crate) ap: Vec<f32>,
    /// Gathered other-side vectors of the current row (`nnz * k`).
    pub(crate) ys: Vec<f32>,
    /// `c_ui - 1` of the current row's entries.
    pub(crate) cs: Vec<f32>,
}

impl Scratch {
    fn new(k: usize) -> Scratch {
        Scratch {
            r: vec![0.0; k],
            p: vec![0.0; k],
            ap: vec![0.0; k],
            ys: Vec::new(),
            cs: Vec::new(),
        }
    }
}

struct Sweep<'a> {
    params: &'a AlsParams,
    /// Use the AVX2+FMA kernels.
    fast: bool,
    threads: usize,
    task_work: u64,
    scratch: Vec<Scratch>,
}

/// A run of consecutive rows and their (mutable) factor slice.
struct RowTask<'a> {
    first: usize,
    out: &'a mut [f32],
}

impl<'a> Sweep<'a> {
    /// Sweeps of `k` factors on `params.threads` threads (at most `MAX_THREADS`), in tasks of
    /// about `task_work` multiply-adds, with the AVX2+FMA kernels when `simd` and the CPU has them.
    fn new(params: &'a AlsParams, k: usize, task_work: u64, simd: bool) -> Sweep<'a> {
        let threads = params.threads.clamp(1, MAX_THREADS);
        Sweep {
            params,
            fast: simd && fast_kernels_available(),
            threads,
            task_work,
            scratch: (0..threads).map(|_| Scratch::new(k)).collect(),
        }
    }

    /// Updates every row of `out` (one per row of `m`) given the fixed `other` factors.
    fn half_sweep(
        &mut self,
        m: &Csr,
        other: &[f32],
        out: &mut [f32],
        check: &mut dyn FnMut() -> Result<(), Interrupted>,
    ) -> Result<(), Interrupted> {
        self.half_sweep_in(m, other, out, None, check)
    }

    /// [`Sweep::half_sweep`] visiting the rows in `order` (a permutation of `m`'s rows) when
    /// given: the same factors (each row's update reads only the fixed side and its own row).
    fn half_sweep_in(
        &mut self,
        m: &Csr,
        other: &[f32],
        out: &mut [f32],
        order: Option<&[u32]>,
        check: &mut dyn FnMut() -> Result<(), Interrupted>,
    ) -> Result<(), Interrupted> {
        let k = self.params.factors;
        let mut gram = self.gram(other, check)?;
        for a in 0..k {
            gram[a * k + a] += self.params.regularization;
        }
        match order {
            Some(order) => self.rows_in(m, other, Dense(&gram), out, order, check),
            None => self.rows(m, other, Dense(&gram), out, check),
        }
    }

    /// [`Sweep::half_sweep`] in the eigenbasis of the Gram matrix of `other`: `other` is rotated
    /// in place (`y -> Q^T y`), every row of `out` starts from `Q^T x` and its steps multiply by
    /// the eigenvalues instead of the whole matrix (see [`Prior`]). Scores `x . y` are those of
    /// the same factors in the old basis; the caller's factors on both sides are now in the new.
    fn half_sweep_rotated(
        &mut self,
        m: &Csr,
        other: &mut [f32],
        out: &mut [f32],
        order: Option<&[u32]>,
        check: &mut dyn FnMut() -> Result<(), Interrupted>,
    ) -> Result<(), Interrupted> {
        let k = self.params.factors;
        let gram = self.gram(other, check)?;
        let Some((d, q)) = eigenbasis(&gram, k, self.params.regularization) else {
            return self.half_sweep_in(m, other, out, order, check);
        };
        check()?;
        self.rotate(other, &q, check)?;
        let prior = Diagonal { d: &d, q: &q };
        match order {
            Some(order) => self.rows_in(m, other, prior, out, order, check),
            None => self.rows(m, other, prior, out, check),
        }
    }

    /// `y -> Q^T y` for every row of `f`, in tasks on the sweep's threads.
    fn rotate(
        &mut self,
        f: &mut [f32],
        q: &[f32],
        check: &mut dyn FnMut() -> Result<(), Interrupted>,
    ) -> Result<(), Interrupted> {
        let k = self.params.factors;
        let fast = self.fast;
        let work = |sc: &mut Scratch, rows: &mut [f32]| {
            #[cfg(target_arch = "x86_64")]
            if fast {
                // SAFETY: `fast` is only set when the CPU supports AVX2 and FMA.
                return unsafe { kernels::rotate_rows_fma(q, rows, k, &mut sc.r) };
            }
            let _ = fast;
            rotate_rows::<false>(q, rows, k, &mut sc.r)
        };
        self.run_checked(f.chunks_mut(GRAM_ROWS * k).collect(), &work, check)
    }

    /// A row's estimated work (multiply-adds) given its stored entries, for cutting rows into
    /// tasks: per pass the product by the prior (`k^2`, or `k` and one `k^2` rotation per row)
    /// and two length-`k` passes per entry, plus the gather.
    fn row_cost<P: Prior>(&self) -> impl Fn(u64) -> u64 {
        let passes = self.params.cg_steps as u64 + 1;
        let k64 = self.params.factors as u64;
        let (per_pass, once) = if P::DIAGONAL {
            (k64, k64 * k64)
        } else {
            (k64 * k64, 0)
        };
        move |nnz| once + passes * (per_pass + 2 * k64 * nnz) + k64 * nnz + k64
    }

    /// Updates every row of `out` (one per row of `m`) given the fixed `other` factors and the
    /// rows' common `prior`.
    fn rows<P: Prior + Sync>(
        &mut self,
        m: &Csr,
        other: &[f32],
        prior: P,
        out: &mut [f32],
        check: &mut dyn FnMut() -> Result<(), Interrupted>,
    ) -> Result<(), Interrupted> {
        let k = self.params.factors;
        // Cut rows into tasks of about `task_work` estimated multiply-adds.
        let cost = self.row_cost::<P>();
        let mut tasks = Vec::new();
        let mut rest = out;
        let mut first = 0usize;
        let mut acc = 0u64;
        for row in 0..m.n_rows {
            acc += cost((m.indptr[row + 1] - m.indptr[row]) as u64);
            if acc >= self.task_work || row + 1 == m.n_rows {
                let (head, tail) = std::mem::take(&mut rest).split_at_mut((row + 1 - first) * k);
                tasks.push(RowTask { first, out: head });
                rest = tail;
                first = row + 1;
                acc = 0;
            }
        }

        let (params, fast) = (self.params, self.fast);
        let work = |sc: &mut Scratch, t: RowTask<'_>| {
            let (first, out) = (t.first, t.out);
            #[cfg(target_arch = "x86_64")]
            if fast {
                // SAFETY: `fast` is only set when the CPU supports AVX2 and FMA.
                return unsafe {
                    kernels::update_rows_fma(m, first, out, other, prior, sc, params)
                };
            }
            let _ = fast;
            update_rows::<false, P>(m, first, out, other, prior, sc, params);
        };
        self.run_checked(tasks, &work, check)
    }

    /// [`Sweep::rows`] visiting the rows in `order`, a permutation of `m`'s rows (see
    /// [`train_als_ordered`]): tasks are runs of consecutive positions in `order`, each row's
    /// factors written in place. The same factors as in row order. Panics when `order` is not a
    /// permutation (the tasks' writes are disjoint and in range only because it is one).
    fn rows_in<P: Prior + Sync>(
        &mut self,
        m: &Csr,
        other: &[f32],
        prior: P,
        out: &mut [f32],
        order: &[u32],
        check: &mut dyn FnMut() -> Result<(), Interrupted>,
    ) -> Result<(), Interrupted> {
        let k = self.params.factors;
        assert!(is_permutation(order, m.n_rows), "a permutation of the rows");
        assert_eq!(out.len(), m.n_rows * k, "one vector per row");
        let cost = self.row_cost::<P>();
        let mut tasks: Vec<&[u32]> = Vec::new();
        let (mut first, mut acc) = (0usize, 0u64);
        for (pos, &row) in order.iter().enumerate() {
            let row = row as usize;
            acc += cost((m.indptr[row + 1] - m.indptr[row]) as u64);
            if acc >= self.task_work || pos + 1 == order.len() {
                tasks.push(&order[first..=pos]);
                first = pos + 1;
                acc = 0;
            }
        }
        let (params, fast) = (self.params, self.fast);
        let shared = SharedOut(out.as_mut_ptr());
        let work = |sc: &mut Scratch, rows: &[u32]| {
            #[cfg(target_arch = "x86_64")]
            if fast {
                // SAFETY: `fast` is only set when the CPU supports AVX2 and FMA; `order` is a
                // permutation (asserted above), so every row is in range and no two tasks write
                // the same row; `out` has a vector per row (asserted above).
                return unsafe {
                    kernels::update_rows_in_fma(m, rows, shared, other, prior, sc, params)
                };
            }
            let _ = fast;
            // SAFETY: as above.
            unsafe { update_rows_in::<false, P>(m, rows, shared, other, prior, sc, params) };
        };
        self.run_checked(tasks, &work, check)
    }

    /// Runs `work` over `tasks` in batches of [`TASKS_PER_THREAD`] per thread ([`run_batch`]),
    /// calling `check` on this thread after each batch.
    fn run_checked<T: Send>(
        &mut self,
        tasks: Vec<T>,
        work: &(impl Fn(&mut Scratch, T) + Sync),
        check: &mut dyn FnMut() -> Result<(), Interrupted>,
    ) -> Result<(), Interrupted> {
        let per_batch = self.threads * TASKS_PER_THREAD;
        let mut it = tasks.into_iter();
        loop {
            let batch: Vec<T> = it.by_ref().take(per_batch).collect();
            if batch.is_empty() {
                return Ok(());
            }
            run_batch(batch, &mut self.scratch, work);
            check()?;
        }
    }

    /// `F^T F` for the row-major `n x k` matrix `f`, reduced in a fixed block order.
    fn gram(
        &mut self,
        f: &[f32],
        check: &mut dyn FnMut() -> Result<(), Interrupted>,
    ) -> Result<Vec<f32>, Interrupted> {
        let k = self.params.factors;
        let kk = k * k;
        let blocks: Vec<&[f32]> = f.chunks(GRAM_ROWS * k).collect();
        let mut total = vec![0f64; kk];
        let per_batch = self.threads * TASKS_PER_THREAD;
        let mut partial = vec![0f32; per_batch.min(blocks.len()) * kk];
        for group in blocks.chunks(per_batch) {
            let outs = &mut partial[..group.len() * kk];
            let batch: Vec<(&[f32], &mut [f32])> = group
                .iter()
                .copied()
                .zip(outs.chunks_exact_mut(kk))
                .collect();
            let fast = self.fast;
            run_batch(batch, &mut self.scratch, &|_: &mut Scratch,
                                                  (rows, g): (
                &[f32],
                &mut [f32],
            )| {
                #[cfg(target_arch = "x86_64")]
                if fast {
                    // SAFETY: `fast` is only set when the CPU supports AVX2 and FMA.
                    return unsafe { kernels::gram_block_fma(rows, k, g) };
                }
                let _ = fast;
                gram_block::<false>(rows, k, g)
            });
            for g in partial[..group.len() * kk].chunks_exact(kk) {
                for (t, &v) in total.iter_mut().zip(g) {
                    *t += v as f64;
                }
            }
            check()?;
        }
        // Only the upper triangle was accumulated; mirror it.
        let mut out = vec![0f32; kk];
        for a in 0..k {
            for b in a..k {
                let v = total[a * k + b] as f32;
                out[a * k + b] = v;
                out[b * k + a] = v;
            }
        }
        Ok(out)
    }
}

/// Updates rows `first..` of `m`, whose factors are `out`.
#[inline(always)]
fn update_rows<const F: bool, P: Prior>(
    m: &Csr,
    first: usize,
    out: &mut [f32],
    other: &[f32],
    prior: P,
    sc: &mut Scratch,
    params: &AlsParams,
) {
    let k = params.factors;
    let n_rows = out.len() / k.max(1);
    for (j, x) in out.chunks_exact_mut(k).enumerate() {
        if j + 1 < n_rows {
            prefetch_row_start(m.row(first + j + 1).0, other, k);
        }
        let (cols, vals) = m.row(first + j);
        update_row::<F, P>(cols, vals, other, prior, x, sc, params);
    }
}

/// Updates the rows `rows` of `m` (each at most once across all threads), whose factors are
/// those of `out` at the same row.
///
/// # Safety
/// `out` holds `m.n_rows * k` floats and no other thread reads or writes these rows' factors
/// meanwhile.
#[inline(always)]
unsafe fn update_rows_in<const F: bool, P: Prior>(
    m: &Csr,
    rows: &[u32],
    out: SharedOut<f32>,
    other: &[f32],
    prior: P,
    sc: &mut Scratch,
    params: &AlsParams,
) {
    let k = params.factors;
    for (j, &row) in rows.iter().enumerate() {
        if let Some(&next) = rows.get(j + 1) {
            prefetch_row_start(m.row(next as usize).0, other, k);
        }
        let row = row as usize;
        // SAFETY: the row is in range and this thread's alone (the caller's contract).
        let x = unsafe { std::slice::from_raw_parts_mut(out.at(row * k), k) };
        let (cols, vals) = m.row(row);
        update_row::<F, P>(cols, vals, other, prior, x, sc, params);
    }
}

/// Whether the AVX2+FMA kernels can run here.
fn fast_kernels_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The same kernels compiled for AVX2 + FMA (8-wide, fused multiply-add), chosen at run time.
#[cfg(target_arch = "x86_64")]
mod kernels {
    use super::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn update_rows_fma<P: Prior>(
        m: &Csr,
        first: usize,
        out: &mut [f32],
        other: &[f32],
        prior: P,
        sc: &mut Scratch,
        params: &AlsParams,
    ) {
        update_rows::<true, P>(m, first, out, other, prior, sc, params)
    }

    /// # Safety
    /// As [`update_rows_in`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn update_rows_in_fma<P: Prior>(
        m: &Csr,
        rows: &[u32],
        out: SharedOut<f32>,
        other: &[f32],
        prior: P,
        sc: &mut Scratch,
        params: &AlsParams,
    ) {
        // SAFETY: the caller's contract.
        unsafe { update_rows_in::<true, P>(m, rows, out, other, prior, sc, params) }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn rotate_rows_fma(q: &[f32], rows: &mut [f32], k: usize, tmp: &mut [f32]) {
        rotate_rows::<true>(q, rows, k, tmp)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn gram_block_fma(rows: &[f32], k: usize, g: &mut [f32]) {
        gram_block::<true>(rows, k, g)
    }
}

/// Runs `work` over `tasks` on up to `scratch.len()` threads: `n - 1` scoped workers and the
/// calling thread, pulling tasks in order from a shared queue.
fn run_batch<T: Send, F: Fn(&mut Scratch, T) + Sync>(
    tasks: Vec<T>,
    scratch: &mut [Scratch],
    work: &F,
) {
    let n = scratch.len().min(tasks.len());
    let Some((mine, others)) = scratch.split_first_mut() else {
        unreachable!("at least one scratch buffer");
    };
    if n <= 1 {
        for t in tasks {
            work(mine, t);
        }
        return;
    }
    let mut tasks = tasks;
    tasks.reverse();
    let queue = Mutex::new(tasks);
    let next = || queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
    std::thread::scope(|s| {
        for sc in others.iter_mut().take(n - 1) {
            let next = &next;
            s.spawn(move || {
                while let Some(t) = next() {
                    work(sc, t);
                }
            });
        }
        while let Some(t) = next() {
            work(mine, t);
        }
    });
}

/// Accumulates the upper triangle of `rows^T rows` into `g` (`k x k`, overwritten).
#[inline(always)]
fn gram_block<const F: bool>(rows: &[f32], k: usize, g: &mut [f32]) {
    match k {
        16 => gram_fixed::<F, 16>(rows, g),
        32 => gram_fixed::<F, 32>(rows, g),
        64 => gram_fixed::<F, 64>(rows, g),
        _ => gram_any::<F>(rows, k, g),
    }
}

/// [`gram_block`] for any `k`: the upper triangle, row after row.
#[inline(always)]
fn gram_any<const F: bool>(rows: &[f32], k: usize, g: &mut [f32]) {
    g.fill(0.0);
    for v in rows.chunks_exact(k) {
        for a in 0..k {
            axpy::<F>(&mut g[a * k + a..(a + 1) * k], v[a], &v[a..]);
        }
    }
}

/// [`gram_block`] for `K` factors: whole rows of `g` (the lower triangle too, which the caller
/// ignores) in 8-float multiply-adds, four input rows at a time with `g`'s row in registers. Each
/// element of the upper triangle gets the same multiply-adds in the same order (row after row),
/// so the same Gram matrix bit for bit; the triangle's rows of run-time length, starting at
/// every offset, were loops the compiler could not unroll (3% of a build's CPU).
#[inline(always)]
fn gram_fixed<const F: bool, const K: usize>(rows: &[f32], g: &mut [f32]) {
    let g = &mut g[..K * K];
    g.fill(0.0);
    let quads = rows.chunks_exact(4 * K);
    let rest = quads.remainder();
    for q in quads {
        let (v0, q) = q.split_at(K);
        let (v1, q) = q.split_at(K);
        let (v2, v3) = q.split_at(K);
        for (a, ga) in g.chunks_exact_mut(K).enumerate() {
            let mut acc = [0f32; K];
            acc.copy_from_slice(ga);
            for v in [v0, v1, v2, v3] {
                let va = v[a];
                for (s, &vb) in acc.iter_mut().zip(v) {
                    *s = madd::<F>(va, vb, *s);
                }
            }
            ga.copy_from_slice(&acc);
        }
    }
    for v in rest.chunks_exact(K) {
        for (a, ga) in g.chunks_exact_mut(K).enumerate() {
            let va = v[a];
            for (s, &vb) in ga.iter_mut().zip(v) {
                *s = madd::<F>(va, vb, *s);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Setup helpers

/// Fills `v` uniformly with mean 0 and standard deviation `std`.
fn init_uniform(
    v: &mut [f32],
    seed: u64,
    std: f32,
    check: &mut dyn FnMut() -> Result<(), Interrupted>,
) -> Result<(), Interrupted> {
    let half_width = std * 3f32.sqrt();
    let mut rng = SplitMix64(seed);
    for chunk in v.chunks_mut(TRANSPOSE_CHUNK) {
        for x in chunk {
            *x = half_width * rng.next_sym();
        }
        check()?;
    }
    Ok(())
}

/// `iu` when given (panics when its shape is not `ui`'s transposed), else `ui`'s transpose,
/// computed into `own`.
fn given_or_transposed<'a>(
    ui: &Csr,
    iu: Option<&'a Csr>,
    own: &'a mut Option<Csr>,
    threads: usize,
    check: &mut dyn FnMut() -> Result<(), Interrupted>,
) -> Result<&'a Csr, Interrupted> {
    match iu {
        Some(t) => {
            assert!(
                t.n_rows == ui.n_cols && t.n_cols == ui.n_rows && t.nnz() == ui.nnz(),
                "the transpose of the matrix"
            );
            Ok(t)
        }
        None => Ok(own.insert(transpose_checked(ui, threads, check)?)),
    }
}

/// `Csr::transpose` (each row's entries in increasing column order) on `threads` threads,
/// calling `check` on the calling thread every `TRANSPOSE_CHUNK` entries of its part.
///
/// The rows are cut into one range of about equal entries per thread; each thread counts its
/// range's columns, then writes its entries at its own offsets in each column (the columns of the
/// ranges before it come first), so the result is the same for any thread count. On one thread
/// this pass was 0.5 s of a 20M-event shop's build with the other core idle.
pub fn transpose_checked(
    m: &Csr,
    threads: usize,
    check: &mut dyn FnMut() -> Result<(), Interrupted>,
) -> Result<Csr, Interrupted> {
    let nnz = m.nnz();
    let parts = if nnz < TRANSPOSE_CHUNK {
        1
    } else {
        threads.clamp(1, MAX_THREADS)
    };
    let bounds = m.row_parts(parts);
    check()?;
    // Per part, its entries per column; then turned into its first slot per column.
    let mut starts: Vec<Vec<usize>> = crate::util::par::par_map((0..parts).collect(), |t| {
        let mut counts = vec![0usize; m.n_cols];
        for &c in &m.indices[m.indptr[bounds[t]]..m.indptr[bounds[t + 1]]] {
            counts[c as usize] += 1;
        }
        counts
    });
    check()?;
    let mut indptr = vec![0usize; m.n_cols + 1];
    for c in 0..m.n_cols {
        let mut at = indptr[c];
        for part in starts.iter_mut() {
            let n = part[c];
            part[c] = at;
            at += n;
        }
        indptr[c + 1] = at;
    }
    let mut indices = vec![0u32; nnz];
    let mut data = vec![0f32; nnz];
    let out = (
        SharedOut(indices.as_mut_ptr()),
        SharedOut(data.as_mut_ptr()),
    );
    let stop = AtomicBool::new(false);
    // Writes part t's rows; `check` (the calling thread's part only) every TRANSPOSE_CHUNK entries.
    let scatter = |t: usize,
                   next: &mut [usize],
                   mut check: Option<&mut dyn FnMut() -> Result<(), Interrupted>>|
     -> Result<(), Interrupted> {
        let mut since = 0usize;
        for r in bounds[t]..bounds[t + 1] {
            let (cols, vals) = m.row(r);
            for (&c, &v) in cols.iter().zip(vals) {
                let slot = &mut next[c as usize];
                // SAFETY: the slots of part t in column c are [starts[t][c], starts[t][c] +
                // its count), disjoint from every other part's and column's, and within nnz.
                unsafe {
                    *out.0.at(*slot) = r as u32;
                    *out.1.at(*slot) = v;
                }
                *slot += 1;
            }
            since += cols.len() + 1;
            if since >= TRANSPOSE_CHUNK {
                since = 0;
                if let Some(c) = check.as_mut() {
                    if let Err(e) = c() {
                        stop.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                } else if stop.load(Ordering::Relaxed) {
                    return Err(Interrupted);
                }
            }
        }
        Ok(())
    };
    std::thread::scope(|sc| {
        let mut rest = starts.iter_mut();
        let first = rest.next().expect("one part at least");
        let scatter = &scatter;
        let others: Vec<_> = rest
            .enumerate()
            .map(|(t, next)| sc.spawn(move || scatter(t + 1, next, None)))
            .collect();
        let mine = scatter(0, first, Some(&mut *check));
        if mine.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        let mut result = mine;
        for h in others {
            let r = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            result = result.and(r);
        }
        result
    })?;
    check()?;
    Ok(Csr {
        n_rows: m.n_cols,
        n_cols: m.n_rows,
        indptr: indptr.into(),
        indices: indices.into(),
        data: data.into(),
    })
}

/// A pointer to an output buffer that threads write at disjoint positions.
#[derive(Clone, Copy)]
struct SharedOut<T>(*mut T);

// SAFETY: used only where every position is written by one thread (see `transpose_checked`).
unsafe impl<T> Send for SharedOut<T> {}
unsafe impl<T> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// # Safety
    /// `i` is within the buffer and no other thread touches position `i`.
    #[inline(always)]
    unsafe fn at(self, i: usize) -> *mut T {
        unsafe { self.0.add(i) }
    }
}

// ---------------------------------------------------------------------------------------------

/// Bytes `train_als` allocates for an `n_users` x `n_items` matrix with `nnz` entries (an
/// estimate within a few percent: both factor matrices, the transposed confidences, and per
/// thread a Gram matrix and the conjugate-gradient vectors).
pub fn memory_estimate(n_users: usize, n_items: usize, nnz: usize, p: &AlsParams) -> usize {
    let k = p.factors;
    let threads = p.threads.max(1);
    (n_users + n_items).saturating_mul(k).saturating_mul(4)
        + nnz.saturating_mul(8)
        + (n_users + n_items + 2) * 8
        + threads * (k * k * 4 + 8 * k * 4)
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {

    #[test]
    fn memory_estimate_counts_the_factor_matrices() {
        // The review's example: 1024 factors for 10M users need about 40 GB.
        let p = AlsParams {
            factors: 1024,
            threads: 2,
            ..AlsParams::default()
        };
        let est = memory_estimate(10_000_000, 50_000, 0, &p);
        assert!(est > 40_000_000_000 && est < 42_000_000_000, "{est}");
        // Linear in the factors and the pairs.
        let small = AlsParams {
            factors: 32,
            ..p.clone()
        };
        assert!(
            memory_estimate(1000, 100, 5000, &small) < memory_estimate(1000, 100, 50_000, &small)
        );
    }
    use super::*;
    use crate::model::als_row::{cg, Direct};

    /// The Gram matrix of the 16/32/64-factor instances (whole rows, four input rows at a time)
    /// has the general loop's upper triangle bit for bit, plain and fused, for row counts that
    /// leave 0 to 3 rows after the groups of four.
    #[test]
    fn fixed_size_gram_is_the_general_triangle() {
        fn both<const F: bool>(k: usize, n: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
            let mut rng = SplitMix64(seed);
            let rows: Vec<f32> = (0..n * k)
                .map(|_| (rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                .collect();
            let (mut fixed, mut any) = (vec![1f32; k * k], vec![2f32; k * k]);
            gram_block::<F>(&rows, k, &mut fixed);
            gram_any::<F>(&rows, k, &mut any);
            let upper = |g: &[f32]| {
                (0..k)
                    .flat_map(|a| (a..k).map(move |b| (a, b)))
                    .map(|(a, b)| g[a * k + b].to_bits())
                    .collect::<Vec<u32>>()
            };
            (upper(&fixed), upper(&any))
        }
        for k in [16, 32, 64] {
            for n in [0, 1, 4, 7, 33, 66] {
                let (fixed, any) = both::<false>(k, n, 11 + n as u64);
                assert_eq!(fixed, any, "k = {k}, {n} rows");
            }
        }
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            #[target_feature(enable = "avx2,fma")]
            unsafe fn fused(k: usize, n: usize, seed: u64) -> (Vec<u32>, Vec<u32>) {
                both::<true>(k, n, seed)
            }
            for k in [16, 32, 64] {
                for n in [5, 66] {
                    // SAFETY: the CPU has AVX2 and FMA (checked above).
                    let (fixed, any) = unsafe { fused(k, n, 3) };
                    assert_eq!(fixed, any, "fused, k = {k}, {n} rows");
                }
            }
        }
    }

    fn ok() -> impl FnMut() -> Result<(), Interrupted> {
        || Ok(())
    }

    /// 3 user groups x 3 item groups: each user touches ~`p_own` of its group's items and a little noise.
    fn planted(
        n_users: usize,
        n_items: usize,
        p_own: f64,
        p_noise: f64,
        seed: u64,
    ) -> (Csr, Vec<usize>, Vec<usize>) {
        let mut rng = SplitMix64(seed);
        let mut unif = move || (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let ug: Vec<usize> = (0..n_users).map(|u| u % 3).collect();
        let ig: Vec<usize> = (0..n_items).map(|i| i % 3).collect();
        let mut t = Vec::new();
        for u in 0..n_users {
            for i in 0..n_items {
                let p = if ug[u] == ig[i] { p_own } else { p_noise };
                if unif() < p {
                    t.push((u as u32, i as u32, 1.0 + (unif() * 3.0).floor() as f32));
                }
            }
        }
        (Csr::from_triplets(n_users, n_items, &mut t), ug, ig)
    }

    /// The exact solution of one row's normal equations, in f64 (Gaussian elimination).
    fn exact_row(cols: &[u32], vals: &[f32], y: &[f32], k: usize, p: &AlsParams) -> Vec<f64> {
        let n_items = y.len() / k;
        let mut a = vec![0f64; k * k];
        let mut b = vec![0f64; k];
        for i in 0..n_items {
            let yi = &y[i * k..(i + 1) * k];
            for r in 0..k {
                for c in 0..k {
                    a[r * k + c] += yi[r] as f64 * yi[c] as f64;
                }
            }
        }
        for r in 0..k {
            a[r * k + r] += p.regularization as f64;
        }
        for (&i, &v) in cols.iter().zip(vals) {
            let yi = &y[i as usize * k..(i as usize + 1) * k];
            let c = (p.alpha * v) as f64;
            for r in 0..k {
                b[r] += (1.0 + c) * yi[r] as f64;
                for cc in 0..k {
                    a[r * k + cc] += c * yi[r] as f64 * yi[cc] as f64;
                }
            }
        }
        for col in 0..k {
            let piv = (col..k)
                .max_by(|&x, &z| a[x * k + col].abs().total_cmp(&a[z * k + col].abs()))
                .unwrap();
            for c in 0..k {
                a.swap(col * k + c, piv * k + c);
            }
            b.swap(col, piv);
            for r in 0..k {
                if r != col {
                    let f = a[r * k + col] / a[col * k + col];
                    for c in 0..k {
                        a[r * k + c] -= f * a[col * k + c];
                    }
                    b[r] -= f * b[col];
                }
            }
        }
        (0..k).map(|r| b[r] / a[r * k + r]).collect()
    }

    #[test]
    fn fold_in_solves_each_row_against_fixed_items() {
        let (ui, _, _) = planted(60, 30, 0.3, 0.05, 3);
        let p = AlsParams {
            factors: 5,
            iterations: 5,
            threads: 2,
            ..AlsParams::default()
        };
        let m = train_als(&ui, &p, &mut ok()).unwrap();
        let x = fold_in(&ui, &m.item_factors, &p, 4, None, &mut ok()).unwrap();
        assert_eq!(x.len(), 60 * 5);
        for u in 0..ui.n_rows {
            let (cols, vals) = ui.row(u);
            let want = exact_row(cols, vals, &m.item_factors, 5, &p);
            for (f, w) in x[u * 5..(u + 1) * 5].iter().zip(&want) {
                assert!(
                    (*f as f64 - w).abs() < 1e-3 * (1.0 + w.abs()),
                    "user {u}: {f} vs {w}"
                );
            }
        }
        // A row the model never saw: the same solve; an empty row: zeros.
        let mut t = vec![(0u32, 2u32, 1.0f32), (0, 7, 3.0)];
        let new = Csr::from_triplets(2, 30, &mut t);
        let x = fold_in(&new, &m.item_factors, &p, 4, None, &mut ok()).unwrap();
        let want = exact_row(new.row(0).0, new.row(0).1, &m.item_factors, 5, &p);
        for (f, w) in x[..5].iter().zip(&want) {
            assert!((*f as f64 - w).abs() < 1e-3 * (1.0 + w.abs()), "{f} vs {w}");
        }
        assert!(x[5..].iter().all(|&v| v == 0.0));
        // Interruptible.
        let mut stop = || Err(Interrupted);
        assert!(fold_in(&ui, &m.item_factors, &p, 4, None, &mut stop).is_err());
        // Warm-started from the solution, one sweep keeps it.
        let x = fold_in(&ui, &m.item_factors, &p, 4, None, &mut ok()).unwrap();
        let again = fold_in(&ui, &m.item_factors, &p, 1, Some(x.to_vec()), &mut ok()).unwrap();
        for (a, b) in x.iter().zip(again.iter()) {
            assert!((a - b).abs() < 1e-3 * (1.0 + a.abs()), "{a} vs {b}");
        }
    }

    /// The settings of the continuation tests (6 factors, 2 threads), on `planted(120, 40, ..)`.
    fn continued(iterations: usize) -> AlsParams {
        AlsParams {
            factors: 6,
            iterations,
            threads: 2,
            ..AlsParams::default()
        }
    }

    #[test]
    fn continuing_is_training_further() {
        let (ui, _, _) = planted(120, 40, 0.3, 0.05, 5);
        let p = continued;
        let full = train_als(&ui, &p(7), &mut ok()).unwrap();
        let part = train_als(&ui, &p(4), &mut ok()).unwrap();
        let more = continue_als(&ui, &p(7), part, 3, &mut ok()).unwrap();
        assert_eq!(more, full, "4 + 3 iterations are 7");
        let same = continue_als(&ui, &p(7), full.clone(), 0, &mut ok()).unwrap();
        assert_eq!(same, full);
        let stopped = continue_als(&ui, &p(7), full, 1, &mut || Err(Interrupted));
        assert!(stopped.is_err());
    }

    #[test]
    fn continuing_on_some_rows_keeps_the_others() {
        let (ui, _, _) = planted(120, 40, 0.3, 0.05, 5);
        let p = continued(4);
        let start = train_als(&ui, &p, &mut ok()).unwrap();
        let all: Vec<usize> = (0..ui.n_rows).collect();
        assert_eq!(
            continue_als_rows(&ui, &p, start.clone(), &all, 3, &mut ok()).unwrap(),
            continue_als(&ui, &p, start.clone(), 3, &mut ok()).unwrap(),
            "every row: the full sweeps"
        );
        let some = [3usize, 17, 60, 119];
        let m = continue_als_rows(&ui, &p, start.clone(), &some, 2, &mut ok()).unwrap();
        for u in 0..ui.n_rows {
            assert_eq!(m.user(u) == start.user(u), !some.contains(&u), "user {u}");
        }
        assert_ne!(
            m.item_factors, start.item_factors,
            "every item is solved again"
        );
        assert!(continue_als_rows(&ui, &p, start, &some, 1, &mut || Err(Interrupted)).is_err());
    }

    #[test]
    fn recovers_planted_groups() {
        let (ui, ug, ig) = planted(300, 90, 0.3, 0.02, 7);
        let params = AlsParams {
            factors: 4,
            iterations: 15,
            threads: 2,
            ..AlsParams::default()
        };
        let m = train_als(&ui, &params, &mut ok()).unwrap();
        let (mut good, mut total) = (0u64, 0u64);
        for u in 0..ui.n_rows {
            let seen: Vec<u32> = ui.row(u).0.to_vec();
            let unseen: Vec<usize> = (0..ui.n_cols)
                .filter(|&i| !seen.contains(&(i as u32)))
                .collect();
            for &a in unseen.iter().filter(|&&i| ig[i] == ug[u]) {
                for &b in unseen.iter().filter(|&&i| ig[i] != ug[u]) {
                    total += 1;
                    if m.score(u, a) > m.score(u, b) {
                        good += 1;
                    }
                }
            }
        }
        let frac = good as f64 / total as f64;
        assert!(total > 10_000, "{total}");
        assert!(
            frac > 0.9,
            "own-group held-out items ranked first in only {frac}"
        );
    }

    #[test]
    fn identical_for_any_thread_count() {
        let (ui, _, _) = planted(500, 120, 0.2, 0.03, 11);
        let base = AlsParams {
            factors: 12,
            iterations: 4,
            ..AlsParams::default()
        };
        let mut models = Vec::new();
        for threads in [1, 2, 3] {
            let p = AlsParams {
                threads,
                ..base.clone()
            };
            // Tiny tasks: many batches and tasks per batch, so the threads really interleave.
            models.push(train_als_tuned(&ui, None, None, &p, &mut ok(), 2000, true).unwrap());
            models.push(train_als(&ui, &p, &mut ok()).unwrap());
        }
        assert!(models.iter().all(|m| *m == models[0]));
        assert!(models[0].user_factors.iter().all(|v| v.is_finite()));
        assert!(models[0].user_factors.iter().any(|&v| v != 0.0));
        // The portable kernels (used where AVX2/FMA is missing) agree up to rounding.
        let portable =
            train_als_tuned(&ui, None, None, &base, &mut ok(), TASK_WORK, false).unwrap();
        let (l_fast, l_portable) = (loss(&ui, &models[0], &base), loss(&ui, &portable, &base));
        assert!(
            (l_fast - l_portable).abs() < 1e-3 * l_fast,
            "{l_fast} vs {l_portable}"
        );
        // ... and deterministic across runs, different across seeds.
        let p = AlsParams { seed: 43, ..base };
        assert_ne!(train_als(&ui, &p, &mut ok()).unwrap(), models[0]);
    }

    /// Items visited in any order give the same factors bit for bit, with a dense and with a
    /// rotated item half-sweep, on any thread count; an order that is not a permutation panics.
    #[test]
    fn any_item_order_gives_the_same_factors() {
        // (users, items, factors): 120 items x 3 steps < 500 users, a dense item half-sweep;
        // 400 items x 3 > 100 users + 16 x 48, a rotated one.
        for (users, items, factors) in [(500, 120, 12), (100, 400, 48)] {
            let (ui, _, _) = planted(users, items, 0.2, 0.03, 5);
            let iu = transpose_checked(&ui, 2, &mut ok()).unwrap();
            assert_eq!(
                rotation_pays(items, users, factors, 3),
                factors == 48,
                "the case's kind of half-sweep"
            );
            let mut order: Vec<u32> = (0..items as u32).collect();
            let mut rng = SplitMix64(9);
            for i in (1..items).rev() {
                order.swap(i, rng.next_u64() as usize % (i + 1));
            }
            for threads in [1, 3] {
                let p = AlsParams {
                    factors,
                    iterations: 3,
                    threads,
                    ..AlsParams::default()
                };
                let plain = train_als_with(&ui, &iu, &p, &mut ok()).unwrap();
                let ordered = train_als_ordered(&ui, &iu, &order, &p, &mut ok()).unwrap();
                assert!(plain.item_factors.iter().any(|&v| v != 0.0));
                assert_eq!(plain, ordered, "{items} items, {threads} threads");
            }
        }
        // Both kinds of half-sweep go through the order (factors equal either way, so only a
        // bad order shows it: the sweep itself refuses one).
        let (ui, _, _) = planted(100, 400, 0.2, 0.03, 5);
        let iu = transpose_checked(&ui, 1, &mut ok()).unwrap();
        let p = AlsParams {
            factors: 48,
            ..AlsParams::default()
        };
        let repeated = vec![0u32; 400];
        for rotated in [false, true] {
            let r = std::panic::catch_unwind(|| {
                let mut cfg = Sweep::new(&p, 48, TASK_WORK, true);
                let mut users = vec![0.01f32; 100 * 48];
                let mut items = vec![0f32; 400 * 48];
                if rotated {
                    cfg.half_sweep_rotated(&iu, &mut users, &mut items, Some(&repeated), &mut ok())
                } else {
                    cfg.half_sweep_in(&iu, &users, &mut items, Some(&repeated), &mut ok())
                }
            });
            assert!(r.is_err(), "rotated {rotated}");
        }
        let (ui, _, _) = planted(50, 10, 0.2, 0.03, 5);
        let iu = transpose_checked(&ui, 1, &mut ok()).unwrap();
        for bad in [
            vec![0u32; 10],
            (0..9).collect(),
            (1..11).collect::<Vec<u32>>(),
        ] {
            let r = std::panic::catch_unwind(|| {
                train_als_ordered(&ui, &iu, &bad, &AlsParams::default(), &mut ok())
            });
            assert!(r.is_err(), "{bad:?}");
        }
    }

    /// The Jacobi eigen-decomposition: `a = v diag(w) v^T` with orthonormal `v`, for Gram
    /// matrices of random factors (with and without a tiny eigenvalue) and already-diagonal ones.
    #[test]
    fn jacobi_diagonalises_symmetric_matrices() {
        let mut rng = SplitMix64(3);
        for k in [1usize, 2, 5, 8, 16, 33, 64] {
            for case in 0..3 {
                let n = if case == 1 {
                    k.saturating_sub(1).max(1)
                } else {
                    3 * k
                };
                let f: Vec<f64> = (0..n * k).map(|_| rng.next_sym() as f64).collect();
                let mut a = vec![0f64; k * k];
                for r in f.chunks_exact(k) {
                    for i in 0..k {
                        for j in 0..k {
                            a[i * k + j] += r[i] * r[j];
                        }
                    }
                }
                if case == 2 {
                    for i in 0..k {
                        for j in 0..k {
                            if i != j {
                                a[i * k + j] = 0.0;
                            }
                        }
                    }
                }
                let scale = a.iter().fold(0f64, |m, x| m.max(x.abs()));
                let (w, v) = sym_eigen(a.clone(), k);
                for i in 0..k {
                    for j in 0..k {
                        let back: f64 = (0..k).map(|l| v[i * k + l] * w[l] * v[j * k + l]).sum();
                        assert!(
                            (back - a[i * k + j]).abs() <= 1e-10 * scale,
                            "k {k} case {case}: a[{i}][{j}]"
                        );
                        let dot: f64 = (0..k).map(|l| v[l * k + i] * v[l * k + j]).sum();
                        let want = if i == j { 1.0 } else { 0.0 };
                        assert!(
                            (dot - want).abs() <= 1e-12,
                            "k {k} case {case}: v^T v [{i}][{j}]"
                        );
                    }
                }
            }
        }
    }

    /// A half-sweep in the eigenbasis gives the scores of the dense one: every user's `x . y`
    /// against the (rotated) items equals the dense half-sweep's against the original items, from
    /// the same warm start, for the fixed-size and general kernels, fused and portable.
    #[test]
    fn rotated_half_sweep_scores_as_the_dense_one() {
        let (ui, _, _) = planted(400, 60, 0.2, 0.03, 21);
        for k in [8usize, 12, 16, 32, 64] {
            for simd in [true, false] {
                let p = AlsParams {
                    factors: k,
                    threads: 2,
                    ..AlsParams::default()
                };
                let mut rng = SplitMix64(k as u64);
                let items: Vec<f32> = (0..ui.n_cols * k).map(|_| 0.3 * rng.next_sym()).collect();
                let start: Vec<f32> = (0..ui.n_rows * k).map(|_| 0.3 * rng.next_sym()).collect();
                let mut cfg = Sweep::new(&p, k, 4000, simd);
                let mut dense = start.clone();
                cfg.half_sweep(&ui, &items, &mut dense, &mut ok()).unwrap();
                let (mut rot_items, mut rot) = (items.clone(), start.clone());
                cfg.half_sweep_rotated(&ui, &mut rot_items, &mut rot, None, &mut ok())
                    .unwrap();
                assert_ne!(rot_items, items, "k {k}: the items were rotated");
                let score = |x: &[f32], y: &[f32]| -> f64 {
                    x.iter().zip(y).map(|(&a, &b)| a as f64 * b as f64).sum()
                };
                let mut worst = 0f64;
                for u in 0..ui.n_rows {
                    for i in 0..ui.n_cols {
                        let want = score(&dense[u * k..(u + 1) * k], &items[i * k..(i + 1) * k]);
                        let got = score(&rot[u * k..(u + 1) * k], &rot_items[i * k..(i + 1) * k]);
                        worst = worst.max((want - got).abs());
                    }
                }
                assert!(worst < 2e-4, "k {k}, simd {simd}: scores differ by {worst}");
            }
        }
        // Where it is used: the users of a shop (many more than its items), not its items.
        assert!(rotation_pays(984_682, 50_000, 64, 3));
        assert!(!rotation_pays(50_000, 984_682, 64, 3));
        assert!(rotation_pays(984_682, 50_000, 32, 3));
        assert!(!rotation_pays(50_000, 984_682, 32, 3));
        assert!(!rotation_pays(984_682, 50_000, 16, 3));
    }

    /// A check that counts its calls in `calls` and fails from the `n`-th on.
    fn failing_at(n: usize, calls: &mut usize) -> impl FnMut() -> Result<(), Interrupted> + '_ {
        move || {
            *calls += 1;
            if *calls >= n {
                Err(Interrupted)
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn transpose_on_threads_equals_the_plain_transpose() {
        // Rows of very different lengths (some empty), more entries than one check's chunk, so
        // every thread count cuts the rows differently.
        let (n_rows, n_cols) = (10_000u32, 307u32);
        let mut rng = SplitMix64(7);
        let mut t = Vec::new();
        for r in 0..n_rows {
            let len = if r % 11 == 0 { 0 } else { rng.next_u64() % 300 } as u32;
            let start = (rng.next_u64() % n_cols as u64) as u32;
            for j in 0..len {
                t.push((r, (start + 5 * j) % n_cols, (r * 31 + j) as f32 * 0.25));
            }
        }
        let m = Csr::from_triplets(n_rows as usize, n_cols as usize, &mut t);
        assert!(m.nnz() > TRANSPOSE_CHUNK);
        let plain = m.transpose();
        for threads in [1, 2, 3, 8] {
            let mut calls = 0;
            let got = transpose_checked(&m, threads, &mut || {
                calls += 1;
                Ok(())
            })
            .unwrap();
            assert_eq!(got.indptr.as_slice(), plain.indptr.as_slice(), "{threads}");
            assert_eq!(
                got.indices.as_slice(),
                plain.indices.as_slice(),
                "{threads}"
            );
            assert_eq!(got.data.as_slice(), plain.data.as_slice(), "{threads}");
            assert_eq!((got.n_rows, got.n_cols), (plain.n_rows, plain.n_cols));
            assert!(calls >= 3, "checks before, between and after the passes");
        }
        // A check that fails stops it, whichever pass it falls in, with every thread count.
        for threads in [1, 2, 3] {
            for stop_at in 1..=3 {
                let mut calls = 0;
                let r = transpose_checked(&m, threads, &mut failing_at(stop_at, &mut calls));
                assert_eq!(calls, stop_at);
                assert_eq!(
                    r.err(),
                    Some(Interrupted),
                    "{threads} threads, stop at {stop_at}"
                );
            }
        }
    }

    #[test]
    fn interrupt_stops_training() {
        let (ui, _, _) = planted(200, 60, 0.2, 0.03, 3);
        let params = AlsParams {
            factors: 8,
            iterations: 5,
            ..AlsParams::default()
        };
        let mut calls = 0;
        let mut check = || {
            calls += 1;
            if calls >= 2 {
                Err(Interrupted)
            } else {
                Ok(())
            }
        };
        assert_eq!(train_als(&ui, &params, &mut check), Err(Interrupted));
        assert_eq!(calls, 2);
        // Interrupting in the middle of a sweep with many batches, after a few checks.
        for stop_at in [3, 5, 9, 20] {
            let mut calls = 0;
            let mut check = failing_at(stop_at, &mut calls);
            assert_eq!(
                train_als_tuned(&ui, None, None, &params, &mut check, 500, true),
                Err(Interrupted)
            );
            drop(check);
            assert_eq!(calls, stop_at);
        }
        // check is called regularly: every batch of a half sweep.
        let mut calls = 0;
        let mut check = || {
            calls += 1;
            Ok(())
        };
        train_als(&ui, &params, &mut check).unwrap();
        assert!(calls >= 2 * params.iterations, "{calls}");
    }

    #[test]
    fn degenerate_inputs() {
        let params = AlsParams {
            factors: 4,
            iterations: 3,
            ..AlsParams::default()
        };
        let empty = |r: usize, c: usize| Csr::from_triplets(r, c, &mut Vec::new());
        for (r, c) in [(0, 0), (0, 5), (5, 0), (3, 4)] {
            let m = train_als(&empty(r, c), &params, &mut ok()).unwrap();
            assert_eq!(m.factors, 4);
            assert_eq!(m.user_factors.len(), r * 4);
            assert_eq!(m.item_factors.len(), c * 4);
            assert!(m
                .user_factors
                .iter()
                .chain(&m.item_factors)
                .all(|&v| v == 0.0));
        }
        // Zero factors / zero iterations / zero cg steps / zero threads.
        let mut t = vec![(0, 0, 1.0), (1, 2, 2.0), (1, 0, 1.0)];
        let ui = Csr::from_triplets(4, 5, &mut t);
        let m = train_als(
            &ui,
            &AlsParams {
                factors: 0,
                ..params.clone()
            },
            &mut ok(),
        )
        .unwrap();
        assert_eq!((m.n_users(), m.n_items(), m.score(1, 2)), (0, 0, 0.0));
        assert!(m.user(3).is_empty());
        let m = train_als(
            &ui,
            &AlsParams {
                iterations: 0,
                ..params.clone()
            },
            &mut ok(),
        )
        .unwrap();
        assert!(m.user_factors.iter().all(|&v| v == 0.0));
        let m = train_als(
            &ui,
            &AlsParams {
                cg_steps: 0,
                threads: 0,
                ..params.clone()
            },
            &mut ok(),
        )
        .unwrap();
        assert!(m.user_factors.iter().all(|v| v.is_finite()));
        // Users 2, 3 and items 1, 3, 4 have no entries: all-zero factors.
        let m = train_als(
            &ui,
            &AlsParams {
                threads: 8,
                ..params.clone()
            },
            &mut ok(),
        )
        .unwrap();
        assert_eq!((m.n_users(), m.n_items()), (4, 5));
        for u in [2, 3] {
            assert!(m.user(u).iter().all(|&v| v == 0.0));
        }
        for i in [1, 3, 4] {
            assert!(m.item(i).iter().all(|&v| v == 0.0));
        }
        assert!(m.score(1, 2) > 0.3, "{}", m.score(1, 2));
        // A single entry.
        let ui = Csr::from_triplets(1, 1, &mut [(0, 0, 1.0)]);
        let m = train_als(&ui, &params, &mut ok()).unwrap();
        assert!(m.score(0, 0) > 0.5, "{}", m.score(0, 0));
    }

    #[test]
    fn loss_decreases_every_iteration() {
        let (ui, _, _) = planted(400, 100, 0.2, 0.03, 5);
        let base = AlsParams {
            factors: 10,
            ..AlsParams::default()
        };
        let mut prev = f64::INFINITY;
        let l0 = loss(
            &ui,
            &train_als(
                &ui,
                &AlsParams {
                    iterations: 0,
                    ..base.clone()
                },
                &mut ok(),
            )
            .unwrap(),
            &base,
        );
        for it in 1..=8 {
            let p = AlsParams {
                iterations: it,
                ..base.clone()
            };
            let l = loss(&ui, &train_als(&ui, &p, &mut ok()).unwrap(), &p);
            assert!(l < prev && l < l0, "iteration {it}: {l} !< {prev}");
            prev = l;
        }
        // The model explains much of the data compared with predicting 0 everywhere.
        assert!(prev < 0.8 * l0, "{prev} vs {l0}");
    }

    #[test]
    fn cg_matches_direct_solve() {
        // Many CG steps on one row converge to the exact normal-equation solution.
        let k = 5;
        let mut rng = SplitMix64(1);
        let other: Vec<f32> = (0..20 * k).map(|_| rng.next_sym()).collect();
        let cols: Vec<u32> = vec![1, 4, 7, 11, 19];
        let vals: Vec<f32> = vec![1.0, 2.0, 0.5, 3.0, 1.0];
        let params = AlsParams {
            factors: k,
            cg_steps: 50,
            alpha: 2.0,
            regularization: 0.1,
            ..AlsParams::default()
        };
        let mut g = vec![0f32; k * k];
        gram_block::<false>(&other, k, &mut g);
        let mut a = vec![0f64; k * k];
        let mut b = vec![0f64; k];
        for i in 0..k {
            for j in i..k {
                a[i * k + j] = g[i * k + j] as f64;
                a[j * k + i] = g[i * k + j] as f64;
            }
            a[i * k + i] += 0.1;
        }
        let mut gram = vec![0f32; k * k];
        for i in 0..k * k {
            gram[i] = a[i] as f32;
        }
        for (&c, &v) in cols.iter().zip(&vals) {
            let y = &other[c as usize * k..][..k];
            let conf = 1.0 + 2.0 * v as f64;
            for i in 0..k {
                b[i] += conf * y[i] as f64;
                for j in 0..k {
                    a[i * k + j] += (conf - 1.0) * y[i] as f64 * y[j] as f64;
                }
            }
        }
        // Gaussian elimination.
        for col in 0..k {
            for row in col + 1..k {
                let f = a[row * k + col] / a[col * k + col];
                for j in col..k {
                    a[row * k + j] -= f * a[col * k + j];
                }
                b[row] -= f * b[col];
            }
        }
        let mut sol = vec![0f64; k];
        for row in (0..k).rev() {
            let s: f64 = (row + 1..k).map(|j| a[row * k + j] * sol[j]).sum();
            sol[row] = (b[row] - s) / a[row * k + row];
        }
        let mut trip: Vec<(u32, u32, f32)> =
            cols.iter().zip(&vals).map(|(&c, &v)| (0, c, v)).collect();
        let row_csr = Csr::from_triplets(1, 20, &mut trip);
        for (gathered, fused) in [(true, false), (false, false), (true, true)] {
            if fused && !fast_kernels_available() {
                continue;
            }
            let mut x = vec![0f32; k];
            let mut sc = Scratch::new(k);
            match (gathered, fused) {
                (true, false) => update_row::<false, _>(
                    &cols,
                    &vals,
                    &other,
                    Dense(&gram),
                    &mut x,
                    &mut sc,
                    &params,
                ),
                (false, false) => {
                    let e = Direct {
                        cols: &cols,
                        vals: &vals,
                        other: &other,
                        alpha: 2.0,
                        k,
                    };
                    cg::<false, _, _>(
                        &e,
                        Dense(&gram),
                        &mut x,
                        &mut sc.r,
                        &mut sc.p,
                        &mut sc.ap,
                        50,
                    );
                }
                #[cfg(target_arch = "x86_64")]
                // SAFETY: fast_kernels_available() checked above.
                _ => unsafe {
                    kernels::update_rows_fma(
                        &row_csr,
                        0,
                        &mut x,
                        &other,
                        Dense(&gram),
                        &mut sc,
                        &params,
                    )
                },
                #[cfg(not(target_arch = "x86_64"))]
                _ => unreachable!(),
            }
            for i in 0..k {
                assert!((x[i] as f64 - sol[i]).abs() < 1e-4, "{x:?} vs {sol:?}");
            }
        }
    }
}
