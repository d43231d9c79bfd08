"""RRM, the Residual Retrieval Module of the benchmark's `model/aggregation.py` (`rrm`):
global average -> LayerNorm -> h + fc2(relu(fc1(h))) -> LayerNorm -> L2, all C wide."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgssl_jax.models.features import Features
from vgssl_jax.models.layers import Dense, fc_then_l2, l2_normalize


class RRM(nn.Module):
  fc_output_dim: int = 0

  @nn.compact
  def __call__(self, features: Features, train: bool = False) -> jax.Array:
    del train
    x = jnp.mean(features.feature_map.astype(jnp.float32), axis=(1, 2))
    c = x.shape[-1]
    ln = lambda name: nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, name=name)
    h = ln("ln1")(x)
    h = h + Dense(c, name="fc2")(jax.nn.relu(Dense(c, name="fc1")(h)))
    return fc_then_l2(l2_normalize(ln("ln2")(h)), self.fc_output_dim)
