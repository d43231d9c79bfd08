"""Stage 2's local tokens: the `num_local` most salient positions of an image as
[x, y, attention, feature] rows (the original's `GeoLocalizationNetRerank`).

  DeiT:   score = the last block's attention of the cls and dist queries to each patch
          (summed over heads and the two queries); the feature of selected patch index k is
          the token entering the last block at sequence position k (the original's
          off-by-two: position k is patch k - 2, or cls / dist for k < 2; docs/original.md,
          quirk 19), its coordinates are patch k's.
  ResNet: score = sum over D_g of clamp(clamp(L2_channel(layer4), 1e-6) @ FC^T, 1e-6),
          bicubically upsampled (torch's kernel) to the layer3 grid; features from layer3.

Coordinates are patch centres on a 16-pixel grid over max(H, W): x = ((k mod w) 16 + 8) /
max(H, W), y = ((k div w) 16 + 8) / max(H, W) with w the grid's width; the attention
column is the selected scores divided by their maximum. Rows come in descending score.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vgssl_jax.models import interpolate
from vgssl_jax.models.layers import l2_normalize

STRIDE = 16


def select(scores: jax.Array, num_local: int, grid_width: int, image_hw: tuple[int, int]
           ) -> tuple[jax.Array, jax.Array]:
  """(N, P) scores -> (order (N, n) indices into the P positions, descending; [x, y,
  attention] (N, n, 3)) with n = min(num_local, P) (the original clamps)."""
  n = min(num_local, scores.shape[1])
  values, order = jax.lax.top_k(scores, n)
  scale = float(max(image_hw))
  x = ((order % grid_width) * STRIDE + STRIDE // 2) / scale
  y = ((order // grid_width) * STRIDE + STRIDE // 2) / scale
  attention = values / values[:, :1]
  coords = jnp.stack([x.astype(jnp.float32), y.astype(jnp.float32), attention], axis=-1)
  return order, jax.lax.stop_gradient(coords)


def gather(features: jax.Array, order: jax.Array) -> jax.Array:
  """(N, T, C) features at (N, n) positions -> (N, n, C)."""
  return jnp.take_along_axis(features, order[..., None], axis=1)


def deit_tokens(tokens: jax.Array, attention: jax.Array, num_local: int,
                image_hw: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
  """(features (N, n, D), [x, y, attention] (N, n, 3)) from a DistilledViT's token outputs:
  `tokens` (N, 2 + P, D) entering the last block, `attention` (N, P)."""
  grid_width = -(-image_hw[1] // STRIDE)
  order, coords = select(jax.lax.stop_gradient(attention), num_local, grid_width, image_hw)
  return gather(tokens, order), coords  # positions of the full sequence: the off-by-two


def saliency(layer4: jax.Array, fc_kernel: jax.Array) -> jax.Array:
  """(N, h, w, C4), FC kernel (C4, D_g) -> (N, h, w) saliency at stride 32."""
  x = jnp.maximum(l2_normalize(layer4, axis=-1), 1e-6)
  return jnp.maximum(x @ fc_kernel.astype(jnp.float32), 1e-6).sum(-1)


def cnn_tokens(layer3: jax.Array, layer4: jax.Array, fc_kernel: jax.Array, num_local: int,
               image_hw: tuple[int, int]) -> tuple[jax.Array, jax.Array]:
  """(features (N, n, C3), [x, y, attention] (N, n, 3)) of a conv5 ResNet."""
  n, h3, w3, c3 = layer3.shape
  score = saliency(jax.lax.stop_gradient(layer4.astype(jnp.float32)),
                   jax.lax.stop_gradient(fc_kernel))
  score = interpolate.resize(score, (h3, w3), "bicubic", axes=(1, 2)).reshape(n, h3 * w3)
  order, coords = select(score, num_local, -(-image_hw[1] // STRIDE), image_hw)
  return gather(layer3.reshape(n, h3 * w3, c3).astype(jnp.float32), order), coords
