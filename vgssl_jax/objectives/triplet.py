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

from vgssl_jax.models.inputs import normalize
from vgssl_jax.models.network import GeoLocalizationNet, init_variables
from vgssl_jax.objectives import losses
from vgssl_jax.objectives.ssl import ViewConfig
from vgssl_jax.training import augment

CRITERIA = tuple(losses.SUPERVISED)


class TupleObjective:
  """`name` is the criterion: triplet | sare_ind | sare_joint."""
  mining_output = "descriptor"  # the benchmark's cache holds the retrieval descriptors
  # True: an epoch that is a single cache refresh reuses the first epoch's tuples
  reuse_mining = False

  def __init__(self, name: str, model: GeoLocalizationNet, margin: float = 0.1,
               views: ViewConfig = ViewConfig()):
    if name not in CRITERIA:
      raise ValueError(f"unknown criterion {name!r}; expected one of {CRITERIA}")
    self.name, self.model, self.margin, self.views = name, model, margin, views

  @classmethod
  def from_config(cls, name: str, model: GeoLocalizationNet, config) -> "TupleObjective":
    return cls(name, model, config.train.margin,
               ViewConfig(config.train.random_resized_crop, config.train.horizontal_flip))

  def init(self, key: jax.Array, image_size) -> tuple[dict, dict, dict]:
    variables = init_variables(self.model, key, image_size)
    return {"net": variables["params"]}, {"net": variables["batch_stats"]}, {}

  def images(self, batch: dict, key: jax.Array) -> jax.Array:
    """[T_q(queries); positives; negatives] normalised, (B (2 + M), H, W, 3)."""
    k_query, k_flip = jax.random.split(key)
    b, m = batch["negatives"].shape[:2]
    images = jnp.concatenate([
        augment.query_transform(k_query, batch["query"], self.views.random_resized_crop),
        batch["positive"].astype(jnp.float32),
        batch["negatives"].reshape(b * m, *batch["negatives"].shape[2:]).astype(jnp.float32)])
    if self.views.horizontal_flip:
      (images,) = augment.batch_flip(k_flip, [images])
    return normalize(images, self.model.dtype)

  def loss(self, params: dict, batch_stats: dict, objective_state: dict, batch: dict,
           key: jax.Array) -> tuple[jax.Array, tuple[dict, dict]]:
    b, m = batch["negatives"].shape[:2]
    out, updates = self.model.apply({"params": params["net"], "batch_stats": batch_stats["net"]},
                                    self.images(batch, key), train=True, project=False,
                                    mutable=["batch_stats"])
    d = out["descriptor"]
    loss = losses.supervised_loss(self.name, d[:b], d[b:2 * b], d[2 * b:].reshape(b, m, -1),
                                  self.margin)
    return loss, ({"net": updates.get("batch_stats", batch_stats["net"])}, objective_state)

  def after_update(self, objective_state: dict, old_params: dict) -> dict:
    return objective_state
