"""Exact nearest-neighbour search: on the device (chunked matmul + top_k) or with faiss.

Both return squared L2 distances and database indices sorted by ascending distance,
as faiss.IndexFlatL2 does, so the two backends are interchangeable. This module is also
the `NeighborSearch` that data_pipelines.mining is given (nearest_among, masked_knn).
"""

from __future__ import annotations

import concurrent.futures
import functools
import os

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


# On CPU, chunks are searched from this many host threads at once: XLA:CPU runs a program's
# top_k on one core, but calls from separate threads side by side (the hard-negative
# ranking's top 500 of 10,000 x 20,000: 2.1 s -> 1.2 s on 2 cores, benchmarks/README.md).
MAX_SEARCH_THREADS = 4


def _search_threads() -> int:
  if jax.default_backend() != "cpu":
    return 1
  return max(1, min(MAX_SEARCH_THREADS, os.cpu_count() or 1))


def _chunked(search_chunk, rows: list[tuple[np.ndarray, object]], chunk: int,
             empty: list[np.ndarray]) -> list[np.ndarray]:
  """search_chunk(*chunks) -> outputs with a leading chunk axis, over fixed-size chunks of
  the row-aligned arrays `rows` ((array, padding value) each; the last chunk padded), so
  the search compiles once per shape. Outputs are concatenated in row order; `empty`
  when there are no rows."""
  n = len(rows[0][0])
  if n == 0:
    return empty
  chunk = max(1, min(chunk, n))

  def run(start: int) -> list[np.ndarray]:
    parts = []
    for array, pad in rows:
      part = array[start:start + chunk]
      if len(part) < chunk:
        fill = np.full((chunk - len(part), *array.shape[1:]), pad, array.dtype)
        part = np.concatenate([part, fill])
      parts.append(jnp.asarray(part))
    return [np.asarray(out)[:min(chunk, n - start)] for out in search_chunk(*parts)]

  starts = range(0, n, chunk)
  workers = min(_search_threads(), len(starts))
  if workers > 1:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      results = list(pool.map(run, starts))
  else:
    results = [run(start) for start in starts]
  return [np.concatenate(column) for column in zip(*results)]


# The database goes to the device in blocks of at most this many bytes (the top k of each
# block are merged on the host), so large descriptors over large databases search in
# bounded memory: 12,288-d x 20,000 images is 0.98 GB, Tokyo 24/7's 75,984 at 8448-d 2.6 GB.
DATABASE_BLOCK_BYTES = 1 << 30


def device_knn(queries: np.ndarray, database: np.ndarray, k: int, chunk: int = 1024,
               block_rows: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Exact k-NN by squared L2. (Q, D), (N, D) -> distances (Q, k) float32, indices (Q, k) int64.

  The database is searched in blocks of `block_rows` rows (by default as many as fit
  DATABASE_BLOCK_BYTES), queries in chunks of `chunk`; equal distances keep the lower index.
  """
  queries = np.asarray(queries, np.float32)
  database = np.asarray(database, np.float32)
  n = len(database)
  k = min(k, n)
  rows = block_rows or max(k, DATABASE_BLOCK_BYTES // (4 * max(1, database.shape[1])))
  parts = [_knn_block(queries, database[start:start + rows], min(k, rows, n - start), chunk)
           for start in range(0, n, rows)]
  if len(parts) == 1:
    return parts[0]
  dist = np.concatenate([d for d, _ in parts], axis=1)
  idx = np.concatenate([i + start for (_, i), start in zip(parts, range(0, n, rows))], axis=1)
  order = np.lexsort((idx, dist), axis=1)[:, :k]   # by distance, then index
  return np.take_along_axis(dist, order, axis=1), np.take_along_axis(idx, order, axis=1)


def _knn_block(queries: np.ndarray, database: np.ndarray, k: int,
               chunk: int) -> tuple[np.ndarray, np.ndarray]:
  db = jnp.asarray(database)
  db_sq = jnp.sum(db * db, axis=1)
  dist, idx = _chunked(lambda q: _topk_chunk(q, db, db_sq, k), [(queries, 0.0)], chunk,
                       [np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)])
  return dist, idx.astype(np.int64)


@functools.partial(jax.jit, static_argnames=("k",))
def _dot_topk_chunk(queries: jax.Array, database: jax.Array, k: int):
  return jax.lax.top_k(_dots(queries, database), k)


@jax.jit
def _dots(queries: jax.Array, database: jax.Array) -> jax.Array:
  return jnp.dot(queries, database.T, precision=jax.lax.Precision.HIGHEST)


def host_topk(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """The k largest entries of each row of (Q, N) `scores`, descending, equal values by
  ascending index (as lax.top_k; a tie across the k-th place may keep either)."""
  part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
  values = np.take_along_axis(scores, part, axis=1)
  order = np.lexsort((part, -values), axis=1)
  return np.take_along_axis(values, order, axis=1), np.take_along_axis(part, order, axis=1)


def device_dot_topk(queries: np.ndarray, database: np.ndarray, k: int,
                    chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """The k database rows of largest dot product per query, descending (stage 2's hard
  negative precompute ranks so): (similarities (Q, k), indices (Q, k) int64).

  The products are computed on the device in chunks of queries. Accelerators select with
  lax.top_k; on CPU, XLA's top_k is a partial sort on one core whose cost grows with k
  (0.16 s per 1,000 rows of 20,000 at k = 500), so the rows are selected by numpy's
  introselect in the search threads instead (2.6x faster there; benchmarks/README.md).
  """
  k = min(k, len(database))
  db = jnp.asarray(np.asarray(database, np.float32))
  if jax.default_backend() == "cpu":
    search_chunk = lambda q: host_topk(np.asarray(_dots(q, db)), k)  # noqa: E731
  else:
    search_chunk = lambda q: _dot_topk_chunk(q, db, k)  # noqa: E731
  sims, idx = _chunked(search_chunk, [(np.asarray(queries, np.float32), 0.0)], chunk,
                       [np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)])
  return sims, idx.astype(np.int64)


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
  dist, idx = _chunked(lambda q, ex: _masked_topk_chunk(q, db, db_sq, ex, k),
                       [(queries, 0.0), (excluded.astype(np.int32), n)], chunk,
                       [np.zeros((0, k), np.float32), np.zeros((0, k), np.int32)])
  return dist, idx.astype(np.int64)


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
  pick, dists = _chunked(lambda q, c: _among_chunk(q, feats, c, k),
                         [(queries, 0.0), (candidates.astype(np.int32), -1)], chunk,
                         [np.zeros((0, k), np.int32), np.zeros((0, k), np.float32)])
  rows = np.take_along_axis(candidates, pick.astype(np.int64), axis=1)
  chosen = np.where(np.isfinite(dists), rows, -1)
  return chosen, dists


def nearest_among(queries: np.ndarray, features: np.ndarray, candidates: np.ndarray,
                  chunk: int = 512) -> tuple[np.ndarray, np.ndarray]:
  """For each query, its nearest (squared L2) row of `features` among its own candidates
  (Q, P), -1 padded, each row with >= 1 valid: (Q,) chosen indices, (Q,) squared distances."""
  chosen, dists = knn_among(queries, features, candidates, 1, chunk)
  return chosen[:, 0], dists[:, 0]
