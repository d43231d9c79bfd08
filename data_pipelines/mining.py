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
import os
from collections.abc import Callable
from typing import Protocol

import numpy as np

from data_pipelines.places import DatasetError, Neighbors, TrainPlaces

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

  def knn_among(self, queries: np.ndarray, features: np.ndarray, candidates: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the k nearest rows of `features` among its candidates (Q, P), -1 padded:
    (chosen indices into features, -1 past a short row; squared distances), ascending."""


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

  def to_json(self) -> dict:
    """The pairs as JSON-able lists (a checkpoint saves an epoch's plan)."""
    return {f.name: (None if getattr(self, f.name) is None else
                     np.asarray(getattr(self, f.name)).tolist())
            for f in dataclasses.fields(self)}

  @classmethod
  def from_json(cls, data: dict) -> "GeoPairs":
    """The inverse of `to_json` (other keys of `data` are ignored)."""
    return cls(**{f.name: (None if data.get(f.name) is None else
                           np.asarray(data[f.name], np.int64)) for f in dataclasses.fields(cls)})


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


def negatives_available(train: TrainPlaces) -> int:
  """How many negatives every training query can have: the database images less the most
  soft positives a query has (those are never negatives)."""
  return train.places.num_database - int(train.soft_positives.counts.max(initial=0))


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


# ----------------------------------------------------------------------------- triplets
# The supervised path's mining (docs/original.md §Supervised training; the benchmark's
# datasets_ws.TripletsDataset): per cache refresh, `queries` sampled training queries, each
# with its best positive (nearest in feature space among its 10 m positives) and the M
# hardest negatives (outside its 25 m soft positives) by the mode:
#   random         M random database images
#   partial        the M nearest among one random pool of neg_samples_num database images
#   full           the M nearest among neg_samples_num random database images drawn for the
#                  query plus its hardest negatives of the previous refresh (`neg_cache`)
#   msls_weighted  partial, with night and sideways queries sampled more often
#   global         M drawn uniformly from the query's first neg_hardness precomputed hard
#                  negatives (stage 2; see hard_negative_lists)
#   global_combine M // 2 as global, the other M - M // 2 as partial
TRIPLET_MINING_MODES = ("random", "partial", "full", "msls_weighted", "global", "global_combine")
HARD_NEGATIVES_RANKED = 500   # database images ranked per query by the precompute
HARD_NEGATIVES_KEPT = 200     # of them kept (soft positives removed), -1 padded


@dataclasses.dataclass(frozen=True)
class TripletMiningConfig:
  queries: int                    # queries per refresh (cache_refresh_rate)
  mode: str = "partial"
  neg_samples_num: int = 1000
  negs_num_per_query: int = 10    # M
  neg_hardness: int = 100         # global modes: draw from each query's first N


@dataclasses.dataclass(frozen=True)
class Triplets:
  """One cache refresh's tuples: query `queries[i]`, database positive `positives[i]` and
  database negatives `negatives[i]` (M), hardest first (random order for random mining)."""
  queries: np.ndarray      # (n,) indices into places.queries_paths
  positives: np.ndarray    # (n,)
  negatives: np.ndarray    # (n, M)


def msls_weights(train: TrainPlaces) -> np.ndarray:
  """msls_weighted's sampling probabilities of the training queries: 1 each, plus Q/#night
  for night queries and Q/#sideways for sideways ones, normalised (the benchmark's rule).

  Night and view direction come from the raw MSLS CSVs (extras "queries_night",
  "queries_view_direction") or from `@` file names' note field (day|night_forward|
  backward|sideways_city, as VPR-datasets-downloader writes MSLS)."""
  places = train.places
  extras = places.extras
  if "queries_night" in extras and "queries_view_direction" in extras:
    night = np.asarray(extras["queries_night"], bool)
    sideways = np.char.lower(np.asarray(extras["queries_view_direction"], str)) == "sideways"
  else:
    notes = [os.path.basename(p).split("@")[-2] if p.count("@") >= 15 else ""
             for p in places.queries_paths]
    fields = [n.split("_") for n in notes]
    if not all(len(f) >= 2 for f in fields):
      raise DatasetError(
          f"train.mining=msls_weighted needs each query's night and view direction, which "
          f"{places} has not: they come from raw MSLS (postprocessed.csv) or from the note "
          "field of VPR-datasets-downloader's MSLS file names. Use train.mining=partial.")
    night = np.array([f[0] == "night" for f in fields])
    sideways = np.array([f[1] == "sideways" for f in fields])
  night, sideways = night[train.query_ids], sideways[train.query_ids]
  if not night.any() or not sideways.any():
    raise DatasetError(f"train.mining=msls_weighted: {places} has {int(night.sum())} night and "
                       f"{int(sideways.sum())} sideways training queries; it needs both.")
  n = len(night)
  weights = np.ones(n)
  weights[night] += n / night.sum()
  weights[sideways] += n / sideways.sum()
  return weights / weights.sum()


def _random_subset_rows(rng: np.random.Generator, rows: int, population: int,
                        size: int) -> np.ndarray:
  """(rows, size) distinct random indices per row (full mining's per-query draws)."""
  size = min(size, population)
  return np.stack([rng.choice(population, size, replace=False) for _ in range(rows)])


def hard_negative_lists(ranked: np.ndarray, soft: Neighbors,
                        keep: int = HARD_NEGATIVES_KEPT) -> np.ndarray:
  """(Q, K) database indices ranked per training query (nearest first) -> (Q, keep): the
  ranking without the query's soft positives, in order, -1 padded (pre_compute_mining.py)."""
  ranked = np.asarray(ranked, np.int64)
  positive = soft.contains(np.arange(len(ranked)), ranked)
  order = np.argsort(positive, axis=1, kind="stable")  # the others first, in ranked order
  kept = np.take_along_axis(ranked, order, 1)[:, :keep]
  valid = np.take_along_axis(~positive, order, 1)[:, :keep]
  out = np.full((len(ranked), keep), -1, np.int64)
  out[:, :kept.shape[1]] = np.where(valid, kept, -1)
  return out


def global_negatives(rng: np.random.Generator, lists: np.ndarray, m: int, hardness: int,
                     query_ids: np.ndarray) -> np.ndarray:
  """(n, m) negatives drawn without replacement from the first `hardness` entries of each
  row of `lists`, padding excluded (the original could draw the -1 pads, which index the
  last database image: docs/original.md, quirk 36)."""
  out = np.empty((len(lists), m), np.int64)
  for i, row in enumerate(lists):
    valid = row[:hardness][row[:hardness] >= 0]
    if len(valid) < m:
      raise ValueError(f"training query {int(query_ids[i])} has {len(valid)} precomputed hard "
                       f"negatives among its first rerank.neg_hardness={hardness}, fewer than "
                       f"train.negs_num_per_query={m}; raise rerank.neg_hardness.")
    out[i] = rng.choice(valid, m, replace=False)
  return out


def compute_triplets(train: TrainPlaces, embed: EmbedFn, rng: np.random.Generator,
                     config: TripletMiningConfig, search: NeighborSearch,
                     neg_cache: dict[int, np.ndarray] | None = None,
                     weights: np.ndarray | None = None,
                     hard_lists: np.ndarray | None = None) -> Triplets:
  """One cache refresh's triplets; see the notes above. `neg_cache` ({query index: its
  previous hardest negatives}) is read and updated by full mining; `weights` are
  msls_weighted's sampling probabilities over train.query_ids; `hard_lists` (one row per
  train.query_ids entry, hard_negative_lists) feed the global modes."""
  if config.mode not in TRIPLET_MINING_MODES:
    raise ValueError(f"unknown mining mode {config.mode!r}; expected one of "
                     f"{TRIPLET_MINING_MODES}")
  num_db, m = train.places.num_database, config.negs_num_per_query
  n_train = len(train.query_ids)
  if config.mode == "msls_weighted":
    rows = rng.choice(n_train, size=min(config.queries, n_train), replace=False, p=weights)
  else:
    rows = sample_queries(rng, n_train, config.queries)
  query_ids = train.query_ids[rows]
  hard = train.hard_positives.subset(rows).padded(fill=-1)
  soft = train.soft_positives.subset(rows)
  if config.mode.startswith("global") and hard_lists is None:
    raise ValueError(f"train.mining={config.mode} needs the precomputed hard negatives")
  pool = np.zeros(0, np.int64)
  if config.mode in ("partial", "msls_weighted", "global_combine"):
    pool = np.sort(rng.choice(num_db, size=min(config.neg_samples_num, num_db), replace=False))
  elif config.mode == "full":
    pool = np.arange(num_db)
  db_ids = np.unique(np.concatenate([hard[hard >= 0], pool]))
  unique_q, q_inverse = np.unique(query_ids, return_inverse=True)
  q_feats = embed("queries", unique_q)[q_inverse]
  db_feats = embed("database", db_ids)
  db_ok = np.isfinite(db_feats).all(axis=1)
  local = np.where(hard >= 0, np.searchsorted(db_ids, np.maximum(hard, 0)), -1)
  local = np.where((local >= 0) & db_ok[np.maximum(local, 0)], local, -1)
  keep = np.isfinite(q_feats).all(axis=1) & (local >= 0).any(axis=1)
  if not keep.any():
    raise ValueError("no sampled query of this refresh has a readable image and a readable "
                     "positive; check the training images.")
  query_ids, q_feats, local = query_ids[keep], q_feats[keep], local[keep]
  soft = soft.subset(np.flatnonzero(keep))
  best, _ = search.nearest_among(q_feats, db_feats, local)
  positives = db_ids[best]
  if config.mode == "random":
    return Triplets(query_ids, positives, random_negatives(rng, num_db, soft, m))
  n_global = {"global": m, "global_combine": m // 2}.get(config.mode, 0)
  drawn = None
  if n_global:
    drawn = global_negatives(rng, hard_lists[rows[keep]], n_global, config.neg_hardness,
                             query_ids)
    if n_global == m:
      return Triplets(query_ids, positives, drawn)
  pool = pool[db_ok[np.searchsorted(db_ids, pool)]]
  if config.mode != "full":
    pool_feats = db_feats[np.searchsorted(db_ids, pool)]
    negatives = hard_negatives(q_feats, pool_feats, pool, soft, m - n_global, search)
    if drawn is not None:
      negatives = np.concatenate([drawn, negatives], axis=1)
    return Triplets(query_ids, positives, negatives)
  # full: the query's own random draw (soft positives removed) and its previous negatives
  neg_cache = {} if neg_cache is None else neg_cache
  draws = _random_subset_rows(rng, len(query_ids), num_db, config.neg_samples_num)
  readable = np.zeros(num_db, bool)
  readable[db_ids[db_ok]] = True
  candidates = []
  for i, q in enumerate(query_ids):
    row = draws[i][~soft.contains(np.array([i]), draws[i][None])[0]]
    row = np.unique(np.concatenate([neg_cache.get(int(q), np.zeros(0, np.int64)), row]))
    candidates.append(row[readable[row]])
  width = max(len(c) for c in candidates)
  padded = np.full((len(candidates), width), -1, np.int64)
  for i, c in enumerate(candidates):
    padded[i, :len(c)] = np.searchsorted(db_ids, c)
  chosen, _ = search.knn_among(q_feats, db_feats, padded, m)
  if (chosen < 0).any():
    row = int(np.flatnonzero((chosen < 0).any(axis=1))[0])
    raise ValueError(f"query {int(query_ids[row])} has fewer than negs_num_per_query={m} "
                     "negative candidates; raise train.neg_samples_num.")
  negatives = db_ids[chosen]
  for q, negs in zip(query_ids, negatives):
    neg_cache[int(q)] = negs
  return Triplets(query_ids, positives, negatives)
