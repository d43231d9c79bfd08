"""The stage-1 epoch source: GeoPair mining with the current model, then pair batches.

Per epoch (one segment): sample queries, embed them and their candidates in eval mode
(the mining output of the objective, the projector's for SSL), pick each query's nearest
positive (and negatives), plan the epoch's batches, load them with grain.
"""

from __future__ import annotations

import jax
import numpy as np

from data_pipelines import loader, mining
from data_pipelines.places import TrainPlaces
from vgssl_jax import data_config
from vgssl_jax.errors import ConfigError, check_choice
from vgssl_jax.evaluation import search
from vgssl_jax.evaluation.embedder import Embedder
from vgssl_jax.objectives.base import Objective, retrieval_variables
from vgssl_jax.training import epochs


def mining_config(config) -> mining.MiningConfig:
  tc = config.train
  return mining.MiningConfig(tc.queries_per_epoch, tc.mining, tc.neg_samples_num,
                             tc.negs_num_per_query, tc.pair_negative)


class GeoPairSource(epochs.LabelledPlacesSource):
  """GeoPairs of `train_places` for `objective`; see the module docstring."""
  keys = ("train.pair_negative",)

  @classmethod
  def check_config(cls, config) -> None:
    t = config.train
    check_choice("train.mining", t.mining, mining.MINING_MODES)
    if t.neg_samples_num < 0 or t.negs_num_per_query < 0:
      raise ConfigError("train.neg_samples_num and train.negs_num_per_query must be >= 0.")
    if t.neg_samples_num > 0 and t.negs_num_per_query < 1 and (t.pair_negative or
                                                               t.mining != "random"):
      raise ConfigError("train.negs_num_per_query must be >= 1 when negatives are mined "
                        "(train.neg_samples_num > 0).")
    if t.pair_negative and t.neg_samples_num > 0 and t.batch_size % 2:
      raise ConfigError(f"train.batch_size={t.batch_size} must be even with "
                        "train.pair_negative: each item carries a query pair and a negative "
                        "pair, so a step holds batch_size / 2 items.")
    if (t.mining == "partial" and t.neg_samples_num > 0
        and t.negs_num_per_query > t.neg_samples_num):
      raise ConfigError(f"train.negs_num_per_query={t.negs_num_per_query} is larger than the "
                        f"partial-mining pool train.neg_samples_num={t.neg_samples_num}.")

  @classmethod
  def steps_items(cls, config) -> int:
    """With attached negatives each item gives two pairs, so the original halves the item
    batch and a step keeps train.batch_size pairs."""
    t = config.train
    return t.batch_size // 2 if t.pair_negative and t.neg_samples_num > 0 else t.batch_size

  def __init__(self, config, objective: Objective, train_places: TrainPlaces,
               embedder: Embedder, workdir: str | None = None):
    del workdir  # GeoPair mining keeps nothing on disk
    self.config, self.objective, self.train = config, objective, train_places
    self.embedder = embedder
    self.mining = mining_config(config)
    self.options = data_config.loader_options(config)
    self.items_per_step = self.steps_items(config)
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
    embed = epochs.MiningEmbedder(self.embedder, retrieval_variables(state.params,
                                                                     state.batch_stats),
                                  self.train, self.objective.mining_output, "mining ")
    rng = np.random.default_rng([self.config.seed, epoch])
    pairs = mining.compute_pairs(self.train, embed, rng, self.mining, search)
    return {**pairs.to_json(), "skipped_images": embed.skipped}

  def batches(self, plan: dict, epoch: int, segment: int):
    del segment
    places = self.train.places
    steps = loader.plan_epoch(mining.GeoPairs.from_json(plan), places.num_queries,
                              self.items_per_step, self.config.seed, epoch)
    items = loader.local_items(steps, jax.process_index(), jax.process_count())
    local_batch = self.items_per_step // jax.process_count()
    return iter(loader.pair_dataset(places, items, local_batch, self.options)), len(steps)
