#!/usr/bin/env python3
"""Repeat-purchase audiences on any event log: SQL-style baselines vs. the `implicit` library.

For one product property (category, manufacturer, ...) and each of its values V, rank every user
seen in the training period by how likely they are to buy items having V in the holdout period,
and score the ranking against who actually did. Generic input:

  events TSV  user_id, event, product_id, timestamp (unix seconds)   one purchase line per row
  items TSV   product_id, <property columns...>                        empty cell = no value

Protocol (the same as `audience.evaluate(catalog, property, holdout => 0.15 * span)`):
  cutoff      max_ts - FRAC * (max_ts - min_ts)    (FRAC = --holdout-frac, default 0.15), moved back to
              the UTC midnight before it (--cutoff-align day, the default, as the extension does:
              whole days on both sides; --cutoff-align none keeps the exact time)
  train       events with ts < cutoff; training users = users with a train event
  values      the values of the items bought before the cutoff (a value no training item has
              cannot be targeted; the extension knows only those)
  positives   training users with a holdout purchase (ts >= cutoff) of an item having V
  audience    top K% of the eligible users, K in {1, 5, 10, 20}; k = max(1, floor(K/100 * eligible));
              ties broken by user id ascending (as text, like the extension, which stores ids as text)
  variants    all      eligible = every training user
              cross    eligible = training users who never bought V before the cutoff
  macro       mean over the values with >= --min-positives eligible positives (per variant)
Weight = 1 per purchase line.

Methods (score of user u for value V)
  sql_past_engagers   purchase lines of V before the cutoff            (count(*) ... GROUP BY user)
  sql_distinct_days   UTC days on which u bought V                     (count(DISTINCT date(ts)))
  sql_recency_decay   sum over u's purchases of V of 2^(-age / h), age = cutoff - ts in days;
                      h chosen on validation from {14, 30, 60, 120} days
  sql_most_recent     time of u's last purchase of V                   (max(ts))
  sql_most_active     u's total purchase lines                         (count(*) GROUP BY user)
  als                 implicit ALS (64 factors, 15 iterations; regularization x alpha chosen on
                      validation), score = sum over items i having V of x_u . y_i
  bm25_knn            implicit BM25Recommender(K=100), the same sum of its item scores (R @ S)

Validation: the same split made inside the training period (validation holdout = the last FRAC of
the training period, --val-frac, aligned the same way); the chosen setting is refit on the whole
training period.
Selection metric (--select-metric, default mean_hit = mean of hit@1/5/10/20%, the objective
`audience.tune` maximises), on the all-users variant of the property being benchmarked.

Usage (from the repository root):
  bench/implicit_baseline.sh repeat --events target/data/completejourney/events.tsv \\
      --items target/data/completejourney/items.tsv --property category \\
      --out target/bench/cj_category_implicit.json
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
METRIC_KEYS = [f"{m}@{p}%" for m in ("hit", "recall", "lift") for p in PCTS] + ["auc", "mean_hit"]
HALF_LIVES = (14.0, 30.0, 60.0, 120.0)
ALS_GRID = [(r, a) for r in (0.01, 0.1, 1.0) for a in (1.0, 10.0, 40.0)]
ALS_GRID_QUICK = [(0.1, 10.0), (0.01, 40.0)]


def peak_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024


def fmt_day(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


# --------------------------------------------------------------------------- data ------------

def read_tsv(path: Path):
    with path.open(encoding="utf-8", errors="replace") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        rows = [line.rstrip("\r\n").split("\t") for line in f if line.strip()]
    return header, rows


def load(events_path: Path, items_path: Path, prop: str, delimiter: str | None):
    """Returns user ids (str), item index per event, ts, item ids, membership (items x values), values."""
    import numpy as np
    import scipy.sparse as sp

    header, rows = read_tsv(events_path)
    for col in ("user_id", "product_id", "timestamp"):
        if col not in header:
            raise SystemExit(f"error: {events_path} has no column {col} (header: {' '.join(header)})")
    iu, ip, it = header.index("user_id"), header.index("product_id"), header.index("timestamp")
    users = np.array([r[iu] for r in rows])
    products = np.array([r[ip] for r in rows])
    ts = np.array([float(r[it]) for r in rows], dtype=np.float64)
    del rows
    item_ids, iidx = np.unique(products, return_inverse=True)

    header, rows = read_tsv(items_path)
    if prop not in header or "product_id" not in header:
        raise SystemExit(f"error: {items_path} needs columns product_id and {prop} (header: {' '.join(header)})")
    kp, kv = header.index("product_id"), header.index(prop)
    item_pos = {p: i for i, p in enumerate(item_ids.tolist())}
    pairs = []
    for r in rows:
        i = item_pos.get(r[kp])
        if i is None or kv >= len(r):
            continue
        cell = r[kv].strip()
        vals = [v.strip() for v in cell.split(delimiter)] if delimiter else [cell]
        pairs.extend((i, v) for v in vals if v)
    values = sorted({v for _, v in pairs})
    vpos = {v: j for j, v in enumerate(values)}
    pairs = sorted(set((i, vpos[v]) for i, v in pairs))
    M = sp.csr_matrix((np.ones(len(pairs)), ([p[0] for p in pairs], [p[1] for p in pairs])),
                      shape=(len(item_ids), len(values)))
    return users, iidx, ts, item_ids, M, values


# --------------------------------------------------------------------------- split -----------

class Split:
    """Training users x items matrix, holdout positives and per (user, value) history features,
    for the values with >= min_pos positives among the training users."""

    def __init__(self, users, iidx, ts, cut, n_items, M, values, min_pos):
        import numpy as np
        import scipy.sparse as sp

        self.cut = cut
        train = ts < cut
        hold = ~train
        self.user_ids, uinv = np.unique(users[train], return_inverse=True)  # sorted as text
        n = self.n_users = len(self.user_ids)
        self.n_train_events = int(train.sum())
        self.n_holdout_events = int(hold.sum())
        self.R = sp.csr_matrix((np.ones(self.n_train_events, dtype=np.float32), (uinv, iidx[train])),
                               shape=(n, n_items))
        self.R.sum_duplicates()
        self.t = np.asarray(self.R.sum(axis=1), dtype=np.float64).ravel()  # purchase lines

        # holdout purchases of training users (new users cannot be ranked)
        hu = np.searchsorted(self.user_ids, users[hold])
        hu = np.where(hu < n, hu, 0)
        known = self.user_ids[hu] == users[hold]
        self.n_holdout_events_known = int(known.sum())
        H = sp.csr_matrix((np.ones(int(known.sum())), (hu[known], iidx[hold][known])), shape=(n, n_items))
        HM = (H @ M).tocsc()
        HM.data[:] = 1.0
        pos_all = np.asarray((HM > 0).sum(axis=0)).ravel()
        # values of the items bought in the training period (the others cannot be targeted)
        bought = np.zeros(n_items)
        bought[np.unique(iidx[train])] = 1.0
        in_train = np.asarray(M.T @ bought).ravel() > 0
        self.n_values_total = int(in_train.sum())
        self.n_values_with_positive = int(((pos_all > 0) & in_train).sum())
        keep = np.flatnonzero((pos_all >= min_pos) & in_train)
        self.values = [values[j] for j in keep]
        self.M = M[:, keep].tocsr()
        nv = self.nv = len(self.values)
        self.P = np.asarray((HM[:, keep] > 0).todense())

        # train purchases expanded to (user, value) pairs through the membership
        ev_u, ev_i, ev_ts = uinv, iidx[train], ts[train]
        Mi = self.M
        cnt = np.diff(Mi.indptr)[ev_i]
        rep = np.repeat(np.arange(len(ev_i)), cnt)
        starts = np.repeat(Mi.indptr[ev_i], cnt)
        offs = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        ev_v = Mi.indices[starts + offs]
        self.ev_uv = ev_u[rep].astype(np.int64) * nv + ev_v
        self.ev_ts = ev_ts[rep]
        self.ev_age_days = (cut - self.ev_ts) / 86400.0
        size = n * nv
        self.E = np.bincount(self.ev_uv, minlength=size).astype(np.float64).reshape(n, nv)
        day = np.floor(self.ev_ts / 86400.0).astype(np.int64)
        day -= day.min() if len(day) else 0
        ndays = int(day.max()) + 1 if len(day) else 1
        uvd = np.unique(self.ev_uv * ndays + day)
        self.D = np.bincount(uvd // ndays, minlength=size).astype(np.float64).reshape(n, nv)
        last = np.full(size, -np.inf)
        np.maximum.at(last, self.ev_uv, self.ev_ts)
        self.L = last.reshape(n, nv)
        self.order_key = np.arange(n)  # user index = user id text order

    def recency(self, h_days):
        import numpy as np

        w = np.exp2(-self.ev_age_days / h_days)
        return np.bincount(self.ev_uv, weights=w, minlength=self.n_users * self.nv).reshape(self.n_users, self.nv)


# --------------------------------------------------------------------------- metrics ---------

def value_metrics(scores, positive, key):
    import numpy as np
    from scipy.stats import rankdata

    n = scores.shape[0]
    n_pos = int(positive.sum())
    base = n_pos / n if n else 0.0
    order = np.lexsort((key, -scores))
    pos_sorted = positive[order]
    out = {"eligible": n, "positives": n_pos, "base_rate": base}
    hit_sum = 0.0
    for pct in PCTS:
        k = min(n, max(1, int(np.floor(pct / 100.0 * n))))
        hits = int(pos_sorted[:k].sum())
        hr = hits / k if k else 0.0
        out[f"k@{pct}%"] = k
        out[f"hits@{pct}%"] = hits
        out[f"hit@{pct}%"] = hr
        out[f"recall@{pct}%"] = hits / n_pos if n_pos else 0.0
        out[f"lift@{pct}%"] = hr / base if base else 0.0
        hit_sum += hr
    out["mean_hit"] = hit_sum / len(PCTS)
    if 0 < n_pos < n:
        r = rankdata(scores)
        out["auc"] = float((r[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * (n - n_pos)))
    else:
        out["auc"] = 0.5
    return out


def evaluate(split: Split, scores, min_pos: int, cross_sell: bool) -> dict:
    """Per-value metrics of a users x values score matrix (or a per-user vector used for every value)."""
    res = {}
    for j, v in enumerate(split.values):
        mask = split.E[:, j] <= 0 if cross_sell else slice(None)
        p = split.P[mask, j]
        if p.sum() < min_pos:
            continue
        col = scores if scores.ndim == 1 else scores[:, j]
        res[v] = value_metrics(col[mask], p, split.order_key[mask])
    return res


def macro(per_value: dict) -> dict:
    import numpy as np

    out = {}
    for key in METRIC_KEYS:
        vals = [m[key] for m in per_value.values()]
        out[key] = float(np.mean(vals)) if vals else float("nan")
    out["values"] = len(per_value)
    out["positives"] = int(sum(m["positives"] for m in per_value.values()))
    return out


# --------------------------------------------------------------------------- models ----------

def fit_als(R, factors, regularization, alpha, iterations, threads, seed):
    from implicit.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                    iterations=iterations, random_state=seed, use_gpu=False,
                                    num_threads=threads, calculate_training_loss=False)
    t0 = time.perf_counter()
    model.fit(R, show_progress=False)
    return model.user_factors, model.item_factors, time.perf_counter() - t0


def als_value_scores(U, Y, M):
    import numpy as np

    YV = np.asarray(M.T @ Y)                  # values x factors: sum of the value's item factors
    return np.asarray(U @ YV.T, dtype=np.float64)


def fit_knn_scores(R, M, K, threads):
    from implicit.nearest_neighbours import BM25Recommender

    model = BM25Recommender(K=K, num_threads=threads)
    t0 = time.perf_counter()
    model.fit(R, show_progress=False)
    secs = time.perf_counter() - t0
    SM = model.similarity.tocsr() @ M          # items x values
    return (R @ SM).toarray().astype("float64"), secs  # = recommend() item scores summed over V


# --------------------------------------------------------------------------- main ------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", required=True, help="TSV: user_id, event, product_id, timestamp (unix s)")
    ap.add_argument("--items", required=True, help="TSV: product_id and property columns")
    ap.add_argument("--property", required=True, help="items column to benchmark, e.g. category")
    ap.add_argument("--delimiter", default=None, help="split multi-valued property cells on this string")
    ap.add_argument("--dataset", default=None, help="label written to the JSON (default: events folder name)")
    ap.add_argument("--holdout-frac", type=float, default=0.15,
                    help="holdout = the last FRAC of the time span (default 0.15)")
    ap.add_argument("--cutoff-align", choices=("day", "none"), default="day",
                    help="day (default): move the cutoff back to the UTC midnight before it, as "
                         "audience.evaluate does; none: the exact time")
    ap.add_argument("--val-frac", type=float, default=None,
                    help="validation holdout = the last FRAC of the training period (default: --holdout-frac)")
    ap.add_argument("--min-positives", type=int, default=5)
    ap.add_argument("--select-metric", default="mean_hit", choices=METRIC_KEYS)
    ap.add_argument("--factors", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=15)
    ap.add_argument("--neighbours", type=int, default=100)
    ap.add_argument("--threads", type=int, default=0, help="implicit threads (0 = all cores)")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--quick", action="store_true", help="2 ALS settings instead of 9 (smoke test)")
    ap.add_argument("--out", default=None, help="JSON output (default target/bench/<dataset>_<property>_implicit.json)")
    args = ap.parse_args()

    events_path, items_path = Path(args.events), Path(args.items)
    for f in (events_path, items_path):
        if not f.is_file():
            print(f"skipped: {f} not found")
            return 0
    dataset = args.dataset or events_path.resolve().parent.name
    out = Path(args.out) if args.out else REPO_ROOT / "target" / "bench" / f"{dataset}_{args.property}_implicit.json"
    val_frac = args.val_frac if args.val_frac is not None else args.holdout_frac

    try:
        import numpy as np
        import implicit
    except ImportError as e:  # pragma: no cover
        print(f"error: {e}; install bench/requirements.txt (bench/implicit_baseline.sh does)", file=sys.stderr)
        return 2
    # BM25Recommender hands its own COO weights to fit(): silence that internal ParameterWarning
    warnings.filterwarnings("ignore", message="Method expects CSR input")

    t_start = time.perf_counter()
    users, iidx, ts, item_ids, M, values = load(events_path, items_path, args.property, args.delimiter)
    load_s = time.perf_counter() - t_start
    n_items = len(item_ids)
    t_min, t_max = float(ts.min()), float(ts.max())
    align = (lambda t: float(np.floor(t / 86400.0) * 86400.0)) if args.cutoff_align == "day" else (lambda t: t)
    cut = align(t_max - args.holdout_frac * (t_max - t_min))
    train = ts < cut
    v_hi = float(ts[train].max())
    val_cut = align(v_hi - val_frac * (v_hi - t_min))
    split_desc = f"last {args.holdout_frac:.0%} of the time span" + (", from the UTC midnight before"
                                                                      if args.cutoff_align == "day" else "")

    test = Split(users, iidx, ts, cut, n_items, M, values, args.min_positives)
    val = Split(users[train], iidx[train], ts[train], val_cut, n_items, M, values, args.min_positives)
    sel, mp, threads = args.select_metric, args.min_positives, args.threads

    print(f"implicit {implicit.__version__}, numpy {np.__version__}, python {platform.python_version()}; "
          f"{dataset}: {len(ts)} events, {len(np.unique(users))} users, {n_items} items (loaded in {load_s:.1f}s)")
    print(f"property {args.property}: {test.n_values_total} values on items bought before the cutoff "
          f"({len(values)} in all); {test.n_values_with_positive} with a holdout buyer, "
          f"{test.nv} with >= {mp} (all users)")
    print(f"split: {split_desc}; cutoff {fmt_day(cut)} UTC (unix {cut:.1f}); train {test.n_train_events} events / "
          f"{test.n_users} users; holdout {test.n_holdout_events} events ({test.n_holdout_events_known} by "
          f"training users)")
    print(f"validation: last {val_frac:.0%} of the training period, cutoff {fmt_day(val_cut)} UTC; "
          f"{val.n_train_events} events / {val.n_users} users; {val.nv} values with >= {mp} positives")

    def val_score(scores):
        return macro(evaluate(val, scores, mp, False))[sel]

    # ---- recency half-life on validation
    t0 = time.perf_counter()
    hl_val = [{"half_life_days": h, sel: val_score(val.recency(h))} for h in HALF_LIVES]
    best_h = max(hl_val, key=lambda r: r[sel])["half_life_days"]  # first best on ties
    print(f"recency half-life chosen on validation ({sel}): {best_h:g} days "
          f"({', '.join('%gd %.3f' % (r['half_life_days'], r[sel]) for r in hl_val)}; {time.perf_counter() - t0:.1f}s)")

    # ---- ALS regularization x alpha on validation
    grid = ALS_GRID_QUICK if args.quick else ALS_GRID
    t0 = time.perf_counter()
    als_val = []
    for r, a in grid:
        U, Y, _ = fit_als(val.R, args.factors, r, a, args.iterations, threads, args.seed)
        als_val.append({"regularization": r, "alpha": a, sel: val_score(als_value_scores(U, Y, val.M))})
    als_tune_s = time.perf_counter() - t0
    best_als = als_val[0]
    for row in als_val:
        if row[sel] > best_als[sel]:
            best_als = row
    br, ba = best_als["regularization"], best_als["alpha"]
    print(f"ALS chosen on validation ({sel}): factors={args.factors} reg={br} alpha={ba} "
          f"({len(grid)} settings, {als_tune_s:.1f}s)")

    # ---- the methods on the full training period
    methods = {}  # name -> (scores, seconds, peak MB, note)

    def timed(name, fn, note=""):
        t0 = time.perf_counter()
        s = fn()
        methods[name] = (s, time.perf_counter() - t0, peak_mb(), note)

    timed("sql_past_engagers", lambda: test.E, "purchase lines of V")
    timed("sql_distinct_days", lambda: test.D, "UTC days buying V")
    timed("sql_recency_decay", lambda: test.recency(best_h), f"h={best_h:g}d")
    timed("sql_most_recent", lambda: test.L, "last purchase of V")
    timed("sql_most_active", lambda: test.t, "all purchase lines")
    U, Y, als_s = fit_als(test.R, args.factors, br, ba, args.iterations, threads, args.seed)
    methods["als"] = (als_value_scores(U, Y, test.M), als_s, peak_mb(), f"f={args.factors} reg={br} a={ba:g}")
    knn, knn_s = fit_knn_scores(test.R, test.M, args.neighbours, threads)
    methods["bm25_knn"] = (knn, knn_s, peak_mb(), f"K={args.neighbours}")

    results = []
    for variant in ("all", "cross_sell"):
        for name, (scores, secs, mb, note) in methods.items():
            per_value = evaluate(test, scores, mp, variant == "cross_sell")
            results.append({"property": args.property, "variant": variant, "method": name, "note": note,
                            "macro": macro(per_value), "per_value": per_value,
                            "train_seconds": secs, "peak_rss_mb": mb})

    # ---- table
    by = {(r["variant"], r["method"]): r for r in results}
    n_all = by[("all", "sql_most_active")]["macro"]["values"]
    n_x = by[("cross_sell", "sql_most_active")]["macro"]["values"]
    cols = ("hit@1%", "hit@5%", "recall@10%", "recall@20%")
    print()
    print(f"{args.property}: macro over values with >= {mp} positives ({n_all} values for all users, "
          f"{n_x} for cross-sell)")
    hdr = (f"{'method':<20}{'setting':<22}" + "".join(f"{c:>11}" for c in cols) + f"{'AUC':>7}  |"
           + "".join(f"{'x ' + c:>13}" for c in cols) + f"{'train_s':>9}")
    print(hdr)
    print("-" * len(hdr))
    for name, (_, secs, _, note) in methods.items():
        a, x = by[("all", name)]["macro"], by[("cross_sell", name)]["macro"]
        print(f"{name:<20}{note:<22}" + "".join(f"{a[c]:>11.3f}" for c in cols) + f"{a['auc']:>7.3f}  |"
              + "".join(f"{x[c]:>13.3f}" for c in cols) + f"{secs:>9.2f}")
    print("x = cross-sell (users who never bought the value before the cutoff); "
          "hit = share of the audience buying V in the holdout, recall = share of V's buyers found.")

    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "dataset": dataset,
        "events": str(events_path.resolve()),
        "items": str(items_path.resolve()),
        "property": args.property,
        "split": {"holdout": split_desc, "holdout_frac": args.holdout_frac, "cutoff_align": args.cutoff_align,
                  "t_min_unix": t_min,
                  "t_max_unix": t_max, "cut_unix": cut, "val_cut_unix": val_cut, "val_frac": val_frac,
                  "train_events": test.n_train_events, "train_users": test.n_users,
                  "holdout_events": test.n_holdout_events,
                  "holdout_events_by_train_users": test.n_holdout_events_known,
                  "validation_train_events": val.n_train_events, "validation_users": val.n_users},
        "values": {"all_items": len(values), "training_items": test.n_values_total, "with_positive": test.n_values_with_positive, "min_positives": mp,
                   "evaluated_all": n_all, "evaluated_cross_sell": n_x},
        "min_positives": mp,
        "quick": args.quick,
        "selection": {"metric": sel, "recency_half_life_days": best_h, "recency_validation": hl_val,
                      "als": {"factors": args.factors, "regularization": br, "alpha": ba,
                              "iterations": args.iterations},
                      "als_validation_grid": als_val, "als_tuning_seconds": als_tune_s},
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
