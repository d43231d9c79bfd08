"""The ResNet family's names and stage table, without jax (the PyTorch twins in
tests/reference import it too): depth -> (block kind, blocks per stage)."""

from __future__ import annotations

import re

STAGES = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3)),
          101: ("bottleneck", (3, 4, 23, 3))}
_BACKBONE_RE = re.compile(r"^resnet(18|50|101)conv([45])$")
VALID_NAMES = ", ".join(f"resnet{d}conv{c}" for d in STAGES for c in (4, 5))


def parse_backbone(name: str) -> tuple[int, int]:
  """'resnet50conv5' -> (50, 5). Raises ValueError listing the valid names."""
  match = _BACKBONE_RE.match(name)
  if not match:
    raise ValueError(f"unknown backbone {name!r}; expected one of {VALID_NAMES}")
  return int(match.group(1)), int(match.group(2))


def features_dim(depth: int, last_stage: int, width: int) -> int:
  """Channels of the last kept stage (2048 for resnet50conv5 at width 64)."""
  kind, _ = STAGES[depth]
  return width * 2 ** (last_stage - 2) * (1 if kind == "basic" else 4)
