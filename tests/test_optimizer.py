"""The optimizer's rules as the original's: the learning-rate schedule tied to the optimizer,
and no update (weight decay included) for parameters the loss never reads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vgssl_jax.training.optimizer import schedule_for
from vgssl_jax.training.step import parameters_without_gradient


@pytest.mark.parametrize("optimizer,explicit,cosine,want", [
    ("adam", "", False, "constant"), ("sgd", "", False, "constant"),
    ("adamw", "", False, "step"), ("adamw", "", True, "cosine"), ("adam", "", True, "cosine"),
    ("adamw", "constant", False, "constant"), ("adam", "step", False, "step")])
def test_the_schedule_follows_the_optimizer_unless_set(optimizer, explicit, cosine, want):
  assert schedule_for(optimizer, explicit, cosine) == want


def test_schedule_conflicts_and_resolution_in_the_config():
  from vgssl_jax.checks import resolve, validate
  from vgssl_jax.config import base_config
  from vgssl_jax.errors import ConfigError
  c = base_config()
  c.train.optimizer = "adamw"
  validate(c)
  assert resolve(c).train.lr_schedule == "step"   # recorded in config.json as resolved
  c = base_config()
  c.train.cosine_scheduler, c.train.lr_schedule = True, "step"
  with pytest.raises(ConfigError, match="train.cosine_scheduler=True .* train.lr_schedule='step'"):
    validate(c)


def test_parameters_the_loss_does_not_read_are_found():
  params = {"used": jnp.ones(3), "times_zero": jnp.ones(2), "unused": {"w": jnp.ones(4)},
            "aux_only": jnp.ones(1)}

  def loss(p):
    aux = p["aux_only"] * 2  # computed, but not part of the loss
    del aux
    return jnp.sum(p["used"] ** 2) + 0.0 * jnp.sum(p["times_zero"])
  unused = parameters_without_gradient(loss, params)
  names = {jax.tree_util.keystr(path) for path in unused}
  assert names == {"['unused']['w']", "['aux_only']"}


def _train(**kw):
  from vgssl_jax.config import base_config
  c = base_config()
  c.train.update(kw)
  return c.train


def test_salad_linear_schedule_is_torch_linearlr_stepped_per_step():
  from vgssl_jax.training.optimizer import step_lr
  t = _train(optimizer="adamw", lr=6e-5, lr_schedule="linear", lr_end_factor=0.2,
             lr_decay_steps=4000, epochs=4)
  # LinearLR(start 1, end 0.2, total 4000): factor 1 + (0.2 - 1) min(s, 4000) / 4000
  for step, factor in [(0, 1.0), (1, 1 - 0.8 / 4000), (2000, 0.6), (4000, 0.2), (9000, 0.2)]:
    assert step_lr(t, step // 1000, step, 1000) == pytest.approx(6e-5 * factor)


def test_boq_warmup_in_epochs_per_step_then_steps():
  from vgssl_jax.training.optimizer import step_lr
  t = _train(optimizer="adamw", lr=1e-4, lr_schedule="step", warmup_epochs=10,
             schedule=(10, 20), lr_gamma=0.1, epochs=40)
  spe = 50  # steps per epoch: BoQ's (global_step + 1) / (10 x num_training_batches)
  assert step_lr(t, 0, 0, spe) == pytest.approx(1e-4 / 500)
  assert step_lr(t, 4, 249, spe) == pytest.approx(1e-4 * 250 / 500)
  assert step_lr(t, 9, 499, spe) == pytest.approx(1e-4)
  assert step_lr(t, 10, 500, spe) == pytest.approx(1e-5)    # MultiStepLR at epoch 10
  assert step_lr(t, 25, 1250, spe) == pytest.approx(1e-6)


def test_mixvpr_warmup_steps_and_gamma():
  from vgssl_jax.training.optimizer import step_lr
  t = _train(optimizer="sgd", lr=0.05, lr_schedule="step", warmup_steps=650,
             schedule=(5, 10, 15, 25, 45), lr_gamma=0.3, epochs=80)
  assert step_lr(t, 0, 0, 400) == pytest.approx(0.05 / 650)
  assert step_lr(t, 1, 649, 400) == pytest.approx(0.05)
  assert step_lr(t, 12, 4800, 400) == pytest.approx(0.05 * 0.3 ** 2)


def test_the_original_schedules_are_unchanged_per_step():
  from vgssl_jax.training.optimizer import epoch_lr, step_lr
  t = _train(optimizer="adamw", lr=5e-4, cosine_scheduler=True, warmup_epochs=5, epochs=50)
  for epoch in (0, 3, 5, 30):
    want = epoch_lr(5e-4, epoch, 50, "cosine", 5)
    assert all(step_lr(t, epoch, epoch * 7 + s, 7) == want for s in range(7))


def test_impossible_schedules_name_the_setting():
  from vgssl_jax.checks import validate
  from vgssl_jax.config import base_config
  from vgssl_jax.errors import ConfigError
  c = base_config()
  c.train.lr_schedule, c.train.lr_decay_steps = "linear", 0
  with pytest.raises(ConfigError, match="train.lr_decay_steps > 0"):
    validate(c)
  c = base_config()
  c.train.cosine_scheduler, c.train.warmup_steps = True, 10
  with pytest.raises(ConfigError, match="train.warmup_steps"):
    validate(c)
