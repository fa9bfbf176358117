//! The user's own engagement with a value, measured per user from the engagement days of the
//! pairs of its items ([`Own`]): decayed affinity, decayed weight, distinct days (decayed or
//! not) and recency. Each alone is one of the SQL baselines of `audience.evaluate`; the scorer
//! ([`crate::score::hybrid`]) combines one of them with the collaborative estimate. Pure Rust.
use crate::model::csr::Csr;
use crate::model::days::DayIndex;
use crate::score::hybrid::{OwnPart, Scorer};
use crate::util::buf::Buf;
use crate::util::par::par_chunks;
use std::sync::Arc;

/// How the user's own engagement is measured (see the module doc). Half-lives are in days;
/// `f32::INFINITY` = no decay.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Own {
    /// The catalog's decayed affinity `a_ui` (per-source weights and half-lives).
    Affinity,
    /// Summed weight per engagement day, decayed with this half-life.
    Weight(f32),
    /// Distinct engagement days, each decayed with this half-life.
    Days(f32),
    /// `1 / (1 + days since the last engagement)`.
    Recent,
}

impl Own {
    /// A hashable identity (kind, half-life bits).
    pub fn key(self) -> (u8, u32) {
        match self {
            Own::Affinity => (0, 0),
            Own::Weight(h) => (1, h.to_bits()),
            Own::Days(h) => (2, h.to_bits()),
            Own::Recent => (3, 0),
        }
    }

    /// The stored code and half-life (see [`Own::from_code`]).
    pub fn code(self) -> (u8, f32) {
        match self {
            Own::Affinity => (0, 0.0),
            Own::Weight(h) => (1, h),
            Own::Days(h) => (2, h),
            Own::Recent => (3, 0.0),
        }
    }

    /// Inverse of [`Own::code`]; `None` for an unknown code or a half-life that is not positive.
    pub fn from_code(code: u8, half_life: f32) -> Option<Own> {
        let ok = half_life > 0.0 && !half_life.is_nan();
        match code {
            0 => Some(Own::Affinity),
            1 if ok => Some(Own::Weight(half_life)),
            2 if ok => Some(Own::Days(half_life)),
            3 => Some(Own::Recent),
            _ => None,
        }
    }

    /// The name used in SQL and JSON: `affinity`, `weight`, `days`, `recent`.
    pub fn name(self) -> &'static str {
        match self {
            Own::Affinity => "affinity",
            Own::Weight(_) => "weight",
            Own::Days(_) => "days",
            Own::Recent => "recent",
        }
    }

    /// The half-life in days (infinity when not decayed or not applicable).
    pub fn half_life(self) -> f32 {
        match self {
            Own::Weight(h) | Own::Days(h) => h,
            _ => f32::INFINITY,
        }
    }

    /// From a name and a half-life in days (`None` or infinity = no decay).
    pub fn from_name(name: &str, half_life: Option<f32>) -> Option<Own> {
        let h = half_life.unwrap_or(f32::INFINITY);
        let ok = h > 0.0 && !h.is_nan();
        match name {
            "affinity" => Some(Own::Affinity),
            "weight" if ok => Some(Own::Weight(h)),
            "days" if ok => Some(Own::Days(h)),
            "recent" => Some(Own::Recent),
            _ => None,
        }
    }
}

/// `2^(-age / half_life)` (1 without decay).
#[inline]
pub(crate) fn day_decay(age: i32, half_life: f32) -> f32 {
    if half_life.is_infinite() {
        1.0
    } else {
        (-(age.max(0) as f32) / half_life).exp2()
    }
}

/// The own measures `owns` of user `u` over the items with `in_value(item)`: gathers the user's
/// (day, weight) pairs of those items into `buf` and folds them per measure.
/// `day_decay(age, h)` for every age a day of `days` can have (0 ..= ref_day - day0), so the
/// per-day loops of [`own_measure`] look the factor up instead of computing `exp2`.
pub(crate) struct DecayTable {
    /// One factor per age; empty for an infinite half-life (every factor is 1).
    by_age: Vec<f32>,
}

impl DecayTable {
    pub(crate) fn new(days: &DayIndex, ref_day: i32, half_life: f32) -> DecayTable {
        if half_life.is_infinite() {
            return DecayTable { by_age: Vec::new() };
        }
        let max_age = (ref_day - days.day0).clamp(0, u16::MAX as i32) as usize;
        DecayTable {
            by_age: (0..=max_age)
                .map(|a| day_decay(a as i32, half_life))
                .collect(),
        }
    }

    #[inline]
    pub(crate) fn at(&self, age: i32) -> f32 {
        if self.by_age.is_empty() {
            return 1.0;
        }
        let a = age.max(0) as usize;
        // Days after the reference day have age 0; older than the table cannot occur (day0 bounds).
        self.by_age.get(a).copied().unwrap_or(0.0)
    }
}

/// The decay tables of `owns` (one per measure; unused for `Recent`).
pub(crate) fn decay_tables(days: &DayIndex, ref_day: i32, owns: &[Own]) -> Vec<DecayTable> {
    owns.iter()
        .map(|&o| match o {
            Own::Weight(h) | Own::Days(h) => DecayTable::new(days, ref_day, h),
            _ => DecayTable { by_age: Vec::new() },
        })
        .collect()
}

/// The own measures `owns` of user `u` over the items of `mask` (all when None), written to `out` (one
/// per measure). `buf` is scratch space.
#[allow(clippy::too_many_arguments)]
pub(crate) fn own_measure(
    ui: &Csr,
    days: &DayIndex,
    ref_day: i32,
    u: usize,
    mask: Option<&[bool]>,
    owns: &[Own],
    tables: &[DecayTable],
    buf: &mut Vec<(u16, f32)>,
    out: &mut [f32],
) {
    buf.clear();
    let (a, b) = (ui.indptr[u], ui.indptr[u + 1]);
    let mut pairs = 0usize;
    for p in a..b {
        if mask.is_none_or(|mk| mk[ui.indices[p] as usize]) {
            let (ds, ws) = days.of(p);
            buf.extend(ds.iter().copied().zip(ws.iter().copied()));
            pairs += 1;
        }
    }
    if buf.is_empty() {
        out.fill(0.0);
        return;
    }
    // One pair's days are already strictly ascending; several pairs' are merged by a sort, which
    // only the distinct-day count and the latest day need.
    let sorted = pairs == 1 || !owns.iter().any(|o| matches!(o, Own::Days(_) | Own::Recent));
    if !sorted {
        buf.sort_unstable_by_key(|x| x.0);
    }
    let age = |d: u16| ref_day - (days.day0 + d as i32);
    for ((slot, &own), table) in out.iter_mut().zip(owns).zip(tables) {
        *slot = match own {
            Own::Affinity => unreachable!("the affinity measure is computed from the matrix"),
            Own::Weight(_) => buf
                .iter()
                .map(|&(d, w)| w.max(0.0) * table.at(age(d)))
                .sum(),
            Own::Days(_) => {
                let mut s = 0f32;
                let mut last = None;
                for &(d, _) in buf.iter() {
                    if last != Some(d) {
                        s += table.at(age(d));
                        last = Some(d);
                    }
                }
                s
            }
            Own::Recent => 1.0 / (1.0 + age(buf.last().unwrap().0).max(0) as f32),
        };
    }
}

/// Scratch for [`OwnAcc`]: one bit per day offset (all 2^16 of them), cleared after use.
pub(crate) struct DayBits {
    pub(crate) words: Vec<u64>,
}

impl DayBits {
    pub(crate) fn new() -> DayBits {
        DayBits {
            words: vec![0u64; (u16::MAX as usize + 1) / 64],
        }
    }
}

/// One own measure of one user accumulated pair by pair, in row order, without collecting or
/// sorting the days (serving an audience: the hot loop). The result is bit for bit that of
/// [`own_measure`]: weights are summed in row order as there, and distinct days in ascending day
/// order (read back from the bit set), as there after its sort.
pub(crate) struct OwnAcc<'a> {
    own: Own,
    table: &'a DecayTable,
    day0: i32,
    ref_day: i32,
    weight: f32,
    lo: usize,
    hi: usize,
}

impl<'a> OwnAcc<'a> {
    pub(crate) fn new(
        own: Own,
        table: &'a DecayTable,
        days: &DayIndex,
        ref_day: i32,
    ) -> OwnAcc<'a> {
        assert!(
            own != Own::Affinity,
            "the affinity measure is computed from the matrix"
        );
        OwnAcc {
            own,
            table,
            day0: days.day0,
            ref_day,
            weight: 0.0,
            lo: usize::MAX,
            hi: 0,
        }
    }

    #[inline]
    fn age(&self, d: u16) -> i32 {
        self.ref_day - (self.day0 + d as i32)
    }

    /// Adds one pair's days and day weights.
    #[inline]
    pub(crate) fn add(&mut self, ds: &[u16], ws: &[f32], bits: &mut DayBits) {
        if let Own::Weight(_) = self.own {
            for (&d, &w) in ds.iter().zip(ws) {
                self.weight += w.max(0.0) * self.table.at(self.age(d));
            }
        } else {
            for &d in ds {
                let d = d as usize;
                bits.words[d / 64] |= 1u64 << (d % 64);
                self.lo = self.lo.min(d / 64);
                self.hi = self.hi.max(d / 64);
            }
        }
    }

    /// The measure; clears the bits it set.
    pub(crate) fn finish(self, bits: &mut DayBits) -> f32 {
        if let Own::Weight(_) = self.own {
            return self.weight;
        }
        if self.lo == usize::MAX {
            return 0.0;
        }
        let (mut s, mut latest) = (0f32, 0u16);
        for wi in self.lo..=self.hi {
            let mut w = std::mem::take(&mut bits.words[wi]);
            while w != 0 {
                let d = (wi * 64 + w.trailing_zeros() as usize) as u16;
                w &= w - 1;
                s += self.table.at(self.age(d));
                latest = d;
            }
        }
        if self.own == Own::Recent {
            1.0 / (1.0 + self.age(latest).max(0) as f32)
        } else {
            s
        }
    }
}

/// [`OwnAcc`] over the items of `mask` in user `u`'s row (to check it against [`own_measure`]).
/// The own measures of a scorer's users (their activity totals are computed once per measure).
impl<'a> Scorer<'a> {
    /// The activity `t_u` in the unit of `own` (computed once per measure).
    pub fn own_totals(&self, own: Own) -> Arc<Buf<f32>> {
        if own == Own::Affinity {
            return Arc::new(self.t.clone());
        }
        if let Some((_, t)) = self
            .own_totals
            .lock()
            .unwrap()
            .iter()
            .find(|(o, _)| *o == own)
        {
            return t.clone();
        }
        let t = self
            .own_columns(None, None, None, &[own])
            .pop()
            .unwrap_or_default();
        let t: Arc<Buf<f32>> = Arc::new(t.into());
        self.own_totals.lock().unwrap().push((own, t.clone()));
        t
    }

    /// The own measures `owns` (none of them [`Own::Affinity`]) of every user for the items of
    /// `mask`; `e` (the affinity engagement) tells which users have any item of the value.
    pub(crate) fn own_parts(&self, mask: &[bool], e: &[f32], owns: &[Own]) -> Vec<OwnPart> {
        if owns.is_empty() {
            return Vec::new();
        }
        let cols = self.own_columns(None, Some(mask), Some(e), owns);
        owns.iter()
            .zip(cols)
            .map(|(&own, e)| OwnPart {
                own,
                e,
                t: self.own_totals(own),
            })
            .collect()
    }

    /// One vector per measure of `owns` (none of them [`Own::Affinity`]) for the users `users`
    /// (all when `None`, in that order): over the items of `mask` (all items when `None`).
    /// Users whose `e` is 0 have no item of the value and get 0 without reading their days.
    pub(crate) fn own_columns(
        &self,
        users: Option<&[usize]>,
        mask: Option<&[bool]>,
        e: Option<&[f32]>,
        owns: &[Own],
    ) -> Vec<Vec<f32>> {
        let k = owns.len();
        let m = users.map_or(self.n_users(), |u| u.len());
        let mut flat = vec![0f32; m * k];
        if let (Some((days, ref_day)), true) = (self.days, k > 0) {
            let tables = decay_tables(days, ref_day, owns);
            let one = |u: usize, buf: &mut Vec<(u16, f32)>, row: &mut [f32]| {
                if e.is_some_and(|e| e[u] <= 0.0) {
                    return;
                }
                own_measure(self.ui, days, ref_day, u, mask, owns, &tables, buf, row);
            };
            if k == 1 {
                // The common case (serving one audience): the output is the column itself.
                par_chunks(&mut flat, self.threads, |first, out| {
                    let mut buf = Vec::new();
                    for (j, slot) in out.iter_mut().enumerate() {
                        one(
                            users.map_or(first + j, |us| us[first + j]),
                            &mut buf,
                            std::slice::from_mut(slot),
                        );
                    }
                });
                return vec![flat];
            }
            // Rows of k values per user, in parallel chunks of whole users.
            let mut rows: Vec<&mut [f32]> = flat.chunks_mut(k).collect();
            par_chunks(&mut rows, self.threads, |first, out| {
                let mut buf = Vec::new();
                for (j, row) in out.iter_mut().enumerate() {
                    one(users.map_or(first + j, |us| us[first + j]), &mut buf, row);
                }
            });
        }
        (0..k)
            .map(|j| (0..m).map(|r| flat[r * k + j]).collect())
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn own_measure_one(
    ui: &Csr,
    days: &DayIndex,
    ref_day: i32,
    u: usize,
    mask: &[bool],
    own: Own,
    table: &DecayTable,
    bits: &mut DayBits,
) -> f32 {
    let mut acc = OwnAcc::new(own, table, days, ref_day);
    for p in ui.indptr[u]..ui.indptr[u + 1] {
        if mask[ui.indices[p] as usize] {
            let (ds, ws) = days.of(p);
            acc.add(ds, ws, bits);
        }
    }
    acc.finish(bits)
}
