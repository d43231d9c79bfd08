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
