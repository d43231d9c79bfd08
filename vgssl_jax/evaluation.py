"""Global retrieval evaluation (spec §6.1): embed database and queries, rank, score.

Recall@N counts every query in the denominator (queries without a positive are misses),
as the deep-VG benchmark code that VG-SSL uses. MSLS in its raw layout is scored with the
official definitions instead (data_pipelines.msls): recall@K and mAP@K over the queries
that have a positive, per subtask.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np

from data_pipelines import msls, search, test_time
from data_pipelines.places import Neighbors, PlaceDataset
from vgssl_jax import visualize

RECALL_VALUES = (1, 5, 10, 20)
MSLS_TOP_K = 20  # columns of the official prediction file


def first_hit_rank(predictions: np.ndarray, positives: Neighbors) -> np.ndarray:
  """Rank (0-based) of the first correct prediction per query; K where there is none.

  predictions: (Q, K) database indices, best first.
  """
  hits = hit_matrix(predictions, positives)
  return np.where(hits.any(axis=1), hits.argmax(axis=1), hits.shape[1])


def hit_matrix(predictions: np.ndarray, positives: Neighbors) -> np.ndarray:
  """(Q, K) bool: prediction [q, k] is a positive of query q."""
  predictions = np.asarray(predictions, np.int64)
  Q = len(predictions)
  num_db = int(max(predictions.max(initial=0), positives.indices.max(initial=0))) + 1
  pos_keys = np.repeat(np.arange(Q), positives.counts) * num_db + positives.indices
  return np.isin(np.arange(Q)[:, None] * num_db + predictions, pos_keys)


def recalls(predictions: np.ndarray, positives: Neighbors,
            recall_values=RECALL_VALUES) -> dict[str, float]:
  """recall@N in percent, every query in the denominator."""
  first = first_hit_rank(predictions, positives)
  return {f"recall@{n}": float(100.0 * np.mean(first < n)) for n in recall_values}


def recall_curve(predictions: np.ndarray, positives: Neighbors, only_with_positives: bool) -> np.ndarray:
  """recall@N in percent for N = 1..K."""
  first = first_hit_rank(predictions, positives)
  if only_with_positives:
    first = first[positives.counts > 0]
  k = predictions.shape[1]
  return np.array([100.0 * np.mean(first < n) if len(first) else np.nan for n in range(1, k + 1)])


@dataclasses.dataclass(frozen=True)
class PCA:
  mean: np.ndarray        # (D,)
  components: np.ndarray  # (d, D), rows orthonormal

  @classmethod
  def fit(cls, features: np.ndarray, dim: int) -> "PCA":
    """As sklearn's PCA(dim) without whitening, in float64."""
    x = np.asarray(features, np.float64)
    if dim > min(x.shape):
      raise ValueError(f"eval.pca_dim={dim} exceeds min(#images, descriptor size)={min(x.shape)}")
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return cls(mean, vt[:dim])

  def __call__(self, x: np.ndarray) -> np.ndarray:
    return ((np.asarray(x, np.float64) - self.mean) @ self.components.T).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  radius: float = 25.0
  recall_values: tuple[int, ...] = RECALL_VALUES
  backend: str = "device"
  test_method: str = "hard_resize"
  majority_weight: float = 0.01
  num_preds_to_save: int = 0
  save_only_wrong_preds: bool = False

  @classmethod
  def from_config(cls, ec) -> "EvalOptions":
    return cls(ec.positive_radius, tuple(ec.recall_values), ec.backend, ec.test_method,
               ec.majority_weight, ec.num_preds_to_save, ec.save_only_wrong_preds)


def rank(queries: np.ndarray, database: np.ndarray, k: int, options: EvalOptions) -> np.ndarray:
  """(Q, V, D) query views, (N, D) database -> (Q, k) predictions per the test method."""
  method = options.test_method
  if method == "five_crops":  # the mean of the five crop descriptors, not renormalised
    return search.knn(queries.mean(axis=1), database, k, options.backend)[1]
  if method in ("nearest_crop", "maj_voting"):
    q, v, d = queries.shape
    kk = min(k, len(database))
    dist, pred = search.knn(queries.reshape(q * v, d), database, kk, options.backend)
    dist, pred = dist.reshape(q, v, kk), pred.reshape(q, v, kk)
    if method == "nearest_crop":
      return test_time.merge_crop_rankings(dist, pred, kk)
    return test_time.majority_voting(dist, pred, options.majority_weight, kk)
  return search.knn(queries[:, 0], database, k, options.backend)[1]


def embed_places(embedder, variables: dict, places: PlaceDataset, test_method: str,
                 image_size) -> tuple[np.ndarray, np.ndarray]:
  """Database descriptors (N, D) (hard resize) and query view descriptors (Q, V, D)."""
  name = f"{places.name}/{places.split}"
  db = embedder(variables, places.images("database"), desc=f"{name} database")
  views = test_time.QueryViews(test_method, tuple(image_size))
  q = embedder.views(variables, places.images("queries"), views=views, desc=f"{name} queries")
  return db, q


def evaluate_places(embedder, variables: dict, places: PlaceDataset,
                    options: EvalOptions = EvalOptions(), pca: PCA | None = None,
                    out_dir: str | None = None) -> dict:
  """Scores one dataset split. With `out_dir` also writes the exports (see evaluate.py)."""
  db, q = embed_places(embedder, variables, places, options.test_method,
                       embedder.options.image_size)
  if pca is not None:
    db, q = pca(db), pca(q.reshape(-1, q.shape[-1])).reshape(*q.shape[:2], -1)
  is_msls = "queries_key" in places.extras
  has_gps = msls.has_gps(places)
  k = min(len(db), max(list(options.recall_values) + [options.num_preds_to_save] +
                       [MSLS_TOP_K if is_msls else 0]))
  predictions = rank(q, db, k, options)
  result = {"queries": places.num_queries, "database": places.num_database,
            "test_method": options.test_method}
  if pca is not None:
    result["pca_dim"] = int(pca.components.shape[0])
  positives = places.positives(options.radius) if has_gps else None
  if is_msls and has_gps:
    result.update(msls.msls_metrics(predictions, places, tuple(options.recall_values),
                                    options.radius))
  elif has_gps:
    result.update(recalls(predictions, positives, options.recall_values))
  else:
    logging.info("%s/%s has no coordinates: predictions only (score them on the challenge "
                 "server)", places.name, places.split)
  if out_dir is None:
    return result

  name = places.name
  os.makedirs(os.path.join(out_dir, "descriptors"), exist_ok=True)
  # queries: (Q, D), or (Q, 5, D) for the methods that search crops separately
  exported = q[:, 0] if q.shape[1] == 1 else (q.mean(1) if options.test_method == "five_crops" else q)
  np.savez(os.path.join(out_dir, "descriptors", f"{name}.npz"), database=db, queries=exported,
           database_paths=np.array(places.database_paths),
           queries_paths=np.array(places.queries_paths))
  if is_msls:
    path = os.path.join(out_dir, "predictions", f"{name}.txt")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    msls.write_predictions(path, predictions, places, MSLS_TOP_K)
    result["predictions_file"] = os.path.relpath(path, out_dir)
  if has_gps:
    curve = recall_curve(predictions, positives, only_with_positives=is_msls)
    visualize.recall_curve(os.path.join(out_dir, "plots", f"{name}_recall.png"), curve,
                           f"{places.name}/{places.split}: recall@N (%), {options.test_method}")
    result["recall_curve"] = [round(float(r), 4) for r in curve]
    if options.num_preds_to_save:
      kp = min(options.num_preds_to_save, k)
      hits = hit_matrix(predictions[:, :kp], positives)
      result["saved_predictions"] = visualize.save_predictions(
          os.path.join(out_dir, "preds", name), places.images("queries"),
          places.images("database"), predictions[:, :kp], hits, options.save_only_wrong_preds)
  return result


def format_table(results: dict[str, dict[str, dict]], recall_values=RECALL_VALUES) -> str:
  """Markdown table: one row per (model, dataset), e.g. results = {"before": {...}, ...}."""
  head = "| model | dataset | " + " | ".join(f"R@{n}" for n in recall_values) + " |"
  lines = [head, "|" + "---|" * (len(recall_values) + 2)]
  for stage, per_dataset in results.items():
    for dataset, r in per_dataset.items():
      cells = " | ".join(f"{r[f'recall@{n}']:.1f}" if f"recall@{n}" in r else "-"
                         for n in recall_values)
      lines.append(f"| {stage} | {dataset} | {cells} |")
  return "\n".join(lines)
