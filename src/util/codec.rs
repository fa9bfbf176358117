//! Little-endian binary codec for aggregate states and stored model blobs.
//!
//! Layout rules: scalars are fixed-width little-endian; strings and slices are prefixed with a
//! `u64` element count; a blob normally starts with a 4-byte magic and a `u32` format version
//! ([`Writer::put_header`] / [`Reader::expect_header`]).
//!
//! [`Reader`] never panics on truncated or corrupt input: every `get_*` returns
//! `Err(CodecError)` instead, and slice lengths are checked against the remaining bytes *before*
//! anything is allocated, so a garbage length cannot trigger a huge allocation.

use std::fmt;

/// Why decoding failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodecError {
    /// The input ended early: `needed` more bytes were required but only `remaining` were left.
    Truncated { needed: u64, remaining: usize },
    /// The blob does not start with the expected magic bytes.
    BadMagic { expected: [u8; 4], found: [u8; 4] },
    /// The blob's format version is not supported by this build.
    UnsupportedVersion { found: u32, max_supported: u32 },
    /// A string was not valid UTF-8.
    InvalidUtf8,
    /// A value was structurally invalid (out-of-range id, unsorted keys, bad flag, ...).
    Invalid(String),
    /// Bytes were left over after the value was fully decoded.
    TrailingBytes(usize),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::Truncated { needed, remaining } => {
                write!(
                    f,
                    "truncated input: needed {needed} more bytes, {remaining} left"
                )
            }
            CodecError::BadMagic { expected, found } => write!(
                f,
                "bad magic: expected {:?}, found {:?}",
                String::from_utf8_lossy(expected),
                String::from_utf8_lossy(found)
            ),
            CodecError::UnsupportedVersion {
                found,
                max_supported,
            } => {
                write!(f, "unsupported format version {found} (this build reads versions up to {max_supported})")
            }
            CodecError::InvalidUtf8 => write!(f, "invalid UTF-8 in string"),
            CodecError::Invalid(msg) => write!(f, "invalid data: {msg}"),
            CodecError::TrailingBytes(n) => write!(f, "{n} unexpected trailing bytes"),
        }
    }
}

impl std::error::Error for CodecError {}

/// Shorthand for building [`CodecError::Invalid`].
pub fn invalid(msg: impl Into<String>) -> CodecError {
    CodecError::Invalid(msg.into())
}

/// Appends little-endian values to a byte vector.
#[derive(Clone, Debug, Default)]
pub struct Writer(pub Vec<u8>);

macro_rules! put_slice_impl {
    ($name:ident, $elems:ident, $t:ty, $w:expr) => {
        /// Writes a `u64` element count followed by the elements, little-endian, in one bulk copy.
        pub fn $name(&mut self, s: &[$t]) {
            self.put_u64(s.len() as u64);
            self.$elems(s);
        }

        /// Writes the elements alone, little-endian (the count written before, e.g. for an array
        /// written in pieces).
        pub fn $elems(&mut self, s: &[$t]) {
            let start = self.0.len();
            self.0.resize(start + s.len() * $w, 0);
            for (dst, x) in self.0[start..].chunks_exact_mut($w).zip(s) {
                dst.copy_from_slice(&x.to_le_bytes());
            }
        }
    };
}

impl Writer {
    pub fn new() -> Self {
        Writer(Vec::new())
    }

    pub fn with_capacity(cap: usize) -> Self {
        Writer(Vec::with_capacity(cap))
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }

    pub fn into_inner(self) -> Vec<u8> {
        self.0
    }

    /// Reserves room for `additional` more bytes.
    pub fn reserve(&mut self, additional: usize) {
        self.0.reserve(additional);
    }

    /// Writes a 4-byte magic and a `u32` format version.
    pub fn put_header(&mut self, magic: [u8; 4], version: u32) {
        self.0.extend_from_slice(&magic);
        self.put_u32(version);
    }

    #[inline]
    pub fn put_u8(&mut self, v: u8) {
        self.0.push(v);
    }

    #[inline]
    pub fn put_bool(&mut self, v: bool) {
        self.0.push(v as u8);
    }

    #[inline]
    pub fn put_u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    #[inline]
    pub fn put_u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    #[inline]
    pub fn put_i64(&mut self, v: i64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    #[inline]
    pub fn put_f32(&mut self, v: f32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    #[inline]
    pub fn put_f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    /// Writes a `usize` as `u64`.
    #[inline]
    pub fn put_usize(&mut self, v: usize) {
        self.put_u64(v as u64);
    }

    /// Writes `Option<i64>` as a flag byte (0/1) followed by the value when present.
    pub fn put_opt_i64(&mut self, v: Option<i64>) {
        match v {
            None => self.put_u8(0),
            Some(x) => {
                self.put_u8(1);
                self.put_i64(x);
            }
        }
    }

    /// Writes a `u64` byte length followed by the UTF-8 bytes.
    pub fn put_str(&mut self, s: &str) {
        self.put_bytes(s.as_bytes());
    }

    /// Writes a `u64` length followed by the bytes.
    pub fn put_bytes(&mut self, b: &[u8]) {
        self.put_u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    /// Writes raw bytes with no length prefix (the reader must know the length).
    pub fn put_raw(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }

    /// Writes many strings compactly: count, then per-string byte lengths (`u32`s), then one
    /// concatenated blob. Read back with [`Reader::get_strs`].
    pub fn put_strs<S: AsRef<str>>(&mut self, strs: &[S]) {
        let lens: Vec<u32> = strs
            .iter()
            .map(|s| u32::try_from(s.as_ref().len()).expect("string longer than 4 GiB"))
            .collect();
        self.put_u32s(&lens);
        let total: usize = strs.iter().map(|s| s.as_ref().len()).sum();
        self.put_u64(total as u64);
        self.0.reserve(total);
        for s in strs {
            self.0.extend_from_slice(s.as_ref().as_bytes());
        }
    }

    put_slice_impl!(put_u32s, put_u32_elems, u32, 4);
    put_slice_impl!(put_u64s, put_u64_elems, u64, 8);
    put_slice_impl!(put_i64s, put_i64_elems, i64, 8);
    put_slice_impl!(put_f32s, put_f32_elems, f32, 4);
    put_slice_impl!(put_f64s, put_f64_elems, f64, 8);
    put_slice_impl!(put_u16s, put_u16_elems, u16, 2);

    /// Appends `v` as an unsigned LEB128 varint: 7 bits a byte, low bits first (1 to 10 bytes).
    #[inline]
    pub fn put_uvarint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push(v as u8 | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    /// Appends `v` zigzag-coded (0, -1, 1, -2, ... as 0, 1, 2, 3, ...) as a varint: small
    /// differences of either sign take one or two bytes.
    #[inline]
    pub fn put_ivarint(&mut self, v: i64) {
        self.put_uvarint(((v << 1) ^ (v >> 63)) as u64);
    }

    /// Writes `usize`s as a length-prefixed `u64` slice.
    pub fn put_usizes(&mut self, s: &[usize]) {
        self.put_u64(s.len() as u64);
        let start = self.0.len();
        self.0.resize(start + s.len() * 8, 0);
        for (dst, x) in self.0[start..].chunks_exact_mut(8).zip(s) {
            dst.copy_from_slice(&(*x as u64).to_le_bytes());
        }
    }

    /// Writes a length-prefixed byte slice (same layout as [`Writer::put_bytes`]).
    pub fn put_u8s(&mut self, s: &[u8]) {
        self.put_bytes(s);
    }
}

/// Reads little-endian values from a byte slice; every method fails cleanly on short input.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

macro_rules! get_scalar_impl {
    ($name:ident, $t:ty, $w:expr) => {
        #[inline]
        pub fn $name(&mut self) -> Result<$t, CodecError> {
            let b = self.take($w)?;
            let mut a = [0u8; $w];
            a.copy_from_slice(b);
            Ok(<$t>::from_le_bytes(a))
        }
    };
}

macro_rules! get_slice_impl {
    ($name:ident, $t:ty, $w:expr) => {
        /// Reads a `u64` element count and that many elements (bulk decode).
        pub fn $name(&mut self) -> Result<Vec<$t>, CodecError> {
            let n = self.get_len($w)?;
            let b = self.take(n * $w)?;
            Ok(b.chunks_exact($w)
                .map(|c| {
                    let mut a = [0u8; $w];
                    a.copy_from_slice(c);
                    <$t>::from_le_bytes(a)
                })
                .collect())
        }
    };
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not yet consumed.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Current offset from the start of the buffer.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Errors with [`CodecError::TrailingBytes`] unless everything has been consumed.
    pub fn finish(&self) -> Result<(), CodecError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(CodecError::TrailingBytes(n)),
        }
    }

    /// Consumes exactly `n` bytes.
    #[inline]
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if n > self.remaining() {
            return Err(CodecError::Truncated {
                needed: n as u64,
                remaining: self.remaining(),
            });
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Reads the magic and version written by [`Writer::put_header`]; accepts exactly `version`
    /// (an older layout must never be parsed as the new one) and returns it.
    pub fn expect_header(&mut self, magic: [u8; 4], version: u32) -> Result<u32, CodecError> {
        let m = self.take(4)?;
        let found = [m[0], m[1], m[2], m[3]];
        if found != magic {
            return Err(CodecError::BadMagic {
                expected: magic,
                found,
            });
        }
        let v = self.get_u32()?;
        if v != version {
            return Err(CodecError::UnsupportedVersion {
                found: v,
                max_supported: version,
            });
        }
        Ok(v)
    }

    /// Reads the magic and a version in `min..=max` (the layouts this build still reads) and
    /// returns the version.
    pub fn expect_header_in(
        &mut self,
        magic: [u8; 4],
        min: u32,
        max: u32,
    ) -> Result<u32, CodecError> {
        let at = self.pos;
        match self.expect_header(magic, max) {
            Err(CodecError::UnsupportedVersion { found, .. }) if (min..max).contains(&found) => {
                self.pos = at + 8;
                Ok(found)
            }
            r => r,
        }
    }

    /// Reads a varint written by [`Writer::put_uvarint`]; one longer than 10 bytes or beyond 64
    /// bits is an error.
    #[inline]
    pub fn get_uvarint(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        let mut shift = 0u32;
        loop {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(CodecError::Truncated {
                    needed: 1,
                    remaining: 0,
                });
            };
            self.pos += 1;
            let bits = (b & 0x7f) as u64;
            if shift == 63 && (bits > 1 || b & 0x80 != 0) {
                return Err(invalid("varint beyond 64 bits"));
            }
            v |= bits << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
            shift += 7;
        }
    }

    /// Reads a varint written by [`Writer::put_ivarint`].
    #[inline]
    pub fn get_ivarint(&mut self) -> Result<i64, CodecError> {
        let u = self.get_uvarint()?;
        Ok((u >> 1) as i64 ^ -((u & 1) as i64))
    }

    #[inline]
    pub fn get_u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }

    /// Reads a bool written by [`Writer::put_bool`]; any byte other than 0/1 is an error.
    pub fn get_bool(&mut self) -> Result<bool, CodecError> {
        match self.get_u8()? {
            0 => Ok(false),
            1 => Ok(true),
            x => Err(invalid(format!("bad bool byte {x}"))),
        }
    }

    get_scalar_impl!(get_u32, u32, 4);
    get_scalar_impl!(get_u64, u64, 8);
    get_scalar_impl!(get_i64, i64, 8);
    get_scalar_impl!(get_f32, f32, 4);
    get_scalar_impl!(get_f64, f64, 8);

    /// Reads a `u64` and checks it fits in `usize`.
    pub fn get_usize(&mut self) -> Result<usize, CodecError> {
        let v = self.get_u64()?;
        usize::try_from(v).map_err(|_| invalid(format!("length {v} does not fit in usize")))
    }

    /// Reads an `Option<i64>` written by [`Writer::put_opt_i64`].
    pub fn get_opt_i64(&mut self) -> Result<Option<i64>, CodecError> {
        if self.get_bool()? {
            Ok(Some(self.get_i64()?))
        } else {
            Ok(None)
        }
    }

    /// Reads an element count for elements of `elem_size` bytes, checking that that many
    /// elements can actually be present in the remaining input (so garbage counts never
    /// cause big allocations).
    pub fn get_len(&mut self, elem_size: usize) -> Result<usize, CodecError> {
        let n = self.get_u64()?;
        let need = (n as u128) * (elem_size.max(1) as u128);
        if need > self.remaining() as u128 {
            return Err(CodecError::Truncated {
                needed: need.min(u64::MAX as u128) as u64,
                remaining: self.remaining(),
            });
        }
        Ok(n as usize)
    }

    /// Reads a length-prefixed byte slice (borrowed, no copy).
    pub fn get_bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let n = self.get_len(1)?;
        self.take(n)
    }

    /// Reads a length-prefixed UTF-8 string (borrowed, no copy).
    pub fn get_str(&mut self) -> Result<&'a str, CodecError> {
        std::str::from_utf8(self.get_bytes()?).map_err(|_| CodecError::InvalidUtf8)
    }

    /// Reads strings written by [`Writer::put_strs`]. UTF-8 is validated once over the blob and
    /// every boundary is checked.
    pub fn get_strs(&mut self) -> Result<Vec<String>, CodecError> {
        let mut out = Vec::new();
        self.get_strs_with(|s| out.push(s.to_owned()))?;
        Ok(out)
    }

    /// Like [`Reader::get_strs`] but hands each borrowed string to `f` (avoids an intermediate
    /// `Vec<String>` when the caller wants another representation).
    pub fn get_strs_with(&mut self, mut f: impl FnMut(&'a str)) -> Result<usize, CodecError> {
        let lens = self.get_u32s()?;
        let total = self.get_len(1)?;
        let sum: u64 = lens.iter().map(|&l| l as u64).sum();
        if sum != total as u64 {
            return Err(invalid("string lengths do not add up to the blob size"));
        }
        let blob = std::str::from_utf8(self.take(total)?).map_err(|_| CodecError::InvalidUtf8)?;
        let mut at = 0usize;
        for &l in &lens {
            let end = at + l as usize;
            let s = blob.get(at..end).ok_or(CodecError::InvalidUtf8)?;
            f(s);
            at = end;
        }
        Ok(lens.len())
    }

    get_slice_impl!(get_u32s, u32, 4);
    get_slice_impl!(get_u64s, u64, 8);
    get_slice_impl!(get_i64s, i64, 8);
    get_slice_impl!(get_f32s, f32, 4);
    get_slice_impl!(get_f64s, f64, 8);

    /// Reads a `u64` slice written by [`Writer::put_usizes`], checking each value fits `usize`.
    pub fn get_usizes(&mut self) -> Result<Vec<usize>, CodecError> {
        let v = self.get_u64s()?;
        v.into_iter()
            .map(|x| {
                usize::try_from(x).map_err(|_| invalid(format!("value {x} does not fit in usize")))
            })
            .collect()
    }

    /// Reads a length-prefixed byte slice into a `Vec`.
    pub fn get_u8s(&mut self) -> Result<Vec<u8>, CodecError> {
        Ok(self.get_bytes()?.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let mut w = Writer::new();
        w.put_header(*b"TEST", 2);
        w.put_u8(7);
        w.put_bool(true);
        w.put_u32(0xdead_beef);
        w.put_u64(u64::MAX - 1);
        w.put_i64(-42);
        w.put_f32(1.5);
        w.put_f64(-0.25);
        w.put_usize(12345);
        w.put_opt_i64(None);
        w.put_opt_i64(Some(i64::MIN));
        w.put_str("héllo");
        w.put_bytes(&[1, 2, 3]);
        w.put_u32s(&[1, 2, u32::MAX]);
        w.put_f32s(&[0.5, f32::INFINITY]);
        w.put_i64s(&[i64::MIN, 0, i64::MAX]);
        w.put_f64s(&[1e300]);
        w.put_usizes(&[0, 99]);
        w.put_strs(&["", "a", "ünï", "zz"]);
        w.into_inner()
    }

    #[test]
    fn round_trip() {
        let b = sample();
        let mut r = Reader::new(&b);
        assert!(matches!(
            Reader::new(&b).expect_header(*b"TEST", 3),
            Err(CodecError::UnsupportedVersion { found: 2, .. })
        ));
        assert_eq!(r.expect_header(*b"TEST", 2).unwrap(), 2);
        assert_eq!(r.get_u8().unwrap(), 7);
        assert!(r.get_bool().unwrap());
        assert_eq!(r.get_u32().unwrap(), 0xdead_beef);
        assert_eq!(r.get_u64().unwrap(), u64::MAX - 1);
        assert_eq!(r.get_i64().unwrap(), -42);
        assert_eq!(r.get_f32().unwrap(), 1.5);
        assert_eq!(r.get_f64().unwrap(), -0.25);
        assert_eq!(r.get_usize().unwrap(), 12345);
        assert_eq!(r.get_opt_i64().unwrap(), None);
        assert_eq!(r.get_opt_i64().unwrap(), Some(i64::MIN));
        assert_eq!(r.get_str().unwrap(), "héllo");
        assert_eq!(r.get_bytes().unwrap(), &[1, 2, 3]);
        assert_eq!(r.get_u32s().unwrap(), vec![1, 2, u32::MAX]);
        assert_eq!(r.get_f32s().unwrap(), vec![0.5, f32::INFINITY]);
        assert_eq!(r.get_i64s().unwrap(), vec![i64::MIN, 0, i64::MAX]);
        assert_eq!(r.get_f64s().unwrap(), vec![1e300]);
        assert_eq!(r.get_usizes().unwrap(), vec![0, 99]);
        assert_eq!(r.get_strs().unwrap(), vec!["", "a", "ünï", "zz"]);
        r.finish().unwrap();
    }

    /// Decodes the sample in order; used to check every truncation point fails cleanly.
    fn decode_all(b: &[u8]) -> Result<(), CodecError> {
        let mut r = Reader::new(b);
        r.expect_header(*b"TEST", 2)?;
        r.get_u8()?;
        r.get_bool()?;
        r.get_u32()?;
        r.get_u64()?;
        r.get_i64()?;
        r.get_f32()?;
        r.get_f64()?;
        r.get_usize()?;
        r.get_opt_i64()?;
        r.get_opt_i64()?;
        r.get_str()?;
        r.get_bytes()?;
        r.get_u32s()?;
        r.get_f32s()?;
        r.get_i64s()?;
        r.get_f64s()?;
        r.get_usizes()?;
        r.get_strs()?;
        r.finish()
    }

    #[test]
    fn every_truncation_is_an_error() {
        let b = sample();
        assert!(decode_all(&b).is_ok());
        for n in 0..b.len() {
            assert!(decode_all(&b[..n]).is_err(), "prefix of {n} bytes decoded");
        }
        let mut extra = b.clone();
        extra.push(0);
        assert_eq!(decode_all(&extra), Err(CodecError::TrailingBytes(1)));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        // a huge length prefix must not allocate or panic
        let mut w = Writer::new();
        w.put_u64(u64::MAX);
        let b = w.into_inner();
        assert!(Reader::new(&b).get_u32s().is_err());
        assert!(Reader::new(&b).get_bytes().is_err());
        assert!(Reader::new(&b).get_strs().is_err());
        // bad magic / version
        let mut w = Writer::new();
        w.put_header(*b"NOPE", 1);
        assert!(matches!(
            Reader::new(w.as_slice()).expect_header(*b"TEST", 1),
            Err(CodecError::BadMagic { .. })
        ));
        let mut w = Writer::new();
        w.put_header(*b"TEST", 9);
        assert!(matches!(
            Reader::new(w.as_slice()).expect_header(*b"TEST", 1),
            Err(CodecError::UnsupportedVersion { found: 9, .. })
        ));
        // invalid utf-8, bad bool
        let mut w = Writer::new();
        w.put_bytes(&[0xff, 0xfe]);
        assert_eq!(
            Reader::new(w.as_slice()).get_str(),
            Err(CodecError::InvalidUtf8)
        );
        assert!(Reader::new(&[2u8]).get_bool().is_err());
        // a multi-byte char split across two strings of a put_strs blob
        let mut w = Writer::new();
        w.put_u32s(&[1, 1]);
        w.put_u64(2);
        w.put_raw("é".as_bytes());
        assert_eq!(
            Reader::new(w.as_slice()).get_strs(),
            Err(CodecError::InvalidUtf8)
        );
        // pseudo-random garbage
        let mut x = 0x1234_5678_9abc_def0u64;
        for len in 0..300 {
            let g: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let _ = decode_all(&g);
        }
    }

    #[test]
    fn varints_round_trip_and_reject_garbage() {
        let us = [
            0u64,
            1,
            127,
            128,
            300,
            16383,
            16384,
            u32::MAX as u64,
            u64::MAX - 1,
            u64::MAX,
        ];
        let is = [0i64, -1, 1, -64, 64, -8192, 8191, i64::MIN, i64::MAX];
        let mut w = Writer::new();
        for &u in &us {
            w.put_uvarint(u);
        }
        for &i in &is {
            w.put_ivarint(i);
        }
        let mut r = Reader::new(w.as_slice());
        for &u in &us {
            assert_eq!(r.get_uvarint().unwrap(), u);
        }
        for &i in &is {
            assert_eq!(r.get_ivarint().unwrap(), i);
        }
        r.finish().unwrap();
        // Sizes: 7 bits a byte, small differences of either sign in one byte.
        let size = |f: &dyn Fn(&mut Writer)| {
            let mut w = Writer::new();
            f(&mut w);
            w.len()
        };
        assert_eq!(size(&|w| w.put_uvarint(127)), 1);
        assert_eq!(size(&|w| w.put_uvarint(128)), 2);
        assert_eq!(size(&|w| w.put_uvarint(u64::MAX)), 10);
        assert_eq!(size(&|w| w.put_ivarint(-64)), 1);
        assert_eq!(size(&|w| w.put_ivarint(64)), 2);
        // Truncated, too long, beyond 64 bits: errors.
        assert!(Reader::new(&[0x80]).get_uvarint().is_err());
        assert!(Reader::new(&[]).get_uvarint().is_err());
        assert!(Reader::new(&[0xff; 11]).get_uvarint().is_err());
        let mut over = vec![0xffu8; 9];
        over.push(0x02);
        assert!(Reader::new(&over).get_uvarint().is_err());
    }

    #[test]
    fn a_header_within_a_range_of_versions() {
        let mut w = Writer::new();
        w.put_header(*b"TEST", 5);
        w.put_u8(9);
        let mut r = Reader::new(w.as_slice());
        assert_eq!(r.expect_header_in(*b"TEST", 5, 6), Ok(5));
        assert_eq!(r.get_u8(), Ok(9));
        assert_eq!(
            Reader::new(w.as_slice()).expect_header_in(*b"TEST", 4, 5),
            Ok(5)
        );
        assert!(matches!(
            Reader::new(w.as_slice()).expect_header_in(*b"TEST", 6, 7),
            Err(CodecError::UnsupportedVersion { found: 5, .. })
        ));
        assert!(matches!(
            Reader::new(w.as_slice()).expect_header_in(*b"XXXX", 5, 6),
            Err(CodecError::BadMagic { .. })
        ));
    }
}
