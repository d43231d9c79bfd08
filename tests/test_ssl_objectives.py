"""Objective state and update order of the SSL methods (docs/original.md §Update order) on a
tiny network."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vgssl_jax import sharding
from vgssl_jax.config import base_config
from vgssl_jax.models.inputs import normalize
from vgssl_jax.models.layers import l2_normalize
from vgssl_jax.objectives.registry import build_objective
from vgssl_jax.training.optimizer import make_optimizer
from vgssl_jax.training.state import create_train_state
from vgssl_jax.training.step import jit_train_step


def tiny(name, n_layers=2, queue_size=16, augment=False, dtype="float32"):
  c = base_config()
  c.method = name
  c.model.backbone, c.model.width, c.model.dtype = "resnet18conv4", 8, dtype
  c.model.fc_output_dim, c.model.projection_size, c.model.n_layers = 16, 24, n_layers
  c.loss.queue_size = queue_size
  # without augmentation: view 1 = queries, view 2 = positives, exactly
  c.train.random_resized_crop, c.train.horizontal_flip = (0.25, True) if augment else (0.0, False)
  return build_objective(c)


def setup(name, n_layers=2, queue_size=16):
  method = tiny(name, n_layers, queue_size)
  mesh = sharding.make_mesh(1)
  tx = make_optimizer(1e-2)
  state = create_train_state(method, tx, 0, (32, 48), mesh)
  step = jit_train_step(method, tx, mesh)
  rng = np.random.default_rng(0)
  batches = [{k: rng.integers(0, 256, size=(4, 32, 48, 3), dtype=np.uint8)
              for k in ("query", "positive")} for _ in range(2)]
  return method, state, step, batches


def close(a, b, atol=1e-7):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=atol), a, b)


def test_byol_target_is_an_ema_of_the_pre_step_online_weights():
  method, state, step, batches = setup("byol")
  theta0 = jax.device_get(state.params["net"])
  close(state.objective_state["target"]["params"], theta0)  # target = online at t = 0
  assert state.params["predictor"]["0"]["kernel"].shape == (24, 4096)
  state, m1 = step(state, batches[0])
  theta1 = jax.device_get(state.params["net"])
  close(state.objective_state["target"]["params"], theta0)  # 0.99 theta0 + 0.01 theta0
  state, _ = step(state, batches[1])
  want = jax.tree.map(lambda a, b: 0.99 * a + 0.01 * b, theta0, theta1)
  close(state.objective_state["target"]["params"], want)
  assert np.isfinite(float(m1["loss"]))
  assert step._cache_size() == 1  # Adam, EMA state: no recompilation


def test_simsiam_has_no_target_copy():
  method, state, step, batches = setup("simsiam")
  assert state.objective_state == {}
  for batch in batches:
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
  assert step._cache_size() == 1


def test_moco_enqueues_keys_of_the_pre_update_key_encoder():
  method, state, step, batches = setup("mocov2", n_layers=0)
  init = jax.device_get(state)
  queue0 = init.objective_state["queue"]
  assert queue0.shape == (16, 16)  # K x D_g when n_layers = 0
  np.testing.assert_allclose(np.linalg.norm(queue0, axis=1), 1.0, rtol=1e-5)
  state, _ = step(state, batches[0])
  # keys: the key encoder (= online at t = 0) in train mode on view 2, L2-normalised
  variables = {"params": init.objective_state["target"]["params"],
               "batch_stats": init.objective_state["target"]["batch_stats"]}
  out, _ = method.model.apply(variables, normalize(jnp.asarray(batches[0]["positive"])),
                              train=True, mutable=["batch_stats"])
  keys = l2_normalize(out["projection"])
  queue = np.asarray(state.objective_state["queue"])
  np.testing.assert_allclose(queue[:4], keys, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(queue[4:], queue0[4:])
  assert int(state.objective_state["queue_ptr"]) == 4
  theta1 = jax.device_get(state.params["net"])
  state, _ = step(state, batches[1])
  assert int(state.objective_state["queue_ptr"]) == 8
  want = jax.tree.map(lambda a, b: 0.999 * a + 0.001 * b, init.params["net"], theta1)
  close(state.objective_state["target"]["params"], want)
  assert step._cache_size() == 1


def test_symmetric_methods_have_no_extra_state():
  # vicreg and simclr steps run in the end-to-end tests; Barlow Twins' steps run here
  for name in ("vicreg", "simclr", "bt"):
    _, state, step, batches = setup(name, n_layers=1)
    assert state.objective_state == {} and set(state.params) == {"net"}, name
  for batch in batches:
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
  assert step._cache_size() == 1


def test_bfloat16_computes_in_bf16_and_keeps_float32_state():
  method = tiny("vicreg", augment=True, dtype="bfloat16")
  mesh = sharding.make_mesh(1)
  tx = make_optimizer(1e-3)
  state = create_train_state(method, tx, 0, (32, 48), mesh)
  step = jit_train_step(method, tx, mesh)
  rng = np.random.default_rng(0)
  batch = {k: rng.integers(0, 256, size=(4, 32, 48, 3), dtype=np.uint8)
           for k in ("query", "positive")}
  hlo = step.lower(state, batch).as_text()
  # the convolutions and matrix products themselves run on bfloat16 operands
  for op in ("convolution", "dot_general"):
    lines = [line for line in hlo.splitlines() if f"stablehlo.{op}" in line]
    assert lines and any(re.search(r": \(tensor<[0-9x]*xbf16>, tensor<[0-9x]*xbf16>\)", line)
                         for line in lines), op
  for _ in range(2):
    state, metrics = step(state, batch)
  assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
  for tree in (state.params, state.batch_stats, state.opt_state):
    assert {x.dtype for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)} == {
        jnp.dtype(jnp.float32)}
  assert step._cache_size() == 1


def test_gradient_accumulation_averages_micro_batch_gradients():
  import optax
  from vgssl_jax.objectives.ssl import make_views
  _, _, _, batches = setup("vicreg")
  method = tiny("vicreg", augment=True)
  batch = {k: np.concatenate([b[k] for b in batches]) for k in ("query", "positive")}  # 8 items
  mesh = sharding.make_mesh(1)
  tx = optax.sgd(0.1)
  state = create_train_state(method, tx, 0, (32, 48), mesh)
  init = jax.device_get(state)
  step = jit_train_step(method, tx, mesh, accumulate=2)
  new, metrics = step(state, batch)
  # by hand: micro-batch j = rows j, j + 2, ...; views from fold_in(step key, j); BN threaded
  key = jax.random.fold_in(init.rng, init.step)

  @jax.jit  # one compilation for both micro-batches (eager evaluation takes a minute)
  def micro_grads(micro, j, stats):
    micro_key = jax.random.fold_in(key, j)
    v1, v2 = make_views(micro_key, micro, method.views, jnp.float32)
    return jax.value_and_grad(lambda p: method.view_loss(p, stats, {}, v1, v2, micro_key),
                              has_aux=True)(init.params)

  grads, stats, losses = [], init.batch_stats, []
  for j in range(2):
    (loss, (stats, _)), g = micro_grads({k: v[j::2] for k, v in batch.items()},
                                        jnp.asarray(j, jnp.int32), stats)
    grads.append(g)
    losses.append(loss)
  want = jax.tree.map(lambda p, a, b: p - 0.1 * (a + b) / 2, init.params, *grads)
  # jitted vs eager float32 arithmetic: gradients agree to about 1e-5 of their size
  close(new.params, want, atol=1e-5)
  close(new.batch_stats, stats, atol=1e-5)
  np.testing.assert_allclose(float(metrics["loss"]), float(np.mean(losses)), rtol=1e-5)
