//! The rules of an audience request that do not depend on the score: how many users a top-N%
//! audience holds, and who engaged with a set of items recently. Pure Rust.
use crate::model::csr::Csr;

/// Users in the top `pct` percent of `n_users` (at least one when there is any), capped at
/// `max_users` when given (negative caps are refused by the caller).
pub fn cut_size(pct: f64, n_users: usize, max_users: Option<i64>) -> usize {
    let k = (((pct / 100.0) * n_users as f64).floor() as usize)
        .max(1)
        .min(n_users);
    max_users.map_or(k, |m| k.min(m.max(0) as usize))
}

/// Per row of `ui`: an engagement with an item of `mask` whose latest event is at or after
/// `since_min` (minutes since 2000-01-01; `last_seen` per stored entry).
pub fn engaged_since(ui: &Csr, last_seen: &[i32], mask: &[bool], since_min: i32) -> Vec<bool> {
    (0..ui.n_rows)
        .map(|u| {
            let (a, b) = (ui.indptr[u], ui.indptr[u + 1]);
            (a..b).any(|p| mask[ui.indices[p] as usize] && last_seen[p] >= since_min)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::fresh::tests::{affinity, base_of, DAY};
    use crate::model::fresh::{merge, Base};
    use crate::score::hybrid::{score_from_components, HybridParams, Own, Scorer};

    /// Rows merged with the events since a build score like rows built with them.
    #[test]
    fn fresh_rows_score_like_the_rows_of_a_full_build() {
        let old = [
            ("a", "x", 1.0, DAY),
            ("a", "y", 1.0, 2 * DAY),
            ("b", "x", 1.0, 3 * DAY),
        ];
        let new = [
            ("n", "x", 1.0, 10 * DAY),
            ("n", "x", 1.0, 11 * DAY),
            ("n", "y", 1.0, 12 * DAY),
            ("b", "x", 1.0, 12 * DAY),
        ];
        let reference = 3 * DAY;
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
        let ref_day = crate::affinity::accumulator::day_of(reference);
        let sc = Scorer::new(&model.matrix, None, None).with_days(&days, ref_day);
        let fs = sc.for_rows(&fresh.ui, None, Some(&fresh.days));
        let knobs = HybridParams::own_only(Own::Days(f32::INFINITY));
        let value = [0u32, 1]; // x and y
        let c = fs.components_with(&value, &[knobs.own]);
        let got = score_from_components(&c, fs.totals(), &knobs);
        // b: days 3 and 12 of x; n: days 10, 11, 12.
        assert_eq!(fresh.users, vec!["b", "n"]);
        assert_eq!(got, vec![2.0, 3.0]);
    }

    #[test]
    fn cut_sizes() {
        assert_eq!(cut_size(5.0, 1000, None), 50);
        assert_eq!(cut_size(5.0, 1000, Some(10)), 10);
        assert_eq!(cut_size(0.01, 1000, None), 1, "at least one user");
        assert_eq!(cut_size(100.0, 7, None), 7);
        assert_eq!(cut_size(50.0, 0, None), 0, "no users, no audience");
        assert_eq!(cut_size(50.0, 9, Some(0)), 0);
    }

    #[test]
    fn engaged_since_reads_the_latest_time_of_the_items_asked() {
        // user 0: item 0 at minute 10, item 1 at 50; user 1: item 1 at 5; user 2: nothing.
        let mut t = vec![(0u32, 0u32, 1.0f32), (0, 1, 1.0), (1, 1, 1.0)];
        let ui = Csr::from_triplets(3, 2, &mut t);
        let last = [10, 50, 5];
        assert_eq!(
            engaged_since(&ui, &last, &[true, false], 0),
            vec![true, false, false]
        );
        assert_eq!(
            engaged_since(&ui, &last, &[false, true], 20),
            vec![true, false, false]
        );
        assert_eq!(
            engaged_since(&ui, &last, &[true, true], 60),
            vec![false, false, false]
        );
    }
}
