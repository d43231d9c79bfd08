"""CCT-14/7x2-384 as the original builds it (`cct384`: Compact Convolutional Transformer,
its `model/cct` code): a convolutional tokenizer, a learnable position embedding of fixed
length, post-attention-normalising blocks, the final norm; no class token.

  images (N, S, S, 3) -> 2 x [conv 7x7 stride 2 pad 3 **without bias** -> ReLU -> max-pool
  3x3 stride 2 pad 1] (64 channels between) -> (S/16)^2 tokens, row-major -> + positional_emb
  -> blocks: x = x + proj(attn(pre_norm(x))); **x = norm1(x)** (the residual stream itself is
  normalised); x = x + linear2(gelu(linear1(x))) -> norm

qkv has no bias, the scale is head_dim^-0.5, GELU exact, every LayerNorm eps 1e-5. The
position embedding has one row per token of an S x S image, so inputs must be exactly S x S
(the original crashes otherwise; here a size check says so first). `trunc_te` keeps the first
blocks only (the original's --trunc_te). Names follow the CCT release and the original's
state-dict keys (`tokenizer.conv_layers.0.0`, `classifier.positional_emb`,
`classifier.blocks.3.self_attn.qkv`, `classifier.norm`), so weights convert by name.

The output: Features with the token sequence on its grid (feature_map, marked as a sequence:
the original hands CCT's tokens to the aggregation as (N, tokens, D)), and its first token as
`prefix`: the original's `cls` aggregation on CCT returns x[:, 0], which is the first PATCH
token (CCT with sequence pooling has no class token).
"""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp

from vgssl_jax.models.deit import attention, gelu, trunc_normal
from vgssl_jax.models.features import Features
from vgssl_jax.models.layers import Conv, Dense, Dtype, Numbered

STRIDE = 16  # two (conv stride 2, pool stride 2) stages


def _norm(name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-5, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


def grid(img_size: int) -> int:
  """Tokens per side of an img_size x img_size image (ceil at every stride-2 layer)."""
  s = img_size
  for _ in range(4):
    s = (s - 1) // 2 + 1
  return s


class _ConvLayer(nn.Module):
  """conv_layers.<i>: a Sequential whose convolution is child "0"."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = jax.nn.relu(Conv(self.features, 7, 2, 3, self.dtype, name="0")(x))
    return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))


class Tokenizer(nn.Module):
  """(N, S, S, 3) -> (N, S/16, S/16, D) token grid."""
  embed_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    widths = (64, self.embed_dim)
    return Numbered(lambda i, name: _ConvLayer(widths[i], self.dtype, name=name), len(widths),
                    name="conv_layers")(x)


class SelfAttention(nn.Module):
  """CCT's Attention: qkv without bias, proj with bias, scale head_dim^-0.5."""
  dim: int
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, t, _ = x.shape
    init = dict(dtype=self.dtype, kernel_init=trunc_normal)
    qkv = Dense(3 * self.dim, use_bias=False, name="qkv", **init)(x)
    q, k, v = jnp.moveaxis(qkv.reshape(n, t, 3, self.num_heads, -1), 2, 0)
    out = attention(q, k, v).reshape(n, t, self.dim)
    return Dense(self.dim, name="proj", bias_init=nn.initializers.zeros, **init)(out)


class EncoderBlock(nn.Module):
  """CCT's TransformerEncoderLayer (dropouts and drop-path are 0 in the original's use)."""
  dim: int
  num_heads: int
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = dict(dtype=self.dtype, kernel_init=trunc_normal, bias_init=nn.initializers.zeros)
    x = x + SelfAttention(self.dim, self.num_heads, self.dtype, name="self_attn")(
        _norm("pre_norm")(x).astype(self.dtype))
    x = _norm("norm1")(x).astype(self.dtype)
    h = gelu(Dense(self.hidden, name="linear1", **init)(x))
    return x + Dense(self.dim, name="linear2", **init)(h)


class Classifier(nn.Module):
  """CCT's TransformerClassifier without its head: + positional_emb, blocks, norm."""
  depth: int
  dim: int
  num_heads: int
  hidden: int
  tokens: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pos = self.param("positional_emb", trunc_normal, (1, self.tokens, self.dim), jnp.float32)
    x = x + pos.astype(x.dtype)
    x = Numbered(lambda i, name: EncoderBlock(self.dim, self.num_heads, self.hidden, self.dtype,
                                              name=name), self.depth, name="blocks")(x)
    return _norm("norm")(x)


class CCT(nn.Module):
  """See the module docstring. depth = the blocks kept (after trunc_te)."""
  embed_dim: int = 384
  depth: int = 14
  num_heads: int = 6
  mlp_ratio: float = 3.0
  img_size: int = 384
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False, tokens: bool = False) -> Features:
    del train, tokens
    x = Tokenizer(self.embed_dim, self.dtype, name="tokenizer")(images)
    n, gh, gw, d = x.shape
    side = grid(self.img_size)
    if (gh, gw) != (side, side):
      raise ValueError(f"CCT's position embedding is made for {self.img_size}x{self.img_size} "
                       f"images ({side}x{side} tokens); these give {gh}x{gw}")
    x = Classifier(self.depth, d, self.num_heads, int(d * self.mlp_ratio), side * side,
                   self.dtype, name="classifier")(x.reshape(n, gh * gw, d))
    return Features(feature_map=x.reshape(n, gh, gw, d), prefix=x[:, :1])
