"""Flax variables <-> PyTorch state-dict names and layouts.

Module paths join with "." into torchvision's names (layer1.0.downsample.0 ...); leaves
are renamed (kernel -> weight, scale -> weight, mean -> running_mean, var -> running_var)
and transposed to PyTorch's layouts: conv (kh, kw, in, out) -> (out, in, kh, kw),
linear (in, out) -> (out, in).
"""

from __future__ import annotations

import numpy as np
from flax import traverse_util

_PARAM_NAMES = {"scale": "weight", "bias": "bias", "kernel": "weight", "p": "p"}
_STAT_NAMES = {"mean": "running_mean", "var": "running_var"}


def _to_torch_layout(leaf: str, value: np.ndarray) -> np.ndarray:
  if leaf == "kernel" and value.ndim == 4:
    return value.transpose(3, 2, 0, 1)
  if leaf == "kernel" and value.ndim == 2:
    return value.T
  return value


def to_torch_state(params: dict, batch_stats: dict | None = None) -> dict[str, np.ndarray]:
  """Flat {torch name: array in torch layout} for Flax params (+ batch stats)."""
  out = {}
  for path, value in traverse_util.flatten_dict(params).items():
    name = ".".join(path[:-1] + (_PARAM_NAMES[path[-1]],))
    out[name] = _to_torch_layout(path[-1], np.asarray(value))
  for path, value in traverse_util.flatten_dict(batch_stats or {}).items():
    out[".".join(path[:-1] + (_STAT_NAMES[path[-1]],))] = np.asarray(value)
  return out
