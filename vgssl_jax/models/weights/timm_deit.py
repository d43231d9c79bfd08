"""ImageNet DeiT-S distilled weights (timm/DeiT's `deit_small_distilled_patch16_224`, a
`.pth` with a `model` entry, or `.safetensors`) into the DeiT backbone, as the original's
`model/Deit.py` loads them (docs/original.md §Backbones):

  * the position embedding's 14x14 patch part is resized to the training grid (H/16 x
    W/16; bilinear, align_corners=False, no antialias), the cls and dist entries kept;
  * `head` and `head_dist` are both made from the first fc_output_dim rows of the
    checkpoint's `head` (its own `head_dist` is discarded: the original's quirk, kept).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from vgssl_jax.errors import ConfigError
from vgssl_jax.models.deit import resize_grid
from vgssl_jax.models.weights.files import load_state_dict
from vgssl_jax.models.weights.names import from_torch_state, replace_subtrees, subtrees


def resize_pos_embed(pos_embed: np.ndarray, grid: tuple[int, int],
                     old_grid: tuple[int, int] | None = None) -> np.ndarray:
  """(1, 2 + h*w, D) -> (1, 2 + grid_h*grid_w, D); the old grid is square unless given."""
  n = pos_embed.shape[1] - 2
  if old_grid is None:
    side = math.isqrt(n)
    if side * side != n:
      raise ConfigError(f"the position embedding has {n} patch entries, not a square grid; "
                        "expected the 14x14 grid of deit_small_distilled_patch16_224.")
    old_grid = (side, side)
  patches = np.asarray(resize_grid(np.asarray(pos_embed[0, 2:], np.float32), old_grid, grid))
  return np.concatenate([pos_embed[0, :2], patches])[None].astype(np.float32)


def load_timm_deit(path: str, variables: dict, grid: tuple[int, int]) -> dict:
  """Network `variables` (DeiT backbone, patch `grid` of the training size) with the
  backbone from a timm DeiT ImageNet checkpoint. Strict: every other tensor must fit."""
  state = load_state_dict(path)
  backbone = subtrees(variables, ("backbone",))
  params = backbone["params"]["backbone"]
  classes = params["head"]["kernel"].shape[1]
  if "head.weight" not in state or "pos_embed" not in state:
    raise ConfigError(f"{path} is not a timm DeiT checkpoint (no head.weight / pos_embed); "
                      "give the deit_small_distilled_patch16_224 file.")
  if state["head.weight"].shape[0] < classes:
    raise ConfigError(f"model.fc_output_dim={classes} exceeds the {state['head.weight'].shape[0]}"
                      " rows of the checkpoint's head, which both DeiT heads start from.")
  ignored = sorted(k for k in state if k.startswith("head_dist."))
  head = {"weight": state["head.weight"][:classes], "bias": state["head.bias"][:classes]}
  renamed = {f"backbone.{k}": v for k, v in state.items() if not k.startswith(("head.",
                                                                             "head_dist."))}
  for name in ("head", "head_dist"):  # both from the ImageNet head (the original's quirk)
    renamed.update({f"backbone.{name}.{leaf}": v for leaf, v in head.items()})
  renamed["backbone.pos_embed"] = resize_pos_embed(state["pos_embed"], grid)
  loaded = from_torch_state(renamed, backbone, "Check model.vit.embed_dim / depth / num_heads "
                            "(DeiT-S: 384 / 12 / 6).")
  logging.info("loaded %d DeiT tensors from %s (position grid resized to %dx%d, both heads "
               "from the first %d rows of head); ignored %s", len(renamed), path, *grid,
               classes, ", ".join(ignored) or "nothing")
  return replace_subtrees(variables, loaded)
