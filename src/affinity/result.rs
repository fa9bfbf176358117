//! The aggregate's result ([`Affinity`]): the decayed users x items matrix, each pair's latest
//! time and engagement occasions, item properties; its earlier cut-offs (training splits) and
//! how the state becomes it ([`Accumulator::finish`]). Pure Rust.
use crate::affinity::accumulator::*;
use crate::util::csr::Csr;

/// Result of the aggregate.
#[derive(Clone, Debug, PartialEq)]
pub struct Affinity {
    /// User texts sorted by byte order; row `r` of `matrix` is `users[r]`.
    pub users: Vec<String>,
    /// Item texts sorted by byte order; column `c` of `matrix` is `items[c]`.
    pub items: Vec<String>,
    /// users x items decayed affinity `sum w * 2^(-(reference - t) / half_life)`; only pairs with
    /// a positive (f32) affinity are stored.
    pub matrix: Csr,
    /// Per stored entry (same order as `matrix.indices`): latest event time in microseconds.
    pub last_seen: Vec<i64>,
    /// Per stored entry: its engagement occasions (days with events).
    pub occasions: Occasions,
    /// `[prop][item]`: value from the item's most recent event carrying a non-null value for that
    /// property (ties on time: the larger string).
    pub item_props: Vec<Vec<Option<String>>>,
    pub reference_us: i64,
    pub rows: u64,
    pub min_time_us: i64,
    pub max_time_us: i64,
}

/// Microseconds per minute (the unit of [`Occasions::minute`]).
pub const MINUTE_US: i64 = 60_000_000;

/// The engagement occasions of an affinity matrix: per stored pair, one record per (UTC day,
/// half-life slot) with events, in ascending day order. Exact counts of the distinct days a
/// user engaged with an item or with any set of items, and enough to recompute the affinity of
/// any earlier cut-off (see [`Affinity::until`]).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Occasions {
    /// `ptr[p]..ptr[p + 1]` index the records of stored pair `p` (`nnz + 1` entries).
    pub ptr: Vec<u32>,
    /// Latest event time of the record, in minutes since 2000-01-01 UTC.
    pub minute: Vec<i32>,
    /// Decayed weight of the record's events at that time (their summed weight, for half-lives
    /// much longer than a day).
    pub value: Vec<f32>,
    /// Half-life slot of the record (index into `half_lives`).
    pub slot: Vec<u8>,
    /// Half-life of each slot in microseconds (`None` = no decay).
    pub half_lives: Vec<Option<i64>>,
}

impl Occasions {
    /// Records of stored pair `p`.
    #[inline]
    pub fn range(&self, p: usize) -> std::ops::Range<usize> {
        self.ptr[p] as usize..self.ptr[p + 1] as usize
    }

    /// The UTC day of record `r`.
    #[inline]
    pub fn day(&self, r: usize) -> i32 {
        self.minute[r].div_euclid(1440)
    }

    pub fn len(&self) -> usize {
        self.minute.len()
    }

    pub fn is_empty(&self) -> bool {
        self.minute.is_empty()
    }

    /// Approximate heap bytes.
    pub fn memory_bytes(&self) -> usize {
        self.ptr.capacity() * 4
            + self.minute.capacity() * 4
            + self.value.capacity() * 4
            + self.slot.capacity()
    }
}

impl Affinity {
    /// The affinity of the events on days before `cut_day` only (a training split), decayed to
    /// the latest such event (never after `reference_cap_us` when given). Users and items left
    /// without pairs are dropped, as in [`Affinity::without_empty`]; item properties are kept
    /// (they describe items, not the split). `rows` counts the kept occasion records.
    pub fn until(&self, cut_day: i32) -> Affinity {
        self.until_every(cut_day, 1)
    }

    /// [`Affinity::until`] for every `step`-th user only (rows 0, step, 2·step, ...; the others
    /// are dropped with their pairs): the validation model of automatic tuning on a large
    /// catalog. `step` 0 counts as 1.
    pub fn until_every(&self, cut_day: i32, step: usize) -> Affinity {
        let step = step.max(1);
        let m = &self.matrix;
        let o = &self.occasions;
        let mut latest = i64::MIN;
        let mut min_t = i64::MAX;
        for r in 0..o.len() {
            if o.day(r) < cut_day {
                let t = o.minute[r] as i64 * MINUTE_US;
                latest = latest.max(t);
                min_t = min_t.min(t);
            }
        }
        let reference = if latest == i64::MIN { 0 } else { latest };
        let mut indptr = Vec::with_capacity(m.n_rows + 1);
        indptr.push(0usize);
        let (mut indices, mut data, mut last_seen) = (Vec::new(), Vec::new(), Vec::new());
        let mut occ = Occasions {
            ptr: vec![0],
            half_lives: o.half_lives.clone(),
            ..Default::default()
        };
        for u in 0..m.n_rows {
            crate::util::interrupt::poll_every(u);
            if u % step != 0 {
                indptr.push(indices.len());
                continue;
            }
            for p in m.indptr[u]..m.indptr[u + 1] {
                let mut a = 0f64;
                let mut last = i64::MIN;
                let start = occ.minute.len();
                for r in o.range(p) {
                    if o.day(r) >= cut_day {
                        break; // records are in day order
                    }
                    let t = o.minute[r] as i64 * MINUTE_US;
                    a += o.value[r] as f64
                        * decay(
                            reference as i128 - t as i128,
                            o.half_lives[o.slot[r] as usize],
                        );
                    last = last.max(t);
                    occ.minute.push(o.minute[r]);
                    occ.value.push(o.value[r]);
                    occ.slot.push(o.slot[r]);
                }
                let af = if a >= f32::MAX as f64 {
                    f32::MAX
                } else {
                    a as f32
                };
                if af > 0.0 {
                    indices.push(m.indices[p]);
                    data.push(af);
                    last_seen.push(last);
                    occ.ptr.push(occ.minute.len() as u32);
                } else {
                    occ.minute.truncate(start);
                    occ.value.truncate(start);
                    occ.slot.truncate(start);
                }
            }
            indptr.push(indices.len());
        }
        let rows = occ.len() as u64;
        let matrix = Csr {
            n_rows: m.n_rows,
            n_cols: m.n_cols,
            indptr: indptr.into(),
            indices: indices.into(),
            data: data.into(),
        };
        Affinity {
            users: self.users.clone(),
            items: self.items.clone(),
            matrix,
            last_seen,
            occasions: occ,
            item_props: self.item_props.clone(),
            reference_us: reference,
            rows,
            min_time_us: if min_t == i64::MAX { 0 } else { min_t },
            max_time_us: reference,
        }
        .without_empty()
    }

    /// Drops users and items left without any stored pair (all their affinity was <= 0), so
    /// user counts and percentiles only count users with evidence. Order is kept.
    pub fn without_empty(self) -> Affinity {
        let m = &self.matrix;
        let mut item_used = vec![false; m.n_cols];
        for &c in &m.indices {
            item_used[c as usize] = true;
        }
        let user_used: Vec<bool> = (0..m.n_rows)
            .map(|r| m.indptr[r + 1] > m.indptr[r])
            .collect();
        if item_used.iter().all(|&b| b) && user_used.iter().all(|&b| b) {
            return self;
        }
        let mut new_col = vec![u32::MAX; m.n_cols];
        let mut items = Vec::new();
        for (c, name) in self.items.into_iter().enumerate() {
            if item_used[c] {
                new_col[c] = items.len() as u32;
                items.push(name);
            }
        }
        let users: Vec<String> = self
            .users
            .into_iter()
            .zip(&user_used)
            .filter(|(_, &u)| u)
            .map(|(n, _)| n)
            .collect();
        let mut indptr = vec![0usize];
        for (r, &used) in user_used.iter().enumerate() {
            if used {
                indptr.push(m.indptr[r + 1] - m.indptr[r] + indptr.last().unwrap());
            }
        }
        // Column order is kept by the remap (it is monotonic), so rows stay sorted.
        let indices: Vec<u32> = m.indices.iter().map(|&c| new_col[c as usize]).collect();
        let matrix = Csr {
            n_rows: users.len(),
            n_cols: items.len(),
            indptr: indptr.into(),
            indices: indices.into(),
            data: m.data.clone(),
        };
        let item_props = self
            .item_props
            .into_iter()
            .map(|col| {
                col.into_iter()
                    .zip(&item_used)
                    .filter(|(_, &u)| u)
                    .map(|(v, _)| v)
                    .collect()
            })
            .collect();
        Affinity {
            users,
            items,
            matrix,
            item_props,
            ..self
        }
    }
}

/// One thread's part of [`Accumulator::finish`]: the pairs and records of a run of whole users,
/// written at the start of the part's slices of the output.
struct FinishPart {
    /// `(user, pairs)` of each user with at least one stored pair, in order.
    rows: Vec<(u32, u32)>,
    pairs: usize,
    records: usize,
}

/// Output slices of one part: pairs (indices, data, last_seen, record ends relative to the
/// part's first record) and records (minute, value, slot).
struct FinishOut<'a> {
    indices: &'a mut [u32],
    data: &'a mut [f32],
    last_seen: &'a mut [i64],
    ends: &'a mut [u32],
    minute: &'a mut [i32],
    value: &'a mut [f32],
    slot: &'a mut [u8],
}

/// Decays the sorted, deduplicated entries `es` (whole users) to `reference`; pairs whose
/// affinity is not positive are dropped with their records.
fn finish_part(es: &[Entry], reference: i64, hls: &[Option<i64>], out: FinishOut) -> FinishPart {
    let mut rows: Vec<(u32, u32)> = Vec::new();
    let (mut np, mut nr) = (0usize, 0usize);
    let mut k = 0usize;
    while k < es.len() {
        let (user, item) = (es[k].user, es[k].item);
        let mut a = 0f64;
        let mut last = i64::MIN;
        let start = nr;
        while k < es.len() && es[k].user == user && es[k].item == item {
            let e = es[k];
            a += e.value * decay(reference as i128 - e.time as i128, hls[e.slot as usize]);
            last = last.max(e.time);
            out.minute[nr] = e
                .time
                .div_euclid(MINUTE_US)
                .clamp(i32::MIN as i64, i32::MAX as i64) as i32;
            out.value[nr] = e.value as f32;
            out.slot[nr] = e.slot;
            nr += 1;
            k += 1;
        }
        let af = if a >= f32::MAX as f64 {
            f32::MAX
        } else {
            a as f32
        };
        if af > 0.0 {
            match rows.last_mut() {
                Some((u, n)) if *u == user => *n += 1,
                _ => rows.push((user, 1)),
            }
            out.indices[np] = item;
            out.data[np] = af;
            out.last_seen[np] = last;
            out.ends[np] = nr as u32;
            np += 1;
        } else {
            nr = start;
        }
    }
    FinishPart {
        rows,
        pairs: np,
        records: nr,
    }
}

/// Cuts `0..es.len()` into at most `parts` ranges of about equal length, each of whole users.
fn user_ranges(es: &[Entry], parts: usize) -> Vec<std::ops::Range<usize>> {
    let n = es.len();
    let mut cuts = vec![0usize];
    for p in 1..parts.max(1) {
        let mut c = (n * p / parts).max(*cuts.last().unwrap());
        while c > 0 && c < n && es[c].user == es[c - 1].user {
            c += 1;
        }
        if c < n && c > *cuts.last().unwrap() {
            cuts.push(c);
        }
    }
    cuts.push(n);
    cuts.windows(2).map(|w| w[0]..w[1]).collect()
}

impl Accumulator {
    /// Builds the result: decays every pair to the reference time, drops pairs with affinity
    /// `<= 0`. Users / items that end up with no stored pair are still listed (empty rows /
    /// columns). With no rows at all, times and the default reference are 0.
    pub fn finish(self) -> Affinity {
        self.finish_with_threads(1)
    }

    /// [`Accumulator::finish`] on `threads` threads (runs of whole users each; the result does
    /// not depend on the thread count).
    pub fn finish_with_threads(mut self, threads: usize) -> Affinity {
        self.set_threads(threads);
        self.canonicalize();
        let empty = self.rows == 0;
        let (min_time, max_time) = if empty {
            (0, 0)
        } else {
            (self.min_time, self.max_time)
        };
        let reference = self.reference.unwrap_or(match self.reference_cap {
            Some(cap) => max_time.min(cap),
            None => max_time,
        });
        let n_users = self.users.names.len();
        let n_items = self.items.names.len();
        let n = self.entries.len();
        assert!(n < u32::MAX as usize, "more than 2^32 engagement occasions");
        // Every part writes at its first entry's offset (a part has at most as many pairs and
        // records as entries); the parts are then moved down next to each other.
        let mut indices = vec![0u32; n];
        let mut data = vec![0f32; n];
        let mut last_seen = vec![0i64; n];
        let mut ends = vec![0u32; n];
        let mut minute = vec![0i32; n];
        let mut value = vec![0f32; n];
        let mut slot = vec![0u8; n];
        let ranges = user_ranges(
            &self.entries,
            if n < 1 << 16 { 1 } else { threads.clamp(1, 64) },
        );
        let parts: Vec<FinishPart> = {
            let mut outs = Vec::with_capacity(ranges.len());
            let (mut i, mut d, mut l, mut e) = (
                &mut indices[..],
                &mut data[..],
                &mut last_seen[..],
                &mut ends[..],
            );
            let (mut m, mut v, mut s) = (&mut minute[..], &mut value[..], &mut slot[..]);
            for r in &ranges {
                let len = r.len();
                let (i0, i1) = i.split_at_mut(len);
                let (d0, d1) = d.split_at_mut(len);
                let (l0, l1) = l.split_at_mut(len);
                let (e0, e1) = e.split_at_mut(len);
                let (m0, m1) = m.split_at_mut(len);
                let (v0, v1) = v.split_at_mut(len);
                let (s0, s1) = s.split_at_mut(len);
                outs.push((
                    &self.entries[r.clone()],
                    FinishOut {
                        indices: i0,
                        data: d0,
                        last_seen: l0,
                        ends: e0,
                        minute: m0,
                        value: v0,
                        slot: s0,
                    },
                ));
                (i, d, l, e, m, v, s) = (i1, d1, l1, e1, m1, v1, s1);
            }
            let hls = &self.hls;
            crate::util::par::par_map(outs, |(es, out)| finish_part(es, reference, hls, out))
        };
        drop(std::mem::take(&mut self.entries));
        // Parts moved down in order; record ends made absolute.
        let mut indptr = Vec::with_capacity(n_users + 1);
        indptr.push(0usize);
        let mut occ_ptr: Vec<u32> = Vec::with_capacity(n + 1);
        occ_ptr.push(0);
        let (mut pairs, mut records) = (0usize, 0usize);
        for (r, part) in ranges.iter().zip(&parts) {
            // A part's pairs and records both start at its first entry's offset.
            let src = r.start;
            indices.copy_within(src..src + part.pairs, pairs);
            data.copy_within(src..src + part.pairs, pairs);
            last_seen.copy_within(src..src + part.pairs, pairs);
            occ_ptr.extend(
                ends[src..src + part.pairs]
                    .iter()
                    .map(|&x| x + records as u32),
            );
            minute.copy_within(src..src + part.records, records);
            value.copy_within(src..src + part.records, records);
            slot.copy_within(src..src + part.records, records);
            for &(user, count) in &part.rows {
                while indptr.len() <= user as usize {
                    indptr.push(pairs);
                }
                pairs += count as usize;
            }
            records += part.records;
        }
        drop(ends);
        while indptr.len() <= n_users {
            indptr.push(pairs);
        }
        indices.truncate(pairs);
        data.truncate(pairs);
        last_seen.truncate(pairs);
        minute.truncate(records);
        value.truncate(records);
        slot.truncate(records);
        let occ = Occasions {
            ptr: occ_ptr,
            minute,
            value,
            slot,
            half_lives: self.hls.clone(),
        };

        let matrix = Csr {
            n_rows: n_users,
            n_cols: n_items,
            indptr: indptr.into(),
            indices: indices.into(),
            data: data.into(),
        };
        let item_props = std::mem::take(&mut self.props)
            .into_iter()
            .map(|p| {
                p.into_iter()
                    .map(|v| v.value.map(|t| t.as_str().to_owned()))
                    .collect()
            })
            .collect();
        Affinity {
            users: std::mem::take(&mut self.users.names)
                .into_iter()
                .map(String::from)
                .collect(),
            items: std::mem::take(&mut self.items.names)
                .into_iter()
                .map(String::from)
                .collect(),
            matrix,
            last_seen,
            occasions: occ,
            item_props,
            reference_us: reference,
            rows: self.rows,
            min_time_us: min_time,
            max_time_us: max_time,
        }
    }
}
