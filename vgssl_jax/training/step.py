"""The generic training step: one optimizer step of any objective, jitted and sharded.

The state lives in training.state, the optimizer in training.optimizer, the epoch loop in
training.loop; the objective (objectives/) makes its views and its loss from the batch.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from vgssl_jax import cpu_env, sharding
from vgssl_jax.objectives.base import Objective
from vgssl_jax.training.state import TrainState


def _freeze(updates: dict, frozen: tuple[str, ...]) -> dict:
  """`updates` with zeros for the network's frozen modules, given as paths under "net"
  ("backbone/conv1", "aggregation"; their BatchNorm statistics, which are not parameters,
  still follow the batches in train mode: train.py's behaviour)."""
  if not frozen:
    return updates

  def zero(tree: dict, path: list[str]) -> dict:
    if path[0] not in tree:  # e.g. no projector
      return tree
    inner = (jax.tree.map(jnp.zeros_like, tree[path[0]]) if len(path) == 1
             else zero(tree[path[0]], path[1:]))
    return {**tree, path[0]: inner}
  net = updates["net"]
  for path in frozen:
    net = zero(net, path.split("/"))
  return {**updates, "net": net}


def parameters_without_gradient(loss, params) -> set[tuple]:
  """Key paths of the leaves of `params` that the scalar `loss(params)` does not depend on
  (a liveness pass over its jaxpr): what PyTorch leaves with no .grad, so that its
  optimizers skip them, weight decay included (the R2Former's unused `ratio` and
  `decoder_pos_embed`)."""
  jaxpr = jax.make_jaxpr(loss)(params).jaxpr
  live = {v for v in jaxpr.outvars if isinstance(v, jax_core.Var)}
  for eqn in reversed(jaxpr.eqns):
    if eqn.effects or any(v in live for v in eqn.outvars):
      live.update(v for v in eqn.invars if isinstance(v, jax_core.Var))
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
  return {path for path, var in zip(paths, jaxpr.invars) if var not in live}


def _zero_at(updates, paths: set[tuple]):
  """`updates` with zeros at the given leaf key paths."""
  if not paths:
    return updates
  return jax.tree_util.tree_map_with_path(
      lambda path, u: jnp.zeros_like(u) if path in paths else u, updates)


def train_step(state: TrainState, batch: dict, *, objective: Objective,
               tx: optax.GradientTransformation, accumulate: int = 1,
               frozen: tuple[str, ...] = ()) -> tuple[TrainState, dict]:
  """One optimizer step: the objective's loss and gradients -> optimizer; then the
  objective's state update (EMA targets) with the pre-step parameters.

  With accumulate = k > 1 the global batch is processed as k micro-batches (rows j, j + k,
  ... form micro-batch j, so each stays spread over all devices) whose gradients are
  averaged into one update. Batch statistics (BatchNorm, the VICReg/Barlow moments, SimCLR
  negatives) are then those of a micro-batch: a memory saver, not the same objective.
  """
  key = jax.random.fold_in(state.rng, state.step)
  # parameters the loss never reads get no update, as PyTorch skips those without a gradient
  unused = parameters_without_gradient(
      lambda p: objective.loss(p, state.batch_stats, state.objective_state, batch, key)[0],
      state.params)

  def micro_step(carry, micro):
    grads_sum, batch_stats, objective_state, j = carry
    micro_key = jax.random.fold_in(key, j) if accumulate > 1 else key

    def loss_fn(params):
      return objective.loss(params, batch_stats, objective_state, micro, micro_key)

    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    batch_stats, objective_state = aux[:2]
    extra = aux[2] if len(aux) > 2 else {}  # the objective's own metrics
    grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
    return (grads_sum, batch_stats, objective_state, j + 1), (loss, extra)

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  carry = (zeros, state.batch_stats, state.objective_state, jnp.zeros((), jnp.int32))
  if accumulate == 1:
    (grads, batch_stats, objective_state, _), (loss, extra) = micro_step(carry, batch)
  else:
    micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // accumulate, accumulate,
                                             *x.shape[1:]).swapaxes(0, 1), batch)
    (grads, batch_stats, objective_state, _), (micro_losses, extra) = jax.lax.scan(
        micro_step, carry, micro)
    grads = jax.tree.map(lambda g: g / accumulate, grads)
    loss = jnp.mean(micro_losses)
    extra = jax.tree.map(jnp.mean, extra)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, _zero_at(_freeze(updates, frozen), unused))
  objective_state = objective.after_update(objective_state, state.params)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, objective_state=objective_state)
  return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **extra}


def step_compiler_options(model, platform: str) -> dict | None:
  """XLA options of the step's jit on CPU: the option set the network's backbone family
  names (cpu_env.STEP_OPTIONS: oneDNN's matrix products for bottleneck ResNets, XLA's own
  convolutions for VGG16/AlexNet and CCT), none with the R2Former's attention; None
  otherwise."""
  return cpu_env.train_step_compiler_options(model.cpu_step, platform)


def jit_train_step(objective: Objective, tx: optax.GradientTransformation, mesh: Mesh,
                   accumulate: int = 1, frozen: tuple[str, ...] = ()):
  """The sharded, jitted step: state replicated, batch sharded over "data", state donated.
  `frozen`: module paths under "net" whose parameters stay (models.backbones.frozen_modules,
  an objective's `frozen`)."""
  step = functools.partial(train_step, objective=objective, tx=tx, accumulate=accumulate,
                           frozen=tuple(frozen))
  options = step_compiler_options(objective.model, mesh.devices.flat[0].platform)
  if options:  # XLA cannot serialise oneDNN thunks: this step is compiled in every run
    warnings.filterwarnings(
        "ignore", message="Error writing persistent compilation cache entry for 'jit_train_step'")
  return jax.jit(step, in_shardings=(sharding.replicated(mesh), sharding.data_sharded(mesh)),
                 out_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)),
                 donate_argnums=0, compiler_options=options)
