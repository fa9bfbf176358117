//! The engagement occasions a model keeps: per stored (user, item) pair, the distinct UTC days
//! with events and the summed weight of each day. From them the scorer derives, for any set of
//! items, the number of distinct days a user engaged with it (the "occasions" of RFM analysis),
//! its time-decayed forms, the recency of the last engagement and recency-decayed weights.
//! Pure Rust.
use crate::util::buf::Buf;

/// Days per pair, column-wise. Days are stored as `u16` offsets from `day0` (179 years): older
/// days are clamped to `day0`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct DayIndex {
    /// The UTC day (days since 2000-01-01) of offset 0.
    pub day0: i32,
    /// `ptr[p]..ptr[p + 1]` index the days of stored pair `p`.
    pub ptr: Buf<u32>,
    /// Day offsets, strictly ascending within a pair.
    pub day: Buf<u16>,
    /// Summed weight of the pair's events on that day.
    pub weight: Buf<f32>,
}

impl DayIndex {
    /// From per-pair records `ptr` / `minute` (minutes since 2000-01-01, ascending by day within
    /// a pair) / `value`: records of the same day (several half-life slots) are summed.
    pub fn from_records(ptr: &[u32], minute: &[i32], value: &[f32]) -> DayIndex {
        assert_eq!(minute.len(), value.len(), "one value per record");
        let day_of = |m: i32| m.div_euclid(1440);
        let max_day = minute.iter().map(|&m| day_of(m)).max().unwrap_or(0);
        let min_day = minute.iter().map(|&m| day_of(m)).min().unwrap_or(0);
        let day0 = min_day.max(max_day.saturating_sub(u16::MAX as i32));
        let mut out_ptr: Vec<u32> = Vec::with_capacity(ptr.len().max(1));
        let mut out_day: Vec<u16> = Vec::with_capacity(minute.len());
        let mut out_weight: Vec<f32> = Vec::with_capacity(minute.len());
        out_ptr.push(0);
        for (p, w) in ptr.windows(2).enumerate() {
            crate::util::interrupt::poll_every(p);
            for r in w[0] as usize..w[1] as usize {
                let d = (day_of(minute[r]).max(day0) - day0) as u16;
                let v = if value[r].is_finite() { value[r] } else { 0.0 };
                let start = *out_ptr.last().unwrap() as usize;
                if out_day.len() > start && *out_day.last().unwrap() == d {
                    *out_weight.last_mut().unwrap() += v;
                } else {
                    out_day.push(d);
                    out_weight.push(v);
                }
            }
            out_ptr.push(out_day.len() as u32);
        }
        DayIndex {
            day0,
            ptr: out_ptr.into(),
            day: out_day.into(),
            weight: out_weight.into(),
        }
    }

    /// Number of pairs described.
    pub fn pairs(&self) -> usize {
        self.ptr.len().saturating_sub(1)
    }

    /// Day offsets and weights of stored pair `p`.
    #[inline]
    pub fn of(&self, p: usize) -> (&[u16], &[f32]) {
        let r = self.ptr[p] as usize..self.ptr[p + 1] as usize;
        (&self.day[r.clone()], &self.weight[r])
    }

    /// Whether the structure is consistent with `pairs` stored pairs (for decoding).
    pub fn is_valid_for(&self, pairs: usize) -> bool {
        self.ptr.len() == pairs + 1
            && self.ptr.first() == Some(&0)
            && self.ptr.last().map(|&x| x as usize) == Some(self.day.len())
            && self.day.len() == self.weight.len()
            && self.ptr.windows(2).all(|w| {
                w[0] <= w[1]
                    && self.day[w[0] as usize..w[1] as usize]
                        .windows(2)
                        .all(|d| d[0] < d[1])
            })
    }

    /// Approximate heap bytes.
    pub fn memory_bytes(&self) -> usize {
        self.ptr.heap_bytes() + self.day.heap_bytes() + self.weight.heap_bytes()
    }
}

/// Random engagement days for `pairs` stored pairs (tests): per pair `1 + below(per_pair)` days,
/// the first at `first + below(span)`, each next `1 + below(gap)` days later, at minute `minute`
/// of the day, with weights in -0.5..=2.5.
#[cfg(test)]
pub(crate) fn random_days(
    pairs: usize,
    below: &mut impl FnMut(u64) -> u64,
    (first, span, per_pair, gap, minute): (i32, u64, u64, u64, i32),
) -> DayIndex {
    let (mut ptr, mut minutes, mut value) = (vec![0u32], Vec::new(), Vec::new());
    for _ in 0..pairs {
        let mut d = first + below(span) as i32;
        for _ in 0..1 + below(per_pair) {
            minutes.push(d * 1440 + minute);
            value.push(below(4) as f32 - 0.5);
            d += 1 + below(gap) as i32;
        }
        ptr.push(minutes.len() as u32);
    }
    DayIndex::from_records(&ptr, &minutes, &value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_one_day_are_summed_and_days_kept_in_order() {
        // Pair 0: day 0 (two slots), day 2; pair 1: day 1; pair 2: none.
        let ptr = [0u32, 3, 4, 4];
        let minute = [10, 20, 2 * 1440 + 5, 1440];
        let value = [1.0f32, 2.0, 4.0, 8.0];
        let d = DayIndex::from_records(&ptr, &minute, &value);
        assert_eq!(d.day0, 0);
        assert_eq!(d.pairs(), 3);
        assert_eq!(d.of(0), (&[0u16, 2][..], &[3.0f32, 4.0][..]));
        assert_eq!(d.of(1), (&[1u16][..], &[8.0f32][..]));
        assert_eq!(d.of(2).0.len(), 0);
        assert!(d.is_valid_for(3));
        assert!(!d.is_valid_for(2));
    }

    #[test]
    fn very_old_days_are_clamped() {
        let ptr = [0u32, 2];
        let minute = [-100_000 * 1440, 1440];
        let d = DayIndex::from_records(&ptr, &minute, &[1.0, 1.0]);
        assert_eq!(d.day0, 1 - u16::MAX as i32);
        assert_eq!(d.of(0).0, &[0u16, u16::MAX][..]);
    }
}
