"""The poolings of a feature map (N, H, W, C) into the descriptor (docs/original.md
§Aggregation): the deep visual geo-localization benchmark's, as VG-SSL has them:

  gem | spoc | mac | rmac   L2 per location (`l2`="before_pool"), the pooling, or L2 after
                            it ("after_pool"), or neither ("none")
  netvlad                   soft-assignment to K clusters (input L2-normalised per
                            location), residual sums, intra-normalisation, L2
  then, with fc_output_dim > 0, FC -> L2 (the paper always has it)

Computed in float32 whatever the backbone's dtype: descriptors of different places can
differ in the third decimal (an untrained network's have cosines of 0.997), which bfloat16's
8-bit mantissa would erase; the aggregation is a negligible share of the work.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vgssl_jax.models.features import Features
from vgssl_jax.models.layers import fc_then_l2, l2_normalize

POOLINGS = ("gem", "spoc", "mac", "rmac")
L2_MODES = ("before_pool", "after_pool", "none")


def gem(x: jax.Array, p: jax.Array, eps: float = 1e-6) -> jax.Array:
  """Generalised mean pooling over H, W: (N, H, W, C) -> (N, C), in float32.

  GeM(X)_c = (mean_hw clamp(X_c, eps)^p)^(1/p).
  """
  x = jnp.maximum(x.astype(jnp.float32), eps)
  return jnp.mean(x ** p, axis=(1, 2)) ** (1.0 / p)


class GeM(nn.Module):
  """GeM with a learnable p (shape (1,) as in the original, initialised to 3)."""
  p_init: float = 3.0
  eps: float = 1e-6

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.param("p", nn.initializers.constant(self.p_init), (1,), jnp.float32)
    return gem(x, p[0], self.eps)


def rmac_regions(h: int, w: int, levels: int = 3, overlap: float = 0.4
                 ) -> list[tuple[int, int, int]]:
  """(top, left, side) of R-MAC's square regions on an h x w map (cirtorch's rule, as the
  benchmark's `rmac`: L = 3 scales, about 40 % overlap of neighbours).

  The step search and the region centres are computed in float32, as the original's
  torch.Tensor arithmetic does: in float64 some map sizes get other regions (a product such
  as 3 * 7.6667 lands just below an integer in one precision and on it in the other)."""
  f32 = np.float32
  steps = np.array([2, 3, 4, 5, 6, 7], f32)
  side = min(w, h)
  b = f32(max(h, w) - side) / (steps - f32(1))
  idx = int(np.argmin(np.abs((f32(side * side) - f32(side) * b) / f32(side * side) - f32(overlap))))
  wd = idx + 1 if h < w else 0
  hd = idx + 1 if h > w else 0
  regions = []
  for level in range(1, levels + 1):
    wl = math.floor(2 * side / (level + 1))
    wl2 = math.floor(wl / 2 - 1)
    if wl == 0:
      continue
    bw = 0 if level + wd == 1 else (w - wl) / (level + wd - 1)
    bh = 0 if level + hd == 1 else (h - wl) / (level + hd - 1)
    cen_w = np.floor(f32(wl2) + np.arange(level + wd, dtype=f32) * f32(bw)) - f32(wl2)
    cen_h = np.floor(f32(wl2) + np.arange(level + hd, dtype=f32) * f32(bh)) - f32(wl2)
    regions += [(int(i), int(j), wl) for i in cen_h for j in cen_w]
  return regions


def rmac(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """R-MAC: the L2-normalised max over the whole map plus over each region, summed.
  (N, H, W, C) -> (N, C)."""
  def normed_max(r):
    v = jnp.max(r, axis=(1, 2))
    return v / (jnp.linalg.norm(v, axis=-1, keepdims=True) + eps)
  out = normed_max(x)
  for top, left, side in rmac_regions(x.shape[1], x.shape[2]):
    out = out + normed_max(x[:, top:top + side, left:left + side])
  return out


class _Conv1x1(nn.Module):
  """NetVLAD's soft-assignment `conv`: a bias-free 1x1 convolution's kernel (1, 1, C, K)."""
  clusters: int

  @nn.compact
  def __call__(self, channels: int) -> jax.Array:
    return self.param("kernel", nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                      (1, 1, channels, self.clusters), jnp.float32)


def netvlad_params(module: nn.Module, clusters: int, channels: int):
  """(centroids (K, C), conv kernel (1, 1, C, K)) declared in `module` (NetVLAD, CRN)."""
  centroids = module.param("centroids", nn.initializers.uniform(1.0), (clusters, channels),
                           jnp.float32)
  return centroids, _Conv1x1(clusters, name="conv")(channels)


def vlad(x: jax.Array, centroids: jax.Array, kernel: jax.Array,
         weights: jax.Array | None = None) -> jax.Array:
  """NetVLAD of L2-normalised local descriptors x (N, T, C): soft-assignment (softmax over
  the clusters of a bias-free 1x1 convolution; times `weights` (N, T) when given: CRN's
  mask), residual sums, intra-normalisation, flatten cluster-major, L2."""
  n = x.shape[0]
  assign = jax.nn.softmax(x @ kernel[0, 0], axis=-1)              # (N, T, K)
  if weights is not None:
    assign = assign * weights[..., None]
  vlad_ = jnp.einsum("nik,nic->nkc", assign, x) - assign.sum(1)[..., None] * centroids
  vlad_ = l2_normalize(vlad_, axis=-1)                            # intra-normalisation
  return l2_normalize(vlad_.reshape(n, -1), axis=-1), assign


class NetVLAD(nn.Module):
  """NetVLAD with `clusters` clusters on C channels: (N, H, W, C) -> (N, clusters * C).

  Parameters as the benchmark's: `centroids` (K, C) and `conv` (a 1x1 convolution without
  bias, (1, 1, C, K) here, (K, C, 1, 1) in PyTorch), set by `netvlad_init_params`."""
  clusters: int = 64

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    centroids, kernel = netvlad_params(self, self.clusters, c)
    x = l2_normalize(x.reshape(n, h * w, c), axis=-1)            # across the descriptor dim
    v, assign = vlad(x, centroids, kernel)
    self.sow("intermediates", "soft_assign", assign)
    return v


def netvlad_init_params(centroids: np.ndarray, descriptors: np.ndarray) -> dict:
  """The benchmark's init_params: conv = alpha * normalised centroids with
  alpha = -ln(0.01) / mean(top-1 - top-2 dot product of each descriptor with the
  normalised centroids). Returns {"centroids", "conv": {"kernel"}} (the NetVLAD module's
  parameters) and "alpha"."""
  centroids = np.asarray(centroids, np.float64)
  assign = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
  dots = -np.sort(-(assign @ np.asarray(descriptors, np.float64).T), axis=0)
  alpha = -np.log(0.01) / np.mean(dots[0] - dots[1])
  kernel = (alpha * assign).T[None, None]                       # (1, 1, C, K)
  return {"centroids": centroids.astype(np.float32),
          "conv": {"kernel": kernel.astype(np.float32)}, "alpha": float(alpha)}


class Pooling(nn.Module):
  """Features with a (N, H, W, C) map (or the map itself) -> (N, D) descriptor; see the
  module docstring.

  fc_output_dim > 0 adds FC -> L2 (the descriptor is then L2-normalised); 0 leaves the
  pooled vector as it is (L2-normalised for netvlad and l2="after_pool")."""
  fc_output_dim: int = 1024
  kind: str = "gem"
  l2: str = "before_pool"
  clusters: int = 64
  sequence: bool = False  # the map is the original's token sequence (FeatureShapes.sequence)

  @nn.compact
  def __call__(self, features: Features | jax.Array, train: bool = False) -> jax.Array:
    del train
    x = features.feature_map if isinstance(features, Features) else features
    x = x.astype(jnp.float32)
    if self.kind == "netvlad":
      v = NetVLAD(self.clusters, name="netvlad")(x)
    else:
      if self.l2 == "before_pool" and self.sequence:
        # the original's L2Norm(dim=1) on (N, tokens, C) normalises over the tokens
        n, h, w, c = x.shape
        x = l2_normalize(x.reshape(n, h * w, c), axis=1).reshape(n, h, w, c)
      elif self.l2 == "before_pool":
        x = l2_normalize(x, axis=-1)  # over channels at every location
      if self.kind == "gem":
        v = GeM(name="gem")(x)
      elif self.kind == "spoc":
        v = jnp.mean(x, axis=(1, 2))
      elif self.kind == "mac":
        v = jnp.max(x, axis=(1, 2))
      else:
        v = rmac(x)
      if self.l2 == "after_pool":
        v = l2_normalize(v, axis=-1)
    return fc_then_l2(v, self.fc_output_dim)
