//! One key of a `jsonb` object read in place, in PostgreSQL's stored format of `jsonb`
//! (`src/include/utils/jsonb.h`: stable on disk across major versions, which `pg_upgrade`
//! relies on), so the build's scan takes an event's property from its jsonb column without the
//! copy, the lookup call and the new `text` that `doc ->> 'key'` costs on every row. Pure Rust.
//!
//! Only what `->>` returns as the value's own bytes is read here: a string, a JSON `null`, a
//! boolean, or no such key; a number or a nested array or object (whose text `->>` renders) is
//! [`Field::Other`], for which the caller asks PostgreSQL's `->>`. So is anything this reader
//! does not recognise (it never guesses).

/// What `doc ->> key` is, read from the container's bytes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Field<'a> {
    /// SQL NULL: the key is absent, its value is JSON `null`, or the document is not an object.
    Null,
    /// A string (its bytes as stored: unescaped, in the database's encoding).
    Str(&'a [u8]),
    /// `true` or `false`.
    Bool(bool),
    /// A number or a container: rendered by PostgreSQL (`->>`), not here.
    Other,
}

const JB_CMASK: u32 = 0x0FFF_FFFF;
const JB_FSCALAR: u32 = 0x1000_0000;
const JB_FOBJECT: u32 = 0x2000_0000;
const JB_FARRAY: u32 = 0x4000_0000;
const JENTRY_OFFLENMASK: u32 = 0x0FFF_FFFF;
const JENTRY_TYPEMASK: u32 = 0x7000_0000;
const JENTRY_HAS_OFF: u32 = 0x8000_0000;
const JENTRY_ISSTRING: u32 = 0x0000_0000;
const JENTRY_ISBOOL_FALSE: u32 = 0x2000_0000;
const JENTRY_ISBOOL_TRUE: u32 = 0x3000_0000;
const JENTRY_ISNULL: u32 = 0x4000_0000;

#[inline]
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// `doc ->> key` of the root container `c` (the bytes after the varlena header). Malformed
/// bytes give [`Field::Other`], so the caller asks PostgreSQL, which reports them.
pub(crate) fn object_field<'a>(c: &'a [u8], key: &[u8]) -> Field<'a> {
    lookup(c, key).unwrap_or(Field::Other)
}

fn lookup<'a>(c: &'a [u8], key: &[u8]) -> Option<Field<'a>> {
    let header = u32_at(c, 0)?;
    let count = (header & JB_CMASK) as usize;
    if header & JB_FOBJECT == 0 {
        // `->>` with a key on an array or a scalar is NULL; anything else is not ours to judge.
        return (header & (JB_FARRAY | JB_FSCALAR) != 0).then_some(Field::Null);
    }
    let entry = |i: usize| u32_at(c, 4 + 4 * i);
    let base = 4usize.checked_add(count.checked_mul(8)?)?;
    if base > c.len() {
        return None;
    }
    // An entry's offset from the data's start: the lengths of the entries before it, summed back
    // to the nearest entry that stores its end offset instead (every 32nd).
    let offset = |i: usize| -> Option<usize> {
        let mut off = 0usize;
        for j in (0..i).rev() {
            let e = entry(j)?;
            off += (e & JENTRY_OFFLENMASK) as usize;
            if e & JENTRY_HAS_OFF != 0 {
                break;
            }
        }
        Some(off)
    };
    let span = |i: usize| -> Option<(usize, usize)> {
        let e = entry(i)?;
        let off = offset(i)?;
        let len = if e & JENTRY_HAS_OFF != 0 {
            ((e & JENTRY_OFFLENMASK) as usize).checked_sub(off)?
        } else {
            (e & JENTRY_OFFLENMASK) as usize
        };
        let start = base.checked_add(off)?;
        let end = start.checked_add(len)?;
        (end <= c.len()).then_some((start, end))
    };
    // Keys are sorted by length, then bytes: a binary search, as PostgreSQL's own lookup.
    let (mut lo, mut hi) = (0usize, count);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if entry(mid)? & JENTRY_TYPEMASK != JENTRY_ISSTRING {
            return None;
        }
        let (s, e) = span(mid)?;
        let cand = &c[s..e];
        let ord = cand.len().cmp(&key.len()).then_with(|| cand.cmp(key));
        match ord {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => {
                let v = mid + count;
                let ty = entry(v)? & JENTRY_TYPEMASK;
                return match ty {
                    JENTRY_ISSTRING => {
                        let (s, e) = span(v)?;
                        Some(Field::Str(&c[s..e]))
                    }
                    JENTRY_ISNULL => Some(Field::Null),
                    JENTRY_ISBOOL_TRUE => Some(Field::Bool(true)),
                    JENTRY_ISBOOL_FALSE => Some(Field::Bool(false)),
                    _ => Some(Field::Other),
                };
            }
        }
    }
    Some(Field::Null)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The layout constants written out here (so the reader stays plain Rust) are those of the
    /// PostgreSQL headers the extension is built against (`jsonb.h`), whichever version that is.
    #[test]
    fn layout_constants_are_the_servers() {
        use pgrx::pg_sys;
        let ours = [
            JB_CMASK,
            JB_FSCALAR,
            JB_FOBJECT,
            JB_FARRAY,
            JENTRY_OFFLENMASK,
            JENTRY_TYPEMASK,
            JENTRY_HAS_OFF,
            JENTRY_ISSTRING,
            JENTRY_ISBOOL_FALSE,
            JENTRY_ISBOOL_TRUE,
            JENTRY_ISNULL,
        ];
        let server = [
            pg_sys::JB_CMASK,
            pg_sys::JB_FSCALAR,
            pg_sys::JB_FOBJECT,
            pg_sys::JB_FARRAY,
            pg_sys::JENTRY_OFFLENMASK,
            pg_sys::JENTRY_TYPEMASK,
            pg_sys::JENTRY_HAS_OFF,
            pg_sys::JENTRY_ISSTRING,
            pg_sys::JENTRY_ISBOOL_FALSE,
            pg_sys::JENTRY_ISBOOL_TRUE,
            pg_sys::JENTRY_ISNULL,
        ];
        assert_eq!(ours, server);
    }

    /// A scalar of the test encoder.
    #[derive(Clone)]
    pub(crate) enum V {
        S(&'static str),
        Null,
        B(bool),
        /// Raw bytes stored with the given entry type (a number's, a container's).
        Raw(u32, Vec<u8>),
    }

    /// Encodes a flat object as PostgreSQL stores it (keys sorted by length then bytes, every
    /// 32nd entry storing its end offset, numbers and containers 4-byte aligned).
    pub(crate) fn encode_object(pairs: &[(&str, V)]) -> Vec<u8> {
        let mut pairs = pairs.to_vec();
        pairs.sort_by(|a, b| {
            a.0.len()
                .cmp(&b.0.len())
                .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
        });
        let n = pairs.len();
        let mut entries = Vec::with_capacity(2 * n);
        let mut data: Vec<u8> = Vec::new();
        let items: Vec<(u32, Vec<u8>)> = pairs
            .iter()
            .map(|(k, _)| (JENTRY_ISSTRING, k.as_bytes().to_vec()))
            .chain(pairs.iter().map(|(_, v)| match v {
                V::S(s) => (JENTRY_ISSTRING, s.as_bytes().to_vec()),
                V::Null => (JENTRY_ISNULL, Vec::new()),
                V::B(true) => (JENTRY_ISBOOL_TRUE, Vec::new()),
                V::B(false) => (JENTRY_ISBOOL_FALSE, Vec::new()),
                V::Raw(t, b) => (*t, b.clone()),
            }))
            .collect();
        let mut last_end = 0usize;
        for (i, (ty, bytes)) in items.into_iter().enumerate() {
            if ty != JENTRY_ISSTRING && ty != JENTRY_ISNULL && ty & 0x6000_0000 != 0x2000_0000 {
                while !data.len().is_multiple_of(4) {
                    data.push(0);
                }
            }
            data.extend_from_slice(&bytes);
            let end = data.len();
            entries.push(if i % 32 == 0 {
                ty | JENTRY_HAS_OFF | end as u32
            } else {
                ty | (end - last_end) as u32
            });
            last_end = end;
        }
        let mut out = (JB_FOBJECT | n as u32).to_ne_bytes().to_vec();
        for e in entries {
            out.extend_from_slice(&e.to_ne_bytes());
        }
        out.extend_from_slice(&data);
        out
    }

    #[test]
    fn reads_strings_nulls_and_booleans_and_leaves_the_rest_to_postgres() {
        let doc = encode_object(&[
            ("category", V::S("Footwear")),
            ("brand", V::S("Puma")),
            ("price", V::Raw(0x1000_0000, vec![1, 2, 3, 4, 5, 6])),
            ("gone", V::Null),
            ("new", V::B(true)),
            ("old", V::B(false)),
            ("tags", V::Raw(0x5000_0000, vec![0; 8])),
            ("", V::S("empty key")),
            ("naïve", V::S("ü")),
        ]);
        assert_eq!(object_field(&doc, b"category"), Field::Str(b"Footwear"));
        assert_eq!(object_field(&doc, b"brand"), Field::Str(b"Puma"));
        assert_eq!(object_field(&doc, b"price"), Field::Other);
        assert_eq!(object_field(&doc, b"tags"), Field::Other);
        assert_eq!(object_field(&doc, b"gone"), Field::Null);
        assert_eq!(object_field(&doc, b"missing"), Field::Null);
        assert_eq!(object_field(&doc, b"new"), Field::Bool(true));
        assert_eq!(object_field(&doc, b"old"), Field::Bool(false));
        assert_eq!(object_field(&doc, b""), Field::Str(b"empty key"));
        assert_eq!(
            object_field(&doc, "naïve".as_bytes()),
            Field::Str("ü".as_bytes())
        );
    }

    #[test]
    fn finds_every_key_past_the_stored_offsets() {
        // 100 keys: the values' entries are past several of the entries that store offsets.
        let keys: Vec<String> = (0..100).map(|i| format!("key{i}")).collect();
        let vals: Vec<String> = (0..100)
            .map(|i| "v".repeat(i % 7) + &i.to_string())
            .collect();
        let leak = |s: &String| -> &'static str { Box::leak(s.clone().into_boxed_str()) };
        let pairs: Vec<(&str, V)> = keys
            .iter()
            .zip(&vals)
            .map(|(k, v)| (leak(k), V::S(leak(v))))
            .collect();
        let doc = encode_object(&pairs);
        for (k, v) in keys.iter().zip(&vals) {
            assert_eq!(
                object_field(&doc, k.as_bytes()),
                Field::Str(v.as_bytes()),
                "{k}"
            );
        }
        assert_eq!(object_field(&doc, b"key100"), Field::Null);
        assert_eq!(object_field(&doc, b"k"), Field::Null);
    }

    #[test]
    fn arrays_and_scalars_are_null_and_malformed_bytes_go_to_postgres() {
        let array = (JB_FARRAY | 2).to_ne_bytes().to_vec();
        assert_eq!(object_field(&array, b"a"), Field::Null);
        let scalar = (JB_FARRAY | JB_FSCALAR | 1).to_ne_bytes().to_vec();
        assert_eq!(object_field(&scalar, b"a"), Field::Null);
        let empty = JB_FOBJECT.to_ne_bytes().to_vec();
        assert_eq!(object_field(&empty, b"a"), Field::Null);
        assert_eq!(object_field(&[], b"a"), Field::Other);
        assert_eq!(object_field(&[0, 0, 0, 0], b"a"), Field::Other);
        let doc = encode_object(&[("category", V::S("Footwear")), ("b", V::S("x"))]);
        for cut in 0..doc.len() {
            let f = object_field(&doc[..cut], b"category");
            assert!(matches!(f, Field::Other), "cut at {cut}: {f:?}");
        }
        // Counts and lengths past the end are caught, never read.
        let mut lying = doc.clone();
        lying[..4].copy_from_slice(&(JB_FOBJECT | 0x0FFF_FFFF).to_ne_bytes());
        assert_eq!(object_field(&lying, b"category"), Field::Other);
    }
}
