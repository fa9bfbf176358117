//! Why a user scores for a value: the items of their history that contribute most
//! ([`Scorer::explain`], `audience.explain`). Pure Rust.
use crate::score::hybrid::Scorer;

impl<'a> Scorer<'a> {
    /// The history items of `user` contributing most to their score for the value, as
    /// `(item, contribution)` sorted by contribution descending, ties by item id; at most `limit`,
    /// only contributions > 0. An item's contribution is its own engagement `a_uj` when `j` is in
    /// the value, plus (with a kNN model) its collaborative evidence `a_uj * S_V(j)` rescaled by the
    /// user's constant `t_u / sum_j a_uj S_all(j)`: the own parts sum to `e_u` and the CF parts to
    /// `knn_share_u * t_u`, so both are in affinity units and comparable. ALS has no per-item
    /// decomposition and does not contribute.
    pub fn explain(&self, user: u32, value_items: &[u32], limit: usize) -> Vec<(u32, f32)> {
        let u = user as usize;
        if u >= self.n_users() || limit == 0 {
            return Vec::new();
        }
        let (mask, _) = self.value_set(value_items);
        let cf_scale = match self.knn {
            Some(_) if self.knn_den[u] > 0.0 => self.t[u] / self.knn_den[u],
            _ => 0.0,
        };
        let (items, vals) = self.ui.row(u);
        let mut out: Vec<(u32, f32)> = items
            .iter()
            .zip(vals)
            .map(|(&j, &a)| {
                let own = if mask[j as usize] { a } else { 0.0 };
                let cf = match self.knn {
                    Some(s) if cf_scale > 0.0 => {
                        let (ns, ss) = s.row(j as usize);
                        let s_v: f32 = ns
                            .iter()
                            .zip(ss)
                            .map(|(&i, &x)| if mask[i as usize] { x } else { 0.0 })
                            .sum();
                        a * s_v * cf_scale
                    }
                    _ => 0.0,
                };
                (j, own + cf)
            })
            .filter(|&(_, c)| c > 0.0 && c.is_finite())
            .collect();
        out.sort_unstable_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
        out.truncate(limit);
        out
    }
}
