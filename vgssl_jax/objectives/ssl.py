"""The six SSL objectives of VG-SSL on GeoPair batches, one class each: view making, heads,
extra state.

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

from vgssl_jax.config import base_config
from vgssl_jax.errors import ConfigError
from vgssl_jax.models.heads import Predictor, projector_layout
from vgssl_jax.models.layers import l2_normalize
from vgssl_jax.models.network import GeoLocalizationNet
from vgssl_jax.objectives import losses
from vgssl_jax.objectives.base import Objective, dropout_rngs, ema
from vgssl_jax.objectives.views import ViewConfig, make_views

_PROJECTOR = ("model.n_layers", "model.projection_size")


_LOSS = base_config().loss  # the defaults, written once in the schema


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The `loss` section of a config (vgssl_jax/config.py has each key's meaning)."""
  sim_coeff: float = _LOSS.sim_coeff          # VICReg
  std_coeff: float = _LOSS.std_coeff
  cov_coeff: float = _LOSS.cov_coeff
  lambd: float = _LOSS.lambd                  # Barlow Twins
  temperature: float = _LOSS.temperature      # SimCLR and MoCo (hard-coded in the original)
  momentum: float = _LOSS.momentum            # BYOL target EMA tau (constant)
  moco_momentum: float = _LOSS.moco_momentum  # MoCo key-encoder EMA
  queue_size: int = _LOSS.queue_size          # MoCo queue length K

  @classmethod
  def from_config(cls, loss_section) -> "LossConfig":
    fields = {f.name for f in dataclasses.fields(cls)}  # the SSL keys of the section
    return cls(**{k: v for k, v in loss_section.to_dict().items() if k in fields})


class TwoViews(Objective):
  """The online network on both views, then `objective` of the two projections."""
  mining_output = "projection"  # the original mines in the projector's space
  projector_family = "vicreg"   # models.heads.projector_layout family of its network
  keys = _PROJECTOR

  def __init__(self, name: str, model: GeoLocalizationNet, loss_config: LossConfig,
               views: ViewConfig):
    super().__init__(name, model)
    self.loss_config, self.views = loss_config, views

  @classmethod
  def from_config(cls, name: str, model: GeoLocalizationNet, config) -> "TwoViews":
    return cls(name, model, LossConfig.from_config(config.loss), ViewConfig.from_config(config))

  @classmethod
  def check_config(cls, config, purpose: str = "train") -> None:
    try:
      projector_layout(cls.projector_family, config.model.n_layers)
    except ValueError as e:
      raise ConfigError(f"{e} (model.n_layers, method={config.method})") from None

  @property
  def projection_dim(self) -> int:
    return self.model.projection_dim

  def objective(self, z1: jax.Array, z2: jax.Array) -> jax.Array:
    raise NotImplementedError

  def _net(self, params, batch_stats, images, rngs):
    """Train-mode forward of the network: (projection, updated batch stats); `rngs` from
    base.dropout_rngs."""
    out, updates = self.model.apply({"params": params, "batch_stats": batch_stats}, images,
                                    train=True, mutable=["batch_stats"], rngs=rngs)
    return out["projection"], updates.get("batch_stats", batch_stats)

  def loss(self, params: dict, batch_stats: dict, objective_state: dict, batch: dict,
           key: jax.Array) -> tuple[jax.Array, tuple[dict, dict]]:
    """Loss of one step (views made from the uint8 `batch` with `key`) and the updated
    (batch_stats, objective_state)."""
    view1, view2 = make_views(key, batch, self.views, self.model.dtype)
    return self.view_loss(params, batch_stats, objective_state, view1, view2, key)

  def view_loss(self, params: dict, batch_stats: dict, objective_state: dict, view1: jax.Array,
                view2: jax.Array, key: jax.Array) -> tuple[jax.Array, tuple[dict, dict]]:
    """The loss of two views; `key` gives each network pass its dropout (dropout_rngs)."""
    z1, stats = self._net(params["net"], batch_stats["net"], view1, dropout_rngs(key, 0))
    z2, stats = self._net(params["net"], stats, view2, dropout_rngs(key, 1))
    return self.objective(z1, z2), ({"net": stats}, objective_state)


class VICReg(TwoViews):
  keys = ("loss.sim_coeff", "loss.std_coeff", "loss.cov_coeff", *_PROJECTOR)

  def objective(self, z1, z2):
    c = self.loss_config
    return losses.vicreg_loss(z1, z2, c.sim_coeff, c.std_coeff, c.cov_coeff)


class BarlowTwins(TwoViews):
  keys = ("loss.lambd", *_PROJECTOR)

  def objective(self, z1, z2):
    return losses.barlow_twins_loss(z1, z2, self.loss_config.lambd)


class SimCLR(TwoViews):
  projector_family = "contrastive"
  keys = ("loss.temperature", *_PROJECTOR)

  def objective(self, z1, z2):
    return losses.info_nce_loss(z1, z2, self.loss_config.temperature)


class _Predicting(TwoViews):
  """BYOL and SimSiam: the predictor on the online projections, regressed onto the
  projections of a target (`_targets`). The target runs in train mode."""
  projector_family = "byol"

  @property
  def predictor(self) -> Predictor:
    return Predictor(self.projection_dim, dtype=self.model.dtype)

  def init(self, key, image_size):
    net_key, pred_key = jax.random.split(key)
    params, batch_stats, _ = super().init(net_key, image_size)
    pred = self.predictor.init(pred_key, jnp.zeros((2, self.projection_dim)), train=False)
    params["predictor"], batch_stats["predictor"] = pred["params"], pred["batch_stats"]
    return params, batch_stats, self._initial_state(params, batch_stats)

  def _initial_state(self, params: dict, batch_stats: dict) -> dict:
    del params, batch_stats
    return {}

  def _targets(self, params, net_stats, objective_state, view1, view2, key):
    """(t1, t2, net_stats, objective_state) of the two views (the passes' dropout from
    `key`, calls 2 and 3)."""
    raise NotImplementedError

  def _predict(self, params, batch_stats, z):
    out, updates = self.predictor.apply({"params": params, "batch_stats": batch_stats}, z,
                                        train=True, mutable=["batch_stats"])
    return out, updates.get("batch_stats", batch_stats)

  def view_loss(self, params, batch_stats, objective_state, view1, view2, key):
    z1, net_stats = self._net(params["net"], batch_stats["net"], view1, dropout_rngs(key, 0))
    z2, net_stats = self._net(params["net"], net_stats, view2, dropout_rngs(key, 1))
    p1, pred_stats = self._predict(params["predictor"], batch_stats["predictor"], z1)
    p2, pred_stats = self._predict(params["predictor"], pred_stats, z2)
    t1, t2, net_stats, objective_state = self._targets(params, net_stats, objective_state,
                                                       view1, view2, key)
    loss = losses.byol_loss(p1, p2, t1, t2)  # targets under stop-gradient inside
    return loss, ({"net": net_stats, "predictor": pred_stats}, objective_state)


class BYOL(_Predicting):
  """The target is an EMA of the online network (tau = loss.momentum), with its own BN
  buffers that its train-mode passes update and nothing reads."""
  keys = ("loss.momentum", *_PROJECTOR)

  def _initial_state(self, params, batch_stats):
    # the target starts as an exact copy of the online network
    return {"target": {"params": params["net"], "batch_stats": batch_stats["net"]}}

  def _targets(self, params, net_stats, objective_state, view1, view2, key):
    target = objective_state["target"]
    t1, target_stats = self._net(target["params"], target["batch_stats"], view1,
                                 dropout_rngs(key, 2))
    t2, target_stats = self._net(target["params"], target_stats, view2, dropout_rngs(key, 3))
    return t1, t2, net_stats, {"target": {"params": target["params"],
                                          "batch_stats": target_stats}}

  def after_update(self, objective_state, old_params):
    target = objective_state["target"]
    return {"target": {"params": ema(target["params"], old_params["net"],
                                     self.loss_config.momentum),
                       "batch_stats": target["batch_stats"]}}


class SimSiam(_Predicting):
  """The target is the online network under stop-gradient: a second pass through it,
  whose running statistics are therefore updated four times per step, as the original."""

  def _targets(self, params, net_stats, objective_state, view1, view2, key):
    online = jax.lax.stop_gradient(params["net"])
    t1, net_stats = self._net(online, net_stats, view1, dropout_rngs(key, 2))
    t2, net_stats = self._net(online, net_stats, view2, dropout_rngs(key, 3))
    return t1, t2, net_stats, objective_state


class MoCoV2(TwoViews):
  """MoCo v2: key encoder (EMA, m = 0.999, no shuffle-BN) and a FIFO queue of K keys."""
  projector_family = "contrastive"
  keys = ("loss.temperature", "loss.moco_momentum", "loss.queue_size", *_PROJECTOR)

  @classmethod
  def check_config(cls, config, purpose: str = "train") -> None:
    super().check_config(config, purpose)
    if config.loss.queue_size % config.train.batch_size:
      raise ConfigError(f"loss.queue_size={config.loss.queue_size} is not a multiple of the "
                        f"global batch train.batch_size={config.train.batch_size}: the MoCo "
                        "queue advances by whole batches. Use e.g. a power of two for both.")

  def init(self, key, image_size):
    net_key, queue_key = jax.random.split(key)
    params, batch_stats, _ = super().init(net_key, image_size)
    queue = l2_normalize(jax.random.normal(queue_key, (self.loss_config.queue_size,
                                                       self.projection_dim), jnp.float32))
    return params, batch_stats, {
        "target": {"params": params["net"], "batch_stats": batch_stats["net"]},
        "queue": queue, "queue_ptr": jnp.zeros((), jnp.int32)}

  def view_loss(self, params, batch_stats, objective_state, view1, view2, key):
    z1, net_stats = self._net(params["net"], batch_stats["net"], view1, dropout_rngs(key, 0))
    target = objective_state["target"]
    k, target_stats = self._net(target["params"], target["batch_stats"], view2,
                                dropout_rngs(key, 1))
    q, k = l2_normalize(z1), jax.lax.stop_gradient(l2_normalize(k))
    queue, ptr = objective_state["queue"], objective_state["queue_ptr"]
    loss = losses.moco_loss(q, k, queue, self.loss_config.temperature)
    # enqueue the keys after the logits were made from the current queue (K % N == 0)
    queue = jax.lax.dynamic_update_slice(queue, k.astype(queue.dtype), (ptr, 0))
    ptr = ((ptr + k.shape[0]) % queue.shape[0]).astype(jnp.int32)
    state = {"target": {"params": target["params"], "batch_stats": target_stats},
             "queue": queue, "queue_ptr": ptr}
    return loss, ({"net": net_stats}, state)

  def after_update(self, objective_state, old_params):
    target = objective_state["target"]
    return {**objective_state, "target": {
        "params": ema(target["params"], old_params["net"], self.loss_config.moco_momentum),
        "batch_stats": target["batch_stats"]}}
