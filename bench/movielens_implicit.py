#!/usr/bin/env python3
"""Product-based audiences on MovieLens 100K: SQL baselines vs. the `implicit` library.

For a property (genre, release_year, release decade) and each of its values V, rank every user
seen in the training period by how likely they are to engage with items having V in the holdout
period, and score the ranking against who actually did.

Methods
  sql_most_active    total train weight (sum of ratings)              -- one SQL GROUP BY
  sql_past_engagers  train weight on items having V                   -- one SQL GROUP BY + filter
  als                implicit ALS; score(u, V) = sum over items i in V of <x_u, y_i>
  bm25_knn           implicit BM25Recommender(K=100); same aggregation of its item scores
  hybrid             share_u = (e_u + prior * cf_u) / (t_u + prior); score = share_u * t_u ** beta
                     e_u = past-engager score, t_u = activity, cf_u = mean of the ALS and kNN
                     shares of the user's predicted mass that falls on V

Hyper-parameters (ALS grid, hybrid prior/beta) are chosen on a validation split made inside the
training period the same way (last fraction of the training time range); the chosen setting is
then refit on the full training period and scored on the holdout. The best ALS setting on the
test split is also reported, labelled `als_oracle_best_on_test`: it is not a fair number.

Metrics per value, macro-averaged over values with >= --min-positives positives:
  hit@K%     share of the top K% users that are positives (precision)
  recall@K%  share of the positives found in the top K%   (k = max(1, floor(K/100 * n)))
  lift@K%    hit@K% / base rate
  auc        Mann-Whitney AUC over all ranked users (ties averaged)
Variant `cross_sell` ranks only users with no train engagement with V (new-to-V audiences).

Usage (from the repository root):  bench/implicit_baseline.sh [--holdout-days N] [--quick]
Data: ../shared/data/movielens-100k (RecBole atomic files), or $MOVIELENS_DIR.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
import warnings
from pathlib import Path

# implicit warns (and slows down) when BLAS is multi-threaded under its own OpenMP threads.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO_ROOT = Path(__file__).resolve().parent.parent
PCTS = (1, 5, 10, 20)


def peak_mb() -> float:
    # ru_maxrss is KiB on Linux (bytes on macOS)
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


# --------------------------------------------------------------------------- data loading ----

def read_atomic(path: Path):
    """RecBole atomic file: TSV with a `name:type` header. Returns (column names, rows)."""
    with path.open(encoding="utf-8", errors="replace") as f:
        header = f.readline().rstrip("\n").split("\t")
        names = [h.split(":", 1)[0] for h in header]
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    return names, rows


def load_movielens(data_dir: Path):
    import numpy as np

    names, rows = read_atomic(data_dir / "ml-100k.inter")
    ix = {n: i for i, n in enumerate(names)}
    users = np.array([r[ix["user_id"]] for r in rows])
    items = np.array([r[ix["item_id"]] for r in rows])
    rating = np.array([float(r[ix["rating"]]) for r in rows], dtype=np.float64)
    ts = np.array([float(r[ix["timestamp"]]) for r in rows], dtype=np.float64)

    names, rows = read_atomic(data_dir / "ml-100k.item")
    ix = {n: i for i, n in enumerate(names)}
    item_props = {}
    for r in rows:
        r = r + [""] * (len(names) - len(r))
        year = r[ix["release_year"]].strip()
        genres = [g for g in r[ix["class"]].split(" ") if g]
        item_props[r[ix["item_id"]]] = {
            "genre": genres,
            "release_year": [year] if year.isdigit() else [],
            "decade": [f"{int(year) // 10 * 10}s"] if year.isdigit() else [],
        }
    return users, items, rating, ts, item_props


# --------------------------------------------------------------------------- metrics ---------

def rank_order(scores, tiebreak):
    """Indexes sorted by score descending; ties broken by a fixed random permutation."""
    import numpy as np

    return np.lexsort((tiebreak, -scores))


def value_metrics(scores, positive, tiebreak):
    """Metrics of one ranking (scores over candidate users) against a boolean positive mask."""
    import numpy as np
    from scipy.stats import rankdata

    n = scores.shape[0]
    n_pos = int(positive.sum())
    base = n_pos / n
    order = rank_order(scores, tiebreak)
    pos_sorted = positive[order]
    out = {"n": n, "positives": n_pos, "base_rate": base}
    for pct in PCTS:
        k = max(1, int(np.floor(pct / 100.0 * n)))
        hits = int(pos_sorted[:k].sum())
        out[f"hit@{pct}%"] = hits / k
        out[f"recall@{pct}%"] = hits / n_pos
        out[f"lift@{pct}%"] = (hits / k) / base
    if 0 < n_pos < n:
        r = rankdata(scores)
        out["auc"] = float((r[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos)))
    else:
        out["auc"] = float("nan")
    return out


METRIC_KEYS = [f"{m}@{p}%" for m in ("hit", "recall", "lift") for p in PCTS] + ["auc"]


def macro(per_value: dict) -> dict:
    import numpy as np

    out = {}
    for key in METRIC_KEYS:
        vals = [m[key] for m in per_value.values() if not np.isnan(m[key])]
        out[key] = float(np.mean(vals)) if vals else float("nan")
    out["values"] = len(per_value)
    return out


# --------------------------------------------------------------------------- split & models --

class Split:
    """Train matrix over train users x all items, and holdout engagement per (user, value)."""

    def __init__(self, users, items, rating, ts, cut, item_index, n_items, memberships):
        import numpy as np
        import scipy.sparse as sp

        train = ts < cut
        hold = ~train
        self.train_user_ids, uinv = np.unique(users[train], return_inverse=True)
        self.n_users = len(self.train_user_ids)
        uidx = {u: i for i, u in enumerate(self.train_user_ids)}
        iidx = np.array([item_index[i] for i in items])
        self.R = sp.csr_matrix((rating[train], (uinv, iidx[train])), shape=(self.n_users, n_items))
        self.R.sum_duplicates()
        self.n_train_events = int(train.sum())
        # holdout events of train users only (new users cannot be ranked)
        h_u = np.array([uidx.get(u, -1) for u in users[hold]])
        keep = h_u >= 0
        self.n_holdout_events = int(hold.sum())
        self.n_holdout_events_known_users = int(keep.sum())
        H = sp.csr_matrix((np.ones(int(keep.sum())), (h_u[keep], iidx[hold][keep])),
                          shape=(self.n_users, n_items))
        self.H = H
        self.t = np.asarray(self.R.sum(axis=1)).ravel()                   # activity
        self.engaged = {}                                                  # train weight on V
        self.positive = {}
        for prop, M in memberships.items():
            self.engaged[prop] = np.asarray((self.R @ M).todense())
            self.positive[prop] = np.asarray((H @ M).todense()) > 0


def fit_als(R, factors, regularization, alpha, iterations, threads, seed):
    from implicit.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                    iterations=iterations, random_state=seed, use_gpu=False,
                                    num_threads=threads, calculate_training_loss=False)
    t0 = time.perf_counter()
    model.fit(R, show_progress=False)
    secs = time.perf_counter() - t0
    pred = model.user_factors @ model.item_factors.T          # users x items
    return pred, secs


def fit_knn(R, K, threads):
    from implicit.nearest_neighbours import BM25Recommender

    model = BM25Recommender(K=K, num_threads=threads)
    t0 = time.perf_counter()
    model.fit(R, show_progress=False)
    secs = time.perf_counter() - t0
    pred = (R @ model.similarity).toarray()                    # users x items, as recommend() scores
    return pred, secs


def cf_share(pred, M):
    """Share of each user's (positive part of) predicted mass that falls on each value."""
    import numpy as np

    p = np.clip(pred, 0, None)
    tot = p.sum(axis=1, keepdims=True)
    tot[tot == 0] = 1.0
    return np.asarray(p @ M) / tot


def hybrid_scores(e, t, cf, prior, beta):
    import numpy as np

    t2 = t[:, None]
    share = (e + prior * cf) / (t2 + prior)
    return share * np.power(t2, beta)


def evaluate(split: Split, prop: str, values, scores, tiebreak, min_pos, cross_sell: bool):
    """Per-value metrics for a users x values score matrix; returns {value: metrics}."""
    pos = split.positive[prop]
    eng = split.engaged[prop]
    res = {}
    for j, v in enumerate(values):
        mask = eng[:, j] <= 0 if cross_sell else slice(None)
        p = pos[mask, j]
        if p.sum() < min_pos:
            continue
        res[v] = value_metrics(scores[mask, j], p, tiebreak[mask])
    return res


def select_metric_value(split, prop, values, scores, tiebreak, min_pos, metric):
    return macro(evaluate(split, prop, values, scores, tiebreak, min_pos, False))[metric]


# --------------------------------------------------------------------------- main ------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", default=os.environ.get("MOVIELENS_DIR",
                                                         str(REPO_ROOT / ".." / "shared" / "data" / "movielens-100k")))
    ap.add_argument("--holdout-frac", type=float, default=0.2,
                    help="holdout = events in the last FRAC of the time range (default 0.2)")
    ap.add_argument("--holdout-days", type=float, default=None,
                    help="holdout = events in the last N days (overrides --holdout-frac)")
    ap.add_argument("--cutoff-align", choices=("day", "none"), default="day",
                    help="day (default): move the cutoffs back to the UTC midnight before them, as "
                         "audience.evaluate does; none: the exact times (the README's first tables)")
    ap.add_argument("--min-positives", type=int, default=5,
                    help="evaluate only values with at least this many positive users (default 5)")
    ap.add_argument("--select-metric", default="recall@10%", choices=METRIC_KEYS,
                    help="validation metric used to choose hyper-parameters (default recall@10%%)")
    ap.add_argument("--properties", default="genre,release_year,decade")
    ap.add_argument("--threads", type=int, default=0, help="implicit threads (0 = all cores)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--quick", action="store_true", help="tiny ALS grid (smoke test)")
    ap.add_argument("--no-oracle", action="store_true", help="skip the best-on-test ALS sweep")
    ap.add_argument("--out", default=str(REPO_ROOT / "target" / "bench" / "movielens_implicit.json"))
    args = ap.parse_args()

    data_dir = Path(args.data_dir)
    for f in ("ml-100k.inter", "ml-100k.item"):
        if not (data_dir / f).is_file():
            print(f"skipped: {data_dir / f} not found (set MOVIELENS_DIR to the RecBole ml-100k folder)")
            return 0

    try:
        import numpy as np
        import scipy.sparse as sp
        import implicit
    except ImportError as e:  # pragma: no cover
        print(f"error: {e}; install bench/requirements.txt (bench/implicit_baseline.sh does)", file=sys.stderr)
        return 2

    # BM25Recommender hands its own COO weights to fit(): silence that internal ParameterWarning
    warnings.filterwarnings("ignore", message="Method expects CSR input")

    t_start = time.perf_counter()
    users, items, rating, ts, item_props = load_movielens(data_dir)
    item_ids = sorted(set(items.tolist()) | set(item_props), key=lambda s: (len(s), s))
    item_index = {it: i for i, it in enumerate(item_ids)}
    n_items = len(item_ids)

    props = [p.strip() for p in args.properties.split(",") if p.strip()]
    values, memberships = {}, {}
    for prop in props:
        vals = sorted({v for d in item_props.values() for v in d[prop]})
        vidx = {v: j for j, v in enumerate(vals)}
        r, c = [], []
        for it, d in item_props.items():
            if it in item_index:
                for v in d[prop]:
                    r.append(item_index[it])
                    c.append(vidx[v])
        values[prop] = vals
        memberships[prop] = sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(n_items, len(vals)))

    t_min, t_max = float(ts.min()), float(ts.max())
    if args.holdout_days is not None:
        cut = t_max - args.holdout_days * 86400.0
        val_cut_of = lambda lo, hi: hi - args.holdout_days * 86400.0  # noqa: E731
        split_desc = f"last {args.holdout_days:g} days"
    else:
        cut = t_max - args.holdout_frac * (t_max - t_min)
        val_cut_of = lambda lo, hi: hi - args.holdout_frac * (hi - lo)  # noqa: E731
        split_desc = f"last {args.holdout_frac:.0%} of the time range"
    if args.cutoff_align == "day":
        # audience.evaluate starts the holdout at the UTC midnight before the cut (whole days).
        cut = float(np.floor(cut / 86400.0) * 86400.0)
        split_desc += ", from the UTC midnight before"
    train_mask = ts < cut
    val_cut = val_cut_of(t_min, float(ts[train_mask].max()))
    if args.cutoff_align == "day":
        val_cut = float(np.floor(val_cut / 86400.0) * 86400.0)

    test = Split(users, items, rating, ts, cut, item_index, n_items, memberships)
    # validation: the same split made inside the training period
    val = Split(users[train_mask], items[train_mask], rating[train_mask], ts[train_mask], val_cut,
                item_index, n_items, memberships)

    rng = np.random.default_rng(args.seed)
    tb_test = rng.permutation(test.n_users)
    tb_val = rng.permutation(val.n_users)
    threads = args.threads
    sel = args.select_metric
    sel_prop = props[0]  # hyper-parameters are chosen on the first property (genre by default)

    print(f"implicit {implicit.__version__}, numpy {np.__version__}, python {platform.python_version()}")
    print(f"split: {split_desc}; cut {time.strftime('%Y-%m-%d', time.gmtime(cut))}; "
          f"train {test.n_train_events} events / {test.n_users} users; holdout {test.n_holdout_events} events "
          f"({test.n_holdout_events_known_users} by train users)")
    print(f"validation: cut {time.strftime('%Y-%m-%d', time.gmtime(val_cut))}; "
          f"{val.n_train_events} events / {val.n_users} users")

    # ---- ALS grid on validation
    grid = [(f, r, a) for f in (32, 64) for r in (0.01, 0.1) for a in (1.0, 10.0, 40.0)]
    if args.quick:
        grid = [(32, 0.1, 10.0), (64, 0.01, 40.0)]
    als_val = []
    best = None
    tune_t0 = time.perf_counter()
    for f, r, a in grid:
        pred, _ = fit_als(val.R, f, r, a, 15, threads, args.seed)
        score = select_metric_value(val, sel_prop, values[sel_prop], np.asarray(pred @ memberships[sel_prop]),
                                    tb_val, args.min_positives, sel)
        als_val.append({"factors": f, "regularization": r, "alpha": a, sel: score})
        if best is None or score > best[0]:
            best = (score, (f, r, a), pred)
    als_tune_s = time.perf_counter() - tune_t0
    bf, br, ba = best[1]
    print(f"ALS chosen on validation ({sel} on {sel_prop}): factors={bf} reg={br} alpha={ba} "
          f"({len(grid)} settings, {als_tune_s:.1f}s)")

    # ---- hybrid prior/beta on validation
    knn_val, _ = fit_knn(val.R, 100, threads)
    hyb_grid = [(p, b) for p in (0.5, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0) for b in (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)]
    best_h = None
    hyb_val = []
    M0 = memberships[sel_prop]
    cf_v = 0.5 * (cf_share(best[2], M0) + cf_share(knn_val, M0))
    for p, b in hyb_grid:
        sc = hybrid_scores(val.engaged[sel_prop], val.t, cf_v, p, b)
        score = select_metric_value(val, sel_prop, values[sel_prop], sc, tb_val, args.min_positives, sel)
        hyb_val.append({"prior": p, "beta": b, sel: score})
        if best_h is None or score > best_h[0]:
            best_h = (score, (p, b))
    prior, beta = best_h[1]
    print(f"hybrid chosen on validation: prior={prior} beta={beta}")

    # ---- fit on the full training period and score the holdout
    methods = {}  # name -> (dict prop -> users x values scores, train seconds, peak MB)

    t0 = time.perf_counter()
    base_scores = {p: np.repeat(test.t[:, None], len(values[p]), axis=1) for p in props}
    methods["sql_most_active"] = (base_scores, time.perf_counter() - t0, peak_mb())

    t0 = time.perf_counter()
    eng_scores = {p: test.engaged[p] for p in props}
    methods["sql_past_engagers"] = (eng_scores, time.perf_counter() - t0, peak_mb())

    als_pred, als_s = fit_als(test.R, bf, br, ba, 15, threads, args.seed)
    methods["als"] = ({p: np.asarray(als_pred @ memberships[p]) for p in props}, als_s, peak_mb())

    knn_pred, knn_s = fit_knn(test.R, 100, threads)
    methods["bm25_knn"] = ({p: np.asarray(knn_pred @ memberships[p]) for p in props}, knn_s, peak_mb())

    t0 = time.perf_counter()
    hyb = {}
    for p in props:
        cf = 0.5 * (cf_share(als_pred, memberships[p]) + cf_share(knn_pred, memberships[p]))
        hyb[p] = hybrid_scores(test.engaged[p], test.t, cf, prior, beta)
    methods["hybrid"] = (hyb, als_s + knn_s + time.perf_counter() - t0, peak_mb())

    # ---- oracle: best ALS setting on the test split (reported, labelled, not used elsewhere)
    als_test = []
    if not args.no_oracle:
        best_o = None
        for f, r, a in grid:
            pred, secs = fit_als(test.R, f, r, a, 15, threads, args.seed)
            sc = np.asarray(pred @ memberships[sel_prop])
            score = select_metric_value(test, sel_prop, values[sel_prop], sc, tb_test, args.min_positives, sel)
            als_test.append({"factors": f, "regularization": r, "alpha": a, sel: score, "train_s": secs})
            if best_o is None or score > best_o[0]:
                best_o = (score, pred, secs, (f, r, a))
        methods["als_oracle_best_on_test"] = (
            {p: np.asarray(best_o[1] @ memberships[p]) for p in props}, best_o[2], peak_mb())
        print(f"ALS best on test ({sel} on {sel_prop}, oracle): factors={best_o[3][0]} "
              f"reg={best_o[3][1]} alpha={best_o[3][2]}")

    results = []
    for prop in props:
        for variant in ("all", "cross_sell"):
            for name, (scores, secs, mb) in methods.items():
                per_value = evaluate(test, prop, values[prop], scores[prop], tb_test, args.min_positives,
                                     variant == "cross_sell")
                results.append({"property": prop, "variant": variant, "method": name,
                                "macro": macro(per_value), "per_value": per_value,
                                "train_seconds": secs, "peak_rss_mb": mb})

    # ---- table
    hdr = (f"{'property':<13}{'variant':<11}{'method':<25}{'values':>6}{'hit@1%':>8}{'hit@5%':>8}"
           f"{'recall@10%':>11}{'lift@5%':>8}{'AUC':>7}{'train_s':>9}{'peak_MB':>9}")
    print()
    print(hdr)
    print("-" * len(hdr))
    last = None
    for r in results:
        key = (r["property"], r["variant"])
        if last is not None and key != last:
            print()
        last = key
        m = r["macro"]
        print(f"{r['property']:<13}{r['variant']:<11}{r['method']:<25}{m['values']:>6}{m['hit@1%']:>8.3f}"
              f"{m['hit@5%']:>8.3f}{m['recall@10%']:>11.3f}{m['lift@5%']:>8.2f}{m['auc']:>7.3f}"
              f"{r['train_seconds']:>9.3f}{r['peak_rss_mb']:>9.0f}")
    print()
    print("hit@K% = share of the top K% of train users that engaged V in the holdout; recall@10% = share of those "
          "users found in the top 10%; macro-averaged over values; peak_MB = process max RSS after the method ran.")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "dataset": "movielens-100k",
        "data_dir": str(data_dir),
        "split": {"holdout": split_desc, "cut_unix": cut, "val_cut_unix": val_cut,
                  "train_events": test.n_train_events, "train_users": test.n_users,
                  "holdout_events": test.n_holdout_events,
                  "holdout_events_by_train_users": test.n_holdout_events_known_users,
                  "validation_train_events": val.n_train_events, "validation_users": val.n_users},
        "min_positives": args.min_positives,
        "selection": {"metric": sel, "property": sel_prop,
                      "als": {"factors": bf, "regularization": br, "alpha": ba, "iterations": 15},
                      "hybrid": {"prior": prior, "beta": beta, "cf": "mean of ALS and BM25 kNN shares"},
                      "als_validation_grid": als_val, "hybrid_validation_grid": hyb_val,
                      "als_test_grid_oracle": als_test, "als_tuning_seconds": als_tune_s},
        "results": results,
        "environment": {"python": platform.python_version(), "implicit": implicit.__version__,
                        "numpy": np.__version__, "threads": threads or os.cpu_count(),
                        "machine": platform.machine()},
        "total_seconds": time.perf_counter() - t_start,
    }
    out.write_text(json.dumps(doc, indent=1, default=float))
    print(f"wrote {out}  (total {doc['total_seconds']:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
