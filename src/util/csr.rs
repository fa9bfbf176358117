//! Compressed sparse row matrices: the one sparse layout the core uses for user x item affinity,
//! its transpose, and item neighbour lists.
use crate::util::buf::Buf;

/// A sparse matrix in CSR form. Row `r` holds `indices[indptr[r]..indptr[r+1]]` (column ids, strictly
/// increasing) with values `data[..]` at the same positions.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Csr {
    pub n_rows: usize,
    pub n_cols: usize,
    pub indptr: Buf<usize>,
    pub indices: Buf<u32>,
    pub data: Buf<f32>,
}

/// `out`, one slot per stored entry of a matrix with row pointers `indptr`, cut at the row
/// bounds `bounds` (as [`Csr::row_parts`] gives): each part's rows and its slots, in order.
pub fn split_at_rows<'a, T>(
    out: &'a mut [T],
    indptr: &[usize],
    bounds: &[usize],
) -> Vec<(std::ops::Range<usize>, &'a mut [T])> {
    let mut rest = out;
    bounds
        .windows(2)
        .map(|w| {
            let (piece, tail) = std::mem::take(&mut rest).split_at_mut(indptr[w[1]] - indptr[w[0]]);
            rest = tail;
            (w[0]..w[1], piece)
        })
        .collect()
}

impl Csr {
    /// Builds a matrix from (row, col, value) triples; duplicates are summed.
    pub fn from_triplets(n_rows: usize, n_cols: usize, triples: &mut [(u32, u32, f32)]) -> Csr {
        triples.sort_unstable_by_key(|t| (t.0, t.1));
        let mut indptr = vec![0usize; n_rows + 1];
        let mut indices = Vec::with_capacity(triples.len());
        let mut data: Vec<f32> = Vec::with_capacity(triples.len());
        let mut last: Option<(u32, u32)> = None;
        for &(r, c, v) in triples.iter() {
            assert!(
                (r as usize) < n_rows && (c as usize) < n_cols,
                "triple out of bounds"
            );
            if last == Some((r, c)) {
                *data.last_mut().unwrap() += v;
            } else {
                indices.push(c);
                data.push(v);
                indptr[r as usize + 1] += 1;
                last = Some((r, c));
            }
        }
        for r in 0..n_rows {
            indptr[r + 1] += indptr[r];
        }
        Csr {
            n_rows,
            n_cols,
            indptr: indptr.into(),
            indices: indices.into(),
            data: data.into(),
        }
    }

    /// Heap bytes owned (0 when the arrays are borrowed from a mapping).
    pub fn heap_bytes(&self) -> usize {
        self.indptr.heap_bytes() + self.indices.heap_bytes() + self.data.heap_bytes()
    }

    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    /// Column ids and values of row `r`.
    #[inline]
    pub fn row(&self, r: usize) -> (&[u32], &[f32]) {
        let (a, b) = (self.indptr[r], self.indptr[r + 1]);
        (&self.indices[a..b], &self.data[a..b])
    }

    /// The rows `rows` (in that order) as a matrix of their own.
    pub fn select_rows(&self, rows: &[usize]) -> Csr {
        let mut indptr = Vec::with_capacity(rows.len() + 1);
        indptr.push(0usize);
        let (mut indices, mut data) = (Vec::new(), Vec::new());
        for &r in rows {
            let (c, v) = self.row(r);
            indices.extend_from_slice(c);
            data.extend_from_slice(v);
            indptr.push(indices.len());
        }
        Csr {
            n_rows: rows.len(),
            n_cols: self.n_cols,
            indptr: indptr.into(),
            indices: indices.into(),
            data: data.into(),
        }
    }

    /// The transpose, in O(nnz); rows of the result keep increasing column order.
    pub fn transpose(&self) -> Csr {
        let mut counts = vec![0usize; self.n_cols + 1];
        for &c in &self.indices {
            counts[c as usize + 1] += 1;
        }
        for c in 0..self.n_cols {
            counts[c + 1] += counts[c];
        }
        let indptr = counts.clone();
        let mut next = counts;
        let mut indices = vec![0u32; self.nnz()];
        let mut data = vec![0f32; self.nnz()];
        for r in 0..self.n_rows {
            crate::util::interrupt::poll_every(r);
            let (cols, vals) = self.row(r);
            for (&c, &v) in cols.iter().zip(vals) {
                let p = next[c as usize];
                indices[p] = r as u32;
                data[p] = v;
                next[c as usize] += 1;
            }
        }
        Csr {
            n_rows: self.n_cols,
            n_cols: self.n_rows,
            indptr: indptr.into(),
            indices: indices.into(),
            data: data.into(),
        }
    }

    /// A matrix of the same rows and columns holding `data` (one value per stored entry).
    pub fn with_data(&self, data: Vec<f32>) -> Csr {
        assert_eq!(data.len(), self.nnz(), "one value per stored entry");
        Csr {
            n_rows: self.n_rows,
            n_cols: self.n_cols,
            indptr: self.indptr.clone(),
            indices: self.indices.clone(),
            data: data.into(),
        }
    }

    /// Row bounds of `parts` contiguous ranges of about equal entries: part `t` is rows
    /// `b[t]..b[t + 1]` (`b[0] = 0`, `b[parts] = n_rows`; a range may be empty).
    pub fn row_parts(&self, parts: usize) -> Vec<usize> {
        let parts = parts.max(1);
        let nnz = self.nnz();
        (0..=parts)
            .map(|t| {
                if t == parts {
                    self.n_rows
                } else {
                    let target = nnz / parts * t;
                    self.indptr[..self.n_rows].partition_point(|&p| p < target)
                }
            })
            .collect()
    }

    /// Sum of each row's values.
    pub fn row_sums(&self) -> Vec<f32> {
        (0..self.n_rows)
            .map(|r| self.row(r).1.iter().sum())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_rows_keeps_the_rows_in_the_order_given() {
        let mut t = vec![(0u32, 1u32, 1.0f32), (1, 0, 2.0), (1, 2, 3.0), (2, 2, 4.0)];
        let m = Csr::from_triplets(3, 3, &mut t);
        let s = m.select_rows(&[2, 0]);
        assert_eq!((s.n_rows, s.n_cols), (2, 3));
        assert_eq!(s.row(0), (&[2u32][..], &[4.0f32][..]));
        assert_eq!(s.row(1), (&[1u32][..], &[1.0f32][..]));
        assert_eq!(m.select_rows(&[]).nnz(), 0);
    }

    #[test]
    fn triplets_sum_duplicates_and_transpose_round_trips() {
        let mut t = vec![(1, 2, 1.0), (0, 1, 2.0), (1, 2, 0.5), (1, 0, 3.0)];
        let m = Csr::from_triplets(2, 3, &mut t);
        assert_eq!(m.indptr, vec![0, 1, 3]);
        assert_eq!(m.row(1), (&[0u32, 2][..], &[3.0f32, 1.5][..]));
        let tt = m.transpose();
        assert_eq!(tt.row(2), (&[1u32][..], &[1.5f32][..]));
        assert_eq!(tt.transpose(), m);
        assert_eq!(m.row_sums(), vec![2.0, 4.5]);
    }
}
