"""The six SSL objectives of VG-SSL on GeoPair batches: view making, heads, extra state.

Parameters are grouped as {"net": GeoLocalizationNet, "predictor": ...} (the predictor only
for BYOL/SimSiam), batch statistics likewise. Each view goes through its own `apply`
call, so BatchNorm normalises per view, and running statistics are threaded through
the calls in the original's order (docs/original.md §SSL wrappers):

  VICReg / BT / SimCLR: online(X), online(Y)
  BYOL / SimSiam:       online(X), online(Y), predictor(X), predictor(Y), target(X), target(Y)
  MoCo v2:              online(X), key encoder(Y)

Update order of a step (docs/original.md §Update order): loss at (theta, xi) with MoCo's
enqueue of keys made by xi; then xi <- m xi + (1 - m) theta with the *pre-step* theta;
then Adam on theta.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vgssl_jax.models.heads import Predictor
from vgssl_jax.models.inputs import normalize
from vgssl_jax.models.layers import l2_normalize
from vgssl_jax.models.network import GeoLocalizationNet, init_variables
from vgssl_jax.objectives import losses
from vgssl_jax.objectives.base import ema
from vgssl_jax.training import augment


@dataclasses.dataclass(frozen=True)
class ViewConfig:
  """The random query transform of the original (RandomResizedCrop with scale (1 - r, 1)
  when r > 0) and its whole-batch horizontal flip."""
  random_resized_crop: float = 0.0
  horizontal_flip: bool = False


def make_views(key: jax.Array, batch: dict, views: ViewConfig, dtype) -> tuple[jax.Array,
                                                                               jax.Array]:
  """uint8 GeoPair batch -> the two normalised views (docs/original.md §Batches).

  view 1 = [T_q(queries); T_q(negatives)], view 2 = [positives; T_q'(negatives)]: the query
  and both negative views get independent random query transforms, the positive none.
  Then the whole step is mirrored or not (one coin for all images).
  """
  r = views.random_resized_crop
  k_query, k_neg1, k_neg2, k_flip = jax.random.split(key, 4)
  view1 = [augment.query_transform(k_query, batch["query"], r)]
  view2 = [batch["positive"].astype(jnp.float32)]
  if "negative" in batch:
    view1.append(augment.query_transform(k_neg1, batch["negative"], r))
    view2.append(augment.query_transform(k_neg2, batch["negative"], r))
  view1, view2 = jnp.concatenate(view1), jnp.concatenate(view2)
  if views.horizontal_flip:
    view1, view2 = augment.batch_flip(k_flip, [view1, view2])
  return normalize(view1, dtype), normalize(view2, dtype)


@dataclasses.dataclass(frozen=True)
class LossConfig:
  sim_coeff: float = 25.0        # VICReg
  std_coeff: float = 25.0
  cov_coeff: float = 1.0
  lambd: float = 0.0051          # Barlow Twins
  temperature: float = 0.07      # SimCLR and MoCo (hard-coded in the original)
  momentum: float = 0.99         # BYOL target EMA tau (constant)
  moco_momentum: float = 0.999   # MoCo key-encoder EMA (the original ignores --momentum)
  queue_size: int = 65536        # MoCo queue length K


class SSLObjective:
  """Online network on both views, then a loss of the two projections (VICReg, BT, SimCLR).

  Subclasses add the BYOL/SimSiam predictor and target, and MoCo's key encoder and queue.
  """
  mining_output = "projection"  # the original mines in the projector's space

  def __init__(self, name: str, model: GeoLocalizationNet, loss_config: LossConfig,
               views: ViewConfig = ViewConfig()):
    self.name, self.model, self.loss_config, self.views = name, model, loss_config, views

  @classmethod
  def from_config(cls, name: str, model: GeoLocalizationNet, config) -> "SSLObjective":
    return cls(name, model, LossConfig(**config.loss.to_dict()),
               ViewConfig(config.train.random_resized_crop, config.train.horizontal_flip))

  @property
  def projection_dim(self) -> int:
    return self.model.projection_dim

  def init(self, key: jax.Array, image_size) -> tuple[dict, dict, dict]:
    """(params, batch_stats, method_state) at the start of training."""
    variables = init_variables(self.model, key, image_size)
    return {"net": variables["params"]}, {"net": variables["batch_stats"]}, {}

  def objective(self, z1: jax.Array, z2: jax.Array) -> jax.Array:
    c = self.loss_config
    if self.name == "vicreg":
      return losses.vicreg_loss(z1, z2, c.sim_coeff, c.std_coeff, c.cov_coeff)
    if self.name == "bt":
      return losses.barlow_twins_loss(z1, z2, c.lambd)
    return losses.info_nce_loss(z1, z2, c.temperature)

  def _net(self, params, batch_stats, images):
    """Train-mode forward of the network: (projection, updated batch stats)."""
    out, updates = self.model.apply({"params": params, "batch_stats": batch_stats}, images,
                                    train=True, mutable=["batch_stats"])
    return out["projection"], updates.get("batch_stats", batch_stats)

  def loss(self, params: dict, batch_stats: dict, method_state: dict, batch: dict,
           key: jax.Array) -> tuple[jax.Array, tuple[dict, dict]]:
    """Loss of one step (views made from the uint8 `batch` with `key`) and the updated
    (batch_stats, method_state)."""
    view1, view2 = make_views(key, batch, self.views, self.model.dtype)
    return self.view_loss(params, batch_stats, method_state, view1, view2)

  def view_loss(self, params: dict, batch_stats: dict, method_state: dict, view1: jax.Array,
                view2: jax.Array) -> tuple[jax.Array, tuple[dict, dict]]:
    z1, stats = self._net(params["net"], batch_stats["net"], view1)
    z2, stats = self._net(params["net"], stats, view2)
    return self.objective(z1, z2), ({"net": stats}, method_state)

  def after_update(self, method_state: dict, old_params: dict) -> dict:
    """Method state after the optimizer step (EMA targets use the pre-step parameters)."""
    return method_state


class BYOL(SSLObjective):
  """BYOL (EMA target, tau = momentum) and SimSiam (target = online under stop-gradient).

  The target runs in train mode: for BYOL it updates the target's own BN buffers (never
  read); for SimSiam it is a second pass through the online network, whose running
  statistics are therefore updated four times per step, as in the original.
  """

  @property
  def predictor(self) -> Predictor:
    return Predictor(self.projection_dim, dtype=self.model.dtype)

  def init(self, key, image_size):
    net_key, pred_key = jax.random.split(key)
    params, batch_stats, _ = super().init(net_key, image_size)
    pred = self.predictor.init(pred_key, jnp.zeros((2, self.projection_dim)), train=False)
    params["predictor"], batch_stats["predictor"] = pred["params"], pred["batch_stats"]
    if self.name == "simsiam":
      return params, batch_stats, {}
    # the target starts as an exact copy of the online network
    return params, batch_stats, {"target": {"params": params["net"],
                                            "batch_stats": batch_stats["net"]}}

  def _predict(self, params, batch_stats, z):
    out, updates = self.predictor.apply({"params": params, "batch_stats": batch_stats}, z,
                                        train=True, mutable=["batch_stats"])
    return out, updates.get("batch_stats", batch_stats)

  def view_loss(self, params, batch_stats, method_state, view1, view2):
    z1, net_stats = self._net(params["net"], batch_stats["net"], view1)
    z2, net_stats = self._net(params["net"], net_stats, view2)
    p1, pred_stats = self._predict(params["predictor"], batch_stats["predictor"], z1)
    p2, pred_stats = self._predict(params["predictor"], pred_stats, z2)
    if self.name == "simsiam":
      online = jax.lax.stop_gradient(params["net"])
      t1, net_stats = self._net(online, net_stats, view1)
      t2, net_stats = self._net(online, net_stats, view2)
    else:
      target = method_state["target"]
      t1, target_stats = self._net(target["params"], target["batch_stats"], view1)
      t2, target_stats = self._net(target["params"], target_stats, view2)
      method_state = {"target": {"params": target["params"], "batch_stats": target_stats}}
    loss = losses.byol_loss(p1, p2, t1, t2)  # targets under stop-gradient inside
    return loss, ({"net": net_stats, "predictor": pred_stats}, method_state)

  def after_update(self, method_state, old_params):
    if self.name == "simsiam":
      return method_state
    target = method_state["target"]
    return {"target": {"params": ema(target["params"], old_params["net"],
                                     self.loss_config.momentum),
                       "batch_stats": target["batch_stats"]}}


class MoCo(SSLObjective):
  """MoCo v2: key encoder (EMA, m = 0.999, no shuffle-BN) and a FIFO queue of K keys."""

  def init(self, key, image_size):
    net_key, queue_key = jax.random.split(key)
    params, batch_stats, _ = super().init(net_key, image_size)
    queue = l2_normalize(jax.random.normal(queue_key, (self.loss_config.queue_size,
                                                       self.projection_dim), jnp.float32))
    return params, batch_stats, {
        "target": {"params": params["net"], "batch_stats": batch_stats["net"]},
        "queue": queue, "queue_ptr": jnp.zeros((), jnp.int32)}

  def view_loss(self, params, batch_stats, method_state, view1, view2):
    z1, net_stats = self._net(params["net"], batch_stats["net"], view1)
    target = method_state["target"]
    k, target_stats = self._net(target["params"], target["batch_stats"], view2)
    q, k = l2_normalize(z1), jax.lax.stop_gradient(l2_normalize(k))
    queue, ptr = method_state["queue"], method_state["queue_ptr"]
    loss = losses.moco_loss(q, k, queue, self.loss_config.temperature)
    # enqueue the keys after the logits were made from the current queue (K % N == 0)
    queue = jax.lax.dynamic_update_slice(queue, k.astype(queue.dtype), (ptr, 0))
    ptr = ((ptr + k.shape[0]) % queue.shape[0]).astype(jnp.int32)
    state = {"target": {"params": target["params"], "batch_stats": target_stats},
             "queue": queue, "queue_ptr": ptr}
    return loss, ({"net": net_stats}, state)

  def after_update(self, method_state, old_params):
    target = method_state["target"]
    return {**method_state, "target": {
        "params": ema(target["params"], old_params["net"], self.loss_config.moco_momentum),
        "batch_stats": target["batch_stats"]}}
