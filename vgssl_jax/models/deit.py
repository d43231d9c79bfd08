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
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgssl_jax.models import interpolate
from vgssl_jax.models.features import Features
from vgssl_jax.models.layers import Dense, Dtype, l2_normalize

PATCH = 16
# the aggregation of its two heads (models.aggregations), the family's default
AGGREGATION = "dist_heads"
# timm's init of transformer weights: truncated normal, std 0.02 (linear layers, tokens)
trunc_normal = nn.initializers.truncated_normal(0.02)


def resize_grid(tokens: jax.Array, old: tuple[int, int], new: tuple[int, int]) -> jax.Array:
  """(old_h * old_w, D) grid tokens -> (new_h * new_w, D): bilinear, align_corners=False, no
  antialias (torch's tensor resize of torchvision 0.13, which the original used)."""
  if tuple(old) == tuple(new):
    return tokens
  grid = interpolate.resize(tokens.reshape(*old, -1), tuple(new), "bilinear")
  return grid.reshape(new[0] * new[1], -1)


class PatchProjection(nn.Module):
  """timm's `patch_embed.proj`: a p x p stride-p convolution with bias, here the equal
  matrix product over each patch's pixels. (N, h*w, p*p*C) patches -> (N, h*w, D)."""
  embed_dim: int
  channels: int = 3
  dtype: Dtype = jnp.float32
  patch: int = PATCH

  @nn.compact
  def __call__(self, patches: jax.Array) -> jax.Array:
    p = self.patch
    fan_in = p * p * self.channels
    bound = 1.0 / math.sqrt(fan_in)  # PyTorch's default Conv2d init
    kernel = self.param("kernel", nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                        (p, p, self.channels, self.embed_dim), jnp.float32)
    bias = self.param("bias", lambda k, s, d: jax.random.uniform(k, s, d, -bound, bound),
                      (self.embed_dim,), jnp.float32)
    kernel = kernel.reshape(fan_in, self.embed_dim).astype(self.dtype)
    return jnp.dot(patches.astype(self.dtype), kernel) + bias.astype(self.dtype)


class PatchEmbed(nn.Module):
  """(N, H, W, C) -> (N, H/p * W/p, D), patches in row-major order (as torch's
  flatten(2).transpose(1, 2) of the convolution's output). `proj_name`: the convolution's
  name (timm's "proj"; Hugging Face's "projection")."""
  embed_dim: int
  dtype: Dtype = jnp.float32
  patch: int = PATCH
  proj_name: str = "proj"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    p = self.patch
    gh, gw = h // p, w // p
    patches = x[:, :gh * p, :gw * p].reshape(n, gh, p, gw, p, c).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(n, gh * gw, p * p * c)
    return PatchProjection(self.embed_dim, c, self.dtype, self.patch,
                           name=self.proj_name)(patches)


def _norm(name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


# From this many tokens on, CPUs get the attention as two einsums around a softmax: XLA:CPU's
# lowering of jax.nn.dot_product_attention is 2.8x (DeiT at 480x640, 1202 tokens) to 5x
# (R2Former, 1001 tokens of head size 8) slower forward, and no faster backward
# (benchmarks/README.md, "attention on CPU"). Short sequences keep it: there it is faster.
EINSUM_ATTENTION_TOKENS = 128


def attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """softmax(q k^T / sqrt(d)) v of (N, Tq, heads, d) queries and (N, T, heads, d) keys and
  values: cuDNN's flash attention on GPUs (jax.nn.dot_product_attention), einsums on CPUs
  for long sequences."""
  if jax.default_backend() == "cpu" and k.shape[1] >= EINSUM_ATTENTION_TOKENS:
    # q scaled before the product: scaling the (T, T) logits after it made XLA materialise
    # a broadcast of the scale as large as the logits (R2Former pairs: 15 % slower)
    logits = jnp.einsum("nthd,nshd->nhts", q * (1.0 / math.sqrt(q.shape[-1])), k)
    return jnp.einsum("nhts,nshd->nthd", jax.nn.softmax(logits, axis=-1), v)
  return jax.nn.dot_product_attention(q, k, v)


class Attention(nn.Module):
  """Multi-head self-attention with a fused qkv projection (timm Attention)."""
  dim: int
  num_heads: int
  dtype: Dtype = jnp.float32
  kernel_init: Any = trunc_normal

  def setup(self):
    init = dict(dtype=self.dtype, kernel_init=self.kernel_init, bias_init=nn.initializers.zeros)
    self.qkv = Dense(3 * self.dim, **init)
    self.proj = Dense(self.dim, **init)

  def _qkv(self, x: jax.Array):
    n, t, _ = x.shape
    return jnp.moveaxis(self.qkv(x).reshape(n, t, 3, self.num_heads, -1), 2, 0)

  def __call__(self, x: jax.Array, queries: int | None = None) -> jax.Array:
    """(N, T, D) -> (N, T, D), or only the first `queries` tokens' outputs (N, queries, D)."""
    q, k, v = self._qkv(x)
    out = attention(q[:, :queries], k, v)
    return self.proj(out.reshape(*out.shape[:2], self.dim))

  def probabilities(self, x: jax.Array, queries: int | None = None) -> jax.Array:
    """(N, heads, T, T) float32 softmax attention of `x` (what stage 2 scores tokens by), or
    that of the first `queries` tokens only (N, heads, queries, T)."""
    q, k, _ = self._qkv(x)
    q = q[:, :queries]
    logits = jnp.einsum("nthd,nshd->nhts", q.astype(jnp.float32), k.astype(jnp.float32))
    return jax.nn.softmax(logits / math.sqrt(q.shape[-1]), axis=-1)


def gelu(x: jax.Array) -> jax.Array:
  """Exact GELU as PyTorch writes it, x (1 + erf(x / sqrt 2)) / 2: the same function as
  jax.nn.gelu(approximate=False), whose erfc form is 3x slower on XLA:CPU."""
  return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


class Mlp(nn.Module):
  dim: int
  hidden: int
  dtype: Dtype = jnp.float32
  kernel_init: Any = trunc_normal

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    init = dict(dtype=self.dtype, kernel_init=self.kernel_init, bias_init=nn.initializers.zeros)
    x = gelu(Dense(self.hidden, name="fc1", **init)(x))
    return Dense(self.dim, name="fc2", **init)(x)


class Block(nn.Module):
  """Pre-norm transformer block (timm's Block): x + attn(norm1(x)), then x + mlp(norm2(x))."""
  dim: int
  num_heads: int
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  kernel_init: Any = trunc_normal

  def setup(self):
    self.norm1 = _norm()
    self.attn = Attention(self.dim, self.num_heads, self.dtype, self.kernel_init)
    self.norm2 = _norm()
    self.mlp = Mlp(self.dim, int(self.dim * self.mlp_ratio), self.dtype, self.kernel_init)

  def __call__(self, x: jax.Array, keep: int | None = None) -> jax.Array:
    """(N, T, D) -> (N, T, D); with `keep`, the outputs of the first `keep` tokens only
    (every token is still attended to)."""
    x = x[:, :keep] + self.attn(self.norm1(x).astype(self.dtype), queries=keep)
    return x + self.mlp(self.norm2(x).astype(self.dtype))

  def attention(self, x: jax.Array, queries: int | None = None) -> jax.Array:
    """The softmax attention this block computes on input `x` (N, heads, T, T), or of its
    first `queries` tokens (N, heads, queries, T)."""
    return self.attn.probabilities(self.norm1(x).astype(self.dtype), queries)


class Blocks(nn.Module):
  """timm's `blocks`: children named '0', '1', ... With last_attention, also the tokens
  entering the last block and that block's attention (of the first `keep` queries).

  `keep`: only the first `keep` tokens' outputs are wanted (the class tokens a head reads):
  the last block computes attention and MLP for those rows only, the same numbers for them
  at a fraction of the cost (the R2Former's last block: 1 of 1001 query rows)."""
  depth: int
  dim: int
  num_heads: int
  mlp_ratio: float
  dtype: Dtype
  kernel_init: Any = trunc_normal

  @nn.compact
  def __call__(self, x: jax.Array, last_attention: bool = False, keep: int | None = None):
    entering = attention = None
    for i in range(self.depth):
      block = Block(self.dim, self.num_heads, self.mlp_ratio, self.dtype, self.kernel_init,
                    name=str(i))
      last = i == self.depth - 1
      if last_attention and last:
        entering, attention = x, block.attention(x, keep)
      x = block(x, keep if last else None)
    return (x, entering, attention) if last_attention else x


def crop_grid(grid: jax.Array, h: int, w: int) -> jax.Array:
  """The position grid (gh, gw, D) for an h x w patch grid, by GeoLocalizationNetRerank's
  rule: a centred new x new square (new = max(h, w)) cut from the grid when it is large
  enough, else pos_resize to new x new; then its middle w columns (h >= w) or h rows."""
  gh, gw = grid.shape[:2]
  new = max(h, w)
  if gh >= new and gw >= new:
    top, left = gh // 2 - new // 2, gw // 2 - new // 2
    square = grid[top:top + new, left:left + new]
  else:
    square = interpolate.pos_resize(grid, (new, new))
  if h >= w:
    return square[:, new // 2 - w // 2:new // 2 - w // 2 + w]
  return square[new // 2 - h // 2:new // 2 - h // 2 + h]


class DistilledViT(nn.Module):
  """Input: (N, H, W, 3) normalised images (H, W multiples of 16). Output: Features with
  `prefix` (N, 2, D): the cls and dist tokens after the final LayerNorm, float32. `grid`:
  the patch grid of the training image size, which the position embedding is made for.
  Other input sizes use it resized bilinearly (`other_sizes`="resize") or cut /
  pos_resized as the original's re-ranking network does ("crop").

  With tokens=True the Features also hold, in `local`, "tokens": the tokens entering the
  last block (N, 2 + P, D), and "attention": the last block's softmax attention of the cls
  and dist queries to the P patch keys, summed over heads and over the two queries (N, P):
  stage 2's local tokens.
  """
  grid: tuple[int, int]
  embed_dim: int = 384
  depth: int = 12
  num_heads: int = 6
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32
  other_sizes: str = "resize"

  @nn.compact
  def __call__(self, images: jax.Array, train: bool, tokens: bool = False) -> Features:
    del train  # no dropout, drop-path or batch statistics in the original's DeiT
    n, h, w, _ = images.shape
    x = PatchEmbed(self.embed_dim, self.dtype, name="patch_embed")(images)
    d = self.embed_dim
    cls = self.param("cls_token", trunc_normal, (1, 1, d), jnp.float32)
    dist = self.param("dist_token", trunc_normal, (1, 1, d), jnp.float32)
    pos = self.param("pos_embed", trunc_normal, (1, 2 + self.grid[0] * self.grid[1], d),
                     jnp.float32)
    gh, gw = h // PATCH, w // PATCH
    if (gh, gw) != tuple(self.grid):
      if self.other_sizes == "crop":
        patches = crop_grid(pos[0, 2:].reshape(*self.grid, d), gh, gw).reshape(gh * gw, d)
      else:
        patches = resize_grid(pos[0, 2:], self.grid, (gh, gw))
      pos = jnp.concatenate([pos[0, :2], patches])[None]
    x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, d)), jnp.broadcast_to(dist, (n, 1, d)),
                         x.astype(jnp.float32)], axis=1) + pos
    # only the cls and dist tokens' outputs are read (the heads; stage 2 takes the tokens
    # entering the last block and the attention of the cls and dist queries)
    out = Blocks(self.depth, d, self.num_heads, self.mlp_ratio, self.dtype, name="blocks")(
        x.astype(self.dtype), last_attention=tokens, keep=2)
    x = out[0] if tokens else out
    prefix = _norm("norm")(x)[:, :2].astype(jnp.float32)
    if not tokens:
      return Features(prefix=prefix)
    _, entering, attention = out
    return Features(prefix=prefix, local={
        "tokens": entering.astype(jnp.float32),
        "attention": attention[:, :, :2, 2:].sum(axis=(1, 2))})


class DistilledHeads(nn.Module):
  """DeiT's two heads as the aggregation of its prefix tokens: (N, 2, D) cls and dist ->
  L2((head(cls) + head_dist(dist)) / 2), (N, num_classes) float32."""
  num_classes: int

  @nn.compact
  def __call__(self, features: Features, train: bool = False) -> jax.Array:
    del train
    x = features.prefix
    head = dict(dtype=jnp.float32, kernel_init=trunc_normal, bias_init=nn.initializers.zeros)
    a = Dense(self.num_classes, name="head", **head)(x[:, 0])
    b = Dense(self.num_classes, name="head_dist", **head)(x[:, 1])
    return l2_normalize((a + b) / 2, axis=-1)
