"""Projector F_p and predictor of VG-SSL (docs/original.md §Projector and predictor).

Layers are named by their index in the original's nn.Sequential ("0", "1", "3", ...),
so that checkpoints map by name.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgssl_jax.models.layers import BatchNorm, Dense, Dtype

# The projector families of the original (which objective uses which: objectives.registry).
MAX_LAYERS = {"byol": 3, "contrastive": 2, "vicreg": 3}
PREDICTOR_HIDDEN = 4096  # fixed for both BYOL and SimSiam in the original


def projector_layout(family: str, n_layers: int) -> list[tuple[str, bool]]:
  """The original's projector as a list of ("linear", bias) / ("bn", _) / ("relu", _).

  | family      | n=1       | n=2                     | n=3                                    |
  | byol        | Lin       | Lin nb, BN, ReLU, Lin   | Lin nb, BN, ReLU, Lin nb, BN, ReLU, Lin|
  | contrastive | Lin       | Lin, ReLU, Lin          | (not implemented in the original)      |
  | vicreg      | Lin nb    | Lin nb, BN, ReLU, Lin nb| all Lin nb with BN, ReLU between       |
  """
  if family not in MAX_LAYERS:
    raise ValueError(f"unknown projector family {family!r}; expected one of {list(MAX_LAYERS)}")
  if not 0 <= n_layers <= MAX_LAYERS[family]:
    raise ValueError(f"n_layers={n_layers} is not available for the {family} projector "
                     f"(0..{MAX_LAYERS[family]}).")
  if n_layers == 0:
    return []
  last_bias = family != "vicreg"
  if n_layers == 1:
    return [("linear", last_bias)]
  layers = []
  for _ in range(n_layers - 1):
    if family == "contrastive":
      layers += [("linear", True), ("relu", False)]
    else:
      layers += [("linear", False), ("bn", False), ("relu", False)]
  return layers + [("linear", last_bias)]


class Projector(nn.Module):
  """(N, dim) -> (N, size); the identity when n_layers == 0."""
  family: str
  n_layers: int
  size: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for i, (kind, bias) in enumerate(projector_layout(self.family, self.n_layers)):
      if kind == "linear":
        x = Dense(self.size, use_bias=bias, dtype=self.dtype, name=str(i))(x)
      elif kind == "bn":
        x = BatchNorm(dtype=self.dtype, name=str(i))(x, train)
      else:
        x = nn.relu(x)
    return x.astype(jnp.float32)


class Predictor(nn.Module):
  """BYOL/SimSiam predictor: Lin(P_in -> 4096), BN, ReLU, Lin(4096 -> size); biases on."""
  size: int
  hidden: int = PREDICTOR_HIDDEN
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = Dense(self.hidden, dtype=self.dtype, name="0")(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, name="1")(x, train))
    return Dense(self.size, dtype=self.dtype, name="3")(x).astype(jnp.float32)
