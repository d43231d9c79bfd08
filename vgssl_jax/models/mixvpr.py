"""MixVPR (Ali-bey et al., WACV 2023; amaralibey/MixVPR `models/aggregators/mixvpr.py`):
feature-mixer blocks over the spatial axis of the map, then channel and row projections.

  x = flatten(map) (N, C, h w)
  mix_depth x: x = x + Linear(ReLU(Linear(LayerNorm(x))))   on the h w axis, hidden h w ratio
  x = channel_proj(x over C) (N, h w, out_channels) -> row_proj(over h w) (N, out, rows)
  descriptor = L2(flatten(x)) in (out_channels, out_rows) order

The layer sizes are made for the training map's h x w (320x320 on a ResNet-50 cut after
layer3: 20x20); other map sizes cannot be mixed. Names follow the original (`mix.0.mix.0`
LayerNorm, `.1` and `.3` Linear; `channel_proj`, `row_proj`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgssl_jax.models.features import Features
from vgssl_jax.models.layers import Dense, l2_normalize

trunc_normal = nn.initializers.truncated_normal(0.02)


class FeatureMixer(nn.Module):
  """x + mix(x), mix = Sequential(LayerNorm, Linear, ReLU, Linear): children "0", "1", "3"."""
  hw: int
  mlp_ratio: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = dict(kernel_init=trunc_normal, bias_init=nn.initializers.zeros)
    y = nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name="0")(x)
    y = Dense(int(self.hw * self.mlp_ratio), name="1", **init)(y)
    return x + Dense(self.hw, name="3", **init)(jax.nn.relu(y))


class _Mixers(nn.Module):
  """`mix`: mixers named '0', '1', ..., each holding its Sequential `mix`."""
  hw: int
  depth: int
  mlp_ratio: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.depth):
      x = _Mixer(self.hw, self.mlp_ratio, name=str(i))(x)
    return x


class _Mixer(nn.Module):
  hw: int
  mlp_ratio: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return FeatureMixer(self.hw, self.mlp_ratio, name="mix")(x)


class MixVPR(nn.Module):
  """Features with a (N, h, w, C) map -> (N, out_channels * out_rows) descriptor."""
  hw: int
  out_channels: int = 1024
  mix_depth: int = 4
  mlp_ratio: float = 1.0
  out_rows: int = 4

  @nn.compact
  def __call__(self, features: Features, train: bool = False) -> jax.Array:
    del train
    x = features.feature_map.astype(jnp.float32)
    n, h, w, c = x.shape
    if h * w != self.hw:
      raise ValueError(f"MixVPR's layers are made for maps of {self.hw} positions, this one has "
                       f"{h}x{w}: evaluate at the training image size")
    x = _Mixers(self.hw, self.mix_depth, self.mlp_ratio, name="mix")(
        jnp.swapaxes(x.reshape(n, h * w, c), 1, 2))                     # (N, C, h w)
    self.sow("intermediates", "after_mix", x)
    x = Dense(self.out_channels, name="channel_proj")(jnp.swapaxes(x, 1, 2))  # (N, h w, out)
    self.sow("intermediates", "after_channel_proj", x)
    x = Dense(self.out_rows, name="row_proj")(jnp.swapaxes(x, 1, 2))   # (N, out, rows)
    self.sow("intermediates", "after_row_proj", x)
    return l2_normalize(x.reshape(n, -1))
