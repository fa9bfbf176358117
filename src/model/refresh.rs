//! The incremental build's core: a model's affinity grown by the events since its build, as a
//! full build over every event would have made it. Pure Rust.
//!
//! A pair's affinity is `sum_k w_k * 2^(-(reference - t_k) / half_life)`. Moving the reference
//! from `r` to a later `r'` multiplies every term by the same `2^(-(r' - r) / half_life)` when
//! all events share one half-life, so the previous model's affinities rescaled by that factor
//! plus the new events' affinities decayed to `r'` are the full build's affinities (up to f32
//! rounding). With several half-lives the factor differs per term and the stored sums cannot be
//! split: one factor between them is used, within the bound [`rescale`] states. Engagement days are per-day sums that do not
//! decay: the union of both day lists, as [`crate::model::fresh::merge`] does. Latest times are
//! the later of both. Users and items new since the build are inserted in their sorted places
//! (every model keeps its ids sorted), so the previous model's rows and columns move: the maps
//! returned say where.
use crate::affinity::accumulator::{Affinity, MINUTE_US};
use crate::model::csr::Csr;
use crate::model::days::DayIndex;
use crate::model::fresh::Base;
use crate::util::buf::StrList;

/// The grown affinity and where the previous model's users and items went.
pub struct Grown {
    pub users: Vec<String>,
    pub items: Vec<String>,
    pub ui: Csr,
    pub last_seen: Vec<i32>,
    pub days: DayIndex,
    /// Per user of the grown model, its row in the previous model (`None`: new).
    pub user_from: Vec<Option<u32>>,
    /// Per item of the grown model, its column in the previous model (`None`: new).
    pub item_from: Vec<Option<u32>>,
    /// The rows of the users with new events (rows that changed, new users among them), in order.
    pub touched: Vec<usize>,
    /// Pairs dropped because their affinity was not positive.
    pub dropped_pairs: usize,
}

impl Grown {
    pub fn new_users(&self) -> usize {
        self.user_from.iter().filter(|u| u.is_none()).count()
    }

    pub fn new_items(&self) -> usize {
        self.item_from.iter().filter(|i| i.is_none()).count()
    }
}

/// The sorted union of two sorted, duplicate-free lists; per element of the union, its index
/// in `a`, and per element of `b`, its index in the union.
fn union(a: &StrList, b: &[String]) -> (Vec<String>, Vec<Option<u32>>, Vec<u32>) {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let mut from_a = Vec::with_capacity(a.len() + b.len());
    let mut b_to = Vec::with_capacity(b.len());
    let (mut i, mut j) = (0usize, 0usize);
    while i < a.len() || j < b.len() {
        let take_a = j >= b.len() || (i < a.len() && a.get(i) <= b[j].as_str());
        let take_b = i >= a.len() || (j < b.len() && b[j].as_str() <= a.get(i));
        if take_b {
            b_to.push(out.len() as u32);
        }
        if take_a {
            from_a.push(Some(i as u32));
            out.push(a.get(i).to_string());
            i += 1;
        } else {
            from_a.push(None);
            out.push(b[j].clone());
        }
        if take_b {
            j += 1;
        }
    }
    (out, from_a, b_to)
}

/// One new-event entry of a row being merged: item (output numbering), affinity, latest
/// minute, and its days in [`RowMerge::buf`].
struct Pending {
    item: u32,
    a: f32,
    last: i32,
    days: std::ops::Range<usize>,
}

/// The stored rows a merge reads a user's previous pairs from.
#[derive(Clone, Copy)]
pub(crate) struct Rows<'a> {
    pub ui: &'a Csr,
    /// Per stored pair: latest event time, minutes since 2000-01-01.
    pub last_seen: &'a [i32],
    pub days: &'a DayIndex,
}

/// The arrays of a merged affinity, written row by row.
#[derive(Default)]
pub(crate) struct Out {
    indptr: Vec<usize>,
    indices: Vec<u32>,
    data: Vec<f32>,
    last_seen: Vec<i32>,
    dptr: Vec<u32>,
    dday: Vec<u16>,
    dweight: Vec<f32>,
    dropped: usize,
}

impl Out {
    pub(crate) fn with_capacity(rows: usize, pairs: usize, records: usize) -> Out {
        let mut out = Out {
            indptr: Vec::with_capacity(rows + 1),
            indices: Vec::with_capacity(pairs),
            data: Vec::with_capacity(pairs),
            last_seen: Vec::with_capacity(pairs),
            dptr: Vec::with_capacity(pairs + 1),
            dday: Vec::with_capacity(records),
            dweight: Vec::with_capacity(records),
            dropped: 0,
        };
        out.indptr.push(0);
        out.dptr.push(0);
        out
    }

    /// Appends a pair to the current row, or drops it when its affinity is not positive (as a
    /// build does).
    #[inline]
    fn push(&mut self, item: u32, a: f32, last: i32, days: impl Iterator<Item = (u16, f32)>) {
        if a.is_nan() || a <= 0.0 {
            self.dropped += 1;
            return;
        }
        self.indices.push(item);
        self.data.push(a);
        self.last_seen.push(last);
        for (d, w) in days {
            self.dday.push(d);
            self.dweight.push(w);
        }
        self.dptr.push(self.dday.len() as u32);
    }

    /// The matrix (`n_cols` columns), latest times and days (from `day0`) written, and the
    /// pairs dropped.
    pub(crate) fn finish(self, n_cols: usize, day0: i32) -> (Csr, Vec<i32>, DayIndex, usize) {
        let ui = Csr {
            n_rows: self.indptr.len() - 1,
            n_cols,
            indptr: self.indptr.into(),
            indices: self.indices.into(),
            data: self.data.into(),
        };
        let days = DayIndex {
            day0,
            ptr: self.dptr.into(),
            day: self.dday.into(),
            weight: self.dweight.into(),
        };
        (ui, self.last_seen, days, self.dropped)
    }
}

/// One user's row being merged: its new events' entries, then the union with its previous pairs.
#[derive(Default)]
pub(crate) struct RowMerge {
    row: Vec<Pending>,
    buf: Vec<(u16, f32)>,
}

impl RowMerge {
    /// Reads the pairs of delta user `du` (items through `item_of`; pairs of items it maps to
    /// `None` are skipped and counted), days as offsets from `day0`. Returns the skipped count.
    pub(crate) fn read(
        &mut self,
        delta: &Affinity,
        du: usize,
        day0: i32,
        item_of: impl Fn(u32) -> Option<u32>,
    ) -> usize {
        let offset = |minute: i32| -> u16 {
            (minute.div_euclid(1440) - day0).clamp(0, u16::MAX as i32) as u16
        };
        let (dm, occ) = (&delta.matrix, &delta.occasions);
        self.clear();
        let mut skipped = 0usize;
        for p in dm.indptr[du]..dm.indptr[du + 1] {
            let Some(item) = item_of(dm.indices[p]) else {
                skipped += 1;
                continue;
            };
            let start = self.buf.len();
            for r in occ.range(p) {
                let d = offset(occ.minute[r]);
                let v = if occ.value[r].is_finite() {
                    occ.value[r]
                } else {
                    0.0
                };
                match self.buf[start..].last_mut() {
                    Some(last) if last.0 == d => last.1 += v,
                    _ => self.buf.push((d, v)),
                }
            }
            let last = delta.last_seen[p]
                .div_euclid(MINUTE_US)
                .clamp(i32::MIN as i64, i32::MAX as i64) as i32;
            self.row.push(Pending {
                item,
                a: dm.data[p],
                last,
                days: start..self.buf.len(),
            });
        }
        skipped
    }

    /// Forgets the entries read (the next row has no new events).
    pub(crate) fn clear(&mut self) {
        self.row.clear();
        self.buf.clear();
    }

    /// No entries read (or none read yet).
    pub(crate) fn is_empty(&self) -> bool {
        self.row.is_empty()
    }

    /// Writes one row to `out`: the union of previous row `u` of `prev` (items through
    /// `prev_item`, which keeps their order; affinities times `scale`), if any, and the entries
    /// read. Affinities of an item in both add, latest times take the later, days unite.
    pub(crate) fn write(
        &self,
        out: &mut Out,
        prev: Option<(Rows, usize)>,
        prev_item: impl Fn(u32) -> u32,
        scale: f32,
    ) {
        let (row, buf) = (&self.row, &self.buf);
        let mut j = 0usize;
        if let Some((r, u)) = prev {
            for p in r.ui.indptr[u]..r.ui.indptr[u + 1] {
                let item = prev_item(r.ui.indices[p]);
                while j < row.len() && row[j].item < item {
                    let n = &row[j];
                    out.push(n.item, n.a, n.last, buf[n.days.clone()].iter().copied());
                    j += 1;
                }
                let (ds, ws) = r.days.of(p);
                let old = ds.iter().copied().zip(ws.iter().copied());
                let a = r.ui.data[p] * scale;
                if j < row.len() && row[j].item == item {
                    let n = &row[j];
                    out.push(
                        item,
                        a + n.a,
                        r.last_seen[p].max(n.last),
                        union_days(old, buf[n.days.clone()].iter().copied()),
                    );
                    j += 1;
                } else {
                    out.push(item, a, r.last_seen[p], old);
                }
            }
        }
        for n in &row[j..] {
            out.push(n.item, n.a, n.last, buf[n.days.clone()].iter().copied());
        }
        out.indptr.push(out.indices.len());
    }
}

/// The union of two ascending day lists, weights of a day in both summed.
pub(crate) fn union_days(
    a: impl Iterator<Item = (u16, f32)>,
    b: impl Iterator<Item = (u16, f32)>,
) -> impl Iterator<Item = (u16, f32)> {
    let (mut a, mut b) = (a.peekable(), b.peekable());
    std::iter::from_fn(move || match (a.peek().copied(), b.peek().copied()) {
        (Some(x), Some(y)) if x.0 == y.0 => {
            a.next();
            b.next();
            Some((x.0, x.1 + y.1))
        }
        (Some(x), Some(y)) if x.0 < y.0 => a.next(),
        (Some(_), Some(_)) => b.next(),
        (Some(_), None) => a.next(),
        (None, _) => b.next(),
    })
}

/// Grows `prev` by `delta` (the new events, decayed to the new reference time): the previous
/// affinities are multiplied by `scale` (the decay from the previous reference time to the new
/// one) and the new ones added. Delta user `skip` is left out (a user the deploy guard's rule
/// excludes). `check` runs every few thousand users.
pub fn grow(
    prev: &Base,
    delta: &Affinity,
    scale: f32,
    skip: Option<usize>,
    check: &mut dyn FnMut() -> Result<(), crate::util::interrupt::Interrupted>,
) -> Result<Grown, crate::util::interrupt::Interrupted> {
    let day0 = prev.days.day0;
    // Only the delta's users and items that bring a pair (the skipped user brings none).
    let delta_users: Vec<String> = delta
        .users
        .iter()
        .enumerate()
        .filter(|&(u, _)| Some(u) != skip && delta.matrix.indptr[u + 1] > delta.matrix.indptr[u])
        .map(|(_, n)| n.clone())
        .collect();
    let mut item_used = vec![false; delta.items.len()];
    for (u, _) in delta.users.iter().enumerate() {
        if Some(u) == skip {
            continue;
        }
        for &i in delta.matrix.row(u).0 {
            item_used[i as usize] = true;
        }
    }
    let delta_items: Vec<String> = delta
        .items
        .iter()
        .zip(&item_used)
        .filter(|(_, &used)| used)
        .map(|(n, _)| n.clone())
        .collect();
    let (items, item_from, kept_to) = union(prev.items, &delta_items);
    // Delta item -> grown item.
    let mut d_item = vec![u32::MAX; delta.items.len()];
    let mut k = 0usize;
    for (i, &used) in item_used.iter().enumerate() {
        if used {
            d_item[i] = kept_to[k];
            k += 1;
        }
    }
    // Previous item -> grown item (monotonic, so rows stay sorted).
    let mut p_item = vec![0u32; prev.items.len()];
    for (g, f) in item_from.iter().enumerate() {
        if let Some(f) = f {
            p_item[*f as usize] = g as u32;
        }
    }
    let (users, user_from, _) = union(prev.users, &delta_users);
    let dm = &delta.matrix;
    let mut out = Out::with_capacity(
        users.len(),
        prev.ui.nnz() + dm.nnz(),
        prev.days.day.len() + delta.occasions.minute.len(),
    );
    let rows = prev.rows();
    let mut rm = RowMerge::default();
    let mut touched = Vec::new();
    let mut du = 0usize;
    for (g, name) in users.iter().enumerate() {
        if g % 4096 == 0 {
            check()?;
        }
        // The delta row of this user, if any (delta users are sorted too).
        while du < delta.users.len()
            && (Some(du) == skip || dm.indptr[du + 1] == dm.indptr[du] || delta.users[du] < *name)
        {
            du += 1;
        }
        if du < delta.users.len() && delta.users[du] == *name {
            touched.push(g);
            rm.read(delta, du, day0, |i| Some(d_item[i as usize]));
        } else {
            rm.clear();
        }
        rm.write(
            &mut out,
            user_from[g].map(|u| (rows, u as usize)),
            |i| p_item[i as usize],
            scale,
        );
    }
    let (ui, last_seen, days, dropped) = out.finish(items.len(), day0);
    Ok(Grown {
        ui,
        users,
        items,
        last_seen,
        days,
        user_from,
        item_from,
        touched,
        dropped_pairs: dropped,
    })
}

/// The factor that moves the previous affinities to a reference time `dt_us` later, for sources
/// decaying with `half_lives` (microseconds; `None`: no decay), and the largest relative error of
/// that factor for any pair. With one half-life it is exact (error 0). With several, a pair's
/// affinity mixes terms whose exact factors `2^(-dt / h)` differ: the factor used is their
/// geometric middle `2^(-dt (1/h_min + 1/h_max) / 2)`, within `2^(dt (1/h_min - 1/h_max) / 2) - 1`
/// of each (about 2% a day for half-lives of 14 and 60 days). Factors of successive steps
/// multiply like those of one step over their sum, so the bound over several incremental builds
/// is that of one step since the last full build.
pub fn rescale(half_lives: &[Option<i64>], dt_us: i64) -> (f32, f64) {
    let rates: Vec<f64> = half_lives
        .iter()
        .map(|h| h.filter(|&h| h > 0).map_or(0.0, |h| 1.0 / h as f64))
        .collect();
    let (Some(lo), Some(hi)) = (
        rates.iter().copied().reduce(f64::min),
        rates.iter().copied().reduce(f64::max),
    ) else {
        return (1.0, 0.0);
    };
    let dt = dt_us.max(0) as f64;
    let factor = (-dt * (lo + hi) / 2.0).exp2();
    let bound = (dt * (hi - lo) / 2.0).exp2() - 1.0;
    (factor as f32, bound)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::affinity::accumulator::Accumulator;
    use crate::model::fresh::tests::{base_of, DAY};

    /// (user, item, weight, time) rows through the build's aggregate with one half-life,
    /// decayed to the latest event.
    fn build(rows: &[(&str, &str, f64, i64)], hl: Option<i64>) -> Affinity {
        let mut acc = Accumulator::new(0);
        for &(u, i, w, t) in rows {
            acc.push(u, i, w, t, hl, None);
        }
        acc.finish().without_empty()
    }

    fn grown_of(
        old: &[(&str, &str, f64, i64)],
        new: &[(&str, &str, f64, i64)],
        hl: Option<i64>,
    ) -> (Grown, Affinity) {
        let prev = build(old, hl);
        let delta = build(new, hl);
        let scale = match hl {
            Some(h) => (-((delta.reference_us.max(prev.reference_us) - prev.reference_us) as f64)
                / h as f64)
                .exp2() as f32,
            None => 1.0,
        };
        let g = grow_from(&prev, &delta, scale, None, &mut || Ok(())).unwrap();
        (g, prev)
    }

    /// [`grow`] of a model made of `prev`.
    fn grow_from(
        prev: &Affinity,
        delta: &Affinity,
        scale: f32,
        skip: Option<usize>,
        check: &mut dyn FnMut() -> Result<(), crate::util::interrupt::Interrupted>,
    ) -> Result<Grown, crate::util::interrupt::Interrupted> {
        let (users, items, last, days) = base_of(prev);
        grow(
            &Base {
                users: &users,
                items: &items,
                ui: &prev.matrix,
                last_seen: &last,
                days: &days,
            },
            delta,
            scale,
            skip,
            check,
        )
    }

    const OLD: [(&str, &str, f64, i64); 5] = [
        ("bob", "i2", 1.0, DAY),
        ("bob", "i3", 2.0, 3 * DAY),
        ("dave", "i2", 1.0, 2 * DAY),
        ("dave", "i4", 1.0, 2 * DAY + 7),
        ("erin", "i3", 1.0, 4 * DAY),
    ];
    const NEW: [(&str, &str, f64, i64); 7] = [
        ("bob", "i3", 1.0, 5 * DAY + 10),
        ("bob", "i3", 1.0, 5 * DAY + 20),
        ("bob", "i1", 4.0, 6 * DAY),
        ("dave", "i5", 3.0, 4 * DAY + 5),
        ("alice", "i2", 1.0, 6 * DAY),
        ("carl", "i0", 1.0, 8 * DAY),
        ("dave", "i2", 2.0, 4 * DAY + 1),
    ];

    #[test]
    fn grown_affinity_equals_a_build_over_every_event() {
        for hl in [None, Some(2 * DAY), Some(DAY / 3)] {
            let (g, prev) = grown_of(&OLD, &NEW, hl);
            let all: Vec<_> = OLD.iter().chain(&NEW).copied().collect();
            let want = build(&all, hl);
            let (_, _, wlast, wdays) = base_of(&want);
            assert_eq!(g.users, want.users, "{hl:?}: users");
            assert_eq!(g.items, want.items, "{hl:?}: items");
            assert_eq!(g.ui.indptr, want.matrix.indptr, "{hl:?}: rows");
            assert_eq!(g.ui.indices, want.matrix.indices, "{hl:?}: columns");
            for (a, b) in g.ui.data.iter().zip(want.matrix.data.iter()) {
                assert!((a - b).abs() <= 1e-6 * b.abs(), "{hl:?}: {a} vs {b}");
            }
            assert_eq!(g.last_seen, wlast, "{hl:?}: latest times");
            assert_eq!(g.days.day0, wdays.day0);
            for p in 0..g.ui.nnz() {
                assert_eq!(g.days.of(p), wdays.of(p), "{hl:?}: days of pair {p}");
            }
            assert!(g.days.is_valid_for(g.ui.nnz()));
            // alice, carl new; bob, dave touched; erin kept; i0, i1, i5 new.
            assert_eq!(g.touched, vec![0, 1, 2, 3]);
            assert_eq!(g.new_users(), 2);
            assert_eq!(g.new_items(), 3);
            assert_eq!(
                g.user_from,
                vec![None, Some(0), None, Some(1), Some(2)],
                "alice bob carl dave erin"
            );
            assert_eq!(
                g.item_from,
                vec![None, None, Some(0), Some(1), Some(2), None]
            );
            assert_eq!(g.dropped_pairs, 0);
            assert_eq!(prev.users.len(), 3);
        }
    }

    #[test]
    fn rescaling_is_exact_for_one_half_life_and_bounded_for_several() {
        let (f, e) = rescale(&[Some(2 * DAY)], DAY);
        assert!((f as f64 - 0.5f64.sqrt()).abs() < 1e-7 && e == 0.0);
        assert_eq!(rescale(&[], DAY), (1.0, 0.0));
        assert_eq!(rescale(&[None], 5 * DAY), (1.0, 0.0));
        let hls = [Some(14 * DAY), Some(30 * DAY), Some(60 * DAY), None];
        for days in [1, 7, 30] {
            let (f, e) = rescale(&hls, days * DAY);
            for h in hls {
                let exact = h.map_or(1.0, |h| (-(days as f64) / (h / DAY) as f64).exp2());
                let err = (exact / f as f64 - 1.0)
                    .abs()
                    .max((f as f64 / exact - 1.0).abs());
                assert!(err <= e + 1e-6, "{days} days, {h:?}: {err} > {e}");
            }
        }
        // 14 and 60 days: about 2% a day.
        let (_, e) = rescale(&[Some(14 * DAY), Some(60 * DAY)], DAY);
        assert!((0.018..0.02).contains(&e), "{e}");
    }

    #[test]
    fn nothing_new_keeps_the_model() {
        let (g, prev) = grown_of(&OLD, &[], Some(DAY));
        assert_eq!(g.users, prev.users);
        assert_eq!(g.ui, prev.matrix);
        assert!(g.touched.is_empty());
        assert_eq!((g.new_users(), g.new_items()), (0, 0));
    }

    #[test]
    fn a_skipped_user_and_its_only_items_are_left_out() {
        let prev = build(&OLD, None);
        let delta = build(&NEW, None);
        let carl = delta.users.iter().position(|u| u == "carl").unwrap();
        let g = grow_from(&prev, &delta, 1.0, Some(carl), &mut || Ok(())).unwrap();
        assert!(!g.users.iter().any(|u| u == "carl"));
        assert!(
            !g.items.iter().any(|i| i == "i0"),
            "only carl engaged with i0"
        );
        assert_eq!(g.ui.n_cols, g.items.len());
        assert!(g.days.is_valid_for(g.ui.nnz()));
    }

    #[test]
    fn an_interrupt_stops_the_merge() {
        let prev = build(&OLD, None);
        let r = grow_from(&prev, &build(&NEW, None), 1.0, None, &mut || {
            Err(crate::util::interrupt::Interrupted)
        });
        assert!(r.is_err());
    }
}
