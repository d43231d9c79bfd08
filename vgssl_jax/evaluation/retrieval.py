"""Ranking the database for each query: the test-time query methods of the original
(docs/original.md §Evaluation), the embedding of a split, and PCA of descriptors."""

from __future__ import annotations

import dataclasses

import numpy as np

from data_pipelines import query_views
from data_pipelines.places import PlaceDataset
from vgssl_jax.evaluation import search


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

  def __call__(self, x: np.ndarray, rows: int = 4096) -> np.ndarray:
    """`x` projected, `rows` at a time (a float64 copy of a whole 12,288-d database would
    take 8 bytes per value)."""
    x = np.asarray(x)
    out = np.empty((len(x), len(self.components)), np.float32)
    for start in range(0, len(x), rows):
      part = np.asarray(x[start:start + rows], np.float64) - self.mean
      out[start:start + rows] = part @ self.components.T
    return out


def rank(queries: np.ndarray, database: np.ndarray, k: int, test_method: str = "hard_resize",
         backend: str = "device", majority_weight: float = 0.01) -> np.ndarray:
  """(Q, V, D) query views, (N, D) database -> (Q, k) predictions per the test method."""
  method = test_method
  if method == "five_crops":  # the mean of the five crop descriptors, not renormalised
    return search.knn(queries.mean(axis=1), database, k, backend)[1]
  if method in ("nearest_crop", "maj_voting"):
    q, v, d = queries.shape
    kk = min(k, len(database))
    dist, pred = search.knn(queries.reshape(q * v, d), database, kk, backend)
    dist, pred = dist.reshape(q, v, kk), pred.reshape(q, v, kk)
    if method == "nearest_crop":
      return merge_crop_rankings(dist, pred, kk)
    return majority_voting(dist, pred, majority_weight, kk)
  return search.knn(queries[:, 0], database, k, backend)[1]


def embed_places(embedder, variables: dict, places: PlaceDataset, test_method: str,
                 image_size) -> tuple[np.ndarray, np.ndarray]:
  """Database descriptors (N, D) (hard resize) and query view descriptors (Q, V, D), both
  with the embedder's evaluation resize."""
  name = f"{places.name}/{places.split}"
  db = embedder(variables, places.images("database"), desc=f"{name} database")
  views = query_views.QueryViews(test_method, tuple(image_size), embedder.options.eval_resize)
  q = embedder.views(variables, places.images("queries"), views=views, desc=f"{name} queries")
  return db, q


def merge_crop_rankings(distances: np.ndarray, predictions: np.ndarray, k: int) -> np.ndarray:
  """nearest_crop: (Q, 5, K) per-crop results -> (Q, k) predictions, by distance, first
  occurrence of each database image kept."""
  q = len(predictions)
  dist = distances.reshape(q, -1)
  pred = predictions.reshape(q, -1)
  out = np.empty((q, k), np.int64)
  for i in range(q):
    ranked = pred[i][np.argsort(dist[i], kind="stable")]
    _, first = np.unique(ranked, return_index=True)
    out[i] = ranked[np.sort(first)][:k]
  return out


def majority_voting(distances: np.ndarray, predictions: np.ndarray, weight: float,
                    k: int) -> np.ndarray:
  """maj_voting of the original (deep-VG benchmark test.py, top_n_voting): within the first
  1, 5 and 10 columns of the five crops, a database image found `count` > 1 times has its
  distances there lowered by weight * count / n; then as nearest_crop."""
  distances = distances.astype(np.float64).copy()
  for q in range(len(predictions)):
    for n in (1, 5, 10):
      cols = slice(0, n)
      values, counts = np.unique(predictions[q, :, cols], return_counts=True)
      for value, count in zip(values[counts > 1], counts[counts > 1]):
        block = distances[q, :, cols]  # a view: the update lands in `distances`
        block[predictions[q, :, cols] == value] -= weight * count / n
  return merge_crop_rankings(distances, predictions, k)
