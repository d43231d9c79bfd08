"""CRN, the Contextual Reweighting Network of the benchmark's `model/aggregation.py` (`crn`):
NetVLAD whose soft-assignment is weighted by a mask computed from the (L2-normalised) map.

  x_crn = AvgPool2d(3, stride 2, no padding, ceil_mode) of the map (a last window that
          overhangs the border averages its in-bounds part only)
  g     = relu([conv3x3 (32), conv5x5 (32), conv7x7 (20)](x_crn))   (84 channels, with bias)
  w     = relu(acc_w(g))                                             (1x1 conv 84 -> 1)
  mask  = bilinear x2 upsampling of w (align_corners=False)          (H x W again)
  soft-assignment (softmax over clusters) x mask, then NetVLAD's residual sums,
  intra-normalisation and L2

`acc_w` keeps its initial 1 / 0 (the original freezes it: models.aggregations lists it as
frozen). The mask has the map's size only when H and W are even (the original crashes on
odd sizes; the aggregation's check says so first). The context filters start Xavier-normal
with zero bias; the original starts CRN from a trained NetVLAD (train.init_from).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgssl_jax.models import interpolate
from vgssl_jax.models.features import Features
from vgssl_jax.models.layers import Conv, fc_then_l2, l2_normalize
from vgssl_jax.models.pooling import netvlad_params, vlad

FILTERS = ((3, 32), (5, 32), (7, 20))


def avg_pool_ceil(x: jax.Array) -> jax.Array:
  """AvgPool2d(3, 2, padding 0, ceil_mode=True) of (N, H, W, C)."""
  _, h, w, _ = x.shape
  oh, ow = -(-(h - 3) // 2) + 1, -(-(w - 3) // 2) + 1
  pad = ((0, 0), (0, 2 * (oh - 1) + 3 - h), (0, 2 * (ow - 1) + 3 - w), (0, 0))
  window = lambda y: jax.lax.reduce_window(jnp.pad(y, pad), 0.0, jax.lax.add, (1, 3, 3, 1),
                                           (1, 2, 2, 1), "VALID")
  return window(x) / window(jnp.ones((1, h, w, 1), x.dtype))


class ContextMask(nn.Module):
  """The original's CRNModule: the reweighting mask (N, H, W) of a normalised map."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pooled = avg_pool_ceil(x)
    g = jnp.concatenate([
        Conv(out, k, padding=k // 2, use_bias=True, kernel_init=nn.initializers.xavier_normal(),
             name=f"filter_{k}_{k}")(pooled)
        for k, out in FILTERS], axis=-1)
    acc = Conv(1, 1, use_bias=True, kernel_init=nn.initializers.ones, name="acc_w")
    w = jax.nn.relu(acc(jax.nn.relu(g)))[..., 0]
    return interpolate.resize(w, (2 * w.shape[1], 2 * w.shape[2]), "bilinear", axes=(1, 2))


class CRN(nn.Module):
  clusters: int = 64
  fc_output_dim: int = 0

  @nn.compact
  def __call__(self, features: Features, train: bool = False) -> jax.Array:
    del train
    x = l2_normalize(features.feature_map.astype(jnp.float32), axis=-1)
    n, h, w, c = x.shape
    centroids, kernel = netvlad_params(self, self.clusters, c)
    mask = ContextMask(name="crn")(x)
    self.sow("intermediates", "mask", mask)
    v, assign = vlad(x.reshape(n, h * w, c), centroids, kernel, weights=mask.reshape(n, h * w))
    self.sow("intermediates", "soft_assign", assign)
    return fc_then_l2(v, self.fc_output_dim)
