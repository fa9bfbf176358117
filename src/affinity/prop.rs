//! Item property values in the aggregate state: the value of an item's most recent event per
//! property, short texts inline. Pure Rust.

/// A property value; short ones inline so the per-row comparison does not chase a pointer.
/// Always holds valid UTF-8 (built from `&str` only).
#[derive(Clone, Debug)]
pub(crate) enum PText {
    Inline { len: u8, buf: [u8; 22] },
    Heap(Box<str>),
}

impl PText {
    #[inline]
    pub(crate) fn new(s: &str) -> PText {
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

    pub(crate) fn from_box(s: Box<str>) -> PText {
        if s.len() <= 22 {
            PText::new(&s)
        } else {
            PText::Heap(s)
        }
    }

    #[inline]
    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            PText::Inline { len, buf } => &buf[..*len as usize],
            PText::Heap(b) => b.as_bytes(),
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(self.as_bytes()).expect("property text is UTF-8")
    }

    /// Heap bytes owned (for memory accounting).
    pub(crate) fn heap_len(&self) -> usize {
        match self {
            PText::Inline { .. } => 0,
            PText::Heap(b) => b.len() + 16,
        }
    }
}

/// Latest non-null value of one property of one item.
#[derive(Clone, Debug)]
pub(crate) struct PropVal {
    pub(crate) time: i64,
    pub(crate) value: Option<PText>,
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
    pub(crate) fn update(&mut self, time: i64, v: &str) -> isize {
        // An older event changes nothing, whatever its value: decided before the bytes are
        // compared (most rows of a table not in time order are older than the item's latest).
        if time < self.time && self.value.is_some() {
            return 0;
        }
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
    pub(crate) fn merge(&mut self, other: PropVal) {
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
