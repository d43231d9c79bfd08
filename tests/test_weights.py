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

from tests.conftest import tiny_network
from vgssl_jax.errors import ConfigError
from vgssl_jax.models.network import GeoLocalizationNet
from vgssl_jax.models.resnet import ResNet, parse_backbone
from vgssl_jax.models.weights import export, files, names, torchvision, vgssl

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
  return tiny_network(backbone=backbone, width=width, fc_output_dim=16, n_layers=n_layers,
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
  got = {k: v[2] for k, v in names.torch_layout(shapes).items()}
  assert got == backbone_shapes(f"resnet{depth}conv5", 64)


@pytest.mark.parametrize("backbone,width", NETS)
def test_torchvision_state_dict_loads_into_the_backbone(backbone, width, tmp_path):
  net = make_net(backbone, width, n_layers=2)
  variables = init(net)
  depth, _ = parse_backbone(backbone)
  state = random_state(torchvision_shapes(depth, width))  # fc, layer4 and counters included
  path = str(tmp_path / "resnet.npz")
  np.savez(path, **state)
  loaded = torchvision.load_torchvision_backbone(path, variables)
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
    torchvision.load_torchvision_backbone(path, variables)
  message = str(e.value)
  for text in ("2 missing", "backbone.layer1.0.conv1.weight", "backbone.layer3.1.bn2.running_var",
               "1 unexpected", "backbone.layer9.0.conv1.weight",
               "1 with other shapes", "backbone.bn1.weight (9,) (expected (8,))"):
    assert text in message, message
  # a full-width file for a narrow model: every shape is listed as different
  state = random_state(torchvision_shapes(18, 64))
  np.savez(path, **state)
  with pytest.raises(ConfigError, match="with other shapes.*model.width"):
    torchvision.load_torchvision_backbone(path, variables)
  np.savez(path, **vgssl_state("resnet18conv4", 8, "plain"))  # the wrong loader
  with pytest.raises(ConfigError, match="load with import_vgssl_checkpoint"):
    torchvision.load_torchvision_backbone(path, variables)


def test_from_torch_state_is_the_inverse_of_to_torch_state():
  from vgssl_jax.models.weights.names import to_torch_state
  variables = init(make_net("resnet50conv5", 8, n_layers=2), seed=3)
  state = to_torch_state(variables["params"], variables["batch_stats"])
  state["backbone.bn1.num_batches_tracked"] = np.array(5)  # ignored
  back = names.from_torch_state(state, variables)
  assert jax.tree.structure(back) == jax.tree.structure(variables)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  # abstract templates work too (shapes only)
  abstract = jax.eval_shape(lambda: variables)
  back = names.from_torch_state(state, abstract)
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
  loaded = vgssl.import_vgssl_checkpoint(path, variables)
  names = {k: "backbone." + (k if layout == "torchvision-names" else sequential_name(k))
           for k in backbone_shapes(backbone, width)}
  gem, fc = (("aggregation.0.0.1.p", "aggregation.0.1") if layout == "projector"
             else ("aggregation.0.1.p", "aggregation.1"))
  check_imported(loaded, state, names, gem, fc)
  np.testing.assert_array_equal(loaded["params"]["projector"]["0"]["kernel"],
                                variables["params"]["projector"]["0"]["kernel"])
  _, report = vgssl.import_vgssl_state(state, variables)
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
    vgssl.import_vgssl_state(state, variables)
  for text in ("backbone.layer4.0.conv1.weight", "aggregation.0.0.weight", "backbone.1.0.weight",
               "3 unexpected", "1 missing: backbone.bn1.running_mean"):
    assert text in str(e.value)
  with pytest.raises(ConfigError, match="aggregation tensors do not fit .*aggregation.0.1.p"):
    vgssl.import_vgssl_state({"backbone.0.weight": np.zeros(3)}, variables)
  with pytest.raises(ConfigError, match="aggregation tensors do not fit"):  # no FC tensors
    vgssl.import_vgssl_state({"aggregation.0.1.p": np.ones(1),
                              "aggregation.0.0.1.p": np.ones(1)}, variables)
  with pytest.raises(ConfigError, match="DeiT"):
    vgssl.import_vgssl_state({"backbone.cls_token": np.zeros((1, 1, 4)),
                              "backbone.dist_token": np.zeros((1, 1, 4)),
                              "aggregation.1.weight": np.zeros((4, 4))}, variables)
  with pytest.raises(ConfigError, match="this is a DINOv2 checkpoint .*model.backbone=dinov2"):
    vgssl.import_vgssl_state({"backbone.cls_token": np.zeros((1, 1, 4)),
                              "backbone.blocks.0.ls1.gamma": np.zeros(4),
                              "aggregation.1.weight": np.zeros((4, 4))}, variables)


def test_containers_and_dataparallel_prefix_are_unwrapped():
  x = np.ones(2, np.float32)
  lightning = {"epoch": 3, "state_dict": {"backbone.0.weight": x}, "optimizer_states": [],
               "callbacks": {"ModelCheckpoint": {"best_model_score": np.array(51.0)}}}
  assert list(files.unwrap_state(lightning)) == ["backbone.0.weight"]
  train_py = {"epoch_num": 3, "best_r5": 50.0,
              "model_state_dict": {"module.backbone.0.weight": x, "module.aggregation.1.bias": x}}
  assert sorted(files.unwrap_state(train_py)) == ["aggregation.1.bias", "backbone.0.weight"]
  with pytest.raises(ConfigError, match="no tensors"):
    files.unwrap_state({"epoch": 1})
  with pytest.raises(ConfigError, match="not a dictionary"):
    files.unwrap_state([x])


def test_unreadable_files_are_clear_errors(tmp_path):
  with pytest.raises(ConfigError, match="does not exist"):
    files.load_state_dict(str(tmp_path / "nope.pth"))
  (tmp_path / "w.h5").write_bytes(b"")
  with pytest.raises(ConfigError, match="extension '.h5'"):
    files.load_state_dict(str(tmp_path / "w.h5"))
  for name in ("w.safetensors", "w.npz"):
    (tmp_path / name).write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=f"cannot read .*{name}") as err:
      files.load_state_dict(str(tmp_path / name))
    assert "allow_pickle" not in str(err.value)  # numpy's advice for a damaged .npz
  # the evaluation runner reads an export's metadata first
  with pytest.raises(ConfigError, match="cannot read .*w.safetensors"):
    export.read_export_metadata(str(tmp_path / "w.safetensors"))
  with pytest.raises(ConfigError, match="does not exist"):
    export.read_export_metadata(str(tmp_path / "nope.safetensors"))
  (tmp_path / "w.pth").write_bytes(b"not a checkpoint")  # read without torch, so no torch hint
  with pytest.raises(ConfigError, match="cannot read .*w.pth as a PyTorch checkpoint"):
    files.load_state_dict(str(tmp_path / "w.pth"))
  with pytest.raises(ConfigError, match=r"\.safetensors or \.npz"):
    export.export_descriptor_model({}, str(tmp_path / "model.pth"))


@pytest.mark.parametrize("ext", ["npz", "safetensors"])
@pytest.mark.parametrize("backbone,width", NETS)
def test_export_round_trips_bit_exactly(backbone, width, ext, tmp_path):
  source = init(make_net(backbone, width, n_layers=2), seed=1)
  source = jax.tree.map(jnp.asarray, source)  # as training leaves them
  path = str(tmp_path / f"model.{ext}")
  written = export.export_descriptor_model(source, path, {"backbone": backbone})
  state = files.load_state_dict(path)
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
  loaded = vgssl.import_vgssl_checkpoint(path, target)
  got, src, tgt = flat(loaded), flat(source), flat(target)
  assert got.keys() == src.keys()
  for key in got:
    want_value = tgt[key] if key[1] == "projector" else src[key]
    assert got[key].dtype == want_value.dtype
    np.testing.assert_array_equal(got[key], want_value)
  assert export.read_export_metadata(path) == (
      {"backbone": backbone} if ext == "safetensors" else {})


def test_export_command_writes_the_checkpoint_weights(tmp_path):
  from vgssl_jax import export as export_command
  from vgssl_jax import checkpoints
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
  old = os.umask(0o002)
  try:
    export_command.export(str(tmp_path / "run"), out)
  finally:
    os.umask(old)
  assert os.stat(out).st_mode & 0o777 == 0o664  # the umask's mode, not safetensors' 0600
  loaded = vgssl.import_vgssl_checkpoint(out, init(make_net("resnet18conv4", 8), seed=5))
  for key, value in flat(loaded).items():
    if key[1] != "projector":
      np.testing.assert_array_equal(value, flat(variables)[key])
  meta = export.read_export_metadata(out)
  # the recorded settings, with the aggregation named (the backbone's default: GeM)
  assert meta["model"] == {**model_settings, "aggregation": "gem"}
  assert meta["method"] == "vicreg" and meta["step"] == 3
  assert meta["image_size"] == [32, 32]
  with pytest.raises(ConfigError, match="cannot export"):
    export_command.export(str(tmp_path / "run"), str(tmp_path / "m.pth"))
  from tests.conftest import run_python   # the command: its own flags, one-line errors
  proc = run_python(["-m", "vgssl_jax.export", f"--checkpoint={tmp_path / 'run'}",
                     f"--out={tmp_path / 'm.pth'}"])
  assert proc.returncode == 1 and proc.stderr.strip().endswith(
      "use a file name ending in .safetensors or .npz."), proc.stderr[-2000:]
  proc = run_python(["-m", "vgssl_jax.export", "--bogus=1"])
  assert proc.returncode == 1 and "Unknown command line flag 'bogus'" in proc.stderr
  assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------- against PyTorch
# Each fidelity check runs twice: against files made once by PyTorch (tests/data, written by
# tests/reference/make_references.py; runs everywhere, CI included) and, where torch is
# installed, against the PyTorch twins live.

TORCH_RESNET = os.path.join(DATA, "torch_resnet.npz")
VGSSL_DESCRIPTORS = os.path.join(DATA, "vgssl_descriptors.npz")


def stored(path: str, prefix: str) -> tuple[dict, dict]:
  """({torch name: weight}, {other array: value}) under `prefix` of a reference file."""
  with np.load(path) as data:
    items = {k[len(prefix) + 1:]: data[k] for k in data.files if k.startswith(prefix + "/")}
  weights = {k[2:]: v for k, v in items.items() if k.startswith("w/")}
  return weights, {k: v for k, v in items.items() if not k.startswith("w/")}


def backbone_features(backbone: str, width: int, weights_path: str, x: np.ndarray) -> np.ndarray:
  """Our backbone, loaded from a torchvision file, on NCHW images -> NCHW features."""
  depth, last_stage = parse_backbone(backbone)
  variables = torchvision.load_torchvision_backbone(weights_path, init(make_net(backbone, width)))
  ours = ResNet(depth, last_stage, width).apply(
      {"params": variables["params"]["backbone"],
       "batch_stats": variables["batch_stats"]["backbone"]},
      jnp.asarray(x.transpose(0, 2, 3, 1)), train=False)
  return np.asarray(ours.feature_map).transpose(0, 3, 1, 2)


@pytest.mark.parametrize("backbone,width", NETS)
def test_torchvision_backbone_features_equal_the_stored_torch_features(backbone, width, tmp_path):
  from safetensors.numpy import save_file
  weights, arrays = stored(TORCH_RESNET, backbone)
  path = str(tmp_path / "resnet.safetensors")
  save_file(weights, path)
  want = arrays["features"]
  got = backbone_features(backbone, width, path, arrays["images"])
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("n_layers", [0, 2])
def test_vgssl_descriptors_equal_the_stored_torch_descriptors(n_layers, tmp_path):
  from safetensors.numpy import save_file
  backbone, width = NETS[0]
  state, arrays = stored(VGSSL_DESCRIPTORS, f"{backbone}/n_layers{n_layers}")
  assert ("aggregation.0.0.1.p" if n_layers else "aggregation.0.1.p") in state
  path = str(tmp_path / "best_model.safetensors")
  save_file(state, path)
  ours = make_net(backbone, width, n_layers)
  variables = vgssl.import_vgssl_checkpoint(path, init(ours))
  x = arrays["images"]
  got = ours.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False,
                   project=False)["descriptor"]
  np.testing.assert_allclose(got, arrays["descriptors"], rtol=1e-4, atol=1e-5)


def test_original_checkpoint_files_read_without_torch():
  """Files torch.save wrote in the original's layouts: train.py's (numpy recalls and best_r5,
  which torch.load(weights_only=True) refuses; DataParallel prefix) and Lightning's (an
  argparse Namespace, which is never constructed)."""
  from vgssl_jax.models.weights import torch_pickle
  folder = os.path.join(DATA, "torch_checkpoints")
  with np.load(os.path.join(DATA, "torch_checkpoints.npz")) as data:
    want = {k: data[k] for k in data.files}
  for name in ("train_py.pth", "lightning.ckpt"):
    state = files.load_state_dict(os.path.join(folder, name))
    assert sorted(state) == sorted(want)
    for key, value in want.items():
      assert state[key].dtype == value.dtype and np.array_equal(state[key], value), key
  raw = torch_pickle.load(os.path.join(folder, "train_py.pth"))
  np.testing.assert_array_equal(raw["recalls"], [61.5, 80.25, 85.0, 90.5])
  assert raw["best_r5"] == 80.25 and raw["epoch_num"] == 5
  lightning = torch_pickle.load(os.path.join(folder, "lightning.ckpt"))
  assert isinstance(lightning["hyper_parameters"], torch_pickle.Opaque)
  assert repr(lightning["hyper_parameters"]) == "<argparse.Namespace (not loaded)>"


def test_torch_twins_have_torchvision_names():
  torch = pytest.importorskip("torch")
  from tests.reference.torch_models import ResNet as TorchResNet
  for depth in (18, 50):
    got = {k: tuple(v.shape) for k, v in TorchResNet(depth, 64).state_dict().items()}
    assert got == torchvision_shapes(depth, 64)
    try:
      import torchvision
    except Exception:  # missing, or built for another torch (its C ops fail to register)
      continue
    real = getattr(torchvision.models, f"resnet{depth}")(weights=None).state_dict()
    assert got == {k: tuple(v.shape) for k, v in real.items()}
  del torch


def test_torch_files_read_without_torch_equal_torch_load(tmp_path):
  torch = pytest.importorskip("torch")
  import argparse
  g = torch.Generator().manual_seed(0)
  base = torch.randn(5, 7, generator=g)
  obj = {"state_dict": {"a": base, "b": base.t(), "c": base[1:4, 2:], "d": base.half(),
                        "e": torch.randn(3, generator=g).to(torch.bfloat16),
                        "f": torch.arange(6), "g": torch.nn.Parameter(torch.ones(2)),
                        "h": torch.tensor(True)},
         "hyper_parameters": argparse.Namespace(lr=1.0), "recalls": np.arange(3.0)}
  path = str(tmp_path / "x.ckpt")
  torch.save(obj, path)
  want = torch.load(path, weights_only=False)["state_dict"]
  got = files.load_state_dict(path)
  for key, value in want.items():
    value = value.detach().float() if value.dtype == torch.bfloat16 else value.detach()
    np.testing.assert_array_equal(got[key], value.numpy())
    assert got[key].dtype == value.numpy().dtype


@pytest.mark.parametrize("backbone,width", NETS)
def test_torchvision_backbone_features_match_torch(backbone, width, tmp_path):
  torch = pytest.importorskip("torch")
  from tests.reference import torch_models as tm
  depth, last_stage = parse_backbone(backbone)
  resnet = tm.ResNet(depth, width)
  tm.randomize(resnet, seed=0)
  path = str(tmp_path / f"resnet{depth}.pth")
  torch.save(resnet.state_dict(), path)
  x = np.random.default_rng(0).normal(size=(2, 3, 64, 96)).astype(np.float32)
  with torch.no_grad():
    want = tm.trunk(resnet, last_stage).eval()(torch.from_numpy(x)).numpy()
  got = backbone_features(backbone, width, path, x)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("container", ["lightning", "dataparallel"])
@pytest.mark.parametrize("n_layers", [0, 2])
@pytest.mark.parametrize("backbone,width", NETS)
def test_vgssl_descriptors_match_torch(backbone, width, n_layers, container, tmp_path):
  torch = pytest.importorskip("torch")
  from tests.reference import torch_models as tm
  net = tm.SSLGeoLocalizationNet(backbone, width, n_layers=n_layers)
  tm.randomize(net, seed=1)
  with torch.no_grad():
    net.gem().p.fill_(2.7)
  net.eval()
  state = net.state_dict()
  assert "backbone.0.weight" in state and "backbone.4.0.conv1.weight" in state
  if container == "lightning":  # train_ssl.py
    obj = {"epoch": 4, "state_dict": state, "optimizer_states": [],
           "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(61.0)}}}
  else:                         # train.py: DataParallel's module. prefix
    obj = {"epoch_num": 4, "best_r5": np.float64(61.0), "recalls": np.array([50.0, 61.0]),
           "model_state_dict": {"module." + k: v for k, v in state.items()
                                if not k.startswith("ssl_model.")}}
  path = str(tmp_path / "best_model.pth")
  torch.save(obj, path)
  ours = make_net(backbone, width, n_layers)
  variables = vgssl.import_vgssl_checkpoint(path, init(ours))
  x = np.random.default_rng(1).normal(size=(3, 3, 64, 96)).astype(np.float32)
  with torch.no_grad():
    want = net.descriptor(torch.from_numpy(x)).numpy()
  got = ours.apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False,
                   project=False)["descriptor"]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  # and the export of what was imported gives the same descriptors again
  out = str(tmp_path / "model.safetensors")
  export.export_descriptor_model(variables, out)
  again = vgssl.import_vgssl_checkpoint(out, init(ours, seed=9))
  np.testing.assert_array_equal(
      ours.apply(again, jnp.asarray(x.transpose(0, 2, 3, 1)), train=False,
                 project=False)["descriptor"], got)


@pytest.mark.parametrize("method", ["vicreg", "byol"])
def test_training_starts_from_the_pretrained_backbone(method, tmp_path):
  """--config.model.pretrained: the online network (and BYOL's target copy) start from it."""
  from safetensors.numpy import save_file

  from vgssl_jax import sharding
  from vgssl_jax.config import base_config
  from vgssl_jax.objectives.registry import build_objective
  from vgssl_jax.training.optimizer import make_optimizer
  from vgssl_jax.training.initial_weights import with_pretrained_backbone
  from vgssl_jax.training.state import create_train_state
  path = str(tmp_path / "r18.safetensors")
  weights = random_state(torchvision_shapes(18, width=8), seed=3)
  save_file({k: v for k, v in weights.items()}, path)
  c = base_config()
  c.method = method
  c.model.backbone, c.model.width, c.model.fc_output_dim, c.model.projection_size = (
      "resnet18conv4", 8, 16, 24)
  c.model.pretrained = path
  c.data.image_size = (32, 48)
  objective = build_objective(c)
  mesh = sharding.make_mesh(1)
  state = create_train_state(objective, make_optimizer(1e-3), 0, (32, 48), mesh)
  state = with_pretrained_backbone(state, c.model, c.data.image_size, mesh)
  got = np.asarray(state.params["net"]["backbone"]["layer1"]["0"]["conv1"]["kernel"])
  np.testing.assert_array_equal(got, weights["layer1.0.conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(np.asarray(state.batch_stats["net"]["backbone"]["bn1"]["var"]),
                                weights["bn1.running_var"])
  if method == "byol":
    target = state.objective_state["target"]["params"]["backbone"]["layer1"]["0"]["conv1"]["kernel"]
    np.testing.assert_array_equal(np.asarray(target), got)
