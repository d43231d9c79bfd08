"""torchvision ImageNet ResNet weights into the backbone (`--config.model.pretrained`).

The file is a torchvision ResNet-18/50/101 state dict (e.g. the IMAGENET1K_V1 file that
torchvision's `pretrained=True` means), `.pth` or `.safetensors`.
"""

from __future__ import annotations

import logging

from vgssl_jax.models.weights.files import load_state_dict
from vgssl_jax.models.weights.names import from_torch_state, replace_subtrees, subtrees
from vgssl_jax.models.weights.original import OriginalNames

# VG-SSL's ResNet is nn.Sequential(*list(resnet.children())[:-2]) ([:-3] for conv4): its keys
# are backbone.0 (conv1), backbone.1 (bn1), backbone.4 .. backbone.7 (layer1 .. layer4);
# children 2 and 3 (ReLU, max-pool) hold no tensors
SEQUENTIAL_BACKBONE = {"0": "conv1", "1": "bn1", "4": "layer1", "5": "layer2", "6": "layer3",
                       "7": "layer4"}


def original_to_ours(key: str) -> str:
  """`backbone.4.0.conv1.weight` -> `backbone.layer1.0.conv1.weight`; torchvision names and
  keys of other structures stay as they are (the strict load then lists them)."""
  if not key.startswith("backbone."):
    return key
  head, _, rest = key[len("backbone."):].partition(".")
  if head in ("0", "1") and "." not in rest:        # conv1 / bn1 tensors
    return f"backbone.{SEQUENTIAL_BACKBONE[head]}.{rest}"
  if head in ("4", "5", "6", "7") and rest[:1].isdigit():  # layerN.<block>...
    return f"backbone.{SEQUENTIAL_BACKBONE[head]}.{rest}"
  return key


def ours_to_original(key: str) -> str:
  """`backbone.layer1.0.conv1.weight` -> `backbone.4.0.conv1.weight`: the inverse of
  original_to_ours."""
  if not key.startswith("backbone."):
    return key
  head, _, rest = key[len("backbone."):].partition(".")
  index = {v: k for k, v in SEQUENTIAL_BACKBONE.items()}.get(head)
  return f"backbone.{index}.{rest}" if index is not None else key


def _is_resnet_state(state) -> bool:
  names = {original_to_ours(k) for k in state}
  return any(k.startswith(("backbone.conv1.", "backbone.layer", "conv1.", "layer1."))
             for k in names)


ORIGINAL_NAMES = OriginalNames("a ResNet", _is_resnet_state, to_ours=original_to_ours,
                               to_original=ours_to_original)


def load_torchvision_backbone(path: str, variables: dict) -> dict:
  """GeoLocalizationNet `variables` with the "backbone" replaced by torchvision weights.

  `path`: a torchvision ResNet-18/50/101 state dict (e.g. the IMAGENET1K_V1 file). Its
  `fc.*` is ignored, and `layer4.*` for a conv4 backbone; everything else must match.
  """
  state = load_state_dict(path)
  backbone = subtrees(variables, ("backbone",))
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
  return replace_subtrees(variables, loaded)
