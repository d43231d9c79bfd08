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
  from vgssl_jax.config import base_config, resolve, validate
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


def test_adamw_leaves_the_r2formers_unused_parameters_alone():
  """train_reranker.py's AdamW skips `ratio` (read by final_score only) and
  `decoder_pos_embed` (never read): no .grad, no decay. Everything else of the local head
  and the R2Former moves."""
  from tests.test_stage2 import rerank_config
  from vgssl_jax import sharding
  from vgssl_jax.objectives.registry import build_objective
  from vgssl_jax.training.optimizer import make_optimizer
  from vgssl_jax.training.state import create_train_state
  from vgssl_jax.training.step import jit_train_step
  c = rerank_config(width=8, fc_output_dim=16)
  c.data.image_size = (32, 48)
  objective = build_objective(c)
  mesh = sharding.make_mesh(1)
  tx = make_optimizer(1e-2, "adamw")
  state = create_train_state(objective, tx, 0, (32, 48), mesh)
  before = jax.device_get(state.params["net"])
  step = jit_train_step(objective, tx, mesh, frozen=objective.frozen)
  rng = np.random.default_rng(0)
  batch = {"query": rng.integers(0, 256, (2, 32, 48, 3), np.uint8),
           "positive": rng.integers(0, 256, (2, 32, 48, 3), np.uint8),
           "negatives": rng.integers(0, 256, (2, 1, 32, 48, 3), np.uint8)}
  state, _ = step(state, batch)
  after = jax.device_get(state.params["net"])
  for name in ("ratio", "decoder_pos_embed"):
    np.testing.assert_array_equal(after["Reranker"][name], before["Reranker"][name])
  for name in ("cls_token", "cls_token_2"):
    assert np.abs(after["Reranker"][name] - before["Reranker"][name]).max() > 0
  assert np.abs(after["local_head"]["kernel"] - before["local_head"]["kernel"]).max() > 0
