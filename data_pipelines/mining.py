"""GeoPair mining (docs/original.md §GeoPair mining): per epoch, the positive of each sampled
query that is nearest in the current feature space, and optionally hard negatives.

Modes (the database images embedded besides the queries and their 10 m positives):
  random   no extra images; negatives, if any, are random database images
  partial  one random pool of `neg_samples_num` database images shared by the epoch;
           negatives are the nearest pool images outside the query's 25 m soft positives
  full     the whole database; negatives are the nearest database images outside them

Host-side logic only. The model enters through `embed`, a function (part, indices) ->
(len, D) features with part "database" or "queries", and the nearest-neighbour searches
through `search` (the `NeighborSearch` protocol; vgssl_jax.evaluation.search runs them on
the device), so this module never imports the learning system.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Protocol

import numpy as np

from data_pipelines.places import Neighbors, TrainPlaces

# (part, indices) -> (len(indices), D) features; a row of NaN marks an unreadable image
EmbedFn = Callable[[str, np.ndarray], np.ndarray]
MINING_MODES = ("random", "partial", "full")


class NeighborSearch(Protocol):
  """The exact searches mining needs (squared L2; see vgssl_jax.evaluation.search)."""

  def nearest_among(self, queries: np.ndarray, features: np.ndarray,
                    candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the nearest row of `features` among its candidates (Q, P), -1 padded:
    (chosen indices into features, squared distances)."""

  def masked_knn(self, queries: np.ndarray, database: np.ndarray, excluded: np.ndarray,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """k-NN where query q never returns the database rows excluded[q] (-1 padded):
    (distances, inf where fewer than k rows are allowed; indices), ascending."""


@dataclasses.dataclass(frozen=True)
class MiningConfig:
  queries_per_epoch: int
  mode: str = "random"
  neg_samples_num: int = 0        # partial: pool size; random/full: > 0 switches negatives on
  negs_num_per_query: int = 1     # M: negatives mined per query
  pair_negative: bool = False     # attach negatives to the pairs (else: appended self-pairs)

  @property
  def uses_negatives(self) -> bool:
    return self.neg_samples_num > 0


@dataclasses.dataclass(frozen=True)
class GeoPairs:
  """One epoch's items.

  Item i < len(queries) pairs query `queries[i]` with database image `positives[i]` and,
  with pair_negative, carries `negatives[i]` (M candidates; the batch keeps one). Items
  after those are self-pairs (n, n) of database images `self_pairs` (negatives without
  pair_negative).
  """
  queries: np.ndarray                     # (n,) indices into places.queries_paths
  positives: np.ndarray                   # (n,) indices into places.database_paths
  negatives: np.ndarray | None = None     # (n, M) database indices
  self_pairs: np.ndarray | None = None    # (k,) database indices

  def __len__(self) -> int:
    return len(self.queries) + (0 if self.self_pairs is None else len(self.self_pairs))


def sample_queries(rng: np.random.Generator, num_train_queries: int,
                   queries_per_epoch: int) -> np.ndarray:
  """Rows of TrainPlaces to use this epoch: without replacement unless there are too few."""
  replace = queries_per_epoch > num_train_queries
  return rng.choice(num_train_queries, size=queries_per_epoch, replace=replace)


def _first_m(valid: np.ndarray, values: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
  """Per row, the first m values where valid (order kept); and whether the row had m."""
  rank = np.cumsum(valid, axis=1)
  take = valid & (rank <= m)
  complete = rank[:, -1] >= m if valid.shape[1] else np.zeros(len(valid), bool)
  out = np.full((len(values), m), -1, np.int64)
  rows, cols = np.nonzero(take)
  out[rows, rank[rows, cols] - 1] = values[rows, cols]
  return out, complete


def random_negatives(rng: np.random.Generator, num_database: int, soft: Neighbors,
                     m: int) -> np.ndarray:
  """(n, m) distinct random database indices per query, outside its soft positives.

  As the original's "draw distinct indices, drop soft positives, keep the first m", a
  uniform ordered sample; vectorised by rejection (redraw the few rows left short).
  """
  n = len(soft)
  short = np.flatnonzero(num_database - soft.counts < m)
  if len(short):
    raise ValueError(f"query row {short[0]} has only {num_database - soft.counts[short[0]]} "
                     f"database images outside its soft positives, fewer than "
                     f"negs_num_per_query={m}.")
  out = np.full((n, m), -1, np.int64)
  todo = np.arange(n)
  while len(todo):
    draws = rng.integers(0, num_database, size=(len(todo), 2 * m + 8))
    valid = ~soft.subset(todo).contains(np.arange(len(todo)), draws)
    # keep the first occurrence of each index within a row
    keys = (np.arange(len(todo))[:, None] * num_database + draws).ravel()
    first = np.zeros(keys.size, bool)
    first[np.unique(keys, return_index=True)[1]] = True
    valid &= first.reshape(draws.shape)
    picked, complete = _first_m(valid, draws, m)
    out[todo[complete]] = picked[complete]
    todo = todo[~complete]
  return out


def hard_negatives(query_feats: np.ndarray, candidate_feats: np.ndarray,
                   candidate_ids: np.ndarray, soft: Neighbors, m: int,
                   search: NeighborSearch) -> np.ndarray:
  """(n, m) database ids: the m candidates nearest each query (ascending L2) that are not
  among its soft positives (excluded inside the search, before its top-k).

  candidate_ids must be ascending.
  """
  candidate_ids = np.asarray(candidate_ids, np.int64)
  # each query's soft positives as candidate columns (-1 where not a candidate)
  padded = soft.padded(fill=-1)
  cols = np.searchsorted(candidate_ids, np.maximum(padded, 0))
  cols = np.minimum(cols, len(candidate_ids) - 1)
  found = (padded >= 0) & (candidate_ids[cols] == padded)
  dist, idx = search.masked_knn(query_feats, candidate_feats, np.where(found, cols, -1), m)
  complete = np.isfinite(dist).all(axis=1) & (idx.shape[1] == m)
  if not complete.all():
    row = int(np.flatnonzero(~complete)[0])
    raise ValueError(f"query row {row} has fewer than negs_num_per_query={m} candidates outside "
                     f"its soft positives among the {len(candidate_ids)} mined images; lower "
                     "train.negs_num_per_query or raise train.neg_samples_num.")
  return candidate_ids[idx]


def compute_pairs(train: TrainPlaces, embed: EmbedFn, rng: np.random.Generator,
                  config: MiningConfig, search: NeighborSearch) -> GeoPairs:
  """GeoPairs of one epoch.

  1. sample `queries_per_epoch` training queries;
  2. embed them, their hard positives (within 10 m) and the mode's extra images (images
     `embed` could not read are left out: the epoch may then have fewer items);
  3. pair each query with its positive nearest in feature space (exact L2, on device);
  4. negatives by the mode, attached to the pairs or appended as self-pairs.
  """
  if config.mode not in MINING_MODES:
    raise ValueError(f"unknown mining mode {config.mode!r}; expected one of {MINING_MODES}")
  num_db = train.places.num_database
  rows = sample_queries(rng, len(train.query_ids), config.queries_per_epoch)
  query_ids = train.query_ids[rows]
  hard = train.hard_positives.subset(rows).padded(fill=-1)     # (n, P) database indices
  soft = train.soft_positives.subset(rows)
  pool = np.zeros(0, np.int64)
  if config.uses_negatives and config.mode == "partial":
    pool = np.sort(rng.choice(num_db, size=min(config.neg_samples_num, num_db), replace=False))
  elif config.uses_negatives and config.mode == "full":
    pool = np.arange(num_db)

  db_ids = np.unique(np.concatenate([hard[hard >= 0], pool]))
  unique_q, q_inverse = np.unique(query_ids, return_inverse=True)
  q_feats = embed("queries", unique_q)[q_inverse]
  db_feats = embed("database", db_ids)
  local = np.where(hard >= 0, np.searchsorted(db_ids, np.maximum(hard, 0)), -1)
  # unreadable images (NaN features): never a positive or a negative; a query that is
  # unreadable, or has no readable positive, leaves this epoch
  db_ok = np.isfinite(db_feats).all(axis=1)
  local = np.where((local >= 0) & db_ok[np.maximum(local, 0)], local, -1)
  keep = np.isfinite(q_feats).all(axis=1) & (local >= 0).any(axis=1)
  if not keep.all():
    if not keep.any():
      raise ValueError("no sampled query of this epoch has a readable image and a readable "
                       "positive; check the training images.")
    query_ids, q_feats, local = query_ids[keep], q_feats[keep], local[keep]
    soft = soft.subset(np.flatnonzero(keep))
  pool = pool[db_ok[np.searchsorted(db_ids, pool)]] if len(pool) else pool
  best, _ = search.nearest_among(q_feats, db_feats, local)
  positives = db_ids[best]
  if not config.uses_negatives:
    return GeoPairs(query_ids, positives)

  m = config.negs_num_per_query
  if config.mode == "random" and config.pair_negative:
    return GeoPairs(query_ids, positives, negatives=random_negatives(rng, num_db, soft, m))
  if config.mode == "random":
    # neg_samples_num random database images outside the soft positives of every query
    allowed = np.setdiff1d(np.arange(num_db), soft.indices)
    count = min(config.neg_samples_num, len(allowed))
    return GeoPairs(query_ids, positives,
                    self_pairs=rng.choice(allowed, size=count, replace=False))
  pool_feats = db_feats[np.searchsorted(db_ids, pool)]
  negatives = hard_negatives(q_feats, pool_feats, pool, soft, m, search)
  if config.pair_negative:
    return GeoPairs(query_ids, positives, negatives=negatives)
  return GeoPairs(query_ids, positives, self_pairs=np.unique(negatives))


def pick_negatives(batches: np.ndarray, negatives: np.ndarray) -> np.ndarray:
  """The original's collate rule: per item, the first of its M negatives not already
  picked by an earlier item of the same batch, else its first one.

  batches: (steps, B) item indices; negatives: (n, M). Returns (steps, B) database ids.
  """
  if negatives.shape[1] == 1:
    return negatives[batches, 0]
  out = np.empty(batches.shape, np.int64)
  for s, batch in enumerate(batches):
    picked = set()
    for j, item in enumerate(batch):
      choice = next((n for n in negatives[item] if n not in picked), negatives[item, 0])
      picked.add(int(choice))
      out[s, j] = choice
  return out
