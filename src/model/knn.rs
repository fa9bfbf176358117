//! BM25-weighted item-item nearest neighbours, the same model as the python `implicit` library's
//! `BM25Recommender`.
//!
//! The users x items affinity matrix is viewed as items (documents) x users (terms) and weighted with
//! BM25 (`implicit.nearest_neighbours.bm25_weight`):
//!
//! ```text
//! idf_u       = max(0, ln(N) - ln(1 + df_u))        N = number of items, df_u = items user u touched
//! len_norm_i  = (1 - B) + B * rowsum_i / mean_i(rowsum_i)   rowsum_i = sum_u a_ui
//! w_ui        = a_ui * (K1 + 1) / (K1 * len_norm_i + a_ui) * idf_u
//! ```
//!
//! with `BM25Recommender`'s defaults K1 = 1.2, B = 0.75: a user's repeated engagement with an item
//! saturates quickly, so a household that bought an item on 50 trips counts about as much as one
//! that bought it on 5 (with K1 = 100, `bm25_weight`'s own default, the heavy buyer dominates every
//! similarity of that item; on the grocery data of `bench/completejourney.sh` that cost the
//! summed-similarity ranking 0.08 of recall@20% for manufacturer).
//!
//! The similarity of items i and j is the dot product `S(i,j) = sum_u w_ui * w_uj`; each item keeps
//! its `neighbours` most similar other items (self excluded, only similarities > 0; ties broken by the
//! smaller item id). The only deviation from `implicit` is the clamp of `idf` at 0 (it only matters for
//! users who touched almost every item of a tiny catalogue) and the exclusion of the item itself.
//!
//! Cost is `sum_u df_u^2` multiply-adds: for each item `i`, the users of `i` are walked and each of
//! their items accumulated into a dense per-thread `f32` buffer (plus a branch-free touched list,
//! with the users' rows software-prefetched since the loop is memory-latency bound), then a bounded
//! heap keeps the top `neighbours` (a candidate below its weakest kept similarity costs one
//! comparison). Each thread walks the items: after an item's row, the row of its most similar
//! neighbour no thread has taken yet, whose users are mostly the ones just read and still in the
//! cache (when there is none, the smallest item not taken); the rows are put back in item order at
//! the end. The walk took item-kNN from 2.46-2.72 s to 2.00-2.32 s at the core bench's 20M-event
//! shop, whose items are numbered at random, against items taken in blocks of 64 ids (the same
//! neighbours); where the ids already group the items that share users (the demo shop's brand x
//! category blocks) the ids' order does about as well. The calling
//! thread works too and calls `check()` before each of its items (workers never call
//! it; they stop before their next item once the caller was interrupted). Every item's row is computed in
//! a fixed order whichever walk takes it, so the result does not depend on the number of threads
//! or on which thread took which item.

use crate::model::csr::{split_at_rows, Csr};
use crate::util::interrupt::Interrupted;
use crate::util::prefetch;
use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Item-kNN training parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct KnnParams {
    /// Neighbours kept per item (default 100).
    pub neighbours: usize,
    /// BM25 term-frequency saturation (default 1.2, as `implicit`'s `BM25Recommender`; its
    /// `bm25_weight` function defaults to 100, which barely saturates repeat purchases).
    pub k1: f32,
    /// BM25 length normalisation (default 0.75, as `implicit`'s `BM25Recommender`).
    pub b: f32,
    /// Threads including the caller; 0 means `std::thread::available_parallelism()`.
    pub threads: usize,
}

impl Default for KnnParams {
    fn default() -> Self {
        KnnParams {
            neighbours: 100,
            k1: 1.2,
            b: 0.75,
            threads: 0,
        }
    }
}

/// What BM25 needs of a matrix: `K1 * len_norm_i` per item, `K1` and `ln N`.
struct Bm25 {
    k1_norm: Vec<f64>,
    k1: f64,
    ln_n: f64,
}

impl Bm25 {
    fn new(ui: &Csr, k1: f32, b: f32) -> Bm25 {
        let n_items = ui.n_cols;
        let mut item_sums = vec![0f64; n_items];
        for (&i, &a) in ui.indices.iter().zip(&ui.data) {
            item_sums[i as usize] += a as f64;
        }
        let mean = if n_items > 0 {
            item_sums.iter().sum::<f64>() / n_items as f64
        } else {
            0.0
        };
        let (k1, b) = (k1 as f64, b as f64);
        Bm25 {
            k1_norm: item_sums
                .iter()
                .map(|&s| k1 * ((1.0 - b) + if mean > 0.0 { b * s / mean } else { b }))
                .collect(),
            k1,
            ln_n: (n_items.max(1) as f64).ln(),
        }
    }

    /// `idf_u` of a user who touched `df` items.
    #[inline]
    fn idf(&self, df: usize) -> f64 {
        (self.ln_n - (df as f64).ln_1p()).max(0.0)
    }

    /// `w_ui` of affinity `a` with item `i`, for a user of `idf`.
    #[inline]
    fn weight(&self, a: f32, i: u32, idf: f64) -> f32 {
        let a = a as f64;
        let denom = self.k1_norm[i as usize] + a;
        let w = if denom > 0.0 {
            a * (self.k1 + 1.0) / denom * idf
        } else {
            0.0
        };
        w as f32
    }
}

/// The BM25-weighted copy of `ui` (users x items, same sparsity structure), see the module doc.
pub fn bm25_weight(ui: &Csr, k1: f32, b: f32) -> Csr {
    bm25_with(ui, &Bm25::new(ui, k1, b))
}

fn bm25_with(ui: &Csr, bm: &Bm25) -> Csr {
    let mut data = Vec::with_capacity(ui.nnz());
    for u in 0..ui.n_rows {
        crate::util::interrupt::poll_every(u);
        let (items, vals) = ui.row(u);
        let idf = bm.idf(items.len());
        data.extend(items.iter().zip(vals).map(|(&i, &a)| bm.weight(a, i, idf)));
    }
    ui.with_data(data)
}

/// Trains the item-item neighbour matrix (items x items, row `j` = neighbours of `j` with their
/// similarity, columns increasing). `check` is called on the calling thread between blocks of items;
/// when it returns `Err` the workers are stopped and the error returned.
pub fn train_knn(
    ui: &Csr,
    p: &KnnParams,
    check: &mut dyn FnMut() -> Result<(), Interrupted>,
) -> Result<Csr, Interrupted> {
    train_knn_with(ui, None, p, check)
}

/// [`train_knn`] given `iu`, the transpose of `ui` (as ALS's, `model::als::transpose_checked`),
/// which it consumes: the items' rows of the weighted matrix are `iu`'s entries weighted in
/// place (the same weights, bit for bit) instead of a transpose of the weighted copy (a second
/// scatter of every entry, a seventh of the training). Panics when `iu`'s shape is not `ui`'s
/// transposed.
pub fn train_knn_with(
    ui: &Csr,
    iu: Option<Csr>,
    p: &KnnParams,
    check: &mut dyn FnMut() -> Result<(), Interrupted>,
) -> Result<Csr, Interrupted> {
    train_knn_walked(ui, iu, p, check).map(|(knn, _)| knn)
}

/// [`train_knn_with`], also returning the order in which the items' rows were computed (each
/// thread's walk after the other's): with one thread, [`walk_order`] of the neighbours.
pub fn train_knn_walked(
    ui: &Csr,
    iu: Option<Csr>,
    p: &KnnParams,
    check: &mut dyn FnMut() -> Result<(), Interrupted>,
) -> Result<(Csr, Vec<u32>), Interrupted> {
    check()?;
    let n_items = ui.n_cols;
    let threads = if p.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    } else {
        p.threads
    };
    let bm = Bm25::new(ui, p.k1, p.b);
    // The users' rows as (item, weight) pairs: an item row reads whole user rows at random
    // places, and one cache line then holds both an entry's item and its weight.
    let given = iu.inspect(|iu| {
        assert!(
            iu.n_rows == ui.n_cols && iu.n_cols == ui.n_rows && iu.nnz() == ui.nnz(),
            "the transpose of the matrix"
        );
    });
    let pairs = given.as_ref().and_then(|_| bm25_pairs(ui, &bm, threads));
    check()?;
    let (w, own_ptr, wt_pairs) = match (given, pairs) {
        // Every weight kept: the items' rows are `iu`'s, weighted in place.
        (Some(iu), Some(pairs)) => (bm25_in_place(iu, ui, &bm, threads), None, pairs),
        _ => {
            let wt = drop_tiny(bm25_with(ui, &bm)); // users x items
            let w = wt.transpose(); // items x users
            let Csr {
                indptr: wt_ptr,
                indices,
                data,
                ..
            } = wt;
            let mut wt_pairs: Vec<(u32, f32)> = crate::util::pages::with_capacity(indices.len());
            wt_pairs.extend(indices.iter().copied().zip(data.iter().copied()));
            (w, Some(wt_ptr), wt_pairs)
        }
    };
    let wt_ptr = own_ptr.as_ref().unwrap_or(&ui.indptr).as_slice();
    // `item_row` indexes its accumulator with these ids unchecked.
    assert!(
        wt_pairs.iter().all(|&(j, _)| (j as usize) < n_items),
        "an item id of the matrix beyond its columns"
    );
    check()?;
    let threads = threads.clamp(1, n_items.max(1));
    let ctx = Ctx {
        w: &w,
        wt_ptr,
        wt_pairs: &wt_pairs,
        n_items,
        neighbours: p.neighbours,
        taken: (0..n_items).map(|_| AtomicBool::new(false)).collect(),
        start: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    };
    let mut walks: Vec<Walked> = Vec::with_capacity(threads);
    let mine = std::thread::scope(|s| {
        let handles: Vec<_> = (1..threads).map(|_| s.spawn(|| walk(&ctx, None))).collect();
        let mine = walk(&ctx, Some(check));
        for h in handles {
            match h.join() {
                Ok(Ok(done)) => walks.push(done),
                Ok(Err(Interrupted)) => {}
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        mine
    })?;
    walks.push(mine);
    // Every item's row was computed once, by whichever walk took the item: put them in item order.
    let mut lens = vec![0usize; n_items];
    let mut computed = 0usize;
    for wk in &walks {
        for &(i, len) in &wk.rows {
            lens[i as usize] = len as usize;
        }
        computed += wk.rows.len();
    }
    assert_eq!(computed, n_items, "every item's row computed once");
    let mut indptr = Vec::with_capacity(n_items + 1);
    indptr.push(0usize);
    for &len in &lens {
        indptr.push(indptr.last().unwrap() + len);
    }
    drop(lens);
    let total = indptr[n_items];
    let mut indices = vec![0u32; total];
    let mut data = vec![0f32; total];
    let mut order = Vec::with_capacity(n_items);
    for wk in walks {
        let mut at = 0usize;
        for (i, len) in wk.rows {
            order.push(i);
            let (a, len) = (indptr[i as usize], len as usize);
            for (k, &(j, s)) in wk.entries[at..at + len].iter().enumerate() {
                indices[a + k] = j;
                data[a + k] = s;
            }
            at += len;
        }
    }
    let knn = Csr {
        n_rows: n_items,
        n_cols: n_items,
        indptr: indptr.into(),
        indices: indices.into(),
        data: data.into(),
    };
    Ok((knn, order))
}

/// Smallest weight kept for the similarity products: any product of two kept weights is a normal
/// positive `f32`, which the branch-free touched list in `item_row` relies on.
const MIN_WEIGHT: f32 = 1e-18;

/// Drops the entries with weight < `MIN_WEIGHT` (or NaN).
fn drop_tiny(m: Csr) -> Csr {
    if m.data.iter().all(|&w| w >= MIN_WEIGHT && w.is_finite()) {
        return m;
    }
    let mut indptr = Vec::with_capacity(m.n_rows + 1);
    indptr.push(0usize);
    let (mut indices, mut data) = (Vec::with_capacity(m.nnz()), Vec::with_capacity(m.nnz()));
    for r in 0..m.n_rows {
        let (cols, vals) = m.row(r);
        for (&c, &w) in cols.iter().zip(vals) {
            if w >= MIN_WEIGHT && w.is_finite() {
                indices.push(c);
                data.push(w);
            }
        }
        indptr.push(indices.len());
    }
    Csr {
        n_rows: m.n_rows,
        n_cols: m.n_cols,
        indptr: indptr.into(),
        indices: indices.into(),
        data: data.into(),
    }
}

/// The BM25 weights of `ui` as its rows' (item, weight) pairs, computed on `threads` threads
/// (row ranges of about equal entries; the same values as [`bm25_with`]); `None` when a weight
/// is below [`MIN_WEIGHT`] or not finite (the caller then drops those entries first).
fn bm25_pairs(ui: &Csr, bm: &Bm25, threads: usize) -> Option<Vec<(u32, f32)>> {
    let nnz = ui.nnz();
    let parts = if nnz < 1 << 16 {
        1
    } else {
        threads.clamp(1, 64)
    };
    let b = ui.row_parts(parts);
    let mut out: Vec<(u32, f32)> = crate::util::pages::with_capacity(nnz);
    let pieces = split_at_rows(&mut out.spare_capacity_mut()[..nnz], &ui.indptr, &b);
    let kept = crate::util::par::par_map(pieces, |(rows, piece)| {
        let mut kept = true;
        let mut dst = piece.iter_mut();
        for u in rows {
            let (items, vals) = ui.row(u);
            let idf = bm.idf(items.len());
            for ((&i, &a), d) in items.iter().zip(vals).zip(&mut dst) {
                let w = bm.weight(a, i, idf);
                kept &= w >= MIN_WEIGHT && w.is_finite();
                d.write((i, w));
            }
        }
        kept
    });
    // SAFETY: the pieces are consecutive, cover the first `nnz` slots, and each piece's rows have
    // exactly as many entries as the piece has slots, all written above.
    unsafe { out.set_len(nnz) };
    kept.into_iter().all(|k| k).then_some(out)
}

/// `iu` (the transpose of `ui`) with its values replaced by their BM25 weights, on `threads`
/// threads (the same values as the weighted copy's transpose).
fn bm25_in_place(iu: Csr, ui: &Csr, bm: &Bm25, threads: usize) -> Csr {
    let idf: Vec<f64> = (0..ui.n_rows)
        .map(|u| bm.idf(ui.indptr[u + 1] - ui.indptr[u]))
        .collect();
    let parts = if iu.nnz() < 1 << 16 {
        1
    } else {
        threads.clamp(1, 64)
    };
    let b = iu.row_parts(parts);
    let Csr {
        n_rows,
        n_cols,
        indptr,
        indices,
        data,
    } = iu;
    let mut data = data.into_vec();
    let pieces = split_at_rows(&mut data, &indptr, &b);
    crate::util::par::par_map(pieces, |(items, piece)| {
        let base = indptr[items.start];
        for i in items {
            let (a, z) = (indptr[i], indptr[i + 1]);
            for (v, &u) in piece[a - base..z - base].iter_mut().zip(&indices[a..z]) {
                *v = bm.weight(*v, i as u32, idf[u as usize]);
            }
        }
    });
    Csr {
        n_rows,
        n_cols,
        indptr,
        indices,
        data: data.into(),
    }
}

struct Ctx<'a> {
    w: &'a Csr,
    /// Row pointers and entries of the users' rows.
    wt_ptr: &'a [usize],
    wt_pairs: &'a [(u32, f32)],
    n_items: usize,
    neighbours: usize,
    /// The items a walk has taken (each item's row is computed by the one walk that took it).
    taken: Vec<AtomicBool>,
    /// Where a walk looks for an item to start from: no item below it is left.
    start: AtomicUsize,
    stop: AtomicBool,
}

/// The rows one walk computed, in its order: (item, row length), then all entries in that order.
struct Walked {
    rows: Vec<(u32, u32)>,
    entries: Vec<(u32, f32)>,
}

/// Takes the smallest item no walk has taken, if any.
fn take_start(ctx: &Ctx) -> Option<usize> {
    loop {
        let i = ctx.start.fetch_add(1, Ordering::Relaxed);
        if i >= ctx.n_items {
            return None;
        }
        if !ctx.taken[i].swap(true, Ordering::Relaxed) {
            return Some(i);
        }
    }
}

/// Takes the most similar neighbour in `row` (an item's kept neighbours) no walk has taken yet
/// (equal similarities: the smaller id), if any.
fn take_nearest(ctx: &Ctx, row: &[(u32, f32)]) -> Option<usize> {
    loop {
        let j = nearest_free(row.iter().copied(), |j| {
            !ctx.taken[j].load(Ordering::Relaxed)
        })?;
        // Another walk may have taken it since: then look again (it is taken now).
        if !ctx.taken[j].swap(true, Ordering::Relaxed) {
            return Some(j);
        }
    }
}

/// The most similar of a row's neighbours (`(item, similarity)`) that is `free` (equal
/// similarities: the smaller id): a walk's next item, in training ([`take_nearest`]) and in
/// [`walk_order`] alike.
fn nearest_free(
    row: impl Iterator<Item = (u32, f32)>,
    free: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut best: Option<(f32, u32)> = None;
    for (j, s) in row {
        if free(j as usize) && best.is_none_or(|(b, bj)| s > b || (s == b && j < bj)) {
            best = Some((s, j));
        }
    }
    best.map(|(_, j)| j as usize)
}

/// One thread's walk over the items: each item's row computed, then the row of its most similar
/// neighbour not taken yet (whose users are mostly the ones just read, still in the cache), and
/// when there is none, of the smallest item not taken. Ends when every item is taken.
fn walk(
    ctx: &Ctx,
    mut check: Option<&mut dyn FnMut() -> Result<(), Interrupted>>,
) -> Result<Walked, Interrupted> {
    let mut sc = Scratch {
        acc: vec![0f32; ctx.n_items],
        touched: vec![0u32; ctx.n_items + 1],
        heap: BinaryHeap::with_capacity(ctx.neighbours.min(ctx.n_items) + 1),
    };
    let mut cand: Vec<(u32, f32)> = Vec::new();
    let mut done = Walked {
        rows: Vec::new(),
        entries: Vec::new(),
    };
    let mut next = None;
    loop {
        // Per item: a popular item can take a good part of a second.
        if let Some(c) = check.as_mut() {
            if let Err(e) = c() {
                ctx.stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
        if ctx.stop.load(Ordering::Relaxed) {
            return Err(Interrupted);
        }
        let Some(i) = next.take().or_else(|| take_start(ctx)) else {
            return Ok(done);
        };
        item_row(ctx, i, &mut sc, &mut cand);
        done.rows.push((i as u32, cand.len() as u32));
        done.entries.extend_from_slice(&cand);
        next = take_nearest(ctx, &cand);
    }
}

/// A kept neighbour, ordered so that the *worse* candidate is greater (lower similarity, then
/// higher item id): a `BinaryHeap<Cand>` has the weakest kept neighbour on top.
#[derive(Clone, Copy, PartialEq)]
struct Cand(f32, u32);

impl Eq for Cand {}

impl PartialOrd for Cand {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}

impl Ord for Cand {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        // Similarities are finite and > 0 here, so partial_cmp never fails.
        other
            .0
            .partial_cmp(&self.0)
            .unwrap_or(CmpOrdering::Equal)
            .then(self.1.cmp(&other.1))
    }
}

const PF_FAR: usize = 16;
const PF_NEAR: usize = 8;
/// Pairs of a row asked for ahead, at most (16 cache lines).
const PF_ROW_PAIRS: usize = 128;

/// Per-thread scratch space.
struct Scratch {
    /// Dense accumulator over items, all zero between items.
    acc: Vec<f32>,
    /// Items with a non-zero accumulator; `touched[..n_touched]` is valid. Sized so that the
    /// branch-free append below never overflows (an item is appended at most once per item row).
    touched: Vec<u32>,
    heap: BinaryHeap<Cand>,
}

/// Computes item `i`'s kept neighbours into `out` (sorted by item id).
fn item_row(ctx: &Ctx, i: usize, sc: &mut Scratch, out: &mut Vec<(u32, f32)>) {
    out.clear();
    if ctx.neighbours == 0 {
        return;
    }
    let acc = &mut sc.acc[..];
    let touched = &mut sc.touched[..];
    let mut n_touched = 0usize;
    let (users, wi) = ctx.w.row(i);
    // The users' rows are scattered over the whole matrix, so the loop is bound by memory latency:
    // prefetch the row pointers PF_FAR users ahead and the rows themselves PF_NEAR users ahead.
    let (indptr, pairs) = (ctx.wt_ptr, ctx.wt_pairs);
    for (k, (&u, &wiu)) in users.iter().zip(wi).enumerate() {
        if let Some(&uf) = users.get(k + PF_FAR) {
            prefetch(indptr.as_ptr().wrapping_add(uf as usize));
        }
        if let Some(&un) = users.get(k + PF_NEAR) {
            let (a, b) = (indptr[un as usize], indptr[un as usize + 1]);
            // Every line of the row (up to PF_ROW_PAIRS pairs): the users met most often are the
            // heavy ones, whose rows span many lines, and asking for the first and last lines only
            // left the middle ones to memory latency (core bench, BENCH_ONLY_KNN=1: 3.95-4.06 s
            // -> 3.07-3.18 s; the same neighbours).
            let mut at = a;
            while at < b.min(a + PF_ROW_PAIRS) {
                prefetch(pairs.as_ptr().wrapping_add(at));
                at += 8;
            }
            // The row's last line too (a row of 8 pairs or more spans two lines or more).
            prefetch(pairs.as_ptr().wrapping_add(b.max(a + 1) - 1));
        }
        // Zero weights were dropped when building the matrices, so every product is > 0 unless
        // it underflows, and an accumulator is zero exactly until its first contribution.
        let row = &pairs[indptr[u as usize]..indptr[u as usize + 1]];
        for &(j, wuj) in row {
            // SAFETY: every item id of the users' rows is below `n_items`, the length of `acc`
            // (asserted once in `train_knn_with`); `touched` holds `n_items + 1` ids and
            // `n_touched` counts distinct items, at most `n_items` (an accumulator is zero only
            // before its first contribution: every product is a normal positive `f32`,
            // `MIN_WEIGHT`). Without the bounds checks: 6% less training (core bench).
            unsafe {
                let a = acc.get_unchecked_mut(j as usize);
                *touched.get_unchecked_mut(n_touched) = j;
                n_touched += (*a == 0.0) as usize;
                *a += wiu * wuj;
            }
        }
    }
    let n = ctx.neighbours;
    let heap = &mut sc.heap;
    heap.clear();
    // Once the heap is full, `floor` is its weakest similarity: a candidate below it is worse
    // than every kept one whatever its id, so most touched items (tens of thousands an item at
    // the 20M-event shop, against 100 kept) cost one well-predicted comparison instead of the
    // checks and the heap's (a NaN is not below it: the checks drop it). The same neighbours.
    let mut floor = f32::NEG_INFINITY;
    for &j in &touched[..n_touched] {
        let s = std::mem::replace(&mut acc[j as usize], 0.0);
        if s < floor {
            continue;
        }
        if j as usize == i || !(s > 0.0 && s.is_finite()) {
            continue;
        }
        let c = Cand(s, j);
        if heap.len() < n {
            heap.push(c);
            if heap.len() < n {
                continue;
            }
        } else if let Some(mut worst) = heap.peek_mut() {
            if c < *worst {
                *worst = c;
            } else {
                continue;
            }
        }
        floor = heap.peek().map_or(f32::NEG_INFINITY, |w| w.0);
    }
    out.extend(heap.drain().map(|c| (c.1, c.0)));
    out.sort_unstable_by_key(|c| c.0);
}

/// Bytes `train_knn` and the scorer's transpose allocate for `n_items` items over a matrix with
/// `nnz` entries (an estimate: the BM25-weighted copy, its transpose and, while the copy is turned
/// into (item, weight) pairs, the pairs; per-thread dense accumulators, and the neighbour lists
/// twice).
pub fn memory_estimate(n_users: usize, n_items: usize, nnz: usize, p: &KnnParams) -> usize {
    let threads = if p.threads == 0 { 2 } else { p.threads };
    nnz.saturating_mul(24)
        + (n_users + n_items + 2) * 16
        + threads * n_items * 8
        + n_items
            .saturating_mul(p.neighbours.min(n_items))
            .saturating_mul(16)
}

/// An order of the items in which each one follows, where it can, its most similar item not
/// yet placed (the neighbours `knn` holds; equal similarities to the smaller id): a greedy walk
/// from the first item, started again from the first item not yet placed whenever an item's
/// neighbours are all placed. A permutation of `0..knn.n_rows`; each item's row is read once.
/// Items next to each other in it share users, which is what ALS's item half-sweep wants
/// ([`crate::model::als::train_als_ordered`]: the users' vectors one item gathered are still in
/// the cache for the next).
pub fn walk_order(knn: &Csr) -> Vec<u32> {
    let n = knn.n_rows;
    let mut placed = vec![false; n];
    let mut order = Vec::with_capacity(n);
    let (mut first, mut next) = (0usize, None);
    while order.len() < n {
        let i = match next {
            Some(i) => i,
            None => {
                while placed[first] {
                    first += 1;
                }
                first
            }
        };
        placed[i] = true;
        order.push(i as u32);
        let (cols, sims) = knn.row(i);
        let row = cols.iter().copied().zip(sims.iter().copied());
        next = nearest_free(row, |j| j < n && !placed[j]);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The walk places every item once, follows the most similar unplaced neighbour, and keeps
    /// a group of items linked only among themselves together.
    #[test]
    fn walk_order_follows_the_nearest_unplaced_neighbour() {
        // Items 0, 2, 4 linked among themselves, 1, 3 among themselves, 5 alone.
        let mut t = vec![
            (0, 4, 0.9),
            (0, 2, 0.5),
            (2, 0, 0.5),
            (2, 4, 0.7),
            (4, 0, 0.9),
            (4, 2, 0.7),
            (1, 3, 0.4),
            (3, 1, 0.4),
        ];
        let knn = Csr::from_triplets(6, 6, &mut t);
        assert_eq!(walk_order(&knn), vec![0, 4, 2, 1, 3, 5]);
        // Ties go to the smaller id; an empty graph is the items' own order.
        let mut t = vec![(0, 3, 0.5), (0, 1, 0.5), (1, 2, 0.5)];
        assert_eq!(
            walk_order(&Csr::from_triplets(4, 4, &mut t)),
            vec![0, 1, 2, 3]
        );
        assert_eq!(
            walk_order(&Csr::from_triplets(3, 3, &mut [])),
            vec![0, 1, 2]
        );
        assert!(walk_order(&Csr::from_triplets(0, 0, &mut [])).is_empty());
    }

    fn ok() -> Result<(), Interrupted> {
        Ok(())
    }

    fn csr(n_rows: usize, n_cols: usize, t: &[(u32, u32, f32)]) -> Csr {
        Csr::from_triplets(n_rows, n_cols, &mut t.to_vec())
    }

    fn close(a: f32, b: f32) -> bool {
        (a - b).abs() <= 1e-5 * (1.0 + a.abs().max(b.abs()))
    }

    /// The defaults saturate repeated engagement (implicit's `BM25Recommender`): 50 purchases of
    /// an item weigh less than twice as much as 5, where `bm25_weight`'s K1 = 100 weighs them ~9x.
    #[test]
    fn default_bm25_saturates_repeats() {
        // Users 0 and 1 touch one item each of a 10-item catalogue: the same idf.
        let ui = csr(
            4,
            10,
            &[(0, 0, 50.0), (1, 0, 5.0), (2, 1, 27.5), (3, 1, 27.5)],
        );
        let p = KnnParams::default();
        assert_eq!((p.k1, p.b), (1.2, 0.75));
        let w = bm25_weight(&ui, p.k1, p.b);
        let ratio = w.row(0).1[0] / w.row(1).1[0];
        assert!(ratio > 1.0 && ratio < 2.0, "{ratio}");
        let w100 = bm25_weight(&ui, 100.0, 0.8);
        let ratio100 = w100.row(0).1[0] / w100.row(1).1[0];
        assert!(ratio100 > 6.0, "{ratio100}");
    }

    #[test]
    fn bm25_weights_match_hand_computation() {
        // 3 users x 4 items.
        let ui = csr(
            3,
            4,
            &[
                (0, 0, 1.0),
                (0, 1, 2.0),
                (1, 1, 1.0),
                (1, 2, 3.0),
                (2, 3, 4.0),
            ],
        );
        let (k1, b) = (100.0f64, 0.8f64);
        let w = bm25_weight(&ui, k1 as f32, b as f32);
        // item sums: [1, 3, 3, 4], mean 11/4; N = 4.
        let mean = 11.0 / 4.0;
        let sums = [1.0, 3.0, 3.0, 4.0];
        let idf = |df: f64| (4f64.ln() - (1.0 + df).ln()).max(0.0);
        let want = |a: f64, i: usize, df: f64| {
            let ln = (1.0 - b) + b * sums[i] / mean;
            (a * (k1 + 1.0) / (k1 * ln + a) * idf(df)) as f32
        };
        let expect = [
            want(1.0, 0, 2.0),
            want(2.0, 1, 2.0),
            want(1.0, 1, 2.0),
            want(3.0, 2, 2.0),
            want(4.0, 3, 1.0),
        ];
        assert_eq!(w.indices, ui.indices);
        for (g, e) in w.data.iter().zip(expect) {
            assert!(close(*g, e), "{g} vs {e}");
        }
        assert!(w.data.iter().all(|&x| x > 0.0));
    }

    #[test]
    fn similarities_are_bm25_dot_products_without_self() {
        let ui = csr(
            4,
            4,
            &[
                (0, 0, 1.0),
                (0, 1, 2.0),
                (1, 0, 1.0),
                (1, 1, 1.0),
                (1, 2, 3.0),
                (2, 2, 1.0),
                (2, 3, 1.0),
                (3, 3, 2.0),
            ],
        );
        let p = KnnParams {
            neighbours: 10,
            threads: 1,
            ..Default::default()
        };
        let s = train_knn(&ui, &p, &mut ok).unwrap();
        let w = bm25_weight(&ui, p.k1, p.b).transpose(); // items x users
        let dense = |m: &Csr, r: usize| {
            let mut v = vec![0f32; m.n_cols];
            let (c, d) = m.row(r);
            for (&c, &d) in c.iter().zip(d) {
                v[c as usize] = d;
            }
            v
        };
        assert_eq!((s.n_rows, s.n_cols), (4, 4));
        for i in 0..4 {
            let (cols, vals) = s.row(i);
            assert!(!cols.contains(&(i as u32)), "self excluded");
            assert!(cols.windows(2).all(|w| w[0] < w[1]));
            let wi = dense(&w, i);
            for j in 0..4 {
                if j == i {
                    continue;
                }
                let wj = dense(&w, j);
                let dot: f32 = wi.iter().zip(&wj).map(|(a, b)| a * b).sum();
                match cols.iter().position(|&c| c as usize == j) {
                    Some(pos) => {
                        assert!(close(vals[pos], dot), "S({i},{j}) {} vs {dot}", vals[pos])
                    }
                    None => assert_eq!(dot, 0.0, "missing S({i},{j})"),
                }
            }
        }
        // Items 0 and 3 share no user.
        assert!(!s.row(0).0.contains(&3));
    }

    #[test]
    fn neighbour_cap_keeps_most_similar_and_breaks_ties_by_id() {
        // Item 0 co-occurs with items 1..=4 via identical single users (equal similarity), and with
        // item 5 through two users (higher similarity).
        let mut t = vec![];
        for j in 1..=4u32 {
            t.push((j - 1, 0, 1.0));
            t.push((j - 1, j, 1.0));
        }
        t.extend([(4, 0, 1.0), (4, 5, 1.0), (5, 0, 1.0), (5, 5, 1.0)]);
        // Padding items/users so idf stays positive.
        for u in 6..12u32 {
            t.push((u, 6 + (u - 6), 1.0));
        }
        let ui = csr(12, 12, &t);
        let p = KnnParams {
            neighbours: 3,
            threads: 1,
            ..Default::default()
        };
        let s = train_knn(&ui, &p, &mut ok).unwrap();
        assert_eq!(s.row(0).0, &[1u32, 2, 5][..]);
        let p0 = KnnParams { neighbours: 0, ..p };
        assert_eq!(train_knn(&ui, &p0, &mut ok).unwrap().nnz(), 0);
    }

    /// Deterministic xorshift generator for tests.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn planted(n_users: usize, groups: usize, per_group: usize, seed: u64) -> Csr {
        let mut rng = Rng(seed);
        let n_items = groups * per_group;
        let mut t = vec![];
        for u in 0..n_users {
            let g = u % groups;
            let len = 3 + rng.below(6) as usize;
            for _ in 0..len {
                let item = if rng.below(10) < 9 {
                    g * per_group + rng.below(per_group as u64) as usize
                } else {
                    rng.below(n_items as u64) as usize
                };
                t.push((u as u32, item as u32, 1.0 + rng.below(3) as f32));
            }
        }
        Csr::from_triplets(n_users, n_items, &mut t)
    }

    /// Every item's kept neighbours are the first `neighbours` of all its similarities sorted by
    /// (similarity descending, id ascending), the similarities summed in the users' order: the
    /// floor that skips most candidates skips none that belongs. Weights of 1 on rows of equal
    /// length make many ties.
    #[test]
    fn kept_neighbours_equal_a_full_sort_of_every_similarity() {
        let mut rng = Rng(11);
        let mut tied = vec![];
        for u in 0..300u32 {
            let a = rng.below(40) as u32;
            tied.push((u, a, 1.0));
            tied.push((u, (a + 1 + rng.below(5) as u32) % 40, 1.0));
        }
        for ui in [
            planted(400, 4, 15, 5),
            Csr::from_triplets(300, 40, &mut tied),
        ] {
            let w = bm25_weight(&ui, 1.2, 0.75);
            let n_items = ui.n_cols;
            for neighbours in [1, 3, 7, n_items] {
                let p = KnnParams {
                    neighbours,
                    threads: 2,
                    ..Default::default()
                };
                let got = train_knn(&ui, &p, &mut ok).unwrap();
                for i in 0..n_items {
                    let mut sims = vec![0f32; n_items];
                    for u in 0..w.n_rows {
                        let (cols, vals) = w.row(u);
                        if let Some(k) = cols.iter().position(|&c| c as usize == i) {
                            for (&j, &wj) in cols.iter().zip(vals) {
                                sims[j as usize] += vals[k] * wj;
                            }
                        }
                    }
                    let mut want: Vec<(u32, f32)> = (0..n_items as u32)
                        .filter(|&j| j as usize != i && sims[j as usize] > 0.0)
                        .map(|j| (j, sims[j as usize]))
                        .collect();
                    want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
                    want.truncate(neighbours);
                    want.sort_by_key(|c| c.0);
                    let (cols, vals) = got.row(i);
                    let have: Vec<(u32, f32)> =
                        cols.iter().copied().zip(vals.iter().copied()).collect();
                    assert_eq!(have, want, "item {i}, {neighbours} neighbours");
                }
            }
        }
    }

    #[test]
    fn planted_groups_are_neighbours_and_threads_do_not_change_result() {
        let (groups, per_group) = (4, 25);
        let ui = planted(2000, groups, per_group, 42);
        let p1 = KnnParams {
            neighbours: 10,
            threads: 1,
            ..Default::default()
        };
        let s1 = train_knn(&ui, &p1, &mut ok).unwrap();
        let (mut same, mut all) = (0, 0);
        for i in 0..groups * per_group {
            let (cols, _) = s1.row(i);
            assert_eq!(cols.len(), 10);
            for &j in cols {
                all += 1;
                if j as usize / per_group == i / per_group {
                    same += 1;
                }
            }
        }
        assert!(
            same as f64 >= 0.95 * all as f64,
            "{same}/{all} neighbours in the same group"
        );
        let p3 = KnnParams { threads: 3, ..p1 };
        assert_eq!(train_knn(&ui, &p3, &mut ok).unwrap(), s1);
    }

    /// Given the matrix's transpose (a build passes ALS's), the same neighbours bit for bit; and
    /// with a weight too small to keep (a user who touched every item has idf 0), too.
    #[test]
    fn given_the_transpose_the_same_neighbours() {
        let p = KnnParams {
            neighbours: 10,
            threads: 2,
            ..Default::default()
        };
        let ui = planted(2000, 4, 25, 42);
        let iu = ui.transpose();
        let given = train_knn_with(&ui, Some(iu), &p, &mut ok).unwrap();
        assert_eq!(given, train_knn(&ui, &p, &mut ok).unwrap());
        assert!(given.nnz() > 0);
        let mut t: Vec<(u32, u32, f32)> = (0..100).map(|i| (0, i, 1.0 + i as f32)).collect();
        for u in 1..300u32 {
            for k in 0..5u32 {
                t.push((u, (u * 7 + k * 13) % 100, 1.0 + k as f32));
            }
        }
        let ui = csr(300, 100, &t);
        assert!(bm25_weight(&ui, 1.2, 0.75)
            .data
            .iter()
            .any(|&w| w < MIN_WEIGHT));
        let given = train_knn_with(&ui, Some(ui.transpose()), &p, &mut ok).unwrap();
        assert_eq!(given, train_knn(&ui, &p, &mut ok).unwrap());
        assert!(given.nnz() > 0);
        // Enough entries that the weights are computed on several threads (row ranges of about
        // equal entries): the same neighbours as one thread without the transpose.
        let ui = planted(30_000, 8, 40, 9);
        assert!(ui.nnz() > 1 << 17);
        let one = train_knn(&ui, &KnnParams { threads: 1, ..p }, &mut ok).unwrap();
        for threads in [2, 3] {
            let p = KnnParams { threads, ..p };
            let given = train_knn_with(&ui, Some(ui.transpose()), &p, &mut ok).unwrap();
            assert_eq!(given, one, "{threads} threads");
        }
    }

    /// The rows are computed in a walk: one thread's is `walk_order` of the neighbours it found;
    /// with more threads every item is taken once and the neighbours are the same.
    #[test]
    fn training_walks_from_each_row_to_its_nearest_neighbour_not_taken() {
        let ui = planted(400, 6, 25, 11);
        let p = KnnParams {
            neighbours: 8,
            threads: 1,
            ..Default::default()
        };
        let (one, order) = train_knn_walked(&ui, None, &p, &mut ok).unwrap();
        assert_eq!(order, walk_order(&one));
        // Not the items' own order: within a planted group (a range of ids) the walk follows
        // the similarities, not the ids.
        assert_ne!(order, (0..ui.n_cols as u32).collect::<Vec<_>>());
        for threads in [2, 3] {
            let p = KnnParams { threads, ..p };
            let (knn, mut order) = train_knn_walked(&ui, None, &p, &mut ok).unwrap();
            assert_eq!(knn, one, "{threads} threads");
            order.sort_unstable();
            assert_eq!(order, (0..ui.n_cols as u32).collect::<Vec<_>>());
        }
    }

    #[test]
    fn interruption_stops_training_and_check_runs_before_each_item() {
        let ui = planted(500, 10, 30, 7); // 300 items
        let mut calls = 0;
        let mut check = || {
            calls += 1;
            Ok(())
        };
        let p = KnnParams {
            neighbours: 5,
            threads: 1,
            ..Default::default()
        };
        let full = train_knn(&ui, &p, &mut check).unwrap();
        // 3 calls before the walks, one before each item (1 thread: the caller does them all) and
        // one before finding no item left.
        assert_eq!(calls, 3 + 300 + 1);
        // Fail at the 81st item (1 thread) / before the caller's first item (2 threads); no check
        // runs after the failing one.
        for (threads, fail_after) in [(1, 3 + 80), (2, 3)] {
            let mut n = 0;
            let mut fail = || {
                n += 1;
                if n > fail_after {
                    Err(Interrupted)
                } else {
                    Ok(())
                }
            };
            let p2 = KnnParams { threads, ..p };
            assert_eq!(train_knn(&ui, &p2, &mut fail), Err(Interrupted));
            assert_eq!(n, fail_after + 1, "no check after the interrupt");
        }
        assert_eq!(
            train_knn(&ui, &KnnParams { threads: 2, ..p }, &mut ok).unwrap(),
            full
        );
        let empty = Csr::from_triplets(3, 0, &mut []);
        let s = train_knn(&empty, &p, &mut ok).unwrap();
        assert_eq!((s.n_rows, s.nnz(), s.indptr.len()), (0, 0, 1));
    }
}
