"""Backbones by name: the module a `model.backbone` name builds, what it outputs, and how
its ImageNet weights load.

A family registers a `BackboneFamily`. Its `parse(name)` returns the build arguments of
the names it owns (None for others); `output` says whether the backbone gives a feature
map, which `model.aggregation` turns into the descriptor, or the descriptor itself.
Adding a backbone = one module in models/ and one entry in FAMILIES; the network, the
objectives, the trainer and the evaluation runner do not change.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn

from vgssl_jax.models import deit, resnet
from vgssl_jax.models.layers import Dtype
from vgssl_jax.models.weights import timm_deit, torchvision

FEATURE_MAP = "feature_map"   # (N, h, w, C): aggregated into the descriptor
DESCRIPTOR = "descriptor"     # (N, D_g) L2-normalised: the backbone is the whole F_l + F_g


@dataclasses.dataclass(frozen=True)
class BackboneFamily:
  name: str
  names: str                                   # the valid names, for messages
  parse: Callable[[str], dict | None]          # name -> build arguments, None if not ours
  build: Callable[..., nn.Module]  # (model config, dtype, image size, **arguments) -> module
  output: str                                  # FEATURE_MAP or DESCRIPTOR
  # (weights file, network variables, training image size) -> variables with the backbone
  # replaced
  load_pretrained: Callable[[str, dict, tuple[int, int]], dict]
  # (model config, image size) -> None; ValueError naming the setting if impossible
  check: Callable[..., None] = lambda model_config, image_size: None
  # feature-map backbones: (model config) -> channels of the map
  channels: Callable[..., int] | None = None
  # parameters not trained without model.unfreeze (the original freezes the early layers)
  frozen: tuple[str, ...] = ()
  # what model.pretrained is, for messages
  weights: str = "ImageNet weights of the backbone"
  # config keys (or sections, "model.vit.") only this family reads
  keys: tuple[str, ...] = ()


def _parse_resnet(name: str) -> dict | None:
  try:
    depth, last_stage = resnet.parse_backbone(name)
  except ValueError:
    return None
  return {"depth": depth, "last_stage": last_stage}


RESNET = BackboneFamily(
    name="resnet", names=resnet.VALID_NAMES, parse=_parse_resnet,
    build=lambda mc, dtype, image_size, depth, last_stage: resnet.ResNet(
        depth, last_stage, mc.width, dtype),
    output=FEATURE_MAP,
    load_pretrained=lambda path, variables, image_size: torchvision.load_torchvision_backbone(
        path, variables),
    channels=lambda mc: resnet.features_dim(*resnet.parse_backbone(mc.backbone), mc.width),
    frozen=("conv1", "bn1", "layer1", "layer2"),
    weights="torchvision's ImageNet ResNet weights (e.g. resnet50-0676ba61.pth)",
    keys=("model.width", "model.aggregation"))


def _build_deit(mc, dtype, image_size):
  v = mc.vit
  # the re-ranking network cuts (or pos_resizes) the position grid for other sizes
  return deit.DistilledViT(grid=(image_size[0] // deit.PATCH, image_size[1] // deit.PATCH),
                           num_classes=mc.fc_output_dim, embed_dim=v.embed_dim, depth=v.depth,
                           num_heads=v.num_heads, mlp_ratio=v.mlp_ratio, dtype=dtype,
                           other_sizes="crop" if mc.local_dim else "resize")


def _check_deit(mc, image_size):
  v = mc.vit
  if image_size[0] % deit.PATCH or image_size[1] % deit.PATCH:
    raise ValueError(f"data.image_size={image_size[0]},{image_size[1]}: DeiT cuts 16x16 patches, "
                     "so height and width must be multiples of 16 (e.g. 480,640)")
  if min(v.embed_dim, v.depth, v.num_heads) < 1 or v.embed_dim % v.num_heads:
    raise ValueError(f"model.vit.embed_dim={v.embed_dim} must be a positive multiple of "
                     f"model.vit.num_heads={v.num_heads}, and model.vit.depth={v.depth} >= 1")


DEIT = BackboneFamily(
    name="deit", names="deit (DeiT-S distilled; sizes in model.vit)",
    parse=lambda name: {} if name == "deit" else None, build=_build_deit, output=DESCRIPTOR,
    load_pretrained=lambda path, variables, image_size: timm_deit.load_timm_deit(
        path, variables, (image_size[0] // deit.PATCH, image_size[1] // deit.PATCH)),
    check=_check_deit,
    weights="timm's ImageNet DeiT-S distilled weights (deit_small_distilled_patch16_224)",
    keys=("model.vit.",))

FAMILIES: tuple[BackboneFamily, ...] = (RESNET, DEIT)


def family(name: str) -> tuple[BackboneFamily, dict]:
  """(family, build arguments) of a backbone name; ValueError listing the valid names."""
  for fam in FAMILIES:
    args = fam.parse(name)
    if args is not None:
      return fam, args
  valid = "; ".join(f.names for f in FAMILIES)
  raise ValueError(f"unknown backbone {name!r}; expected one of {valid}")


def check(model_config, image_size) -> None:
  """ValueError naming the setting when the backbone cannot take this config."""
  fam, _ = family(model_config.backbone)
  fam.check(model_config, tuple(image_size))


def token_grid(model_config, image_size) -> tuple[int, int]:
  """The grid stage 2 picks local tokens from, at (H, W) inputs: DeiT's patches, a ResNet's
  layer3 (stride 16; each stride-2 layer rounds up)."""
  h, w = image_size
  if model_config.backbone == "deit":
    return h // deit.PATCH, w // deit.PATCH
  for _ in range(4):  # conv1, max-pool, layer2, layer3
    h, w = -(-h // 2), -(-w // 2)
  return h, w


def check_local(model_config, image_size) -> None:
  """ValueError naming the setting when the backbone cannot give stage 2's local tokens."""
  mc = model_config
  if mc.local_dim < 0 or mc.num_local < 1:
    raise ValueError(f"model.local_dim={mc.local_dim} must be >= 0 and model.num_local="
                     f"{mc.num_local} >= 1")
  if mc.backbone == "deit":
    return
  fam, args = family(mc.backbone)
  if fam is not RESNET or args["last_stage"] != 5 or mc.aggregation == "netvlad" \
      or not mc.fc_output_dim:
    raise ValueError(
        f"model.local_dim={mc.local_dim}: local tokens (re-ranking) need model.backbone=deit or "
        f"a conv5 ResNet with a pooling aggregation and an FC (its saliency is layer4 x FC); "
        f"this is {mc.backbone} with model.aggregation={mc.aggregation}, model.fc_output_dim="
        f"{mc.fc_output_dim}. Use e.g. resnet50conv5 + gem, or set model.local_dim=0")


def channels(model_config) -> int:
  """Channels of a feature-map backbone's output (what the aggregation pools)."""
  fam, _ = family(model_config.backbone)
  return fam.channels(model_config)


def frozen_modules(model_config) -> tuple[str, ...]:
  """Paths of the backbone modules that do not train ("backbone/conv1", ...; all train with
  model.unfreeze, as VG-SSL's runs)."""
  fam, _ = family(model_config.backbone)
  return () if model_config.unfreeze else tuple(f"backbone/{m}" for m in fam.frozen)


def build_backbone(model_config, dtype: Dtype, image_size: tuple[int, int]
                   ) -> tuple[nn.Module, str]:
  """(backbone module, its output kind) for the `model` section of a config and (H, W)
  training inputs."""
  fam, args = family(model_config.backbone)
  return fam.build(model_config, dtype, image_size, **args), fam.output


def check_pretrained(model_config, abstract_variables: dict, image_size) -> None:
  """Reads `model_config.pretrained` and matches it against the network's shapes (an
  abstract tree is enough): a wrong or damaged file is reported before anything is built."""
  load_pretrained(model_config, abstract_variables, image_size)


def load_pretrained(model_config, variables: dict, image_size) -> dict:
  """Network `variables` with the backbone from `model_config.pretrained` (ImageNet
  weights of the backbone's family, from a file the user supplies), for (H, W) training
  inputs."""
  fam, _ = family(model_config.backbone)
  return fam.load_pretrained(model_config.pretrained, variables, tuple(image_size))
