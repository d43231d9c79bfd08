"""Flax variables <-> PyTorch state-dict names and layouts.

Module paths join with "." into the PyTorch module names (layer1.0.downsample.0 ...);
leaves are renamed (kernel -> weight, scale -> weight, mean -> running_mean, var ->
running_var) and transposed to PyTorch's layouts: conv (kh, kw, in, out) -> (out, in, kh,
kw), linear (in, out) -> (out, in). Every load is strict: a tensor that does not find its
place, or a place that gets no tensor, is an error listing them (the original loads with
strict=False and silently drops wrong keys).
"""

from __future__ import annotations

import numpy as np
from flax import traverse_util

from vgssl_jax.errors import ConfigError

_MAX_LISTED = 30

_PARAM_NAMES = {"scale": "weight", "bias": "bias", "kernel": "weight", "p": "p",
                # DeiT's tokens and position embedding keep their names and layouts
                "cls_token": "cls_token", "dist_token": "dist_token", "pos_embed": "pos_embed",
                "centroids": "centroids",  # NetVLAD
                # R2Former's tokens, unused position embedding and score mixing ratio
                "cls_token_2": "cls_token_2", "decoder_pos_embed": "decoder_pos_embed",
                "ratio": "ratio",
                # DINOv2's LayerScale, register and mask tokens
                "gamma": "gamma", "register_tokens": "register_tokens", "mask_token": "mask_token",
                # torch's nn.MultiheadAttention (BoQ), BoQ's queries, SALAD's dust bin
                "in_proj_weight": "in_proj_weight", "in_proj_bias": "in_proj_bias",
                "queries": "queries", "dust_bin": "dust_bin",
                # CCT's and HF ViT's position embeddings
                "positional_emb": "positional_emb",
                "position_embeddings": "position_embeddings"}
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


def torch_layout(variables: dict) -> dict[str, tuple[tuple, str, tuple]]:
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


def listed(names, limit: int = _MAX_LISTED) -> str:
  names = sorted(names)
  more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


def from_torch_state(state: dict, template: dict, hint: str = "",
                     shown=lambda name: name) -> dict:
  """Flax variables ({"params", "batch_stats"} shaped like `template`) from torch-named arrays.

  The inverse of `to_torch_state`: names must match exactly (`num_batches_tracked`
  is ignored) and shapes after transposition too, else a ConfigError lists the missing,
  unexpected and mismatched keys (each through `shown`: the names the user's file has).
  Arrays are cast to the template's dtypes; the result holds NumPy arrays.
  """
  layout = torch_layout(template)
  given = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  missing = [shown(k) for k in layout if k not in given]
  unexpected = [shown(k) for k in given if k not in layout]
  mismatched = [f"{shown(k)} {tuple(np.shape(given[k]))} (expected {layout[k][2]})"
                for k in layout if k in given and tuple(np.shape(given[k])) != layout[k][2]]
  if missing or unexpected or mismatched:
    parts = [f"{len(missing)} missing: {listed(missing)}" if missing else "",
             f"{len(unexpected)} unexpected: {listed(unexpected)}" if unexpected else "",
             f"{len(mismatched)} with other shapes: {listed(mismatched)}" if mismatched else ""]
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


def replace_subtrees(variables: dict, loaded: dict) -> dict:
  """`variables` with the top-level modules of `loaded` replaced (others kept)."""
  out = {}
  for collection, tree in variables.items():
    tree = dict(tree)
    tree.update(loaded.get(collection, {}))
    out[collection] = tree
  return out


def subtrees(variables: dict, modules: tuple[str, ...]) -> dict:
  """{"params": {m: ...}, "batch_stats": {m: ...}} of the given top-level modules."""
  return {c: {m: variables[c][m] for m in modules if m in variables.get(c, {})}
          for c in ("params", "batch_stats")}
