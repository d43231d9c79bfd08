"""ViT-B/16 as the original takes it from Hugging Face's `ViTModel` (`vit`):
google/vit-base-patch16-224-in21k at 224x224 or google/vit-base-patch16-384 at 384x384.

  images (N, S, S, 3) -> 16x16 patches (conv with bias) -> [CLS, patches] + position
  embeddings (one per token of an S x S image) -> blocks: h = x + attn(layernorm_before(x));
  x = h + output(gelu(intermediate(layernorm_after(h)))) -> layernorm

LayerNorm eps 1e-12, separate query / key / value projections with bias, scale 1/sqrt(head
dim), exact GELU. The original's descriptor is `last_hidden_state[:, 0]`: the CLS token after
the final layernorm, not the pooler, not L2-normalised, and no aggregation or FC is applied
(models.backbones: the family gives only that token). `trunc_te` keeps the first blocks.
Names follow HF's (`embeddings.patch_embeddings.projection`, `encoder.layer.3.attention.
attention.query`, `layernorm`), so `pytorch_model.bin` / `model.safetensors` load by name.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgssl_jax.models.deit import PatchEmbed, attention, gelu, trunc_normal
from vgssl_jax.models.features import Features
from vgssl_jax.models.layers import Dense, Dtype, Numbered

PATCH = 16
SIZES = (224, 384)  # the two checkpoints the original loads


def _norm(name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-12, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


def _dense(features: int, name: str, dtype) -> Dense:
  return Dense(features, dtype=dtype, kernel_init=trunc_normal,
               bias_init=nn.initializers.zeros, name=name)


class Embeddings(nn.Module):
  dim: int
  tokens: int  # patches + 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = PatchEmbed(self.dim, self.dtype, PATCH, "projection", name="patch_embeddings")(images)
    cls = self.param("cls_token", trunc_normal, (1, 1, self.dim), jnp.float32)
    pos = self.param("position_embeddings", trunc_normal, (1, self.tokens, self.dim),
                     jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.dim)).astype(x.dtype), x], 1)
    return x + pos.astype(x.dtype)


class _SelfAttention(nn.Module):
  """attention.attention: query, key, value."""
  dim: int
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, t, _ = x.shape
    split = lambda y: y.reshape(n, t, self.num_heads, -1)
    q, k, v = (split(_dense(self.dim, name, self.dtype)(x)) for name in ("query", "key", "value"))
    return attention(q, k, v).reshape(n, t, self.dim)


class _Output(nn.Module):
  """A HF sub-block holding one `dense` (attention.output, intermediate, output)."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return _dense(self.features, "dense", self.dtype)(x)


class _Attention(nn.Module):
  dim: int
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out = _SelfAttention(self.dim, self.num_heads, self.dtype, name="attention")(x)
    return _Output(self.dim, self.dtype, name="output")(out)


class Layer(nn.Module):
  dim: int
  num_heads: int
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + _Attention(self.dim, self.num_heads, self.dtype, name="attention")(
        _norm("layernorm_before")(x).astype(self.dtype))
    h = gelu(_Output(self.hidden, self.dtype, name="intermediate")(
        _norm("layernorm_after")(x).astype(self.dtype)))
    return x + _Output(self.dim, self.dtype, name="output")(h)


class _Encoder(nn.Module):
  depth: int
  dim: int
  num_heads: int
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return Numbered(lambda i, name: Layer(self.dim, self.num_heads, self.hidden, self.dtype,
                                          name=name), self.depth, name="layer")(x)


class HFViT(nn.Module):
  """See the module docstring. depth = the blocks kept (after trunc_te)."""
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: float = 4.0
  img_size: int = 224
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False, tokens: bool = False) -> Features:
    del train, tokens
    side = self.img_size // PATCH
    if images.shape[1:3] != (self.img_size, self.img_size):
      raise ValueError(f"ViT's position embeddings are made for {self.img_size}x{self.img_size} "
                       f"images; these are {images.shape[1]}x{images.shape[2]}")
    x = Embeddings(self.embed_dim, side * side + 1, self.dtype, name="embeddings")(images)
    x = _Encoder(self.depth, self.embed_dim, self.num_heads,
                 int(self.embed_dim * self.mlp_ratio), self.dtype, name="encoder")(x)
    x = _norm("layernorm")(x)
    return Features(prefix=x[:, :1])
