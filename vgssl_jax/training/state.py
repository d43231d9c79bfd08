"""The train state: everything that changes during training, as one pytree."""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from vgssl_jax import sharding
from vgssl_jax.objectives.base import Objective


@flax.struct.dataclass
class TrainState:
  """One pytree to jit, shard and checkpoint."""
  step: jax.Array          # int32 scalar
  params: Any              # {"net": ..., ["predictor": ...]}
  batch_stats: Any
  opt_state: Any
  objective_state: Any     # EMA target, MoCo queue, ... ({} for VICReg)
  rng: jax.Array           # uint32[2]; the step's key is fold_in(rng, step)


def _init_fn(objective: Objective, tx: optax.GradientTransformation, seed: int, image_size):
  def init():
    key = jax.random.PRNGKey(seed)
    init_key, rng = jax.random.split(key)
    params, batch_stats, objective_state = objective.init(init_key, image_size)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), objective_state=objective_state, rng=rng)
  return init


def create_train_state(objective: Objective, tx: optax.GradientTransformation, seed: int,
                       image_size, mesh: Mesh) -> TrainState:
  """Initialises the state directly replicated on the mesh."""
  return jax.jit(_init_fn(objective, tx, seed, image_size),
                 out_shardings=sharding.replicated(mesh))()


def abstract_train_state(objective: Objective, tx: optax.GradientTransformation, image_size,
                         mesh: Mesh) -> TrainState:
  """Shapes, dtypes and shardings of the state, without computing it (to restore into)."""
  shapes = jax.eval_shape(_init_fn(objective, tx, 0, image_size))
  placed = sharding.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=placed), shapes)
