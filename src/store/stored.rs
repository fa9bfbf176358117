//! A trained model as stored: id maps, the affinity matrix, the collaborative models, the item
//! properties and the hybrid scoring knobs, with a versioned binary encoding. Pure Rust.
use crate::model::als::AlsModel;
use crate::model::csr::Csr;
use crate::model::days::DayIndex;
use crate::score::hybrid::{HybridParams, Own};
use crate::util::codec::{CodecError, Reader, Writer};
use crate::util::interrupt::Interrupted;

const MAGIC: [u8; 4] = *b"PGAM";
/// Format 6 codes the integer arrays as varints of differences (see [`put_csr6`]), the floats
/// with few distinct values through a dictionary (see [`put_f32s_coded`]) and the latest event
/// times from the days: about a third fewer bytes to store than format 5, which is still read.
const VERSION: u32 = 6;
/// The oldest format this build reads.
const MIN_VERSION: u32 = 5;

/// One property: its distinct values (sorted) and, per value, the items having it.
#[derive(Clone, Debug, PartialEq)]
pub struct Property {
    pub name: String,
    pub values: Vec<String>,
    /// values x items; row v lists the items with value v.
    pub value_items: Csr,
}

impl Property {
    /// Builds the index from per-item value lists (multi-valued items appear under each value).
    pub fn from_item_values(name: &str, n_items: usize, item_values: &[Vec<String>]) -> Property {
        let mut values: Vec<String> = item_values.iter().flatten().cloned().collect();
        values.sort_unstable();
        values.dedup();
        let mut triples = Vec::new();
        for (item, vals) in item_values.iter().enumerate() {
            for v in vals {
                let vi = values.binary_search(v).expect("value indexed") as u32;
                triples.push((vi, item as u32, 1.0f32));
            }
        }
        let value_items = Csr::from_triplets(values.len(), n_items, &mut triples);
        Property {
            name: name.to_string(),
            values,
            value_items,
        }
    }

    /// Items having any of the given values (sorted, unique); unknown values are skipped.
    pub fn items_for(&self, wanted: &[&str]) -> Vec<u32> {
        let mut items: Vec<u32> = Vec::new();
        for w in wanted {
            if let Ok(v) = self.values.binary_search_by(|x| x.as_str().cmp(w)) {
                items.extend_from_slice(self.value_items.row(v).0);
            }
        }
        items.sort_unstable();
        items.dedup();
        items
    }
}

/// Splits a raw property text into values: JSON arrays (`["a","b"]`) and chr(31)-joined lists
/// (array columns and delimited strings) give several values; blanks are dropped.
pub fn split_values(raw: &str) -> Vec<String> {
    let raw = raw.trim();
    if raw.starts_with('[') {
        if let Ok(serde_json::Value::Array(a)) = serde_json::from_str::<serde_json::Value>(raw) {
            return a
                .into_iter()
                .filter_map(|v| match v {
                    serde_json::Value::String(s) => Some(s.trim().to_string()),
                    serde_json::Value::Null => None,
                    other => Some(other.to_string()),
                })
                .filter(|s| !s.is_empty())
                .collect();
        }
    }
    raw.split('\u{1f}')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    pub users: Vec<String>,
    pub items: Vec<String>,
    /// users x items decayed affinity.
    pub ui: Csr,
    /// Per entry of `ui`: the latest event time, in minutes since 2000-01-01 UTC.
    pub last_seen: Vec<i32>,
    pub als: Option<AlsModel>,
    /// items x items neighbour similarities.
    pub knn: Option<Csr>,
    pub properties: Vec<Property>,
    pub params: HybridParams,
    /// Knobs for cross-sell audiences (`exclude_engaged`), tuned on users new to each value.
    pub cross_params: HybridParams,
    /// Per entry of `ui`: the days with events and their weights.
    pub days: DayIndex,
    /// The day (since 2000-01-01 UTC) ages are counted to: the day of the reference time.
    pub reference_day: i32,
    /// Knobs tuned for one property (they override `params` / `cross_params` for its audiences).
    pub property_params: Vec<PropertyKnobs>,
}

/// The knobs chosen for the audiences of one property.
#[derive(Clone, Debug, PartialEq)]
pub struct PropertyKnobs {
    pub property: String,
    pub params: HybridParams,
    pub cross_params: HybridParams,
}

pub(crate) fn put_knobs(w: &mut Writer, p: &HybridParams) {
    w.put_f32(p.prior);
    w.put_f32(p.activity_exp);
    w.put_f32(p.knn_weight);
    w.put_f32(p.volume);
    w.put_f32(p.days_exp);
    w.put_f32(p.tenure_exp);
    let (code, h) = p.own.code();
    w.put_u32(code as u32);
    w.put_f32(h);
}

pub(crate) fn get_knobs(r: &mut Reader) -> Result<HybridParams, CodecError> {
    let (prior, activity_exp, knn_weight, volume, days_exp, tenure_exp) = (
        r.get_f32()?,
        r.get_f32()?,
        r.get_f32()?,
        r.get_f32()?,
        r.get_f32()?,
        r.get_f32()?,
    );
    let code = r.get_u32()?;
    let h = r.get_f32()?;
    let own = u8::try_from(code)
        .ok()
        .and_then(|c| Own::from_code(c, h))
        .ok_or_else(|| {
            crate::util::codec::invalid(format!("unknown own-engagement measure {code}"))
        })?;
    Ok(HybridParams {
        prior,
        activity_exp,
        knn_weight,
        volume,
        days_exp,
        tenure_exp,
        own,
    })
}

/// Bytes of an array written between two calls of `encode_sections`'s `at_section`.
pub const PIECE: usize = 8 << 20;

/// Writes the elements of `s` (`width` bytes each once written) with `elems`, calling `at` after
/// every `piece` bytes and after the last.
fn in_pieces<T>(
    w: &mut Writer,
    s: &[T],
    width: usize,
    piece: usize,
    at: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), Interrupted>,
    elems: impl Fn(&mut Writer, &[T]),
) -> Result<(), Interrupted> {
    for piece in s.chunks((piece / width).max(1)) {
        elems(w, piece);
        at(&mut w.0)?;
    }
    Ok(())
}

/// Writes the element count `n`, then `put(w, i)` for each `i` in `0..n` (variable-width
/// elements), calling `at` after every `piece / 4` elements and after the last.
fn var_pieces(
    w: &mut Writer,
    n: usize,
    piece: usize,
    at: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), Interrupted>,
    mut put: impl FnMut(&mut Writer, usize),
) -> Result<(), Interrupted> {
    w.put_u64(n as u64);
    let step = (piece / 4).max(1);
    let mut start = 0;
    while start < n {
        let end = start.saturating_add(step).min(n);
        for i in start..end {
            put(w, i);
        }
        at(&mut w.0)?;
        start = end;
    }
    Ok(())
}

/// An unsigned integer of a stored array, widened for the varint coding.
trait Widen: Copy {
    fn widen(self) -> u64;
}

impl Widen for usize {
    fn widen(self) -> u64 {
        self as u64
    }
}

impl Widen for u32 {
    fn widen(self) -> u64 {
        self as u64
    }
}

impl Widen for u16 {
    fn widen(self) -> u64 {
        self as u64
    }
}

/// Writes `starts` (row offsets, ascending) as varints of their differences.
fn put_offsets<T: Widen>(
    w: &mut Writer,
    starts: &[T],
    piece: usize,
    at: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), Interrupted>,
) -> Result<(), Interrupted> {
    let mut prev = 0i64;
    var_pieces(w, starts.len(), piece, at, |w, i| {
        let x = starts[i].widen();
        w.put_ivarint((x as i64).wrapping_sub(prev));
        prev = x as i64;
    })
}

/// Reads what [`put_offsets`] wrote: ascending offsets from 0 to at most `max`.
fn get_offsets(r: &mut Reader, max: usize) -> Result<Vec<usize>, CodecError> {
    let n = r.get_len(1)?;
    let mut out = Vec::with_capacity(n);
    let mut prev = 0i64;
    for _ in 0..n {
        let x = prev.wrapping_add(r.get_ivarint()?);
        if x < prev || x as u64 > max as u64 {
            return Err(crate::util::codec::invalid("offsets out of order"));
        }
        out.push(x as usize);
        prev = x;
    }
    if out.first().is_some_and(|&x| x != 0) {
        return Err(crate::util::codec::invalid("offsets do not start at 0"));
    }
    Ok(out)
}

/// Writes `values` row by row (rows `starts[r]..starts[r + 1]`) as varints of the difference to
/// the previous value of the row (the first to 0): sorted rows take a byte or two per value.
fn put_rows<T: Widen, S: Widen>(
    w: &mut Writer,
    starts: &[S],
    values: &[T],
    piece: usize,
    at: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), Interrupted>,
) -> Result<(), Interrupted> {
    let (mut row, mut prev) = (0usize, 0i64);
    var_pieces(w, values.len(), piece, at, |w, i| {
        while row + 1 < starts.len() && starts[row + 1].widen() <= i as u64 {
            row += 1;
            prev = 0;
        }
        let x = values[i].widen();
        w.put_ivarint((x as i64).wrapping_sub(prev));
        prev = x as i64;
    })
}

/// Reads what [`put_rows`] wrote for rows `starts` (checked: ascending from 0): values below
/// `limit`, converted by `to`.
fn get_rows<T>(
    r: &mut Reader,
    starts: &[usize],
    limit: u64,
    to: impl Fn(u64) -> T,
) -> Result<Vec<T>, CodecError> {
    let n = r.get_len(1)?;
    if Some(&n) != starts.last() {
        return Err(crate::util::codec::invalid(
            "row values do not match their offsets",
        ));
    }
    let mut out = Vec::with_capacity(n);
    for w in starts.windows(2) {
        let mut prev = 0i64;
        for _ in w[0]..w[1] {
            let x = prev.wrapping_add(r.get_ivarint()?);
            if x < 0 || x as u64 >= limit {
                return Err(crate::util::codec::invalid("row value out of range"));
            }
            out.push(to(x as u64));
            prev = x;
        }
    }
    Ok(out)
}

/// Writes floats as a mode byte then: (1) at most 256 distinct values (bit patterns, in order of
/// first appearance) and a byte per value, (2) at most 65536 and two bytes per value, or (0)
/// the floats themselves.
fn put_f32s_coded(
    w: &mut Writer,
    s: &[f32],
    piece: usize,
    at: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), Interrupted>,
) -> Result<(), Interrupted> {
    let mut codes: Vec<u16> = Vec::new();
    let mut dict: Vec<u32> = Vec::new();
    let mut index: crate::util::hash::FxHashMap<u32, u16> = Default::default();
    let mut coded = true;
    for (i, x) in s.iter().enumerate() {
        if i % (1 << 20) == 0 {
            at(&mut w.0)?;
        }
        let bits = x.to_bits();
        let code = match index.get(&bits) {
            Some(&c) => c,
            None if dict.len() < 1 << 16 => {
                let c = dict.len() as u16;
                index.insert(bits, c);
                dict.push(bits);
                c
            }
            None => {
                coded = false;
                break;
            }
        };
        codes.push(code);
    }
    if !coded {
        drop(codes);
        w.put_u8(0);
        w.put_u64(s.len() as u64);
        return in_pieces(w, s, 4, piece, at, Writer::put_f32_elems);
    }
    if dict.len() <= 256 {
        w.put_u8(1);
        w.put_u32s(&dict);
        w.put_u64(codes.len() as u64);
        in_pieces(w, &codes, 1, piece, at, |w, c| {
            w.0.extend(c.iter().map(|&c| c as u8))
        })
    } else {
        w.put_u8(2);
        w.put_u32s(&dict);
        w.put_u64(codes.len() as u64);
        in_pieces(w, &codes, 2, piece, at, Writer::put_u16_elems)
    }
}

/// Reads what [`put_f32s_coded`] wrote.
fn get_f32s_coded(r: &mut Reader) -> Result<Vec<f32>, CodecError> {
    let mode = r.get_u8()?;
    if mode == 0 {
        return r.get_f32s();
    }
    if mode > 2 {
        return Err(crate::util::codec::invalid("unknown float coding"));
    }
    let dict: Vec<f32> = r.get_u32s()?.into_iter().map(f32::from_bits).collect();
    let width = mode as usize;
    if dict.len() > 1 << (8 * width) {
        return Err(crate::util::codec::invalid("float dictionary too large"));
    }
    let n = r.get_len(width)?;
    let raw = r.take(n * width)?;
    let code = |c: usize| {
        dict.get(c)
            .copied()
            .ok_or_else(|| crate::util::codec::invalid("float code out of range"))
    };
    if width == 1 {
        raw.iter().map(|&c| code(c as usize)).collect()
    } else {
        raw.chunks_exact(2)
            .map(|b| code(u16::from_le_bytes([b[0], b[1]]) as usize))
            .collect()
    }
}

/// A sparse matrix in format 6: its shape, offsets ([`put_offsets`]), column indices
/// ([`put_rows`]) and values ([`put_f32s_coded`]).
fn put_csr6(
    w: &mut Writer,
    m: &Csr,
    piece: usize,
    at: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), Interrupted>,
) -> Result<(), Interrupted> {
    w.put_usize(m.n_rows);
    w.put_usize(m.n_cols);
    put_offsets(w, &m.indptr, piece, at)?;
    put_rows(w, &m.indptr, &m.indices, piece, at)?;
    put_f32s_coded(w, &m.data, piece, at)
}

fn get_csr6(r: &mut Reader) -> Result<Csr, CodecError> {
    let n_rows = r.get_usize()?;
    let n_cols = r.get_usize()?;
    let indptr = get_offsets(r, usize::MAX)?;
    let indices = get_rows(r, &indptr, (n_cols as u64).min(1 << 32), |x| x as u32)?;
    let data = get_f32s_coded(r)?;
    checked_csr(n_rows, n_cols, indptr, indices, data)
}

/// The minute (since 2000-01-01 UTC) that pair `p`'s latest event time is coded against in
/// format 6: the start of its last engagement day (0 when it has none).
fn last_day_minute(days: &DayIndex, p: usize) -> i64 {
    let (a, b) = (days.ptr[p] as usize, days.ptr[p + 1] as usize);
    if b > a {
        (days.day0 as i64 + days.day[b - 1] as i64) * 1440
    } else {
        0
    }
}

/// A sparse matrix in format 5: its shape and arrays as fixed-width elements.
fn get_csr(r: &mut Reader) -> Result<Csr, CodecError> {
    let n_rows = r.get_usize()?;
    let n_cols = r.get_usize()?;
    let indptr = r.get_usizes()?;
    let indices = r.get_u32s()?;
    let data = r.get_f32s()?;
    checked_csr(n_rows, n_cols, indptr, indices, data)
}

/// The matrix of these arrays when they are one (both formats' decoders end here).
fn checked_csr(
    n_rows: usize,
    n_cols: usize,
    indptr: Vec<usize>,
    indices: Vec<u32>,
    data: Vec<f32>,
) -> Result<Csr, CodecError> {
    let ok = indptr.len() == n_rows.saturating_add(1)
        && indices.len() == data.len()
        && indptr.first() == Some(&0)
        && indptr.last() == Some(&indices.len())
        && indptr.windows(2).all(|w| w[0] <= w[1])
        && indices.iter().all(|&c| (c as usize) < n_cols);
    if !ok {
        return Err(crate::util::codec::invalid("inconsistent sparse matrix"));
    }
    Ok(Csr {
        n_rows,
        n_cols,
        indptr: indptr.into(),
        indices: indices.into(),
        data: data.into(),
    })
}

impl Model {
    pub fn property(&self, name: &str) -> Option<&Property> {
        self.properties.iter().find(|p| p.name == name)
    }

    /// The knobs for audiences of `property` (all users, cross-sell): the property's own when
    /// tuned, else the model's.
    pub fn knobs_for(&self, property: &str) -> (&HybridParams, &HybridParams) {
        match self.property_params.iter().find(|k| k.property == property) {
            Some(k) => (&k.params, &k.cross_params),
            None => (&self.params, &self.cross_params),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        self.encode_with(&mut || Ok(()))
            .unwrap_or_else(|_| unreachable!("no interrupt"))
    }

    /// [`Model::encode`], calling `check` between its sections and pieces (see
    /// [`Model::encode_sections`]), so a cancel during storing is noticed within one piece's copy.
    pub fn encode_with(
        &self,
        check: &mut dyn FnMut() -> Result<(), Interrupted>,
    ) -> Result<Vec<u8>, Interrupted> {
        self.encode_sections(&mut |_| check())
    }

    /// [`Model::encode`] in pieces: `at_section` is called between its sections and within its
    /// large arrays, every [`PIECE`] bytes, with the bytes encoded since the last call that took
    /// them (it may take them: `std::mem::take`), and the bytes after the last call are returned.
    /// The pieces in order are the encoding: a build stores them while the rest is encoded,
    /// holding a few pieces at a time, never a whole array's copy. An `Err` from `at_section`
    /// stops the encoding.
    pub fn encode_sections(
        &self,
        at_section: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), Interrupted>,
    ) -> Result<Vec<u8>, Interrupted> {
        self.encode_in(PIECE, at_section)
    }

    /// [`Model::encode_sections`] of the sections before the item-kNN's (the id maps, the affinity
    /// matrix, ALS): none of them reads `knn`, so a build stores them while item-kNN still trains.
    /// [`Model::encode_tail_sections`] continues from the bytes returned.
    pub fn encode_head_sections(
        &self,
        at_section: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), Interrupted>,
    ) -> Result<Vec<u8>, Interrupted> {
        self.encode_head(PIECE, at_section)
    }

    /// The rest of [`Model::encode_sections`] after [`Model::encode_head_sections`] (whose
    /// returned bytes come first): the item-kNN's section and everything after it.
    pub fn encode_tail_sections(
        &self,
        at_section: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), Interrupted>,
    ) -> Result<Vec<u8>, Interrupted> {
        self.encode_tail(Writer::new(), PIECE, at_section)
    }

    /// [`Model::encode_sections`] with pieces of `piece` bytes.
    fn encode_in(
        &self,
        piece: usize,
        at: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), Interrupted>,
    ) -> Result<Vec<u8>, Interrupted> {
        let head = self.encode_head(piece, at)?;
        self.encode_tail(Writer(head), piece, at)
    }

    /// The sections up to ALS's (see [`Model::encode_head_sections`]).
    fn encode_head(
        &self,
        piece: usize,
        at: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), Interrupted>,
    ) -> Result<Vec<u8>, Interrupted> {
        let mut w = Writer::new();
        w.put_header(MAGIC, VERSION);
        w.put_strs(&self.users);
        at(&mut w.0)?;
        w.put_strs(&self.items);
        put_csr6(&mut w, &self.ui, piece, at)?;
        at(&mut w.0)?;
        match &self.als {
            Some(a) => {
                w.put_bool(true);
                w.put_usize(a.factors);
                w.put_u64(a.user_factors.len() as u64);
                in_pieces(&mut w, &a.user_factors, 4, piece, at, Writer::put_f32_elems)?;
                w.put_f32s(&a.item_factors);
            }
            None => w.put_bool(false),
        }
        at(&mut w.0)?;
        Ok(w.into_inner())
    }

    /// The sections from item-kNN's on, after the head's bytes in `w`.
    fn encode_tail(
        &self,
        mut w: Writer,
        piece: usize,
        at: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), Interrupted>,
    ) -> Result<Vec<u8>, Interrupted> {
        match &self.knn {
            Some(k) => {
                w.put_bool(true);
                put_csr6(&mut w, k, piece, at)?;
            }
            None => w.put_bool(false),
        }
        at(&mut w.0)?;
        w.put_usize(self.properties.len());
        for p in &self.properties {
            at(&mut w.0)?;
            w.put_str(&p.name);
            w.put_strs(&p.values);
            put_csr6(&mut w, &p.value_items, piece, at)?;
        }
        put_knobs(&mut w, &self.params);
        put_knobs(&mut w, &self.cross_params);
        w.put_u32(self.days.day0 as u32);
        w.put_u32(self.reference_day as u32);
        at(&mut w.0)?;
        put_offsets(&mut w, &self.days.ptr, piece, at)?;
        put_rows(&mut w, &self.days.ptr, &self.days.day, piece, at)?;
        put_f32s_coded(&mut w, &self.days.weight, piece, at)?;
        // The latest event time of each pair, as minutes after the start of its last day.
        let days = &self.days;
        let ok = days.is_valid_for(self.last_seen.len());
        var_pieces(&mut w, self.last_seen.len(), piece, at, |w, p| {
            let base = if ok { last_day_minute(days, p) } else { 0 };
            w.put_ivarint(self.last_seen[p] as i64 - base);
        })?;
        w.put_usize(self.property_params.len());
        for k in &self.property_params {
            w.put_str(&k.property);
            put_knobs(&mut w, &k.params);
            put_knobs(&mut w, &k.cross_params);
        }
        Ok(w.into_inner())
    }

    pub fn decode(bytes: &[u8]) -> Result<Model, CodecError> {
        let bad = |m: &str| crate::util::codec::invalid(m.to_string());
        let mut r = Reader::new(bytes);
        let v6 = r.expect_header_in(MAGIC, MIN_VERSION, VERSION)? >= 6;
        let csr = |r: &mut Reader| if v6 { get_csr6(r) } else { get_csr(r) };
        let users = r.get_strs()?;
        let items = r.get_strs()?;
        let ui = csr(&mut r)?;
        if ui.n_rows != users.len() || ui.n_cols != items.len() {
            return Err(bad("affinity shape does not match the id maps"));
        }
        let mut last_seen: Vec<i32> = Vec::new();
        if !v6 {
            last_seen = r.get_u32s()?.into_iter().map(|x| x as i32).collect();
            if last_seen.len() != ui.nnz() {
                return Err(bad("last-seen times do not match the affinity matrix"));
            }
        }
        let als = if r.get_bool()? {
            let factors = r.get_usize()?;
            let user_factors = r.get_f32s()?;
            let item_factors = r.get_f32s()?;
            if user_factors.len() != users.len() * factors
                || item_factors.len() != items.len() * factors
            {
                return Err(bad("factor shapes do not match the id maps"));
            }
            Some(AlsModel {
                factors,
                user_factors: user_factors.into(),
                item_factors: item_factors.into(),
            })
        } else {
            None
        };
        let knn = if r.get_bool()? {
            let k = csr(&mut r)?;
            if k.n_rows != items.len() || k.n_cols != items.len() {
                return Err(bad("neighbour matrix shape does not match the items"));
            }
            Some(k)
        } else {
            None
        };
        let n_props = r.get_usize()?;
        let mut properties = Vec::with_capacity(n_props.min(1024));
        for _ in 0..n_props {
            let name = r.get_str()?.to_string();
            let values = r.get_strs()?;
            let value_items = csr(&mut r)?;
            if value_items.n_rows != values.len() || value_items.n_cols != items.len() {
                return Err(bad("property index shape does not match"));
            }
            properties.push(Property {
                name,
                values,
                value_items,
            });
        }
        let params = get_knobs(&mut r)?;
        let cross_params = get_knobs(&mut r)?;
        let day0 = r.get_u32()? as i32;
        let reference_day = r.get_u32()? as i32;
        let days = if v6 {
            let starts = get_offsets(&mut r, u32::MAX as usize)?;
            let day = get_rows(&mut r, &starts, 1 << 16, |x| x as u16)?;
            let weight = get_f32s_coded(&mut r)?;
            let ptr: Vec<u32> = starts.into_iter().map(|x| x as u32).collect();
            DayIndex {
                day0,
                ptr: ptr.into(),
                day: day.into(),
                weight: weight.into(),
            }
        } else {
            let ptr = r.get_u32s()?;
            let raw = r.get_bytes()?;
            if raw.len() % 2 != 0 {
                return Err(bad("odd length of the day table"));
            }
            let day: Vec<u16> = raw
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            let weight = r.get_f32s()?;
            DayIndex {
                day0,
                ptr: ptr.into(),
                day: day.into(),
                weight: weight.into(),
            }
        };
        if !days.is_valid_for(ui.nnz()) {
            return Err(bad("engagement days do not match the affinity matrix"));
        }
        if v6 {
            let n = r.get_len(1)?;
            if n != ui.nnz() {
                return Err(bad("last-seen times do not match the affinity matrix"));
            }
            last_seen.reserve_exact(n);
            for p in 0..n {
                let m = last_day_minute(&days, p)
                    .checked_add(r.get_ivarint()?)
                    .and_then(|m| i32::try_from(m).ok())
                    .ok_or_else(|| bad("last-seen time out of range"))?;
                last_seen.push(m);
            }
        }
        let n_knobs = r.get_usize()?;
        let mut property_params = Vec::with_capacity(n_knobs.min(1024));
        for _ in 0..n_knobs {
            let property = r.get_str()?.to_string();
            let params = get_knobs(&mut r)?;
            let cross_params = get_knobs(&mut r)?;
            property_params.push(PropertyKnobs {
                property,
                params,
                cross_params,
            });
        }
        r.finish()?;
        Ok(Model {
            users,
            items,
            ui,
            last_seen,
            als,
            knn,
            properties,
            params,
            cross_params,
            days,
            reference_day,
            property_params,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Model {
        let mut t = vec![(0, 0, 1.0), (0, 1, 2.0), (1, 1, 3.0)];
        let ui = Csr::from_triplets(2, 2, &mut t);
        let props = Property::from_item_values(
            "brand",
            2,
            &[vec!["A".into()], vec!["A".into(), "B".into()]],
        );
        Model {
            users: vec!["u1".into(), "u2".into()],
            items: vec!["i1".into(), "i2".into()],
            ui,
            last_seen: vec![1, 2, 3],
            als: Some(AlsModel {
                factors: 1,
                user_factors: vec![0.5, 0.25].into(),
                item_factors: vec![1.0, 2.0].into(),
            }),
            knn: Some(Csr::from_triplets(2, 2, &mut [(0, 1, 0.5)])),
            properties: vec![props],
            params: HybridParams {
                prior: 1.0,
                activity_exp: 0.5,
                knn_weight: 0.5,
                volume: 1.0,
                days_exp: 0.0,
                tenure_exp: 0.0,
                own: Own::Affinity,
            },
            cross_params: HybridParams {
                prior: f32::INFINITY,
                activity_exp: 1.0,
                knn_weight: 1.0,
                volume: 0.0,
                days_exp: 0.0,
                tenure_exp: 0.0,
                own: Own::Affinity,
            },
            days: DayIndex::from_records(
                &[0, 2, 3, 4],
                &[0, 1440 * 3, 1440, 1440 * 2 + 7],
                &[1.0, 2.0, 3.0, 4.0],
            ),
            reference_day: 3,
            property_params: vec![PropertyKnobs {
                property: "brand".into(),
                params: HybridParams::own_only(Own::Days(30.0)),
                cross_params: HybridParams::own_only(Own::Recent),
            }],
        }
    }

    /// Encoding checks for interrupts between its sections: the first failing check stops it,
    /// and a check that always passes gives the same bytes as `encode`.
    #[test]
    fn encoding_stops_at_an_interrupt() {
        let m = small();
        let mut calls = 0;
        let full = m
            .encode_with(&mut || {
                calls += 1;
                Ok(())
            })
            .unwrap();
        assert_eq!(full, m.encode());
        assert!(calls >= 8, "checked {calls} times");
        for stop_at in 1..=calls {
            let mut n = 0;
            let r = m.encode_with(&mut || {
                n += 1;
                if n == stop_at {
                    Err(Interrupted)
                } else {
                    Ok(())
                }
            });
            assert!(r.is_err(), "stop at check {stop_at}");
            assert_eq!(n, stop_at, "no check after the interrupt");
        }
    }

    /// The encoding taken every `piece` bytes of an array (and between sections), with the rest.
    fn pieces_of(m: &Model, piece: usize) -> Vec<Vec<u8>> {
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        let rest = m
            .encode_in(piece, &mut |buf| {
                pieces.push(std::mem::take(buf));
                Ok(())
            })
            .unwrap();
        pieces.push(rest);
        pieces
    }

    /// The pieces taken between sections, in order, are the encoding.
    #[test]
    fn encoding_in_pieces_is_the_encoding() {
        let m = small();
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        let rest = m
            .encode_sections(&mut |buf| {
                if buf.len() >= 16 {
                    pieces.push(std::mem::take(buf));
                }
                Ok(())
            })
            .unwrap();
        assert!(pieces.len() >= 3, "{} pieces", pieces.len());
        pieces.push(rest);
        assert_eq!(pieces.concat(), m.encode());
        // Arrays cut into pieces of a few elements (a large model's, every `PIECE` bytes): the
        // same bytes, which decode to the model.
        let small_pieces = pieces_of(&m, 4);
        let mut whole_arrays = 0;
        m.encode_in(usize::MAX, &mut |_| {
            whole_arrays += 1;
            Ok(())
        })
        .unwrap();
        assert!(
            small_pieces.len() > whole_arrays + 5,
            "{} pieces, {whole_arrays} with whole arrays",
            small_pieces.len()
        );
        let bytes = small_pieces.concat();
        assert_eq!(bytes, m.encode());
        assert_eq!(Model::decode(&bytes).unwrap(), m);
    }

    /// A build encodes the head while item-kNN trains (`knn` not set yet) and the tail once it
    /// is: the two, in pieces, are the whole model's encoding.
    #[test]
    fn head_without_knn_then_tail_is_the_encoding() {
        let full = small();
        let mut m = small();
        let knn = m.knn.take();
        let mut pieces: Vec<Vec<u8>> = Vec::new();
        fn take(pieces: &mut Vec<Vec<u8>>, buf: &mut Vec<u8>) -> Result<(), Interrupted> {
            if buf.len() >= 8 {
                pieces.push(std::mem::take(buf));
            }
            Ok(())
        }
        let head_rest = m
            .encode_head_sections(&mut |b| take(&mut pieces, b))
            .unwrap();
        pieces.push(head_rest);
        m.knn = knn;
        let rest = m
            .encode_tail_sections(&mut |b| take(&mut pieces, b))
            .unwrap();
        assert!(pieces.len() >= 4, "{} pieces", pieces.len());
        pieces.push(rest);
        let bytes = pieces.concat();
        assert_eq!(bytes, full.encode());
        assert_eq!(Model::decode(&bytes).unwrap(), full);
        // Without item-kNN at all, too.
        let mut none = small();
        none.knn = None;
        let mut bytes = none.encode_head_sections(&mut |_| Ok(())).unwrap();
        bytes.extend(none.encode_tail_sections(&mut |_| Ok(())).unwrap());
        assert_eq!(bytes, none.encode());
    }

    #[test]
    fn encode_decode_round_trip() {
        let m = small();
        let bytes = m.encode();
        assert_eq!(Model::decode(&bytes).unwrap(), m);
        assert_eq!(m.knobs_for("brand").0.own, Own::Days(30.0));
        assert_eq!(m.knobs_for("other").0, &m.params);
        // Every truncation is an error, never a panic.
        for cut in [0, 3, 10, bytes.len() / 2, bytes.len() - 1] {
            assert!(Model::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    /// A model stored by the previous release (format 5, the bytes of `small()`) is still read.
    #[test]
    fn format_5_models_are_still_read() {
        let v5 = include_bytes!("testdata/model_v5.bin");
        assert_eq!(&v5[4..8], &5u32.to_le_bytes());
        assert_eq!(Model::decode(v5).unwrap(), small());
        assert_ne!(&small().encode()[..], &v5[..], "written in format 6");
    }

    /// A model of some size: 3000 users with 0 to 30 items of 2000 (sorted rows), their days
    /// (weights of a few distinct values), latest times in their last day, 40 neighbours an
    /// item in no order, random factors.
    fn larger() -> Model {
        let mut rng = crate::util::rand::SplitMix64(7);
        let mut below = |n: u64| rng.next_u64() % n.max(1);
        let (users, items) = (3000usize, 2000usize);
        let mut t = Vec::new();
        for u in 0..users {
            for _ in 0..below(31) {
                t.push((
                    u as u32,
                    below(items as u64) as u32,
                    below(1000) as f32 * 0.37,
                ));
            }
        }
        let ui = Csr::from_triplets(users, items, &mut t);
        let days = crate::model::days::random_days(ui.nnz(), &mut below, (9000, 200, 4, 20, 0));
        let last_seen: Vec<i32> = (0..ui.nnz())
            .map(|p| (days.day0 + *days.of(p).0.last().unwrap() as i32) * 1440 + below(1440) as i32)
            .collect();
        let mut k = Vec::new();
        for i in 0..items {
            for _ in 0..40 {
                k.push((
                    i as u32,
                    below(items as u64) as u32,
                    below(1 << 20) as f32 / 7.0,
                ));
            }
        }
        let mut m = small();
        m.users = (0..users).map(|u| format!("user-{u}")).collect();
        m.items = (0..items).map(|i| format!("item-{i}")).collect();
        m.als = Some(AlsModel {
            factors: 4,
            user_factors: (0..users * 4)
                .map(|_| below(1 << 24) as f32)
                .collect::<Vec<_>>()
                .into(),
            item_factors: (0..items * 4)
                .map(|_| below(1 << 24) as f32)
                .collect::<Vec<_>>()
                .into(),
        });
        m.knn = Some(Csr::from_triplets(items, items, &mut k));
        m.properties = vec![Property::from_item_values(
            "brand",
            items,
            &(0..items)
                .map(|i| vec![format!("b{}", i % 17)])
                .collect::<Vec<_>>(),
        )];
        m.ui = ui;
        m.last_seen = last_seen;
        m.days = days;
        m
    }

    /// Format 6 reads back to the same model, in pieces or whole, and takes far fewer bytes than
    /// the arrays as fixed-width elements (format 5); every cut is an error.
    #[test]
    fn format_6_round_trips_in_fewer_bytes() {
        let m = larger();
        let bytes = m.encode();
        assert_eq!(Model::decode(&bytes).unwrap(), m);
        let pieces = pieces_of(&m, 4096);
        assert!(pieces.len() > 50, "{} pieces", pieces.len());
        assert_eq!(pieces.concat(), bytes);
        let knn = m.knn.as_ref().unwrap();
        let csr = |c: &Csr| c.indptr.len() * 8 + c.nnz() * 8;
        let fixed = csr(&m.ui)
            + m.last_seen.len() * 4
            + (m.users.len() + m.items.len()) * 4 * 4
            + csr(knn)
            + m.days.ptr.len() * 4
            + m.days.day.len() * 6;
        assert!(
            (bytes.len() as f64) < 0.75 * fixed as f64,
            "{} bytes, {fixed} as fixed-width arrays",
            bytes.len()
        );
        for cut in (0..bytes.len()).step_by(997).chain([bytes.len() - 1]) {
            assert!(Model::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        // Corrupt bytes: an error or a model, never a panic.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut b = bytes.clone();
            let at = 8 + (x as usize) % (b.len() - 8);
            b[at] ^= (x >> 32) as u8 | 1;
            let _ = Model::decode(&b);
        }
    }

    /// Floats: through a byte dictionary (at most 256 distinct), a two-byte one (at most
    /// 65536), else as they are; all read back bit for bit, NaN and -0 included.
    #[test]
    fn floats_by_dictionary_when_few_are_distinct() {
        // `distinct` values and NaN and -0: 2 more.
        for (distinct, width) in [(1usize, 1usize), (254, 1), (255, 2), (65534, 2), (65535, 4)] {
            let mut s: Vec<f32> = (0..100_000).map(|i| (i % distinct) as f32 * 0.5).collect();
            s[7] = f32::NAN;
            s[8] = -0.0;
            let mut w = Writer::new();
            put_f32s_coded(&mut w, &s, 1 << 12, &mut |_| Ok(())).unwrap();
            let mut r = Reader::new(w.as_slice());
            let back = get_f32s_coded(&mut r).unwrap();
            r.finish().unwrap();
            assert_eq!(
                back.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                s.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
            let dict_bytes = if width < 4 { 8 + 4 * (distinct + 2) } else { 0 };
            assert!(
                w.len() <= 1 + 8 + dict_bytes + s.len() * width,
                "{distinct} distinct: {} bytes",
                w.len()
            );
        }
        // A code beyond the dictionary is an error.
        let mut w = Writer::new();
        w.put_u8(1);
        w.put_u32s(&[0]);
        w.put_u64(1);
        w.put_u8(1);
        assert!(get_f32s_coded(&mut Reader::new(w.as_slice())).is_err());
    }

    #[test]
    fn property_index_and_lookup() {
        let m = small();
        let p = m.property("brand").unwrap();
        assert_eq!(p.values, vec!["A", "B"]);
        assert_eq!(p.items_for(&["A"]), vec![0, 1]);
        assert_eq!(p.items_for(&["B", "nope"]), vec![1]);
        assert!(p.items_for(&["nope"]).is_empty());
    }

    #[test]
    fn splitting_values() {
        assert_eq!(split_values("Action\u{1f}Comedy"), vec!["Action", "Comedy"]);
        assert_eq!(split_values(r#"["a", "b", null, 3]"#), vec!["a", "b", "3"]);
        assert_eq!(split_values("  "), Vec::<String>::new());
        assert_eq!(split_values("[not json"), vec!["[not json"]);
    }
}
