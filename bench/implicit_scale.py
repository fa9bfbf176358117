#!/usr/bin/env python3
"""Time `implicit` ALS training on an interaction CSV exported from Postgres.

The CSV has three columns, user, item, weight (ids may be text; a header row is detected and
skipped; repeated (user, item) pairs are summed). Export one from the demo shop with e.g.

  psql -c "\\copy (SELECT user_id, product_id, count(*) FROM demo.tracks GROUP BY 1, 2) TO 'ui.csv' CSV"
  bench/implicit_baseline.sh scale ui.csv

It prints the load time and the ALS training time (factors 32, 10 iterations by default), to set
against the in-database model build on the same data; --json writes the numbers as JSON too.
--factors-out PREFIX also writes the trained factors as PREFIX_users.csv and PREFIX_items.csv
(id, f0, ..., f{k-1}; no header), ready for `\copy t FROM ... CSV` into a table
(id text, f0 real, ...), and times that write (write_seconds): bench/scale.sh loads them back.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import sys
import time
import warnings

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")


def peak_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def load_csv(path: str):
    """Returns (user codes, item codes, weights, user ids, item ids): code k is ids[k]."""
    import numpy as np

    try:  # pandas is much faster on tens of millions of rows, but optional
        import pandas as pd

        df = pd.read_csv(path, header=None, names=["user", "item", "weight"], dtype=str)
        if not _is_number(df["weight"].iloc[0]):
            df = df.iloc[1:]
        users, items = df["user"].to_numpy(), df["item"].to_numpy()
        weights = df["weight"].astype(np.float32).to_numpy()
    except ImportError:
        # plain csv: map ids to codes while reading (keeps memory at ~12 bytes per row)
        from array import array

        umap, imap = {}, {}
        uc, ic, w = array("i"), array("i"), array("f")
        with open(path, newline="") as f:
            for n, row in enumerate(csv.reader(f)):
                if len(row) < 3 or (n == 0 and not _is_number(row[2])):
                    continue
                uc.append(umap.setdefault(row[0], len(umap)))
                ic.append(imap.setdefault(row[1], len(imap)))
                w.append(float(row[2]))
        return (np.frombuffer(uc, dtype=np.int32), np.frombuffer(ic, dtype=np.int32),
                np.frombuffer(w, dtype=np.float32), list(umap), list(imap))
    uids, ucode = np.unique(users, return_inverse=True)
    iids, icode = np.unique(items, return_inverse=True)
    return ucode, icode, weights, list(uids), list(iids)


def write_factors(path: str, ids, factors) -> None:
    """One CSV row per id: id, then its factors (%.7g)."""
    import numpy as np

    factors = np.asarray(factors, dtype=np.float32)
    fmt = "%s" + ",%.7g" * factors.shape[1] + "\n"

    def quoted(x) -> str:
        x = str(x)
        return '"' + x.replace('"', '""') + '"' if any(c in x for c in ',"\n\r') else x

    with open(path, "w", buffering=1 << 22) as f:
        for k, row in enumerate(factors.tolist()):
            f.write(fmt % (quoted(ids[k]), *row))


def _is_number(s) -> bool:
    try:
        float(s)
        return True
    except (TypeError, ValueError):
        return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv", help="user,item,weight CSV")
    ap.add_argument("--factors", type=int, default=32)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--regularization", type=float, default=0.1)
    ap.add_argument("--alpha", type=float, default=1.0, help="confidence = 1 + alpha * weight")
    ap.add_argument("--threads", type=int, default=0, help="0 = all cores")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    ap.add_argument("--factors-out", metavar="PREFIX",
                    help="write the factors to PREFIX_users.csv and PREFIX_items.csv (id, f0, ...)")
    args = ap.parse_args()

    if not os.path.isfile(args.csv):
        print(f"skipped: {args.csv} not found")
        return 0

    import numpy as np
    import scipy.sparse as sp
    import implicit
    from implicit.als import AlternatingLeastSquares

    warnings.filterwarnings("ignore", message="Method expects CSR input")
    t0 = time.perf_counter()
    u, i, w, user_ids, item_ids = load_csv(args.csv)
    n_users, n_items = len(user_ids), len(item_ids)
    R = sp.csr_matrix((w, (u, i)), shape=(n_users, n_items), dtype=np.float32)
    R.sum_duplicates()
    load_s = time.perf_counter() - t0

    model = AlternatingLeastSquares(factors=args.factors, regularization=args.regularization,
                                    alpha=args.alpha, iterations=args.iterations,
                                    random_state=args.seed, use_gpu=False, num_threads=args.threads,
                                    calculate_training_loss=False)
    t0 = time.perf_counter()
    model.fit(R, show_progress=False)
    train_s = time.perf_counter() - t0

    write_s = None
    if args.factors_out:
        t0 = time.perf_counter()
        uf, itf = model.user_factors, model.item_factors
        if hasattr(uf, "to_numpy"):  # GPU arrays
            uf, itf = uf.to_numpy(), itf.to_numpy()
        write_factors(args.factors_out + "_users.csv", user_ids, uf)
        write_factors(args.factors_out + "_items.csv", item_ids, itf)
        write_s = time.perf_counter() - t0

    res = {"csv": args.csv, "rows": int(len(w)), "nnz": int(R.nnz), "users": n_users, "items": n_items,
           "factors": args.factors, "iterations": args.iterations, "regularization": args.regularization,
           "alpha": args.alpha, "threads": args.threads or os.cpu_count(), "load_seconds": load_s,
           "train_seconds": train_s, "write_seconds": write_s, "factors_out": args.factors_out,
           "peak_rss_mb": peak_mb(), "implicit": implicit.__version__,
           "python": platform.python_version()}
    print(f"implicit {implicit.__version__} ALS factors={args.factors} iterations={args.iterations} "
          f"threads={res['threads']}: {n_users} users x {n_items} items, nnz {R.nnz}")
    print(f"load {load_s:.2f}s  train {train_s:.2f}s  peak {res['peak_rss_mb']:.0f} MB")
    print(f"train_seconds={train_s:.3f}")
    if write_s is not None:
        print(f"factors written to {args.factors_out}_users.csv, {args.factors_out}_items.csv in {write_s:.2f}s")
        print(f"write_seconds={write_s:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
