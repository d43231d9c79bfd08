"""The rest of the original's zoo against its own outputs (golden zoo_*.npz): VGG16, AlexNet,
CCT-384 and HF ViT with their aggregations, the non-local blocks, every aggregation on fixed
maps and token sequences (CRN, RRM, cls, seqpool, none, GeM / NetVLAD on tokens), the
original's features_dim, the pairs it cannot run, and its frozen parameters. Every size
comes from the files (configs, generator settings, array shapes)."""

import ast
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from tests import golden
from vgssl_jax.checks import validate
from vgssl_jax.config import base_config
from vgssl_jax.errors import ConfigError
from vgssl_jax.models import backbones
from vgssl_jax.models.features import Features
from vgssl_jax.models.network import build_model
from vgssl_jax.models.non_local import NonLocalBlock
from vgssl_jax.models.weights.names import from_torch_state, to_torch_state

Z = golden.load("zoo_backbones.npz")
A = golden.load("zoo_aggregations.npz")
F = golden.load("zoo_freezing.npz")
SETTINGS = ast.literal_eval(str(Z["generator_settings"]))


def _tags(g):
  return [str(t) for t in g["tags"]]


def _config(g, tag):
  return ast.literal_eval(str(g[f"{tag}/config"]))


def _weights(g, tag):
  """{original key: array} of a tag, the backbone's from the tag it shares them with."""
  out = golden.weights(g, f"{tag}/w/")
  shared = f"{tag}/shared_from"
  if shared in g:
    base = str(g[shared])
    out = {**{k: v for k, v in golden.weights(g, f"{base}/w/").items()
              if k.startswith("backbone.")}, **out}
  return out


def _images(g, tag):
  shared = f"{tag}/shared_from"
  base = str(g[shared]) if shared in g else tag
  return np.asarray(g[f"{base}/images"]).transpose(0, 2, 3, 1)


def model_config(cfg: dict, state: dict):
  """Our `model` section for the original's args (sizes of CCT / ViT from the weights and
  the generator settings stored in the file)."""
  c = base_config()
  m = c.model
  m.backbone, m.aggregation, m.l2 = cfg["backbone"], cfg["aggregation"], cfg["l2"]
  m.fc_output_dim = cfg["fc_output_dim"] or 0
  m.netvlad_clusters = cfg["netvlad_clusters"]
  m.non_local, m.num_non_local = cfg["non_local"], cfg["num_non_local"]
  m.channel_bottleneck = cfg["channel_bottleneck"]
  m.unfreeze = cfg["unfreeze"]
  m.trunc_te, m.freeze_te = cfg["trunc_te"] or 0, cfg["freeze_te"] or 0
  m.n_layers = 0
  if cfg["backbone"] == "cct384":
    blocks = golden.block_count(state, "backbone.classifier.blocks.")
    m.cct.update({"embed_dim": int(state["backbone.classifier.positional_emb"].shape[-1]),
                  "depth": blocks, "num_heads": SETTINGS["cct_heads"],
                  "img_size": cfg["resize"][0]})
    m.trunc_te = 0  # the stored weights are the blocks kept already
  if cfg["backbone"] == "vit":
    vc = ast.literal_eval(str(Z["vit_cls/vit_config"]))
    m.hf_vit.update({"embed_dim": vc["hidden_size"],
                     "depth": golden.block_count(state, "backbone.encoder.layer."),
                     "num_heads": vc["num_attention_heads"],
                     "mlp_ratio": vc["intermediate_size"] / vc["hidden_size"]})
    m.trunc_te = 0
  c.data.image_size = tuple(cfg["resize"])
  return c


def to_ours(key: str, cfg: dict) -> str:
  """The original's key -> our export name, for the layouts these networks use."""
  fc = cfg["fc_output_dim"] is not None
  if key.startswith("backbone.classifier.attention_pool."):
    return key.replace("backbone.classifier.", "aggregation.")
  if key.startswith("backbone.") or key.startswith("non_local."):
    return re.sub(r"^non_local\.\d+\.", "non_local.", key)
  rest = key[len("aggregation."):]
  if fc and rest.startswith("1."):
    return "aggregation.fc." + rest[2:]
  if fc:
    rest = rest[2:]  # the pooling block is index 0 of Sequential(block, Linear, L2)
  if re.match(r"(\d+\.)?p$", rest):
    return "aggregation.gem.p"
  if cfg["aggregation"] == "netvlad":
    return "aggregation.netvlad." + rest
  return "aggregation." + rest


def load(cfg, state, image_size):
  c = model_config(cfg, state)
  net = build_model(c.model, None, image_size)
  template = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, *image_size, 3)), False))
  ours = {}
  for k, v in state.items():
    if k.startswith("backbone.pooler.") or (k.startswith("aggregation.") and cfg["backbone"] == "vit"):
      continue  # the pooler and an FC the original never applies to ViT
    if k.startswith("backbone.classifier.attention_pool.") and cfg["aggregation"] != "seqpool":
      continue  # CCT's attention pool is read by its seqpool only
    if k.endswith("conv.weight") and v.ndim == 3:  # NetVLAD's Conv1d on tokens
      v = v[..., None]
    ours.setdefault(to_ours(k, cfg), v)
  variables = from_torch_state(ours, {"params": template["params"],
                                      "batch_stats": template.get("batch_stats", {})})
  return net, variables


BACKBONE_TAGS = [t for t in _tags(Z) if t != "vit_cls_fc_unused"]


@pytest.mark.parametrize("tag", BACKBONE_TAGS)
def test_backbones_with_their_aggregations_match_the_original(tag):
  cfg = _config(Z, tag)
  state = _weights(Z, tag)
  images = _images(Z, tag)
  net, variables = load(cfg, state, images.shape[1:3])
  out = net.apply(variables, jnp.asarray(images), False, project=False)
  want = Z[f"{tag}/descriptors"]
  np.testing.assert_allclose(np.asarray(out["descriptor"]), want,
                             atol=2e-5 * max(1.0, np.abs(want).max()))
  # the original's features_dim (NetVLAD's x clusters is applied after it, in train.py)
  clusters = cfg["netvlad_clusters"] if cfg["aggregation"] == "netvlad" else 1
  if cfg["backbone"] != "vit":  # the original hard-codes 768 for any ViT
    assert net.descriptor_dim == int(Z[f"{tag}/features_dim"]) * clusters
  features = net.apply(variables, jnp.asarray(images), method=lambda m, x: m.backbone(x, False))
  back = Z[f"{tag}/backbone_out"]
  if back.ndim == 4:       # a CNN map (N, C, H, W)
    got = np.asarray(features.feature_map).transpose(0, 3, 1, 2)
  elif cfg["backbone"] == "vit":  # last_hidden_state: its CLS row
    got, back = np.asarray(features.prefix[:, 0]), back[:, 0]
  elif back.ndim == 3:     # CCT's token sequence
    got = np.asarray(features.feature_map).reshape(back.shape)
  else:                    # CCT pooled inside the backbone (cls / seqpool)
    got = np.asarray(out["descriptor"]) if cfg["fc_output_dim"] is None else None
  if got is not None:
    np.testing.assert_allclose(got, back, atol=2e-5 * max(1.0, np.abs(back).max()))


def test_vit_ignores_aggregation_and_fc_in_the_original_so_an_fc_is_an_error():
  cfg = _config(Z, "vit_cls_fc_unused")
  np.testing.assert_array_equal(Z["vit_cls_fc_unused/descriptors"], Z["vit_cls/descriptors"])
  c = model_config(cfg, _weights(Z, "vit_cls_fc_unused"))
  with pytest.raises(ConfigError, match="model.fc_output_dim"):
    validate(c)
  c.model.fc_output_dim, c.model.aggregation = 0, "gem"
  with pytest.raises(ConfigError, match="model.aggregation=gem"):
    validate(c)


def _non_local_outputs(g, tag):
  pattern = re.compile(rf"{tag}/non_local_(?:out|(\d+)_out|out(\d+))_fmap$|{tag}/non_local_(\d+)_out$")
  return sorted(k for k in g if pattern.match(k))


@pytest.mark.parametrize("g,tag", [(Z, "alexnet_nonlocal_mac_fc"), (A, "nonlocal1_gem"),
                                   (A, "nonlocal2_gem")], ids=lambda v: v if isinstance(v, str) else "")
def test_non_local_blocks_share_one_module_as_the_original(g, tag):
  state = _weights(g, tag)
  blocks = golden.block_count(state, "non_local.")
  for name in ("q_conv.weight", "merge_conv.bias"):
    for i in range(1, blocks):
      np.testing.assert_array_equal(state[f"non_local.{i}.{name}"], state[f"non_local.0.{name}"])
  params = {k[len("non_local.0."):]: v for k, v in state.items() if k.startswith("non_local.0.")}
  inner = params["q_conv.weight"].shape[0]
  block = NonLocalBlock(inner)
  template = jax.eval_shape(lambda: block.init(jax.random.PRNGKey(0),
                                               jnp.zeros((1, 4, 4, params["merge_conv.weight"].shape[0]))))
  variables = from_torch_state(params, {"params": template["params"]})
  if g is Z:
    x = Z[f"{tag}/backbone_out"].transpose(0, 2, 3, 1)
    outs = [Z[f"{tag}/non_local_{i}_out"] for i in range(blocks)]
    atts = [Z[f"{tag}/non_local_{i}_attention"] for i in range(blocks)]
  else:
    x = A["fmap"].transpose(0, 2, 3, 1)
    suffix = [""] if blocks == 1 else [str(i) for i in range(blocks)]
    outs = [A[f"{tag}/non_local_out{s}_fmap"] for s in suffix]
    atts = [A[f"{tag}/non_local_attention{s}_fmap"] for s in suffix]
  y = jnp.asarray(x)
  for out, att in zip(outs, atts):
    y, a = block.apply(variables, y)
    np.testing.assert_allclose(np.asarray(a), att, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y).transpose(0, 3, 1, 2), out,
                               atol=2e-5 * max(1.0, np.abs(out).max()))


# ---------------------------------------------------------------- aggregations on fixed inputs

AGG_INPUTS = {"fmap": "map", "fmap_tall": "map", "fmap_square": "map", "fmap_wide": "map",
              "tokens": "tokens"}
AGG_TAGS = [t for t in _tags(A) if not t.startswith(("nonlocal", "netvlad_init"))]


def _aggregation(tag, cfg, state, x_map):
  """Our aggregation module for the original's args, with the tag's weights, applied to a
  map (N, h, w, C) given as Features (a token sequence on a 1 x N grid)."""
  from vgssl_jax.models import aggregations  # pylint: disable=import-outside-toplevel
  from vgssl_jax.models.features import FEATURE_MAP, PREFIX, FeatureShapes
  c = model_config(cfg, state).model
  sequence = cfg["work_with_tokens"]
  shapes = FeatureShapes((FEATURE_MAP, PREFIX), map_channels=x_map.shape[-1],
                         map_hw=x_map.shape[1:3], token_dim=x_map.shape[-1], prefix_tokens=1,
                         sequence=sequence)
  module, size = aggregations.build_aggregation(c, shapes)
  feats = Features(feature_map=jnp.asarray(x_map), prefix=jnp.asarray(x_map).reshape(
      x_map.shape[0], -1, x_map.shape[-1])[:, :1])
  template = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), feats))
  ours = {}
  for k, v in state.items():
    if k.startswith("classifier.attention_pool."):
      ours[k[len("classifier."):]] = v
      continue
    if k.endswith("conv.weight") and v.ndim == 3:  # NetVLAD's Conv1d on tokens
      v = v[..., None]
    ours[to_ours(k, cfg)[len("aggregation."):]] = v
  variables = from_torch_state(ours, {"params": template.get("params", {})})
  return module, variables, feats, size


@pytest.mark.parametrize("tag", AGG_TAGS)
def test_every_aggregation_matches_the_original_on_fixed_inputs(tag):
  cfg = _config(A, tag) if f"{tag}/config" in A else {
      **_config(A, "tokens_none"), "aggregation": tag}
  state = golden.weights(A, f"{tag}/w/")
  outs = [k for k in A if k.startswith(f"{tag}/out_")]
  assert outs
  for key in outs:
    name = key.split("/out_")[1]
    x = A[name]
    x_map = x.transpose(0, 2, 3, 1) if x.ndim == 4 else x[:, None]  # tokens: a 1 x N grid
    module, variables, feats, size = _aggregation(tag, cfg, state, x_map)
    got = np.asarray(module.apply(variables, feats))
    want = A[key]
    if want.ndim > 2:  # "none": the map / sequence itself, flattened as the original's
      want = want.reshape(want.shape[0], -1)
    np.testing.assert_allclose(got, want, atol=2e-5 * max(1.0, np.abs(want).max()))
    assert size == got.shape[-1]
    # intermediates: soft-assignments and CRN's masks
    for inter in ("soft_assign", "mask"):
      k = f"{tag}/{inter}_{name}"
      if k in A:
        _, inner = module.apply(variables, feats, capture_intermediates=True, mutable=["intermediates"])
        found = [np.asarray(v[0]) for p, v in traverse_util.flatten_dict(inner["intermediates"]).items()
                 if inter in "/".join(map(str, p))]
        assert found, (k, list(traverse_util.flatten_dict(inner["intermediates"])))
        got_inter = found[0].transpose(0, 2, 1) if inter == "soft_assign" else found[0]
        np.testing.assert_allclose(got_inter.reshape(A[k].shape), A[k], atol=1e-5)


def test_the_pairs_the_original_cannot_run_are_errors_before_any_work():
  c = base_config()
  c.model.backbone, c.model.aggregation = "resnet18conv4", "crn"
  c.data.image_size = (80, 112)   # a 5 x 7 map: odd, the original crashes
  with pytest.raises(ConfigError, match="even"):
    validate(c)
  c.model.backbone = "cct384"
  c.model.cct.update({"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 64})
  c.data.image_size = (64, 64)
  for agg in ("spoc", "mac", "rmac", "rrm", "crn"):
    c.model.aggregation = agg
    with pytest.raises(ConfigError, match="token sequence"):
      validate(c)
  c.model.aggregation = "gem"
  c.data.image_size = (64, 80)
  with pytest.raises(ConfigError, match="64x64"):
    validate(c)
  c = base_config()
  c.model.backbone, c.model.aggregation, c.model.fc_output_dim = "resnet18conv4", "none", 16
  with pytest.raises(ConfigError, match="none"):
    validate(c)


# ---------------------------------------------------------------- frozen parameters

FREEZE_CASES = [str(c) for c in F["cases"]]


@pytest.mark.parametrize("case", FREEZE_CASES)
def test_frozen_parameters_are_the_originals(case):
  cfg = _config(F, case)
  c = base_config()
  m = c.model
  m.backbone, m.aggregation = cfg["backbone"], cfg["aggregation"]
  m.unfreeze = cfg["unfreeze"]
  m.trunc_te, m.freeze_te = cfg["trunc_te"] or 0, cfg["freeze_te"] or 0
  m.fc_output_dim, m.n_layers = cfg["fc_output_dim"] or 0, 0
  size = (384, 384) if cfg["backbone"] == "cct384" else (224, 224)
  if cfg["backbone"] == "vit":
    size = tuple(cfg["resize"]) if cfg["resize"][0] in (224, 384) else (224, 224)
  while cfg["aggregation"] == "crn" and any(v % 2 for v in backbones.shapes(m, size).map_hw):
    size = (size[0] + 16, size[1] + 16)  # CRN needs an even map
  c.data.image_size = size
  net = build_model(m, None, size)
  template = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, *size, 3)),
                                             False))
  fam, _ = backbones.family(m.backbone)
  frozen_paths = [p.split("/") for p in backbones.frozen_modules(m)]
  from vgssl_jax.models import aggregations  # pylint: disable=import-outside-toplevel
  frozen_paths += [p.split("/") for p in aggregations.frozen_modules(m)]
  names_frozen, names_all = set(), set()
  for path, _ in traverse_util.flatten_dict(template["params"]).items():
    torch_name = next(iter(to_torch_state(traverse_util.unflatten_dict({path: np.zeros(1)}))))
    if not torch_name.startswith(("backbone.", "aggregation.crn.")):
      continue
    original = fam.original.to_original(torch_name)
    names_all.add(original)
    if any(list(path[:len(p)]) == p for p in frozen_paths):
      names_frozen.add(original)
  want_frozen = {str(n) for n in F[f"{case}/frozen"]
                 if str(n).startswith(("backbone.", "aggregation.crn."))}
  want_all = want_frozen | {str(n) for n in F[f"{case}/trainable"]
                            if str(n).startswith(("backbone.", "aggregation.crn."))}
  # parameters the original has and this network does not: ViT's pooler (never used) and
  # CCT's attention_pool (ours belongs to the seqpool aggregation)
  unused = {n for n in want_all - names_all
            if n.startswith(("backbone.pooler.", "backbone.classifier.attention_pool."))}
  assert names_all == want_all - unused, (sorted(names_all ^ (want_all - unused))[:10])
  assert names_frozen == want_frozen - unused
  if f"{case}/num_blocks" in F:
    prefix = "backbone.classifier.blocks." if m.backbone == "cct384" else "backbone.encoder.layer."
    assert golden.block_count({n: 0 for n in names_all}, prefix) == int(F[f"{case}/num_blocks"])


def test_netvlad_initialisation_matches_the_original():
  from vgssl_jax.models.pooling import netvlad_init_params  # pylint: disable=import-outside-toplevel
  init = netvlad_init_params(A["netvlad_init/centroids_in"], A["netvlad_init/descriptors"])
  np.testing.assert_allclose(init["alpha"], float(A["netvlad_init/alpha"]), rtol=1e-5)
  np.testing.assert_allclose(init["centroids"], A["netvlad_init/w/centroids"], atol=1e-6)
  np.testing.assert_allclose(init["conv"]["kernel"].transpose(3, 2, 0, 1),
                             A["netvlad_init/w/conv.weight"], rtol=1e-5, atol=1e-5)


ZOO_RUNS = {
    "vgg16": ["--config.model.aggregation=netvlad", "--config.model.netvlad_clusters=4",
              "--config.model.fc_output_dim=0", "--config.model.non_local=True",
              "--config.model.channel_bottleneck=4"],
    "alexnet": ["--config.model.aggregation=rrm"],
    "cct384": ["--config.data.image_size=32,32", "--config.model.cct.img_size=32",
               "--config.model.cct.embed_dim=16", "--config.model.cct.depth=2",
               "--config.model.cct.num_heads=2", "--config.model.trunc_te=1",
               "--config.model.freeze_te=-1"],
    "vit": ["--config.data.image_size=224,224", "--config.model.hf_vit.embed_dim=16",
            "--config.model.hf_vit.depth=1", "--config.model.hf_vit.num_heads=2",
            "--config.model.fc_output_dim=0"],
}


@pytest.mark.parametrize("backbone", ZOO_RUNS)
def test_every_zoo_backbone_trains_and_evaluates_through_main(backbone, tiny_root, tmp_path):
  import json  # pylint: disable=import-outside-toplevel
  import os  # pylint: disable=import-outside-toplevel
  from tests.conftest import run_python, tiny_overrides  # pylint: disable=import-outside-toplevel
  from tests.test_main import main_args  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path / "run")
  proc = run_python(main_args(workdir, *tiny_overrides(tiny_root),
                              f"--config.model.backbone={backbone}", *ZOO_RUNS[backbone],
                              "--config.eval.before=False"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.load(open(os.path.join(workdir, "results.json")))["after"]["synthetic"]
  assert 0 <= r["recall@1"] <= r["recall@5"] <= 100


@pytest.mark.parametrize("backbone", ["vgg16", "alexnet", "cct384", "vit"])
def test_pretrained_files_in_the_layouts_the_original_loads(backbone, tmp_path):
  """torchvision VGG16 / AlexNet (`features.*` + `classifier.*`), the CCT release
  (`tokenizer.*`, `classifier.*` with its ImageNet `fc` and blocks beyond trunc_te) and a HF
  ViTForImageClassification file (`vit.*`, pooler, classifier, layers beyond trunc_te),
  written from a network (made in the test) and loaded as model.pretrained."""
  from tests import torch_files  # pylint: disable=import-outside-toplevel
  from vgssl_jax.models.network import init_variables  # pylint: disable=import-outside-toplevel
  c = base_config()
  m = c.model
  m.backbone, m.width, m.fc_output_dim, m.n_layers = backbone, 8, 0, 0
  size = (64, 64)
  if backbone == "cct384":
    m.cct.update({"embed_dim": 16, "depth": 3, "num_heads": 2, "img_size": 64})
    m.aggregation, m.trunc_te = "seqpool", 2
  if backbone == "vit":
    m.hf_vit.update({"embed_dim": 16, "depth": 3, "num_heads": 2})
    m.trunc_te, size = 2, (224, 224)
  net = build_model(m, None, size)
  source = jax.device_get(init_variables(net, jax.random.PRNGKey(5), size))
  ours = to_torch_state(source["params"])
  rng = np.random.default_rng(0)
  if backbone in ("vgg16", "alexnet"):
    state = {"features." + k[len("backbone."):]: v for k, v in ours.items()}
    state["classifier.6.weight"] = rng.normal(size=(10, 4)).astype(np.float32)
  elif backbone == "cct384":
    state = {k[len("backbone."):]: v for k, v in ours.items() if k.startswith("backbone.")}
    state.update({"classifier." + k[len("aggregation."):]: v for k, v in ours.items()
                  if k.startswith("aggregation.attention_pool.")})
    state["classifier.fc.weight"] = rng.normal(size=(10, 16)).astype(np.float32)
    state["classifier.blocks.2.linear1.weight"] = rng.normal(size=(48, 16)).astype(np.float32)
  else:
    state = {"vit." + k[len("backbone."):]: v for k, v in ours.items()}
    state["vit.pooler.dense.weight"] = rng.normal(size=(16, 16)).astype(np.float32)
    state["classifier.weight"] = rng.normal(size=(10, 16)).astype(np.float32)
    state["vit.encoder.layer.2.output.dense.bias"] = np.zeros(16, np.float32)
  path = str(tmp_path / "weights.pth")
  torch_files.save(state, path)
  m.pretrained = path
  target = jax.device_get(init_variables(net, jax.random.PRNGKey(6), size))
  loaded = backbones.load_pretrained(m, target, size)
  for part in ("backbone",) + (("aggregation",) if backbone == "cct384" else ()):
    for a, b in zip(jax.tree.leaves(loaded["params"][part]), jax.tree.leaves(source["params"][part])):
      np.testing.assert_array_equal(a, b)
  m.pretrained = ""
  other = {"vgg16": "alexnet", "alexnet": "vgg16", "cct384": "vit", "vit": "cct384"}[backbone]
  with pytest.raises(ConfigError):  # another family's file: refused, naming the problem
    c2 = base_config().model
    c2.update({"backbone": other, "width": 8, "fc_output_dim": 0, "n_layers": 0,
               "pretrained": path})
    c2.cct.update({"embed_dim": 16, "depth": 2, "num_heads": 2, "img_size": 64})
    c2.hf_vit.update({"embed_dim": 16, "depth": 2, "num_heads": 2})
    s2 = (224, 224) if other == "vit" else (64, 64)
    net2 = build_model(c2, None, s2)
    backbones.load_pretrained(c2, jax.device_get(init_variables(net2, jax.random.PRNGKey(0), s2)), s2)
