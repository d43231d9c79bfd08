"""PyTorch weights in and out: torchvision backbones, VG-SSL checkpoints, export round trips.

The numpy tests build state dicts whose names and shapes are derived here, independently of
vgssl_jax (checked against the real torchvision resnet50 list). The torch tests build the
original's modules with torch and compare features and descriptors.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from vgssl_jax.errors import ConfigError
from vgssl_jax.models import pretrained
from vgssl_jax.models.network import GeoLocalizationNet
from vgssl_jax.models.resnet import ResNet, parse_backbone

DATA = os.path.join(os.path.dirname(__file__), "data")
BLOCKS = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3)),
          101: ("bottleneck", (3, 4, 23, 3))}
NETS = [("resnet18conv4", 8), ("resnet50conv5", 8)]


# ----------------------------------------------------------------------------- helpers

def torchvision_shapes(depth: int, width: int = 64, num_classes: int = 1000) -> dict:
  """torchvision.models.resnet<depth>().state_dict() names and shapes (stem width `width`)."""
  kind, blocks = BLOCKS[depth]
  expansion = 1 if kind == "basic" else 4
  shapes = {}

  def conv(name, out, cin, k):
    shapes[name + ".weight"] = (out, cin, k, k)

  def bn(name, c):
    for leaf in ("weight", "bias", "running_mean", "running_var"):
      shapes[f"{name}.{leaf}"] = (c,)
    shapes[name + ".num_batches_tracked"] = ()

  conv("conv1", width, 3, 7)
  bn("bn1", width)
  inplanes = width
  for stage, n in enumerate(blocks):
    planes = width * 2 ** stage
    for b in range(n):
      p = f"layer{stage + 1}.{b}"
      if kind == "basic":
        conv(p + ".conv1", planes, inplanes, 3)
        bn(p + ".bn1", planes)
        conv(p + ".conv2", planes, planes, 3)
        bn(p + ".bn2", planes)
      else:
        conv(p + ".conv1", planes, inplanes, 1)
        bn(p + ".bn1", planes)
        conv(p + ".conv2", planes, planes, 3)
        bn(p + ".bn2", planes)
        conv(p + ".conv3", planes * 4, planes, 1)
        bn(p + ".bn3", planes * 4)
      if b == 0 and (stage > 0 or inplanes != planes * expansion):
        conv(p + ".downsample.0", planes * expansion, inplanes, 1)
        bn(p + ".downsample.1", planes * expansion)
      inplanes = planes * expansion
  shapes["fc.weight"] = (num_classes, inplanes)
  shapes["fc.bias"] = (num_classes,)
  return shapes


def random_state(shapes: dict, seed: int = 0) -> dict:
  """Random float32 arrays (positive running variances, int64 batch counters)."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in shapes.items():
    if name.endswith("num_batches_tracked"):
      out[name] = np.array(7, np.int64)
    elif name.endswith("running_var"):
      out[name] = rng.uniform(0.5, 2.0, shape).astype(np.float32)
    else:
      out[name] = rng.normal(size=shape).astype(np.float32)
  return out


def make_net(backbone: str, width: int, n_layers: int = 0) -> GeoLocalizationNet:
  return GeoLocalizationNet(backbone, width=width, fc_output_dim=16, n_layers=n_layers,
                            projection_size=24)


def init(net: GeoLocalizationNet, seed: int = 0) -> dict:
  """Random variables of `net` (NumPy; from the shapes alone: an eager init compiles every
  layer and takes seconds)."""
  shapes = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                           train=False))
  rng = np.random.default_rng(seed)

  def fill(path, s):
    if path[-1].key == "var":
      return rng.uniform(0.5, 2.0, s.shape).astype(s.dtype)
    return (rng.normal(size=s.shape) * 0.3).astype(s.dtype)
  return dict(jax.tree_util.tree_map_with_path(fill, shapes))


def expected_flax(torch_name: str, value: np.ndarray) -> tuple[tuple, np.ndarray]:
  """(flax path, array) of one torch tensor, derived here from the naming rules."""
  *mods, leaf = torch_name.split(".")
  if leaf in ("running_mean", "running_var"):
    return ("batch_stats", *mods, leaf[len("running_"):]), value
  if leaf == "weight" and value.ndim == 4:
    return ("params", *mods, "kernel"), value.transpose(2, 3, 1, 0)
  if leaf == "weight" and value.ndim == 2:
    return ("params", *mods, "kernel"), value.T
  if leaf == "weight":
    return ("params", *mods, "scale"), value
  return ("params", *mods, leaf), value


def flat(variables: dict) -> dict:
  return {k: np.asarray(v) for k, v in traverse_util.flatten_dict(variables).items()}


def backbone_shapes(backbone: str, width: int) -> dict:
  """torchvision names of the part of the ResNet that `backbone` keeps, without counters."""
  depth, last_stage = parse_backbone(backbone)
  shapes = torchvision_shapes(depth, width)
  return {k: v for k, v in shapes.items() if not k.startswith("fc.")
          and not (last_stage == 4 and k.startswith("layer4."))
          and not k.endswith("num_batches_tracked")}


def sequential_name(name: str) -> str:
  """torchvision name -> the original's nn.Sequential(children[:-2]) name."""
  head, _, rest = name.partition(".")
  index = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6",
           "layer4": "7"}[head]
  return f"{index}.{rest}"


def vgssl_state(backbone: str, width: int, layout: str, seed: int = 1) -> dict:
  """A VG-SSL checkpoint's state dict for GeoLocalizationNet(backbone, width, fc 16)."""
  rng = np.random.default_rng(seed)
  shapes = backbone_shapes(backbone, width)
  depth, last_stage = parse_backbone(backbone)
  channels = width * 2 ** (last_stage - 2) * (1 if BLOCKS[depth][0] == "basic" else 4)
  names = {k: k if layout == "torchvision-names" else sequential_name(k) for k in shapes}
  state = {"backbone." + names[k]: v for k, v in random_state(shapes, seed).items()}
  p = np.array([rng.uniform(2, 4)], np.float32)
  w = rng.normal(size=(16, channels)).astype(np.float32)
  b = rng.normal(size=(16,)).astype(np.float32)
  if layout == "projector":
    state.update({"aggregation.0.0.1.p": p, "aggregation.0.1.weight": w,
                  "aggregation.0.1.bias": b,
                  # a VICReg n_layers=2 projector: Linear nb, BN, ReLU, Linear nb
                  "aggregation.1.0.weight": np.ones((24, 16), np.float32),
                  "aggregation.1.1.weight": np.ones(24, np.float32),
                  "aggregation.1.1.bias": np.ones(24, np.float32),
                  "aggregation.1.1.running_mean": np.ones(24, np.float32),
                  "aggregation.1.1.running_var": np.ones(24, np.float32),
                  "aggregation.1.1.num_batches_tracked": np.array(3, np.int64),
                  "aggregation.1.3.weight": np.ones((24, 24), np.float32)})
  else:
    state.update({"aggregation.0.1.p": p, "aggregation.1.weight": w, "aggregation.1.bias": b})
  # the SSL wrapper's copies (the very same modules under other names) and a predictor
  state["ssl_model.online_encoder.net.0.weight"] = state["backbone." + names["conv1.weight"]]
  state["ssl_model.online_predictor.net.0.weight"] = np.ones((4, 24), np.float32)
  return state


def check_imported(variables: dict, state: dict, backbone_names: dict, gem: str, fc: str):
  """`variables` hold the backbone / GeM / FC tensors of `state`, transposed."""
  got = flat(variables)
  for torch_name, source in backbone_names.items():
    path, value = expected_flax(torch_name, state[source])
    np.testing.assert_array_equal(got[(path[0], "backbone", *path[1:])], value)
  np.testing.assert_array_equal(got[("params", "aggregation", "gem", "p")], state[gem])
  np.testing.assert_array_equal(got[("params", "aggregation", "fc", "kernel")],
                                state[fc + ".weight"].T)
  np.testing.assert_array_equal(got[("params", "aggregation", "fc", "bias")],
                                state[fc + ".bias"])


# ----------------------------------------------------------------------------- numpy only

def test_derived_torchvision_names_equal_the_real_resnet50_list():
  with open(os.path.join(DATA, "torchvision_resnet50_keys.txt")) as f:
    want = {name: tuple(int(s) for s in shape.split("x"))
            for name, shape in (line.split() for line in f if line.strip())}
  assert backbone_shapes("resnet50conv5", 64) == want


@pytest.mark.parametrize("depth", [18, 50])
def test_our_resnet_names_equal_torchvision(depth):
  """Full-width ResNet-18/50: the Flax names and shapes a torchvision file must fill."""
  shapes = jax.eval_shape(lambda: ResNet(depth, 5, 64).init(
      jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False))
  got = {k: v[2] for k, v in pretrained._torch_layout(shapes).items()}
  assert got == backbone_shapes(f"resnet{depth}conv5", 64)


@pytest.mark.parametrize("backbone,width", NETS)
def test_torchvision_state_dict_loads_into_the_backbone(backbone, width, tmp_path):
  net = make_net(backbone, width, n_layers=2)
  variables = init(net)
  depth, _ = parse_backbone(backbone)
  state = random_state(torchvision_shapes(depth, width))  # fc, layer4 and counters included
  path = str(tmp_path / "resnet.npz")
  np.savez(path, **state)
  loaded = pretrained.load_torchvision_backbone(path, variables)
  got, before = flat(loaded), flat(variables)
  names = backbone_shapes(backbone, width)
  assert len([k for k in got if k[1] == "backbone"]) == len(names)
  for name in names:
    path_, value = expected_flax(name, state[name])
    key = (path_[0], "backbone", *path_[1:])
    assert got[key].dtype == np.float32
    np.testing.assert_array_equal(got[key], value)
  for key, value in before.items():  # aggregation and projector are untouched
    if key[1] != "backbone":
      np.testing.assert_array_equal(got[key], value)


def test_mismatched_state_dict_lists_missing_unexpected_and_reshaped_keys(tmp_path):
  net = make_net("resnet18conv4", 8)
  variables = init(net)
  state = random_state(torchvision_shapes(18, 8))
  del state["layer1.0.conv1.weight"], state["layer3.1.bn2.running_var"]
  state["layer9.0.conv1.weight"] = np.zeros((1, 1, 1, 1), np.float32)
  state["bn1.weight"] = np.zeros(9, np.float32)
  path = str(tmp_path / "bad.npz")
  np.savez(path, **state)
  with pytest.raises(ConfigError) as e:
    pretrained.load_torchvision_backbone(path, variables)
  message = str(e.value)
  for text in ("2 missing", "backbone.layer1.0.conv1.weight", "backbone.layer3.1.bn2.running_var",
               "1 unexpected", "backbone.layer9.0.conv1.weight",
               "1 with other shapes", "backbone.bn1.weight (9,) (expected (8,))"):
    assert text in message, message
  # a full-width file for a narrow model: every shape is listed as different
  state = random_state(torchvision_shapes(18, 64))
  np.savez(path, **state)
  with pytest.raises(ConfigError, match="with other shapes.*model.width"):
    pretrained.load_torchvision_backbone(path, variables)
  np.savez(path, **vgssl_state("resnet18conv4", 8, "plain"))  # the wrong loader
  with pytest.raises(ConfigError, match="load with import_vgssl_checkpoint"):
    pretrained.load_torchvision_backbone(path, variables)


def test_from_torch_state_is_the_inverse_of_to_torch_state():
  from vgssl_jax.models.torch_names import to_torch_state
  variables = init(make_net("resnet50conv5", 8, n_layers=2), seed=3)
  state = to_torch_state(variables["params"], variables["batch_stats"])
  state["backbone.bn1.num_batches_tracked"] = np.array(5)  # ignored
  back = pretrained.from_torch_state(state, variables)
  assert jax.tree.structure(back) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  # abstract templates work too (shapes only)
  abstract = jax.eval_shape(lambda: variables)
  back = pretrained.from_torch_state(state, abstract)
  np.testing.assert_array_equal(back["params"]["aggregation"]["gem"]["p"],
                                variables["params"]["aggregation"]["gem"]["p"])


@pytest.mark.parametrize("layout", ["plain", "projector", "torchvision-names"])
@pytest.mark.parametrize("backbone,width", NETS)
def test_vgssl_checkpoint_layouts_import(backbone, width, layout, tmp_path):
  state = vgssl_state(backbone, width, layout)
  variables = init(make_net(backbone, width, n_layers=2))
  path = str(tmp_path / "ckpt.safetensors")
  from safetensors.numpy import save_file
  save_file(state, path)
  loaded = pretrained.import_vgssl_checkpoint(path, variables)
  names = {k: "backbone." + (k if layout == "torchvision-names" else sequential_name(k))
           for k in backbone_shapes(backbone, width)}
  gem, fc = (("aggregation.0.0.1.p", "aggregation.0.1") if layout == "projector"
             else ("aggregation.0.1.p", "aggregation.1"))
  check_imported(loaded, state, names, gem, fc)
  np.testing.assert_array_equal(loaded["params"]["projector"]["0"]["kernel"],
                                variables["params"]["projector"]["0"]["kernel"])
  _, report = pretrained.import_vgssl_state(state, variables)
  assert report["layout"] == ("projector" if layout == "projector" else "plain")
  assert report["loaded"]["aggregation.gem.p"] == gem
  assert report["loaded"]["backbone.conv1.weight"] == names["conv1.weight"]
  assert len(report["loaded"]) == len(names) + 3
  assert sorted(report["ignored"]["ssl_model.* (SSL wrapper copies)"]) == [
      "ssl_model.online_encoder.net.0.weight", "ssl_model.online_predictor.net.0.weight"]
  if layout == "projector":
    assert "aggregation.1.3.weight" in report["ignored"]["projector"]


def test_vgssl_import_is_strict():
  variables = init(make_net("resnet18conv4", 8))
  state = vgssl_state("resnet18conv4", 8, "plain")
  # a conv5 checkpoint for a conv4 model: layer4 (Sequential index 7) is unexpected
  state["backbone.7.0.conv1.weight"] = np.zeros((64, 32, 3, 3), np.float32)
  state["aggregation.0.0.weight"] = np.zeros(3, np.float32)
  state["backbone.1.0.weight"] = np.zeros(3, np.float32)  # another structure: not renamed
  del state["backbone.1.running_mean"]
  with pytest.raises(ConfigError) as e:
    pretrained.import_vgssl_state(state, variables)
  for text in ("backbone.layer4.0.conv1.weight", "aggregation.0.0.weight", "backbone.1.0.weight",
               "3 unexpected", "1 missing: backbone.bn1.running_mean"):
    assert text in str(e.value)
  with pytest.raises(ConfigError, match="no GeM parameter"):
    pretrained.import_vgssl_state({"backbone.0.weight": np.zeros(3)}, variables)
  with pytest.raises(ConfigError, match="several GeM layouts"):
    pretrained.import_vgssl_state({"aggregation.0.1.p": np.ones(1),
                                   "aggregation.0.0.1.p": np.ones(1)}, variables)
  with pytest.raises(ConfigError, match="DeiT"):
    pretrained.import_vgssl_state({"backbone.cls_token": np.zeros((1, 1, 4)),
                                   "aggregation.1.weight": np.zeros((4, 4))}, variables)


def test_containers_and_dataparallel_prefix_are_unwrapped():
  x = np.ones(2, np.float32)
  lightning = {"epoch": 3, "state_dict": {"backbone.0.weight": x}, "optimizer_states": [],
               "callbacks": {"ModelCheckpoint": {"best_model_score": np.array(51.0)}}}
  assert list(pretrained.unwrap_state(lightning)) == ["backbone.0.weight"]
  train_py = {"epoch_num": 3, "best_r5": 50.0,
              "model_state_dict": {"module.backbone.0.weight": x, "module.aggregation.1.bias": x}}
  assert sorted(pretrained.unwrap_state(train_py)) == ["aggregation.1.bias", "backbone.0.weight"]
  with pytest.raises(ConfigError, match="no tensors"):
    pretrained.unwrap_state({"epoch": 1})
  with pytest.raises(ConfigError, match="not a dictionary"):
    pretrained.unwrap_state([x])


def test_unreadable_files_are_clear_errors(tmp_path, monkeypatch):
  with pytest.raises(ConfigError, match="does not exist"):
    pretrained.load_state_dict(str(tmp_path / "nope.pth"))
  (tmp_path / "w.h5").write_bytes(b"")
  with pytest.raises(ConfigError, match="extension '.h5'"):
    pretrained.load_state_dict(str(tmp_path / "w.h5"))
  for name in ("w.safetensors", "w.npz"):
    (tmp_path / name).write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=f"cannot read .*{name}") as err:
      pretrained.load_state_dict(str(tmp_path / name))
    assert "allow_pickle" not in str(err.value)  # numpy's advice for a damaged .npz
  # the evaluation runner reads an export's metadata first
  with pytest.raises(ConfigError, match="cannot read .*w.safetensors"):
    pretrained.read_export_metadata(str(tmp_path / "w.safetensors"))
  with pytest.raises(ConfigError, match="does not exist"):
    pretrained.read_export_metadata(str(tmp_path / "nope.safetensors"))
  (tmp_path / "w.pth").write_bytes(b"")
  monkeypatch.setitem(__import__("sys").modules, "torch", None)  # torch not installed
  with pytest.raises(ConfigError, match="pip install torch"):
    pretrained.load_state_dict(str(tmp_path / "w.pth"))
  with pytest.raises(ConfigError, match=r"\.safetensors or \.npz"):
    pretrained.export_descriptor_model({}, str(tmp_path / "model.pth"))


@pytest.mark.parametrize("ext", ["npz", "safetensors"])
@pytest.mark.parametrize("backbone,width", NETS)
def test_export_round_trips_bit_exactly(backbone, width, ext, tmp_path):
  source = init(make_net(backbone, width, n_layers=2), seed=1)
  source = jax.tree.map(jnp.asarray, source)  # as training leaves them
  path = str(tmp_path / f"model.{ext}")
  written = pretrained.export_descriptor_model(source, path, {"backbone": backbone})
  state = pretrained.load_state_dict(path)
  assert sorted(state) == sorted(written)
  depth, last_stage = parse_backbone(backbone)
  channels = width * 2 ** (last_stage - 2) * (1 if depth == 18 else 4)
  want = {"backbone." + k: v for k, v in backbone_shapes(backbone, width).items()}
  want.update({"aggregation.gem.p": (1,), "aggregation.fc.weight": (16, channels),
               "aggregation.fc.bias": (16,)})
  assert {k: v.shape for k, v in state.items()} == want  # names and PyTorch layouts
  np.testing.assert_array_equal(state["backbone.layer1.0.conv1.weight"],
                                np.asarray(source["params"]["backbone"]["layer1"]["0"]["conv1"]
                                           ["kernel"]).transpose(3, 2, 0, 1))
  target = init(make_net(backbone, width, n_layers=2), seed=2)
  loaded = pretrained.import_vgssl_checkpoint(path, target)
  got, src, tgt = flat(loaded), flat(source), flat(target)
  assert got.keys() == src.keys()
  for key in got:
    want_value = tgt[key] if key[1] == "projector" else src[key]
    assert got[key].dtype == want_value.dtype
    np.testing.assert_array_equal(got[key], want_value)
  assert pretrained.read_export_metadata(path) == (
      {"backbone": backbone} if ext == "safetensors" else {})


def test_export_command_writes_the_checkpoint_weights(tmp_path):
  from vgssl_jax import checkpoints, export
  model_settings = {"backbone": "resnet18conv4", "width": 8, "fc_output_dim": 16,
                    "n_layers": 2, "projection_size": 24, "dtype": "float32"}
  variables = init(make_net("resnet18conv4", 8, n_layers=2), seed=4)
  # only the items the export reads (the train state also holds the optimizer and more)
  import orbax.checkpoint as ocp
  mngr = checkpoints.manager(str(tmp_path / "run" / "checkpoints"))
  mngr.save(3, args=ocp.args.Composite(
      state=ocp.args.StandardSave({"params": {"net": variables["params"]},
                                   "batch_stats": {"net": variables["batch_stats"]}}),
      meta=ocp.args.JsonSave({"epoch": 1, "method": "vicreg", "model": model_settings,
                              "image_size": [32, 32], "metrics": {}})))
  mngr.wait_until_finished()
  out = str(tmp_path / "model.safetensors")
  export.main(["--checkpoint", str(tmp_path / "run"), "--out", out])
  loaded = pretrained.import_vgssl_checkpoint(out, init(make_net("resnet18conv4", 8), seed=5))
  for key, value in flat(loaded).items():
    if key[1] != "projector":
      np.testing.assert_array_equal(value, flat(variables)[key])
  meta = pretrained.read_export_metadata(out)
  assert meta["model"] == model_settings and meta["method"] == "vicreg" and meta["step"] == 3
  assert meta["image_size"] == [32, 32]
  with pytest.raises(SystemExit, match="error: cannot export"):
    export.main(["--checkpoint", str(tmp_path / "run"), "--out", str(tmp_path / "m.pth")])


# ----------------------------------------------------------------------------- with torch

def torch_resnet(torch, depth: int, width: int):
  """A torchvision-compatible ResNet (v1.5) with stem width `width`: same module names and
  children order as torchvision.models.resnet<depth>, which cannot be made narrow."""
  del torch  # imported by the caller (importorskip); the reference imports it too
  from vgssl_jax.models.torch_reference import ResNet
  return ResNet(depth, width)


def randomize(torch, module, seed: int):
  """Random weights that keep activations O(1), and random BatchNorm running statistics."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in module.state_dict().items():
      if name.endswith("num_batches_tracked"):
        continue
      if name.endswith("running_var"):
        t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
      elif name.endswith("running_mean") or name.endswith("bias"):
        t.copy_(torch.randn(t.shape, generator=g) * 0.1)
      elif t.ndim == 1:  # BatchNorm scale
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      else:
        t.copy_(torch.randn(t.shape, generator=g) * (2.0 / np.prod(t.shape[1:])) ** 0.5)


def test_torch_resnet_in_this_file_has_torchvision_names():
  torch = pytest.importorskip("torch")
  for depth in (18, 50):
    got = {k: tuple(v.shape) for k, v in torch_resnet(torch, depth, 64).state_dict().items()}
    assert got == torchvision_shapes(depth, 64)
    try:
      import torchvision
    except Exception:  # missing, or built for another torch (its C ops fail to register)
      continue
    real = getattr(torchvision.models, f"resnet{depth}")(weights=None).state_dict()
    assert got == {k: tuple(v.shape) for k, v in real.items()}


def test_torch_files_with_python_objects_or_garbage_are_clear_errors(tmp_path):
  torch = pytest.importorskip("torch")
  import argparse
  path = str(tmp_path / "lightning.ckpt")
  torch.save({"state_dict": {"backbone.0.weight": torch.ones(2, dtype=torch.bfloat16)},
              "hyper_parameters": argparse.Namespace(lr=1.0)}, path)
  with pytest.raises(ConfigError, match="Python objects besides tensors.*Namespace"):
    pretrained.load_state_dict(path)
  torch.save({"state_dict": {"backbone.0.weight": torch.ones(2, dtype=torch.bfloat16)}}, path)
  state = pretrained.load_state_dict(path)  # bfloat16 arrives as float32
  assert state["backbone.0.weight"].dtype == np.float32
  (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
  with pytest.raises(ConfigError, match="not a PyTorch file"):
    pretrained.load_state_dict(str(tmp_path / "junk.pth"))


@pytest.mark.parametrize("backbone,width", NETS)
def test_torchvision_backbone_features_match_torch(backbone, width, tmp_path):
  torch = pytest.importorskip("torch")
  depth, last_stage = parse_backbone(backbone)
  resnet = torch_resnet(torch, depth, width)
  randomize(torch, resnet, seed=0)
  path = str(tmp_path / f"resnet{depth}.pth")
  torch.save(resnet.state_dict(), path)
  variables = pretrained.load_torchvision_backbone(path, init(make_net(backbone, width)))
  x = np.random.default_rng(0).normal(size=(2, 3, 64, 96)).astype(np.float32)
  trunk = torch.nn.Sequential(*list(resnet.children())[:-2 if last_stage == 5 else -3]).eval()
  with torch.no_grad():
    want = trunk(torch.from_numpy(x)).numpy().transpose(0, 2, 3, 1)
  ours = ResNet(depth, last_stage, width).apply(
      {"params": variables["params"]["backbone"],
       "batch_stats": variables["batch_stats"]["backbone"]},
      jnp.asarray(x.transpose(0, 2, 3, 1)), train=False)
  assert ours.shape == want.shape
  np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def torch_vgssl_checkpoint(torch, backbone: str, width: int, n_layers: int, seed: int):
  """The original's SSL LightningModule parts: backbone = Sequential(children[:-2]),
  aggregation = Sequential(Sequential(L2Norm, GeM, Flatten), Linear, L2Norm)[, projector],
  ssl_model sharing them. Returns (module, descriptor function)."""
  nn, F = torch.nn, torch.nn.functional
  depth, last_stage = parse_backbone(backbone)
  resnet = torch_resnet(torch, depth, width)

  class L2Norm(nn.Module):
    def forward(self, x):
      return F.normalize(x, p=2, dim=1)

  class GeM(nn.Module):
    def __init__(self):
      super().__init__()
      self.p = nn.Parameter(torch.ones(1) * 3)

    def forward(self, x):
      x = x.clamp(min=1e-6).pow(self.p)
      return F.avg_pool2d(x, (x.size(-2), x.size(-1))).pow(1.0 / self.p)

  class Flatten(nn.Module):
    def forward(self, x):
      assert x.shape[2] == x.shape[3] == 1
      return x[:, :, 0, 0]

  class SSLModel(nn.Module):
    def __init__(self, trunk, aggregation):
      super().__init__()
      self.online_encoder = nn.Sequential(trunk, aggregation)   # shared modules
      self.online_predictor = nn.Sequential(nn.Linear(24, 32), nn.BatchNorm1d(32))

  class SSLGeoLocalizationNet(nn.Module):
    def __init__(self):
      super().__init__()
      self.backbone = nn.Sequential(*list(resnet.children())[:-2 if last_stage == 5 else -3])
      channels = width * 2 ** (last_stage - 2) * (1 if depth == 18 else 4)
      self.aggregation = nn.Sequential(nn.Sequential(L2Norm(), GeM(), Flatten()),
                                       nn.Linear(channels, 16), L2Norm())
      if n_layers > 0:
        self.aggregation = nn.Sequential(self.aggregation, nn.Sequential(
            nn.Linear(16, 24, bias=False), nn.BatchNorm1d(24), nn.ReLU(inplace=True),
            nn.Linear(24, 24, bias=False)))
      self.ssl_model = SSLModel(self.backbone, self.aggregation)

    def descriptor(self, x):
      agg = self.aggregation[0] if n_layers > 0 else self.aggregation
      return agg(self.backbone(x))

  net = SSLGeoLocalizationNet()
  randomize(torch, net, seed)
  with torch.no_grad():
    gem = net.aggregation[0][0][1] if n_layers > 0 else net.aggregation[0][1]
    gem.p.fill_(2.7)
  return net.eval()


@pytest.mark.parametrize("container", ["lightning", "dataparallel"])
@pytest.mark.parametrize("n_layers", [0, 2])
@pytest.mark.parametrize("backbone,width", NETS)
def test_vgssl_descriptors_match_torch(backbone, width, n_layers, container, tmp_path):
  torch = pytest.importorskip("torch")
  net = torch_vgssl_checkpoint(torch, backbone, width, n_layers, seed=1)
  state = net.state_dict()
  if n_layers > 0:
    assert "aggregation.0.0.1.p" in state and "aggregation.0.1.weight" in state
  else:
    assert "aggregation.0.1.p" in state and "aggregation.1.weight" in state
  assert "backbone.0.weight" in state and "backbone.4.0.conv1.weight" in state
  if container == "lightning":  # train_ssl.py
    obj = {"epoch": 4, "state_dict": state, "optimizer_states": [],
           "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(61.0)}}}
  else:                         # train.py: DataParallel's module. prefix
    obj = {"epoch_num": 4, "best_r5": 61.0,
           "model_state_dict": {"module." + k: v for k, v in state.items()
                                if not k.startswith("ssl_model.")}}
  path = str(tmp_path / "best_model.pth")
  torch.save(obj, path)
  ours = make_net(backbone, width, n_layers)
  variables = pretrained.import_vgssl_checkpoint(path, init(ours))
  x = np.random.default_rng(1).normal(size=(3, 3, 64, 96)).astype(np.float32)
  with torch.no_grad():
    want = net.descriptor(torch.from_numpy(x)).numpy()
  got = ours.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False,
                   project=False)["descriptor"]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # and the export of what was imported gives the same descriptors again
  out = str(tmp_path / "model.safetensors")
  pretrained.export_descriptor_model(variables, out)
  again = pretrained.import_vgssl_checkpoint(out, init(ours, seed=9))
  np.testing.assert_array_equal(
      ours.apply(again, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False,
                 project=False)["descriptor"], got)


@pytest.mark.parametrize("method", ["vicreg", "byol"])
def test_training_starts_from_the_pretrained_backbone(method, tmp_path):
  """--config.model.pretrained: the online network (and BYOL's target copy) start from it."""
  import types

  from vgssl_jax import experiment, parallel
  from vgssl_jax.config import base_config
  from vgssl_jax.train import create_train_state, make_optimizer
  from safetensors.numpy import save_file
  path = str(tmp_path / "r18.safetensors")
  weights = random_state(torchvision_shapes(18, width=8), seed=3)
  save_file({k: v for k, v in weights.items()}, path)
  c = base_config()
  c.method = method
  c.model.backbone, c.model.width, c.model.fc_output_dim, c.model.projection_size = (
      "resnet18conv4", 8, 16, 24)
  c.model.pretrained = path
  c.data.image_size = (32, 48)
  method_obj = experiment.build_method(c)
  mesh = parallel.make_mesh(1)
  tx = make_optimizer(1e-3)
  trainer = types.SimpleNamespace(
      mesh=mesh, tx=tx, init_state=lambda: create_train_state(method_obj, tx, 0, (32, 48), mesh))
  state = experiment.initial_state(c, trainer)
  got = np.asarray(state.params["net"]["backbone"]["layer1"]["0"]["conv1"]["kernel"])
  np.testing.assert_array_equal(got, weights["layer1.0.conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(np.asarray(state.batch_stats["net"]["backbone"]["bn1"]["var"]),
                                weights["bn1.running_var"])
  if method == "byol":
    target = state.method_state["target"]["params"]["backbone"]["layer1"]["0"]["conv1"]["kernel"]
    np.testing.assert_array_equal(np.asarray(target), got)
