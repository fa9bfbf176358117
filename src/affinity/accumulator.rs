//! Transition state of the affinity aggregate: turns a stream of (user, item, weight, time) events
//! into a decayed user x item affinity matrix.
//!
//! # Design
//!
//! * User and item texts are interned to dense `u32` ids (FxHash-hashed open-addressing table
//!   with texts of up to 24 bytes stored inline: one cache miss per lookup).
//! * Every accepted row appends one 25-byte [`Entry`] `(user, item, slot, time, value)` to a
//!   vector; `slot` indexes the table of distinct half-lives seen (at most 256, `None` included).
//! * Entries are keyed by **(user, item, UTC day, slot)**: one entry per engagement occasion
//!   (a day with events) of the pair, so the number of distinct days a user engaged with an
//!   item, and with any set of items, is exact whatever the push or merge order (two partial
//!   states of a parallel scan hold the same day under the same key, and merging unites them).
//!   The state holds one entry per (user, item, day, slot) instead of per (user, item, slot):
//!   +25% entries on the demo shop, +70% on real grocery purchases (at most one per event).
//! * An entry means "at time `time` (the latest event folded into it) the pair had decayed
//!   weight `value`", i.e. `value = sum_k w_k * 2^(-(time - t_k) / half_life)`. Two entries of
//!   the same key combine exactly by rescaling the older one to the newer time,
//!   so decay never overflows whatever the time span, and the decay to the reference time is
//!   applied only once, in [`Accumulator::finish`].
//! * When the vector has doubled since the last compaction, and holds at least
//!   [`MIN_COMPACT`] entries (200 MiB), the unsorted tail is sorted, duplicates are combined, and
//!   it is merged into the sorted prefix. Memory therefore stays within about 2x the number of
//!   distinct (user, item, day, half-life) keys or 200 MiB, whichever is more (plus a transient
//!   buffer of the tail's size during compaction).
//! * [`Accumulator::serialize`] first *canonicalizes* the state: ids are renumbered so that id
//!   order equals byte order of the texts, and entries are fully sorted and deduplicated. Two
//!   canonical states (what `deserialize` produces) merge in one linear pass without any
//!   hashing or sorting, which keeps the parallel combine step cheap.
//!
//! Results are deterministic: the ids, the matrix layout and the item properties do not depend
//! on push or merge order. Affinity values are sums of floating-point numbers, so a different
//! push/merge order can change them only by f64 rounding (far below the f32 output precision,
//! and exactly zero when the terms are dyadic, as in the unit tests).

pub(crate) use crate::affinity::interner::*;
pub(crate) use crate::affinity::prop::*;
pub use crate::affinity::result::*;
pub use crate::affinity::state_codec::StateView;

pub(crate) const MAGIC: [u8; 4] = *b"PGAA";
pub(crate) const VERSION: u32 = 2;
/// Microseconds per (UTC) day: entries are keyed by `time.div_euclid(DAY_US)`.
pub const DAY_US: i64 = 86_400_000_000;
/// Entries buffered before the first compaction (200 MiB). Every state is canonicalized, its
/// entries renumbered and sorted from scratch, before it is merged, serialized or finished, so a
/// compaction's sort only buys memory: with 1M entries (the value before) each of a 20M-event
/// shop's three parallel parts (~7M rows each) compacted three times, a third of its pushing
/// time (`BENCH_ONLY_SCAN=1 cargo bench --bench core`: pushes 9.4-9.6 s -> 6.2-6.3 s).
pub(crate) const MIN_COMPACT: usize = 1 << 23;
/// Distinct half-life values per aggregate (slot is a `u8`).
pub(crate) const MAX_SLOTS: usize = 256;
/// Sanity bound for the number of mapped properties in a serialized state.
pub(crate) const MAX_PROPS: usize = 1 << 16;
pub(crate) const NO_ID: u32 = u32::MAX;

/// One buffered contribution. Packed to 25 bytes: this vector is the bulk of the state.
#[derive(Clone, Copy)]
#[repr(C, packed)]
pub(crate) struct Entry {
    pub(crate) user: u32,
    pub(crate) item: u32,
    pub(crate) slot: u8,
    pub(crate) time: i64,
    pub(crate) value: f64,
}

/// The UTC day of a time in microseconds, clamped to `i32`.
#[inline(always)]
pub fn day_of(time_us: i64) -> i32 {
    time_us
        .div_euclid(DAY_US)
        .clamp(i32::MIN as i64, i32::MAX as i64) as i32
}

impl Entry {
    #[inline(always)]
    fn day(&self) -> i32 {
        day_of(self.time)
    }

    /// Sort key: (user, item, day, slot); the day is mapped monotonically onto `u32`.
    #[inline(always)]
    pub(crate) fn key(&self) -> u128 {
        let day = (self.day() as u32) ^ 0x8000_0000;
        ((self.user as u128) << 72)
            | ((self.item as u128) << 40)
            | ((day as u128) << 8)
            | self.slot as u128
    }
}

/// `2^(-dt / half_life)` for `dt >= 0`; 1 when there is no decay or `dt <= 0`.
#[inline]
pub(crate) fn decay(dt: i128, half_life: Option<i64>) -> f64 {
    match half_life {
        Some(h) if dt > 0 => (-(dt as f64) / (h as f64)).exp2(),
        _ => 1.0,
    }
}

/// Combines two entries of the same key: the older value is rescaled to the newer time.
#[inline]
pub(crate) fn combine(a: Entry, b: Entry, hls: &[Option<i64>]) -> Entry {
    let hl = hls[a.slot as usize];
    let (ta, tb) = (a.time, b.time);
    let (va, vb) = (a.value, b.value);
    let (time, value) = if ta >= tb {
        (ta, va + vb * decay(ta as i128 - tb as i128, hl))
    } else {
        (tb, vb + va * decay(tb as i128 - ta as i128, hl))
    };
    Entry {
        user: a.user,
        item: a.item,
        slot: a.slot,
        time,
        value,
    }
}

/// Combines adjacent equal keys of a sorted slice in place; returns the new length.
pub(crate) fn dedupe_sorted(v: &mut [Entry], hls: &[Option<i64>]) -> usize {
    if v.is_empty() {
        return 0;
    }
    let mut w = 0usize;
    let mut wkey = v[0].key();
    for r in 1..v.len() {
        let e = v[r];
        let k = e.key();
        if k == wkey {
            v[w] = combine(v[w], e, hls);
        } else {
            w += 1;
            v[w] = e;
            wkey = k;
        }
    }
    w + 1
}

/// Merges the sorted, duplicate-free `b` (its `lb` entries given from the last to the first)
/// into the sorted, duplicate-free `a` in place (equal keys combined as `combine(a, b)`): the
/// result is sorted and duplicate-free. Works from the back of `a`'s buffer, so no element is
/// moved before it is read.
#[cfg(test)]
pub(crate) fn merge_back(
    a: &mut Vec<Entry>,
    lb: usize,
    b_rev: impl Iterator<Item = Entry>,
    hls: &[Option<i64>],
) {
    merge_back_mapped(a, lb, b_rev, hls, None::<fn(Entry) -> Entry>)
}

/// [`merge_back`] with `a`'s entries renumbered by the monotone `ra` as they are read (each
/// entry of `a` is read once either way, so the renumbering costs no pass of its own; the ones
/// left in place when `b` runs out are renumbered where they are).
pub(crate) fn merge_back_mapped<R: Fn(Entry) -> Entry>(
    a: &mut Vec<Entry>,
    lb: usize,
    b_rev: impl Iterator<Item = Entry>,
    hls: &[Option<i64>],
    ra: Option<R>,
) {
    let la = a.len();
    let mut b_rev = b_rev.take(lb).peekable();
    let Some(&eb) = b_rev.peek() else {
        map_in_place(&mut a[..], &ra);
        return;
    };
    a.resize(la + lb, eb);
    let w = merge_region(&mut a[..], la, b_rev, hls, &ra);
    // The merge occupies a[w..]; fewer entries than la + lb when keys were combined.
    a.copy_within(w.., 0);
    a.truncate(la + lb - w);
}

/// Renumbers entries in place by `ra`, when given.
fn map_in_place<R: Fn(Entry) -> Entry>(a: &mut [Entry], ra: &Option<R>) {
    if let Some(r) = ra {
        for e in a.iter_mut() {
            *e = r(*e);
        }
    }
}

/// The merge of [`merge_back_mapped`] within `buf`: its first `la` entries are `a`'s, the rest
/// (as many as `b_rev` gives) is room; the result is left at the end of `buf`, from the returned
/// position on. Works from the back, so no element is moved before it is read.
fn merge_region<R: Fn(Entry) -> Entry>(
    buf: &mut [Entry],
    la: usize,
    mut b_rev: impl Iterator<Item = Entry>,
    hls: &[Option<i64>],
    ra: &Option<R>,
) -> usize {
    let Some(mut eb) = b_rev.next() else {
        map_in_place(&mut buf[..la], ra);
        return 0;
    };
    // Invariant: w - i >= the entries of b left, so writing at w - 1 never overwrites a[..i].
    let (mut i, mut w) = (la, buf.len());
    loop {
        w -= 1;
        let next_b = if i == 0 {
            buf[w] = eb;
            true
        } else {
            let ea = match ra {
                Some(r) => r(buf[i - 1]),
                None => buf[i - 1],
            };
            let (ka, kb) = (ea.key(), eb.key());
            if ka > kb {
                buf[w] = ea;
                i -= 1;
                false
            } else if kb > ka {
                buf[w] = eb;
                true
            } else {
                buf[w] = combine(ea, eb, hls);
                i -= 1;
                true
            }
        };
        if next_b {
            match b_rev.next() {
                Some(e) => eb = e,
                None => break,
            }
        }
    }
    if i > 0 {
        map_in_place(&mut buf[..i], ra);
        buf.copy_within(0..i, w - i);
        w -= i;
    }
    w
}

/// The entries of a canonical state (sorted, one per key) as a merge reads them: by ranges of
/// users, from the last entry to the first.
pub(crate) trait UserEntries: Sync {
    /// Number of entries.
    fn n_entries(&self) -> usize;
    /// Entries of the users before `user`.
    fn before_user(&self, user: u32) -> usize;
    /// The entries of the users in `users`, from the last to the first.
    fn rev_users(&self, users: std::ops::Range<u32>) -> impl Iterator<Item = Entry> + '_;
}

impl UserEntries for [Entry] {
    fn n_entries(&self) -> usize {
        self.len()
    }
    fn before_user(&self, user: u32) -> usize {
        self.partition_point(|e| e.user < user)
    }
    fn rev_users(&self, users: std::ops::Range<u32>) -> impl Iterator<Item = Entry> + '_ {
        self[self.before_user(users.start)..self.before_user(users.end)]
            .iter()
            .rev()
            .copied()
    }
}

/// [`merge_back_mapped`] of all of `b` on up to `threads` threads: `a` and `b` are cut at the
/// same users (`ua`/`ub` map each side's users to the merged numbering, monotone; `rb` renumbers
/// `b`'s entries), each part's share of `a` moved up to the bottom of its part of the grown
/// vector, and the parts merged at once, each as [`merge_region`] does; then the parts' results
/// are moved down next to each other. The same result as one thread, entry for entry.
#[allow(clippy::too_many_arguments)]
pub(crate) fn merge_back_parts<R, S, B>(
    a: &mut Vec<Entry>,
    b: &B,
    hls: &[Option<i64>],
    ra: Option<R>,
    rb: S,
    ua: Option<&[u32]>,
    ub: Option<&[u32]>,
    threads: usize,
) where
    R: Fn(Entry) -> Entry + Sync,
    S: Fn(Entry) -> Entry + Sync,
    B: UserEntries + ?Sized,
{
    let (la, lb) = (a.len(), b.n_entries());
    let parts = if la + lb < 1 << 16 || la < lb / 4 {
        1
    } else {
        threads.clamp(1, 64)
    };
    // Cuts: a's user at every part's share of a's entries, in the merged numbering, and where
    // each side's entries of the users before it end.
    let mut cut_a = vec![0usize; parts + 1];
    let mut cut_b = vec![0usize; parts + 1];
    let mut users_b = vec![0u32; parts + 1];
    cut_a[parts] = la;
    cut_b[parts] = lb;
    users_b[parts] = u32::MAX;
    for t in 1..parts {
        let user = a[la / parts * t].user;
        let merged = ua.map_or(user, |m| m[user as usize]);
        cut_a[t] = a.partition_point(|e| e.user < user);
        users_b[t] = ub.map_or(merged, |m| m.partition_point(|&x| x < merged) as u32);
        cut_b[t] = b.before_user(users_b[t]);
    }
    if parts == 1 {
        return merge_back_mapped(a, lb, b.rev_users(0..u32::MAX).map(rb), hls, ra);
    }
    // Grown by b's length, the room filled by the threads that will write it.
    a.reserve_exact(lb);
    let spare = &mut a.spare_capacity_mut()[..lb];
    crate::util::par::par_chunks(spare, parts, |_, part| {
        for e in part.iter_mut() {
            e.write(Entry {
                user: 0,
                item: 0,
                slot: 0,
                time: 0,
                value: 0.0,
            });
        }
    });
    // SAFETY: the first lb spare entries were all written just above.
    unsafe { a.set_len(la + lb) };
    // Part t's entries of a go to the bottom of its region (the last part's first: each moves up).
    for t in (1..parts).rev() {
        a.copy_within(cut_a[t]..cut_a[t + 1], cut_a[t] + cut_b[t]);
    }
    let mut regions = Vec::with_capacity(parts);
    let mut rest = &mut a[..];
    for t in 0..parts {
        let len = (cut_a[t + 1] - cut_a[t]) + (cut_b[t + 1] - cut_b[t]);
        let (region, tail) = std::mem::take(&mut rest).split_at_mut(len);
        regions.push((t, region));
        rest = tail;
    }
    let (ra, rb) = (&ra, &rb);
    let starts = crate::util::par::par_map(regions, |(t, region)| {
        let b_rev = b.rev_users(users_b[t]..users_b[t + 1]).map(rb);
        merge_region(region, cut_a[t + 1] - cut_a[t], b_rev, hls, ra)
    });
    // Each part's result is at the end of its region: moved down next to the ones before it.
    let mut len = 0usize;
    for t in 0..parts {
        let end = cut_a[t + 1] + cut_b[t + 1];
        let from = end - (cut_a[t + 1] - cut_a[t] + cut_b[t + 1] - cut_b[t]) + starts[t];
        a.copy_within(from..end, len);
        len += end - from;
    }
    a.truncate(len);
}

/// Slices shorter than this are sorted by comparisons; longer ones by [`bucket_sort_entries`].
pub(crate) const BUCKET_MIN: usize = 1 << 14;
/// Bits of the first step of [`bucket_sort_entries`] (256 buckets: their write positions stay in
/// the core's cache while every entry moves).
const FLAG_BITS: u32 = 8;

/// Sorts by (user, item, day, slot). When the ids and the slice's day range fit, the key is
/// packed into a `u64` (each field in as many bits as its range needs) and a long slice is
/// bucket sorted on it; otherwise, or when short, compared on the general `u128` key. The order
/// is the same either way (ties, which only equal keys make, are combined afterwards).
pub(crate) fn sort_entries(v: &mut [Entry], n_users: usize, n_items: usize, threads: usize) {
    let bits = |n: u64| u64::BITS - n.leading_zeros();
    let (mut lo, mut hi, mut top_slot) = (i32::MAX, i32::MIN, 0u8);
    for e in v.iter() {
        let d = e.day();
        lo = lo.min(d);
        hi = hi.max(d);
        top_slot = top_slot.max(e.slot);
    }
    if v.is_empty() {
        return;
    }
    let day_shift = bits(top_slot as u64);
    let item_shift = day_shift + bits((hi as i64 - lo as i64) as u64);
    let user_shift = item_shift + bits(n_items as u64);
    let total = user_shift + bits(n_users as u64);
    if total > 64 {
        v.sort_unstable_by_key(|e| e.key());
        return;
    }
    let key = |e: &Entry| {
        ((e.user as u64) << user_shift)
            | ((e.item as u64) << item_shift)
            | (((e.day() as i64 - lo as i64) as u64) << day_shift)
            | e.slot as u64
    };
    if v.len() < BUCKET_MIN || v.len() > u32::MAX as usize {
        v.sort_unstable_by_key(key);
    } else {
        // The key's bits from the item's up: user and item, no day (no division).
        let coarse = |e: &Entry| ((e.user as u64) << (user_shift - item_shift)) | e.item as u64;
        bucket_sort_entries(v, total - item_shift, coarse, key, threads);
    }
}

/// Sorts `v` by `key`, in place. `coarse` is the key without its lowest bits (its top
/// `coarse_bits` bits, computed without a division). First the entries are moved into up to
/// `2^FLAG_BITS` buckets by the top bits of `coarse`, in place (American flag sort: each
/// entry moved once, to one of a few hundred write positions); then each bucket, about 30,000
/// entries of a 7M-entry state, is ordered by (key, position) through a scratch copy of its
/// own. No scratch of the whole state's size: an LSD radix sort of (key, index) pairs needed 49
/// bytes an entry of new memory, and a parallel worker's new memory is slow to touch on a
/// virtual machine (its 7M entries sorted in 1.1-1.4 s, the leader's same sort in 0.3-0.4 s).
/// Equal keys (combined afterwards) may change their order, which can change a sum of them
/// by rounding only.
fn bucket_sort_entries(
    v: &mut [Entry],
    coarse_bits: u32,
    coarse: impl Fn(&Entry) -> u64,
    key: impl Fn(&Entry) -> u64 + Sync,
    threads: usize,
) {
    let b_bits = FLAG_BITS.min(coarse_bits);
    let shift = coarse_bits - b_bits;
    let n_buckets = 1usize << b_bits;
    let bucket = |e: &Entry| (coarse(e) >> shift) as usize;
    // start[b]..start[b + 1] are bucket b's positions.
    let mut start = vec![0usize; n_buckets + 1];
    for e in v.iter() {
        start[bucket(e) + 1] += 1;
    }
    for b in 0..n_buckets {
        start[b + 1] += start[b];
    }
    // next[b]: bucket b's first position not yet holding one of its entries.
    let mut next = start[..n_buckets].to_vec();
    for b in 0..n_buckets {
        while next[b] < start[b + 1] {
            let mut e = v[next[b]];
            let mut t = bucket(&e);
            while t != b {
                // `e` goes to its bucket's next free position; what was there moves on.
                let at = next[t];
                next[t] += 1;
                std::mem::swap(&mut e, &mut v[at]);
                t = bucket(&e);
            }
            v[next[b]] = e;
            next[b] += 1;
        }
    }
    // The buckets in `threads` groups of consecutive buckets and about equal entries, each
    // group ordered on its own thread (the same order whatever the grouping).
    let groups = threads.clamp(1, 64);
    let mut pieces: Vec<Vec<&mut [Entry]>> = (0..groups).map(|_| Vec::new()).collect();
    let mut rest = v;
    let n = start[n_buckets];
    for b in 0..n_buckets {
        let (bucket, tail) = std::mem::take(&mut rest).split_at_mut(start[b + 1] - start[b]);
        rest = tail;
        // The group holding the bucket's middle entry.
        let g = ((start[b] + start[b + 1]) / 2 * groups / n.max(1)).min(groups - 1);
        if bucket.len() >= 2 {
            pieces[g].push(bucket);
        }
    }
    crate::util::par::par_map(pieces, |buckets| {
        let mut part: Vec<Entry> = Vec::new();
        let mut keys: Vec<(u64, u32)> = Vec::new();
        let mut packed: Vec<u64> = Vec::new();
        let mut scratch: Vec<u64> = Vec::new();
        for bucket in buckets {
            part.clear();
            part.extend_from_slice(bucket);
            packed.clear();
            packed.extend(part.iter().map(&key));
            let (lo, hi) = packed
                .iter()
                .fold((u64::MAX, 0u64), |(lo, hi), &k| (lo.min(k), hi.max(k)));
            // The bucket's keys differ only in their lowest `bits` bits.
            let bits = u64::BITS - (lo ^ hi).leading_zeros();
            let idx_bits = u64::BITS - (part.len() as u64).leading_zeros();
            if bits + idx_bits <= u64::BITS {
                // (low key bits, position) in one u64, radix sorted on the key bits.
                for (j, k) in packed.iter_mut().enumerate() {
                    *k = ((*k & low_mask(bits)) << idx_bits) | j as u64;
                }
                radix_sort_packed(&mut packed, &mut scratch, idx_bits, bits);
                let pos = low_mask(idx_bits);
                for (dst, &p) in bucket.iter_mut().zip(&packed) {
                    *dst = part[(p & pos) as usize];
                }
            } else {
                #[cfg(test)]
                WIDE_BUCKETS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                keys.clear();
                keys.extend(packed.iter().enumerate().map(|(j, &k)| (k, j as u32)));
                keys.sort_unstable();
                for (dst, &(_, j)) in bucket.iter_mut().zip(&keys) {
                    *dst = part[j as usize];
                }
            }
        }
    });
}

/// Buckets sorted as (key, position) pairs (tests: the path is taken).
#[cfg(test)]
static WIDE_BUCKETS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The lowest `bits` bits set (`bits` ≤ 64).
fn low_mask(bits: u32) -> u64 {
    if bits >= u64::BITS {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    }
}

/// Bits of one digit of [`radix_sort_packed`] at most (4,096 counters: 16 KB, in the L1 cache).
const DIGIT_BITS: u32 = 12;

/// Sorts `v` by its bits `from..from + bits`, stably (values equal there keep their order), by
/// least-significant-digit radix passes through `scratch`. With the position in the bits below
/// `from`, as [`bucket_sort_entries`] packs them, the order is that of (key, position): the
/// order of a comparison sort of the pairs, without comparisons.
fn radix_sort_packed(v: &mut Vec<u64>, scratch: &mut Vec<u64>, from: u32, bits: u32) {
    if bits == 0 || v.len() < 2 {
        return;
    }
    let passes = bits.div_ceil(DIGIT_BITS);
    let digit = bits.div_ceil(passes);
    // `u32` counters: a bucket sort's slices hold at most `u32::MAX` entries (`sort_entries`).
    debug_assert!(v.len() <= u32::MAX as usize);
    let mut count = vec![0u32; 1 << digit];
    scratch.clear();
    scratch.resize(v.len(), 0);
    for p in 0..passes {
        let shift = from + p * digit;
        let width = digit.min(bits - p * digit);
        let mask = low_mask(width);
        count[..1 << width].fill(0);
        for &x in v.iter() {
            count[((x >> shift) & mask) as usize] += 1;
        }
        let mut sum = 0u32;
        for c in count[..1 << width].iter_mut() {
            let n = *c;
            *c = sum;
            sum += n;
        }
        for &x in v.iter() {
            let d = ((x >> shift) & mask) as usize;
            scratch[count[d] as usize] = x;
            count[d] += 1;
        }
        std::mem::swap(v, scratch);
    }
}

/// Aggregate state; see the module documentation.
pub struct Accumulator {
    pub(crate) n_props: usize,
    pub(crate) users: Interner,
    pub(crate) items: Interner,
    /// Distinct half-lives; an entry's `slot` indexes this table.
    pub(crate) hls: Vec<Option<i64>>,
    /// Cache of the last half-life looked up.
    pub(crate) last_hl: Option<(Option<i64>, u8)>,
    pub(crate) entries: Vec<Entry>,
    /// `entries[..sorted_len]` is sorted by key and has no duplicate keys.
    pub(crate) sorted_len: usize,
    /// Compact when `entries.len()` reaches this.
    pub(crate) threshold: usize,
    /// The smallest `threshold` ([`MIN_COMPACT`]; smaller in tests).
    pub(crate) min_compact: usize,
    /// `[prop][item]`; an inner vector may be shorter than the item count (missing = null).
    pub(crate) props: Vec<Vec<PropVal>>,
    pub(crate) prop_bytes: usize,
    pub(crate) reference: Option<i64>,
    /// Upper bound of the default reference; local to the finishing backend, not serialized.
    pub(crate) reference_cap: Option<i64>,
    pub(crate) rows: u64,
    pub(crate) min_time: i64,
    pub(crate) max_time: i64,
    /// User texts of the last `pending.len()` entries, not interned yet (their `user` and
    /// `item` are [`NO_ID`]): they are interned [`ROW_BATCH`] at a time, the table slots of a
    /// batch prefetched together, so a big user table costs one wait for memory per batch
    /// instead of one per row. Empty whenever anything reads the state
    /// ([`Accumulator::flush_pending`]).
    pub(crate) pending: Vec<(u32, u32)>,
    /// Item texts of the same entries: the item table (50k items: 4 MB of slots, more than a
    /// core's L2 cache) is looked up in the same batches, and so are the items' property slots.
    pub(crate) pending_items: Vec<(u32, u32)>,
    /// Property values of the same entries: (entry in the batch, property, text range).
    pub(crate) pending_props: Vec<(u32, u32, u32, u32)>,
    pub(crate) pending_text: String,
    /// Threads for canonicalizing, merging and finishing (1 unless [`Accumulator::set_threads`]);
    /// local to the process, not serialized.
    pub(crate) threads: usize,
}

/// Rows whose user and item lookups are batched (see [`Accumulator::pending`]).
pub(crate) const ROW_BATCH: usize = 32;

impl Accumulator {
    #[cfg(test)]
    fn clone_for_test(&mut self) -> Accumulator {
        Accumulator::deserialize(&self.serialize()).unwrap()
    }

    /// A new state for events carrying `n_props` mapped item properties.
    pub fn new(n_props: usize) -> Self {
        Accumulator {
            n_props,
            users: Interner::new(),
            items: Interner::new(),
            hls: Vec::new(),
            last_hl: None,
            entries: Vec::new(),
            sorted_len: 0,
            threshold: MIN_COMPACT,
            min_compact: MIN_COMPACT,
            props: (0..n_props).map(|_| Vec::new()).collect(),
            prop_bytes: 0,
            reference: None,
            reference_cap: None,
            rows: 0,
            min_time: i64::MAX,
            max_time: i64::MIN,
            pending: Vec::new(),
            pending_items: Vec::new(),
            pending_props: Vec::new(),
            pending_text: String::new(),
            threads: 1,
        }
    }

    /// Sets the threads of the steps that read the whole state at once (canonicalizing,
    /// merging another state in, finishing): pure arithmetic on scoped threads.
    pub fn set_threads(&mut self, threads: usize) {
        self.threads = threads.clamp(1, 64);
    }

    /// Interns the pending items' and users' texts, gives their entries the ids and applies
    /// their property values. Every table slot of the batch is asked for before the first
    /// lookup waits: one wait for memory per batch, not one per row.
    pub(crate) fn flush_pending(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let Accumulator {
            users,
            items,
            entries,
            props,
            prop_bytes,
            pending,
            pending_items,
            pending_props,
            pending_text,
            ..
        } = self;
        let str_at = |(a, b): (u32, u32)| &pending_text[a as usize..b as usize];
        // The texts' hashes, each text's table slot asked for as soon as it is known.
        let hashed = |table: &mut Interner, ranges: &[(u32, u32)]| {
            let mut hashes = [0u64; ROW_BATCH];
            for (h, &r) in hashes.iter_mut().zip(ranges) {
                *h = hash_bytes(str_at(r).as_bytes());
                table.prefetch(*h);
            }
            hashes
        };
        let item_hashes = hashed(items, pending_items);
        let user_hashes = hashed(users, pending);
        let first = entries.len() - pending.len();
        let batch = &mut entries[first..];
        for ((e, &r), &h) in batch.iter_mut().zip(pending_items.iter()).zip(&item_hashes) {
            e.item = items.intern_hashed(str_at(r), h);
        }
        if !pending_props.is_empty() {
            for &(k, p, _, _) in pending_props.iter() {
                let it = batch[k as usize].item as usize;
                if let Some(v) = props.get(p as usize).and_then(|v| v.get(it)) {
                    crate::util::prefetch(v);
                }
            }
            for &(k, p, a, b) in pending_props.iter() {
                let (it, time) = (batch[k as usize].item as usize, batch[k as usize].time);
                let pv = &mut props[p as usize];
                if pv.len() <= it {
                    pv.resize_with(it + 1, PropVal::default);
                }
                let d = pv[it].update(time, str_at((a, b)));
                *prop_bytes = (*prop_bytes as isize + d) as usize;
            }
        }
        for ((e, &r), &h) in batch.iter_mut().zip(pending.iter()).zip(&user_hashes) {
            e.user = users.intern_hashed(str_at(r), h);
        }
        pending.clear();
        pending_items.clear();
        pending_props.clear();
        pending_text.clear();
    }

    /// Number of mapped properties.
    pub fn n_props(&self) -> usize {
        self.n_props
    }

    /// Adds one event.
    ///
    /// * Rows with a NaN or infinite `weight` are ignored entirely (not counted in `rows`).
    /// * Negative and zero weights are kept (they reduce / do not change affinity); pairs whose
    ///   final affinity is `<= 0` are dropped in [`Accumulator::finish`].
    /// * `half_life_us`: `None` = no decay. Must be positive when given (panics otherwise; the
    ///   SQL wrapper should reject it first). At most 256 distinct values per aggregate.
    /// * `props`: per-row values of the mapped properties, in catalog order; entries beyond
    ///   `n_props` are ignored, missing ones count as null.
    #[inline]
    pub fn push(
        &mut self,
        user: &str,
        item: &str,
        weight: f64,
        time_us: i64,
        half_life_us: Option<i64>,
        props: Option<&[Option<&str>]>,
    ) {
        if !weight.is_finite() {
            return;
        }
        if let Some(h) = half_life_us {
            assert!(h > 0, "half-life must be positive, got {h} microseconds");
        }
        let slot = self.slot_for(half_life_us);
        self.rows += 1;
        self.min_time = self.min_time.min(time_us);
        self.max_time = self.max_time.max(time_us);
        let a = self.pending_text.len() as u32;
        self.pending_text.push_str(user);
        let b = self.pending_text.len() as u32;
        self.pending_text.push_str(item);
        let c = self.pending_text.len() as u32;
        self.pending.push((a, b));
        self.pending_items.push((b, c));
        self.entries.push(Entry {
            user: NO_ID,
            item: NO_ID,
            slot,
            time: time_us,
            value: weight,
        });
        if let Some(vals) = props {
            let k = (self.pending.len() - 1) as u32;
            for (p, v) in vals.iter().take(self.props.len()).enumerate() {
                if let Some(v) = v {
                    let a = self.pending_text.len() as u32;
                    self.pending_text.push_str(v);
                    let b = self.pending_text.len() as u32;
                    self.pending_props.push((k, p as u32, a, b));
                }
            }
        }
        if self.pending.len() == ROW_BATCH {
            self.flush_pending();
            if self.entries.len() >= self.threshold {
                self.compact();
            }
        }
    }

    #[inline]
    fn slot_for(&mut self, hl: Option<i64>) -> u8 {
        if let Some((h, s)) = self.last_hl {
            if h == hl {
                return s;
            }
        }
        let s = match self.hls.iter().position(|&x| x == hl) {
            Some(p) => p as u8,
            None => {
                assert!(
                    self.hls.len() < MAX_SLOTS,
                    "more than {MAX_SLOTS} distinct half-life values in one aggregate"
                );
                self.hls.push(hl);
                (self.hls.len() - 1) as u8
            }
        };
        self.last_hl = Some((hl, s));
        s
    }

    /// Whether a row with this half-life can be pushed: a state holds at most `MAX_SLOTS`
    /// distinct half-lives (callers report an error instead of pushing).
    pub fn accepts_half_life(&self, hl: Option<i64>) -> bool {
        self.hls.len() < MAX_SLOTS || self.hls.contains(&hl)
    }

    /// Caps the default reference (the latest event time) at `cap_us`, so one event stamped in the
    /// future cannot decay every other event away; later events count as if at the reference.
    pub fn set_reference_cap(&mut self, cap_us: Option<i64>) {
        self.reference_cap = cap_us;
    }

    /// Sets the time decay is measured to; `None` = the latest event time seen.
    pub fn set_reference(&mut self, ref_us: Option<i64>) {
        self.reference = ref_us;
    }

    /// Rows accepted so far (including merged states).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Approximate heap bytes held by the state.
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.entries.capacity() * std::mem::size_of::<Entry>()
            + self.users.memory_bytes()
            + self.items.memory_bytes()
            + self
                .props
                .iter()
                .map(|p| p.capacity() * std::mem::size_of::<PropVal>())
                .sum::<usize>()
            + self.prop_bytes
            + self.pending_text.capacity()
            + (self.pending.capacity() + self.pending_items.capacity()) * 8
            + self.pending_props.capacity() * 16
    }

    fn is_blank(&self) -> bool {
        self.pending.is_empty()
            && self.rows == 0
            && self.entries.is_empty()
            && self.users.len() == 0
            && self.items.len() == 0
    }

    /// Sorts and deduplicates the unsorted tail and merges it into the sorted prefix (ids and
    /// slots unchanged).
    fn compact(&mut self) {
        self.flush_pending();
        let p = self.sorted_len;
        let n = self.entries.len();
        if p < n {
            let hls = &self.hls;
            let tail = &mut self.entries[p..];
            sort_entries(tail, self.users.len(), self.items.len(), 1);
            let t = dedupe_sorted(tail, hls);
            self.entries.truncate(p + t);
            if p > 0 && self.entries[p - 1].key() >= self.entries[p].key() {
                // Backward merge of the prefix (in place) with a copy of the tail.
                let buf: Vec<Entry> = crate::util::pages::copied(&self.entries[p..]);
                let e = &mut self.entries;
                let (mut i, mut j, mut k) = (p, t, p + t);
                while j > 0 {
                    if i > 0 && e[i - 1].key() > buf[j - 1].key() {
                        e[k - 1] = e[i - 1];
                        i -= 1;
                    } else {
                        e[k - 1] = buf[j - 1];
                        j -= 1;
                    }
                    k -= 1;
                }
                drop(buf);
                let m = dedupe_sorted(&mut self.entries, &self.hls);
                self.entries.truncate(m);
            }
        }
        let len = self.entries.len();
        self.sorted_len = len;
        self.threshold = self.min_compact.max(2 * len);
        // Compaction waits for the end of a batch of rows: room for one batch past the threshold.
        self.entries.reserve_exact(self.threshold + ROW_BATCH - len);
        crate::util::pages::advise_spare(&self.entries);
    }

    /// Sorts the half-life table (None first, then ascending); returns old -> new slot map when
    /// it changed.
    fn sort_slots(&mut self) -> Option<Vec<u8>> {
        if self.hls.windows(2).all(|w| w[0] < w[1]) {
            return None;
        }
        let mut order: Vec<usize> = (0..self.hls.len()).collect();
        order.sort_by_key(|&i| self.hls[i]);
        let mut remap = vec![0u8; self.hls.len()];
        for (new, &old) in order.iter().enumerate() {
            remap[old] = new as u8;
        }
        self.hls = order.iter().map(|&i| self.hls[i]).collect();
        self.last_hl = None;
        Some(remap)
    }

    /// Pads every property vector to the item count.
    fn pad_props(&mut self) {
        let n = self.items.len();
        while self.props.len() < self.n_props {
            self.props.push(Vec::new());
        }
        for p in &mut self.props {
            if p.len() < n {
                p.resize_with(n, PropVal::default);
            }
        }
    }

    /// Canonical form: ids in text order, slots in half-life order, entries sorted and
    /// deduplicated, property vectors padded.
    pub(crate) fn canonicalize(&mut self) {
        self.flush_pending();
        let ur = self.users.sort();
        let ir = self.items.sort();
        let sr = self.sort_slots();
        self.pad_props();
        if ur.is_none() && ir.is_none() && sr.is_none() {
            if self.sorted_len < self.entries.len() {
                self.compact();
            }
            return;
        }
        crate::util::par::par_chunks(&mut self.entries, self.threads, |_, part| {
            for e in part.iter_mut() {
                if let Some(r) = &ur {
                    e.user = r[e.user as usize];
                }
                if let Some(r) = &ir {
                    e.item = r[e.item as usize];
                }
                if let Some(r) = &sr {
                    e.slot = r[e.slot as usize];
                }
            }
        });
        let (n_users, n_items) = (self.users.len(), self.items.len());
        sort_entries(&mut self.entries, n_users, n_items, self.threads);
        let m = dedupe_sorted(&mut self.entries, &self.hls);
        self.entries.truncate(m);
        self.sorted_len = m;
        self.threshold = self.min_compact.max(2 * m);
        if let Some(r) = &ir {
            for p in &mut self.props {
                let mut np: Vec<PropVal> = (0..r.len()).map(|_| PropVal::default()).collect();
                for (old, v) in std::mem::take(p).into_iter().enumerate() {
                    np[r[old] as usize] = v;
                }
                *p = np;
            }
        }
    }

    /// Folds a partial state (parallel aggregation) into this one.
    pub fn merge(&mut self, mut other: Accumulator) {
        other.flush_pending();
        if self.merge_trivially(other.is_blank(), other.n_props, other.reference) {
            return;
        }
        if self.is_blank() {
            let (reference, n_props, threads) = (self.reference, self.n_props, self.threads);
            std::mem::swap(self, &mut other);
            self.reference = reference;
            self.n_props = n_props;
            self.threads = threads;
            self.pad_props();
            return;
        }
        other.canonicalize();
        let entries = std::mem::take(&mut other.entries);
        self.merge_part(Part {
            users: std::mem::take(&mut other.users.names),
            user_bytes: other.users.bytes,
            items: std::mem::take(&mut other.items.names),
            item_bytes: other.items.bytes,
            hls: std::mem::take(&mut other.hls),
            entries: &entries[..],
            props: std::mem::take(&mut other.props),
            prop_bytes: other.prop_bytes,
            rows: other.rows,
            min_time: other.min_time,
            max_time: other.max_time,
        });
    }

    /// Folds a serialized partial state into this one, read in place: the same result as
    /// `merge(Accumulator::deserialize(bytes))` without decoding the other state's entries into a
    /// vector of their own (the combine step of a parallel scan, on its largest states).
    pub fn merge_view(&mut self, mut v: StateView<'_>) {
        let blank = v.rows == 0 && v.is_empty() && v.users.is_empty() && v.items.is_empty();
        if self.merge_trivially(blank, v.n_props, v.reference) {
            return;
        }
        if self.is_blank() {
            let (reference, n_props, threads) = (self.reference, self.n_props, self.threads);
            *self = v.into_accumulator();
            self.reference = reference;
            self.n_props = n_props;
            self.threads = threads;
            self.pad_props();
            return;
        }
        let (users, items) = (std::mem::take(&mut v.users), std::mem::take(&mut v.items));
        let (hls, props) = (std::mem::take(&mut v.hls), std::mem::take(&mut v.props));
        let part = Part {
            entries: &v,
            users,
            user_bytes: v.user_bytes,
            items,
            item_bytes: v.item_bytes,
            hls,
            props,
            prop_bytes: v.prop_bytes,
            rows: v.rows,
            min_time: v.min_time,
            max_time: v.max_time,
        };
        self.merge_part(part);
    }

    /// The start of every merge: the reference and property count; true when the other state is
    /// blank (nothing more to do).
    fn merge_trivially(
        &mut self,
        other_blank: bool,
        other_props: usize,
        other_ref: Option<i64>,
    ) -> bool {
        self.flush_pending();
        if self.reference.is_none() {
            self.reference = other_ref;
        }
        self.n_props = self.n_props.max(other_props);
        if other_blank {
            self.pad_props();
        }
        other_blank
    }

    /// Merges a canonical partial state (sorted names, entries from the back) into this one.
    fn merge_part<B, E>(&mut self, o: Part<'_, B, E>)
    where
        B: AsRef<str> + Into<Box<str>>,
        E: UserEntries + ?Sized,
    {
        let n_props = self.n_props;
        self.canonicalize();

        let (users, ura, urb) = merge_names(std::mem::take(&mut self.users.names), o.users);
        let (items, ira, irb) = merge_names(std::mem::take(&mut self.items.names), o.items);
        self.users.names = users;
        self.users.bytes += o.user_bytes; // upper bound; shared texts are counted twice
        self.items.names = items;
        self.items.bytes += o.item_bytes;

        // Half-life tables: both sorted and duplicate-free.
        let mut hls: Vec<Option<i64>> = self.hls.iter().chain(o.hls.iter()).copied().collect();
        hls.sort();
        hls.dedup();
        assert!(
            hls.len() <= MAX_SLOTS,
            "more than {MAX_SLOTS} distinct half-life values in one aggregate"
        );
        let slot_map = |t: &[Option<i64>]| -> Option<Vec<u8>> {
            let r: Vec<u8> = t
                .iter()
                .map(|h| hls.binary_search(h).unwrap() as u8)
                .collect();
            if r.iter().enumerate().all(|(i, &x)| i as u8 == x) {
                None
            } else {
                Some(r)
            }
        };
        let sra = slot_map(&self.hls);
        let srb = slot_map(&o.hls);
        self.hls = hls;
        self.last_hl = None;

        // Monotone remaps keep both entry lists sorted.
        let remap =
            |mut e: Entry, u: &Option<Vec<u32>>, i: &Option<Vec<u32>>, s: &Option<Vec<u8>>| {
                if let Some(r) = u {
                    e.user = r[e.user as usize];
                }
                if let Some(r) = i {
                    e.item = r[e.item as usize];
                }
                if let Some(r) = s {
                    e.slot = r[e.slot as usize];
                }
                e
            };

        // Merged in place, from the back, into this state's vector (grown by the other's length
        // when it lacks the room): no second vector of both, whose fresh pages the kernel would
        // have to clear (a fifth of the leader's serial combine step on a large scan).
        // On this state's threads, in parts of users (the same result).
        let mut out = std::mem::take(&mut self.entries);
        let rb = |e: Entry| remap(e, &urb, &irb, &srb);
        // This state's entries renumbered as the merge reads them (no pass of their own).
        let ra = (ura.is_some() || ira.is_some() || sra.is_some())
            .then_some(|e: Entry| remap(e, &ura, &ira, &sra));
        merge_back_parts(
            &mut out,
            o.entries,
            &self.hls,
            ra,
            rb,
            ura.as_deref(),
            urb.as_deref(),
            self.threads,
        );
        self.sorted_len = out.len();
        self.threshold = self.min_compact.max(2 * out.len());
        self.entries = out;

        // Properties.
        let n_items = self.items.names.len();
        let mut new_props: Vec<Vec<PropVal>> = Vec::with_capacity(n_props);
        let mut sp = std::mem::take(&mut self.props);
        let mut op = o.props;
        sp.resize_with(n_props, Vec::new);
        op.resize_with(n_props, Vec::new);
        for (pa, pb) in sp.into_iter().zip(op) {
            let mut np: Vec<PropVal> = (0..n_items).map(|_| PropVal::default()).collect();
            for (old, v) in pa.into_iter().enumerate() {
                let new = ira.as_ref().map_or(old, |r| r[old] as usize);
                np[new] = v;
            }
            for (old, v) in pb.into_iter().enumerate() {
                let new = irb.as_ref().map_or(old, |r| r[old] as usize);
                np[new].merge(v);
            }
            new_props.push(np);
        }
        self.props = new_props;
        self.prop_bytes += o.prop_bytes;

        self.rows += o.rows;
        self.min_time = self.min_time.min(o.min_time);
        self.max_time = self.max_time.max(o.max_time);
    }
}

/// A canonical partial state being merged (see [`Accumulator::merge_part`]): its names (owned
/// or borrowed from its bytes), half-lives, entries, properties.
struct Part<'e, B, E: ?Sized> {
    users: Vec<B>,
    user_bytes: usize,
    items: Vec<B>,
    item_bytes: usize,
    hls: Vec<Option<i64>>,
    entries: &'e E,
    props: Vec<Vec<PropVal>>,
    prop_bytes: usize,
    rows: u64,
    min_time: i64,
    max_time: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000_000;

    fn row(acc: &mut Accumulator, u: &str, i: &str, w: f64, t: i64, hl: Option<i64>) {
        acc.push(u, i, w, t, hl, None);
    }

    fn get(a: &Affinity, u: &str, i: &str) -> Option<(f32, i64)> {
        let r = a.users.iter().position(|x| x == u)?;
        let c = a.items.iter().position(|x| x == i)? as u32;
        let (cols, vals) = a.matrix.row(r);
        let p = cols.iter().position(|&x| x == c)?;
        Some((vals[p], a.last_seen[a.matrix.indptr[r] + p]))
    }

    #[test]
    fn decay_halves_per_half_life() {
        let mut acc = Accumulator::new(0);
        row(&mut acc, "u", "a", 8.0, 0, Some(DAY)); // 3 half-lives old at ref 3d -> 1
        row(&mut acc, "u", "a", 2.0, 2 * DAY, Some(DAY)); // 1 half-life -> 1
        row(&mut acc, "u", "b", 1.0, 3 * DAY, Some(DAY)); // 0 -> 1
        row(&mut acc, "v", "b", 4.0, DAY, Some(DAY)); // 2 -> 1
        row(&mut acc, "v", "c", 1.0, 2 * DAY + DAY / 2, Some(DAY)); // 0.5 -> 2^-0.5
        let a = acc.finish();
        assert_eq!(a.reference_us, 3 * DAY);
        assert_eq!(get(&a, "u", "a"), Some((2.0, 2 * DAY)));
        assert_eq!(get(&a, "u", "b"), Some((1.0, 3 * DAY)));
        assert_eq!(get(&a, "v", "b"), Some((1.0, DAY)));
        let (vc, _) = get(&a, "v", "c").unwrap();
        assert!((vc - std::f32::consts::FRAC_1_SQRT_2).abs() < 1e-6, "{vc}");
        assert_eq!((a.min_time_us, a.max_time_us, a.rows), (0, 3 * DAY, 5));
    }

    #[test]
    fn decades_with_short_half_life_do_not_overflow() {
        // MovieLens-like: 1997 and 2018 events, 7-day half-life, reference in 2018
        let y1997 = 852_076_800_000_000i64;
        let y2018 = 1_514_764_800_000_000i64;
        let mut acc = Accumulator::new(0);
        acc.set_reference(Some(y2018));
        for k in 0..1000 {
            row(&mut acc, "u", "old", 5.0, y1997 + k, Some(7 * DAY));
        }
        row(&mut acc, "u", "new", 1.0, y2018 - 7 * DAY, Some(7 * DAY));
        row(&mut acc, "u", "new", 1.0, y2018 - 14 * DAY, Some(7 * DAY));
        let a = acc.finish();
        // the 1997 pair underflows to 0 and is dropped (not NaN/inf)
        assert_eq!(get(&a, "u", "old"), None);
        assert_eq!(get(&a, "u", "new"), Some((0.75, y2018 - 7 * DAY)));
        assert!(a.matrix.data.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn mixed_half_lives_on_one_pair() {
        let mut acc = Accumulator::new(0);
        row(&mut acc, "u", "a", 4.0, 0, Some(DAY)); // 2 half-lives at ref 2d -> 1
        row(&mut acc, "u", "a", 4.0, 0, Some(2 * DAY)); // 1 half-life -> 2
        row(&mut acc, "u", "a", 3.0, DAY, None); // no decay -> 3
        row(&mut acc, "u", "a", 2.0, 2 * DAY, Some(DAY)); // -> 2
        let a = acc.finish();
        assert_eq!(get(&a, "u", "a"), Some((8.0, 2 * DAY)));
        assert_eq!(a.matrix.nnz(), 1);
    }

    #[test]
    fn no_decay_sums_weights() {
        let mut acc = Accumulator::new(0);
        row(&mut acc, "u", "a", 1.5, 0, None);
        row(&mut acc, "u", "a", 2.5, 1_000 * DAY, None);
        row(&mut acc, "u", "b", 1.0, -5_000 * DAY, None);
        let a = acc.finish();
        assert_eq!(get(&a, "u", "a"), Some((4.0, 1_000 * DAY)));
        assert_eq!(get(&a, "u", "b"), Some((1.0, -5_000 * DAY)));
    }

    #[test]
    fn reference_none_vs_given() {
        let build = |r: Option<i64>| {
            let mut acc = Accumulator::new(0);
            acc.set_reference(r);
            row(&mut acc, "u", "a", 1.0, 0, Some(DAY));
            row(&mut acc, "u", "b", 1.0, DAY, Some(DAY));
            acc.finish()
        };
        let a = build(None);
        assert_eq!(a.reference_us, DAY);
        assert_eq!(get(&a, "u", "a").unwrap().0, 0.5);
        assert_eq!(get(&a, "u", "b").unwrap().0, 1.0);
        let a = build(Some(3 * DAY));
        assert_eq!(a.reference_us, 3 * DAY);
        assert_eq!(get(&a, "u", "a").unwrap().0, 0.125);
        assert_eq!(get(&a, "u", "b").unwrap().0, 0.25);
        // events after an explicit reference are not amplified
        let a = build(Some(0));
        assert_eq!(get(&a, "u", "a").unwrap().0, 1.0);
        assert_eq!(get(&a, "u", "b").unwrap().0, 1.0);
    }

    #[test]
    fn negative_weights_and_non_finite() {
        let mut acc = Accumulator::new(0);
        row(&mut acc, "u", "a", 3.0, 0, None);
        row(&mut acc, "u", "a", -1.0, 1, None); // a return: 2 left
        row(&mut acc, "u", "b", 1.0, 0, None);
        row(&mut acc, "u", "b", -1.0, 1, None); // exactly 0 -> dropped
        row(&mut acc, "u", "c", -2.0, 0, None); // negative -> dropped
        row(&mut acc, "v", "c", 0.0, 0, None); // zero -> dropped, but v and c still listed
        row(&mut acc, "u", "d", f64::NAN, 0, None); // ignored entirely
        row(&mut acc, "w", "d", f64::INFINITY, 0, None);
        row(&mut acc, "w", "d", f64::NEG_INFINITY, 0, None);
        // decayed negative event: old positive, recent negative
        row(&mut acc, "x", "a", 4.0, 0, Some(DAY));
        row(&mut acc, "x", "a", -1.0, DAY, Some(DAY)); // 4*0.5 - 1 = 1
        let a = acc.finish();
        assert_eq!(a.rows, 8);
        assert_eq!(a.users, vec!["u", "v", "x"]);
        assert_eq!(a.items, vec!["a", "b", "c"]);
        assert_eq!(get(&a, "u", "a"), Some((2.0, 1)));
        assert_eq!(get(&a, "u", "b"), None);
        assert_eq!(get(&a, "u", "c"), None);
        assert_eq!(get(&a, "v", "c"), None);
        assert_eq!(get(&a, "x", "a"), Some((1.0, DAY)));
        assert_eq!(a.matrix.nnz(), 2);
        assert_eq!(a.matrix.indptr, vec![0, 1, 1, 2]);
    }

    #[test]
    fn props_latest_wins_with_ties() {
        let mut acc = Accumulator::new(3);
        acc.push(
            "u",
            "a",
            1.0,
            10,
            None,
            Some(&[Some("red"), Some("x"), None]),
        );
        acc.push("u", "a", 1.0, 5, None, Some(&[Some("blue"), None, None])); // older: loses
        acc.push("v", "a", 1.0, 20, None, Some(&[None, Some("y"), None])); // null does not erase
        acc.push("v", "a", 1.0, 20, None, Some(&[None, Some("w"), None])); // tie: larger "y" stays
        acc.push("v", "a", 1.0, 20, None, Some(&[None, Some("z"), None])); // tie: "z" wins
        acc.push("u", "b", 1.0, 1, None, Some(&[Some("green")])); // short slice = nulls
        acc.push("u", "c", 1.0, 1, None, None);
        acc.push(
            "u",
            "b",
            1.0,
            0,
            None,
            Some(&[Some("old"), Some("p"), Some("q"), Some("extra")]),
        );
        let a = acc.finish();
        assert_eq!(a.items, vec!["a", "b", "c"]);
        let s = |v: &str| Some(v.to_string());
        assert_eq!(a.item_props[0], vec![s("red"), s("green"), None]);
        assert_eq!(a.item_props[1], vec![s("z"), s("p"), None]);
        assert_eq!(a.item_props[2], vec![None, s("q"), None]);
    }

    /// Deterministic pseudo-random generator for the tests.
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

    type Row = (String, String, f64, i64, Option<i64>, Vec<Option<String>>);

    /// Rows whose decay terms are all dyadic, so every summation order gives the same bits.
    fn dyadic_rows(n: usize, seed: u64) -> Vec<Row> {
        let mut g = Rng(seed);
        let colors = ["red", "green", "blue", "black"];
        (0..n)
            .map(|_| {
                let u = format!("user{}", g.below(40));
                let i = format!("item{}", g.below(25));
                let w = (g.below(9) as f64 - 2.0) * 0.5;
                let t = g.below(30) as i64 * DAY;
                let hl = match g.below(3) {
                    0 => None,
                    1 => Some(DAY),
                    _ => Some(2 * DAY),
                };
                let hl = if hl == Some(2 * DAY) && t % (2 * DAY) != 0 {
                    Some(DAY)
                } else {
                    hl
                };
                let p0 = if g.below(3) == 0 {
                    None
                } else {
                    Some(colors[g.below(4) as usize].to_string())
                };
                let p1 = if g.below(2) == 0 {
                    None
                } else {
                    Some(format!("b{}", g.below(3)))
                };
                (u, i, w, t, hl, vec![p0, p1])
            })
            .collect()
    }

    fn feed(acc: &mut Accumulator, rows: &[Row]) {
        for (u, i, w, t, hl, p) in rows {
            let pr: Vec<Option<&str>> = p.iter().map(|x| x.as_deref()).collect();
            acc.push(u, i, *w, *t, *hl, Some(&pr));
        }
    }

    fn build(rows: &[Row], reference: Option<i64>) -> Accumulator {
        let mut acc = Accumulator::new(2);
        acc.set_reference(reference);
        feed(&mut acc, rows);
        acc
    }

    fn shuffle<T>(v: &mut [T], g: &mut Rng) {
        for i in (1..v.len()).rev() {
            let j = g.below(i as u64 + 1) as usize;
            v.swap(i, j);
        }
    }

    /// The in-place merge equals concatenating, sorting (stable: `a`'s entry first) and
    /// combining equal keys, whatever the overlap and lengths.
    #[test]
    fn merge_back_equals_sort_and_dedupe() {
        let hls = [None, Some(DAY)];
        let mut g = Rng(11);
        let list = |n: usize, g: &mut Rng| -> Vec<Entry> {
            let mut v: Vec<Entry> = (0..n)
                .map(|_| Entry {
                    user: g.below(6) as u32,
                    item: g.below(5) as u32,
                    slot: g.below(2) as u8,
                    time: g.below(4) as i64 * DAY + g.below(1000) as i64,
                    value: g.below(8) as f64 * 0.25,
                })
                .collect();
            sort_entries(&mut v, 6, 5, 1);
            let m = dedupe_sorted(&mut v, &hls);
            v.truncate(m);
            v
        };
        let bits = |v: &[Entry]| -> Vec<(u128, i64, u64)> {
            v.iter()
                .map(|e| (e.key(), e.time, e.value.to_bits()))
                .collect()
        };
        for (na, nb) in [(0, 0), (0, 7), (9, 0), (1, 1), (40, 3), (3, 40), (200, 200)] {
            for _ in 0..20 {
                let (a, b) = (list(na, &mut g), list(nb, &mut g));
                let mut want: Vec<Entry> = a.iter().chain(&b).copied().collect();
                want.sort_by_key(|e| e.key());
                let m = dedupe_sorted(&mut want, &hls);
                want.truncate(m);
                let mut got = a.clone();
                merge_back(&mut got, b.len(), b.iter().rev().copied(), &hls);
                assert_eq!(bits(&got), bits(&want), "{na} + {nb}");
                // With `a` renumbered as it is read (a monotone map, which makes some of its
                // keys meet b's): the same as renumbering it first.
                let map = |mut e: Entry| {
                    e.user = 2 * e.user + 1;
                    e.item *= 3;
                    e
                };
                let mut want: Vec<Entry> =
                    a.iter().map(|&e| map(e)).chain(b.iter().copied()).collect();
                want.sort_by_key(|e| e.key());
                let m = dedupe_sorted(&mut want, &hls);
                want.truncate(m);
                let mut got = a.clone();
                merge_back_mapped(&mut got, b.len(), b.iter().rev().copied(), &hls, Some(map));
                assert_eq!(bits(&got), bits(&want), "{na} + {nb}, renumbered");
            }
        }
    }

    /// The radix passes order packed (key bits, position) values as a comparison sort does, for
    /// keys of 1 to 58 bits, one digit or several, short and long slices, many equal keys.
    #[test]
    fn radix_sort_packed_equals_comparison_sort() {
        let mut g = Rng(11);
        let mut scratch = Vec::new();
        for (n, bits, distinct) in [
            (2usize, 1u32, 2u64),
            (5, 3, 8),
            (1000, 12, 4096),
            (1000, 13, 50),
            (30_000, 37, 1 << 37),
            (30_000, 37, 3),
            (70_000, 45, 1 << 45),
            (16, 58, 1 << 58),
        ] {
            let idx_bits = u64::BITS - (n as u64).leading_zeros();
            assert!(bits + idx_bits <= 64);
            let mut v: Vec<u64> = (0..n)
                .map(|j| ((g.below(distinct) & low_mask(bits)) << idx_bits) | j as u64)
                .collect();
            let mut want = v.clone();
            want.sort_unstable();
            radix_sort_packed(&mut v, &mut scratch, idx_bits, bits);
            assert_eq!(v, want, "{n} values of {bits} bits");
        }
    }

    /// Long slices are bucket sorted on the packed key: the same order as the general key, for
    /// ranges of ids, days (before and after the epoch) and slots, a slice of one key, and one
    /// of few keys.
    #[test]
    fn bucket_sort_orders_as_the_general_key() {
        let mut g = Rng(5);
        for (n, users, items, days, slots) in [
            (BUCKET_MIN, 1u64, 1u64, 1u64, 1u64),
            (BUCKET_MIN + 7, 3000, 40, 900, 3),
            (40_000, 4, 3, 2, 2),
            (60_000, 70_000, 5000, 2, 256),
            (50_000, 1 << 20, 1 << 16, 20_000, 7),
            // Keys too wide to pack with the position: compared as pairs.
            (120_000, 1 << 25, 1 << 21, 8_000, 7),
        ] {
            let mut v: Vec<Entry> = (0..n)
                .map(|_| Entry {
                    user: g.below(users) as u32,
                    item: g.below(items) as u32,
                    slot: g.below(slots) as u8,
                    time: (g.below(days) as i64 - days as i64 / 2) * DAY
                        + g.below(DAY as u64) as i64,
                    value: g.below(8) as f64,
                })
                .collect();
            let mut want = v.clone();
            want.sort_by_key(|e| e.key());
            let input = v.clone();
            sort_entries(&mut v, users as usize, items as usize, 1);
            let keys = |v: &[Entry]| v.iter().map(|e| e.key()).collect::<Vec<_>>();
            assert_eq!(keys(&v), keys(&want), "{n} entries, {users} users");
            // Nothing is lost or changed (equal keys may change their order).
            let all = |v: &[Entry]| -> Vec<(u128, i64, u64)> {
                let mut a: Vec<_> = v
                    .iter()
                    .map(|e| (e.key(), e.time, e.value.to_bits()))
                    .collect();
                a.sort_unstable();
                a
            };
            assert_eq!(all(&v), all(&want), "{n} entries, {users} users");
            // On more threads, the same order entry for entry (equal keys included).
            let exact = |v: &[Entry]| -> Vec<(u128, i64, u64)> {
                v.iter()
                    .map(|e| (e.key(), e.time, e.value.to_bits()))
                    .collect()
            };
            for threads in [2, 3, 8] {
                let mut w = input.clone();
                sort_entries(&mut w, users as usize, items as usize, threads);
                assert_eq!(exact(&w), exact(&v), "{n} entries, {threads} threads");
            }
        }
        assert!(WIDE_BUCKETS.load(std::sync::atomic::Ordering::Relaxed) > 0);
    }

    /// The threaded finish cuts the entries at user boundaries: the same matrix, records and
    /// dropped pairs (negative weights) on any number of threads, with users of many entries
    /// across the cuts.
    #[test]
    fn finish_on_threads_equals_one_thread() {
        let mut g = Rng(7);
        let mut acc = Accumulator::new(0);
        let mut pushed = std::collections::HashSet::new();
        for _ in 0..150_000 {
            // A few heavy users (hundreds of entries) among many light ones.
            let u = if g.below(4) == 0 {
                g.below(5)
            } else {
                g.below(4000)
            };
            let w = g.below(7) as f64 - 1.5;
            let t = g.below(300) as i64 * DAY + g.below(DAY as u64) as i64;
            let hl = if g.below(2) == 0 { None } else { Some(7 * DAY) };
            let i = g.below(300);
            pushed.insert((u, i));
            acc.push(&format!("u{u}"), &format!("i{i}"), w, t, hl, None);
        }
        let one = acc.clone_for_test().finish();
        assert!(one.matrix.nnz() > 50_000 && one.occasions.len() > 65_536);
        assert!(
            pushed.len() > one.matrix.nnz() + 1000,
            "pairs with a negative sum are dropped"
        );
        for threads in [2, 3, 8] {
            assert_eq!(
                acc.clone_for_test().finish_with_threads(threads),
                one,
                "{threads} threads"
            );
        }
    }

    #[test]
    fn deterministic_under_shuffle_split_and_merge_order() {
        let rows = dyadic_rows(3000, 7);
        let reference = Some(40 * DAY);
        let base = build(&rows, reference).finish();
        assert!(base.matrix.nnz() > 100);
        let mut g = Rng(99);
        for round in 0..6 {
            let mut r = rows.clone();
            shuffle(&mut r, &mut g);
            assert_eq!(
                build(&r, reference).finish(),
                base,
                "shuffled push, round {round}"
            );
            // split into 3 partial states
            let c1 = g.below(r.len() as u64) as usize;
            let c2 = c1 + g.below((r.len() - c1) as u64) as usize;
            let mut parts: Vec<Accumulator> = vec![
                build(&r[..c1], reference),
                build(&r[c1..c2], reference),
                build(&r[c2..], reference),
            ];
            if round % 2 == 1 {
                // go through the wire format like parallel workers do
                parts = parts
                    .into_iter()
                    .map(|mut p| Accumulator::deserialize(&p.serialize()).unwrap())
                    .collect();
            }
            let order: [usize; 3] = [
                [0, 1, 2],
                [2, 1, 0],
                [1, 2, 0],
                [1, 0, 2],
                [2, 0, 1],
                [0, 2, 1],
            ][round];
            let mut taken: Vec<Option<Accumulator>> = parts.into_iter().map(Some).collect();
            let mut acc = if round == 0 {
                Accumulator::new(2)
            } else {
                taken[order[0]].take().unwrap()
            };
            for &o in &order {
                if let Some(p) = taken[o].take() {
                    acc.merge(p);
                }
            }
            assert_eq!(acc.rows(), rows.len() as u64);
            assert_eq!(acc.finish(), base, "merge order {order:?}");
        }
    }

    /// A serialized state merged read in place ([`Accumulator::merge_view`]) gives what decoding
    /// it and merging gives: into a blank state and into a built one, in any order, with blank
    /// and one-sided parts (users and items only one part has), properties included.
    #[test]
    fn merge_view_equals_merge_of_the_decoded_state() {
        let mut rows = dyadic_rows(4000, 13);
        // Users and items of one part only.
        rows.extend(dyadic_rows(300, 14).into_iter().map(|mut r| {
            r.0.push('x');
            r.1.push('y');
            r
        }));
        let reference = Some(40 * DAY);
        let mut g = Rng(3);
        for round in 0..8 {
            let mut r = rows.clone();
            shuffle(&mut r, &mut g);
            let c1 = g.below(r.len() as u64) as usize;
            let c2 = c1 + g.below((r.len() - c1) as u64) as usize;
            let cuts = [&r[..c1], &r[c1..c2], &r[c2..], &r[..0]];
            let bytes: Vec<Vec<u8>> = cuts
                .iter()
                .map(|c| build(c, reference).serialize())
                .collect();
            let (mut decoded, mut viewed, first) = if round % 2 == 0 {
                (Accumulator::new(2), Accumulator::new(2), 0)
            } else {
                (build(cuts[0], reference), build(cuts[0], reference), 1)
            };
            for k in (first..4).rev() {
                decoded.merge(Accumulator::deserialize(&bytes[k]).unwrap());
                viewed.merge_view(StateView::parse(&bytes[k]).unwrap());
            }
            assert_eq!(viewed.rows(), rows.len() as u64);
            assert_eq!(viewed.serialize(), decoded.serialize(), "round {round}");
            assert_eq!(viewed.finish(), decoded.finish(), "round {round}");
        }
        let whole = build(&rows, reference).finish();
        let mut viewed = Accumulator::new(2);
        let bytes = build(&rows, reference).serialize();
        viewed.merge_view(StateView::parse(&bytes).unwrap());
        assert_eq!(viewed.finish(), whole);
        // A blank state of more properties keeps its count, either way.
        let mut wide = Accumulator::new(3);
        wide.merge_view(StateView::parse(&bytes).unwrap());
        assert_eq!((wide.n_props(), wide.props.len()), (3, 3));
        let mut wide = Accumulator::new(3);
        wide.merge(Accumulator::deserialize(&bytes).unwrap());
        assert_eq!((wide.n_props(), wide.props.len()), (3, 3));
    }

    /// The leader's combine step on threads (the state's sort, renumbering and the merge in parts
    /// of users): the same state byte for byte as on one thread, merging decoded states and states
    /// read in place, with users and items of one side only and keys met on both sides.
    #[test]
    fn merges_on_threads_equal_one_thread() {
        let mut g = Rng(21);
        let mut part = |n: usize, users: u64, tag: &str| -> Vec<Row> {
            (0..n)
                .map(|_| {
                    let u = format!("u{}{tag}", g.below(users));
                    let i = format!("i{}", g.below(60));
                    let w = g.below(8) as f64 * 0.5;
                    let t = g.below(20) as i64 * DAY;
                    let hl = if g.below(2) == 0 { None } else { Some(DAY) };
                    (u, i, w, t, hl, vec![None, Some(format!("b{}", g.below(3)))])
                })
                .collect()
        };
        // Many keys (more than one thread's share: 2^16 entries), some users of one part only.
        let (p0, p1, p2) = (
            part(60_000, 4000, ""),
            part(50_000, 4000, "x"),
            part(40_000, 3000, ""),
        );
        let reference = Some(30 * DAY);
        let (b1, b2) = (
            build(&p1, reference).serialize(),
            build(&p2, reference).serialize(),
        );
        let combined = |threads: usize| -> Vec<u8> {
            let mut lead = build(&p0, reference);
            lead.set_threads(threads);
            assert!(lead.entries.len() + StateView::parse(&b1).unwrap().len() > 1 << 16);
            lead.merge_view(StateView::parse(&b1).unwrap());
            lead.merge(Accumulator::deserialize(&b2).unwrap());
            lead.serialize()
        };
        let one = combined(1);
        for threads in [2, 3, 8] {
            assert!(combined(threads) == one, "{threads} threads");
        }
        // A blank state keeps its threads when a state is merged into it (its first combine).
        let (mut blank, mut blank_view) = (Accumulator::new(2), Accumulator::new(2));
        blank.set_threads(3);
        blank_view.set_threads(3);
        blank.merge(Accumulator::deserialize(&b1).unwrap());
        blank_view.merge_view(StateView::parse(&b1).unwrap());
        assert_eq!((blank.threads, blank_view.threads), (3, 3));
        let mut all = p0.clone();
        all.extend(p1.iter().cloned());
        all.extend(p2.iter().cloned());
        let whole = Accumulator::deserialize(&one).unwrap().finish();
        assert_eq!(whole, build(&all, reference).finish());
    }

    #[test]
    fn occasions_count_distinct_days_exactly() {
        // Several events a day, out of order, in two partial states split mid-day.
        let mut rows = Vec::new();
        let mut g = Rng(5);
        for _ in 0..2000 {
            let u = format!("u{}", g.below(15));
            let i = format!("i{}", g.below(6));
            let t = g.below(20) as i64 * DAY + g.below(DAY as u64 / 1000) as i64 * 1000;
            rows.push((
                u,
                i,
                1.0 + g.below(3) as f64,
                t,
                if g.below(2) == 0 { None } else { Some(7 * DAY) },
                vec![None, None],
            ));
        }
        let whole = build(&rows, None).finish();
        let mut a = build(&rows[..777], None);
        a.merge(Accumulator::deserialize(&build(&rows[777..], None).serialize()).unwrap());
        let merged = a.finish();
        assert_eq!(merged.occasions, whole.occasions);
        assert_eq!(merged.matrix.indices, whole.matrix.indices);
        let o = &whole.occasions;
        assert_eq!(o.ptr.len(), whole.matrix.nnz() + 1);
        for u in 0..whole.users.len() {
            let (cols, _) = whole.matrix.row(u);
            for (k, &c) in cols.iter().enumerate() {
                let p = whole.matrix.indptr[u] + k;
                let mut want: Vec<i64> = rows
                    .iter()
                    .filter(|r| r.0 == whole.users[u] && r.1 == whole.items[c as usize])
                    .map(|r| r.3.div_euclid(DAY))
                    .collect();
                want.sort();
                want.dedup();
                let mut got: Vec<i64> = o.range(p).map(|r| o.day(r) as i64).collect();
                got.dedup(); // two half-life slots of one day are two records
                assert_eq!(got, want, "user {u} item {c}");
                // The record time is the day's latest event of that slot.
                let latest = rows
                    .iter()
                    .filter(|r| r.0 == whole.users[u] && r.1 == whole.items[c as usize])
                    .map(|r| r.3)
                    .max()
                    .unwrap();
                assert_eq!(
                    o.range(p)
                        .map(|r| o.minute[r] as i64 * MINUTE_US)
                        .max()
                        .unwrap(),
                    latest.div_euclid(MINUTE_US) * MINUTE_US
                );
            }
        }
    }

    /// Positive weights only: a pair whose whole history sums to <= 0 is dropped by finish(),
    /// occasions included, so a split cannot recover its earlier positive part.
    fn positive_rows() -> Vec<Row> {
        dyadic_rows(3000, 11)
            .into_iter()
            .filter(|r| r.2 > 0.0)
            .collect()
    }

    #[test]
    fn until_equals_a_scan_of_the_earlier_days() {
        let rows = positive_rows();
        let full = build(&rows, None).finish();
        for cut in [5i64, 17, 29] {
            let before: Vec<Row> = rows.iter().filter(|r| r.3 < cut * DAY).cloned().collect();
            let want = build(&before, None).finish().without_empty();
            let got = full.until(cut as i32);
            assert_eq!(got.users, want.users, "cut {cut}");
            assert_eq!(got.items, want.items);
            assert_eq!(got.matrix, want.matrix);
            assert_eq!(got.last_seen, want.last_seen);
            assert_eq!(got.occasions, want.occasions);
            assert_eq!(got.reference_us, want.reference_us);
        }
    }

    /// Every step-th user of the full matrix: the same pairs, values, occasions and reference
    /// time as `until`, restricted to those users (the reference stays that of all users).
    #[test]
    fn until_every_keeps_every_step_th_user() {
        let full = build(&positive_rows(), None).finish();
        let cut = 23i32;
        let all = full.until(cut);
        let every = full.until_every(cut, 3);
        assert_eq!(every.reference_us, all.reference_us);
        let kept: Vec<&String> = full
            .users
            .iter()
            .enumerate()
            .filter(|(u, _)| u % 3 == 0)
            .map(|(_, n)| n)
            .filter(|n| all.users.contains(n))
            .collect();
        assert_eq!(every.users.iter().collect::<Vec<_>>(), kept);
        assert!(every.users.len() < all.users.len());
        for (r, name) in every.users.iter().enumerate() {
            let ra = all.users.iter().position(|n| n == name).unwrap();
            let (ce, ve) = every.matrix.row(r);
            let (ca, va) = all.matrix.row(ra);
            let names = |cs: &[u32], a: &Affinity| -> Vec<String> {
                cs.iter().map(|&c| a.items[c as usize].clone()).collect()
            };
            assert_eq!(names(ce, &every), names(ca, &all), "{name}");
            assert_eq!(ve, va, "{name}");
        }
        assert_eq!(full.until_every(cut, 1), all);
    }

    #[test]
    fn compaction_matches_single_pass() {
        // many rows over few keys forces compactions inside push; compare with a reference sum
        let mut acc = Accumulator::new(0);
        (acc.min_compact, acc.threshold) = (1 << 16, 1 << 16);
        let mut g = Rng(5);
        let mut expect = std::collections::BTreeMap::<(String, String), f64>::new();
        let n = (1 << 16) * 8 + 12345;
        for _ in 0..n {
            let u = format!("u{}", g.below(300));
            let i = format!("i{}", g.below(300));
            let w = g.below(4) as f64;
            acc.push(&u, &i, w, 0, None, None);
            *expect.entry((u, i)).or_default() += w;
        }
        // Compacted: about 2x the 90,000 keys, not the 536,633 rows pushed (13 MB of entries).
        assert!(acc.memory_bytes() < 8 << 20, "{}", acc.memory_bytes());
        let a = acc.finish();
        let mut got = std::collections::BTreeMap::new();
        for r in 0..a.users.len() {
            let (cols, vals) = a.matrix.row(r);
            for (&c, &v) in cols.iter().zip(vals) {
                got.insert((a.users[r].clone(), a.items[c as usize].clone()), v as f64);
            }
        }
        expect.retain(|_, v| *v > 0.0);
        assert_eq!(got, expect);
    }

    /// Users are interned a batch at a time: every read of the state (merge, serialize, finish)
    /// sees the rows of a batch that is not full yet, under the same ids as row-by-row interning.
    #[test]
    fn users_of_a_partial_batch_are_seen_by_every_read() {
        // Users, items and property values are all held back until a batch is full: every read
        // (merge, serialize, finish) sees the open batch's rows too.
        let rows: Vec<(String, String)> = (0..ROW_BATCH * 2 + 5)
            .map(|k| (format!("u{}", k % 7), format!("i{}", k % 3)))
            .collect();
        let push_all = |acc: &mut Accumulator, rows: &[(String, String)], first: usize| {
            for (k, (u, i)) in rows.iter().enumerate() {
                let t = (first + k) as i64;
                let colour = format!("c{t}");
                let props = [Some(colour.as_str()), (t % 2 == 0).then_some("even")];
                acc.push(u, i, 1.0, t, None, Some(&props));
            }
        };
        let mut whole = Accumulator::new(2);
        push_all(&mut whole, &rows, 0);
        assert_eq!(whole.pending.len(), 5, "the test leaves a batch open");
        assert!(whole.entries.iter().rev().take(5).all(|e| e.item == NO_ID));
        let mut left = Accumulator::new(2);
        push_all(&mut left, &rows[..3], 0);
        let mut right = Accumulator::new(2);
        push_all(&mut right, &rows[3..], 3);
        left.merge(right);
        let bytes = whole.serialize();
        assert_eq!(left.serialize(), bytes, "merged partial batches");
        let mut fresh = Accumulator::new(2);
        push_all(&mut fresh, &rows, 0);
        let a = fresh.finish();
        assert_eq!(a.users.len(), 7);
        assert_eq!(a.matrix.nnz(), 21);
        let total: f32 = a.matrix.data.iter().sum();
        assert_eq!(total, rows.len() as f32, "every row counted once");
        // Each item's latest row wins: item k % 3 was last seen at the last t with that rest,
        // one of the open batch's rows.
        let n = rows.len();
        for (j, name) in a.items.iter().enumerate() {
            let last = (0..n)
                .rev()
                .find(|t| format!("i{}", t % 3) == *name)
                .unwrap();
            assert!(
                last >= n - 5,
                "the latest row of {name} is in the open batch"
            );
            assert_eq!(
                a.item_props[0][j].as_deref(),
                Some(format!("c{last}").as_str())
            );
            let even = (0..n)
                .rev()
                .find(|t| format!("i{}", t % 3) == *name && t % 2 == 0);
            assert_eq!(a.item_props[1][j].is_some(), even.is_some());
        }
    }

    #[test]
    fn serialize_round_trip() {
        let rows = dyadic_rows(2000, 11);
        let mut acc = build(&rows, Some(35 * DAY));
        acc.push("zz", "item0", 1.0, 3, Some(12345), None); // an odd half-life slot
        let bytes = acc.serialize();
        let mut back = Accumulator::deserialize(&bytes).unwrap();
        assert_eq!(back.rows(), acc.rows());
        assert_eq!(
            back.serialize(),
            bytes,
            "re-serialization is byte-identical"
        );
        // pushing into a deserialized state works
        let mut back2 = Accumulator::deserialize(&bytes).unwrap();
        back2.push("aaa", "item0", 2.0, 0, None, None);
        acc.push("aaa", "item0", 2.0, 0, None, None);
        assert_eq!(back2.finish(), acc.finish());
        assert_eq!(back.finish(), {
            let mut a = build(&rows, Some(35 * DAY));
            a.push("zz", "item0", 1.0, 3, Some(12345), None);
            a.finish()
        });
        // empty state
        let mut e = Accumulator::new(4);
        let b = e.serialize();
        let a = Accumulator::deserialize(&b).unwrap().finish();
        assert_eq!(
            (a.users.len(), a.item_props.len(), a.rows, a.reference_us),
            (0, 4, 0, 0)
        );
    }

    /// The state written a few MB at a time is the same bytes as `serialize`'s.
    #[test]
    fn serialize_into_pieces_equals_serialize() {
        let mut acc = Accumulator::new(2);
        for k in 0..700_000u64 {
            let (u, i) = (format!("u{}", k % 50_021), format!("i{}", k % 997));
            acc.push(
                &u,
                &i,
                1.0 + (k % 3) as f64,
                k as i64 * 1000,
                Some(DAY),
                None,
            );
        }
        use crate::affinity::state_codec::FLUSH_AT_FOR_TESTS;
        let whole = acc.serialize();
        assert!(
            whole.len() > 3 * FLUSH_AT_FOR_TESTS,
            "{} bytes",
            whole.len()
        );
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        let n = acc
            .serialize_into(|b| {
                pieces.push(b.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(n as usize, whole.len());
        assert!(pieces.len() >= 3);
        assert!(pieces[..pieces.len() - 1]
            .iter()
            .all(|p| p.len() >= FLUSH_AT_FOR_TESTS));
        assert_eq!(pieces.concat(), whole);
        // An error from the writer comes back as it is.
        let err = acc
            .serialize_into(|_| Err(std::io::Error::other("disk full")))
            .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        // A small state: one piece.
        let mut small = build(&dyadic_rows(300, 5), None);
        let mut one = Vec::new();
        small
            .serialize_into(|b| {
                one.push(b.to_vec());
                Ok(())
            })
            .unwrap();
        assert_eq!(one, vec![small.serialize()]);
    }

    #[test]
    fn corrupt_or_truncated_bytes_are_errors() {
        let rows = dyadic_rows(300, 3);
        let bytes = build(&rows, None).serialize();
        assert!(Accumulator::deserialize(&bytes).is_ok());
        for n in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
            assert!(
                Accumulator::deserialize(&bytes[..n]).is_err(),
                "truncated at {n}"
            );
        }
        let mut g = Rng(1234);
        let mut errs = 0;
        for _ in 0..2000 {
            let mut b = bytes.clone();
            for _ in 0..1 + g.below(4) {
                let p = g.below(b.len() as u64) as usize;
                b[p] = g.next() as u8;
            }
            match Accumulator::deserialize(&b) {
                Err(_) => errs += 1,
                Ok(mut a) => {
                    // whatever got through must still be usable without panicking
                    let _ = a.serialize();
                    let _ = a.finish();
                }
            }
        }
        assert!(errs > 100, "{errs}");
        for len in 0..200 {
            let g2: Vec<u8> = (0..len).map(|_| g.next() as u8).collect();
            assert!(Accumulator::deserialize(&g2).is_err());
        }
        let mut b = bytes.clone();
        b.push(0);
        assert!(Accumulator::deserialize(&b).is_err());
    }

    #[test]
    fn ids_sorted_by_text() {
        let mut acc = Accumulator::new(1);
        for (u, i) in [
            ("zed", "b"),
            ("Alice", "é"),
            ("bob", "a"),
            ("alice", "B"),
            ("", "ab"),
            ("bob", "b"),
        ] {
            acc.push(u, i, 1.0, 0, None, Some(&[Some(i)]));
        }
        let a = acc.finish();
        assert_eq!(a.users, vec!["", "Alice", "alice", "bob", "zed"]);
        assert_eq!(a.items, vec!["B", "a", "ab", "b", "é"]);
        assert_eq!(
            a.item_props[0],
            a.items.iter().map(|s| Some(s.clone())).collect::<Vec<_>>()
        );
        for r in 0..a.matrix.n_rows {
            assert!(a.matrix.row(r).0.windows(2).all(|w| w[0] < w[1]));
        }
        assert_eq!(get(&a, "bob", "a"), Some((1.0, 0)));
        assert_eq!(get(&a, "bob", "b"), Some((1.0, 0)));
        assert_eq!(a.matrix.indptr, vec![0, 1, 2, 3, 5, 6]);
    }

    #[test]
    fn long_texts_and_many_ids() {
        // texts longer than the inline slot size, plus enough ids to force table growth
        let long_u = |k: usize| format!("a-very-long-user-identifier-{k:06}-with-padding");
        let long_p = "a property value that is longer than twenty-two bytes";
        let mut acc = Accumulator::new(1);
        for k in (0..5000).rev() {
            acc.push(
                &long_u(k),
                &format!("i{}", k % 7),
                1.0,
                k as i64,
                None,
                Some(&[Some(long_p)]),
            );
            acc.push(
                &format!("u{k}"),
                &format!("item-{}-{}", k % 3, "x".repeat(30)),
                2.0,
                0,
                None,
                None,
            );
            acc.push(&long_u(k), &format!("i{}", k % 7), 0.5, 0, None, None);
        }
        let mut bytes = acc.serialize();
        let mut back = Accumulator::deserialize(&bytes).unwrap();
        back.push(&long_u(123), "i4", 1.0, 1, None, Some(&[Some("short")]));
        back.push(&long_u(99_999), "i4", 1.0, 1, None, None);
        assert_eq!(back.rows(), 15_002);
        bytes = back.serialize();
        let a = Accumulator::deserialize(&bytes).unwrap().finish();
        assert_eq!(a.users.len(), 10_001);
        assert!(a.users.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(get(&a, &long_u(123), "i4"), Some((2.5, 123)));
        assert_eq!(get(&a, &long_u(99_999), "i4"), Some((1.0, 1)));
        assert_eq!(
            get(&a, "u42", &format!("item-0-{}", "x".repeat(30))),
            Some((2.0, 0))
        );
        let i4 = a.items.iter().position(|x| x == "i4").unwrap();
        assert_eq!(a.item_props[0][i4].as_deref(), Some(long_p)); // k=4998 at t=4998 beats "short" at t=1
        let i0 = a
            .items
            .iter()
            .position(|x| x.starts_with("item-0"))
            .unwrap();
        assert_eq!(a.item_props[0][i0], None);
    }

    #[test]
    #[should_panic(expected = "half-life must be positive")]
    fn non_positive_half_life_panics() {
        Accumulator::new(0).push("u", "i", 1.0, 0, Some(0), None);
    }

    #[test]
    fn without_empty_drops_users_and_items_without_pairs() {
        let mut a = Accumulator::new(1);
        a.push("u1", "i1", 1.0, 0, None, Some(&[Some("x")]));
        a.push("u2", "i2", 1.0, 0, None, Some(&[Some("y")]));
        a.push("u2", "i2", -2.0, 0, None, None);
        a.push("u3", "i3", 2.0, 0, None, Some(&[Some("z")]));
        let f = a.finish().without_empty();
        assert_eq!(f.users, vec!["u1", "u3"]);
        assert_eq!(f.items, vec!["i1", "i3"]);
        assert_eq!(f.matrix.row(1), (&[1u32][..], &[2.0f32][..]));
        assert_eq!(
            f.item_props,
            vec![vec![Some("x".to_string()), Some("z".to_string())]]
        );
        assert_eq!(f.last_seen.len(), f.matrix.nnz());
    }

    #[test]
    fn reference_cap_keeps_a_future_event_from_decaying_the_rest() {
        let day = 86_400_000_000i64;
        let mut a = Accumulator::new(0);
        a.push("u", "old", 1.0, 0, Some(day), None);
        a.push("u", "future", 1.0, 1000 * day, Some(day), None);
        let mut capped = a.clone_for_test();
        capped.set_reference_cap(Some(day));
        let f = capped.finish();
        assert_eq!(f.reference_us, day);
        // "old" is one half-life before the capped reference; "future" counts as at it.
        assert_eq!(f.matrix.data, vec![1.0, 0.5]);
        // Uncapped, the future event sets the reference and "old" decays to nothing.
        assert_eq!(a.finish().matrix.nnz(), 1);
    }
}
