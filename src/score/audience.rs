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
