"""Stage-1 training step: the train state, the optimizer and its schedule, the jitted step.

The epoch loop (mining, data, checkpoints, resume) is in vgssl_jax.trainer.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from data_pipelines import augment, mining
from vgssl_jax import parallel
from vgssl_jax.methods import Method


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, as one pytree (jit, shard, checkpoint)."""
  step: jax.Array          # int32 scalar
  params: Any              # {"net": ..., ["predictor": ...]}
  batch_stats: Any
  opt_state: Any
  method_state: Any        # EMA target, MoCo queue, ... ({} for VICReg)
  rng: jax.Array           # uint32[2]; the step's key is fold_in(rng, step)


def make_optimizer(lr: float) -> optax.GradientTransformation:
  """Adam as the original (betas 0.9/0.999, eps 1e-8, no weight decay).

  The learning rate is a value in the optimizer state (inject_hyperparams), so the loop
  can set it per epoch (`with_lr`) without recompiling the step.
  """
  return optax.inject_hyperparams(optax.adam)(learning_rate=lr)


def with_lr(state: "TrainState", lr: float) -> "TrainState":
  """The state with the learning rate set to `lr`: a float32 array placed like the old one,
  so the step sees the same input types and shardings and is not compiled again."""
  opt = state.opt_state
  old = opt.hyperparams["learning_rate"]
  hyper = {**opt.hyperparams,
           "learning_rate": jax.device_put(jnp.asarray(lr, jnp.float32), old.sharding)}
  return state.replace(opt_state=opt._replace(hyperparams=hyper))


def epoch_lr(lr: float, epoch: int, epochs: int, schedule: str = "constant",
             warmup_epochs: int = 0) -> float:
  """The original's learning rate of an epoch (spec §5): constant, or with --cosine_scheduler
  lr * (0.1 (1 - a) + a), a = epoch / warmup, during warm-up, then lr * (1 + cos(pi * epoch /
  epochs)) / 2, piecewise constant per epoch."""
  if schedule == "constant":
    return lr
  if schedule != "cosine":
    raise ValueError(f"unknown lr schedule {schedule!r}; expected constant or cosine")
  if epoch < warmup_epochs:
    alpha = epoch / warmup_epochs
    return lr * (0.1 * (1 - alpha) + alpha)
  return lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def _init_fn(method: Method, tx: optax.GradientTransformation, seed: int, image_size):
  def init():
    key = jax.random.PRNGKey(seed)
    init_key, rng = jax.random.split(key)
    params, batch_stats, method_state = method.init(init_key, image_size)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), method_state=method_state, rng=rng)
  return init


def create_train_state(method: Method, tx: optax.GradientTransformation, seed: int,
                       image_size, mesh: Mesh) -> TrainState:
  """Initialises the state directly replicated on the mesh."""
  return jax.jit(_init_fn(method, tx, seed, image_size),
                 out_shardings=parallel.replicated(mesh))()


def abstract_train_state(method: Method, tx: optax.GradientTransformation, image_size,
                         mesh: Mesh) -> TrainState:
  """Shapes, dtypes and shardings of the state, without computing it (to restore into)."""
  shapes = jax.eval_shape(_init_fn(method, tx, 0, image_size))
  sharding = parallel.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def make_views(key: jax.Array, batch: dict, random_resized_crop: float, horizontal_flip: bool,
               dtype) -> tuple[jax.Array, jax.Array]:
  """uint8 batch -> the two normalised views (spec §3.3-§3.5).

  view 1 = [T_q(queries); T_q(negatives)], view 2 = [positives; T_q'(negatives)]: the query
  and both negative views get independent random query transforms, the positive none.
  Then the whole step is mirrored or not (one coin for all images).
  """
  k_query, k_neg1, k_neg2, k_flip = jax.random.split(key, 4)
  view1 = [augment.query_transform(k_query, batch["query"], random_resized_crop)]
  view2 = [batch["positive"].astype(jnp.float32)]
  if "negative" in batch:
    view1.append(augment.query_transform(k_neg1, batch["negative"], random_resized_crop))
    view2.append(augment.query_transform(k_neg2, batch["negative"], random_resized_crop))
  view1, view2 = jnp.concatenate(view1), jnp.concatenate(view2)
  if horizontal_flip:
    view1, view2 = augment.batch_flip(k_flip, [view1, view2])
  return augment.normalize(view1, dtype), augment.normalize(view2, dtype)


def train_step(state: TrainState, batch: dict, *, method: Method,
               tx: optax.GradientTransformation, random_resized_crop: float,
               horizontal_flip: bool, accumulate: int = 1) -> tuple[TrainState, dict]:
  """One optimizer step: views -> loss and gradients -> Adam; method state after (EMA).

  With accumulate = k > 1 the global batch is processed as k micro-batches (rows j, j + k,
  ... form micro-batch j, so each stays spread over all devices) whose gradients are
  averaged into one update. Batch statistics (BatchNorm, the VICReg/Barlow moments, SimCLR
  negatives) are then those of a micro-batch: a memory saver, not the same objective.
  """
  key = jax.random.fold_in(state.rng, state.step)

  def micro_step(carry, micro):
    grads_sum, batch_stats, method_state, j = carry
    view1, view2 = make_views(jax.random.fold_in(key, j) if accumulate > 1 else key, micro,
                              random_resized_crop, horizontal_flip, method.model.dtype)

    def loss_fn(params):
      return method.loss(params, batch_stats, method_state, view1, view2)

    (loss, (batch_stats, method_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
    return (grads_sum, batch_stats, method_state, j + 1), loss

  zeros = jax.tree.map(jnp.zeros_like, state.params)
  carry = (zeros, state.batch_stats, state.method_state, jnp.zeros((), jnp.int32))
  if accumulate == 1:
    (grads, batch_stats, method_state, _), loss = micro_step(carry, batch)
  else:
    micro = jax.tree.map(lambda x: x.reshape(x.shape[0] // accumulate, accumulate,
                                             *x.shape[1:]).swapaxes(0, 1), batch)
    (grads, batch_stats, method_state, _), micro_losses = jax.lax.scan(micro_step, carry, micro)
    grads = jax.tree.map(lambda g: g / accumulate, grads)
    loss = jnp.mean(micro_losses)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  method_state = method.after_update(method_state, state.params)
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, method_state=method_state)
  return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def jit_train_step(method: Method, tx: optax.GradientTransformation, mesh: Mesh,
                   random_resized_crop: float, horizontal_flip: bool, accumulate: int = 1):
  """The sharded, jitted step: state replicated, batch sharded over "data", state donated."""
  step = functools.partial(train_step, method=method, tx=tx,
                           random_resized_crop=random_resized_crop,
                           horizontal_flip=horizontal_flip, accumulate=accumulate)
  return jax.jit(step, in_shardings=(parallel.replicated(mesh), parallel.data_sharded(mesh)),
                 out_shardings=(parallel.replicated(mesh), parallel.replicated(mesh)),
                 donate_argnums=0)


def mining_config(config) -> mining.MiningConfig:
  tc = config.train
  return mining.MiningConfig(tc.queries_per_epoch, tc.mining, tc.neg_samples_num,
                             tc.negs_num_per_query, tc.pair_negative)


