"""GeoPair mining (spec §3.2): per epoch, the positive of each sampled query that is
nearest in the current feature space.

The model enters only through `embed`, a function (part, indices) -> (len, D)
features, where part is "database" or "queries"; this module never imports the
learning system.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from data_pipelines import search
from data_pipelines.places import TrainPlaces

EmbedFn = Callable[[str, np.ndarray], np.ndarray]
MINING_MODES = ("random",)


@dataclasses.dataclass(frozen=True)
class GeoPairs:
  """One epoch's training items: query i is paired with database image positives[i]."""
  queries: np.ndarray    # (n,) indices into places.queries_paths
  positives: np.ndarray  # (n,) indices into places.database_paths

  def __len__(self) -> int:
    return len(self.queries)


def sample_queries(rng: np.random.Generator, num_train_queries: int,
                   queries_per_epoch: int) -> np.ndarray:
  """Rows of TrainPlaces to use this epoch: without replacement unless there are too few."""
  replace = queries_per_epoch > num_train_queries
  return rng.choice(num_train_queries, size=queries_per_epoch, replace=replace)


def compute_pairs(train: TrainPlaces, embed: EmbedFn, rng: np.random.Generator,
                  queries_per_epoch: int, mining: str = "random") -> GeoPairs:
  """GeoPairs of one epoch.

  1. sample `queries_per_epoch` training queries;
  2. embed them and their hard positives (within 10 m);
  3. pair each query with its positive nearest in feature space (exact L2, on device).
  """
  if mining not in MINING_MODES:
    raise ValueError(f"unknown mining mode {mining!r}; expected one of {MINING_MODES}")
  rows = sample_queries(rng, len(train.query_ids), queries_per_epoch)
  query_ids = train.query_ids[rows]
  hard = train.hard_positives.subset(rows).padded(fill=-1)     # (n, P) database indices
  db_ids = np.unique(hard[hard >= 0])
  unique_q, q_inverse = np.unique(query_ids, return_inverse=True)
  q_feats = embed("queries", unique_q)[q_inverse]
  db_feats = embed("database", db_ids)
  local = np.where(hard >= 0, np.searchsorted(db_ids, np.maximum(hard, 0)), -1)
  best, _ = search.nearest_among(q_feats, db_feats, local)
  return GeoPairs(queries=query_ids, positives=db_ids[best])
