"""DINOv2's released weights (`dinov2_vit{s,b,l,g}14[_reg4]_pretrain.pth`: the official
state dict, keys `cls_token`, `pos_embed`, `register_tokens`, `mask_token`,
`patch_embed.proj.*`, `blocks.<i>.{norm1, attn.qkv, attn.proj, ls1.gamma, norm2, mlp.*,
ls2.gamma}`, `norm.*`) into the DINOv2 backbone (`model.pretrained`). Our names are the
same under `backbone.`; the load is strict, `mask_token` (never read) aside.
"""

from __future__ import annotations

import logging

from vgssl_jax.errors import ConfigError
from vgssl_jax.models.weights.files import load_state_dict
from vgssl_jax.models.weights.names import from_torch_state, replace_subtrees, subtrees
from vgssl_jax.models.weights.original import OriginalNames

# what the official checkpoints may lack without harm (MegaLoc's backbone has no mask token)
OPTIONAL = ("mask_token",)


def is_dinov2_state(state) -> bool:
  """Whether a state dict holds a DINOv2 (its blocks have LayerScale)."""
  return any(k.removeprefix("backbone.").startswith("blocks.") and ".ls1.gamma" in k
             for k in state)


def check_grid(canonical, target: dict) -> None:
  want = target["params"]["backbone"]["pos_embed"].shape
  got = canonical.get("backbone.pos_embed")
  if got is not None and got.shape != want:
    side = int(round((got.shape[1] - 1) ** 0.5))
    raise ConfigError(f"the checkpoint's position embedding is {got.shape} ({side}x{side} grid, "
                      f"width {got.shape[2]}), this model's {tuple(want)}: set "
                      f"--config.model.dinov2.img_size={side * 14} (518 for DINOv2's releases) "
                      "and model.backbone to the checkpoint's size.")


ORIGINAL_NAMES = OriginalNames(
    "a DINOv2", is_dinov2_state,
    to_ours=lambda key: key if key.startswith(("backbone.", "aggregation.")) else f"backbone.{key}",
    check=check_grid)


def with_optional(state: dict, target: dict, prefix: str = "backbone.") -> dict:
  """`state` (our names) completed with the target's own values of the OPTIONAL tensors it
  lacks."""
  params = target["params"]["backbone"]
  return {**{f"{prefix}{k}": params[k] for k in OPTIONAL if f"{prefix}{k}" not in state
             and k in params}, **state}


def load_dinov2(path: str, variables: dict) -> dict:
  """Network `variables` with the backbone from a DINOv2 release (`*_pretrain.pth`)."""
  state = load_state_dict(path)
  if not is_dinov2_state(state):
    raise ConfigError(f"{path} is not a DINOv2 checkpoint (no blocks.*.ls1.gamma); give the "
                      "dinov2_vit*14[_reg4]_pretrain.pth file of the backbone.")
  target = subtrees(variables, ("backbone",))
  ours = with_optional({ORIGINAL_NAMES.to_ours(k): v for k, v in state.items()}, target)
  check_grid(ours, target)
  loaded = from_torch_state(ours, target, "Check model.backbone (the DINOv2 size, _reg for the "
                            "register models) against the file.")
  logging.info("loaded %d DINOv2 tensors from %s", len(state), path)
  return replace_subtrees(variables, loaded)
