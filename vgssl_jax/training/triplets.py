"""The supervised path's epoch source: cache-refresh rounds of triplet mining, then tuple
batches (docs/original.md §Supervised training).

An epoch is ceil(queries_per_epoch / cache_refresh_rate) segments. Each samples
cache_refresh_rate training queries, embeds them and their candidates with the current
model in eval mode (the retrieval descriptor), picks each query's best positive and M
hardest negatives (data_pipelines.mining.compute_triplets), and trains on the tuples in
that order (train.py's loader does not shuffle), train.batch_size per step. Full mining's
per-query cache of previous negatives is this source's state, saved with checkpoints.

The global modes (stage 2) draw negatives from hard-negative lists precomputed with the
model the run starts from (training.hard_negatives), in the run's folder (`workdir`).
"""

from __future__ import annotations

import logging
import math

import jax
import numpy as np

from data_pipelines import loader, mining
from data_pipelines.places import TrainPlaces
from vgssl_jax import data_config
from vgssl_jax.errors import ConfigError, check_choice
from vgssl_jax.evaluation import search
from vgssl_jax.evaluation.embedder import Embedder
from vgssl_jax.objectives.base import Objective, retrieval_variables
from vgssl_jax.training import epochs, hard_negatives


class TripletSource(epochs.LabelledPlacesSource):
  keys = ("train.cache_refresh_rate",)

  @classmethod
  def check_config(cls, config) -> None:
    t = config.train
    check_choice("train.mining", t.mining, mining.TRIPLET_MINING_MODES)
    if t.negs_num_per_query < 1:
      raise ConfigError(f"train.negs_num_per_query={t.negs_num_per_query}: the supervised "
                        "objectives need at least one negative per query.")
    if t.mining not in ("random", "global") and t.negs_num_per_query > t.neg_samples_num:
      raise ConfigError(f"train.negs_num_per_query={t.negs_num_per_query} is larger than the "
                        f"candidate pool train.neg_samples_num={t.neg_samples_num} of "
                        f"train.mining={t.mining}.")
    if t.cache_refresh_rate < t.batch_size:
      raise ConfigError(f"train.cache_refresh_rate={t.cache_refresh_rate} is smaller than "
                        f"train.batch_size={t.batch_size}: a refresh would have no step.")

  @classmethod
  def steps_items(cls, config) -> int:
    return config.train.batch_size  # query tuples

  def __init__(self, config, objective: Objective, train_places: TrainPlaces,
               embedder: Embedder, workdir: str | None = None):
    self.config, self.objective, self.train = config, objective, train_places
    self.embedder, self.workdir = embedder, workdir
    tc = config.train
    self.mining = mining.TripletMiningConfig(tc.cache_refresh_rate, tc.mining,
                                             tc.neg_samples_num, tc.negs_num_per_query,
                                             config.rerank.neg_hardness)
    self.hard_lists = None  # global modes: loaded or computed at the first refresh
    # msls_weighted: an error (no night/sideways metadata) shows before any model work
    self.weights = mining.msls_weights(train_places) if tc.mining == "msls_weighted" else None
    self.options = data_config.loader_options(config)
    self.items_per_step = self.steps_items(config)
    self.throughput = {"queries": tc.batch_size,
                       "images": tc.batch_size * (2 + tc.negs_num_per_query)}
    self.neg_cache: dict[int, np.ndarray] = {}
    if train_places is not None:
      self._check_supply(train_places)
      if tc.mining.startswith("global") and config.rerank.hard_negatives:
        # a given list is checked against the dataset now (the model at the first refresh)
        hard_negatives.load(config.rerank.hard_negatives, train_places, None)
    # train_reranker.py mines once when an epoch is a single refresh of all its queries, and
    # trains every later epoch on those tuples (the objective says whether it does so)
    self.reuse = objective.reuse_mining and tc.cache_refresh_rate == tc.queries_per_epoch
    self.first_plan: dict | None = None

  def _check_supply(self, train: TrainPlaces) -> None:
    """Enough negatives for every query in the database, before any work (global modes:
    checked on the precomputed lists, whose pads are never drawn)."""
    tc = self.config.train
    if not tc.mining.startswith("global"):
      epochs.check_negatives(train, tc.negs_num_per_query)

  def segments(self, epoch: int) -> int:
    del epoch
    tc = self.config.train
    return math.ceil(tc.queries_per_epoch / tc.cache_refresh_rate)

  def state(self) -> dict:
    out = {"neg_cache": {str(q): n.tolist() for q, n in self.neg_cache.items()}}
    if self.first_plan is not None:
      out["first_plan"] = self.first_plan
    return out

  def restore(self, state: dict) -> None:
    state = state or {}
    self.neg_cache = {int(q): np.asarray(n, np.int64)
                      for q, n in state.get("neg_cache", {}).items()}
    self.first_plan = state.get("first_plan")

  def mine(self, state, epoch: int, segment: int) -> dict:
    if self.reuse and self.first_plan is not None:
      logging.info("epoch %d: training on the tuples mined in epoch 1 (cache_refresh_rate = "
                   "queries_per_epoch, as train_reranker.py)", epoch + 1)
      return {**self.first_plan, "skipped_images": 0}
    plan = self._mine(state, epoch, segment)
    if self.reuse:
      self.first_plan = {k: v for k, v in plan.items() if k != "skipped_images"}
    return plan

  def _mine(self, state, epoch: int, segment: int) -> dict:
    variables = retrieval_variables(state.params, state.batch_stats)
    embed = epochs.MiningEmbedder(self.embedder, variables, self.train,
                                  self.objective.mining_output, f"refresh {segment + 1}: ")
    if self.mining.mode.startswith("global") and self.hard_lists is None:
      if self.workdir is None and not self.config.rerank.hard_negatives:
        raise ValueError("global mining needs a run folder or rerank.hard_negatives")
      self.hard_lists = hard_negatives.load_or_compute(
          self.config, self.workdir, self.embedder, variables, self.train,
          check_model=int(state.step) == 0)
    rng = np.random.default_rng([self.config.seed, epoch, segment])
    t = mining.compute_triplets(self.train, embed, rng, self.mining, search, self.neg_cache,
                                self.weights, self.hard_lists)
    return {"queries": t.queries.tolist(), "positives": t.positives.tolist(),
            "negatives": t.negatives.tolist(), "skipped_images": embed.skipped}

  def batches(self, plan: dict, epoch: int, segment: int):
    del epoch, segment
    items = np.concatenate([np.asarray(plan["queries"])[:, None],
                            np.asarray(plan["positives"])[:, None],
                            np.asarray(plan["negatives"])], axis=1)
    steps = len(items) // self.items_per_step
    plan_steps = items[:steps * self.items_per_step].reshape(steps, self.items_per_step, -1)
    local = loader.local_items(plan_steps, jax.process_index(), jax.process_count())
    local_batch = self.items_per_step // jax.process_count()
    return iter(loader.tuple_dataset(self.train.places, local, local_batch, self.options)), steps
