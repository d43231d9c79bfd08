"""The supervised objectives of the deep visual geo-localization benchmark, which VG-SSL
trains its baselines and fine-tunes with: triplet margin, SARE-ind and SARE-joint on
(query, best positive, M negatives) tuples (docs/original.md §Supervised training).

The whole batch (B queries, B positives, B * M negatives) goes through the network in one
train-mode forward, so BatchNorm normalises over all of it, as train.py. Queries get the
random query transform (RandomResizedCrop when train.random_resized_crop > 0); with
train.horizontal_flip the whole batch is mirrored or not. The loss is the criterion's sum
over the B * M (q, p*, n_j) terms divided by B * M (losses.supervised_loss).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vgssl_jax.errors import ConfigError
from vgssl_jax.models.inputs import normalize
from vgssl_jax.models.network import GeoLocalizationNet
from vgssl_jax.objectives import losses
from vgssl_jax.objectives.base import Objective, dropout_rngs
from vgssl_jax.objectives.views import ViewConfig, batch_flip, query_transform


class TupleObjective(Objective):
  """A criterion (`criterion`: losses.SUPERVISED's sum over the B * M (q, p*, n_j) terms)
  of one train-mode forward of the batch's tuples."""
  mining_output = "descriptor"  # the benchmark's cache holds the retrieval descriptors
  projector_family = None       # no projector
  criterion = ""                # its name in losses.SUPERVISED

  def __init__(self, name: str, model: GeoLocalizationNet, margin: float, views: ViewConfig):
    super().__init__(name, model)
    self.margin, self.views = margin, views

  @classmethod
  def from_config(cls, name: str, model: GeoLocalizationNet, config) -> "TupleObjective":
    return cls(name, model, config.train.margin, ViewConfig.from_config(config))

  @classmethod
  def check_config(cls, config, purpose: str = "train") -> None:
    del purpose
    if config.train.margin <= 0:
      raise ConfigError(f"train.margin={config.train.margin} must be > 0.")

  def images(self, batch: dict, key: jax.Array) -> jax.Array:
    """[T_q(queries); positives; negatives] normalised, (B (2 + M), H, W, 3)."""
    k_query, k_flip = jax.random.split(key)
    b, m = batch["negatives"].shape[:2]
    images = jnp.concatenate([
        query_transform(k_query, batch["query"], self.views.random_resized_crop),
        batch["positive"].astype(jnp.float32),
        batch["negatives"].reshape(b * m, *batch["negatives"].shape[2:]).astype(jnp.float32)])
    if self.views.horizontal_flip:
      (images,) = batch_flip(k_flip, [images])
    return normalize(images, self.model.dtype)

  def loss(self, params: dict, batch_stats: dict, objective_state: dict, batch: dict,
           key: jax.Array) -> tuple[jax.Array, tuple[dict, dict]]:
    b, m = batch["negatives"].shape[:2]
    out, updates = self.model.apply({"params": params["net"], "batch_stats": batch_stats["net"]},
                                    self.images(batch, key), train=True, project=False,
                                    mutable=["batch_stats"], rngs=dropout_rngs(key))
    d = out["descriptor"]
    loss = losses.supervised_loss(self.criterion, d[:b], d[b:2 * b],
                                  d[2 * b:].reshape(b, m, -1), self.margin)
    return loss, ({"net": updates.get("batch_stats", batch_stats["net"])}, objective_state)


class Triplet(TupleObjective):
  criterion = "triplet"
  keys = ("train.margin",)


class SareInd(TupleObjective):
  criterion = "sare_ind"

  @classmethod
  def check_config(cls, config, purpose: str = "train") -> None:
    del config, purpose  # no margin


class SareJoint(SareInd):
  criterion = "sare_joint"
