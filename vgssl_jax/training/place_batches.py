"""The GSV recipes' epoch source: batches of P places x K images from GSV-Cities
(data_pipelines.gsv_cities), for objectives that learn from place labels (`method=ms`).

An epoch is one segment with no mining: every place once, in gsv-cities' order, P per step
(train.batch_size), K images each (data.gsv.img_per_place), resized and RandAugmented on the
host (data.gsv.*). Its plan is only the epoch number: the order and the draws follow from
(seed, epoch), and the grain iterator's state saved with checkpoints resumes mid-epoch with
the very batches. The last places that do not fill a step are left for that epoch (the
original keeps a smaller last batch: one more compilation here for a few places).
"""

from __future__ import annotations

import logging
import os

import jax
import numpy as np

from data_pipelines import gsv_cities, loader, synthetic_gsv
from data_pipelines.randaugment import NUM_BINS, RESAMPLE
from vgssl_jax import data_config
from vgssl_jax.errors import ConfigError, check_choice


def open_gsv(config) -> gsv_cities.GSVCities:
  """The GSV-Cities places data.gsv names (the synthetic world generated on first use)."""
  g = config.data.gsv
  if g.name == synthetic_gsv.NAME:
    synthetic_gsv.ensure_world(config.data.root, g.name, data_config.synthetic_gsv_config(config))
  try:
    data = gsv_cities.load_gsv_cities(os.path.join(config.data.root, g.name), g.cities,
                                      g.min_img_per_place)
  except gsv_cities.GSVCitiesError as e:
    raise ConfigError(str(e)) from None
  logging.info("train: %s; %d places per step x %d images", data, config.train.batch_size,
               g.img_per_place)
  return data


def plan_items(data: gsv_cities.GSVCities, places_per_step: int, k: int, seed: int,
               epoch: int) -> np.ndarray:
  """(steps, P, 2 + K) rows (draw id, place label, K image indices) of one epoch."""
  rng = np.random.default_rng([seed, epoch, 11])
  order = data.epoch_places(rng)
  steps = len(order) // places_per_step
  order = order[:steps * places_per_step]
  rows = np.empty((len(order), 2 + k), np.int64)
  rows[:, 0] = np.arange(len(order))
  rows[:, 1] = order
  for r, place in enumerate(order):
    rows[r, 2:] = data.sample_images(int(place), k, rng)
  return rows.reshape(steps, places_per_step, 2 + k)


class PlaceSource:
  """P x K place batches of GSV-Cities; see the module docstring."""
  keys = ("data.gsv.",)

  @classmethod
  def check_config(cls, config) -> None:
    g = config.data.gsv
    check_choice("data.gsv.interpolation", g.interpolation, tuple(RESAMPLE))
    if g.img_per_place < 2:
      raise ConfigError(f"data.gsv.img_per_place={g.img_per_place}: a place needs at least 2 "
                        "images per step to give positive pairs (the recipes use 4).")
    if g.min_img_per_place < 1:
      raise ConfigError(f"data.gsv.min_img_per_place={g.min_img_per_place} must be >= 1.")
    if not 0 <= g.randaugment_magnitude < NUM_BINS or g.randaugment_ops < 0:
      raise ConfigError(f"data.gsv.randaugment_magnitude={g.randaugment_magnitude} must be in "
                        f"0..{NUM_BINS - 1} and data.gsv.randaugment_ops="
                        f"{g.randaugment_ops} >= 0.")
    if config.train.batch_size < 2:
      raise ConfigError(f"train.batch_size={config.train.batch_size}: places per step must be "
                        ">= 2 (negatives come from the other places of the batch).")

  @classmethod
  def steps_items(cls, config) -> int:
    return config.train.batch_size  # places

  open_train = staticmethod(open_gsv)

  def __init__(self, config, objective, train_data: gsv_cities.GSVCities, embedder,
               workdir: str | None = None):
    del objective, embedder, workdir  # nothing is mined
    self.config, self.data = config, train_data
    g = config.data.gsv
    self.k = g.img_per_place
    self.items_per_step = config.train.batch_size
    self.options = data_config.loader_options(config)
    self.augment = loader.Augment(tuple(config.data.image_size), g.interpolation,
                                  g.randaugment_ops, g.randaugment_magnitude)
    self.throughput = {"places": self.items_per_step, "images": self.items_per_step * self.k}
    if train_data is not None and train_data.num_places < self.items_per_step:
      raise ConfigError(f"train.batch_size={self.items_per_step} places per step, but {train_data}"
                        f" has only {train_data.num_places}: lower train.batch_size.")

  @property
  def image_pool(self):
    return self.data

  def segments(self, epoch: int) -> int:
    del epoch
    return 1

  def state(self) -> dict:
    return {}

  def restore(self, state: dict) -> None:
    del state

  def mine(self, state, epoch: int, segment: int) -> dict:
    del state, segment
    return {"epoch": epoch}  # the plan follows from (seed, epoch)

  def batches(self, plan: dict, epoch: int, segment: int):
    del plan, segment
    steps = plan_items(self.data, self.items_per_step, self.k, self.config.seed, epoch)
    items = loader.local_items(steps, jax.process_index(), jax.process_count())
    local_batch = self.items_per_step // jax.process_count()
    dataset = loader.place_dataset(self.data.images(), items, local_batch, self.augment,
                                   self.config.seed, epoch, self.options)
    return iter(dataset), len(steps)
