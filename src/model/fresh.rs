//! Events that arrived after a model's build, folded into the rows of the users they concern
//! (query-time freshness). Pure Rust: the SQL layer (`api::fresh`) scans the new rows through the
//! build's own aggregate, decayed to the model's reference time, and hands the result here.
//!
//! For every user with new events, the merged row is what a build at the model's reference time
//! would have stored had it seen the events too: per item, affinities add (both are decayed to
//! the same reference time), the latest event time is the later of the two, and the engagement
//! days are the union of both day lists (weights of a day seen by both summed). Items the model
//! does not know (new since the build) are left out and counted: they reach audiences with the
//! next build. Users the model does not know get new rows.
use crate::affinity::accumulator::Affinity;
use crate::model::csr::Csr;
use crate::model::days::DayIndex;
use crate::model::refresh::{Out, RowMerge, Rows};
use crate::util::buf::StrList;

/// The model's side of a merge (here and in [`crate::model::refresh::grow`]): its user and item
/// ids (sorted), affinity matrix, latest times (minutes since 2000-01-01) and engagement days.
pub struct Base<'a> {
    pub users: &'a StrList,
    pub items: &'a StrList,
    pub ui: &'a Csr,
    pub last_seen: &'a [i32],
    pub days: &'a DayIndex,
}

impl<'a> Base<'a> {
    /// The stored rows a merge reads a user's previous pairs from.
    pub(crate) fn rows(&self) -> Rows<'a> {
        Rows {
            ui: self.ui,
            last_seen: self.last_seen,
            days: self.days,
        }
    }
}

/// The rows of the users with new events, over the model's items.
#[derive(Clone, Debug, PartialEq)]
pub struct FreshRows {
    /// User ids, sorted.
    pub users: Vec<String>,
    /// Per user, its row in the model (`None`: a user the model does not know).
    pub model_row: Vec<Option<u32>>,
    /// users x model items, merged affinities.
    pub ui: Csr,
    /// Per stored entry: latest event time, minutes since 2000-01-01.
    pub last_seen: Vec<i32>,
    /// Per stored entry: engagement days (same `day0` as the model's).
    pub days: DayIndex,
    /// New event rows read.
    pub rows: u64,
    /// Pairs of the new events whose item the model does not know.
    pub unknown_item_pairs: usize,
}

impl FreshRows {
    /// Users the model does not know.
    pub fn new_users(&self) -> usize {
        self.model_row.iter().filter(|r| r.is_none()).count()
    }
}

/// Below this many engagement occasions, no user's share of them is judged.
pub const MIN_SHARE_OCCASIONS: usize = 1000;

/// The user with the most engagement occasions (user, item, day records) on days from some day
/// on, and the total: a user holding most of them is a bot or a feed loaded twice.
pub struct TopUser {
    /// Row of the user in the affinity (None without occasions).
    pub user: Option<usize>,
    pub occasions: usize,
    pub total: usize,
}

impl TopUser {
    pub fn share(&self) -> f64 {
        self.occasions as f64 / self.total.max(1) as f64
    }

    /// Whether the user holds more than `max_share` of at least [`MIN_SHARE_OCCASIONS`].
    pub fn dominates(&self, max_share: f64) -> bool {
        self.total >= MIN_SHARE_OCCASIONS && self.share() > max_share
    }
}

/// The [`TopUser`] of `aff` over its occasions on days `>= from_day`.
pub fn top_user(aff: &Affinity, from_day: i32) -> TopUser {
    let (m, occ) = (&aff.matrix, &aff.occasions);
    let mut top = TopUser {
        user: None,
        occasions: 0,
        total: 0,
    };
    for u in 0..m.n_rows {
        crate::util::interrupt::poll_every(u);
        let n = (m.indptr[u]..m.indptr[u + 1])
            .flat_map(|p| occ.range(p))
            .filter(|&r| occ.day(r) >= from_day)
            .count();
        top.total += n;
        if n > top.occasions {
            (top.user, top.occasions) = (Some(u), n);
        }
    }
    top
}

/// Merges `delta` (the new events, decayed to the model's reference time) into the rows of
/// `base` of the users it names, except delta user `skip`.
pub fn merge(base: &Base, delta: &Affinity, skip: Option<usize>) -> FreshRows {
    let day0 = base.days.day0;
    // Delta item -> model item (both lists sorted, so the map keeps the order).
    let item_map: Vec<Option<u32>> = delta
        .items
        .iter()
        .map(|id| base.items.binary_search(id).ok().map(|i| i as u32))
        .collect();
    let rows = base.rows();
    let mut users = Vec::new();
    let mut model_row = Vec::new();
    let mut out = Out::with_capacity(0, 0, 0);
    let mut unknown = 0usize;
    let mut rm = RowMerge::default();
    for (du, name) in delta.users.iter().enumerate() {
        crate::util::interrupt::poll_every(du);
        if skip == Some(du) {
            continue;
        }
        unknown += rm.read(delta, du, day0, |i| item_map[i as usize]);
        if rm.is_empty() {
            continue;
        }
        let known = base.users.binary_search(name).ok();
        rm.write(&mut out, known.map(|u| (rows, u)), |i| i, 1.0);
        users.push(name.clone());
        model_row.push(known.map(|u| u as u32));
    }
    let (ui, last_seen, days, _) = out.finish(base.items.len(), day0);
    FreshRows {
        users,
        model_row,
        ui,
        last_seen,
        days,
        rows: delta.rows,
        unknown_item_pairs: unknown,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::affinity::accumulator::{Accumulator, MINUTE_US};

    pub(crate) const DAY: i64 = 86_400_000_000;

    /// (user, item, weight, time) rows through the build's aggregate, decayed to `reference`.
    pub(crate) fn affinity(rows: &[(&str, &str, f64, i64)], reference: i64) -> Affinity {
        let mut acc = Accumulator::new(0);
        acc.set_reference(Some(reference));
        for &(u, i, w, t) in rows {
            acc.push(u, i, w, t, None, None);
        }
        acc.finish().without_empty()
    }

    pub(crate) fn base_of(a: &Affinity) -> (StrList, StrList, Vec<i32>, DayIndex) {
        let last = a
            .last_seen
            .iter()
            .map(|&t| t.div_euclid(MINUTE_US) as i32)
            .collect();
        let days =
            DayIndex::from_records(&a.occasions.ptr, &a.occasions.minute, &a.occasions.value);
        (
            StrList::from_strs(&a.users),
            StrList::from_strs(&a.items),
            last,
            days,
        )
    }

    #[test]
    fn merged_rows_equal_a_build_that_saw_every_event() {
        let old = [
            ("alice", "i1", 1.0, DAY),
            ("alice", "i2", 2.0, 3 * DAY),
            ("bob", "i2", 1.0, 2 * DAY),
            ("carol", "i3", 1.0, 4 * DAY),
        ];
        let new = [
            ("alice", "i2", 1.0, 5 * DAY + 10),
            ("alice", "i2", 1.0, 5 * DAY + 20),
            ("alice", "i3", 4.0, 6 * DAY),
            ("bob", "i2", 3.0, 2 * DAY + 5),
            ("dave", "i1", 1.0, 6 * DAY),
            ("dave", "new-item", 1.0, 6 * DAY),
            ("erin", "new-item", 1.0, 6 * DAY),
        ];
        let reference = 4 * DAY;
        let model = affinity(&old, reference);
        let (users, items, last, days) = base_of(&model);
        let base = Base {
            users: &users,
            items: &items,
            ui: &model.matrix,
            last_seen: &last,
            days: &days,
        };
        let fresh = merge(&base, &affinity(&new, reference), None);
        // erin has only an unknown item: no row; carol has no new events: no row.
        assert_eq!(fresh.users, vec!["alice", "bob", "dave"]);
        assert_eq!(fresh.model_row, vec![Some(0), Some(1), None]);
        assert_eq!(fresh.new_users(), 1);
        assert_eq!(fresh.unknown_item_pairs, 2);
        assert_eq!(fresh.rows, 7);
        // Everything at once, without the unknown item, is the reference.
        let all: Vec<_> = old
            .iter()
            .chain(&new)
            .copied()
            .filter(|r| r.1 != "new-item")
            .collect();
        let want = affinity(&all, reference);
        let (_, witems, wlast, wdays) = base_of(&want);
        assert_eq!(witems, items, "same items");
        for (f, name) in fresh.users.iter().enumerate() {
            let w = want.users.iter().position(|u| u == name).unwrap();
            let (fc, fv) = fresh.ui.row(f);
            let (wc, wv) = want.matrix.row(w);
            assert_eq!(fc, wc, "{name}: items");
            for (a, b) in fv.iter().zip(wv) {
                assert!((a - b).abs() <= 1e-6 * b.abs(), "{name}: {a} vs {b}");
            }
            for k in 0..fc.len() {
                let (fp, wp) = (fresh.ui.indptr[f] + k, want.matrix.indptr[w] + k);
                assert_eq!(fresh.last_seen[fp], wlast[wp], "{name}: latest time");
                assert_eq!(fresh.days.of(fp), wdays.of(wp), "{name}: days");
            }
        }
        assert!(fresh.days.is_valid_for(fresh.ui.nnz()));
    }

    #[test]
    fn top_user_counts_the_occasions_from_a_day_on() {
        let rows: Vec<(&str, &str, f64, i64)> = (0..6)
            .map(|d| ("bot", "x", 1.0, d * DAY))
            .chain([("a", "x", 1.0, 5 * DAY), ("b", "y", 1.0, DAY)])
            .collect();
        let aff = affinity(&rows, 5 * DAY);
        let all = top_user(&aff, i32::MIN);
        assert_eq!((all.occasions, all.total), (6, 8));
        assert_eq!(aff.users[all.user.unwrap()], "bot");
        let late = top_user(&aff, crate::affinity::accumulator::day_of(4 * DAY));
        assert_eq!((late.occasions, late.total), (2, 3));
        assert!((late.share() - 2.0 / 3.0).abs() < 1e-12);
        assert!(!late.dominates(0.2), "too few occasions to judge");
        let none = top_user(&aff, i32::MAX);
        assert_eq!((none.user, none.total), (None, 0));
    }

    #[test]
    fn no_new_events_no_rows() {
        let model = affinity(&[("a", "x", 1.0, DAY)], DAY);
        let (users, items, last, days) = base_of(&model);
        let base = Base {
            users: &users,
            items: &items,
            ui: &model.matrix,
            last_seen: &last,
            days: &days,
        };
        let fresh = merge(&base, &affinity(&[], DAY), None);
        assert_eq!(fresh.ui.n_rows, 0);
        assert_eq!(fresh.ui.n_cols, 1);
        assert!(fresh.days.is_valid_for(0));
    }
}
