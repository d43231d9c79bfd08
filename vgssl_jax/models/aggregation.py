"""Aggregation F_g of VG-SSL: L2 (per location) -> GeM -> FC -> L2."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgssl_jax.models.layers import Dense, l2_normalize


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


class Aggregation(nn.Module):
  """(N, H, W, C) feature map -> (N, fc_output_dim) L2-normalised descriptor.

  Always computed in float32, whatever the backbone's dtype: descriptors of different places
  can differ in the third decimal (an untrained network's have cosines of 0.997), which
  bfloat16's 8-bit mantissa would erase; the FC is a negligible share of the work.
  """
  fc_output_dim: int = 1024

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = l2_normalize(x, axis=-1)      # L2 over channels at every location ("before_pool")
    x = GeM(name="gem")(x)
    x = Dense(self.fc_output_dim, dtype=jnp.float32, name="fc")(x)
    return l2_normalize(x, axis=-1)
