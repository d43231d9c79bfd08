"""The optimizer and its per-epoch learning rate, set without recompiling the step."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

LR_SCHEDULES = ("constant", "cosine")


def make_optimizer(lr: float) -> optax.GradientTransformation:
  """Adam as the original (betas 0.9/0.999, eps 1e-8, no weight decay).

  The learning rate is a value in the optimizer state (inject_hyperparams), so the loop
  can set it per epoch (`with_lr`) without recompiling the step.
  """
  return optax.inject_hyperparams(optax.adam)(learning_rate=lr)


def with_lr(state, lr: float):
  """The train state with the learning rate set to `lr`: a float32 array placed like the
  old one, so the step sees the same input types and shardings and is not compiled again."""
  opt = state.opt_state
  old = opt.hyperparams["learning_rate"]
  hyper = {**opt.hyperparams,
           "learning_rate": jax.device_put(jnp.asarray(lr, jnp.float32), old.sharding)}
  return state.replace(opt_state=opt._replace(hyperparams=hyper))


def epoch_lr(lr: float, epoch: int, epochs: int, schedule: str = "constant",
             warmup_epochs: int = 0) -> float:
  """The original's learning rate of an epoch (docs/original.md §Optimisation): constant, or
  with --cosine_scheduler lr * (0.1 (1 - a) + a), a = epoch / warmup, during warm-up, then
  lr * (1 + cos(pi * epoch / epochs)) / 2, piecewise constant per epoch."""
  if schedule == "constant":
    return lr
  if schedule != "cosine":
    raise ValueError(f"unknown lr schedule {schedule!r}; expected one of {LR_SCHEDULES}")
  if epoch < warmup_epochs:
    alpha = epoch / warmup_epochs
    return lr * (0.1 * (1 - alpha) + alpha)
  return lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))
