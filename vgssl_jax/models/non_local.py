"""The original's non-local blocks (`--non_local`, `model/non_local.py`) between the backbone's
map and the aggregation.

One block: q, k, v = 1x1 convolutions (with bias) to `inner` channels; attention = softmax
over the keys of q^T k (**no 1/sqrt(d) scaling**); out = merge_conv(v A^T) + x (gamma 1).
`--num_non_local n` builds `[NonLocalBlock(...)] * n`, a list that repeats ONE module: the n
blocks share their weights (the state dict lists `non_local.0.*`, `non_local.1.*` with equal
values). That is reproduced: one block, applied n times (docs/original.md).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgssl_jax.models.layers import Conv, Dtype


class NonLocalBlock(nn.Module):
  inner: int = 128
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(N, H, W, C) -> (the same shape, attention (N, HW, HW) float32)."""
    n, h, w, c = x.shape
    conv = lambda name, out: Conv(out, 1, dtype=self.dtype, use_bias=True, name=name)
    flat = lambda y: y.reshape(n, h * w, -1).astype(jnp.float32)
    q, k, v = (flat(conv(name, self.inner)(x)) for name in ("q_conv", "k_conv", "v_conv"))
    att = jax.nn.softmax(jnp.einsum("nic,njc->nij", q, k), axis=-1)
    out = jnp.einsum("nij,njc->nic", att, v).reshape(n, h, w, self.inner)
    return conv("merge_conv", c)(out.astype(self.dtype)) + x, att
