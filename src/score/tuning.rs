//! Choosing the scoring knobs on a validation window: which own-engagement measure (the SQL
//! baselines), then the hybrid grid around the best of them, for all-users and cross-sell
//! audiences. Pure Rust; the caller supplies the per-value components and holdout truth.
//!
//! Stage 1 scores every own measure of [`OWN_CANDIDATES`] alone (`prior = 0, activity_exp = 1`:
//! exactly the SQL baselines "past engagers by decayed affinity / summed weight / recency-decayed
//! weight / distinct days / recency-decayed days / most recent engagement"). Stage 2 scores the
//! default hybrid grid ([`default_grid_own`]) for the [`STAGE2_OWNS`] best of them. The chosen
//! point is the best of both stages, so on the validation window the tuned score is never below
//! any of those baselines. Cross-sell knobs are chosen on the same grid, scored only on users new
//! to each value.
use crate::score::hybrid::{Components, HybridParams, Own};
use crate::score::metrics::{best_of, default_grid_own, grid_objectives_multi};

/// Half-lives (days) tried for the decayed own measures; infinity = no decay.
pub const OWN_HALF_LIVES: [f32; 5] = [f32::INFINITY, 14.0, 30.0, 60.0, 120.0];

/// The own-engagement measures of stage 1, in tie-break order (earlier wins ties).
pub fn own_candidates(with_days: bool) -> Vec<Own> {
    let mut v = vec![Own::Affinity];
    if with_days {
        v.extend(OWN_HALF_LIVES.iter().map(|&h| Own::Days(h)));
        v.extend(OWN_HALF_LIVES.iter().map(|&h| Own::Weight(h)));
        v.push(Own::Recent);
    }
    v
}

/// How many of the best own measures get the full hybrid grid.
pub const STAGE2_OWNS: usize = 2;

/// With more values than this, the hybrid grid is screened on this many of them and only its
/// [`FINALISTS`] best points (for all users, and for cross-sell) are scored on every value: the
/// choice is made on the macro over all values at about the cost of 100 values (a small catalog
/// tunes on up to 2,000 values).
pub const SCREEN_VALUES: usize = 100;
/// Grid points per audience kind that pass the screening.
pub const FINALISTS: usize = 24;

/// What tuning chose, with the validation objectives (mean hit rate over the cuts, macro over
/// values) of the choice and of every own measure alone.
#[derive(Clone, Debug, PartialEq)]
pub struct Tuned {
    pub params: HybridParams,
    pub objective: f64,
    pub cross_params: HybridParams,
    pub cross_objective: f64,
    /// Stage 1: each own measure's baseline objective, in [`own_candidates`] order.
    pub baselines: Vec<(Own, f64)>,
    /// Values that had at least one validation positive.
    pub values_used: usize,
}

/// Tunes the knobs on `per_value` (components computed with every measure of
/// [`own_candidates`]`(with_days)`, and the validation positives) with activity totals `t` (the
/// affinity totals). `check` runs between batches of grid points (interrupts).
pub fn tune_knobs(
    per_value: &[(Components, Vec<bool>)],
    t: &[f32],
    with_days: bool,
    pcts: &[f64],
    threads: usize,
    check: &mut dyn FnMut(),
) -> Tuned {
    tune_knobs_with(per_value, t, with_days, pcts, STAGE2_OWNS, threads, check)
}

/// [`tune_knobs`] with the full grid for the `stage2_owns` best own measures.
pub fn tune_knobs_with(
    per_value: &[(Components, Vec<bool>)],
    t: &[f32],
    with_days: bool,
    pcts: &[f64],
    stage2_owns: usize,
    threads: usize,
    check: &mut dyn FnMut(),
) -> Tuned {
    let owns = own_candidates(with_days);
    let all = |_: usize, _: usize| true;
    let cross = |v: usize, u: usize| per_value[v].0.e[u] <= 0.0;
    let stage1: Vec<HybridParams> = owns.iter().map(|&o| HybridParams::own_only(o)).collect();
    // Every grid point is scored once per value, for all users and for cross-sell together; the
    // own measures alone (stage 1) are the first points of the full grid.
    let mut both1 =
        grid_objectives_multi(per_value, t, &stage1, pcts, &[&all, &cross], threads, check);
    let objs1 = both1[0].clone();
    let baselines: Vec<(Own, f64)> = owns.iter().copied().zip(objs1.iter().copied()).collect();
    // The best own measures (stable: ties keep candidate order).
    let mut order: Vec<usize> = (0..owns.len()).collect();
    order.sort_by(|&a, &b| {
        objs1[b]
            .partial_cmp(&objs1[a])
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    let mut grid = stage1.clone();
    if let Some((c0, _)) = per_value.first() {
        for &i in order.iter().take(stage2_owns.max(1)) {
            let (_, t_own) = c0.own_parts(owns[i], t);
            grid.extend(default_grid_own(t_own, owns[i]));
        }
    }
    let hybrid = &grid[stage1.len()..];
    let (mut objs, mut xobjs) = (std::mem::take(&mut both1[0]), std::mem::take(&mut both1[1]));
    if per_value.len() <= SCREEN_VALUES {
        let rest =
            grid_objectives_multi(per_value, t, hybrid, pcts, &[&all, &cross], threads, check);
        objs.extend(&rest[0]);
        xobjs.extend(&rest[1]);
    } else {
        // Many values: the hybrid grid is screened on SCREEN_VALUES of them (spread evenly over
        // the list, which is ordered by validation positives), and its FINALISTS best points for
        // all users and for cross-sell are scored on every value. Every point keeps an objective
        // over all values (screened-out points: -inf), so the choice below is over the same macro.
        let pick: Vec<usize> = (0..SCREEN_VALUES)
            .map(|k| k * (per_value.len() - 1) / (SCREEN_VALUES - 1))
            .collect();
        let screen: Vec<(Components, Vec<bool>)> =
            pick.iter().map(|&v| per_value[v].clone()).collect();
        let cross_s = |v: usize, u: usize| screen[v].0.e[u] <= 0.0;
        let screened =
            grid_objectives_multi(&screen, t, hybrid, pcts, &[&all, &cross_s], threads, check);
        let mut finalists: Vec<usize> = Vec::new();
        for objs_e in &screened {
            let mut ord: Vec<usize> = (0..hybrid.len()).collect();
            ord.sort_by(|&a, &b| {
                objs_e[b]
                    .partial_cmp(&objs_e[a])
                    .unwrap_or(std::cmp::Ordering::Equal)
                    .then(a.cmp(&b))
            });
            for &g in ord.iter().take(FINALISTS) {
                if !finalists.contains(&g) {
                    finalists.push(g);
                }
            }
        }
        finalists.sort_unstable();
        let fin_grid: Vec<HybridParams> = finalists.iter().map(|&g| hybrid[g]).collect();
        let fin = grid_objectives_multi(
            per_value,
            t,
            &fin_grid,
            pcts,
            &[&all, &cross],
            threads,
            check,
        );
        let (mut o, mut x) = (
            vec![f64::NEG_INFINITY; hybrid.len()],
            vec![f64::NEG_INFINITY; hybrid.len()],
        );
        for (k, &g) in finalists.iter().enumerate() {
            o[g] = fin[0][k];
            x[g] = fin[1][k];
        }
        objs.extend(o);
        xobjs.extend(x);
    }
    let (params, objective) = best_of(&grid, &objs);
    let (cross_params, cross_objective) = best_of(&grid, &xobjs);
    let values_used = per_value
        .iter()
        .filter(|(_, pos)| pos.iter().any(|&p| p))
        .count();
    Tuned {
        params,
        objective,
        cross_params,
        cross_objective,
        baselines,
        values_used,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::csr::Csr;
    use crate::model::days::DayIndex;
    use crate::score::hybrid::Scorer;

    /// The day index of per-pair records `(minute, value)`, pairs in CSR order.
    fn day_index(recs: &[Vec<(i32, f32)>]) -> DayIndex {
        let (mut ptr, mut minute, mut value) = (vec![0u32], Vec::new(), Vec::new());
        for r in recs {
            for &(m, v) in r {
                minute.push(m);
                value.push(v);
            }
            ptr.push(minute.len() as u32);
        }
        DayIndex::from_records(&ptr, &minute, &value)
    }

    /// 200 users, 4 items; item 0 is the value. Users 0..50 bought item 0 on many days long
    /// ago and stopped; users 50..100 bought it on few recent days; the holdout positives are the
    /// recent ones: recency-aware measures must beat the plain distinct-days count.
    #[test]
    fn tuning_prefers_the_measure_that_predicts_and_never_loses_to_a_baseline() {
        let n = 200usize;
        let mut trip = Vec::new();
        let mut recs: Vec<Vec<(i32, f32)>> = Vec::new();
        for u in 0..n {
            let days: Vec<i32> = if u < 50 {
                (0..8).map(|k| k * 3).collect()
            } else if u < 100 {
                vec![95, 99]
            } else {
                vec![(u % 90) as i32]
            };
            let item = if u < 100 { 0 } else { 1 + (u % 3) as u32 };
            trip.push((u as u32, item, days.len() as f32));
            recs.push(days.iter().map(|&d| (d * 1440, 1.0)).collect());
        }
        let ui = Csr::from_triplets(n, 4, &mut trip);
        let days = day_index(&recs);
        let sc = Scorer::new(&ui, None, None).with_days(&days, 100);
        let c = sc.components_with(&[0], &own_candidates(true));
        let pos: Vec<bool> = (0..n).map(|u| (50..100).contains(&u)).collect();
        let per_value = vec![(c, pos)];
        let tuned = tune_knobs(&per_value, sc.totals(), true, &[10.0, 20.0], 1, &mut || {});
        let base = |o: Own| tuned.baselines.iter().find(|b| b.0 == o).unwrap().1;
        assert!(
            base(Own::Recent) > base(Own::Days(f32::INFINITY)),
            "{:?}",
            tuned.baselines
        );
        for &(_, b) in &tuned.baselines {
            assert!(tuned.objective >= b);
        }
        assert_eq!(tuned.objective, 1.0);
        assert_ne!(tuned.params.own, Own::Days(f32::INFINITY));
        assert_eq!(tuned.values_used, 1);
        // Distinct days alone ranks the long-ago heavy buyers first (8 days vs 2).
        let dd = crate::score::hybrid::score_from_components(
            &per_value[0].0,
            sc.totals(),
            &HybridParams::own_only(Own::Days(f32::INFINITY)),
        );
        assert_eq!(dd[0], 8.0);
        assert_eq!(dd[60], 2.0);
        assert_eq!(dd[150], 0.0);
    }

    /// More values than [`SCREEN_VALUES`]: the grid is screened, and the choice still carries
    /// its objective over every value (the same number a full scoring of that point gives) and
    /// is never below a stage-1 baseline, for all users and for cross-sell.
    #[test]
    fn screened_choice_is_scored_on_every_value_and_never_below_a_baseline() {
        use crate::score::metrics::grid_objectives;
        use crate::util::rand::SplitMix64;
        let (n, n_values) = (300usize, SCREEN_VALUES + 30);
        let mut rng = SplitMix64(7);
        let mut trip = Vec::new();
        let mut recs: Vec<Vec<(i32, f32)>> = Vec::new();
        // User u prefers values near u % n_values; a few purchases on random days each.
        for u in 0..n {
            let mut items: Vec<u32> = (0..6)
                .map(|k| ((u + k * (1 + (rng.next_u64() % 3) as usize)) % n_values) as u32)
                .collect();
            items.sort_unstable();
            items.dedup();
            for &i in &items {
                let days: Vec<i32> = (0..1 + rng.next_u64() % 4)
                    .map(|_| (rng.next_u64() % 90) as i32)
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                trip.push((u as u32, i, days.len() as f32));
                recs.push(days.iter().map(|&d| (d * 1440, 1.0)).collect());
            }
        }
        // Users ascending, each user's items sorted: the records are in the CSR's pair order.
        let ui = Csr::from_triplets(n, n_values, &mut trip);
        let days = day_index(&recs);
        let sc = Scorer::new(&ui, None, None).with_days(&days, 100);
        let owns = own_candidates(true);
        let per_value: Vec<(Components, Vec<bool>)> = (0..n_values)
            .map(|v| {
                let c = sc.components_with(&[v as u32], &owns);
                let pos: Vec<bool> = (0..n)
                    .map(|u| (c.e[u] > 0.0 && rng.next_unit() < 0.5) || rng.next_unit() < 0.02)
                    .collect();
                (c, pos)
            })
            .collect();
        let tuned = tune_knobs(&per_value, sc.totals(), true, &[5.0, 20.0], 2, &mut || {});
        let all = |_: usize, _: usize| true;
        let cross = |v: usize, u: usize| per_value[v].0.e[u] <= 0.0;
        let full = |p: HybridParams, e: &(dyn Fn(usize, usize) -> bool + Sync)| {
            grid_objectives(
                &per_value,
                sc.totals(),
                &[p],
                &[5.0, 20.0],
                e,
                1,
                &mut || {},
            )[0]
        };
        assert_eq!(tuned.objective, full(tuned.params, &all));
        assert_eq!(tuned.cross_objective, full(tuned.cross_params, &cross));
        for &(o, b) in &tuned.baselines {
            assert!(tuned.objective >= b, "{o:?}: {b} > {}", tuned.objective);
            assert_eq!(b, full(HybridParams::own_only(o), &all));
        }
        assert_eq!(tuned.values_used, n_values);
    }
}
