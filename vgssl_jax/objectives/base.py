"""What the generic train step needs from a training objective.

An objective owns the network (and any heads, target copies or queues it adds) and turns
one batch of the epoch source (uint8 images, see training.epochs) into a loss. The step
(training.step) differentiates `loss` with respect to the parameters, applies the
optimizer, then calls `after_update`; it knows nothing else about the objective.

Parameters and batch statistics are dicts of groups; the retrieval network is always the
group "net" (what evaluation, mining, checkpoints' exports and fine-tuning read).
"""

from __future__ import annotations

from typing import Any, Protocol

import jax

from vgssl_jax.models.network import GeoLocalizationNet

Tree = Any


class Objective(Protocol):
  name: str
  model: GeoLocalizationNet
  # which network output the epoch source's mining embeds ("projection" for SSL)
  mining_output: str

  def init(self, key: jax.Array, image_size) -> tuple[dict, dict, Tree]:
    """(params, batch_stats, objective_state) at the start of training."""

  def loss(self, params: dict, batch_stats: dict, objective_state: Tree, batch: dict,
           key: jax.Array) -> tuple[jax.Array, tuple[dict, Tree]]:
    """Loss of one (micro-)batch and the updated (batch_stats, objective_state); `key`
    drives the objective's own randomness (augmentation)."""

  def after_update(self, objective_state: Tree, old_params: dict) -> Tree:
    """The objective state after the optimizer step (EMA targets use the pre-step params)."""


def retrieval_variables(params: dict, batch_stats: dict) -> dict:
  """The retrieval network's variables out of a train state's parameter groups."""
  return {"params": params["net"], "batch_stats": batch_stats["net"]}


def ema(target, online, m: float):
  """target <- m * target + (1 - m) * online, leaf by leaf (parameters only)."""
  return jax.tree.map(lambda t, o: m * t + (1.0 - m) * o, target, online)
