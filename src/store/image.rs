//! The serving image of a model: everything `recommend_audience` and `explain` read (id lists,
//! the affinity matrix, engagement days, the collaborative models, the property indexes, the knobs)
//! plus what the scorer would otherwise precompute per backend (activity totals, CF denominators,
//! the kNN transpose, active days and tenures), laid out as aligned arrays so that a file holding it
//! can be memory-mapped and read in place by every backend. Pure Rust.
//!
//! Layout: a header (magic, format, byte order, word size, two caller tags, total length), then
//! sections in a fixed order; every array is its length (u64) followed by its elements at the next
//! 64-byte boundary; small structured metadata (knobs, names) is one codec blob. A trailer magic
//! ends the image. The format is local to one machine (native byte order, `usize` width), which is
//! why it is a cache next to the stored model, never a replacement for it.
use crate::model::als::AlsModel;
use crate::model::csr::Csr;
use crate::model::days::DayIndex;
use crate::score::hybrid::{HybridParams, Own, Returns, ScorerParts};
use crate::store::stored::{get_knobs, put_knobs, Model, PropertyKnobs};
use crate::util::buf::{Buf, Mapping, Pod, StrList};
use crate::util::codec::{Reader, Writer};
use std::io::Write;
use std::sync::Arc;

const MAGIC: [u8; 8] = *b"PGAUDIMG";
const TRAILER: [u8; 8] = *b"PGAUDEND";
const FORMAT: u64 = 1;
const ORDER: u64 = 0x0102_0304_0506_0708;
const ALIGN: u64 = 64;

/// Why an image cannot be used (it is then rebuilt from the stored model).
#[derive(Debug, Clone, PartialEq)]
pub enum ImageError {
    /// Not an image of this format, machine, or of the model asked for (tags differ).
    Mismatch(&'static str),
    /// Truncated or inconsistent.
    Corrupt(&'static str),
}

impl std::fmt::Display for ImageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageError::Mismatch(m) => write!(f, "image of another model or format: {m}"),
            ImageError::Corrupt(m) => write!(f, "image is damaged: {m}"),
        }
    }
}

/// One property as served: sorted values and, per value, its items.
#[derive(Clone, Debug, PartialEq)]
pub struct ServedProperty {
    pub name: String,
    pub values: StrList,
    pub value_items: Csr,
}

impl ServedProperty {
    /// Items having any of the given values (sorted, unique); unknown values are skipped.
    pub fn items_for(&self, wanted: &[&str]) -> Vec<u32> {
        let mut items: Vec<u32> = Vec::new();
        for w in wanted {
            if let Ok(v) = self.values.binary_search(w) {
                items.extend_from_slice(self.value_items.row(v).0);
            }
        }
        items.sort_unstable();
        items.dedup();
        items
    }
}

/// A model as served: read in place from an image.
#[derive(Clone, Debug, PartialEq)]
pub struct Served {
    pub users: StrList,
    pub items: StrList,
    pub ui: Csr,
    /// Per entry of `ui`: the latest event time, in minutes since 2000-01-01 UTC.
    pub last_seen: Buf<i32>,
    pub days: DayIndex,
    pub reference_day: i32,
    pub als: Option<AlsModel>,
    pub knn: Option<Csr>,
    pub properties: Vec<ServedProperty>,
    pub params: HybridParams,
    pub cross_params: HybridParams,
    pub property_params: Vec<PropertyKnobs>,
    pub parts: ScorerParts,
}

impl Served {
    pub fn property(&self, name: &str) -> Option<&ServedProperty> {
        self.properties.iter().find(|p| p.name == name)
    }

    /// The knobs for audiences of `property` (all users, cross-sell), as [`Model::knobs_for`].
    pub fn knobs_for(&self, property: &str) -> (&HybridParams, &HybridParams) {
        match self.property_params.iter().find(|k| k.property == property) {
            Some(k) => (&k.params, &k.cross_params),
            None => (&self.params, &self.cross_params),
        }
    }

    /// Every own measure the model's knobs use (their activity totals go into the image).
    pub fn own_measures(model: &Model) -> Vec<Own> {
        let mut owns: Vec<Own> = Vec::new();
        let all = [&model.params, &model.cross_params].into_iter().chain(
            model
                .property_params
                .iter()
                .flat_map(|k| [&k.params, &k.cross_params]),
        );
        for p in all {
            if !owns.contains(&p.own) {
                owns.push(p.own);
            }
        }
        owns
    }
}

fn bytes_of<T: Pod>(a: &[T]) -> &[u8] {
    // SAFETY: Pod types have no padding; the byte view covers exactly the slice.
    unsafe { std::slice::from_raw_parts(a.as_ptr() as *const u8, std::mem::size_of_val(a)) }
}

/// Where an image's bytes go, in order: small pieces (the header, lengths, padding) are copied
/// at once; large ones (the model's arrays) are borrowed for as long as the sink lives.
trait Sink<'a> {
    fn small(&mut self, b: &[u8]) -> std::io::Result<()>;
    fn large(&mut self, b: &'a [u8]) -> std::io::Result<()>;
}

/// A sink writing to a stream.
struct Stream<W>(W);

impl<'a, W: Write> Sink<'a> for Stream<W> {
    fn small(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.0.write_all(b)
    }

    fn large(&mut self, b: &'a [u8]) -> std::io::Result<()> {
        // In 8 MB pieces, so a buffered writer never holds a copy of the whole array.
        for piece in b.chunks(8 << 20) {
            self.0.write_all(piece)?;
        }
        Ok(())
    }
}

/// A sink keeping the pieces (consecutive small ones joined), for [`Layout`].
#[derive(Default)]
struct Pieces<'a>(Vec<std::borrow::Cow<'a, [u8]>>);

impl<'a> Sink<'a> for Pieces<'a> {
    fn small(&mut self, b: &[u8]) -> std::io::Result<()> {
        match self.0.last_mut() {
            Some(std::borrow::Cow::Owned(v)) => v.extend_from_slice(b),
            _ => self.0.push(std::borrow::Cow::Owned(b.to_vec())),
        }
        Ok(())
    }

    fn large(&mut self, b: &'a [u8]) -> std::io::Result<()> {
        self.0.push(std::borrow::Cow::Borrowed(b));
        Ok(())
    }
}

struct ImageWriter<S> {
    s: S,
    pos: u64,
}

impl<'a, S: Sink<'a>> ImageWriter<S> {
    fn raw(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.s.small(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn u64(&mut self, x: u64) -> std::io::Result<()> {
        self.raw(&x.to_ne_bytes())
    }

    fn arr<T: Pod>(&mut self, a: &'a [T]) -> std::io::Result<()> {
        self.u64(a.len() as u64)?;
        let pad = (ALIGN - self.pos % ALIGN) % ALIGN;
        self.raw(&[0u8; ALIGN as usize][..pad as usize])?;
        let b = bytes_of(a);
        self.s.large(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn strs(&mut self, l: &'a StrList) -> std::io::Result<()> {
        let (o, b) = l.parts();
        self.arr(o)?;
        self.arr(b)
    }

    fn csr(&mut self, m: &'a Csr) -> std::io::Result<()> {
        self.u64(m.n_rows as u64)?;
        self.u64(m.n_cols as u64)?;
        self.arr(&m.indptr)?;
        self.arr(&m.indices)?;
        self.arr(&m.data)
    }

    fn opt_csr(&mut self, m: Option<&'a Csr>) -> std::io::Result<()> {
        self.u64(m.is_some() as u64)?;
        match m {
            Some(m) => self.csr(m),
            None => Ok(()),
        }
    }
}

/// What an image holds besides the model's and the parts' own arrays: the knobs' blob and the
/// id and value lists in their served form (made once per image).
pub struct ImageTexts {
    meta: Vec<u8>,
    users: StrList,
    items: StrList,
    values: Vec<StrList>,
}

impl ImageTexts {
    pub fn of(model: &Model, parts: &ScorerParts) -> ImageTexts {
        ImageTexts {
            meta: meta_blob(model, parts),
            users: StrList::from_strs(&model.users),
            items: StrList::from_strs(&model.items),
            values: model
                .properties
                .iter()
                .map(|p| StrList::from_strs(&p.values))
                .collect(),
        }
    }
}

fn meta_blob(model: &Model, parts: &ScorerParts) -> Vec<u8> {
    let mut w = Writer::new();
    put_knobs(&mut w, &model.params);
    put_knobs(&mut w, &model.cross_params);
    w.put_usize(model.property_params.len());
    for k in &model.property_params {
        w.put_str(&k.property);
        put_knobs(&mut w, &k.params);
        put_knobs(&mut w, &k.cross_params);
    }
    w.put_usize(model.properties.len());
    for p in &model.properties {
        w.put_str(&p.name);
    }
    w.put_u32(model.days.day0 as u32);
    w.put_u32(model.reference_day as u32);
    w.put_usize(model.als.as_ref().map_or(0, |a| a.factors));
    w.put_usize(parts.own_totals.len());
    for (o, _) in &parts.own_totals {
        let (code, h) = o.code();
        w.put_u32(code as u32);
        w.put_f32(h);
    }
    w.into_inner()
}

fn write_all<'a, S: Sink<'a>>(
    out: &mut ImageWriter<S>,
    tags: [u64; 2],
    total: u64,
    model: &'a Model,
    parts: &'a ScorerParts,
    texts: &'a ImageTexts,
) -> std::io::Result<()> {
    out.raw(&MAGIC)?;
    for x in [
        FORMAT,
        ORDER,
        std::mem::size_of::<usize>() as u64,
        tags[0],
        tags[1],
        total,
    ] {
        out.u64(x)?;
    }
    out.arr(&texts.meta)?;
    out.strs(&texts.users)?;
    out.strs(&texts.items)?;
    out.csr(&model.ui)?;
    out.arr(&model.last_seen)?;
    out.arr(&model.days.ptr)?;
    out.arr(&model.days.day)?;
    out.arr(&model.days.weight)?;
    out.u64(model.als.is_some() as u64)?;
    if let Some(a) = &model.als {
        out.arr(&a.user_factors)?;
        out.arr(&a.item_factors)?;
    }
    out.opt_csr(model.knn.as_ref())?;
    for (p, values) in model.properties.iter().zip(&texts.values) {
        out.strs(values)?;
        out.csr(&p.value_items)?;
    }
    out.arr(&parts.t)?;
    out.arr(&parts.knn_den)?;
    out.arr(&parts.als_den)?;
    out.arr(&parts.als_volume)?;
    out.opt_csr(parts.knn_t.as_ref())?;
    out.u64(parts.returns.is_some() as u64)?;
    if let Some(r) = &parts.returns {
        out.arr(&r.days)?;
        out.arr(&r.tenure)?;
    }
    for (_, t) in &parts.own_totals {
        out.arr(t)?;
    }
    out.raw(&TRAILER)
}

/// Writes the image of `model` with the scorer's `parts` (from [`crate::score::hybrid::Scorer::parts`]
/// over the same model) to `w`; `tags` identify the model (checked when reading). Returns the byte
/// length. The sink is only written to, in order; a failure leaves a prefix (callers write to a
/// temporary file and rename it when complete).
pub fn write_image<W: Write>(
    w: W,
    tags: [u64; 2],
    model: &Model,
    parts: &ScorerParts,
) -> std::io::Result<u64> {
    let texts = ImageTexts::of(model, parts);
    // A first pass sizes the image, so the header can state the length a reader checks.
    let mut count = ImageWriter {
        s: Stream(std::io::sink()),
        pos: 0,
    };
    write_all(&mut count, tags, 0, model, parts, &texts)?;
    let total = count.pos;
    let mut out = ImageWriter {
        s: Stream(w),
        pos: 0,
    };
    write_all(&mut out, tags, total, model, parts, &texts)?;
    out.s.0.flush()?;
    Ok(total)
}

/// The image [`write_image`] writes, as pieces at known offsets (the model's arrays borrowed, not
/// copied), for a writer that fills it on several threads.
pub struct Layout<'a> {
    len: u64,
    /// The pieces in order, with their offsets.
    pieces: Vec<(u64, std::borrow::Cow<'a, [u8]>)>,
}

/// Bytes copied between two checks of [`Layout::copy_into`].
const COPY_STEP: usize = 4 << 20;

impl<'a> Layout<'a> {
    pub fn of(
        tags: [u64; 2],
        model: &'a Model,
        parts: &'a ScorerParts,
        texts: &'a ImageTexts,
    ) -> Layout<'a> {
        let lay = |total: u64| {
            let mut w = ImageWriter {
                s: Pieces::default(),
                pos: 0,
            };
            write_all(&mut w, tags, total, model, parts, texts).expect("pieces are kept in memory");
            (w.pos, w.s.0)
        };
        let (len, _) = lay(0);
        let (again, list) = lay(len);
        assert_eq!(again, len, "the same length with it stated");
        let mut at = 0u64;
        let pieces = list
            .into_iter()
            .map(|p| {
                let off = at;
                at += p.len() as u64;
                (off, p)
            })
            .collect();
        Layout { len, pieces }
    }

    /// The image's length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the image is empty (never: it has a header).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies the image's bytes `start..start + out.len()` into `out`, calling `check` every few
    /// megabytes (its error is returned).
    pub fn copy_range(
        &self,
        start: usize,
        out: &mut [u8],
        check: &(dyn Fn() -> std::io::Result<()> + Sync),
    ) -> std::io::Result<()> {
        let end = start + out.len();
        assert!(end as u64 <= self.len, "a range of the image");
        // The first piece that ends after `start`.
        let first = self
            .pieces
            .partition_point(|(off, p)| *off as usize + p.len() <= start);
        for (off, piece) in &self.pieces[first..] {
            let off = *off as usize;
            if off >= end {
                break;
            }
            let (lo, hi) = (off.max(start), (off + piece.len()).min(end));
            let mut at = lo;
            while at < hi {
                let step = (hi - at).min(COPY_STEP);
                out[at - start..at - start + step]
                    .copy_from_slice(&piece[at - off..at - off + step]);
                at += step;
                check()?;
            }
        }
        Ok(())
    }

    /// Copies the image into `dst` (exactly its length) on up to `threads` threads, each
    /// filling a contiguous range of about equal bytes, calling `check` every few megabytes (its
    /// error stops every thread and is returned). For the tests, which compare ranges cut
    /// anywhere with the streamed image; the build's writer fills windows of its file with
    /// [`Layout::copy_range`].
    #[cfg(test)]
    pub fn copy_into(
        &self,
        dst: &mut [u8],
        threads: usize,
        check: &(dyn Fn() -> std::io::Result<()> + Sync),
    ) -> std::io::Result<()> {
        assert_eq!(
            dst.len() as u64,
            self.len,
            "a destination of the image's length"
        );
        let chunk = dst.len().div_ceil(threads.clamp(1, 64)).max(1);
        let ranges: Vec<(usize, &mut [u8])> = dst
            .chunks_mut(chunk)
            .enumerate()
            .map(|(k, c)| (k * chunk, c))
            .collect();
        let results =
            crate::util::par::par_map(ranges, |(start, out)| self.copy_range(start, out, check));
        results.into_iter().collect()
    }
}

struct ImageReader {
    map: Arc<Mapping>,
    pos: usize,
}

const SHORT: ImageError = ImageError::Corrupt("truncated");

impl ImageReader {
    fn raw(&mut self, n: usize) -> Result<&[u8], ImageError> {
        let end = self.pos.checked_add(n).ok_or(SHORT)?;
        let b = self.map.bytes().get(self.pos..end).ok_or(SHORT)?;
        self.pos = end;
        Ok(b)
    }

    fn u64(&mut self) -> Result<u64, ImageError> {
        Ok(u64::from_ne_bytes(
            self.raw(8)?.try_into().expect("8 bytes"),
        ))
    }

    fn usize(&mut self) -> Result<usize, ImageError> {
        usize::try_from(self.u64()?).map_err(|_| ImageError::Corrupt("length out of range"))
    }

    fn flag(&mut self) -> Result<bool, ImageError> {
        match self.u64()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(ImageError::Corrupt("bad flag")),
        }
    }

    fn arr<T: Pod>(&mut self) -> Result<Buf<T>, ImageError> {
        let n = self.usize()?;
        self.pos = self.pos.div_ceil(ALIGN as usize) * ALIGN as usize;
        let b = Buf::mapped(&self.map, self.pos, n).ok_or(SHORT)?;
        self.pos += n * std::mem::size_of::<T>();
        Ok(b)
    }

    fn strs(&mut self) -> Result<StrList, ImageError> {
        let (o, b) = (self.arr::<u64>()?, self.arr::<u8>()?);
        StrList::from_parts(o, b).ok_or(ImageError::Corrupt("string list"))
    }

    fn csr(&mut self) -> Result<Csr, ImageError> {
        let (n_rows, n_cols) = (self.usize()?, self.usize()?);
        let m = Csr {
            n_rows,
            n_cols,
            indptr: self.arr()?,
            indices: self.arr()?,
            data: self.arr()?,
        };
        // Row bounds are checked here; column ids are bounds-checked where they are used.
        let ok = m.indptr.len() == n_rows + 1
            && m.indptr.first() == Some(&0)
            && m.indptr.last() == Some(&m.indices.len())
            && m.indices.len() == m.data.len()
            && m.indptr.windows(2).all(|w| w[0] <= w[1]);
        if ok {
            Ok(m)
        } else {
            Err(ImageError::Corrupt("sparse matrix"))
        }
    }

    fn opt_csr(&mut self) -> Result<Option<Csr>, ImageError> {
        if self.flag()? {
            Ok(Some(self.csr()?))
        } else {
            Ok(None)
        }
    }
}

/// Reads an image in place: every array of the result borrows from `map`. Fails when the image
/// is of another format, machine or model (`tags`), or is damaged in a way the structure shows.
pub fn read_image(map: Arc<Mapping>, tags: [u64; 2]) -> Result<Served, ImageError> {
    let mut r = ImageReader {
        map: map.clone(),
        pos: 0,
    };
    if r.raw(8)? != MAGIC {
        return Err(ImageError::Mismatch("not an image"));
    }
    let head = [r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?, r.u64()?];
    if head[0] != FORMAT || head[1] != ORDER || head[2] != std::mem::size_of::<usize>() as u64 {
        return Err(ImageError::Mismatch("format, byte order or word size"));
    }
    if [head[3], head[4]] != tags {
        return Err(ImageError::Mismatch("another model"));
    }
    if head[5] != map.bytes().len() as u64 || !map.bytes().ends_with(&TRAILER) {
        return Err(ImageError::Corrupt("length"));
    }
    let bad = |_| ImageError::Corrupt("metadata");
    let blob = r.arr::<u8>()?;
    let mut m = Reader::new(&blob);
    let params = get_knobs(&mut m).map_err(bad)?;
    let cross_params = get_knobs(&mut m).map_err(bad)?;
    let mut property_params = Vec::new();
    for _ in 0..m.get_usize().map_err(bad)? {
        let property = m.get_str().map_err(bad)?.to_string();
        let (params, cross_params) = (
            get_knobs(&mut m).map_err(bad)?,
            get_knobs(&mut m).map_err(bad)?,
        );
        property_params.push(PropertyKnobs {
            property,
            params,
            cross_params,
        });
    }
    let mut names = Vec::new();
    for _ in 0..m.get_usize().map_err(bad)? {
        names.push(m.get_str().map_err(bad)?.to_string());
    }
    let day0 = m.get_u32().map_err(bad)? as i32;
    let reference_day = m.get_u32().map_err(bad)? as i32;
    let factors = m.get_usize().map_err(bad)?;
    let mut owns = Vec::new();
    for _ in 0..m.get_usize().map_err(bad)? {
        let (code, h) = (m.get_u32().map_err(bad)?, m.get_f32().map_err(bad)?);
        owns.push(
            u8::try_from(code)
                .ok()
                .and_then(|c| Own::from_code(c, h))
                .ok_or(ImageError::Corrupt("own measure"))?,
        );
    }
    let users = r.strs()?;
    let items = r.strs()?;
    let ui = r.csr()?;
    let last_seen: Buf<i32> = r.arr()?;
    let days = DayIndex {
        day0,
        ptr: r.arr()?,
        day: r.arr()?,
        weight: r.arr()?,
    };
    let days_ok = days.ptr.len() == ui.nnz() + 1
        && days.ptr.first() == Some(&0)
        && days.ptr.last().map(|&x| x as usize) == Some(days.day.len())
        && days.day.len() == days.weight.len();
    if !days_ok
        || last_seen.len() != ui.nnz()
        || ui.n_rows != users.len()
        || ui.n_cols != items.len()
    {
        return Err(ImageError::Corrupt("shapes"));
    }
    let als = if r.flag()? {
        let a = AlsModel {
            factors,
            user_factors: r.arr()?,
            item_factors: r.arr()?,
        };
        if factors == 0
            || a.user_factors.len() != users.len() * factors
            || a.item_factors.len() != items.len() * factors
        {
            return Err(ImageError::Corrupt("ALS shapes"));
        }
        Some(a)
    } else {
        None
    };
    let knn = r.opt_csr()?;
    if knn
        .as_ref()
        .is_some_and(|k| k.n_rows != items.len() || k.n_cols != items.len())
    {
        return Err(ImageError::Corrupt("kNN shape"));
    }
    let mut properties = Vec::new();
    for name in names {
        let values = r.strs()?;
        let value_items = r.csr()?;
        if value_items.n_rows != values.len() || value_items.n_cols != items.len() {
            return Err(ImageError::Corrupt("property shape"));
        }
        properties.push(ServedProperty {
            name,
            values,
            value_items,
        });
    }
    let n = users.len();
    let (t, knn_den, als_den, als_volume) = (r.arr()?, r.arr()?, r.arr()?, r.arr()?);
    let knn_t = r.opt_csr()?;
    let returns = if r.flag()? {
        Some(Returns {
            days: r.arr()?,
            tenure: r.arr()?,
        })
    } else {
        None
    };
    let mut own_totals = Vec::new();
    for o in owns {
        own_totals.push((o, r.arr()?));
    }
    let parts = ScorerParts {
        t,
        knn_den,
        als_den,
        knn_t,
        als_volume,
        returns,
        own_totals,
    };
    let parts_ok = parts.t.len() == n
        && (knn.is_none()
            || (parts.knn_den.len() == n
                && parts
                    .knn_t
                    .as_ref()
                    .is_some_and(|k| k.n_rows == items.len() && k.n_cols == items.len())))
        && (als.is_none() || (parts.als_den.len() == n && parts.als_volume.len() == n))
        && parts
            .returns
            .as_ref()
            .is_some_and(|x| x.days.len() == n && x.tenure.len() == n)
        && parts.own_totals.iter().all(|(_, t)| t.len() == n);
    if !parts_ok {
        return Err(ImageError::Corrupt("scorer parts"));
    }
    if r.raw(8)? != TRAILER || r.pos != map.bytes().len() {
        return Err(ImageError::Corrupt("trailer"));
    }
    Ok(Served {
        users,
        items,
        ui,
        last_seen,
        days,
        reference_day,
        als,
        knn,
        properties,
        params,
        cross_params,
        property_params,
        parts,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::score::hybrid::Scorer;
    use crate::store::stored::Property;

    pub(crate) fn model() -> Model {
        let mut t = vec![(0u32, 0u32, 1.0f32), (0, 1, 2.0), (1, 1, 3.0), (2, 2, 0.5)];
        let ui = Csr::from_triplets(3, 3, &mut t);
        let days = DayIndex::from_records(
            &[0, 1, 3, 4, 5],
            &[1440, 1440, 3 * 1440, 2 * 1440, 5 * 1440],
            &[1.0, 1.0, 1.0, 3.0, 0.5],
        );
        let mut k = vec![(0u32, 1u32, 0.5f32), (1, 0, 0.5), (1, 2, 0.25)];
        let mut params = HybridParams::own_only(Own::Days(30.0));
        params.knn_weight = 0.5;
        Model {
            users: vec!["u1".into(), "u2".into(), "ü3".into()],
            items: vec!["a".into(), "b".into(), "c".into()],
            last_seen: (0..ui.nnz() as i32).collect(),
            als: Some(AlsModel {
                factors: 2,
                user_factors: vec![0.1, 0.2, 0.3, 0.4, 0.5, 0.6].into(),
                item_factors: vec![1.0, 0.0, 0.0, 1.0, 0.5, 0.5].into(),
            }),
            knn: Some(Csr::from_triplets(3, 3, &mut k)),
            properties: vec![Property::from_item_values(
                "brand",
                3,
                &[
                    vec!["X".into()],
                    vec!["Y".into()],
                    vec!["X".into(), "Z".into()],
                ],
            )],
            params,
            cross_params: HybridParams::pure_cf(1.0, 1.0),
            days,
            reference_day: 6,
            property_params: vec![PropertyKnobs {
                property: "brand".into(),
                params: HybridParams::own_only(Own::Days(f32::INFINITY)),
                cross_params: HybridParams::pure_cf(0.5, 0.5),
            }],
            ui,
        }
    }

    fn scorer(m: &Model) -> Scorer<'_> {
        Scorer::new(&m.ui, m.als.as_ref(), m.knn.as_ref()).with_days(&m.days, m.reference_day)
    }

    fn image(m: &Model, tags: [u64; 2]) -> Vec<u8> {
        let parts = scorer(m).parts(&Served::own_measures(m));
        let mut out = Vec::new();
        let n = write_image(&mut out, tags, m, &parts).unwrap();
        assert_eq!(n as usize, out.len());
        out
    }

    /// The laid-out image, filled on any number of threads (ranges cutting pieces anywhere), is
    /// the streamed image byte for byte; a failing check stops it with its error.
    #[test]
    fn layout_copied_on_threads_is_the_image() {
        let m = model();
        let want = image(&m, [7, 42]);
        let parts = scorer(&m).parts(&Served::own_measures(&m));
        let texts = ImageTexts::of(&m, &parts);
        let lay = Layout::of([7, 42], &m, &parts, &texts);
        assert_eq!(lay.len() as usize, want.len());
        for threads in [1, 2, 3, 7, 64] {
            let mut got = vec![0xAAu8; want.len()];
            lay.copy_into(&mut got, threads, &|| Ok(())).unwrap();
            assert!(got == want, "{threads} threads");
        }
        let mut got = vec![0u8; want.len()];
        let err = lay
            .copy_into(&mut got, 2, &|| Err(std::io::Error::other("stop")))
            .unwrap_err();
        assert_eq!(err.to_string(), "stop");
    }

    #[test]
    fn served_image_scores_like_the_model() {
        let m = model();
        let bytes = image(&m, [7, 42]);
        let s = read_image(Arc::new(Mapping::of_bytes(&bytes)), [7, 42]).unwrap();
        assert_eq!(s.users.iter().collect::<Vec<_>>(), vec!["u1", "u2", "ü3"]);
        assert_eq!(s.ui, m.ui);
        assert_eq!(&s.last_seen[..], &m.last_seen[..]);
        assert_eq!(s.days, m.days);
        assert_eq!(s.als, m.als);
        assert_eq!(s.knn, m.knn);
        assert_eq!(s.property_params, m.property_params);
        let p = s.property("brand").unwrap();
        assert_eq!(p.items_for(&["X"]), vec![0, 2]);
        assert_eq!(p.items_for(&["Z", "nope"]), vec![2]);
        let own =
            Scorer::new(&m.ui, m.als.as_ref(), m.knn.as_ref()).with_days(&m.days, m.reference_day);
        let served = Scorer::from_parts(
            &s.ui,
            s.als.as_ref(),
            s.knn.as_ref(),
            Some((&s.days, s.reference_day)),
            s.parts.clone(),
        );
        for knobs in [
            &m.params,
            &m.cross_params,
            &m.property_params[0].params,
            &m.property_params[0].cross_params,
        ] {
            for items in [vec![0u32, 2], vec![1]] {
                assert_eq!(
                    own.score(&items, knobs),
                    served.score(&items, knobs),
                    "{knobs:?} {items:?}"
                );
            }
        }
        assert_eq!(own.explain(0, &[1], 5), served.explain(0, &[1], 5));
    }

    #[test]
    fn one_own_measure_computed_in_the_main_pass_matches_the_separate_pass() {
        let m = model();
        let sc = scorer(&m);
        for own in [
            Own::Days(30.0),
            Own::Days(f32::INFINITY),
            Own::Weight(60.0),
            Own::Recent,
        ] {
            for items in [vec![0u32, 2], vec![1], vec![0, 1, 2]] {
                let fused = sc.components_with(&items, &[own]);
                let separate = sc.components_with(&items, &[own, Own::Weight(7.0)]);
                assert_eq!(fused.own[0], separate.own[0], "{own:?} {items:?}");
                assert_eq!(fused.e, separate.e);
            }
        }
    }

    #[test]
    fn a_file_image_is_read_in_place() {
        let m = model();
        let bytes = image(&m, [1, 2]);
        let path = std::env::temp_dir().join(format!("pga-image-{}", std::process::id()));
        std::fs::write(&path, &bytes).unwrap();
        let map = Arc::new(Mapping::of_file(&std::fs::File::open(&path).unwrap()).unwrap());
        std::fs::remove_file(&path).unwrap();
        let s = read_image(map.clone(), [1, 2]).unwrap();
        assert_eq!(s.ui.heap_bytes(), 0, "arrays are borrowed from the mapping");
        assert_eq!(s.items.get(2), "c");
    }

    #[test]
    fn wrong_model_truncated_or_damaged_images_are_refused() {
        let m = model();
        let bytes = image(&m, [1, 2]);
        let read = |b: &[u8], tags| read_image(Arc::new(Mapping::of_bytes(b)), tags);
        assert!(matches!(read(&bytes, [1, 3]), Err(ImageError::Mismatch(_))));
        assert!(matches!(
            read(&bytes[..8], [1, 2]),
            Err(ImageError::Corrupt(_))
        ));
        for cut in [bytes.len() / 3, bytes.len() - 1] {
            assert!(read(&bytes[..cut], [1, 2]).is_err(), "cut at {cut}");
        }
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(matches!(read(&bad, [1, 2]), Err(ImageError::Mismatch(_))));
        // Flipping every byte of the body in turn never panics: an error or an image whose arrays are
        // all in bounds.
        for i in (64..bytes.len() - 8).step_by(7) {
            let mut b = bytes.clone();
            b[i] ^= 0xA5;
            let _ = read(&b, [1, 2]);
        }
    }
}
