"""The stage-1 epoch source: GeoPair mining with the current model, then pair batches.

Per epoch (one segment): sample queries, embed them and their candidates in eval mode
(the mining output of the objective, the projector's for SSL), pick each query's nearest
positive (and negatives), plan the epoch's batches, load them with grain.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np

from data_pipelines import loader, mining
from data_pipelines.places import TrainPlaces
from vgssl_jax import config as config_lib
from vgssl_jax import data_config
from vgssl_jax.evaluation import search
from vgssl_jax.evaluation.embedder import Embedder
from vgssl_jax.objectives.base import Objective, retrieval_variables
from vgssl_jax.training import epochs


def mining_config(config) -> mining.MiningConfig:
  tc = config.train
  return mining.MiningConfig(tc.queries_per_epoch, tc.mining, tc.neg_samples_num,
                             tc.negs_num_per_query, tc.pair_negative)


def pairs_to_json(pairs: mining.GeoPairs) -> dict:
  return {k: (None if v is None else np.asarray(v).tolist()) for k, v in vars(pairs).items()}


def pairs_from_json(data: dict) -> mining.GeoPairs:
  fields = {f.name for f in dataclasses.fields(mining.GeoPairs)}
  return mining.GeoPairs(**{k: (None if v is None else np.asarray(v, np.int64))
                            for k, v in data.items() if k in fields})


class GeoPairSource:
  """GeoPairs of `train_places` for `objective`; see the module docstring."""

  def __init__(self, config, objective: Objective, train_places: TrainPlaces,
               embedder: Embedder, workdir: str | None = None):
    del workdir  # GeoPair mining keeps nothing on disk
    self.config, self.objective, self.train = config, objective, train_places
    self.embedder = embedder
    self.mining = mining_config(config)
    self.options = data_config.loader_options(config)
    self.items_per_step = config_lib.items_per_step(config)
    tc = config.train
    if self.mining.uses_negatives and (tc.pair_negative or tc.mining != "random"):
      epochs.check_negatives(train_places, tc.negs_num_per_query)
    pairs = config.train.batch_size
    self.throughput = {"pairs": pairs, "images": 2 * pairs}

  def segments(self, epoch: int) -> int:
    del epoch
    return 1

  def state(self) -> dict:
    return {}  # each epoch's GeoPairs depend on the model and (seed, epoch) only

  def restore(self, state: dict) -> None:
    del state

  def mine(self, state, epoch: int, segment: int) -> dict:
    """This epoch's GeoPairs, mined with the current model (eval mode)."""
    del segment
    places = self.train.places
    variables = retrieval_variables(state.params, state.batch_stats)
    skipped = [0]

    def embed(part, indices):
      feats = self.embedder(variables, places.images(part), indices,
                            output=self.objective.mining_output, desc=f"mining {part}",
                            skip_unreadable=True)
      skipped[0] += int((~np.isfinite(feats).all(axis=1)).sum())
      return feats
    rng = np.random.default_rng([self.config.seed, epoch])
    pairs = mining.compute_pairs(self.train, embed, rng, self.mining, search)
    return {**pairs_to_json(pairs), "skipped_images": skipped[0]}

  def batches(self, plan: dict, epoch: int, segment: int):
    del segment
    places = self.train.places
    steps = loader.plan_epoch(pairs_from_json(plan), places.num_queries, self.items_per_step,
                              self.config.seed, epoch)
    items = loader.local_items(steps, jax.process_index(), jax.process_count())
    local_batch = self.items_per_step // jax.process_count()
    return iter(loader.pair_dataset(places, items, local_batch, self.options)), len(steps)
