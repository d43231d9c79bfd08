"""Exports the retrieval network (backbone + aggregation) with PyTorch names and layouts.

Names are torchvision's under `backbone.` plus `aggregation.gem.p` and
`aggregation.fc.{weight,bias}`; a .safetensors header also records the method, the model
settings and the image size (`read_export_metadata`). models.weights.vgssl reads these
files back exactly.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np

from vgssl_jax.errors import ConfigError
from vgssl_jax.models.weights.files import EXPORT_FORMATS, State, check_weights_file
from vgssl_jax.models.weights.names import subtrees, to_torch_state


def descriptor_state(variables: dict, to_original=lambda name: name) -> State:
  """The retrieval network (backbone + aggregation) as {export name: array in PyTorch
  layout}, each name through `to_original` (the backbone family's original names)."""
  host = jax.device_get(subtrees(variables, ("backbone", "aggregation")))
  state = to_torch_state(host["params"], host["batch_stats"])
  # np.require keeps 0-d tensors 0-d (SALAD's dust bin); ascontiguousarray would make them 1-d
  return {to_original(k): np.require(v, requirements="C") for k, v in state.items()}


def check_export_path(path: str) -> None:
  """Raises a ConfigError unless `path` names a .safetensors or .npz file."""
  if not path.lower().endswith(EXPORT_FORMATS):
    raise ConfigError(f"cannot export to {path}: use a file name ending in .safetensors or .npz.")


def export_descriptor_model(variables: dict, path: str, metadata: dict | None = None,
                            to_original=lambda name: name) -> State:
  """Writes backbone + aggregation to `path` (`.npz` or `.safetensors`) with torchvision-
  style names, in the backbone family's original layout through `to_original` (see the
  module docstring). `metadata` ({str: JSON-able}, e.g. the model settings) goes into the
  safetensors header (`read_export_metadata`); .npz files have none. Returns what was
  written. `import_vgssl_checkpoint` reads it back exactly."""
  check_export_path(path)
  state = descriptor_state(variables, to_original)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  if path.lower().endswith(".npz"):
    np.savez(path, **state)
  else:
    from safetensors.numpy import save_file
    save_file(state, path, metadata={str(k): json.dumps(v) for k, v in (metadata or {}).items()})
  _use_umask(path)
  return state


def _use_umask(path: str) -> None:
  """Gives `path` the mode of a newly created file (0666 less the umask): safetensors
  writes through a private temporary file and leaves 0600 whatever the umask."""
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(path, 0o666 & ~umask)


def read_export_metadata(path: str) -> dict:
  """The metadata `export_descriptor_model` wrote into a .safetensors file ({} if none)."""
  if not path.lower().endswith(".safetensors"):
    return {}
  check_weights_file(path)
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
