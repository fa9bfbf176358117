//! Arrays that are either owned or borrowed from a read-only memory mapping: the serving image of
//! a model (see `store::image`) is mapped once per backend and its arrays are read in place, so
//! every backend shares the page cache's one copy. Pure Rust (plus `libc` for `mmap`).
use std::fmt;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

/// Plain-old-data element types an image may hold: any bit pattern is a valid value.
///
/// # Safety
/// Implementors must be `Copy` types without padding or invalid bit patterns.
pub unsafe trait Pod: Copy + Send + Sync + 'static {}
unsafe impl Pod for u8 {}
unsafe impl Pod for u16 {}
unsafe impl Pod for u32 {}
unsafe impl Pod for u64 {}
unsafe impl Pod for i32 {}
unsafe impl Pod for f32 {}
unsafe impl Pod for usize {}

/// Read-only bytes: a shared file mapping (`munmap` on drop) or a heap buffer standing in for one
/// (when the image could not be written to disk). 8-byte aligned at the start.
pub struct Mapping {
    ptr: *const u8,
    len: usize,
    heap: Option<Vec<u64>>,
}

// SAFETY: the bytes are never written after creation (PROT_READ mapping or an owned buffer that is
// not exposed mutably), so sharing across threads is sound.
unsafe impl Send for Mapping {}
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps a whole file read-only and shared. An empty file gives an empty mapping.
    pub fn of_file(file: &std::fs::File) -> std::io::Result<Mapping> {
        use std::os::fd::AsRawFd;
        let len = file.metadata()?.len() as usize;
        if len == 0 {
            return Ok(Mapping::of_bytes(&[]));
        }
        // SAFETY: a fresh read-only shared mapping of an open file descriptor; checked for failure.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Mapping {
            ptr: ptr as *const u8,
            len,
            heap: None,
        })
    }

    /// A private copy of `bytes` in an aligned heap buffer.
    pub fn of_bytes(bytes: &[u8]) -> Mapping {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        // SAFETY: `words` has at least `bytes.len()` bytes; u64 has no invalid bit patterns.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                words.as_mut_ptr() as *mut u8,
                bytes.len(),
            )
        };
        let ptr = words.as_ptr() as *const u8;
        Mapping {
            ptr,
            len: bytes.len(),
            heap: Some(words),
        }
    }

    /// The first `len` bytes of `words`, without copying.
    pub fn of_words(words: Vec<u64>, len: usize) -> Mapping {
        assert!(len <= words.len() * 8, "length within the buffer");
        let ptr = words.as_ptr() as *const u8;
        Mapping {
            ptr,
            len,
            heap: Some(words),
        }
    }

    pub fn bytes(&self) -> &[u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: `ptr` points to `len` readable bytes for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Whether the bytes are a file mapping (shared) rather than a private heap copy.
    pub fn is_shared(&self) -> bool {
        self.heap.is_none() && self.len > 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.heap.is_none() && self.len > 0 {
            // SAFETY: unmapping exactly the region mapped in `of_file`; no borrow outlives `self`
            // (every `Buf` holds an `Arc<Mapping>`).
            unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
        }
    }
}

enum Owner<T: Pod> {
    /// The vector and the index of the array's first element in it.
    Vec(Vec<T>, usize),
    Map(Arc<Mapping>),
}

/// A `Vec<T>` or a `[T]` inside a [`Mapping`]; reads as a slice either way (one pointer and a
/// length, so indexing in hot loops costs what a slice costs). Writing through `DerefMut` first
/// copies a mapped array into an owned one (copy on write), so a mapping is never modified. The
/// length never changes after creation.
pub struct Buf<T: Pod> {
    ptr: *const T,
    len: usize,
    owner: Owner<T>,
}

// SAFETY: `ptr` points into memory owned by `owner` (a Vec, or an immutable mapping that is Send +
// Sync), and T is Send + Sync.
unsafe impl<T: Pod> Send for Buf<T> {}
unsafe impl<T: Pod> Sync for Buf<T> {}

impl<T: Pod> Buf<T> {
    pub fn new() -> Buf<T> {
        Buf::from(Vec::new())
    }

    /// `len` elements at byte `offset` of `map`; None when out of bounds or misaligned.
    pub fn mapped(map: &Arc<Mapping>, offset: usize, len: usize) -> Option<Buf<T>> {
        let size = len.checked_mul(std::mem::size_of::<T>())?;
        let end = offset.checked_add(size)?;
        if end > map.len || !(map.ptr as usize + offset).is_multiple_of(std::mem::align_of::<T>()) {
            return None;
        }
        let ptr = if len == 0 {
            std::ptr::NonNull::<T>::dangling().as_ptr() as *const T
        } else {
            // SAFETY: offset + size is within the mapping (checked above).
            unsafe { map.ptr.add(offset) as *const T }
        };
        Some(Buf {
            ptr,
            len,
            owner: Owner::Map(map.clone()),
        })
    }

    /// `n` zeros whose first element starts a 64-byte cache line, on huge pages when large
    /// (see [`crate::util::pages`]): a row of 16 floats (or a multiple) then spans exactly its
    /// own lines. The heap's large blocks start 16 bytes into a page, which made every 32-float
    /// factor row that ALS gathers from memory span three lines instead of two.
    pub fn zeroed_on_lines(n: usize) -> Buf<T>
    where
        T: Default,
    {
        let size = std::mem::size_of::<T>().max(1);
        let pad = 64usize.div_ceil(size);
        let v: Vec<T> = crate::util::pages::zeroed(n + pad);
        let misalign = (v.as_ptr() as usize) % 64;
        let off = if misalign == 0 || !misalign.is_multiple_of(size) {
            0
        } else {
            ((64 - misalign) / size).min(pad)
        };
        Buf {
            // SAFETY: off + n <= n + pad = v.len().
            ptr: unsafe { v.as_ptr().add(off) },
            len: n,
            owner: Owner::Vec(v, off),
        }
    }

    /// This array, moved onto cache-line boundaries ([`Buf::zeroed_on_lines`]) when it does not
    /// start on one (a copy; as is otherwise).
    pub fn on_lines(self) -> Buf<T>
    where
        T: Default,
    {
        if (self.ptr as usize).is_multiple_of(64) || self.len == 0 {
            return self;
        }
        let mut out = Buf::zeroed_on_lines(self.len);
        out.copy_from_slice(&self);
        out
    }

    pub fn into_vec(self) -> Vec<T> {
        match self.owner {
            Owner::Vec(v, 0) if v.len() == self.len => v,
            _ => self.as_slice().to_vec(),
        }
    }

    #[inline]
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: `ptr` is non-null, aligned and valid for `len` reads while `owner` lives (a Vec's
        // heap buffer never moves because the length never changes; a mapping is never unmapped
        // while an Arc to it exists).
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// Heap bytes owned (0 for a mapped array).
    pub fn heap_bytes(&self) -> usize {
        match &self.owner {
            Owner::Vec(v, _) => v.capacity() * std::mem::size_of::<T>(),
            Owner::Map(_) => 0,
        }
    }
}

impl<T: Pod> Default for Buf<T> {
    fn default() -> Self {
        Buf::new()
    }
}

impl<T: Pod> Deref for Buf<T> {
    type Target = [T];
    #[inline]
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T: Pod> DerefMut for Buf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        if let Owner::Map(_) = self.owner {
            *self = Buf::from(self.as_slice().to_vec());
        }
        let len = self.len;
        match &mut self.owner {
            Owner::Vec(v, off) => &mut v[*off..*off + len],
            Owner::Map(_) => unreachable!("copied above"),
        }
    }
}

impl<T: Pod> Clone for Buf<T> {
    fn clone(&self) -> Self {
        match &self.owner {
            Owner::Vec(v, 0) if v.len() == self.len => Buf::from(v.clone()),
            Owner::Vec(..) => Buf::from(self.as_slice().to_vec()),
            Owner::Map(m) => Buf {
                ptr: self.ptr,
                len: self.len,
                owner: Owner::Map(m.clone()),
            },
        }
    }
}

impl<T: Pod + fmt::Debug> fmt::Debug for Buf<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_slice().fmt(f)
    }
}

impl<T: Pod + PartialEq> PartialEq for Buf<T> {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Pod + PartialEq> PartialEq<Vec<T>> for Buf<T> {
    fn eq(&self, other: &Vec<T>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl<T: Pod> From<Vec<T>> for Buf<T> {
    fn from(v: Vec<T>) -> Self {
        Buf {
            ptr: v.as_ptr(),
            len: v.len(),
            owner: Owner::Vec(v, 0),
        }
    }
}

impl<T: Pod> FromIterator<T> for Buf<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Buf::from(iter.into_iter().collect::<Vec<T>>())
    }
}

impl<'a, T: Pod> IntoIterator for &'a Buf<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

/// A list of strings as one byte array and `len + 1` offsets (owned or mapped).
#[derive(Clone, Debug, PartialEq, Default)]
pub struct StrList {
    offsets: Buf<u64>,
    bytes: Buf<u8>,
}

impl StrList {
    pub fn from_strs<S: AsRef<str>>(strs: &[S]) -> StrList {
        let mut offsets = Vec::with_capacity(strs.len() + 1);
        let mut bytes = Vec::with_capacity(strs.iter().map(|s| s.as_ref().len()).sum());
        offsets.push(0u64);
        for s in strs {
            bytes.extend_from_slice(s.as_ref().as_bytes());
            offsets.push(bytes.len() as u64);
        }
        StrList {
            offsets: offsets.into(),
            bytes: bytes.into(),
        }
    }

    /// From parts, checking that offsets are ascending, end at the byte length and cut valid UTF-8.
    pub fn from_parts(offsets: Buf<u64>, bytes: Buf<u8>) -> Option<StrList> {
        if offsets.first() != Some(&0) || offsets.last().map(|&x| x as usize) != Some(bytes.len()) {
            return None;
        }
        if offsets.windows(2).any(|w| w[0] > w[1]) || std::str::from_utf8(&bytes).is_err() {
            return None;
        }
        let l = StrList { offsets, bytes };
        // Every cut must fall on a character boundary.
        if l.offsets
            .iter()
            .any(|&o| !l.text().is_char_boundary(o as usize))
        {
            return None;
        }
        Some(l)
    }

    fn text(&self) -> &str {
        // SAFETY: validated in `from_parts` or built from `&str`s.
        unsafe { std::str::from_utf8_unchecked(&self.bytes) }
    }

    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hints the CPU to load string `i`'s offsets (`text = false`) or, once they are loaded, its
    /// bytes (`text = true`): reading many strings in random order, each is two cache misses apart.
    #[inline]
    pub fn prefetch(&self, i: usize, text: bool) {
        if !text {
            crate::util::prefetch(self.offsets.as_ptr().wrapping_add(i));
        } else if let Some(&a) = self.offsets.get(i) {
            crate::util::prefetch(self.bytes.as_ptr().wrapping_add(a as usize));
        }
    }

    #[inline]
    pub fn get(&self, i: usize) -> &str {
        let (a, b) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        assert!(a <= b && b <= self.bytes.len(), "string list offsets");
        // SAFETY: in bounds (checked above) and on character boundaries (checked in `from_parts`,
        // or built from whole strings).
        unsafe { self.text().get_unchecked(a..b) }
    }

    /// Binary search in a sorted list.
    pub fn binary_search(&self, key: &str) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0usize, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.get(mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.len()).map(move |i| self.get(i))
    }

    pub fn parts(&self) -> (&[u64], &[u8]) {
        (&self.offsets, &self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_and_mapped_read_alike_and_writes_copy() {
        let words: Vec<u32> = vec![1, 2, 3, 4];
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let map = Arc::new(Mapping::of_bytes(&bytes));
        assert!(!map.is_shared());
        let mut m: Buf<u32> = Buf::mapped(&map, 4, 3).unwrap();
        assert_eq!(&m[..], &[2, 3, 4]);
        assert_eq!(m, Buf::from(vec![2, 3, 4]));
        assert!(Buf::<u32>::mapped(&map, 4, 4).is_none(), "out of bounds");
        assert!(Buf::<u32>::mapped(&map, 2, 1).is_none(), "misaligned");
        m[0] = 9;
        assert_eq!(&m[..], &[9, 3, 4]);
        assert_eq!(
            &map.bytes()[4..8],
            &2u32.to_ne_bytes(),
            "the mapping is untouched"
        );
        assert_eq!(m.into_vec(), vec![9, 3, 4]);
        let e: Buf<u64> = Buf::mapped(&map, 16, 0).unwrap();
        assert!(e.is_empty());
    }

    /// Arrays on cache lines start on one whatever their size (large ones come from the heap's
    /// page-sized blocks, 16 bytes into a page), read and write like any other, and clone,
    /// convert and move onto lines with their contents.
    #[test]
    fn arrays_on_cache_lines() {
        for n in [0usize, 1, 17, 1000, (8 << 20) / 4 + 3] {
            let mut b: Buf<f32> = Buf::zeroed_on_lines(n);
            assert_eq!(b.len(), n);
            assert!(
                n == 0 || (b.as_ptr() as usize).is_multiple_of(64),
                "n = {n}"
            );
            assert!(b.iter().all(|&x| x == 0.0));
            for (i, x) in b.iter_mut().enumerate() {
                *x = i as f32;
            }
            let want: Vec<f32> = (0..n).map(|i| i as f32).collect();
            assert_eq!(b, want);
            assert_eq!(b.clone(), want);
            assert!(b.heap_bytes() >= n * 4);
            let moved = Buf::from(want.clone()).on_lines();
            assert_eq!(moved, want);
            assert!(n == 0 || (moved.as_ptr() as usize).is_multiple_of(64));
            assert_eq!(b.into_vec(), want);
        }
        // A misaligned array is moved (a copy), an aligned one kept as it is.
        let v: Vec<u64> = (0..64).collect();
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_ne_bytes()).collect();
        let map = Arc::new(Mapping::of_bytes(&bytes));
        for first in 0..8 {
            let part: Buf<u64> = Buf::mapped(&map, first * 8, 64 - first).unwrap();
            let was = part.as_ptr();
            let moved = part.on_lines();
            assert_eq!(moved.as_slice(), &v[first..]);
            assert!((moved.as_ptr() as usize).is_multiple_of(64));
            assert_eq!(moved.as_ptr() == was, (was as usize).is_multiple_of(64));
        }
        let lined: Buf<u64> = Buf::zeroed_on_lines(10);
        let at = lined.as_ptr();
        assert_eq!(lined.on_lines().as_ptr(), at);
    }

    #[test]
    fn file_mapping_reads_the_file() {
        let path = std::env::temp_dir().join(format!("pga-buf-{}", std::process::id()));
        std::fs::write(&path, [7u8; 24]).unwrap();
        let f = std::fs::File::open(&path).unwrap();
        let map = Arc::new(Mapping::of_file(&f).unwrap());
        std::fs::remove_file(&path).unwrap();
        assert!(map.is_shared());
        let b: Buf<u64> = Buf::mapped(&map, 8, 2).unwrap();
        assert_eq!(
            &b[..],
            &[u64::from_ne_bytes([7; 8]); 2],
            "readable after the file is unlinked"
        );
    }

    #[test]
    fn string_lists_search_and_validate() {
        let l = StrList::from_strs(&["a", "bé", "c"]);
        assert_eq!(l.len(), 3);
        assert_eq!(l.get(1), "bé");
        assert_eq!(l.binary_search("c"), Ok(2));
        assert_eq!(l.binary_search("b"), Err(1));
        let (o, b) = l.parts();
        assert!(StrList::from_parts(o.to_vec().into(), b.to_vec().into()).is_some());
        assert!(
            StrList::from_parts(vec![0u64, 3, 2, 5].into(), b.to_vec().into()).is_none(),
            "descending"
        );
        assert!(
            StrList::from_parts(vec![0u64, 3, 5].into(), b.to_vec().into()).is_none(),
            "cuts a character"
        );
        assert!(
            StrList::from_parts(vec![0u64, 4].into(), b.to_vec().into()).is_none(),
            "does not end at the length"
        );
    }
}
