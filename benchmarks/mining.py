"""Seconds of one epoch's GeoPair search (descriptors given: only the search is timed).

  python benchmarks/mining.py --queries 10000 --database 20000 --pool 1000 --out mining.json

For --queries training queries (each with its 10 m positives and 25 m soft positives in a
--database image database, placed along streets as in the real datasets) it times, in the
same run:
  positives  the best positive of every query (nearest in feature space among its 10 m
             positives)
  partial    the M nearest of one shared pool of --pool database images outside each
             query's soft positives
  full       the M nearest in the whole database outside the soft positives
each with our on-device search (data_pipelines.mining with vgssl_jax.evaluation.search:
chunked matmul + top_k),
with faiss (one IndexFlatL2, batched search), and with a per-query loop like the
original's (a faiss index per query over its positives / its pool / the database). The loop
over the whole database is timed on --loop-sample queries and scaled to all of them.
"""

from __future__ import annotations

import argparse
import functools
import time
import types

import common

if __name__ == "__main__":
  common.setup()

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from data_pipelines import mining, places  # noqa: E402
from vgssl_jax.evaluation import search  # noqa: E402


# the NeighborSearch of mining with faiss doing the exclusion search
FAISS = types.SimpleNamespace(nearest_among=search.nearest_among,
                              masked_knn=functools.partial(search.masked_knn, backend="faiss"))


def layout(num_db: int, num_q: int, rng) -> tuple[np.ndarray, np.ndarray]:
  """UTMs: database every 5 m along 200 m streets 60 m apart; queries near random ones."""
  per_street = 40
  street = np.arange(num_db) // per_street
  db = np.stack([(np.arange(num_db) % per_street) * 5.0, street * 60.0], 1)
  q = db[rng.integers(0, num_db, num_q)] + rng.normal(0, 3.0, (num_q, 2))
  return db, q


def unit(x):
  return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def loop_best_positive(q_feats, db_feats, hard: places.Neighbors) -> np.ndarray:
  out = np.empty(len(q_feats), np.int64)
  for i in range(len(q_feats)):
    candidates = hard[i]
    index = faiss.IndexFlatL2(db_feats.shape[1])
    index.add(db_feats[candidates])
    _, j = index.search(q_feats[i:i + 1], 1)
    out[i] = candidates[j[0, 0]]
  return out


def loop_negatives(q_feats, db_feats, pool, soft: places.Neighbors, m: int) -> np.ndarray:
  out = np.empty((len(q_feats), m), np.int64)
  for i in range(len(q_feats)):
    allowed = np.setdiff1d(pool, soft[i], assume_unique=True)
    index = faiss.IndexFlatL2(db_feats.shape[1])
    index.add(db_feats[allowed])
    _, j = index.search(q_feats[i:i + 1], m)
    out[i] = allowed[j[0]]
  return out


def timed(fn):
  t = time.perf_counter()
  out = fn()
  return time.perf_counter() - t, out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--queries", type=int, default=10000)
  p.add_argument("--database", type=int, default=20000)
  p.add_argument("--pool", type=int, default=1000)
  p.add_argument("--dim", type=int, default=1024)
  p.add_argument("--negatives", type=int, default=1, help="M")
  p.add_argument("--loop-sample", type=int, default=500)
  p.add_argument("--refresh", type=int, default=1000, help="queries of a triplet cache refresh")
  p.add_argument("--triplet-negatives", type=int, default=10, help="M of the triplet refresh")
  p.add_argument("--out", default=None)
  a = p.parse_args()
  rng = np.random.default_rng(0)
  db_utm, q_utm = layout(a.database, a.queries, rng)
  hard = places.radius_neighbors(q_utm, db_utm, 10.0)
  soft = places.radius_neighbors(q_utm, db_utm, 25.0)
  keep = np.flatnonzero(hard.counts > 0)
  hard, soft, q_utm = hard.subset(keep), soft.subset(keep), q_utm[keep]
  db_feats = unit(rng.normal(size=(a.database, a.dim)))
  q_feats = unit(rng.normal(size=(len(keep), a.dim)))
  pool = np.sort(rng.choice(a.database, a.pool, replace=False))
  m, n = a.negatives, len(keep)

  # warm-up: compile the device searches for these shapes (not part of the epoch's time)
  search.nearest_among(q_feats[:600], db_feats, hard.padded()[:600])
  mining.hard_negatives(q_feats, db_feats[pool], pool, soft, m, search)
  mining.hard_negatives(q_feats, db_feats, np.arange(a.database), soft, m, search)

  rows = {}
  t_dev, best = timed(lambda: search.nearest_among(q_feats, db_feats, hard.padded())[0])
  t_loop, best_loop = timed(lambda: loop_best_positive(q_feats, db_feats, hard))
  assert np.array_equal(best, best_loop), "device and loop disagree on the best positives"
  rows["positives"] = {"device": t_dev, "loop": t_loop}
  for name, cand in (("partial", pool), ("full", np.arange(a.database))):
    feats = db_feats[cand]
    t_dev, neg = timed(lambda: mining.hard_negatives(q_feats, feats, cand, soft, m, search))
    t_faiss, neg_f = timed(lambda: mining.hard_negatives(q_feats, feats, cand, soft, m, FAISS))
    sample = n if name == "partial" else min(n, a.loop_sample)
    t_loop, neg_l = timed(lambda: loop_negatives(q_feats[:sample], db_feats, cand,
                                                 soft.subset(np.arange(sample)), m))
    assert np.array_equal(neg[:sample], neg_l) and np.array_equal(neg, neg_f)
    rows[name] = {"device": t_dev, "faiss": t_faiss, "loop": t_loop * n / sample,
                  "loop_sampled_queries": sample}
  epoch = {k: rows["positives"][k if k != "faiss" else "loop"] + rows["partial"][k]
           for k in ("device", "faiss", "loop")}
  # one triplet cache refresh (train.py's loop): --refresh queries, best positive + the
  # --triplet-negatives hardest of one pool (partial), per query on device vs the loop
  r = min(a.refresh, n)
  qr, hr, sr, mt = q_feats[:r], hard.subset(np.arange(r)), soft.subset(np.arange(r)), a.triplet_negatives
  search.nearest_among(qr, db_feats, hr.padded())
  mining.hard_negatives(qr, db_feats[pool], pool, sr, mt, search)
  t_dev, (best_r, neg_r) = timed(lambda: (search.nearest_among(qr, db_feats, hr.padded())[0],
                                          mining.hard_negatives(qr, db_feats[pool], pool, sr, mt,
                                                                search)))
  t_loop, (best_l, neg_l) = timed(lambda: (loop_best_positive(qr, db_feats, hr),
                                           loop_negatives(qr, db_feats, pool, sr, mt)))
  assert np.array_equal(best_r, best_l)
  # float32 near-ties among the 10 nearest may order differently (faiss vs the device):
  # the same sets, and all but a few rows in the same order
  assert all(set(a_) == set(b_) for a_, b_ in zip(neg_r, neg_l))
  assert (neg_r != neg_l).any(axis=1).mean() < 0.01
  rows["triplet_refresh"] = {"device": t_dev, "loop": t_loop, "queries": r, "m": mt}
  result = {"queries": n, "database": a.database, "pool": a.pool, "dim": a.dim, "m": m,
            "seconds": rows, "partial_epoch_seconds": epoch,
            "speedup_partial_epoch_vs_loop": epoch["loop"] / epoch["device"],
            "speedup_full_vs_loop": rows["full"]["loop"] / rows["full"]["device"],
            "speedup_triplet_refresh_vs_loop": t_loop / t_dev}
  common.report(
      f"mining {n} queries, D={a.dim}: best positives device {rows['positives']['device']:.2f} s "
      f"vs loop {rows['positives']['loop']:.2f} s; partial (pool {a.pool}) device "
      f"{rows['partial']['device']:.2f} s, faiss {rows['partial']['faiss']:.2f} s, loop "
      f"{rows['partial']['loop']:.2f} s; full ({a.database}) device {rows['full']['device']:.2f} s, "
      f"faiss {rows['full']['faiss']:.2f} s, loop ~{rows['full']['loop']:.0f} s; "
      f"partial epoch {epoch['loop'] / epoch['device']:.0f}x, full "
      f"{result['speedup_full_vs_loop']:.0f}x faster than the per-query loop; triplet refresh "
      f"({r} queries, M={mt}) device {t_dev:.3f} s vs loop {t_loop:.2f} s "
      f"({t_loop / t_dev:.0f}x)", result, a.out)


if __name__ == "__main__":
  main()
