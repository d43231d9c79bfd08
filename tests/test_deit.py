"""DeiT-S distilled: the original's outputs (golden files of its own code), weights in and
out, the attention formula, every SSL method, and bad input."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import golden
from tests.conftest import run_python, tiny_model_config, tiny_overrides
from tests.test_main import assert_clean_error, main_args
from vgssl_jax.errors import ConfigError
from vgssl_jax.models.network import build_model, init_variables
from vgssl_jax.models.weights import timm_deit, vgssl

def deit_config(embed_dim=48, depth=2, num_heads=2, fc=16, **model):
  mc = tiny_model_config(backbone="deit", fc_output_dim=fc, **model)
  mc.vit.update(dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads))
  return mc


def deit_net(image_size=(64, 96), **kw):
  return build_model(deit_config(**kw), "vicreg", image_size)


def abstract(net, image_size=(64, 96)):
  return jax.eval_shape(lambda: init_variables(net, jax.random.PRNGKey(0), image_size))


def golden_deit(**changes):
  """(golden deit_retrieval.npz, its image size, the DeiT network its config describes,
  with `changes` to the build arguments)."""
  g = golden.load("deit_retrieval.npz")
  cfg = golden.config(g)
  size = tuple(cfg["img_size"])
  kw = dict(embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"],
            fc=cfg["num_classes"])
  kw.update(changes)
  size = tuple(kw.pop("image_size", size))
  return g, size, deit_net(size, **kw)


@pytest.mark.parametrize("layout", ["lightning", "bare"])
def test_descriptors_equal_the_original_deit(layout):
  """deit_retrieval.npz: weights by the original's names -> our network -> its descriptors.
  `lightning`: the stage-1 checkpoint's backbone.* keys (plus a projector, ignored);
  `bare`: train.py's DeiT, keys without a prefix."""
  g, size, net = golden_deit()
  state = golden.weights(g)
  if layout == "lightning":  # with a projector layer, which the import ignores
    state = {f"backbone.{k}": v for k, v in state.items()}
    state["aggregation.1.0.weight"] = np.zeros((24, state["backbone.head.weight"].shape[0]),
                                               np.float32)
  variables, report = vgssl.import_vgssl_state(state, jax.tree.map(
      lambda s: np.zeros(s.shape, s.dtype), abstract(net, size)))
  assert report["layout"] == "deit"
  got = net.apply(variables, jnp.asarray(g["images"].transpose(0, 2, 3, 1)), train=False,
                  project=False)["descriptor"]
  np.testing.assert_allclose(got, g["descriptors"], atol=2e-5)


def test_position_grid_resize_equals_the_original():
  g = golden.load("pos_embed_resize.npz")
  up = timm_deit.resize_pos_embed(g["pos_embed"], tuple(g["grid"]))
  down = timm_deit.resize_pos_embed(g["pos_embed"], tuple(g["grid_down"]))
  np.testing.assert_allclose(up, g["resized"], atol=3e-6)
  # downsampling without antialias, as torchvision 0.13's tensor resize: not the antialiased
  np.testing.assert_allclose(down, g["resized_down"], atol=3e-6)
  assert np.abs(down - g["resized_down_antialias"]).max() > 0.1


def test_attention_equals_the_plain_softmax_formula():
  """jax.nn.dot_product_attention in a block = softmax(q k^T / sqrt(d)) v in float64."""
  from vgssl_jax.models.deit import Attention
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 7, 12)).astype(np.float32)
  attn = Attention(12, 3)
  v = attn.init(jax.random.PRNGKey(1), jnp.asarray(x))
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), v["params"])
  qkv = x.astype(np.float64) @ p["qkv"]["kernel"] + p["qkv"]["bias"]
  q, k, val = qkv.reshape(2, 7, 3, 3, 4).transpose(2, 0, 3, 1, 4)  # (3, N, heads, T, d)
  logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(4)
  w = np.exp(logits - logits.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  out = (w @ val).transpose(0, 2, 1, 3).reshape(2, 7, 12)
  want = out @ p["proj"]["kernel"] + p["proj"]["bias"]
  np.testing.assert_allclose(attn.apply(v, jnp.asarray(x)), want, rtol=1e-5, atol=1e-5)


def timm_checkpoint(embed_dim=48, depth=2, seed=0):
  """A deit_small_distilled_patch16_224-shaped state dict (14x14 grid, 1000-way heads)."""
  net = build_model(deit_config(embed_dim=embed_dim, depth=depth, fc=1000), "vicreg", (224, 224))
  from vgssl_jax.models.weights.names import to_torch_state
  shapes = abstract(net, (224, 224))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes["params"])
  # the heads are the aggregation here, the backbone's in timm's names
  names = to_torch_state({"backbone": params["backbone"], "aggregation": params["aggregation"]})
  state = {timm_deit.ORIGINAL_NAMES.to_original(k)[len("backbone."):]: np.ascontiguousarray(v)
           for k, v in names.items()}  # safetensors writes raw buffers
  assert state["pos_embed"].shape == (1, 198, embed_dim) and state["head.weight"].shape[0] == 1000
  return state


def test_imagenet_weights_load_with_the_original_resize_and_head_slicing(tmp_path):
  from safetensors.numpy import save_file
  state = timm_checkpoint()
  path = str(tmp_path / "deit_small_distilled_patch16_224.safetensors")
  save_file(state, path)
  net = deit_net()  # 64x96: a 4x6 grid
  variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract(net))
  params = timm_deit.load_timm_deit(path, variables, (4, 6))["params"]
  loaded = params["backbone"]
  np.testing.assert_array_equal(loaded["pos_embed"],
                                timm_deit.resize_pos_embed(state["pos_embed"], (4, 6)))
  for head in ("head", "head_dist"):  # both from the first 16 rows of `head`
    np.testing.assert_array_equal(params["aggregation"][head]["kernel"],
                                  state["head.weight"][:16].T)
    np.testing.assert_array_equal(params["aggregation"][head]["bias"], state["head.bias"][:16])
  np.testing.assert_array_equal(loaded["blocks"]["1"]["mlp"]["fc1"]["kernel"],
                                state["blocks.1.mlp.fc1.weight"].T)
  np.testing.assert_array_equal(loaded["patch_embed"]["proj"]["kernel"],
                                state["patch_embed.proj.weight"].transpose(2, 3, 1, 0))
  with pytest.raises(ConfigError, match="model.vit.embed_dim"):
    timm_deit.load_timm_deit(path, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract(
        deit_net(embed_dim=32))), (4, 6))


def test_wrong_checkpoints_are_clear_errors():
  g, size, _ = golden_deit()
  state = {f"backbone.{k}": v for k, v in golden.weights(g).items()}
  patches, width = state["backbone.pos_embed"].shape[1] - 2, state["backbone.pos_embed"].shape[2]
  other = (size[0] + 16, size[1])  # one more row of patches
  _, _, net = golden_deit(image_size=other)
  other_grid = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract(net, other))
  with pytest.raises(ConfigError, match=f"{patches} patches, this model's for "
                     f"{patches + size[1] // 16}: set --config.data"):
    vgssl.import_vgssl_state(state, other_grid)
  _, _, narrow = golden_deit(embed_dim=width + 2, num_heads=1)
  with pytest.raises(ConfigError, match=f"{width} wide, this model {width + 2}"):
    vgssl.import_vgssl_state(state, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                                                 abstract(narrow, size)))
  resnet = build_model(tiny_model_config(), "vicreg", (32, 48))
  resnet_vars = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), abstract(resnet, (32, 48)))
  with pytest.raises(ConfigError, match="DeiT checkpoint .* set --config.model.backbone=deit"):
    vgssl.import_vgssl_state(state, resnet_vars)
  with pytest.raises(ConfigError, match="ResNet checkpoint .* model.backbone=deit"):
    vgssl.import_vgssl_state({"backbone.0.weight": np.zeros((8, 3, 7, 7), np.float32),
                              "aggregation.0.1.p": np.ones(1, np.float32)},
                             jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                                          abstract(deit_net())))


@pytest.mark.parametrize("method,dtype,accumulate", [
    ("vicreg", "float32", 1), ("bt", "float32", 1), ("simclr", "float32", 1),
    ("mocov2", "float32", 1), ("byol", "float32", 1), ("simsiam", "float32", 1),
    ("vicreg", "bfloat16", 2)])
def test_every_method_trains_a_deit(method, dtype, accumulate):
  from vgssl_jax import sharding
  from vgssl_jax.config import base_config
  from vgssl_jax.objectives.registry import build_objective
  from vgssl_jax.training.optimizer import make_optimizer
  from vgssl_jax.training.state import create_train_state
  from vgssl_jax.training.step import jit_train_step
  c = base_config()
  c.method = method
  c.model = deit_config(embed_dim=32, depth=1, fc=16, n_layers=1 if method in (
      "simclr", "mocov2") else 2, projection_size=24, dtype=dtype)
  c.data.image_size = (32, 48)
  c.loss.queue_size = 16
  objective = build_objective(c)
  mesh = sharding.make_mesh(1)
  tx = make_optimizer(1e-3)
  state = create_train_state(objective, tx, 0, (32, 48), mesh)
  step = jit_train_step(objective, tx, mesh, accumulate)
  rng = np.random.default_rng(0)
  before = jax.device_get(state.params["net"]["backbone"]["pos_embed"])
  for _ in range(2):
    batch = {k: rng.integers(0, 256, size=(4, 32, 48, 3), dtype=np.uint8)
             for k in ("query", "positive", "negative")}
    state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
  assert step._cache_size() == 1
  # everything trains (the original's --unfreeze): the position embedding moved
  assert np.abs(np.asarray(state.params["net"]["backbone"]["pos_embed"]) - before).max() > 0


DEIT_ARGS = ["--config.model.backbone=deit", "--config.data.image_size=32,48",
             "--config.model.vit.embed_dim=32", "--config.model.vit.depth=1",
             "--config.model.vit.num_heads=2"]


def test_deit_trains_evaluates_and_exports_end_to_end(tiny_root, tmp_path):
  run = str(tmp_path / "run")
  proc = run_python(main_args(run, *tiny_overrides(tiny_root), *DEIT_ARGS,
                              "--config.train.val_every=1"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  after = json.load(open(os.path.join(run, "results.json")))["after"]["synthetic"]
  assert 0 <= after["recall@1"] <= after["recall@5"] <= 100
  out = str(tmp_path / "eval")
  # five crops of 32x32: the 2x3 position grid is resized to 2x2 for them
  proc = run_python(["-m", "vgssl_jax.evaluate", "--config=configs/demo.py", f"--workdir={out}",
                     *tiny_overrides(tiny_root), f"--checkpoint={run}",
                     "--config.eval.test_method=five_crops"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert json.load(open(os.path.join(out, "results.json")))["synthetic"]["test_method"] == \
      "five_crops"
  exported = str(tmp_path / "deit.safetensors")
  proc = run_python(["-m", "vgssl_jax.export", f"--checkpoint={run}", f"--out={exported}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  from vgssl_jax.models.weights.files import load_state_dict
  names = load_state_dict(exported)
  assert {"backbone.cls_token", "backbone.pos_embed", "backbone.blocks.0.attn.qkv.weight",
          "backbone.head_dist.bias"} <= set(names)
  hard = str(tmp_path / "eval_export")
  proc = run_python(["-m", "vgssl_jax.evaluate", "--config=configs/demo.py", f"--workdir={hard}",
                     *tiny_overrides(tiny_root), f"--checkpoint={exported}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  for n in (1, 5):
    assert json.load(open(os.path.join(hard, "results.json")))["synthetic"][f"recall@{n}"] == \
        after[f"recall@{n}"]


def test_a_resnet_file_for_a_deit_config_is_refused_before_any_work(tmp_path, tiny_root):
  from safetensors.numpy import save_file
  path = str(tmp_path / "resnet.safetensors")
  save_file({"conv1.weight": np.zeros((8, 3, 7, 7), np.float32)}, path)
  proc = run_python(main_args(str(tmp_path / "run"), *tiny_overrides(tiny_root), *DEIT_ARGS,
                              f"--config.model.pretrained={path}"))
  assert_clean_error(proc, "not a timm DeiT checkpoint")
  assert not os.path.exists(tmp_path / "run" / "config.json")


def test_checkpoints_of_the_earlier_layout_restore(tmp_path):
  """Runs written before DeiT's heads became its aggregation (params and Adam's moments at
  backbone/head*; config.json with the unused model.aggregation "gem") resume, evaluate and
  export: the heads are read from their former place."""
  from vgssl_jax import checkpoints, resume, sharding
  from vgssl_jax.config import base_config
  from vgssl_jax.objectives.registry import build_objective
  from vgssl_jax.training.optimizer import make_optimizer
  from vgssl_jax.training.state import abstract_train_state, create_train_state
  from vgssl_jax.training.step import jit_train_step
  c = base_config()
  c.model = deit_config(embed_dim=32, depth=1, fc=16, n_layers=0)
  c.data.image_size = (32, 48)
  c.model.aggregation = "dist_heads"
  objective = build_objective(c)
  mesh = sharding.make_mesh(1)
  tx = make_optimizer(1e-3)
  state = create_train_state(objective, tx, 0, (32, 48), mesh)
  rng = np.random.default_rng(0)
  batch = {k: rng.integers(0, 256, size=(4, 32, 48, 3), dtype=np.uint8)
           for k in ("query", "positive")}
  state, _ = jit_train_step(objective, tx, mesh)(state, batch)  # Adam's moments not zero
  state = jax.device_get(state)

  def old(tree):  # {"net": {"aggregation": {"head": ..}}} -> the heads under backbone
    net = dict(tree["net"])
    heads = net.pop("aggregation")
    return {**tree, "net": {**net, "backbone": {**net["backbone"], **heads}}}
  inner = state.opt_state.inner_state
  moments = inner[0]._replace(mu=old(inner[0].mu), nu=old(inner[0].nu))
  legacy = state.replace(params=old(state.params), opt_state=state.opt_state._replace(
      inner_state=(moments, *inner[1:])))
  mngr = checkpoints.manager(str(tmp_path / "run" / "checkpoints"))
  legacy_config = json.loads(c.to_json_best_effort())
  legacy_config["model"]["aggregation"] = "gem"
  checkpoints.save(mngr, 1, legacy, {"epoch": 1}, {
      "epoch": 1, "method": "vicreg", "model": {**c.model.to_dict(), "aggregation": "gem"},
      "image_size": [32, 48], "metrics": {}, "config": legacy_config})
  mngr.wait_until_finished()
  # resume: the train state as today's layout, every leaf equal
  abstract = abstract_train_state(objective, tx, (32, 48), mesh)
  step, restored, _, meta = checkpoints.restore_latest(mngr, abstract)
  assert step == 1 and jax.tree.structure(restored) == jax.tree.structure(state)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)
  assert resume.config_changes(legacy_config, c) == []   # the run's own config still fits
  assert checkpoints.model_config_from(meta["model"]).aggregation == "dist_heads"
  # evaluation and export: the network alone
  template = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                          {"params": state.params["net"], "batch_stats": state.batch_stats["net"]})
  variables = checkpoints.restore_variables(str(tmp_path / "run" / "checkpoints"), 1, template,
                                            jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  np.testing.assert_array_equal(variables["params"]["aggregation"]["head_dist"]["kernel"],
                                state.params["net"]["aggregation"]["head_dist"]["kernel"])
