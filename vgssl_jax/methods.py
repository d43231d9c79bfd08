"""SSL methods: which heads and extra state each needs, and how a step's loss is assembled.

Parameters are grouped as {"net": GeoLocalizationNet, "predictor": ...} (the predictor only
for BYOL/SimSiam), batch statistics likewise. Each view goes through its own `apply`
call, so BatchNorm normalises per view, and running statistics are threaded through
the calls in the original's order (spec §2.5, §10):

  VICReg / BT / SimCLR: online(X), online(Y)
  BYOL / SimSiam:       online(X), online(Y), predictor(X), predictor(Y), target(X), target(Y)
  MoCo v2:              online(X), key encoder(Y)

Update order of a step (spec §2.7): loss at (theta, xi) with MoCo's enqueue of keys made
by xi; then xi <- m xi + (1 - m) theta with the *pre-step* theta; then Adam on theta.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vgssl_jax import losses
from vgssl_jax.models.heads import Predictor
from vgssl_jax.models.layers import l2_normalize
from vgssl_jax.models.network import GeoLocalizationNet, init_variables

METHODS = ("vicreg", "bt", "simclr", "mocov2", "byol", "simsiam")


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


def ema(target, online, m: float):
  """target <- m * target + (1 - m) * online, leaf by leaf (parameters only)."""
  return jax.tree.map(lambda t, o: m * t + (1.0 - m) * o, target, online)


class Method:
  """Online network on both views, then a loss of the two projections (VICReg, BT, SimCLR)."""

  def __init__(self, name: str, model: GeoLocalizationNet, loss_config: LossConfig):
    if name not in METHODS:
      raise ValueError(f"unknown method {name!r}; expected one of {METHODS}")
    self.name, self.model, self.loss_config = name, model, loss_config

  @property
  def projection_dim(self) -> int:
    m = self.model
    return m.projection_size if m.n_layers > 0 else m.fc_output_dim

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
    return out["projection"], updates["batch_stats"]

  def loss(self, params: dict, batch_stats: dict, method_state: dict, view1: jax.Array,
           view2: jax.Array) -> tuple[jax.Array, tuple[dict, dict]]:
    """Loss of one step and the updated (batch_stats, method_state)."""
    z1, stats = self._net(params["net"], batch_stats["net"], view1)
    z2, stats = self._net(params["net"], stats, view2)
    return self.objective(z1, z2), ({"net": stats}, method_state)

  def after_update(self, method_state: dict, old_params: dict) -> dict:
    """Method state after the optimizer step (EMA targets use the pre-step parameters)."""
    return method_state


class BYOL(Method):
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
    return out, updates["batch_stats"]

  def loss(self, params, batch_stats, method_state, view1, view2):
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


class MoCo(Method):
  """MoCo v2: key encoder (EMA, m = 0.999, no shuffle-BN) and a FIFO queue of K keys."""

  def init(self, key, image_size):
    net_key, queue_key = jax.random.split(key)
    params, batch_stats, _ = super().init(net_key, image_size)
    queue = l2_normalize(jax.random.normal(queue_key, (self.loss_config.queue_size,
                                                       self.projection_dim), jnp.float32))
    return params, batch_stats, {
        "target": {"params": params["net"], "batch_stats": batch_stats["net"]},
        "queue": queue, "queue_ptr": jnp.zeros((), jnp.int32)}

  def loss(self, params, batch_stats, method_state, view1, view2):
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


def make_method(name: str, model: GeoLocalizationNet, loss_config: LossConfig) -> Method:
  cls = {"byol": BYOL, "simsiam": BYOL, "mocov2": MoCo}.get(name, Method)
  return cls(name, model, loss_config)


def descriptor_variables(params: dict, batch_stats: dict) -> dict:
  """The retrieval model's variables out of a train state's parameter groups."""
  return {"params": params["net"], "batch_stats": batch_stats["net"]}
