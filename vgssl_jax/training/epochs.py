"""What the generic loop needs from a stage's data: an epoch source.

An epoch is one or more segments; each segment is mined with the current model (GeoPair
mining for the SSL objectives: one segment per epoch; the cache refreshes of triplet
mining: several), which gives a plan, and the plan gives the segment's batches. A plan is
JSON-able: checkpoints save it with the batch iterator's state, so a resumed run
continues the very segment it was in (training.loop).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Protocol

import numpy as np

from data_pipelines import mining
from data_pipelines.places import TrainPlaces
from vgssl_jax import data_config
from vgssl_jax.errors import ConfigError


class BatchIterator(Protocol, Iterator[dict]):
  """A grain iterator: next() -> host batch (NumPy pytree, this process's rows)."""

  def get_state(self) -> Any: ...
  def set_state(self, state: Any) -> None: ...


class EpochSource(Protocol):
  items_per_step: int           # global items (dataset rows) per optimizer step
  throughput: dict[str, int]    # per step, for the metric lines: e.g. {"pairs": 64, "images": 128}
  keys: tuple[str, ...]         # config keys only sources of this kind read

  @classmethod
  def check_config(cls, config) -> None:
    """ConfigError naming the setting when the source cannot run with `config` (before
    any data is opened)."""

  @classmethod
  def steps_items(cls, config) -> int:
    """Global items per optimizer step under `config` (what the mesh and gradient
    accumulation divide)."""

  @staticmethod
  def open_train(config) -> Any:
    """The training data this kind of source reads (opened and checked before any model
    work), passed to the constructor."""

  @property
  def image_pool(self) -> Any:
    """Training images for a data-driven initialisation (NetVLAD's k-means): an object
    with num_database, num_queries and images(part)."""

  def segments(self, epoch: int) -> int:
    """How many mined segments epoch `epoch` (0-based) has."""

  def state(self) -> dict:
    """What the source carries from segment to segment (JSON-able; saved with checkpoints),
    e.g. triplet mining's cache of each query's previous negatives."""

  def restore(self, state: dict) -> None:
    """Takes back a state() of a checkpoint."""

  def mine(self, state, epoch: int, segment: int) -> dict:
    """The plan of one segment, mined with the train state's current model. Its
    "skipped_images" entry (if any) counts the unreadable images mining left out."""

  def batches(self, plan: dict, epoch: int, segment: int) -> tuple[BatchIterator, int]:
    """The segment's batches in order (each with "skipped": unreadable images replaced)
    and how many steps they make."""


def open_train_places(config) -> TrainPlaces:
  """The training split of data.name with its positives (GeoPair and triplet sources)."""
  tc = config.train
  train = TrainPlaces.build(data_config.open_split(config, config.data.name, "train"),
                            tc.positive_radius, tc.negative_radius)
  logging.info("train: %s (%d queries with a %g m positive, %d dropped)", train.places,
               len(train.query_ids), tc.positive_radius, train.dropped)
  return train


class LabelledPlacesSource:
  """What the sources over a `@` training split share: how they open it."""
  open_train = staticmethod(open_train_places)

  @property
  def image_pool(self):
    return self.train.places


def check_negatives(train: TrainPlaces, m: int) -> None:
  """ConfigError before any work unless every training query can get `m` negatives: the
  database images outside its soft positives (a mining pool draws from those)."""
  sure = mining.negatives_available(train)
  if m <= sure:
    return
  places = train.places
  soft = int(train.soft_positives.counts.max(initial=0))
  raise ConfigError(f"train.negs_num_per_query={m}: each query needs {m} negatives outside its "
                    f"soft positives, but the {places.num_database} database images of "
                    f"{places.name}/{places.split} leave only {max(sure, 0)} for a query with "
                    f"{soft} soft positives (within train.negative_radius); lower "
                    f"train.negs_num_per_query to at most {max(sure, 0)}.")


class MiningEmbedder:
  """What mining embeds with the current model: the objective's mining output of images
  of the training split, unreadable ones as NaN rows, counted in `skipped`."""

  def __init__(self, embedder, variables: dict, train: TrainPlaces, output: str, label: str):
    self.embedder, self.variables, self.train = embedder, variables, train
    self.output, self.label = output, label
    self.skipped = 0

  def __call__(self, part: str, indices) -> np.ndarray:
    feats = self.embedder(self.variables, self.train.places.images(part), indices,
                          output=self.output, desc=f"{self.label}{part}", skip_unreadable=True)
    self.skipped += int((~np.isfinite(feats).all(axis=1)).sum())
    return feats
