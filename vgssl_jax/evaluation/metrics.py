"""Scores of a ranking: recall@N (the deep-VG benchmark's convention) and the official
MSLS metrics (recall@K and mAP@K per subtask).

Recall@N counts every query in the denominator (queries without a positive are misses).
MSLS in its raw layout follows the official evaluation (mapillary_sls evaluate.py +
utils/eval.py): queries without a positive are left out, per subtask.
"""

from __future__ import annotations

import math

import numpy as np

from data_pipelines import msls
from data_pipelines.places import EVAL_RADIUS_M, Neighbors, PlaceDataset
from vgssl_jax.config import RECALL_VALUES

def hit_matrix(predictions: np.ndarray, positives: Neighbors) -> np.ndarray:
  """(Q, K) bool: prediction [q, k] is a positive of query q (-1 slots never are)."""
  return positives.contains(np.arange(len(predictions)), predictions)


def first_hit_rank(predictions: np.ndarray, positives: Neighbors) -> np.ndarray:
  """Rank (0-based) of the first correct prediction per query; K where there is none.

  predictions: (Q, K) database indices, best first.
  """
  hits = hit_matrix(predictions, positives)
  return np.where(hits.any(axis=1), hits.argmax(axis=1), hits.shape[1])


def recalls(predictions: np.ndarray, positives: Neighbors,
            recall_values=RECALL_VALUES) -> dict[str, float]:
  """recall@N in percent, every query in the denominator."""
  first = first_hit_rank(predictions, positives)
  return {f"recall@{n}": float(100.0 * np.mean(first < n)) for n in recall_values}


def recall_curve(predictions: np.ndarray, positives: Neighbors,
                 only_with_positives: bool) -> np.ndarray:
  """recall@N in percent for N = 1..K."""
  first = first_hit_rank(predictions, positives)
  if only_with_positives:
    first = first[positives.counts > 0]
  k = predictions.shape[1]
  return np.array([100.0 * np.mean(first < n) if len(first) else np.nan for n in range(1, k + 1)])


# ----------------------------------------------------------------------------- MSLS official

def _restrict(neighbors: Neighbors, database_mask: np.ndarray) -> Neighbors:
  """Drops the neighbours outside `database_mask` (D,) bool."""
  keep = database_mask[neighbors.indices]
  rows = np.repeat(np.arange(len(neighbors)), neighbors.counts)[keep]
  indptr = np.zeros(len(neighbors) + 1, np.int64)
  np.cumsum(np.bincount(rows, minlength=len(neighbors)), out=indptr[1:])
  return Neighbors(indptr, neighbors.indices[keep])


def _first_hits(predictions: np.ndarray, positives: Neighbors) -> np.ndarray:
  """(Q, K) bool: prediction j of query i is a positive seen for the first time in the row.

  A repeated prediction is not a second hit (`p not in rank[:i]` in the official apk)."""
  hits = hit_matrix(predictions, positives)
  order = np.argsort(predictions, axis=1, kind="stable")
  ranked = np.take_along_axis(predictions, order, axis=1)
  first_sorted = np.ones_like(hits)
  first_sorted[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
  first = np.empty_like(hits)
  np.put_along_axis(first, order, first_sorted, axis=1)
  return hits & first


def _score(predictions: np.ndarray, positives: Neighbors, ks: tuple[int, ...]) -> dict:
  n = len(positives)
  if n == 0:  # the official code divides by zero here too (recall /= 0, np.mean([]))
    nan = {f"{m}@{k}": math.nan for m in ("recall", "map") for k in ks}
    return {**nan, "queries": 0}
  hits = _first_hits(predictions, positives)
  ranks = np.arange(1, hits.shape[1] + 1)
  precision = np.where(hits, np.cumsum(hits, axis=1) / ranks, 0.0)
  out = {f"recall@{k}": float(100.0 * hits[:, :k].any(axis=1).mean()) for k in ks}
  for k in ks:
    ap = precision[:, :k].sum(axis=1) / np.minimum(positives.counts, k)
    out[f"map@{k}"] = float(100.0 * ap.mean())
  out["queries"] = n
  return out


def check_predictions(predictions: np.ndarray, dataset: PlaceDataset,
                      allow_empty: bool) -> np.ndarray:
  """`predictions` as int64 (Q, K) database indices of `dataset`'s queries; ValueError
  otherwise (-1 marks an empty slot where allow_empty)."""
  predictions = np.asarray(predictions)
  if (predictions.ndim != 2 or predictions.shape[0] != dataset.num_queries
      or not np.issubdtype(predictions.dtype, np.integer)):
    raise ValueError(f"predictions must be integer database indices of shape (Q, K) with "
                     f"Q = {dataset.num_queries} queries of {dataset}; got "
                     f"{predictions.dtype} {predictions.shape}.")
  low = -1 if allow_empty else 0
  bad = (predictions < low) | (predictions >= dataset.num_database)
  if bad.any():
    q, j = np.argwhere(bad)[0]
    raise ValueError(f"predictions[{q}, {j}] = {predictions[q, j]} is not a database index of "
                     f"{dataset} (0..{dataset.num_database - 1}"
                     f"{', or -1 for an empty slot' if allow_empty else ''}).")
  return predictions.astype(np.int64)


def msls_metrics(predictions: np.ndarray, places: PlaceDataset, ks=RECALL_VALUES,
                 radius: float = EVAL_RADIUS_M) -> dict:
  """The official MSLS im2im metrics (evaluate.py + utils/eval.py), in percent.

  predictions: (Q, K) database indices of places' queries, best first (-1 = empty slot,
  as faiss pads). For each subtask S (subtask_index.csv column): queries and database are
  the images flagged S (as MSLS(mode='val', subtask=S) filters both), positives are the
  database images within `radius` m in the same city, and queries without a positive are
  left out of the denominator. recall@K: a positive among the top K. mAP@K: AP@K = sum over
  first-time hits at rank r <= K of (hits so far / r), divided by min(#positives, K).
  Returns {"recall@K", "map@K", "queries": n} of subtask `all` (every image when `places`
  has no subtask extras) and "subtasks": {S: same keys} for the other columns present; a
  subtask with no scored query has "queries": 0 and NaN metrics.
  """
  ks = tuple(int(k) for k in ks)
  if not ks or min(ks) < 1:
    raise ValueError(f"ks must be positive ranks, got {ks}.")
  predictions = check_predictions(predictions, places, allow_empty=True)
  if predictions.shape[1] < max(ks) and predictions.shape[1] < places.num_database:
    raise ValueError(f"predictions have {predictions.shape[1]} columns but metrics at "
                     f"K = {max(ks)} were asked for: search max(ks) neighbours.")
  positives = places.positives(radius)  # a split without coordinates explains and raises

  def subtask(name: str) -> dict:
    q_mask = places.extras.get(f"queries_subtask_{name}")
    db_mask = places.extras.get(f"database_subtask_{name}")
    q_mask = np.ones(places.num_queries, bool) if q_mask is None else q_mask
    db_mask = np.ones(places.num_database, bool) if db_mask is None else db_mask
    pos = _restrict(positives, db_mask)
    rows = np.flatnonzero(q_mask & (pos.counts > 0))
    return _score(predictions[rows], pos.subset(rows), ks)

  result = subtask("all")
  result["subtasks"] = {
      name: subtask(name) for name in msls.SUBTASKS[1:]
      if f"queries_subtask_{name}" in places.extras and f"database_subtask_{name}" in places.extras}
  return result
