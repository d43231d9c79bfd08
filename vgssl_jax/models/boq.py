"""Bag-of-Queries (Ali-bey et al., CVPR 2024; amaralibey/Bag-of-Queries `src/boq.py`): learned
queries attend to the feature map; their outputs, over the layers, make the descriptor.

  x = LayerNorm(flatten(conv3x3(map)))                 proj_channels D (3x3 conv, padding 1)
  per layer: x = encoder(x)                             post-norm transformer layer (ReLU, 4 D)
             q = LayerNorm(Q + self_attn(Q))            the layer's learned queries Q
             out = LayerNorm(cross_attn(q, x, x))       its attention map: averaged over heads
  descriptor = L2(flatten(fc over the L x Q axis of [out_1; ...; out_L]))   (D, row_dim) order

Heads = D // 64, as the original. The attention maps are sown as "intermediates"/"attention"
(one (N, Q, h w) array per layer). Names follow the original's state dict (`proj_c`,
`norm_input`, `boqs.0.encoder.self_attn.in_proj_weight`, `boqs.0.queries`, `fc`, ...).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgssl_jax.models.features import Features
from vgssl_jax.models.layers import Dense, l2_normalize


def _ln(name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


class MultiheadAttention(nn.Module):
  """torch.nn.MultiheadAttention (batch first, no dropout): `in_proj_weight` (3D, D) holds
  the q, k, v projections in PyTorch's layout, `out_proj` the output. Returns (output,
  attention weights averaged over heads (N, Tq, Tk))."""
  dim: int
  num_heads: int

  @nn.compact
  def __call__(self, q: jax.Array, k: jax.Array, v: jax.Array):
    d, h = self.dim, self.num_heads
    bound = math.sqrt(6.0 / (d + 3 * d))  # xavier_uniform of the (3D, D) matrix
    w = self.param("in_proj_weight", lambda key, s, t: jax.random.uniform(key, s, t, -bound, bound),
                   (3 * d, d), jnp.float32)
    b = self.param("in_proj_bias", nn.initializers.zeros, (3 * d,), jnp.float32)
    hi = jax.lax.Precision.HIGHEST
    split = lambda x, i: (jnp.dot(x, w[i * d:(i + 1) * d].T, precision=hi)  # noqa: E731
                          + b[i * d:(i + 1) * d]).reshape(*x.shape[:2], h, d // h)
    qh, kh, vh = split(q, 0), split(k, 1), split(v, 2)
    logits = jnp.einsum("nthd,nshd->nhts", qh / math.sqrt(d // h), kh, precision=hi)
    weights = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum("nhts,nshd->nthd", weights, vh, precision=hi).reshape(*q.shape[:2], d)
    return Dense(d, name="out_proj", bias_init=nn.initializers.zeros)(out), weights.mean(axis=1)


class EncoderLayer(nn.Module):
  """torch.nn.TransformerEncoderLayer(d, heads, 4 d, dropout=0, batch_first=True): post-norm,
  ReLU: x = norm1(x + attn(x)); x = norm2(x + linear2(relu(linear1(x))))."""
  dim: int
  num_heads: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = _ln("norm1")(x + MultiheadAttention(self.dim, self.num_heads, name="self_attn")(x, x, x)[0])
    y = Dense(self.dim, name="linear2")(jax.nn.relu(Dense(4 * self.dim, name="linear1")(x)))
    return _ln("norm2")(x + y)


class BoQBlock(nn.Module):
  dim: int
  num_queries: int
  num_heads: int

  @nn.compact
  def __call__(self, x: jax.Array):
    x = EncoderLayer(self.dim, self.num_heads, name="encoder")(x)
    queries = self.param("queries", nn.initializers.normal(1.0), (1, self.num_queries, self.dim),
                         jnp.float32)
    q = jnp.broadcast_to(queries, (x.shape[0], *queries.shape[1:]))
    q = _ln("norm_q")(q + MultiheadAttention(self.dim, self.num_heads, name="self_attn")(q, q, q)[0])
    out, attn = MultiheadAttention(self.dim, self.num_heads, name="cross_attn")(q, x, x)
    return x, _ln("norm_out")(out), jax.lax.stop_gradient(attn)


class _Blocks(nn.Module):
  """The layers, children named '0', '1', ... (the original's `boqs.i`); each layer's
  attention map sown as "intermediates"/"attention"."""
  dim: int
  num_queries: int
  num_layers: int

  @nn.compact
  def __call__(self, x: jax.Array) -> list[jax.Array]:
    outs = []
    for i in range(self.num_layers):
      x, out, attn = BoQBlock(self.dim, self.num_queries, self.dim // 64, name=str(i))(x)
      outs.append(out)
      self.sow("intermediates", "attention", attn)
    return outs


class BoQ(nn.Module):
  """Features with a (N, h, w, C) map -> (N, proj_channels * row_dim) descriptor."""
  proj_channels: int = 512
  num_queries: int = 64
  num_layers: int = 2
  row_dim: int = 32

  @nn.compact
  def __call__(self, features: Features, train: bool = False) -> jax.Array:
    del train
    x = nn.Conv(self.proj_channels, (3, 3), padding=((1, 1), (1, 1)), dtype=jnp.float32,
                name="proj_c")(features.feature_map.astype(jnp.float32))
    n = x.shape[0]
    x = _ln("norm_input")(x.reshape(n, -1, self.proj_channels))
    outs = _Blocks(self.proj_channels, self.num_queries, self.num_layers, name="boqs")(x)
    out = jnp.concatenate(outs, axis=1)                              # (N, L Q, D)
    out = Dense(self.row_dim, name="fc")(jnp.swapaxes(out, 1, 2))    # (N, D, row_dim)
    return l2_normalize(out.reshape(n, -1))


def check(proj_channels: int) -> None:
  heads = proj_channels // 64
  if heads < 1 or proj_channels % heads:
    raise ValueError(f"model.boq.proj_channels={proj_channels}: BoQ's attention has "
                     "proj_channels // 64 heads, which must divide it (e.g. 384, 512)")
