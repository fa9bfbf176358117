//! The aggregate state as bytes (the parallel aggregate's serialize / deserialize functions, and
//! a build's state handed over between sessions): canonicalized, versioned, checked on read.
//! Pure Rust.
use crate::affinity::accumulator::*;
use crate::util::codec::{invalid, CodecError, Reader, Writer};

/// Bytes [`Accumulator::serialize_into`] gathers before handing them on.
const FLUSH_AT: usize = 4 << 20;
#[cfg(test)]
pub(crate) const FLUSH_AT_FOR_TESTS: usize = FLUSH_AT;

impl Accumulator {
    /// Canonicalizes the state and encodes it (see `deserialize`).
    pub fn serialize(&mut self) -> Vec<u8> {
        self.canonicalize();
        let cap = self.serialized_bytes_estimate();
        let done: std::io::Result<Vec<u8>> = self.serialize_with(cap, |_| Ok(()));
        done.expect("a vector's writer does not fail")
    }

    /// Canonicalizes the state and writes the bytes `serialize` returns through `out`, a few MB
    /// at a time (a parallel worker's state goes straight into its file: no copy of the whole
    /// state in memory). Returns how many bytes were written.
    pub fn serialize_into(
        &mut self,
        mut out: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> std::io::Result<u64> {
        let mut total = 0u64;
        let rest = self.serialize_with(2 * FLUSH_AT, |w| {
            if w.0.len() >= FLUSH_AT {
                total += w.0.len() as u64;
                out(&w.0)?;
                w.0.clear();
            }
            Ok(())
        })?;
        if !rest.is_empty() {
            out(&rest)?;
        }
        Ok(total + rest.len() as u64)
    }

    /// The encoded size, about (a capacity for the writer), once the state is canonical (before,
    /// its entries are not yet combined and its names not yet listed).
    pub fn serialized_bytes_estimate(&self) -> usize {
        64 + self.entries.len() * 21
            + self.users.bytes
            + self.items.bytes
            + self.users.names.len() * 8
    }

    /// The encoder: `flush` is called with the writer between sections and every [`FLUSH_AT`]
    /// bytes of a column; it may take the bytes written so far out of it. Returns what is left.
    fn serialize_with(
        &mut self,
        capacity: usize,
        mut flush: impl FnMut(&mut Writer) -> std::io::Result<()>,
    ) -> std::io::Result<Vec<u8>> {
        self.canonicalize();
        let n = self.entries.len();
        let mut w = Writer::with_capacity(capacity);
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
        flush(&mut w)?;
        w.put_strs(&self.items.names);
        flush(&mut w)?;

        // Entries, column-wise. Users are stored as per-user entry counts (entries are sorted).
        let mut counts = vec![0u32; self.users.names.len()];
        for e in &self.entries {
            counts[e.user as usize] += 1;
        }
        w.put_u32s(&counts);
        drop(counts);
        w.put_u64(n as u64);
        flush(&mut w)?;
        fn column<const W: usize>(
            w: &mut Writer,
            es: &[Entry],
            flush: &mut impl FnMut(&mut Writer) -> std::io::Result<()>,
            f: impl Fn(&Entry) -> [u8; W],
        ) -> std::io::Result<()> {
            for part in es.chunks(FLUSH_AT / W) {
                let start = w.0.len();
                w.0.resize(start + part.len() * W, 0);
                for (dst, e) in w.0[start..].chunks_exact_mut(W).zip(part) {
                    dst.copy_from_slice(&f(e));
                }
                if w.0.len() >= FLUSH_AT {
                    flush(w)?;
                }
            }
            Ok(())
        }
        column(&mut w, &self.entries, &mut flush, |e| e.item.to_le_bytes())?;
        column(&mut w, &self.entries, &mut flush, |e| [e.slot])?;
        column(&mut w, &self.entries, &mut flush, |e| e.time.to_le_bytes())?;
        column(&mut w, &self.entries, &mut flush, |e| e.value.to_le_bytes())?;

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
            flush(&mut w)?;
        }
        Ok(w.into_inner())
    }

    /// Decodes a state written by `serialize`. Any malformed input yields `Err`, never a panic.
    pub fn deserialize(bytes: &[u8]) -> Result<Self, CodecError> {
        Ok(StateView::parse(bytes)?.into_accumulator())
    }
}

/// A state written by [`Accumulator::serialize`], checked and read in place: the names borrowed,
/// the entries left in their columns. [`Accumulator::merge_view`] merges it straight from the
/// bytes (a parallel scan's combine step: no decoded copy of each partial state's entries).
pub struct StateView<'a> {
    pub(crate) n_props: usize,
    pub(crate) rows: u64,
    pub(crate) min_time: i64,
    pub(crate) max_time: i64,
    pub(crate) reference: Option<i64>,
    pub(crate) hls: Vec<Option<i64>>,
    pub(crate) users: Vec<&'a str>,
    pub(crate) user_bytes: usize,
    pub(crate) items: Vec<&'a str>,
    pub(crate) item_bytes: usize,
    /// Entries per user (the entries are sorted by user).
    counts: Vec<u32>,
    n: usize,
    items_col: &'a [u8],
    slots_col: &'a [u8],
    times_col: &'a [u8],
    values_col: &'a [u8],
    pub(crate) props: Vec<Vec<PropVal>>,
    pub(crate) prop_bytes: usize,
}

impl<'a> StateView<'a> {
    /// Checks `bytes` as `deserialize` does (any malformed input yields `Err`, never a panic),
    /// decoding only the names and the property tables.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, CodecError> {
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
        let read_names = |r: &mut Reader<'a>| -> Result<(Vec<&'a str>, usize), CodecError> {
            let mut names: Vec<&'a str> = Vec::new();
            let mut bytes = 0usize;
            let mut ok = true;
            r.get_strs_with(|s| {
                if names.last().is_some_and(|l| *l >= s) {
                    ok = false;
                }
                bytes += s.len();
                names.push(s);
            })?;
            if !ok {
                return Err(invalid("ids not strictly sorted"));
            }
            if names.len() >= NO_ID as usize {
                return Err(invalid("too many ids"));
            }
            Ok((names, bytes))
        };
        let (users, user_bytes) = read_names(&mut r)?;
        let (items, item_bytes) = read_names(&mut r)?;
        let (n_users, n_items) = (users.len(), items.len());

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

        let view = StateView {
            n_props,
            rows,
            min_time,
            max_time,
            reference,
            hls,
            users,
            user_bytes,
            items,
            item_bytes,
            counts,
            n,
            items_col,
            slots_col,
            times_col,
            values_col,
            props,
            prop_bytes,
        };
        // The entries: ids in range, strictly sorted.
        let mut last: Option<u128> = None;
        let mut k = 0usize;
        for (user, &c) in view.counts.iter().enumerate() {
            for _ in 0..c {
                let e = view.entry(k, user as u32);
                if e.item as usize >= n_items || e.slot as usize >= n_hls {
                    return Err(invalid("entry id out of range"));
                }
                let key = e.key();
                if last.is_some_and(|l| l >= key) {
                    return Err(invalid("entries not strictly sorted"));
                }
                last = Some(key);
                k += 1;
            }
        }
        Ok(view)
    }

    /// Entry `k`, of user `user`.
    #[inline(always)]
    fn entry(&self, k: usize, user: u32) -> Entry {
        Entry {
            user,
            item: u32::from_le_bytes(self.items_col[k * 4..k * 4 + 4].try_into().unwrap()),
            slot: self.slots_col[k],
            time: i64::from_le_bytes(self.times_col[k * 8..k * 8 + 8].try_into().unwrap()),
            value: f64::from_le_bytes(self.values_col[k * 8..k * 8 + 8].try_into().unwrap()),
        }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the state has no entries.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The state itself (what `deserialize` returns).
    pub fn into_accumulator(self) -> Accumulator {
        let mut entries: Vec<Entry> = Vec::with_capacity(self.n);
        let mut k = 0usize;
        for (user, &c) in self.counts.iter().enumerate() {
            for _ in 0..c {
                entries.push(self.entry(k, user as u32));
                k += 1;
            }
        }
        let len = entries.len();
        let boxed = |v: Vec<&str>| -> Vec<Box<str>> { v.into_iter().map(Box::from).collect() };
        Accumulator {
            n_props: self.n_props,
            users: Interner {
                names: boxed(self.users),
                sorted: true,
                bytes: self.user_bytes,
                ..Default::default()
            },
            items: Interner {
                names: boxed(self.items),
                sorted: true,
                bytes: self.item_bytes,
                ..Default::default()
            },
            hls: self.hls,
            last_hl: None,
            entries,
            sorted_len: len,
            threshold: MIN_COMPACT.max(2 * len),
            min_compact: MIN_COMPACT,
            props: self.props,
            prop_bytes: self.prop_bytes,
            reference: self.reference,
            reference_cap: None,
            rows: self.rows,
            min_time: self.min_time,
            max_time: self.max_time,
            pending: Vec::new(),
            pending_items: Vec::new(),
            pending_props: Vec::new(),
            pending_text: String::new(),
            threads: 1,
        }
    }
}

impl UserEntries for StateView<'_> {
    fn n_entries(&self) -> usize {
        self.n
    }

    fn before_user(&self, user: u32) -> usize {
        let u = (user as usize).min(self.counts.len());
        self.counts[..u].iter().map(|&c| c as usize).sum()
    }

    fn rev_users(&self, users: std::ops::Range<u32>) -> impl Iterator<Item = Entry> + '_ {
        let n_users = self.counts.len() as u32;
        let (lo, hi) = (users.start.min(n_users), users.end.min(n_users));
        let mut end = self.before_user(hi);
        (lo..hi).rev().flat_map(move |u| {
            let c = self.counts[u as usize] as usize;
            let start = end - c;
            end = start;
            (start..start + c).rev().map(move |k| self.entry(k, u))
        })
    }
}
