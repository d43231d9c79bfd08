"""The optimizer and its learning rate (per epoch or per step), set without recompiling the
step."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from vgssl_jax.errors import ConfigError, check_choice

LR_SCHEDULES = ("constant", "cosine", "step", "linear")
OPTIMIZERS = ("adam", "adamw", "sgd")
# the original's hard-coded weight decays (docs/original.md §Optimisation)
DEFAULT_WEIGHT_DECAY = {"adam": 0.0, "adamw": 0.03, "sgd": 1e-3}


def _sgd(learning_rate, weight_decay: float):
  # torch.optim.SGD(momentum=0.9, weight_decay): the decay is added to the gradient first
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.sgd(learning_rate, momentum=0.9))


def make_optimizer(lr: float, name: str = "adam",
                   weight_decay: float = -1.0) -> optax.GradientTransformation:
  """The original's optimizers: Adam (betas 0.9/0.999, eps 1e-8, no weight decay), AdamW
  (decoupled decay, 0.03) or SGD (momentum 0.9, decay 1e-3); weight_decay < 0 takes
  those defaults.

  The learning rate is a value in the optimizer state (inject_hyperparams), so the loop
  can set it per epoch (`with_lr`) without recompiling the step.
  """
  if name not in OPTIMIZERS:
    raise ValueError(f"unknown optimizer {name!r}; expected one of {OPTIMIZERS}")
  wd = DEFAULT_WEIGHT_DECAY[name] if weight_decay < 0 else weight_decay
  if name == "adam":
    if wd:
      return optax.inject_hyperparams(
          lambda learning_rate: optax.chain(optax.add_decayed_weights(wd),
                                            optax.adam(learning_rate)))(learning_rate=lr)
    return optax.inject_hyperparams(optax.adam)(learning_rate=lr)
  if name == "adamw":
    return optax.inject_hyperparams(
        lambda learning_rate: optax.adamw(learning_rate, weight_decay=wd))(learning_rate=lr)
  return optax.inject_hyperparams(lambda learning_rate: _sgd(learning_rate, wd))(
      learning_rate=lr)


def check_config(config) -> None:
  """ConfigError naming the setting when the optimizer settings are impossible."""
  t = config.train
  check_choice("train.optimizer", t.optimizer, OPTIMIZERS)
  check_choice("train.lr_schedule", t.lr_schedule, ("",) + LR_SCHEDULES)
  if t.cosine_scheduler and t.lr_schedule not in ("", "cosine"):
    raise ConfigError(f"train.cosine_scheduler=True asks for warm-up + cosine but train.lr_schedule="
                      f"{t.lr_schedule!r} names another schedule: drop one of the two.")
  if not t.lr > 0:
    raise ConfigError(f"train.lr={t.lr} must be > 0.")
  if t.warmup_epochs < 0 or t.warmup_steps < 0:
    raise ConfigError(f"train.warmup_epochs={t.warmup_epochs} and train.warmup_steps="
                      f"{t.warmup_steps} must be >= 0.")
  if t.warmup_steps and schedule_for(t.optimizer, t.lr_schedule, t.cosine_scheduler) == "cosine":
    raise ConfigError("train.warmup_steps is the per-step warm-up of the constant, step and "
                      "linear schedules; the cosine schedule warms up per epoch "
                      "(train.warmup_epochs): set one of the two.")
  if t.lr_schedule == "linear" and not (t.lr_decay_steps > 0 and t.lr_end_factor >= 0):
    raise ConfigError(f"train.lr_schedule=linear needs train.lr_decay_steps > 0 (got "
                      f"{t.lr_decay_steps}) and train.lr_end_factor >= 0 (got {t.lr_end_factor}).")
  if not 0 < t.lr_gamma <= 1:
    raise ConfigError(f"train.lr_gamma={t.lr_gamma} must be in (0, 1].")


def with_lr(state, lr: float):
  """The train state with the learning rate set to `lr`: a float32 array placed like the
  old one, so the step sees the same input types and shardings and is not compiled again."""
  opt = state.opt_state
  old = opt.hyperparams["learning_rate"]
  hyper = {**opt.hyperparams,
           "learning_rate": jax.device_put(jnp.asarray(lr, jnp.float32), old.sharding)}
  return state.replace(opt_state=opt._replace(hyperparams=hyper))


def schedule_for(optimizer: str, lr_schedule: str = "", cosine_scheduler: bool = False) -> str:
  """The learning-rate schedule a run uses. An explicit `lr_schedule` wins; "" is the
  original's rule, which ties it to the optimizer (docs/original.md §Optimisation): with
  --cosine_scheduler warm-up + cosine, else AdamW decays x0.1 at the `schedule` epochs
  (train.py, train_reranker.py) and Adam and SGD keep it constant."""
  if lr_schedule:
    return lr_schedule
  if cosine_scheduler:
    return "cosine"
  return "step" if optimizer == "adamw" else "constant"


def epoch_lr(lr: float, epoch: int, epochs: int, schedule: str = "constant",
             warmup_epochs: int = 0, milestones=(60, 80), gamma: float = 0.1) -> float:
  """The original's learning rate of an epoch (docs/original.md §Optimisation): constant;
  with --cosine_scheduler lr * (0.1 (1 - a) + a), a = epoch / warmup, during warm-up, then
  lr * (1 + cos(pi * epoch / epochs)) / 2, piecewise constant per epoch; or the step decay
  (AdamW without cosine): lr * gamma (0.1) per milestone epoch reached. The per-step
  schedules ("linear") are constant here: see `step_lr`."""
  if schedule in ("constant", "linear"):
    return lr
  if schedule == "step":
    return lr * gamma ** sum(epoch >= m for m in milestones)
  if schedule != "cosine":
    raise ValueError(f"unknown lr schedule {schedule!r}; expected one of {LR_SCHEDULES}")
  if epoch < warmup_epochs:
    alpha = epoch / warmup_epochs
    return lr * (0.1 * (1 - alpha) + alpha)
  return lr * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def step_lr(train_config, epoch: int, step: int, steps_per_epoch: int) -> float:
  """The learning rate of optimizer step `step` (0-based, global) in epoch `epoch`: the
  epoch's rate (`epoch_lr`), times the per-step factors of today's recipes:

  - "linear": torch's LinearLR stepped after every optimizer step (SALAD: from 1 to
    train.lr_end_factor = 0.2 over train.lr_decay_steps = 4000 steps, then constant);
  - a per-step linear warm-up, lr * min(1, (step + 1) / W), for the schedules other than
    cosine: W = train.warmup_steps (MixVPR: 650), else train.warmup_epochs x the steps of an
    epoch (BoQ: 10 epochs).
  """
  t = train_config
  schedule = schedule_for(t.optimizer, t.lr_schedule, t.cosine_scheduler)
  lr = epoch_lr(t.lr, epoch, t.epochs, schedule, t.warmup_epochs, t.schedule, t.lr_gamma)
  if schedule == "linear":
    lr *= 1.0 + (t.lr_end_factor - 1.0) * min(step, t.lr_decay_steps) / t.lr_decay_steps
  if schedule != "cosine":
    warmup = t.warmup_steps or t.warmup_epochs * steps_per_epoch
    if warmup and step < warmup:
      lr *= (step + 1) / warmup
  return lr
