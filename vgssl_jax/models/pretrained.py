"""Weights from PyTorch: torchvision ImageNet ResNets, trained VG-SSL checkpoints, and export.

Nothing is ever downloaded: every function reads a file the user supplies. Files are
PyTorch pickles (`.pth`, `.pt`, `.ckpt`; needs torch), `.safetensors` or `.npz` (numpy
only). All loads are strict: a tensor that does not find its place, or a place that gets
no tensor, is an error that lists them (the original loads with strict=False and silently
drops wrong keys, spec §1.5).

Key layouts (the original's `model/network.py` and `util.py`):
  * torchvision: `conv1.weight`, `bn1.*`, `layer1.0.conv1.weight`, ..., `fc.*`.
  * VG-SSL: the ResNet is `nn.Sequential(*list(resnet.children())[:-2])` ([:-3] for
    conv4), so its keys are `backbone.0.weight` (conv1), `backbone.1.*` (bn1),
    `backbone.4.*` .. `backbone.7.*` (layer1 .. layer4); children 2 and 3 (ReLU, max-pool)
    have no tensors. The aggregation is
      n_layers = 0: Sequential(Sequential(L2Norm, GeM, Flatten), Linear, L2Norm):
                    `aggregation.0.1.p`, `aggregation.1.{weight,bias}`;
      n_layers > 0: Sequential(<the above>, projector):
                    `aggregation.0.0.1.p`, `aggregation.0.1.{weight,bias}`, `aggregation.1.*`.
    Lightning checkpoints keep them under `state_dict` (with `ssl_model.*` copies),
    `train.py` checkpoints under `model_state_dict` with DataParallel's `module.` prefix.
  * our export (`export_descriptor_model`): `backbone.<torchvision name>`,
    `aggregation.gem.p`, `aggregation.fc.{weight,bias}`, in PyTorch layouts.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re

import jax
import numpy as np
from flax import traverse_util

from vgssl_jax.errors import ConfigError
from vgssl_jax.models.torch_names import _PARAM_NAMES, _STAT_NAMES, to_torch_state

State = dict[str, np.ndarray]

# VG-SSL's nn.Sequential of ResNet children -> torchvision names (2: ReLU, 3: max-pool).
SEQUENTIAL_BACKBONE = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3",
                       "7": "layer4"}
# Where each aggregation layout keeps GeM's p and the FC, as our export names them.
AGGREGATION_LAYOUTS = {
    "projector": {"aggregation.0.0.1.p": "aggregation.gem.p",        # n_layers > 0
                  "aggregation.0.1.weight": "aggregation.fc.weight",
                  "aggregation.0.1.bias": "aggregation.fc.bias"},
    "plain": {"aggregation.0.1.p": "aggregation.gem.p",              # n_layers = 0
              "aggregation.1.weight": "aggregation.fc.weight",
              "aggregation.1.bias": "aggregation.fc.bias"},
    "export": {k: k for k in ("aggregation.gem.p", "aggregation.fc.weight",
                              "aggregation.fc.bias")},
}
TORCH_FORMATS = (".pth", ".pt", ".ckpt")
EXPORT_FORMATS = (".safetensors", ".npz")
WEIGHT_FILES = TORCH_FORMATS + EXPORT_FORMATS
# ".pth, .pt, .ckpt, .safetensors or .npz", for messages
WEIGHT_FILES_TEXT = f"{', '.join(WEIGHT_FILES[:-1])} or {WEIGHT_FILES[-1]}"
_MAX_LISTED = 30
_DEIT_HINTS = ("cls_token", "dist_token", "pos_embed", "patch_embed", "blocks.")


# ----------------------------------------------------------------------------- reading files

def load_state_dict(path: str) -> State:
  """{name: array} of a `.pth`/`.pt`/`.ckpt` (torch), `.safetensors` or `.npz` file.

  Unwraps Lightning checkpoints (`state_dict`), `model_state_dict` and DataParallel's
  `module.` prefix (see `unwrap_state`).
  """
  _check_weights_file(path)
  ext = os.path.splitext(path)[1].lower()
  if ext in TORCH_FORMATS:
    obj = _torch_load(path)
  elif ext in EXPORT_FORMATS:
    obj = _numpy_load(path, ext)
  else:
    raise ConfigError(f"cannot read weights from {path}: the extension {ext!r} is none of "
                      f"{WEIGHT_FILES_TEXT}.")
  return unwrap_state(obj, path)


def _check_weights_file(path: str) -> None:
  if not os.path.isfile(path):
    raise ConfigError(f"weights file {path} does not exist: pass the path of a "
                      f"{WEIGHT_FILES_TEXT} file.")


def _numpy_load(path: str, ext: str) -> dict:
  try:
    if ext == ".safetensors":
      from safetensors.numpy import load_file
      return load_file(path)
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  except Exception as e:  # each format raises its own types for a damaged file
    # numpy reports a damaged .npz as "pickled data" and suggests allow_pickle: not for us
    why = "not a NumPy archive of arrays" if "pickle" in str(e) else str(e)[:200]
    raise ConfigError(f"cannot read {path} as {ext}: {why or type(e).__name__}; is the file "
                      "complete?") from e


def _torch_load(path: str):
  try:
    import torch
  except ImportError as e:
    raise ConfigError(f"reading the PyTorch file {path} needs torch, which is not installed: "
                      "`pip install torch` (the CPU build is enough), or convert the file to "
                      ".safetensors where torch is available.") from e
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    # weights_only refuses arbitrary Python objects (e.g. an argparse Namespace)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", str(e))
    if found is None:
      raise ConfigError(f"torch cannot read {path}: it is not a PyTorch file, or it is "
                        "damaged.") from e
    raise ConfigError(
        f"{path} holds Python objects besides tensors ({found.group(1)}), which are not loaded "
        "for safety. If you trust the file, keep only its weights: torch.save(torch.load(path, "
        "weights_only=False)['state_dict'], 'weights.pth').") from e
  except (RuntimeError, EOFError) as e:
    detail = f" ({str(e)[:200]})" if str(e) else ""
    raise ConfigError(f"torch cannot read {path}: it is not a PyTorch file, or it is "
                      f"damaged{detail}.") from e

  def to_numpy(value):
    if isinstance(value, torch.Tensor):
      value = value.detach().cpu()
      if value.dtype == torch.bfloat16:  # numpy has no bfloat16
        value = value.float()
      return value.numpy()
    if isinstance(value, dict):
      return {k: to_numpy(v) for k, v in value.items()}
    return value
  return to_numpy(obj)


def unwrap_state(obj, where: str = "the checkpoint") -> State:
  """The flat {name: array} inside a loaded checkpoint object.

  Lightning: `{"state_dict": ...}`; train.py: `{"model_state_dict": ...}`; else the dict
  itself. A `module.` prefix (DataParallel) is removed from every key that has it.
  """
  if not isinstance(obj, dict):
    raise ConfigError(f"{where} holds a {type(obj).__name__}, not a dictionary of tensors; "
                      "save the model's state_dict().")
  for container in ("state_dict", "model_state_dict"):
    if isinstance(obj.get(container), dict):
      obj = obj[container]
      break
  state = {}
  for key, value in obj.items():
    if not isinstance(value, np.ndarray):
      if isinstance(value, dict):
        raise ConfigError(f"{where}: entry {key!r} is a nested dictionary; expected a flat "
                          "state dict (or one under 'state_dict' / 'model_state_dict').")
      continue  # scalars and strings of a checkpoint are not weights
    state[key[len("module."):] if key.startswith("module.") else key] = value
  if not state:
    raise ConfigError(f"{where} holds no tensors (keys: {sorted(obj)[:10]}); expected a state "
                      "dict, a Lightning checkpoint or a train.py checkpoint.")
  return state


# ----------------------------------------------------------------------------- core conversion

def _torch_layout(variables: dict) -> dict[str, tuple[tuple, str, tuple]]:
  """{torch name: (flax path, leaf kind, torch shape)} of {"params", "batch_stats"}.

  Works on abstract trees (jax.ShapeDtypeStruct) too: only shapes are read.
  """
  out = {}
  for collection, names in (("params", _PARAM_NAMES), ("batch_stats", _STAT_NAMES)):
    for path, value in traverse_util.flatten_dict(variables.get(collection) or {}).items():
      shape = tuple(value.shape)
      if path[-1] == "kernel" and len(shape) == 4:
        shape = (shape[3], shape[2], shape[0], shape[1])
      elif path[-1] == "kernel" and len(shape) == 2:
        shape = shape[::-1]
      out[".".join(path[:-1] + (names[path[-1]],))] = ((collection, *path), path[-1], shape)
  return out


def _from_torch_layout(kind: str, value: np.ndarray) -> np.ndarray:
  if kind == "kernel" and value.ndim == 4:   # (out, in, kh, kw) -> (kh, kw, in, out)
    return value.transpose(2, 3, 1, 0)
  if kind == "kernel" and value.ndim == 2:   # (out, in) -> (in, out)
    return value.T
  return value


def _listed(names, limit: int = _MAX_LISTED) -> str:
  names = sorted(names)
  more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def from_torch_state(state: dict, template: dict, hint: str = "") -> dict:
  """Flax variables ({"params", "batch_stats"} shaped like `template`) from torch-named arrays.

  The inverse of `torch_names.to_torch_state`: names must match exactly (`num_batches_tracked`
  is ignored) and shapes after transposition too, else a ConfigError lists the missing,
  unexpected and mismatched keys. Arrays are cast to the template's dtypes; the result
  holds NumPy arrays.
  """
  layout = _torch_layout(template)
  given = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  missing = [k for k in layout if k not in given]
  unexpected = [k for k in given if k not in layout]
  mismatched = [f"{k} {tuple(np.shape(given[k]))} (expected {layout[k][2]})"
                for k in layout if k in given and tuple(np.shape(given[k])) != layout[k][2]]
  if missing or unexpected or mismatched:
    parts = [f"{len(missing)} missing: {_listed(missing)}" if missing else "",
             f"{len(unexpected)} unexpected: {_listed(unexpected)}" if unexpected else "",
             f"{len(mismatched)} with other shapes: {_listed(mismatched)}" if mismatched else ""]
    raise ConfigError("the weights do not fit the model (" + "; ".join(p for p in parts if p)
                      + "). " + (hint or "Check the backbone, width and fc_output_dim settings."))
  flat = {}
  leaves = {}
  for collection in ("params", "batch_stats"):
    leaves.update({(collection, *p): v for p, v in
                   traverse_util.flatten_dict(template.get(collection) or {}).items()})
  for name, (path, kind, _) in layout.items():
    flat[path] = np.asarray(_from_torch_layout(kind, np.asarray(given[name])),
                            dtype=leaves[path].dtype)
  out = traverse_util.unflatten_dict(flat)
  return {c: out.get(c, {}) for c in ("params", "batch_stats") if c in template}


def _replace_subtrees(variables: dict, loaded: dict) -> dict:
  """`variables` with the top-level modules of `loaded` replaced (others kept)."""
  out = {}
  for collection, tree in variables.items():
    tree = dict(tree)
    tree.update(loaded.get(collection, {}))
    out[collection] = tree
  return out


def _subtrees(variables: dict, modules: tuple[str, ...]) -> dict:
  """{"params": {m: ...}, "batch_stats": {m: ...}} of the given top-level modules."""
  return {c: {m: variables[c][m] for m in modules if m in variables.get(c, {})}
          for c in ("params", "batch_stats")}


# ----------------------------------------------------------------------------- public loaders

def load_torchvision_backbone(path: str, variables: dict) -> dict:
  """GeoLocalizationNet `variables` with the "backbone" replaced by torchvision weights.

  `path`: a torchvision ResNet-18/50/101 state dict (e.g. the IMAGENET1K_V1 file). Its
  `fc.*` is ignored, and `layer4.*` for a conv4 backbone; everything else must match.
  """
  state = load_state_dict(path)
  backbone = _subtrees(variables, ("backbone",))
  conv4 = "layer4" not in backbone["params"]["backbone"]
  ignored = [k for k in state if k.startswith("fc.") or (conv4 and k.startswith("layer4."))]
  if any(k.startswith(("backbone.", "aggregation.")) for k in state):
    hint = ("This is not a torchvision ResNet state dict: VG-SSL checkpoints and our exports "
            "load with import_vgssl_checkpoint.")
  else:
    hint = ("Check model.backbone (resnet18/50/101, conv4/conv5) and model.width (64 for "
            "torchvision weights).")
  state = {"backbone." + k: v for k, v in state.items() if k not in ignored}
  loaded = from_torch_state(state, backbone, hint)
  n = sum(1 for k in state if not k.endswith("num_batches_tracked"))
  logging.info("loaded %d backbone tensors from %s; ignored %d (%s)", n, path, len(ignored),
               "fc.*, layer4.*" if conv4 else "fc.*")
  return _replace_subtrees(variables, loaded)


def _backbone_name(key: str) -> str:
  """`backbone.4.0.conv1.weight` -> `backbone.layer1.0.conv1.weight`; torchvision names and
  keys of other structures stay as they are (the strict load then lists them)."""
  head, _, rest = key[len("backbone."):].partition(".")
  if head in ("0", "1") and "." not in rest:        # conv1 / bn1 tensors
    return f"backbone.{SEQUENTIAL_BACKBONE[head]}.{rest}"
  if head in ("4", "5", "6", "7") and rest[:1].isdigit():  # layerN.<block>...
    return f"backbone.{SEQUENTIAL_BACKBONE[head]}.{rest}"
  return key


def canonical_vgssl_state(state: State) -> tuple[State, dict]:
  """A VG-SSL / exported state dict renamed to our export layout, and a report.

  The report: {"layout": "projector" | "plain" | "export", "loaded": {our name: source
  key}, "ignored": {reason: [keys]}}. Keys it cannot place are kept (under their own
  names), so that the strict load lists them.
  """
  keys = set(state)
  if any(k.startswith("backbone.") and any(h in k for h in _DEIT_HINTS) for k in keys):
    raise ConfigError("this is a DeiT checkpoint (it has cls_token/pos_embed/blocks keys); only "
                      "ResNet backbones (resnet{18,50,101}conv{4,5}) can be imported.")
  # each layout's first key is GeM's p
  found = [name for name, layout in AGGREGATION_LAYOUTS.items() if next(iter(layout)) in keys]
  if len(found) != 1:
    p_keys = ", ".join(next(iter(lay)) for lay in AGGREGATION_LAYOUTS.values())
    what = f"several GeM layouts ({', '.join(found)})" if found else "no GeM parameter"
    raise ConfigError(f"the checkpoint has {what}: expected exactly one of {p_keys}. "
                      "Is it a VG-SSL ResNet + GeM checkpoint (aggregation gem, fc_output_dim "
                      "set)?")
  layout = found[0]
  renames = AGGREGATION_LAYOUTS[layout]
  ignored = {"ssl_model.* (SSL wrapper copies)": [], "projector": [],
             "num_batches_tracked": []}
  out, loaded = {}, {}
  for key in sorted(keys):
    if key.startswith("ssl_model."):
      ignored["ssl_model.* (SSL wrapper copies)"].append(key)
      continue
    if key.endswith("num_batches_tracked"):
      ignored["num_batches_tracked"].append(key)
      continue
    if (layout == "projector" and key.startswith("aggregation.1.")) or key.startswith(
        "projector."):
      ignored["projector"].append(key)
      continue
    name = _backbone_name(key) if key.startswith("backbone.") else renames.get(key, key)
    out[name] = state[key]
    loaded[name] = key
  return out, {"layout": layout, "loaded": loaded,
               "ignored": {k: v for k, v in ignored.items() if v}}


def import_vgssl_state(state: State, variables: dict) -> tuple[dict, dict]:
  """(variables, report): backbone + GeM + FC of a VG-SSL state dict loaded into
  GeoLocalizationNet `variables` (the projector keeps its values). See `import_vgssl_checkpoint`."""
  canonical, report = canonical_vgssl_state(state)
  target = _subtrees(variables, ("backbone", "aggregation"))
  loaded = from_torch_state(canonical, target, "Check model.backbone, model.width and "
                            "model.fc_output_dim against the checkpoint's training settings.")
  return _replace_subtrees(variables, loaded), report


def import_vgssl_checkpoint(path: str, variables: dict) -> dict:
  """GeoLocalizationNet `variables` with backbone, GeM p and FC from a VG-SSL checkpoint.

  Accepts the original's Lightning (`train_ssl.py`) and `train.py` checkpoints, with
  Sequential-index (`backbone.0.weight`) or torchvision-named (`backbone.conv1.weight`)
  backbones, and files written by `export_descriptor_model`. `ssl_model.*` and projector
  tensors are ignored; every other tensor must find its place. Logs what was loaded.
  The loaded subtrees hold NumPy arrays (place them with jax.device_put).
  """
  variables, report = import_vgssl_state(load_state_dict(path), variables)
  loaded = report["loaded"]
  n_backbone = sum(k.startswith("backbone.") for k in loaded)
  logging.info("imported %s (%s layout): %d backbone tensors, %s",
               path, report["layout"], n_backbone,
               ", ".join(f"{k} <- {v}" for k, v in loaded.items() if k.startswith("aggregation.")))
  for reason, keys in report["ignored"].items():
    logging.info("  ignored %d %s tensors", len(keys), reason)
  return variables


# ----------------------------------------------------------------------------- export

def descriptor_state(variables: dict) -> State:
  """The retrieval network (backbone + GeM + FC) as {export name: array in PyTorch layout}."""
  host = jax.device_get(_subtrees(variables, ("backbone", "aggregation")))
  state = to_torch_state(host["params"], host["batch_stats"])
  return {k: np.ascontiguousarray(v) for k, v in state.items()}


def check_export_path(path: str) -> None:
  """Raises a ConfigError unless `path` names a .safetensors or .npz file."""
  if not path.lower().endswith(EXPORT_FORMATS):
    raise ConfigError(f"cannot export to {path}: use a file name ending in .safetensors or .npz.")


def export_descriptor_model(variables: dict, path: str, metadata: dict | None = None) -> State:
  """Writes backbone + GeM + FC to `path` (`.npz` or `.safetensors`) with torchvision-style
  names (see the module docstring). `metadata` ({str: JSON-able}, e.g. the model settings)
  goes into the safetensors header (`read_export_metadata`); .npz files have none.
  Returns what was written. `import_vgssl_checkpoint` reads it back exactly."""
  check_export_path(path)
  state = descriptor_state(variables)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if path.lower().endswith(".npz"):
    np.savez(path, **state)
  else:
    from safetensors.numpy import save_file
    save_file(state, path, metadata={str(k): json.dumps(v) for k, v in (metadata or {}).items()})
  return state


def read_export_metadata(path: str) -> dict:
  """The metadata `export_descriptor_model` wrote into a .safetensors file ({} if none)."""
  if not path.lower().endswith(".safetensors"):
    return {}
  _check_weights_file(path)
  from safetensors import safe_open
  try:
    with safe_open(path, "np") as f:
      header = f.metadata() or {}
  except Exception as e:  # safetensors' own error type for a damaged header
    raise ConfigError(f"cannot read {path} as .safetensors: {str(e)[:200]}; is the file "
                      "complete?") from e
  out = {}
  for key, value in header.items():
    try:
      out[key] = json.loads(value)
    except json.JSONDecodeError:  # written by another tool: a plain string
      out[key] = value
  return out


def summarize(state: State) -> str:
  """One line: tensor count, parameter count and the layers present (for logs)."""
  n = sum(int(np.prod(v.shape)) for k, v in state.items() if "running_" not in k)
  layers = sorted({k.split(".")[1] for k in state if k.startswith("backbone.")})
  return f"{len(state)} tensors, {n:,} parameters, backbone modules {', '.join(layers)}"
