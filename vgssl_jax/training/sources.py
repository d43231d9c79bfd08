"""Epoch sources by name (an objective's `epoch_source`, objectives.registry): where the
batches of each kind of training come from.

Adding a stage's data = its source class (training.epochs.EpochSource) and one entry here.
"""

from __future__ import annotations

from vgssl_jax.objectives.registry import entry
from vgssl_jax.training.geopairs import GeoPairSource
from vgssl_jax.training.place_batches import PlaceSource
from vgssl_jax.training.triplets import TripletSource

EPOCH_SOURCES = {"geopairs": GeoPairSource, "triplets": TripletSource, "places": PlaceSource}


def source_class(config):
  """The epoch source class of `config.method`'s objective."""
  return EPOCH_SOURCES[entry(config.method).epoch_source]
