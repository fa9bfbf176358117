//! A trained model as stored: id maps, the affinity matrix, the collaborative models, the item
//! properties and the hybrid scoring knobs, with a versioned binary encoding. Pure Rust.
use crate::model::als::AlsModel;
use crate::model::csr::Csr;
use crate::model::days::DayIndex;
use crate::score::hybrid::{HybridParams, Own};
use crate::util::codec::{CodecError, Reader, Writer};
use crate::util::interrupt::Interrupted;

const MAGIC: [u8; 4] = *b"PGAM";
const VERSION: u32 = 5;

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

fn put_csr(w: &mut Writer, m: &Csr) {
    w.put_usize(m.n_rows);
    w.put_usize(m.n_cols);
    w.put_usizes(&m.indptr);
    w.put_u32s(&m.indices);
    w.put_f32s(&m.data);
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

/// [`put_csr`] with its arrays in pieces (see [`in_pieces`]).
fn put_csr_pieces(
    w: &mut Writer,
    m: &Csr,
    piece: usize,
    at: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), Interrupted>,
) -> Result<(), Interrupted> {
    w.put_usize(m.n_rows);
    w.put_usize(m.n_cols);
    w.put_usizes(&m.indptr);
    w.put_u64(m.indices.len() as u64);
    in_pieces(w, &m.indices, 4, piece, at, Writer::put_u32_elems)?;
    w.put_u64(m.data.len() as u64);
    in_pieces(w, &m.data, 4, piece, at, Writer::put_f32_elems)
}

fn get_csr(r: &mut Reader) -> Result<Csr, CodecError> {
    let n_rows = r.get_usize()?;
    let n_cols = r.get_usize()?;
    let indptr = r.get_usizes()?;
    let indices = r.get_u32s()?;
    let data = r.get_f32s()?;
    let ok = indptr.len() == n_rows + 1
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

    /// [`Model::encode_sections`] with pieces of `piece` bytes.
    fn encode_in(
        &self,
        piece: usize,
        at: &mut dyn FnMut(&mut Vec<u8>) -> Result<(), Interrupted>,
    ) -> Result<Vec<u8>, Interrupted> {
        let mut w = Writer::new();
        w.put_header(MAGIC, VERSION);
        w.put_strs(&self.users);
        at(&mut w.0)?;
        w.put_strs(&self.items);
        put_csr_pieces(&mut w, &self.ui, piece, at)?;
        at(&mut w.0)?;
        w.put_u64(self.last_seen.len() as u64);
        in_pieces(&mut w, &self.last_seen, 4, piece, at, |w, s| {
            let piece: Vec<u32> = s.iter().map(|&x| x as u32).collect();
            w.put_u32_elems(&piece);
        })?;
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
        match &self.knn {
            Some(k) => {
                w.put_bool(true);
                put_csr_pieces(&mut w, k, piece, at)?;
            }
            None => w.put_bool(false),
        }
        at(&mut w.0)?;
        w.put_usize(self.properties.len());
        for p in &self.properties {
            at(&mut w.0)?;
            w.put_str(&p.name);
            w.put_strs(&p.values);
            put_csr(&mut w, &p.value_items);
        }
        put_knobs(&mut w, &self.params);
        put_knobs(&mut w, &self.cross_params);
        w.put_u32(self.days.day0 as u32);
        w.put_u32(self.reference_day as u32);
        at(&mut w.0)?;
        w.put_u64(self.days.ptr.len() as u64);
        in_pieces(&mut w, &self.days.ptr, 4, piece, at, Writer::put_u32_elems)?;
        // The days as bytes (a byte count, then each u16 little-endian).
        w.put_u64(self.days.day.len() as u64 * 2);
        in_pieces(&mut w, &self.days.day, 2, piece, at, Writer::put_u16_elems)?;
        w.put_u64(self.days.weight.len() as u64);
        in_pieces(
            &mut w,
            &self.days.weight,
            4,
            piece,
            at,
            Writer::put_f32_elems,
        )?;
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
        r.expect_header(MAGIC, VERSION)?;
        let users = r.get_strs()?;
        let items = r.get_strs()?;
        let ui = get_csr(&mut r)?;
        if ui.n_rows != users.len() || ui.n_cols != items.len() {
            return Err(bad("affinity shape does not match the id maps"));
        }
        let last_seen: Vec<i32> = r.get_u32s()?.into_iter().map(|x| x as i32).collect();
        if last_seen.len() != ui.nnz() {
            return Err(bad("last-seen times do not match the affinity matrix"));
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
            let k = get_csr(&mut r)?;
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
            let value_items = get_csr(&mut r)?;
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
        let days = DayIndex {
            day0,
            ptr: ptr.into(),
            day: day.into(),
            weight: weight.into(),
        };
        if !days.is_valid_for(ui.nnz()) {
            return Err(bad("engagement days do not match the affinity matrix"));
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
        let mut small_pieces: Vec<Vec<u8>> = Vec::new();
        let rest = m
            .encode_in(4, &mut |buf| {
                small_pieces.push(std::mem::take(buf));
                Ok(())
            })
            .unwrap();
        small_pieces.push(rest);
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
