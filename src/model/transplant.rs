//! A trained model's item side (item-kNN similarities, ALS item factors) carried over to another
//! list of items, so two models trained on different data can score the same users' histories
//! (the deploy guard of `audience.build`). Pure Rust.
use crate::model::csr::Csr;
use crate::util::buf::Buf;

/// Per item of `to` (sorted), its index in `from` (sorted), if there.
pub fn item_map(from: &[String], to: &[String]) -> Vec<Option<u32>> {
    let mut out = Vec::with_capacity(to.len());
    let mut j = 0usize;
    for name in to {
        while j < from.len() && from[j] < *name {
            j += 1;
        }
        out.push((j < from.len() && from[j] == *name).then_some(j as u32));
    }
    out
}

/// The similarities `s` (over `from`'s items) between the items of `to`, by `map` (from
/// [`item_map`]`(from, to)`); pairs with an item `from` lacks are dropped.
pub fn remap_knn(s: &Csr, map: &[Option<u32>]) -> Csr {
    // from index -> to index.
    let mut inv: Vec<u32> = vec![u32::MAX; s.n_rows];
    for (t, f) in map.iter().enumerate() {
        if let Some(f) = f {
            inv[*f as usize] = t as u32;
        }
    }
    let mut indptr = Vec::with_capacity(map.len() + 1);
    indptr.push(0usize);
    let (mut indices, mut data) = (Vec::new(), Vec::new());
    for f in map {
        if let Some(f) = f {
            let (cols, vals) = s.row(*f as usize);
            for (&c, &v) in cols.iter().zip(vals) {
                let t = inv[c as usize];
                if t != u32::MAX {
                    indices.push(t);
                    data.push(v);
                }
            }
        }
        indptr.push(indices.len());
    }
    Csr {
        n_rows: map.len(),
        n_cols: map.len(),
        indptr: indptr.into(),
        indices: indices.into(),
        data: data.into(),
    }
}

/// Factors (`k` per row, over `from`'s items or users) for the rows of `to`, by `map`; zeros for
/// rows `from` lacks (they then contribute nothing, as an item a model never saw).
pub fn remap_factors(y: &[f32], k: usize, map: &[Option<u32>]) -> Buf<f32> {
    // On cache lines, as ALS reads them (`Buf::zeroed_on_lines`): no second copy in its sweeps.
    let mut out = Buf::zeroed_on_lines(map.len() * k);
    for (t, f) in map.iter().enumerate() {
        if let Some(f) = f {
            let f = *f as usize;
            out[t * k..(t + 1) * k].copy_from_slice(&y[f * k..(f + 1) * k]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn similarities_and_factors_follow_the_items() {
        let from = names(&["a", "b", "c", "d"]);
        let to = names(&["b", "c", "e"]);
        let map = item_map(&from, &to);
        assert_eq!(map, vec![Some(1), Some(2), None]);
        // a-b 1, b-c 2, b-d 3, c-b 4, d-c 5
        let mut t = vec![
            (0, 1, 1.0),
            (1, 2, 2.0),
            (1, 3, 3.0),
            (2, 1, 4.0),
            (3, 2, 5.0),
        ];
        let s = Csr::from_triplets(4, 4, &mut t);
        let r = remap_knn(&s, &map);
        assert_eq!((r.n_rows, r.n_cols), (3, 3));
        assert_eq!(r.row(0), (&[1u32][..], &[2.0f32][..]));
        assert_eq!(r.row(1), (&[0u32][..], &[4.0f32][..]));
        assert_eq!(r.row(2).0.len(), 0);
        let y: Vec<f32> = (0..8).map(|x| x as f32).collect();
        assert_eq!(
            remap_factors(&y, 2, &map),
            vec![2.0, 3.0, 4.0, 5.0, 0.0, 0.0]
        );
        // The identity keeps everything.
        let same = item_map(&from, &from);
        assert_eq!(remap_knn(&s, &same), s);
    }
}
