"""SSL methods: which heads and extra state each needs, and how a step's loss is assembled.

Parameters are grouped as {"net": GeoLocalizationNet, "predictor": ...} (the predictor only
for BYOL/SimSiam), batch statistics likewise. Each view goes through its own `apply`
call, so BatchNorm normalises per view, and running statistics are threaded through
the calls in the original's order (spec §2.5, §10).
"""

from __future__ import annotations

import dataclasses

import jax

from vgssl_jax import losses
from vgssl_jax.models.network import GeoLocalizationNet, init_variables

METHODS = ("vicreg", "bt", "simclr")


@dataclasses.dataclass(frozen=True)
class LossConfig:
  sim_coeff: float = 25.0
  std_coeff: float = 25.0
  cov_coeff: float = 1.0
  lambd: float = 0.0051
  temperature: float = 0.07


class Method:
  """Online network on both views, then a loss of the two projections (VICReg, BT, SimCLR)."""

  def __init__(self, name: str, model: GeoLocalizationNet, loss_config: LossConfig):
    if name not in METHODS:
      raise ValueError(f"unknown method {name!r}; expected one of {METHODS}")
    self.name, self.model, self.loss_config = name, model, loss_config

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


def descriptor_variables(params: dict, batch_stats: dict) -> dict:
  """The retrieval model's variables out of a train state's parameter groups."""
  return {"params": params["net"], "batch_stats": batch_stats["net"]}
