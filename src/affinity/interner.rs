//! Interning of user and item ids for the aggregate state: each distinct string once, short
//! ones inline, ids in first-seen order until the state is canonicalized (sorted). Pure Rust.
use crate::affinity::accumulator::NO_ID;
use crate::util::hash::FxHasher;
use std::hash::Hasher;

/// First 8 bytes of a string as a big-endian integer (zero padded): orders like the bytes.
#[inline]
pub(crate) fn prefix8(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    let n = b.len().min(8);
    a[..n].copy_from_slice(&b[..n]);
    u64::from_be_bytes(a)
}

/// Texts up to this many bytes are stored inline in the interner's hash slots.
pub(crate) const INLINE: usize = 24;
pub(crate) const EMPTY: u32 = 0;
pub(crate) const LONG: u32 = u32::MAX;

/// One slot of the interner's open-addressing table, half a cache line. `meta` is `EMPTY`,
/// `len + 1` for an inline text (bytes in `data`, zero padded), or `LONG` (then `data` holds the
/// 64-bit hash and the index of the text in `Interner::long`).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct Slot {
    pub(crate) meta: u32,
    pub(crate) id: u32,
    pub(crate) data: [u8; INLINE],
}

pub(crate) const EMPTY_SLOT: Slot = Slot {
    meta: EMPTY,
    id: 0,
    data: [0; INLINE],
};

#[inline]
pub(crate) fn hash_bytes(b: &[u8]) -> u64 {
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
pub(crate) struct Interner {
    pub(crate) slots: Vec<Slot>,
    /// Number of texts in the table.
    pub(crate) n: usize,
    /// Texts longer than `INLINE` (table mode only).
    pub(crate) long: Vec<Box<str>>,
    pub(crate) names: Vec<Box<str>>,
    /// `names` is authoritative (and sorted); the table is empty.
    pub(crate) sorted: bool,
    /// Total text bytes, for memory accounting.
    pub(crate) bytes: usize,
}

impl Interner {
    pub(crate) fn new() -> Self {
        Interner {
            sorted: true,
            ..Default::default()
        }
    }

    pub(crate) fn len(&self) -> usize {
        if self.sorted {
            self.names.len()
        } else {
            self.n
        }
    }

    /// Switches to the table representation, keeping ids.
    #[cold]
    pub(crate) fn switch_to_table(&mut self) {
        let names = std::mem::take(&mut self.names);
        self.sorted = false;
        self.n = 0;
        self.long.clear();
        let mut cap = 16usize;
        while cap < 2 * names.len() + 2 {
            cap *= 2;
        }
        self.slots = crate::util::pages::filled(cap, EMPTY_SLOT);
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
    pub(crate) fn insert_new(&mut self, b: &[u8], h: u64, id: u32, owned: Option<Box<str>>) {
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
    pub(crate) fn grow(&mut self) {
        let new_cap = (self.slots.len() * 2).max(16);
        // Huge pages: a lookup is one random read of the table, which with 4 KiB pages (a
        // million users' table is 64 MB) also misses the TLB.
        let old = std::mem::replace(
            &mut self.slots,
            crate::util::pages::filled(new_cap, EMPTY_SLOT),
        );
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

    /// Starts loading the table slot where a text of hash `h` is looked up first (see
    /// [`Interner::intern_hashed`]): a batch of lookups then waits for memory once, not once each.
    #[inline]
    pub(crate) fn prefetch(&mut self, h: u64) {
        if self.sorted {
            self.switch_to_table();
        }
        let mask = self.slots.len() - 1;
        crate::util::prefetch(self.slots.as_ptr().wrapping_add(h as usize & mask));
    }

    /// Interns a text whose [`hash_bytes`] is `h`: its id, a new one when it was not there.
    pub(crate) fn intern_hashed(&mut self, s: &str, h: u64) -> u32 {
        if self.sorted {
            self.switch_to_table();
        }
        let b = s.as_bytes();
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
    pub(crate) fn sort(&mut self) -> Option<Vec<u32>> {
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

    pub(crate) fn memory_bytes(&self) -> usize {
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
pub(crate) type MergedNames = (Vec<Box<str>>, Option<Vec<u32>>, Option<Vec<u32>>);

pub(crate) fn merge_names<B: AsRef<str> + Into<Box<str>>>(
    a: Vec<Box<str>>,
    b: Vec<B>,
) -> MergedNames {
    let (na, nb) = (a.len(), b.len());
    let mut out = Vec::with_capacity(na + nb);
    let mut ra = Vec::with_capacity(na);
    let mut rb = Vec::with_capacity(nb);
    let mut ia = a.into_iter().peekable();
    let mut ib = b.into_iter().peekable();
    loop {
        let ord = match (ia.peek(), ib.peek()) {
            (Some(x), Some(y)) => (**x).cmp(y.as_ref()),
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
                out.push(ib.next().unwrap().into());
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
