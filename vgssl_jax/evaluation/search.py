"""Exact nearest-neighbour search: on the device (chunked matmul + top_k) or with faiss.

Both return squared L2 distances and database indices sorted by ascending distance,
as faiss.IndexFlatL2 does, so the two backends are interchangeable. This module is also
the `NeighborSearch` that data_pipelines.mining is given (nearest_among, masked_knn).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

BACKENDS = ("device", "faiss")


@functools.partial(jax.jit, static_argnames=("k",))
def _topk_chunk(queries: jax.Array, database: jax.Array, db_sq: jax.Array, k: int):
  # ||q - d||^2 = ||q||^2 - 2 q.d + ||d||^2, at full float32 precision.
  dots = jnp.dot(queries, database.T, precision=jax.lax.Precision.HIGHEST)
  dist = jnp.sum(queries * queries, axis=1, keepdims=True) - 2 * dots + db_sq[None, :]
  neg, idx = jax.lax.top_k(-dist, k)
  return jnp.maximum(-neg, 0.0), idx


def _chunked(search_chunk, queries: np.ndarray, k: int, chunk: int):
  """search_chunk((chunk, D) queries) -> (values, indices) over fixed-size chunks of the
  queries (the last one padded), so that the search compiles once per shape."""
  chunk = max(1, min(chunk, len(queries)))
  values, idxs = [], []
  for start in range(0, len(queries), chunk):
    q = queries[start:start + chunk]
    n = len(q)
    if n < chunk:
      q = np.concatenate([q, np.zeros((chunk - n, q.shape[1]), np.float32)])
    v, i = search_chunk(jnp.asarray(q))
    values.append(np.asarray(v)[:n])
    idxs.append(np.asarray(i)[:n])
  if not values:
    return np.zeros((0, k), np.float32), np.zeros((0, k), np.int64)
  return np.concatenate(values), np.concatenate(idxs).astype(np.int64)


def device_knn(queries: np.ndarray, database: np.ndarray, k: int,
               chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Exact k-NN by squared L2. (Q, D), (N, D) -> distances (Q, k) float32, indices (Q, k) int64.
  """
  queries = np.asarray(queries, np.float32)
  k = min(k, len(database))
  db = jnp.asarray(np.asarray(database, np.float32))
  db_sq = jnp.sum(db * db, axis=1)
  return _chunked(lambda q: _topk_chunk(q, db, db_sq, k), queries, k, chunk)


@functools.partial(jax.jit, static_argnames=("k",))
def _dot_topk_chunk(queries: jax.Array, database: jax.Array, k: int):
  return jax.lax.top_k(jnp.dot(queries, database.T, precision=jax.lax.Precision.HIGHEST), k)


def device_dot_topk(queries: np.ndarray, database: np.ndarray, k: int,
                    chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """The k database rows of largest dot product per query, descending (stage 2's hard
  negative precompute ranks so): (similarities (Q, k), indices (Q, k) int64)."""
  k = min(k, len(database))
  db = jnp.asarray(np.asarray(database, np.float32))
  return _chunked(lambda q: _dot_topk_chunk(q, db, k), np.asarray(queries, np.float32), k, chunk)


@functools.partial(jax.jit, static_argnames=("k",))
def _masked_topk_chunk(queries, database, db_sq, excluded, k):
  dots = jnp.dot(queries, database.T, precision=jax.lax.Precision.HIGHEST)
  dist = jnp.sum(queries * queries, axis=1, keepdims=True) - 2 * dots + db_sq[None, :]
  rows = jnp.broadcast_to(jnp.arange(queries.shape[0])[:, None], excluded.shape)
  # excluded columns (padding = an out-of-range column, dropped) can never be chosen
  dist = dist.at[rows, excluded].set(jnp.inf, mode="drop")
  neg, idx = jax.lax.top_k(-dist, k)
  return -neg, idx


def device_masked_knn(queries: np.ndarray, database: np.ndarray, excluded: np.ndarray, k: int,
                      chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """Exact k-NN by squared L2 with per-query excluded database rows.

  excluded: (Q, S) database row indices that query q must not return, padded with -1.
  The exclusion happens on the device before top_k, so k stays small (top_k's cost grows
  with k). Returns distances (Q, k) (inf where fewer than k rows are allowed) and indices.
  """
  queries = np.asarray(queries, np.float32)
  excluded = np.asarray(excluded, np.int64).reshape(len(queries), -1)
  n = len(database)
  k = min(k, n)
  db = jnp.asarray(database, jnp.float32)
  db_sq = jnp.sum(db * db, axis=1)
  # pad the excluded lists to a multiple of 8 columns: few shapes, few compilations
  width = max(8, -(-excluded.shape[1] // 8) * 8)
  excluded = np.where(excluded >= 0, excluded, n)
  excluded = np.pad(excluded, ((0, 0), (0, width - excluded.shape[1])), constant_values=n)
  chunk = max(1, min(chunk, len(queries)))
  dists, idxs = [], []
  for start in range(0, len(queries), chunk):
    q, ex = queries[start:start + chunk], excluded[start:start + chunk]
    m = len(q)
    if m < chunk:
      q = np.concatenate([q, np.zeros((chunk - m, q.shape[1]), np.float32)])
      ex = np.concatenate([ex, np.full((chunk - m, width), n)])
    d, i = _masked_topk_chunk(jnp.asarray(q), db, db_sq, jnp.asarray(ex.astype(np.int32)), k)
    dists.append(np.asarray(d)[:m])
    idxs.append(np.asarray(i)[:m])
  return np.concatenate(dists), np.concatenate(idxs).astype(np.int64)


def faiss_knn(queries: np.ndarray, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Exact k-NN with faiss.IndexFlatL2 (a GPU index when faiss has GPUs)."""
  import faiss  # imported lazily: only this backend needs it
  database = np.ascontiguousarray(database, np.float32)
  index = faiss.IndexFlatL2(database.shape[1])
  if hasattr(faiss, "get_num_gpus") and faiss.get_num_gpus() > 0:
    index = faiss.index_cpu_to_all_gpus(index)
  index.add(database)
  k = min(k, len(database))
  dist, idx = index.search(np.ascontiguousarray(queries, np.float32), k)
  return dist, idx.astype(np.int64)


def knn(queries: np.ndarray, database: np.ndarray, k: int, backend: str = "device"):
  if backend == "device":
    return device_knn(queries, database, k)
  if backend == "faiss":
    return faiss_knn(queries, database, k)
  raise ValueError(f"unknown search backend {backend!r}; expected one of {BACKENDS}")


def masked_knn(queries: np.ndarray, database: np.ndarray, excluded: np.ndarray, k: int,
               backend: str = "device") -> tuple[np.ndarray, np.ndarray]:
  """k-NN (squared L2) where query q never returns the database rows excluded[q] (-1
  padded). Distances are inf (and indices arbitrary) where fewer than k rows are allowed.

  On the device the rows are excluded before top_k, so k stays small. faiss cannot
  exclude: it searches k + (most exclusions of any query) neighbours, which always
  leaves k allowed ones, and drops the excluded after.
  """
  if backend == "device":
    return device_masked_knn(queries, database, excluded, k)
  if backend != "faiss":
    raise ValueError(f"unknown search backend {backend!r}; expected one of {BACKENDS}")
  excluded = np.asarray(excluded, np.int64).reshape(len(queries), -1)
  k = min(k, len(database))
  fetch = min(len(database), k + int((excluded >= 0).sum(axis=1).max(initial=0)))
  fetch = min(len(database), -(-fetch // 16) * 16)  # a few shapes only: fewer compilations
  dist, idx = faiss_knn(queries, database, fetch)
  allowed = ~(idx[:, :, None] == np.where(excluded >= 0, excluded, -2)[:, None, :]).any(-1)
  rank = np.cumsum(allowed, axis=1)
  take = allowed & (rank <= k)
  out_d = np.full((len(queries), k), np.inf, np.float32)
  out_i = np.zeros((len(queries), k), np.int64)
  rows, cols = np.nonzero(take)
  out_d[rows, rank[rows, cols] - 1] = dist[rows, cols]
  out_i[rows, rank[rows, cols] - 1] = idx[rows, cols]
  return out_d, out_i


@functools.partial(jax.jit, static_argnames=("k",))
def _among_chunk(queries, features, candidates, k):
  # queries (C, D), features (N, D), candidates (C, P) indices (-1 padded) -> top k by L2
  cand = features[jnp.maximum(candidates, 0)]
  diff = cand - queries[:, None, :]
  dist = jnp.where(candidates >= 0, jnp.sum(diff * diff, axis=-1), jnp.inf)
  neg, idx = jax.lax.top_k(-dist, k)
  return idx, -neg


def knn_among(queries: np.ndarray, features: np.ndarray, candidates: np.ndarray, k: int,
              chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """For each query, its k nearest (squared L2) rows of `features` among its own candidates.

  Args:
    queries: (Q, D) query features.
    features: (N, D) candidate features.
    candidates: (Q, P) indices into `features`, padded with -1.
  Returns:
    (Q, k) chosen indices into `features` (-1 where a row has fewer than k candidates) and
    (Q, k) squared distances (inf there), ascending. Ties go to the earlier candidate in
    row order, as a faiss search over the row would.
  """
  queries = np.asarray(queries, np.float32)
  candidates = np.asarray(candidates, np.int64)
  feats = jnp.asarray(features, jnp.float32)
  n_q, width = candidates.shape
  k = min(k, width)
  chunk = max(1, min(chunk, n_q))
  chosen, dists = np.empty((n_q, k), np.int64), np.empty((n_q, k), np.float32)
  for start in range(0, n_q, chunk):
    c = candidates[start:start + chunk]
    q = queries[start:start + chunk]
    m = len(c)
    if m < chunk:  # pad to the chunk shape: one compilation
      c = np.concatenate([c, np.full((chunk - m, width), -1, np.int64)])
      q = np.concatenate([q, np.zeros((chunk - m, q.shape[1]), np.float32)])
    pick, dist = _among_chunk(jnp.asarray(q), feats, jnp.asarray(c.astype(np.int32)), k)
    pick, dist = np.asarray(pick)[:m], np.asarray(dist)[:m]
    rows = c[:m][np.arange(m)[:, None], pick]
    chosen[start:start + m] = np.where(np.isfinite(dist), rows, -1)
    dists[start:start + m] = dist
  return chosen, dists


def nearest_among(queries: np.ndarray, features: np.ndarray, candidates: np.ndarray,
                  chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """For each query, its nearest (squared L2) row of `features` among its own candidates
  (Q, P), -1 padded, each row with >= 1 valid: (Q,) chosen indices, (Q,) squared distances."""
  chosen, dists = knn_among(queries, features, candidates, 1, chunk)
  return chosen[:, 0], dists[:, 0]
