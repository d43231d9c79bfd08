"""DeiT-S distilled (the original's `model/Deit.py` DistilledVisionTransformer, timm 0.5.4
blocks): the backbone that outputs the descriptor itself.

  images (N, H, W, 3) -> 16x16 patches (linear embedding) -> [cls, dist, patches] + learned
  position embedding -> depth x pre-norm blocks (LayerNorm eps 1e-6; attention with qkv
  bias; MLP ratio 4, exact GELU) -> LayerNorm -> head(cls), head_dist(dist) ->
  descriptor = L2((head(cls) + head_dist(dist)) / 2)   (docs/original.md §Backbones)

Module and parameter names follow timm's state-dict keys (`cls_token`, `pos_embed`,
`patch_embed.proj`, `blocks.3.attn.qkv`, `norm`, `head`, `head_dist`), so weights convert by
name (models.weights.timm_deit). The position embedding is made for the training image size
(`grid` patches); inputs of another size (test-time crops) use it bilinearly resized, as
the original resizes the ImageNet 14x14 grid when it loads weights.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgssl_jax.models.layers import Dense, Dtype, l2_normalize

PATCH = 16
# timm's init of transformer weights: truncated normal, std 0.02 (linear layers, tokens)
trunc_normal = nn.initializers.truncated_normal(0.02)


def resize_grid(tokens: jax.Array, old: tuple[int, int], new: tuple[int, int]) -> jax.Array:
  """(old_h * old_w, D) grid tokens -> (new_h * new_w, D): bilinear, align_corners=False, no
  antialias (torch's tensor resize of torchvision 0.13, which the original used)."""
  if tuple(old) == tuple(new):
    return tokens
  grid = tokens.reshape(*old, -1)
  for axis, (n_in, n_out) in enumerate(zip(old, new)):
    src = (jnp.arange(n_out, dtype=jnp.float32) + 0.5) * (n_in / n_out) - 0.5
    src = jnp.maximum(src, 0.0)
    lo = jnp.minimum(jnp.floor(src).astype(jnp.int32), n_in - 1)
    hi = jnp.minimum(lo + 1, n_in - 1)
    frac = (src - lo).reshape([-1 if a == axis else 1 for a in range(3)])
    grid = jnp.take(grid, lo, axis) * (1 - frac) + jnp.take(grid, hi, axis) * frac
  return grid.reshape(new[0] * new[1], -1)


class PatchProjection(nn.Module):
  """timm's `patch_embed.proj`: a 16x16 stride-16 convolution with bias, here the equal
  matrix product over each patch's pixels. (N, h*w, 16*16*C) patches -> (N, h*w, D)."""
  embed_dim: int
  channels: int = 3
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, patches: jax.Array) -> jax.Array:
    fan_in = PATCH * PATCH * self.channels
    bound = 1.0 / math.sqrt(fan_in)  # PyTorch's default Conv2d init
    kernel = self.param("kernel", nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                        (PATCH, PATCH, self.channels, self.embed_dim), jnp.float32)
    bias = self.param("bias", lambda k, s, d: jax.random.uniform(k, s, d, -bound, bound),
                      (self.embed_dim,), jnp.float32)
    kernel = kernel.reshape(fan_in, self.embed_dim).astype(self.dtype)
    return jnp.dot(patches.astype(self.dtype), kernel) + bias.astype(self.dtype)


class PatchEmbed(nn.Module):
  """(N, H, W, C) -> (N, H/16 * W/16, D), patches in row-major order (as torch's
  flatten(2).transpose(1, 2) of the convolution's output)."""
  embed_dim: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    gh, gw = h // PATCH, w // PATCH
    patches = x.reshape(n, gh, PATCH, gw, PATCH, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(n, gh * gw, PATCH * PATCH * c)
    return PatchProjection(self.embed_dim, c, self.dtype, name="proj")(patches)


def _norm(name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection (timm Attention)."""
  dim: int
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, t, _ = x.shape
    qkv = Dense(3 * self.dim, dtype=self.dtype, kernel_init=trunc_normal,
                bias_init=nn.initializers.zeros, name="qkv")(x)
    q, k, v = jnp.moveaxis(qkv.reshape(n, t, 3, self.num_heads, -1), 2, 0)
    # softmax(q k^T / sqrt(d)) v; cuDNN's flash attention on GPUs, XLA's elsewhere
    out = jax.nn.dot_product_attention(q, k, v)
    return Dense(self.dim, dtype=self.dtype, kernel_init=trunc_normal,
                 bias_init=nn.initializers.zeros, name="proj")(out.reshape(n, t, self.dim))


class Mlp(nn.Module):
  dim: int
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = dict(dtype=self.dtype, kernel_init=trunc_normal, bias_init=nn.initializers.zeros)
    x = jax.nn.gelu(Dense(self.hidden, name="fc1", **init)(x), approximate=False)
    return Dense(self.dim, name="fc2", **init)(x)


class Block(nn.Module):
  """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""
  dim: int
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = x + Attention(self.dim, self.num_heads, self.dtype, name="attn")(
        _norm("norm1")(x).astype(self.dtype))
    return x + Mlp(self.dim, int(self.dim * self.mlp_ratio), self.dtype, name="mlp")(
        _norm("norm2")(x).astype(self.dtype))


class Blocks(nn.Module):
  """timm's `blocks`: children named '0', '1', ..."""
  depth: int
  dim: int
  num_heads: int
  mlp_ratio: float
  dtype: Dtype

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.depth):
      x = Block(self.dim, self.num_heads, self.mlp_ratio, self.dtype, name=str(i))(x)
    return x


class DistilledViT(nn.Module):
  """Input: (N, H, W, 3) normalised images (H, W multiples of 16). Output: (N, num_classes)
  L2-normalised float32 descriptors. `grid`: the patch grid of the training image size,
  which the position embedding is made for."""
  grid: tuple[int, int]
  num_classes: int
  embed_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    del train  # no dropout, drop-path or batch statistics in the original's DeiT
    n, h, w, _ = images.shape
    x = PatchEmbed(self.embed_dim, self.dtype, name="patch_embed")(images)
    d = self.embed_dim
    cls = self.param("cls_token", trunc_normal, (1, 1, d), jnp.float32)
    dist = self.param("dist_token", trunc_normal, (1, 1, d), jnp.float32)
    pos = self.param("pos_embed", trunc_normal, (1, 2 + self.grid[0] * self.grid[1], d),
                     jnp.float32)
    grid_pos = resize_grid(pos[0, 2:], self.grid, (h // PATCH, w // PATCH))
    pos = jnp.concatenate([pos[0, :2], grid_pos])[None]
    x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, d)), jnp.broadcast_to(dist, (n, 1, d)),
                         x.astype(jnp.float32)], axis=1) + pos
    x = Blocks(self.depth, d, self.num_heads, self.mlp_ratio, self.dtype, name="blocks")(
        x.astype(self.dtype))
    x = _norm("norm")(x)
    head = dict(dtype=jnp.float32, kernel_init=trunc_normal, bias_init=nn.initializers.zeros)
    a = Dense(self.num_classes, name="head", **head)(x[:, 0])
    b = Dense(self.num_classes, name="head_dist", **head)(x[:, 1])
    return l2_normalize((a + b) / 2, axis=-1)
