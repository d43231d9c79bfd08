"""Published checkpoints of today's models, read in their official layouts from small files
the tests write (SALAD's Lightning .ckpt, MegaLoc's .safetensors, BoQ's and MixVPR's files,
DINOv2's *_pretrain.pth), their errors, and exports back in the same layouts."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import golden, torch_files
from tests.conftest import tiny_model_config
from tests.test_vpr_models import close, indices, nhwc, pipeline
from vgssl_jax.errors import ConfigError
from vgssl_jax.models import backbones
from vgssl_jax.models.network import build_model, init_variables
from vgssl_jax.models.weights import export, importer, releases

DATA = os.path.join(os.path.dirname(__file__), "data")


def zeros_like_tree(net, image_size) -> dict:
  shapes = jax.eval_shape(lambda: init_variables(net, jax.random.PRNGKey(0), image_size))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def descriptors(net, variables, images):
  return jax.jit(lambda v, x: net.apply(v, x, False, project=False)["descriptor"])(
      variables, images)


@pytest.mark.parametrize("name,file", [("salad", "dino_salad.ckpt"), ("boq", "dinov2_12288.pth")])
def test_salad_and_boq_releases_give_the_official_descriptors(name, file, tmp_path):
  """The official state dict written as the authors' file (SALAD: a Lightning checkpoint
  with its other entries; BoQ: a plain state dict), read without torch."""
  g, mc, state = pipeline(name)
  path = str(tmp_path / file)
  if file.endswith(".ckpt"):
    torch_files.save({"epoch": 3, "global_step": 100, "pytorch-lightning_version": "2.1.0",
                      "state_dict": state, "hyper_parameters": {"lr": 6e-5}}, path)
  else:
    torch_files.save(state, path)
  for i in indices(g, "pipe_images"):
    images = nhwc(g[f"pipe_images_{i}"])
    net = build_model(mc, None, images.shape[1:3])
    variables = importer.import_file(path, zeros_like_tree(net, images.shape[1:3]), mc)
    close(descriptors(net, variables, images), g[f"pipe_descriptor_{i}"], 1e-5)


def megaloc_state(seed: int = 0):
  """(golden SALAD pipeline, MegaLoc's model config and official state dict): MegaLoc's
  backbone has no mask token, its SALAD sits under aggregator.agg and a linear layer
  follows."""
  g, mc, state = pipeline("salad")
  out = 24
  rng = np.random.default_rng(seed)
  dim = g["pipe_descriptor_0"].shape[1]
  linear = {"aggregator.linear.weight": rng.normal(size=(out, dim)).astype(np.float32) / 8,
            "aggregator.linear.bias": rng.normal(size=(out,)).astype(np.float32) / 8}
  state = {**{k.replace("backbone.model.", "backbone.").replace("aggregator.", "aggregator.agg."): v
              for k, v in state.items() if not k.endswith("mask_token")}, **linear}
  mc.salad.out_dim = out
  return g, mc, state, linear


def test_megaloc_release_is_salad_with_a_linear_layer(tmp_path):
  from safetensors.numpy import save_file
  g, mc, state, linear = megaloc_state()
  path = str(tmp_path / "model.safetensors")
  save_file(state, path)
  for i in indices(g, "pipe_images"):
    images = nhwc(g[f"pipe_images_{i}"])
    net = build_model(mc, None, images.shape[1:3])
    variables = importer.import_file(path, zeros_like_tree(net, images.shape[1:3]), mc)
    want = g[f"pipe_descriptor_{i}"].astype(np.float64) @ linear["aggregator.linear.weight"].T \
        + linear["aggregator.linear.bias"]
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    close(descriptors(net, variables, images), want, 1e-5)
    # the mask token the file lacks keeps its (never read) initial value
    assert variables["params"]["backbone"]["mask_token"].shape == (1, mc.dinov2.embed_dim)


def torchvision_keys(stages=("conv1", "bn1", "layer1", "layer2", "layer3")) -> list[str]:
  with open(os.path.join(DATA, "torchvision_resnet50_keys.txt")) as f:
    keys = [line.split()[0] for line in f if line.strip()]   # "name shape" per line
  return [k for k in keys if k.split(".")[0] in stages and not k.endswith("num_batches_tracked")]


SEQUENTIAL = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6"}


def resnet_release(aggregation: str):
  """(model config of a narrow ResNet-50 cut after layer3 with the aggregation, image size,
  the official key names of its release)."""
  if aggregation == "boq":
    cfg = golden.config(golden.load("boq.npz"))
    agg_keys = golden.weights(golden.load("boq.npz"))
    mc = tiny_model_config(backbone="resnet50conv4", width=8, aggregation="boq", fc_output_dim=0,
                           n_layers=0)
    mc.boq.update(proj_channels=64, num_queries=4, num_layers=cfg["num_layers"], row_dim=2)
    backbone = [f"backbone.net.{SEQUENTIAL[k.split('.')[0]]}.{k.split('.', 1)[1]}"
                for k in torchvision_keys()]
  else:
    cfg = golden.config(golden.load("mixvpr.npz"))
    agg_keys = golden.weights(golden.load("mixvpr.npz"))
    mc = tiny_model_config(backbone="resnet50conv4", width=8, aggregation="mixvpr",
                           fc_output_dim=0, n_layers=0)
    mc.mixvpr.update(out_channels=8, mix_depth=cfg["mix_depth"], mlp_ratio=1.0, out_rows=2)
    backbone = [f"backbone.model.{k}" for k in torchvision_keys()]
  return mc, (64, 64), set(backbone) | {f"aggregator.{k}" for k in agg_keys}


@pytest.mark.parametrize("aggregation,file", [("boq", "resnet50_16384.pth"),
                                              ("mixvpr", "resnet50_MixVPR_4096.ckpt")])
def test_resnet_releases_have_the_official_names_and_round_trip(aggregation, file, tmp_path):
  """BoQ's ResNet-50 is an nn.Sequential (backbone.net.0 = conv1, 4-6 = layer1-3); MixVPR's
  keeps torchvision's names under backbone.model. An export has exactly the official key
  list (torchvision's ResNet-50 names, the aggregator's from the golden file) and a file in
  that layout reads back to the same network."""
  mc, size, official = resnet_release(aggregation)
  net = build_model(mc, None, size)
  variables = jax.device_get(init_variables(net, jax.random.PRNGKey(1), size))
  variables["batch_stats"] = jax.tree.map(lambda x: x + 0.25, variables["batch_stats"])
  state = export.descriptor_state(variables, releases.official_names(mc))
  assert set(state) == official
  release = releases.recognise(state)
  assert release is not None and release.aggregation == aggregation
  path = str(tmp_path / file)
  torch_files.save({"state_dict": state} if file.endswith(".ckpt") else state, path)
  loaded = importer.import_file(path, zeros_like_tree(net, size), mc)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(2, *size, 3)), jnp.float32)
  np.testing.assert_array_equal(descriptors(net, loaded, x), descriptors(net, variables, x))


def test_a_release_for_another_network_names_the_config_to_use():
  g, mc, state = pipeline("salad")
  size = g["pipe_images_0"].shape[2:]
  boq_config = tiny_model_config(backbone="dinov2_vitb14", aggregation="boq", fc_output_dim=0)
  boq_config.dinov2.update(mc.dinov2.to_dict())
  boq_config.boq.proj_channels = 64
  net = build_model(boq_config, None, size)
  with pytest.raises(ConfigError, match="this is a SALAD checkpoint .* use --config "
                                        "configs/salad_dinov2.py"):
    importer.import_state(state, zeros_like_tree(net, size), boq_config)
  _, _, megaloc, _ = megaloc_state()
  net = build_model(mc, None, size)
  with pytest.raises(ConfigError, match="MegaLoc checkpoint .* use --config configs/megaloc.py"):
    importer.import_state(megaloc, zeros_like_tree(net, size), mc)   # SALAD without out_dim
  resnet = tiny_model_config()
  with pytest.raises(ConfigError, match="model.backbone=resnet18conv4 .* use --config"):
    importer.import_state(state, zeros_like_tree(build_model(resnet, None, (32, 48)), (32, 48)),
                          resnet)


def test_missing_and_resized_tensors_are_listed_with_their_official_names():
  g, mc, state = pipeline("salad")
  size = g["pipe_images_0"].shape[2:]
  broken = {k: v for k, v in state.items() if k != "aggregator.score.3.bias"}
  net = build_model(mc, None, size)
  with pytest.raises(ConfigError, match="1 missing: aggregator.score.3.bias.*configs/"
                                        "salad_dinov2.py"):
    importer.import_state(broken, zeros_like_tree(net, size), mc)
  smaller = mc.copy_and_resolve_references()
  smaller.salad.num_clusters = mc.salad.num_clusters - 1
  net = build_model(smaller, None, size)
  with pytest.raises(ConfigError, match=r"aggregator.score.3.weight \(\d+, \d+, 1, 1\) "
                                        r"\(expected"):
    importer.import_state(state, zeros_like_tree(net, size), smaller)


def dinov2_pretrained(tmp_path, registers: bool):
  """(path of the golden DINOv2 weights as dinov2_*_pretrain.pth, its state)."""
  state = golden.weights(golden.load("dinov2.npz"))
  if not registers:
    state.pop("register_tokens")
  path = str(tmp_path / f"dinov2_vitb14{'_reg4' if registers else ''}_pretrain.pth")
  torch_files.save(state, path)
  return path, state


def dinov2_model(registers: bool, **changes):
  cfg = golden.config(golden.load("dinov2.npz"))
  mc = tiny_model_config(backbone="dinov2_vitb14" + ("_reg" if registers else ""),
                         aggregation="cls", fc_output_dim=0)
  mc.dinov2.update(embed_dim=cfg["embed_dim"], depth=cfg["depth"], num_heads=cfg["num_heads"],
                   img_size=cfg["img_size"])
  mc.dinov2.update(changes)
  return mc, tuple(cfg["sizes"][1])


@pytest.mark.parametrize("registers", [False, True])
def test_dinov2_pretrained_weights_load_as_model_pretrained(registers, tmp_path):
  path, state = dinov2_pretrained(tmp_path, registers)
  mc, size = dinov2_model(registers)
  mc.pretrained = path
  net = build_model(mc, None, size)
  variables = backbones.load_pretrained(mc, zeros_like_tree(net, size), size)
  params = variables["params"]["backbone"]
  np.testing.assert_array_equal(params["pos_embed"], state["pos_embed"])
  np.testing.assert_array_equal(params["blocks"]["1"]["ls2"]["gamma"], state["blocks.1.ls2.gamma"])
  np.testing.assert_array_equal(params["blocks"]["0"]["attn"]["qkv"]["kernel"],
                                state["blocks.0.attn.qkv.weight"].T)
  # the cls-token descriptor is the official model's cls token (as the original's `cls`:
  # not normalised without an FC)
  g = golden.load("dinov2.npz")
  tag = "reg" if registers else "noreg"
  got = descriptors(net, variables, nhwc(g["images_1"]))
  want = g[f"{tag}_x_norm_clstoken_1"]
  close(got, want, 1e-5 * max(1.0, float(np.abs(want).max())))


def test_dinov2_weights_of_another_model_are_refused_with_the_setting(tmp_path):
  path, _ = dinov2_pretrained(tmp_path, registers=True)
  mc, size = dinov2_model(registers=False)
  net = build_model(mc, None, size)
  mc.pretrained = path
  with pytest.raises(ConfigError, match="1 unexpected: backbone.register_tokens.*_reg"):
    backbones.load_pretrained(mc, zeros_like_tree(net, size), size)
  mc, size = dinov2_model(registers=True, img_size=mc.dinov2.img_size + 14)
  net = build_model(mc, None, size)
  mc.pretrained = path
  with pytest.raises(ConfigError, match="position embedding .*model.dinov2.img_size="):
    backbones.load_pretrained(mc, zeros_like_tree(net, size), size)
  resnet = str(tmp_path / "resnet.pth")
  torch_files.save({"conv1.weight": np.zeros((8, 3, 7, 7), np.float32)}, resnet)
  mc.pretrained = resnet
  with pytest.raises(ConfigError, match="not a DINOv2 checkpoint"):
    backbones.load_pretrained(mc, zeros_like_tree(net, size), size)


@pytest.mark.parametrize("layout", ["cirtorch", "naver"])
def test_off_the_shelf_gem_networks_import_in_their_layouts(layout, tmp_path):
  """The original's --off_the_shelf files: cirtorch's `features.<Sequential index>`,
  `pool.p`, `whiten.*` and Naver's `module.<torchvision names>`, `module.adpool.p`,
  `module.fc.*` (+ its `last_linear` alias), written from a network and read back into it
  with every tensor in place."""
  mc = tiny_model_config(backbone="resnet50conv5", width=8, aggregation="gem", l2="after_pool",
                         fc_output_dim=2048, n_layers=0)
  size = (64, 64)
  net = build_model(mc, None, size)
  variables = jax.device_get(init_variables(net, jax.random.PRNGKey(3), size))
  variables["batch_stats"] = jax.tree.map(lambda x: x + 0.5, variables["batch_stats"])
  ours = export.descriptor_state(variables, lambda k: k)   # our export names
  state = {}
  for key, value in ours.items():
    part, rest = key.split(".", 1)
    if layout == "cirtorch":
      if part == "backbone":
        head, tail = rest.split(".", 1)
        state[f"features.{SEQUENTIAL.get(head, {'layer4': '7'}.get(head))}.{tail}"] = value
      else:
        state[{"gem": "pool", "fc": "whiten"}[rest.split(".")[0]] + "." + rest.split(".", 1)[1]] = value
    else:
      name = rest if part == "backbone" else rest.replace("gem.", "adpool.")
      state[f"module.{name}"] = value
      if name.startswith("fc."):
        state[f"module.last_linear.{name[3:]}"] = value
  path = str(tmp_path / "net.pth")
  torch_files.save({"state_dict": state, "meta": {"architecture": "resnet50"}} if layout ==
                   "cirtorch" else {"state_dict": state}, path)
  loaded = importer.import_file(path, zeros_like_tree(net, size), mc)
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  mc.l2 = "before_pool"  # not the off-the-shelf network: the config to use is named
  with pytest.raises(ConfigError, match="configs/off_the_shelf.py"):
    importer.import_file(path, zeros_like_tree(build_model(mc, None, size), size), mc)
