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

from vgssl_jax.models import resnet
from vgssl_jax.models.layers import Dtype
from vgssl_jax.models.weights import torchvision

FEATURE_MAP = "feature_map"   # (N, h, w, C): aggregated into the descriptor
DESCRIPTOR = "descriptor"     # (N, D_g) L2-normalised: the backbone is the whole F_l + F_g


@dataclasses.dataclass(frozen=True)
class BackboneFamily:
  name: str
  names: str                                   # the valid names, for messages
  parse: Callable[[str], dict | None]          # name -> build arguments, None if not ours
  build: Callable[..., nn.Module]              # (model config, dtype, **arguments) -> module
  output: str                                  # FEATURE_MAP or DESCRIPTOR
  # (weights file, network variables) -> variables with the backbone replaced
  load_pretrained: Callable[[str, dict], dict]


def _parse_resnet(name: str) -> dict | None:
  try:
    depth, last_stage = resnet.parse_backbone(name)
  except ValueError:
    return None
  return {"depth": depth, "last_stage": last_stage}


RESNET = BackboneFamily(
    name="resnet", names=resnet.VALID_NAMES, parse=_parse_resnet,
    build=lambda mc, dtype, depth, last_stage: resnet.ResNet(depth, last_stage, mc.width, dtype),
    output=FEATURE_MAP, load_pretrained=torchvision.load_torchvision_backbone)

FAMILIES: tuple[BackboneFamily, ...] = (RESNET,)


def family(name: str) -> tuple[BackboneFamily, dict]:
  """(family, build arguments) of a backbone name; ValueError listing the valid names."""
  for fam in FAMILIES:
    args = fam.parse(name)
    if args is not None:
      return fam, args
  valid = "; ".join(f.names for f in FAMILIES)
  raise ValueError(f"unknown backbone {name!r}; expected one of {valid}")


def build_backbone(model_config, dtype: Dtype) -> tuple[nn.Module, str]:
  """(backbone module, its output kind) for the `model` section of a config."""
  fam, args = family(model_config.backbone)
  return fam.build(model_config, dtype, **args), fam.output


def check_pretrained(model_config, abstract_variables: dict) -> None:
  """Reads `model_config.pretrained` and matches it against the network's shapes (an
  abstract tree is enough): a wrong or damaged file is reported before anything is built."""
  load_pretrained(model_config, abstract_variables)


def load_pretrained(model_config, variables: dict) -> dict:
  """Network `variables` with the backbone from `model_config.pretrained` (ImageNet
  weights of the backbone's family, from a file the user supplies)."""
  fam, _ = family(model_config.backbone)
  return fam.load_pretrained(model_config.pretrained, variables)
