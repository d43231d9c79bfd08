"""What a backbone gives its aggregation: a small typed value.

  feature_map  (N, h, w, C): a CNN's last map, or a ViT's patch tokens on their grid
  prefix       (N, P, D): the tokens before the patches (cls; DeiT's cls and dist), after
               the final norm where the family applies it
  registers    (N, R, D): register tokens (DINOv2 *_reg)
  local        what the family's local tokens for re-ranking read (layer3 of a ResNet, the
               tokens entering DeiT's last block and its attention), only when asked for

Each aggregation declares which of these it consumes (models.aggregations), so an
impossible pair (a map pooling on a backbone that gives no map) is refused before any
work, and the network wires every pair the same way.
"""

from __future__ import annotations

import dataclasses

import flax
import jax

FEATURE_MAP = "feature_map"
PREFIX = "prefix"
REGISTERS = "registers"
KINDS = (FEATURE_MAP, PREFIX, REGISTERS)
# how the kinds read in messages
DESCRIBED = {FEATURE_MAP: "a feature map", PREFIX: "class tokens", REGISTERS: "register tokens"}


@flax.struct.dataclass
class Features:
  feature_map: jax.Array | None = None
  prefix: jax.Array | None = None
  registers: jax.Array | None = None
  local: dict = flax.struct.field(default_factory=dict)

  def map_arrays(self, fn) -> "Features":
    """The same value with `fn` applied to every array it holds."""
    return jax.tree.map(fn, self)


@dataclasses.dataclass(frozen=True)
class FeatureShapes:
  """The sizes of what a backbone gives (what an aggregation is built for): which kinds it
  outputs, the map's channels, the tokens' width, how many prefix and register tokens."""
  outputs: tuple[str, ...]
  map_channels: int = 0
  map_hw: tuple[int, int] = (0, 0)   # the map's grid at the training image size
  token_dim: int = 0
  prefix_tokens: int = 0
  registers: int = 0
  # the original hands this map to the aggregation as a token sequence (N, tokens, C): CCT.
  # Its GeM with l2=before_pool then normalises over the tokens, and the poolings that need
  # a 4-D map crash there (models.aggregations refuses them)
  sequence: bool = False
