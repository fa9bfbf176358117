//! Pure steps of a build around the collaborative models: the confidence input they train on
//! and the per-value user counts stored with a model. (The SQL layer, `api::build`, wires them
//! to the scan, the training phases and the tables; `benches/core.rs` calls the same functions.)
use crate::model::csr::Csr;

/// The confidence input of the collaborative models: log-damped affinity, so one heavy repeat
/// buyer does not dominate an item's neighbours.
pub fn damped(ui: &Csr) -> Csr {
    damped_on(ui, 1)
}

/// [`damped`] on `threads` threads (the same values: one `ln_1p` per entry).
pub fn damped_on(ui: &Csr, threads: usize) -> Csr {
    let mut data = vec![0f32; ui.nnz()];
    let src = ui.data.as_slice();
    crate::util::par::par_chunks(&mut data, threads, |first, out| {
        for (o, &v) in out.iter_mut().zip(&src[first..]) {
            *o = v.max(0.0).ln_1p();
        }
    });
    ui.with_data(data)
}

/// Distinct users per property value (users of `ui` with affinity to any item having it;
/// `value_items`: values x items).
pub fn value_user_counts(ui: &Csr, value_items: &Csr) -> Vec<i64> {
    let n_values = value_items.n_rows;
    // item -> values
    let item_values = value_items.transpose();
    let mut counts = vec![0i64; n_values];
    let mut last_user = vec![u32::MAX; n_values];
    for u in 0..ui.n_rows {
        for &i in ui.row(u).0 {
            for &v in item_values.row(i as usize).0 {
                if last_user[v as usize] != u as u32 {
                    last_user[v as usize] = u as u32;
                    counts[v as usize] += 1;
                }
            }
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn damped_is_log1p_of_the_positive_part() {
        let ui = Csr::from_triplets(
            2,
            3,
            &mut [(0, 0, 0.0), (0, 2, (1f32).exp_m1()), (1, 1, -3.0)],
        );
        let d = damped(&ui);
        let big = Csr::from_triplets(
            250,
            400,
            &mut (0..100_000u32)
                .map(|k| (k / 400, k % 400, (k % 97) as f32 - 20.5))
                .collect::<Vec<_>>(),
        );
        assert_eq!(big.nnz(), 100_000, "more entries than one thread's share");
        let (one, two) = (damped_on(&big, 1), damped_on(&big, 3));
        assert_eq!(
            one.data.as_slice(),
            two.data.as_slice(),
            "thread count changes nothing"
        );
        assert_eq!(
            (d.indptr.clone(), d.indices.clone()),
            (ui.indptr.clone(), ui.indices.clone())
        );
        assert_eq!(d.data[0], 0.0);
        assert!((d.data[1] - 1.0).abs() < 1e-6);
        assert_eq!(d.data[2], 0.0, "negative affinity gives no confidence");
    }
}
