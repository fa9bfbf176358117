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
//! * When the vector has doubled since the last compaction, the unsorted tail is sorted,
//!   duplicates are combined, and it is merged into the sorted prefix. Memory therefore stays
//!   within about 2x the number of distinct (user, item, half-life) keys (plus a transient
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

use crate::util::codec::{invalid, CodecError, Reader, Writer};
use crate::util::csr::Csr;
use crate::util::hash::FxHasher;
use std::hash::Hasher;

const MAGIC: [u8; 4] = *b"PGAA";
const VERSION: u32 = 2;
/// Microseconds per (UTC) day: entries are keyed by `time.div_euclid(DAY_US)`.
pub const DAY_US: i64 = 86_400_000_000;
/// Entries buffered before the first compaction (about 25 MiB).
const MIN_COMPACT: usize = 1 << 20;
/// Distinct half-life values per aggregate (slot is a `u8`).
const MAX_SLOTS: usize = 256;
/// Sanity bound for the number of mapped properties in a serialized state.
const MAX_PROPS: usize = 1 << 16;
const NO_ID: u32 = u32::MAX;

/// One buffered contribution. Packed to 25 bytes: this vector is the bulk of the state.
#[derive(Clone, Copy)]
#[repr(C, packed)]
struct Entry {
    user: u32,
    item: u32,
    slot: u8,
    time: i64,
    value: f64,
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
    fn key(&self) -> u128 {
        let day = (self.day() as u32) ^ 0x8000_0000;
        ((self.user as u128) << 72)
            | ((self.item as u128) << 40)
            | ((day as u128) << 8)
            | self.slot as u128
    }
}

/// `2^(-dt / half_life)` for `dt >= 0`; 1 when there is no decay or `dt <= 0`.
#[inline]
fn decay(dt: i128, half_life: Option<i64>) -> f64 {
    match half_life {
        Some(h) if dt > 0 => (-(dt as f64) / (h as f64)).exp2(),
        _ => 1.0,
    }
}

/// Combines two entries of the same key: the older value is rescaled to the newer time.
#[inline]
fn combine(a: Entry, b: Entry, hls: &[Option<i64>]) -> Entry {
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
fn dedupe_sorted(v: &mut [Entry], hls: &[Option<i64>]) -> usize {
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

/// Sorts by (user, item, day, slot). When the ids and the slice's day range fit, the key is
/// packed into a `u64` (cheaper to compare than the general `u128` key); the order is the same
/// either way.
fn sort_entries(v: &mut [Entry], n_users: usize, n_items: usize) {
    let bits = |n: u64| u64::BITS - n.leading_zeros();
    let (mut lo, mut hi) = (i32::MAX, i32::MIN);
    for e in v.iter() {
        let d = e.day();
        lo = lo.min(d);
        hi = hi.max(d);
    }
    if v.is_empty() {
        return;
    }
    let day_bits = bits((hi as i64 - lo as i64) as u64);
    let item_shift = 8 + day_bits;
    let user_shift = item_shift + bits(n_items as u64);
    if user_shift + bits(n_users as u64) <= 64 {
        v.sort_unstable_by_key(|e| {
            ((e.user as u64) << user_shift)
                | ((e.item as u64) << item_shift)
                | (((e.day() as i64 - lo as i64) as u64) << 8)
                | e.slot as u64
        });
    } else {
        v.sort_unstable_by_key(|e| e.key());
    }
}

/// First 8 bytes of a string as a big-endian integer (zero padded): orders like the bytes.
#[inline]
fn prefix8(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    u64::from_be_bytes(a)
}

/// Texts up to this many bytes are stored inline in the interner's hash slots.
const INLINE: usize = 24;
const EMPTY: u32 = 0;
const LONG: u32 = u32::MAX;

/// One slot of the interner's open-addressing table, half a cache line. `meta` is `EMPTY`,
/// `len + 1` for an inline text (bytes in `data`, zero padded), or `LONG` (then `data` holds the
/// 64-bit hash and the index of the text in `Interner::long`).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct Slot {
    meta: u32,
    id: u32,
    data: [u8; INLINE],
}

const EMPTY_SLOT: Slot = Slot {
    meta: EMPTY,
    id: 0,
    data: [0; INLINE],
};

#[inline]
fn hash_bytes(b: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(b);
    h.write_u8(0xff);
    h.finish()
}

/// Maps texts to dense ids. Two representations: a hash table while pushing (ids in first-seen
/// order), or `names` sorted by byte order with id == index (canonical; after sorting or
/// deserializing). Exactly one is populated.
///
/// The table is a linear-probing table whose slots hold short texts inline, so a lookup costs
/// one cache miss (the slot) instead of two or three (control bytes, bucket, text).
#[derive(Default)]
struct Interner {
    slots: Vec<Slot>,
    /// Number of texts in the table.
    n: usize,
    /// Texts longer than `INLINE` (table mode only).
    long: Vec<Box<str>>,
    names: Vec<Box<str>>,
    /// `names` is authoritative (and sorted); the table is empty.
    sorted: bool,
    /// Total text bytes, for memory accounting.
    bytes: usize,
}

impl Interner {
    fn new() -> Self {
        Interner {
            sorted: true,
            ..Default::default()
        }
    }

    fn len(&self) -> usize {
        if self.sorted {
            self.names.len()
        } else {
            self.n
        }
    }

    /// Switches to the table representation, keeping ids.
    #[cold]
    fn switch_to_table(&mut self) {
        let names = std::mem::take(&mut self.names);
        self.sorted = false;
        self.n = 0;
        self.long.clear();
        let mut cap = 16usize;
        while cap < 2 * names.len() + 2 {
            cap *= 2;
        }
        self.slots = vec![EMPTY_SLOT; cap];
        for n in names.into_iter() {
            let id = self.n as u32;
            let h = hash_bytes(n.as_bytes());
            if n.len() <= INLINE {
                self.insert_new(n.as_bytes(), h, id, None);
            } else {
                let copy = n.as_bytes().to_vec();
                self.insert_new(&copy, h, id, Some(n));
            }
        }
    }

    /// Inserts a text known to be absent (may grow the table).
    fn insert_new(&mut self, b: &[u8], h: u64, id: u32, owned: Option<Box<str>>) {
        if 2 * (self.n + 1) > self.slots.len() {
            self.grow();
        }
        let mut slot = Slot {
            meta: EMPTY,
            id,
            data: [0; INLINE],
        };
        if b.len() <= INLINE {
            slot.meta = b.len() as u32 + 1;
            slot.data[..b.len()].copy_from_slice(b);
        } else {
            slot.meta = LONG;
            slot.data[..8].copy_from_slice(&h.to_le_bytes());
            slot.data[8..12].copy_from_slice(&(self.long.len() as u32).to_le_bytes());
            let text = owned.unwrap_or_else(|| {
                Box::from(std::str::from_utf8(b).expect("interned text is UTF-8"))
            });
            self.long.push(text);
        }
        let mask = self.slots.len() - 1;
        let mut pos = h as usize & mask;
        while self.slots[pos].meta != EMPTY {
            pos = (pos + 1) & mask;
        }
        self.slots[pos] = slot;
        self.n += 1;
    }

    #[cold]
    fn grow(&mut self) {
        let new_cap = (self.slots.len() * 2).max(16);
        let old = std::mem::replace(&mut self.slots, vec![EMPTY_SLOT; new_cap]);
        let mask = new_cap - 1;
        for sl in old.into_iter().filter(|s| s.meta != EMPTY) {
            let h = if sl.meta == LONG {
                u64::from_le_bytes(sl.data[..8].try_into().unwrap())
            } else {
                hash_bytes(&sl.data[..sl.meta as usize - 1])
            };
            let mut pos = h as usize & mask;
            while self.slots[pos].meta != EMPTY {
                pos = (pos + 1) & mask;
            }
            self.slots[pos] = sl;
        }
    }

    #[inline]
    fn intern(&mut self, s: &str) -> u32 {
        if self.sorted {
            self.switch_to_table();
        }
        let b = s.as_bytes();
        let h = hash_bytes(b);
        let mask = self.slots.len() - 1;
        let mut pos = h as usize & mask;
        if b.len() <= INLINE {
            let meta = b.len() as u32 + 1;
            let mut key = [0u8; INLINE];
            key[..b.len()].copy_from_slice(b);
            loop {
                let sl = &self.slots[pos];
                if sl.meta == meta && sl.data == key {
                    return sl.id;
                }
                if sl.meta == EMPTY {
                    break;
                }
                pos = (pos + 1) & mask;
            }
        } else {
            loop {
                let sl = &self.slots[pos];
                if sl.meta == LONG && sl.data[..8] == h.to_le_bytes() {
                    let idx = u32::from_le_bytes(sl.data[8..12].try_into().unwrap()) as usize;
                    if &*self.long[idx] == s {
                        return sl.id;
                    }
                }
                if sl.meta == EMPTY {
                    break;
                }
                pos = (pos + 1) & mask;
            }
        }
        let id = u32::try_from(self.n)
            .ok()
            .filter(|&i| i != NO_ID)
            .expect("more than 2^32-1 distinct ids");
        self.bytes += b.len();
        self.insert_new(b, h, id, None);
        id
    }

    /// Makes the representation canonical. Returns the old-id -> new-id map, or `None` when ids
    /// did not change.
    fn sort(&mut self) -> Option<Vec<u32>> {
        if self.sorted {
            return None;
        }
        let slots = std::mem::take(&mut self.slots);
        let mut long = std::mem::take(&mut self.long);
        let mut v: Vec<(u64, u32, Box<str>)> = Vec::with_capacity(self.n);
        for sl in slots.into_iter().filter(|s| s.meta != EMPTY) {
            let text: Box<str> = if sl.meta == LONG {
                let idx = u32::from_le_bytes(sl.data[8..12].try_into().unwrap()) as usize;
                std::mem::take(&mut long[idx])
            } else {
                Box::from(
                    std::str::from_utf8(&sl.data[..sl.meta as usize - 1])
                        .expect("interned text is UTF-8"),
                )
            };
            v.push((prefix8(text.as_bytes()), sl.id, text));
        }
        drop(long);
        v.sort_unstable_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.cmp(&b.2)));
        let mut remap = vec![0u32; v.len()];
        let mut identity = true;
        self.names = Vec::with_capacity(v.len());
        for (rank, (_, old, s)) in v.into_iter().enumerate() {
            remap[old as usize] = rank as u32;
            identity &= old as usize == rank;
            self.names.push(s);
        }
        self.sorted = true;
        self.n = 0;
        if identity {
            None
        } else {
            Some(remap)
        }
    }

    fn memory_bytes(&self) -> usize {
        // table mode: short texts live in the slots, long ones in their own allocation;
        // sorted mode: every name is its own allocation (~16 bytes allocator overhead each).
        self.slots.capacity() * std::mem::size_of::<Slot>()
            + self.long.capacity() * std::mem::size_of::<Box<str>>()
            + self.long.len() * 16
            + self.names.capacity() * std::mem::size_of::<Box<str>>()
            + self.names.len() * 16
            + self.bytes
    }
}

/// Merges two sorted, duplicate-free name lists; returns the union and both old -> new maps.
type MergedNames = (Vec<Box<str>>, Option<Vec<u32>>, Option<Vec<u32>>);

fn merge_names(a: Vec<Box<str>>, b: Vec<Box<str>>) -> MergedNames {
    let (na, nb) = (a.len(), b.len());
    let mut out = Vec::with_capacity(na + nb);
    let mut ra = Vec::with_capacity(na);
    let mut rb = Vec::with_capacity(nb);
    let mut ia = a.into_iter().peekable();
    let mut ib = b.into_iter().peekable();
    loop {
        let ord = match (ia.peek(), ib.peek()) {
            (Some(x), Some(y)) => x.cmp(y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => break,
        };
        let id = out.len() as u32;
        match ord {
            std::cmp::Ordering::Less => {
                ra.push(id);
                out.push(ia.next().unwrap());
            }
            std::cmp::Ordering::Greater => {
                rb.push(id);
                out.push(ib.next().unwrap());
            }
            std::cmp::Ordering::Equal => {
                ra.push(id);
                rb.push(id);
                out.push(ia.next().unwrap());
                ib.next();
            }
        }
    }
    assert!(out.len() < NO_ID as usize, "more than 2^32-1 distinct ids");
    let ident = |r: &Vec<u32>| r.iter().enumerate().all(|(i, &x)| i as u32 == x);
    let ra = if ident(&ra) { None } else { Some(ra) };
    let rb = if ident(&rb) { None } else { Some(rb) };
    (out, ra, rb)
}

/// A property value; short ones inline so the per-row comparison does not chase a pointer.
/// Always holds valid UTF-8 (built from `&str` only).
#[derive(Clone, Debug)]
enum PText {
    Inline { len: u8, buf: [u8; 22] },
    Heap(Box<str>),
}

impl PText {
    #[inline]
    fn new(s: &str) -> PText {
        if s.len() <= 22 {
            let mut buf = [0u8; 22];
            buf[..s.len()].copy_from_slice(s.as_bytes());
            PText::Inline {
                len: s.len() as u8,
                buf,
            }
        } else {
            PText::Heap(Box::from(s))
        }
    }

    fn from_box(s: Box<str>) -> PText {
        if s.len() <= 22 {
            PText::new(&s)
        } else {
            PText::Heap(s)
        }
    }

    #[inline]
    fn as_bytes(&self) -> &[u8] {
        match self {
            PText::Inline { len, buf } => &buf[..*len as usize],
            PText::Heap(b) => b.as_bytes(),
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("property text is UTF-8")
    }

    /// Heap bytes owned (for memory accounting).
    fn heap_len(&self) -> usize {
        match self {
            PText::Inline { .. } => 0,
            PText::Heap(b) => b.len() + 16,
        }
    }
}

/// Latest non-null value of one property of one item.
#[derive(Clone, Debug)]
struct PropVal {
    time: i64,
    value: Option<PText>,
}

impl Default for PropVal {
    fn default() -> Self {
        PropVal {
            time: i64::MIN,
            value: None,
        }
    }
}

impl PropVal {
    /// Latest time wins; on equal times the larger string wins. Returns the change in heap bytes.
    #[inline]
    fn update(&mut self, time: i64, v: &str) -> isize {
        let vb = v.as_bytes();
        match &self.value {
            Some(cur) if cur.as_bytes() == vb => {
                if time > self.time {
                    self.time = time;
                }
                0
            }
            Some(cur) => {
                if time > self.time || (time == self.time && vb > cur.as_bytes()) {
                    let old = cur.heap_len() as isize;
                    let new = PText::new(v);
                    let d = new.heap_len() as isize - old;
                    self.value = Some(new);
                    self.time = time;
                    d
                } else {
                    0
                }
            }
            None => {
                let new = PText::new(v);
                let d = new.heap_len() as isize;
                self.value = Some(new);
                self.time = time;
                d
            }
        }
    }

    /// Same rule as [`PropVal::update`], for merging states.
    fn merge(&mut self, other: PropVal) {
        let Some(ov) = other.value else { return };
        let take = match &self.value {
            None => true,
            Some(cur) => {
                other.time > self.time
                    || (other.time == self.time && ov.as_bytes() > cur.as_bytes())
            }
        };
        if take {
            self.value = Some(ov);
            self.time = other.time;
        } else if self.value.as_ref().map(|c| c.as_bytes()) == Some(ov.as_bytes())
            && other.time > self.time
        {
            self.time = other.time;
        }
    }
}

/// Aggregate state; see the module documentation.
pub struct Accumulator {
    n_props: usize,
    users: Interner,
    items: Interner,
    /// Distinct half-lives; an entry's `slot` indexes this table.
    hls: Vec<Option<i64>>,
    /// Cache of the last half-life looked up.
    last_hl: Option<(Option<i64>, u8)>,
    entries: Vec<Entry>,
    /// `entries[..sorted_len]` is sorted by key and has no duplicate keys.
    sorted_len: usize,
    /// Compact when `entries.len()` reaches this.
    threshold: usize,
    /// `[prop][item]`; an inner vector may be shorter than the item count (missing = null).
    props: Vec<Vec<PropVal>>,
    prop_bytes: usize,
    reference: Option<i64>,
    /// Upper bound of the default reference; local to the finishing backend, not serialized.
    reference_cap: Option<i64>,
    rows: u64,
    min_time: i64,
    max_time: i64,
}

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
            props: (0..n_props).map(|_| Vec::new()).collect(),
            prop_bytes: 0,
            reference: None,
            reference_cap: None,
            rows: 0,
            min_time: i64::MAX,
            max_time: i64::MIN,
        }
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
        let user = self.users.intern(user);
        let item = self.items.intern(item);
        let slot = self.slot_for(half_life_us);
        self.rows += 1;
        self.min_time = self.min_time.min(time_us);
        self.max_time = self.max_time.max(time_us);
        self.entries.push(Entry {
            user,
            item,
            slot,
            time: time_us,
            value: weight,
        });
        if let Some(vals) = props {
            let it = item as usize;
            for (p, v) in self.props.iter_mut().zip(vals) {
                if let Some(v) = v {
                    if p.len() <= it {
                        p.resize_with(it + 1, PropVal::default);
                    }
                    let d = p[it].update(time_us, v);
                    self.prop_bytes = (self.prop_bytes as isize + d) as usize;
                }
            }
        }
        if self.entries.len() >= self.threshold {
            self.compact();
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
    }

    fn is_blank(&self) -> bool {
        self.rows == 0 && self.entries.is_empty() && self.users.len() == 0 && self.items.len() == 0
    }

    /// Sorts and deduplicates the unsorted tail and merges it into the sorted prefix (ids and
    /// slots unchanged).
    fn compact(&mut self) {
        let p = self.sorted_len;
        let n = self.entries.len();
        if p < n {
            let hls = &self.hls;
            let tail = &mut self.entries[p..];
            sort_entries(tail, self.users.len(), self.items.len());
            let t = dedupe_sorted(tail, hls);
            self.entries.truncate(p + t);
            if p > 0 && self.entries[p - 1].key() >= self.entries[p].key() {
                // Backward merge of the prefix (in place) with a copy of the tail.
                let buf: Vec<Entry> = self.entries[p..].to_vec();
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
        self.threshold = MIN_COMPACT.max(2 * len);
        self.entries.reserve_exact(self.threshold - len);
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
    fn canonicalize(&mut self) {
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
        for e in self.entries.iter_mut() {
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
        sort_entries(&mut self.entries, self.users.len(), self.items.len());
        let m = dedupe_sorted(&mut self.entries, &self.hls);
        self.entries.truncate(m);
        self.sorted_len = m;
        self.threshold = MIN_COMPACT.max(2 * m);
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
        if self.reference.is_none() {
            self.reference = other.reference;
        }
        let n_props = self.n_props.max(other.n_props);
        self.n_props = n_props;
        other.n_props = n_props;
        if other.is_blank() {
            self.pad_props();
            return;
        }
        if self.is_blank() {
            let reference = self.reference;
            std::mem::swap(self, &mut other);
            self.reference = reference;
            self.pad_props();
            return;
        }
        self.canonicalize();
        other.canonicalize();

        let (users, ura, urb) = merge_names(
            std::mem::take(&mut self.users.names),
            std::mem::take(&mut other.users.names),
        );
        let (items, ira, irb) = merge_names(
            std::mem::take(&mut self.items.names),
            std::mem::take(&mut other.items.names),
        );
        self.users.names = users;
        self.users.bytes += other.users.bytes; // upper bound; shared texts are counted twice
        self.items.names = items;
        self.items.bytes += other.items.bytes;

        // Half-life tables: both sorted and duplicate-free.
        let mut hls: Vec<Option<i64>> = self.hls.iter().chain(other.hls.iter()).copied().collect();
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
        let srb = slot_map(&other.hls);
        self.hls = hls;
        self.last_hl = None;

        // Monotone remaps keep both entry lists sorted.
        fn remap(v: &mut [Entry], u: &Option<Vec<u32>>, i: &Option<Vec<u32>>, s: &Option<Vec<u8>>) {
            if u.is_none() && i.is_none() && s.is_none() {
                return;
            }
            for e in v.iter_mut() {
                if let Some(r) = u {
                    e.user = r[e.user as usize];
                }
                if let Some(r) = i {
                    e.item = r[e.item as usize];
                }
                if let Some(r) = s {
                    e.slot = r[e.slot as usize];
                }
            }
        }
        remap(&mut self.entries, &ura, &ira, &sra);
        remap(&mut other.entries, &urb, &irb, &srb);

        let a = std::mem::take(&mut self.entries);
        let b = std::mem::take(&mut other.entries);
        let mut out: Vec<Entry> = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0usize, 0usize);
        while i < a.len() && j < b.len() {
            let (ka, kb) = (a[i].key(), b[j].key());
            if ka < kb {
                out.push(a[i]);
                i += 1;
            } else if kb < ka {
                out.push(b[j]);
                j += 1;
            } else {
                out.push(combine(a[i], b[j], &self.hls));
                i += 1;
                j += 1;
            }
        }
        out.extend_from_slice(&a[i..]);
        out.extend_from_slice(&b[j..]);
        drop(a);
        drop(b);
        self.sorted_len = out.len();
        self.threshold = MIN_COMPACT.max(2 * out.len());
        self.entries = out;

        // Properties.
        let n_items = self.items.names.len();
        let mut new_props: Vec<Vec<PropVal>> = Vec::with_capacity(n_props);
        let mut sp = std::mem::take(&mut self.props);
        let mut op = std::mem::take(&mut other.props);
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
        self.prop_bytes += other.prop_bytes;

        self.rows += other.rows;
        self.min_time = self.min_time.min(other.min_time);
        self.max_time = self.max_time.max(other.max_time);
    }

    /// Canonicalizes the state and encodes it (see `deserialize`).
    pub fn serialize(&mut self) -> Vec<u8> {
        self.canonicalize();
        let n = self.entries.len();
        let mut w = Writer::with_capacity(
            64 + n * 21 + self.users.bytes + self.items.bytes + self.users.names.len() * 8,
        );
        w.put_header(MAGIC, VERSION);
        w.put_u32(self.n_props as u32);
        w.put_u64(self.rows);
        w.put_i64(self.min_time);
        w.put_i64(self.max_time);
        w.put_opt_i64(self.reference);
        w.put_u32(self.hls.len() as u32);
        for &h in &self.hls {
            w.put_opt_i64(h);
        }
        w.put_strs(&self.users.names);
        w.put_strs(&self.items.names);

        // Entries, column-wise. Users are stored as per-user entry counts (entries are sorted).
        let mut counts = vec![0u32; self.users.names.len()];
        for e in &self.entries {
            counts[e.user as usize] += 1;
        }
        w.put_u32s(&counts);
        drop(counts);
        w.put_u64(n as u64);
        fn column<const W: usize>(w: &mut Writer, es: &[Entry], f: impl Fn(&Entry) -> [u8; W]) {
            let start = w.0.len();
            w.0.resize(start + es.len() * W, 0);
            for (dst, e) in w.0[start..].chunks_exact_mut(W).zip(es) {
                dst.copy_from_slice(&f(e));
            }
        }
        column(&mut w, &self.entries, |e| e.item.to_le_bytes());
        column(&mut w, &self.entries, |e| [e.slot]);
        column(&mut w, &self.entries, |e| e.time.to_le_bytes());
        column(&mut w, &self.entries, |e| e.value.to_le_bytes());

        for p in &self.props {
            let times: Vec<i64> = p.iter().map(|v| v.time).collect();
            w.put_i64s(&times);
            let flags: Vec<u8> = p.iter().map(|v| v.value.is_some() as u8).collect();
            w.put_bytes(&flags);
            let vals: Vec<&str> = p
                .iter()
                .filter_map(|v| v.value.as_ref().map(|t| t.as_str()))
                .collect();
            w.put_strs(&vals);
        }
        w.into_inner()
    }

    /// Decodes a state written by `serialize`. Any malformed input yields `Err`, never a panic.
    pub fn deserialize(bytes: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(bytes);
        r.expect_header(MAGIC, VERSION)?;
        let n_props = r.get_u32()? as usize;
        if n_props > MAX_PROPS {
            return Err(invalid(format!("{n_props} properties")));
        }
        let rows = r.get_u64()?;
        let min_time = r.get_i64()?;
        let max_time = r.get_i64()?;
        let reference = r.get_opt_i64()?;
        let n_hls = r.get_u32()? as usize;
        if n_hls > MAX_SLOTS {
            return Err(invalid(format!("{n_hls} half-life slots")));
        }
        let mut hls = Vec::with_capacity(n_hls);
        for _ in 0..n_hls {
            let h = r.get_opt_i64()?;
            if matches!(h, Some(x) if x <= 0) {
                return Err(invalid("non-positive half-life"));
            }
            if hls.last().is_some_and(|&l| l >= h) {
                return Err(invalid("half-life table not sorted"));
            }
            hls.push(h);
        }
        let read_names = |r: &mut Reader| -> Result<(Vec<Box<str>>, usize), CodecError> {
            let mut names: Vec<Box<str>> = Vec::new();
            let mut bytes = 0usize;
            let mut ok = true;
            r.get_strs_with(|s| {
                if names.last().is_some_and(|l| **l >= *s) {
                    ok = false;
                }
                bytes += s.len();
                names.push(Box::from(s));
            })?;
            if !ok {
                return Err(invalid("ids not strictly sorted"));
            }
            if names.len() >= NO_ID as usize {
                return Err(invalid("too many ids"));
            }
            Ok((names, bytes))
        };
        let (user_names, user_bytes) = read_names(&mut r)?;
        let (item_names, item_bytes) = read_names(&mut r)?;
        let (n_users, n_items) = (user_names.len(), item_names.len());

        let counts = r.get_u32s()?;
        if counts.len() != n_users {
            return Err(invalid("user count table has the wrong length"));
        }
        let n = r.get_len(4 + 1 + 8 + 8)?;
        if counts.iter().map(|&c| c as u64).sum::<u64>() != n as u64 {
            return Err(invalid("user counts do not add up to the entry count"));
        }
        let items_col = r.take(n * 4)?;
        let slots_col = r.take(n)?;
        let times_col = r.take(n * 8)?;
        let values_col = r.take(n * 8)?;
        let mut entries: Vec<Entry> = Vec::with_capacity(n);
        let mut k = 0usize;
        for (user, &c) in counts.iter().enumerate() {
            for _ in 0..c {
                let item = u32::from_le_bytes(items_col[k * 4..k * 4 + 4].try_into().unwrap());
                let slot = slots_col[k];
                let time = i64::from_le_bytes(times_col[k * 8..k * 8 + 8].try_into().unwrap());
                let value = f64::from_le_bytes(values_col[k * 8..k * 8 + 8].try_into().unwrap());
                if item as usize >= n_items || slot as usize >= n_hls {
                    return Err(invalid("entry id out of range"));
                }
                let e = Entry {
                    user: user as u32,
                    item,
                    slot,
                    time,
                    value,
                };
                if entries.last().is_some_and(|l: &Entry| l.key() >= e.key()) {
                    return Err(invalid("entries not strictly sorted"));
                }
                entries.push(e);
                k += 1;
            }
        }
        drop(counts);

        let mut props = Vec::with_capacity(n_props.min(r.remaining()));
        let mut prop_bytes = 0usize;
        for _ in 0..n_props {
            let times = r.get_i64s()?;
            let flags = r.get_bytes()?;
            if times.len() != n_items || flags.len() != n_items || flags.iter().any(|&f| f > 1) {
                return Err(invalid("bad property table"));
            }
            let mut vals: Vec<Box<str>> = Vec::new();
            r.get_strs_with(|s| {
                prop_bytes += if s.len() > 22 { s.len() + 16 } else { 0 };
                vals.push(Box::from(s));
            })?;
            if vals.len() != flags.iter().filter(|&&f| f == 1).count() {
                return Err(invalid("property value count mismatch"));
            }
            let mut vals = vals.into_iter();
            let p: Vec<PropVal> = times
                .iter()
                .zip(flags)
                .map(|(&time, &f)| PropVal {
                    time,
                    value: if f == 1 {
                        vals.next().map(PText::from_box)
                    } else {
                        None
                    },
                })
                .collect();
            props.push(p);
        }
        r.finish()?;

        let len = entries.len();
        Ok(Accumulator {
            n_props,
            users: Interner {
                names: user_names,
                sorted: true,
                bytes: user_bytes,
                ..Default::default()
            },
            items: Interner {
                names: item_names,
                sorted: true,
                bytes: item_bytes,
                ..Default::default()
            },
            hls,
            last_hl: None,
            entries,
            sorted_len: len,
            threshold: MIN_COMPACT.max(2 * len),
            props,
            prop_bytes,
            reference,
            reference_cap: None,
            rows,
            min_time,
            max_time,
        })
    }

    /// Builds the result: decays every pair to the reference time, drops pairs with affinity
    /// `<= 0`. Users / items that end up with no stored pair are still listed (empty rows /
    /// columns). With no rows at all, times and the default reference are 0.
    pub fn finish(mut self) -> Affinity {
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

        let mut indptr = Vec::with_capacity(n_users + 1);
        indptr.push(0usize);
        let mut indices: Vec<u32> = Vec::with_capacity(self.entries.len());
        let mut data: Vec<f32> = Vec::with_capacity(self.entries.len());
        let mut last_seen: Vec<i64> = Vec::with_capacity(self.entries.len());
        let n = self.entries.len();
        assert!(n < u32::MAX as usize, "more than 2^32 engagement occasions");
        let mut occ = Occasions {
            ptr: vec![0],
            minute: Vec::with_capacity(n),
            value: Vec::with_capacity(n),
            slot: Vec::with_capacity(n),
            half_lives: self.hls.clone(),
        };
        let es = &self.entries;
        let mut k = 0usize;
        while k < es.len() {
            let (user, item) = (es[k].user, es[k].item);
            let mut a = 0f64;
            let mut last = i64::MIN;
            let start = occ.minute.len();
            while k < es.len() && es[k].user == user && es[k].item == item {
                let e = es[k];
                a += e.value
                    * decay(
                        reference as i128 - e.time as i128,
                        self.hls[e.slot as usize],
                    );
                last = last.max(e.time);
                occ.minute.push(
                    e.time
                        .div_euclid(MINUTE_US)
                        .clamp(i32::MIN as i64, i32::MAX as i64) as i32,
                );
                occ.value.push(e.value as f32);
                occ.slot.push(e.slot);
                k += 1;
            }
            let af = if a >= f32::MAX as f64 {
                f32::MAX
            } else {
                a as f32
            };
            if af > 0.0 {
                while indptr.len() <= user as usize {
                    indptr.push(indices.len());
                }
                indices.push(item);
                data.push(af);
                last_seen.push(last);
                occ.ptr.push(occ.minute.len() as u32);
            } else {
                occ.minute.truncate(start);
                occ.value.truncate(start);
                occ.slot.truncate(start);
            }
        }
        while indptr.len() <= n_users {
            indptr.push(indices.len());
        }
        drop(std::mem::take(&mut self.entries));

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

    #[test]
    fn until_equals_a_scan_of_the_earlier_days() {
        // Positive weights only: a pair whose whole history sums to <= 0 is dropped by finish(),
        // occasions included, so a split cannot recover its earlier positive part.
        let rows: Vec<Row> = dyadic_rows(3000, 11)
            .into_iter()
            .filter(|r| r.2 > 0.0)
            .collect();
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

    #[test]
    fn compaction_matches_single_pass() {
        // many rows over few keys forces compactions inside push; compare with a reference sum
        let mut acc = Accumulator::new(0);
        let mut g = Rng(5);
        let mut expect = std::collections::BTreeMap::<(String, String), f64>::new();
        let n = MIN_COMPACT * 2 + 12345;
        for _ in 0..n {
            let u = format!("u{}", g.below(300));
            let i = format!("i{}", g.below(300));
            let w = g.below(4) as f64;
            acc.push(&u, &i, w, 0, None, None);
            *expect.entry((u, i)).or_default() += w;
        }
        assert!(acc.memory_bytes() < 200 << 20);
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
