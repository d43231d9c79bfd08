"""Reading weight files the user supplies (nothing is ever downloaded).

PyTorch checkpoints (`.pth`, `.pt`, `.ckpt`: read without torch, executing nothing from
the file; see torch_pickle), `.safetensors` and `.npz`. Every reader returns a flat
{name: array}; the containers of the original's checkpoints are unwrapped (unwrap_state).
"""

from __future__ import annotations

import os

import numpy as np

from vgssl_jax.errors import ConfigError
from vgssl_jax.models.weights import torch_pickle

State = dict[str, np.ndarray]

TORCH_FORMATS = (".pth", ".pt", ".ckpt")
EXPORT_FORMATS = (".safetensors", ".npz")
WEIGHT_FILES = TORCH_FORMATS + EXPORT_FORMATS
# ".pth, .pt, .ckpt, .safetensors or .npz", for messages
WEIGHT_FILES_TEXT = f"{', '.join(WEIGHT_FILES[:-1])} or {WEIGHT_FILES[-1]}"


def is_weight_file(path: str | None) -> bool:
  """Whether `path` names a weights file (by extension) rather than a run's folder."""
  return bool(path) and path.lower().endswith(WEIGHT_FILES)


def load_state_dict(path: str) -> State:
  """{name: array} of a `.pth`/`.pt`/`.ckpt` (torch), `.safetensors` or `.npz` file.

  Unwraps Lightning checkpoints (`state_dict`), `model_state_dict` and DataParallel's
  `module.` prefix (see `unwrap_state`).
  """
  check_weights_file(path)
  ext = os.path.splitext(path)[1].lower()
  if ext in TORCH_FORMATS:
    obj = _torch_load(path)
  elif ext in EXPORT_FORMATS:
    obj = _numpy_load(path, ext)
  else:
    raise ConfigError(f"cannot read weights from {path}: the extension {ext!r} is none of "
                      f"{WEIGHT_FILES_TEXT}.")
  return unwrap_state(obj, path)


def check_weights_file(path: str) -> None:
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
    return torch_pickle.load(path)
  except torch_pickle.TorchFileError as e:
    raise ConfigError(f"cannot read {path} as a PyTorch checkpoint: {e}. Is the file complete? "
                      "(Files of torch < 1.6 must be saved again with a current torch.)") from e


def unwrap_state(obj, where: str = "the checkpoint") -> State:
  """The flat {name: array} inside a loaded checkpoint object.

  Lightning: `{"state_dict": ...}`; train.py: `{"model_state_dict": ...}`; timm/DeiT
  releases: `{"model": ...}`; else the dict itself. A `module.` prefix (DataParallel) is
  removed from every key that has it.
  """
  if not isinstance(obj, dict):
    raise ConfigError(f"{where} holds a {type(obj).__name__}, not a dictionary of tensors; "
                      "save the model's state_dict().")
  for container in ("state_dict", "model_state_dict", "model"):
    if isinstance(obj.get(container), dict):
      obj = obj[container]
      break
  state = {}
  for key, value in obj.items():
    if not isinstance(value, np.ndarray) or value.dtype == object:
      if isinstance(value, dict):
        raise ConfigError(f"{where}: entry {key!r} is a nested dictionary; expected a flat "
                          "state dict (or one under 'state_dict' / 'model_state_dict').")
      continue  # scalars and strings of a checkpoint are not weights
    state[key[len("module."):] if key.startswith("module.") else key] = value
  if not state:
    raise ConfigError(f"{where} holds no tensors (keys: {sorted(obj)[:10]}); expected a state "
                      "dict, a Lightning checkpoint (state_dict), a train.py checkpoint "
                      "(model_state_dict) or a timm release (model).")
  return state
