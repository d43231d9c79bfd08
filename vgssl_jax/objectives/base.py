"""What the trainer and the generic train step need from a training objective.

The config key `method` names an objective (objectives.registry). An objective owns the
network (and any heads, target copies or queues it adds) and turns one batch of its epoch
source (uint8 images, see training.epochs) into a loss. The step (training.step)
differentiates `loss` with respect to the parameters, applies the optimizer, then calls
`after_update`; the loop reads the class attributes below. Nothing else about an
objective is known outside its module.

Parameters and batch statistics are dicts of groups; the retrieval network is always the
group "net" (what evaluation, mining, checkpoints' exports and fine-tuning read). What an
objective keeps besides the parameters (EMA targets, MoCo's queue) is its objective state.
"""

from __future__ import annotations

from typing import Any

import jax

from vgssl_jax.models.network import GeoLocalizationNet, init_variables

Tree = Any


class Objective:
  """The base of every objective; subclasses call this constructor and implement `loss`."""
  # which network output the epoch source's mining embeds ("projection" for SSL)
  mining_output: str = "descriptor"
  # parameter paths under "net" the step leaves unchanged (e.g. a frozen global network)
  frozen: tuple[str, ...] = ()
  # an epoch that is one cache refresh of all its queries reuses the first epoch's tuples
  reuse_mining: bool = False
  # config keys (or sections, "rerank.") only this objective reads
  keys: tuple[str, ...] = ()

  def __init__(self, name: str, model: GeoLocalizationNet):
    self.name, self.model = name, model

  @classmethod
  def check_config(cls, config, purpose: str = "train") -> None:
    """ConfigError naming the setting when this objective cannot run with `config`."""
    del config, purpose

  def init(self, key: jax.Array, image_size) -> tuple[dict, dict, Tree]:
    """(params, batch_stats, objective_state) at the start of training."""
    variables = init_variables(self.model, key, image_size)
    return {"net": variables["params"]}, {"net": variables["batch_stats"]}, {}

  def loss(self, params: dict, batch_stats: dict, objective_state: Tree, batch: dict,
           key: jax.Array) -> tuple[jax.Array, tuple[dict, Tree]]:
    """Loss of one (micro-)batch and the updated (batch_stats, objective_state); `key`
    drives the objective's own randomness (augmentation). An objective may add a third
    element to that pair: {name: scalar} metrics of the batch, averaged into the metric
    lines (the multi-similarity objective's batch_acc)."""
    raise NotImplementedError

  def after_update(self, objective_state: Tree, old_params: dict) -> Tree:
    """The objective state after the optimizer step (EMA targets use the pre-step params)."""
    del old_params
    return objective_state


# a stream of the step's key of its own: the network's dropout (SALAD's MLPs) draws from it,
# leaving the augmentation's draws as they are
_DROPOUT_STREAM = 0x5A1AD


def dropout_rngs(key: jax.Array, call: int = 0) -> dict:
  """The `rngs` of train-mode forward number `call` of a step whose key is `key` (every
  pass through the network draws its own dropout masks)."""
  return {"dropout": jax.random.fold_in(jax.random.fold_in(key, _DROPOUT_STREAM), call)}


def retrieval_variables(params: dict, batch_stats: dict) -> dict:
  """The retrieval network's variables out of a train state's parameter groups."""
  return {"params": params["net"], "batch_stats": batch_stats["net"]}


def ema(target, online, m: float):
  """target <- m * target + (1 - m) * online, leaf by leaf (parameters only)."""
  return jax.tree.map(lambda t, o: m * t + (1.0 - m) * o, target, online)
