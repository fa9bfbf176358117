//! Scoring on a fixed sample of users (tuning on large catalogs: [`Sample`]) and the users'
//! return signals, active days and tenure ([`Returns`]). Pure Rust.
use crate::model::csr::Csr;
use crate::model::days::DayIndex;
use crate::score::hybrid::{Components, OwnPart, Scorer};
use crate::score::own::Own;
use crate::util::buf::Buf;
use std::sync::{Arc, Mutex};

/// An own measure's activity totals for the whole population and picked for a sample.
type PickedTotals = (Own, Arc<Buf<f32>>, Arc<Buf<f32>>);

/// A fixed subset of a scorer's users (for tuning on a sample): picks their entries out of
/// per-user vectors and [`Components`], sharing the value-independent parts between values.
pub struct Sample {
    pub users: Vec<usize>,
    als_volume: Option<Arc<Buf<f32>>>,
    knn_volume: Option<Arc<Buf<f32>>>,
    returns: Option<std::sync::Arc<Returns>>,
    /// Picked own-measure totals, shared between values.
    own_totals: Mutex<Vec<PickedTotals>>,
}

impl Sample {
    /// Every `step`-th user of the scorer's `n_users` (step >= 1).
    pub fn every(scorer: &Scorer, step: usize) -> Sample {
        let users: Vec<usize> = (0..scorer.n_users()).step_by(step.max(1)).collect();
        let pick = |v: &[f32]| users.iter().map(|&u| v[u]).collect::<Vec<f32>>();
        let als_volume = scorer
            .als
            .map(|_| Arc::new(pick(&scorer.als_volume).into()));
        let knn_volume = scorer
            .knn
            .map(|_| Arc::new(pick(&scorer.knn_volume).into()));
        let returns = scorer
            .returns()
            .map(|r| std::sync::Arc::new(r.pick(&users)));
        Sample {
            users,
            als_volume,
            knn_volume,
            returns,
            own_totals: Mutex::new(Vec::new()),
        }
    }

    /// `v` restricted to the sample.
    pub fn pick<T: Copy>(&self, v: &[T]) -> Vec<T> {
        self.users.iter().map(|&u| v[u]).collect()
    }

    /// The scorer's components of a value with the own measures `owns`, for the sample's users:
    /// the own measures and their totals are computed for these users only (the rest of the
    /// components come from the whole population, as [`Sample::components`]).
    pub fn components_with(
        &self,
        scorer: &Scorer,
        value_items: &[u32],
        owns: &[Own],
    ) -> Components {
        let mut c = self.components(&scorer.components(value_items));
        let (mask, _) = scorer.value_set(value_items);
        let wanted: Vec<Own> = {
            let mut w: Vec<Own> = Vec::new();
            for &o in owns {
                if o != Own::Affinity && !w.contains(&o) {
                    w.push(o);
                }
            }
            w
        };
        // The sample's e was picked in user order, so index it by sample position.
        let mut e_full = vec![0f32; scorer.n_users()];
        for (r, &u) in self.users.iter().enumerate() {
            e_full[u] = c.e[r];
        }
        let cols = scorer.own_columns(Some(&self.users), Some(&mask), Some(&e_full), &wanted);
        c.own = wanted
            .iter()
            .zip(cols)
            .map(|(&own, e)| {
                let cached = self
                    .own_totals
                    .lock()
                    .unwrap()
                    .iter()
                    .find(|x| x.0 == own)
                    .map(|x| x.2.clone());
                let t = cached.unwrap_or_else(|| {
                    let t: Arc<Buf<f32>> = Arc::new(
                        scorer
                            .own_columns(Some(&self.users), None, None, &[own])
                            .pop()
                            .unwrap_or_default()
                            .into(),
                    );
                    // The whole-population slot is unused for totals computed on the sample only.
                    self.own_totals
                        .lock()
                        .unwrap()
                        .push((own, Arc::new(Buf::new()), t.clone()));
                    t
                });
                OwnPart { own, e, t }
            })
            .collect();
        c
    }

    /// `c` (computed by the same scorer) restricted to the sample.
    pub fn components(&self, c: &Components) -> Components {
        Components {
            e: self.pick(&c.e),
            knn_share: c.knn_share.as_deref().map(|x| self.pick(x)),
            als_share: c.als_share.as_deref().map(|x| self.pick(x)),
            als_volume: c.als_volume.as_ref().and(self.als_volume.clone()),
            knn_volume: c.knn_volume.as_ref().and(self.knn_volume.clone()),
            returns: c.returns.as_ref().and(self.returns.clone()),
            own: c
                .own
                .iter()
                .map(|p| {
                    let t = self
                        .own_totals
                        .lock()
                        .unwrap()
                        .iter()
                        .find(|x| x.0 == p.own && Arc::ptr_eq(&x.1, &p.t))
                        .map(|x| x.2.clone());
                    let t = t.unwrap_or_else(|| {
                        let t: Arc<Buf<f32>> = Arc::new(self.pick(&p.t).into());
                        self.own_totals
                            .lock()
                            .unwrap()
                            .push((p.own, p.t.clone(), t.clone()));
                        t
                    });
                    OwnPart {
                        own: p.own,
                        e: self.pick(&p.e),
                        t,
                    }
                })
                .collect(),
        }
    }
}

/// How each user returns, from the latest event time of each of their items (only those are
/// kept): lower bounds of the true figures, exact when every item was engaged with on one day.
#[derive(Clone, Debug, PartialEq)]
pub struct Returns {
    /// `d_u`: distinct days (`time.div_euclid(per_day)`) among the row's times (0 for an empty row).
    pub days: Buf<f32>,
    /// `r_u`: 1 + days from the earliest to the latest of them (0 for an empty row).
    pub tenure: Buf<f32>,
}

impl Returns {
    /// Exact active days and tenures from the engagement days of each stored pair.
    pub fn from_days(ui: &Csr, days: &DayIndex) -> Returns {
        let mut buf: Vec<u16> = Vec::new();
        let (mut d_out, mut r_out) = (Vec::with_capacity(ui.n_rows), Vec::with_capacity(ui.n_rows));
        for u in 0..ui.n_rows {
            crate::util::interrupt::poll_every(u);
            buf.clear();
            for p in ui.indptr[u]..ui.indptr[u + 1] {
                buf.extend_from_slice(days.of(p).0);
            }
            buf.sort_unstable();
            let span = match (buf.first(), buf.last()) {
                (Some(&a), Some(&b)) => (b - a) as f32 + 1.0,
                _ => 0.0,
            };
            buf.dedup();
            d_out.push(buf.len() as f32);
            r_out.push(span);
        }
        Returns {
            days: d_out.into(),
            tenure: r_out.into(),
        }
    }

    /// From the latest time of each pair only (lower bounds); kept to check [`Returns::from_days`].
    #[cfg(test)]
    pub fn from_last_seen<T: Copy + Into<i64>>(ui: &Csr, last_seen: &[T], per_day: i64) -> Returns {
        assert_eq!(
            last_seen.len(),
            ui.indices.len(),
            "one time per stored affinity"
        );
        let per_day = per_day.max(1);
        let mut buf: Vec<i64> = Vec::new();
        let (mut days, mut tenure) = (Vec::with_capacity(ui.n_rows), Vec::with_capacity(ui.n_rows));
        for u in 0..ui.n_rows {
            buf.clear();
            buf.extend(
                last_seen[ui.indptr[u]..ui.indptr[u + 1]]
                    .iter()
                    .map(|&x| x.into().div_euclid(per_day)),
            );
            buf.sort_unstable();
            let span = match (buf.first(), buf.last()) {
                (Some(a), Some(b)) => (b - a + 1) as f32,
                _ => 0.0,
            };
            buf.dedup();
            days.push(buf.len() as f32);
            tenure.push(span);
        }
        Returns {
            days: days.into(),
            tenure: tenure.into(),
        }
    }

    /// The same users picked by index (for tuning on a sample).
    pub fn pick(&self, users: &[usize]) -> Returns {
        Returns {
            days: users.iter().map(|&u| self.days[u]).collect(),
            tenure: users.iter().map(|&u| self.tenure[u]).collect(),
        }
    }
}
