"""ImageNet DeiT-S distilled weights (timm/DeiT's `deit_small_distilled_patch16_224`, a
`.pth` with a `model` entry, or `.safetensors`) into the DeiT backbone, as the original's
`model/Deit.py` loads them (docs/original.md §Backbones):

  * the position embedding's 14x14 patch part is resized to the training grid (H/16 x
    W/16; bilinear, align_corners=False, no antialias), the cls and dist entries kept;
  * `head` and `head_dist` are both made from the first fc_output_dim rows of the
    checkpoint's `head` (its own `head_dist` is discarded: the original's quirk, kept).

The heads are the network's aggregation here (models.deit.DistilledHeads), the backbone's
`head` / `head_dist` in timm's and VG-SSL's files: ORIGINAL_NAMES maps the two.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from vgssl_jax.errors import ConfigError
from vgssl_jax.models.deit import resize_grid
from vgssl_jax.models.weights.files import load_state_dict
from vgssl_jax.models.weights.names import from_torch_state, replace_subtrees, subtrees
from vgssl_jax.models.weights.original import OriginalNames, renamed

_HEADS = (("backbone.head.", "aggregation.head."), ("backbone.head_dist.", "aggregation.head_dist."))


def is_deit_state(state) -> bool:
  """Whether a state dict holds a DeiT distilled (its dist token)."""
  return any(k.removeprefix("backbone.") == "dist_token" for k in state)


def original_to_ours(key: str) -> str:
  """VG-SSL's DeiT keys (Lightning: backbone.<timm name>; train.py's bare DeiT: <timm
  name>) -> ours: the heads move to the aggregation."""
  return renamed(_HEADS)(key if key.startswith("backbone.") else f"backbone.{key}")


def check_position_grid(canonical, target: dict) -> None:
  want = target["params"]["backbone"]["pos_embed"].shape
  got = canonical.get("backbone.pos_embed")
  if got is not None and got.shape[1] != want[1]:
    raise ConfigError(
        f"the checkpoint's position embedding is for {got.shape[1] - 2} patches, this model's "
        f"for {want[1] - 2}: set --config.data.image_size to the size the checkpoint was "
        "trained at (VG-SSL trains DeiT at 480,640: 1200 patches of 16x16).")
  if got is not None and got.shape[2] != want[2]:
    raise ConfigError(f"the checkpoint's DeiT is {got.shape[2]} wide, this model "
                      f"{want[2]}: set --config.model.vit.embed_dim={got.shape[2]} (and "
                      "model.vit.depth / num_heads to the checkpoint's).")


ORIGINAL_NAMES = OriginalNames(
    "a DeiT", is_deit_state, to_ours=original_to_ours,
    to_original=renamed(tuple((new, old) for old, new in _HEADS)), heads_in_backbone=True,
    layout="deit",
    check=check_position_grid)


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
  """Network `variables` (DeiT backbone, patch `grid` of the training size, its heads as
  the aggregation) with the backbone and both heads from a timm DeiT ImageNet checkpoint.
  Strict: every other tensor must fit."""
  state = load_state_dict(path)
  target = subtrees(variables, ("backbone", "aggregation"))
  classes = target["params"]["aggregation"]["head"]["kernel"].shape[1]
  if "head.weight" not in state or "pos_embed" not in state:
    raise ConfigError(f"{path} is not a timm DeiT checkpoint (no head.weight / pos_embed); "
                      "give the deit_small_distilled_patch16_224 file.")
  if state["head.weight"].shape[0] < classes:
    raise ConfigError(f"model.fc_output_dim={classes} exceeds the {state['head.weight'].shape[0]}"
                      " rows of the checkpoint's head, which both DeiT heads start from.")
  ignored = sorted(k for k in state if k.startswith("head_dist."))
  head = {"weight": state["head.weight"][:classes], "bias": state["head.bias"][:classes]}
  ours = {f"backbone.{k}": v for k, v in state.items() if not k.startswith(("head.",
                                                                          "head_dist."))}
  for name in ("head", "head_dist"):  # both from the ImageNet head (the original's quirk)
    ours.update({f"aggregation.{name}.{leaf}": v for leaf, v in head.items()})
  ours["backbone.pos_embed"] = resize_pos_embed(state["pos_embed"], grid)
  loaded = from_torch_state(ours, target, "Check model.vit.embed_dim / depth / num_heads "
                            "(DeiT-S: 384 / 12 / 6).")
  logging.info("loaded %d DeiT tensors from %s (position grid resized to %dx%d, both heads "
               "from the first %d rows of head); ignored %s", len(ours), path, *grid,
               classes, ", ".join(ignored) or "nothing")
  return replace_subtrees(variables, loaded)
