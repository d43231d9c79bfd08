"""How the original VG-SSL names a backbone family's tensors in its checkpoints.

Our export names are the Flax paths joined with "." in PyTorch layouts
(models.weights.names): `backbone.<module>...` and `aggregation.<module>...`. A family's
`OriginalNames` translates the original's keys to ours (importing its trained checkpoints)
and ours back (exporting in its layout).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

State = dict[str, np.ndarray]


def _same(key: str) -> str:
  return key


def _no_check(state: State, target: dict) -> None:
  del state, target


@dataclasses.dataclass(frozen=True)
class OriginalNames:
  what: str                                  # "a ResNet", for messages
  recognise: Callable[[State], bool]         # whether a state dict holds this family
  to_ours: Callable[[str], str] = _same      # an original key -> our export name
  to_original: Callable[[str], str] = _same  # our export name -> the original's key
  # the original keeps the descriptor's heads under backbone.* (DeiT): its aggregation.*
  # keys are then the projector, and no pooling layout is searched; `layout` names that
  # layout in import reports
  heads_in_backbone: bool = False
  layout: str = ""
  # (state in our names, target variables) -> ConfigError naming the setting to change
  check: Callable[[State, dict], None] = _no_check


def renamed(prefixes: tuple[tuple[str, str], ...]) -> Callable[[str], str]:
  """A renaming of keys by their first matching (old prefix, new prefix)."""
  def rename(key: str) -> str:
    for old, new in prefixes:
      if key.startswith(old):
        return new + key[len(old):]
    return key
  return rename
