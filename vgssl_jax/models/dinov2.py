"""DINOv2 ViT/14 backbones as facebookresearch/dinov2 builds them (its hub functions
`dinov2_vit{s,b,l,g}14[_reg]`), giving the cls token, the patch tokens as a map, and the
register tokens.

  images (N, H, W, 3), H and W multiples of 14 -> 14x14 patches (linear embedding, bias) ->
  [cls; patches] + the learned position embedding (made for img_size, 518: a 37x37 grid,
  interpolated for other grids) -> [cls; registers; patches] -> depth x blocks (pre-norm,
  LayerNorm eps 1e-6; attention with qkv bias, scale head_dim^-0.5; LayerScale `ls1`/`ls2`;
  MLP ratio 4 with exact GELU, SwiGLU for ViT-g) -> LayerNorm `norm` (a setting: SALAD and
  MegaLoc apply it, BoQ does not; its parameters exist either way) -> Features(prefix = cls, feature_map = patches on their
  (H/14, W/14) grid, registers)

Position embedding for another grid than the square training one: without registers
bicubic (torch's A = -0.75) with the scale factor (grid + 0.1) / M; with registers torch's
antialiased bicubic (A = -0.5) to the grid size (docs/vpr_models.md). `train_blocks` = N > 0:
only the last N blocks (and the final norm) learn; the rest runs without gradients (the
training step also gives those parameters no update). Names follow the official state dict
(`patch_embed.proj`, `blocks.3.ls1.gamma`, `register_tokens`, `mask_token`, ...).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgssl_jax.models import interpolate
from vgssl_jax.models.deit import Attention, Mlp, PatchEmbed, trunc_normal
from vgssl_jax.models.features import Features
from vgssl_jax.models.layers import Dense, Dtype

PATCH = 14


@dataclasses.dataclass(frozen=True)
class Size:
  embed_dim: int
  depth: int
  num_heads: int
  ffn: str = "mlp"   # "mlp" | "swiglu" (ViT-g's fused SwiGLU)


SIZES = {"vits14": Size(384, 12, 6), "vitb14": Size(768, 12, 12), "vitl14": Size(1024, 24, 16),
         "vitg14": Size(1536, 40, 24, "swiglu")}
REGISTERS = 4  # the *_reg models


def _norm(name: str | None = None) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-6, dtype=jnp.float32, param_dtype=jnp.float32, name=name)


class LayerScale(nn.Module):
  dim: int

  @nn.compact
  def __call__(self, x):
    gamma = self.param("gamma", nn.initializers.constant(1.0), (self.dim,), jnp.float32)
    return x * gamma.astype(x.dtype)


class SwiGLU(nn.Module):
  """dinov2's SwiGLUFFNFused: w12 -> silu(x1) * x2 -> w3, hidden (int(4 D 2 / 3) + 7) // 8 * 8."""
  dim: int
  hidden: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    hidden = (int(self.hidden * 2 / 3) + 7) // 8 * 8
    init = dict(dtype=self.dtype, kernel_init=trunc_normal, bias_init=nn.initializers.zeros)
    x1, x2 = jnp.split(Dense(2 * hidden, name="w12", **init)(x), 2, axis=-1)
    return Dense(self.dim, name="w3", **init)(jax.nn.silu(x1) * x2)


class DinoBlock(nn.Module):
  """x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""
  dim: int
  num_heads: int
  mlp_ratio: float = 4.0
  ffn: str = "mlp"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = Attention(self.dim, self.num_heads, self.dtype, name="attn")(
        _norm("norm1")(x).astype(self.dtype))
    x = x + LayerScale(self.dim, name="ls1")(y)
    hidden = int(self.dim * self.mlp_ratio)
    ffn = (SwiGLU(self.dim, hidden, self.dtype, name="mlp") if self.ffn == "swiglu" else
           Mlp(self.dim, hidden, self.dtype, name="mlp"))
    return x + LayerScale(self.dim, name="ls2")(ffn(_norm("norm2")(x).astype(self.dtype)))


def position_weights(m: int, grid: tuple[int, int], registers: int
                     ) -> tuple[object, object] | None:
  """Per-axis interpolation matrices from the m x m position grid to `grid`, as DINOv2's
  interpolate_pos_encoding (None: the square training grid, used as it is)."""
  h, w = grid
  if h * w == m * m and h == w:
    return None
  if registers:   # the *_reg models: antialiased bicubic to the size
    return (interpolate.antialiased_bicubic_matrix(m, h),
            interpolate.antialiased_bicubic_matrix(m, w))
  return (interpolate.bicubic_matrix(m, h, (h + 0.1) / m),
          interpolate.bicubic_matrix(m, w, (w + 0.1) / m))


class DinoBlocks(nn.Module):
  """The blocks, children named '0', '1', ... (the official `blocks.i`). With train_blocks
  N > 0 no gradient flows into the blocks before the last N."""
  depth: int
  dim: int
  num_heads: int
  mlp_ratio: float
  ffn: str
  train_blocks: int
  dtype: Dtype

  @nn.compact
  def __call__(self, x):
    for i in range(self.depth):
      if self.train_blocks and i == self.depth - self.train_blocks:
        x = jax.lax.stop_gradient(x)
      x = DinoBlock(self.dim, self.num_heads, self.mlp_ratio, self.ffn, self.dtype, name=str(i))(x)
    return x


class DinoV2(nn.Module):
  """(N, H, W, 3) normalised images -> Features (see the module docstring)."""
  embed_dim: int = 768
  depth: int = 12
  num_heads: int = 12
  ffn: str = "mlp"
  registers: int = 0
  img_size: int = 518
  final_norm: bool = True
  train_blocks: int = 0
  mlp_ratio: float = 4.0
  dtype: Dtype = jnp.float32

  @property
  def pos_grid(self) -> int:
    return self.img_size // PATCH

  @nn.compact
  def __call__(self, images: jax.Array, train: bool, tokens: bool = False) -> Features:
    del train, tokens  # no dropout or batch statistics; no local tokens for re-ranking
    n, h, w, _ = images.shape
    gh, gw = h // PATCH, w // PATCH
    d, m = self.embed_dim, self.pos_grid
    x = PatchEmbed(d, self.dtype, patch=PATCH, name="patch_embed")(images)
    cls = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, d), jnp.float32)
    pos = self.param("pos_embed", trunc_normal, (1, 1 + m * m, d), jnp.float32)
    self.param("mask_token", nn.initializers.zeros, (1, d), jnp.float32)  # unused, as DINOv2's
    weights = position_weights(m, (gh, gw), self.registers)
    patches = pos[0, 1:]
    if weights is not None:
      patches = interpolate.resize_with(patches.reshape(m, m, d), *weights).reshape(gh * gw, d)
    pos = jnp.concatenate([pos[0, :1], patches])[None]
    x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, d)), x.astype(jnp.float32)], axis=1) + pos
    if self.registers:  # after the position embedding: registers get none
      reg = self.param("register_tokens", nn.initializers.normal(1e-6), (1, self.registers, d),
                       jnp.float32)
      x = jnp.concatenate([x[:, :1], jnp.broadcast_to(reg, (n, self.registers, d)), x[:, 1:]],
                          axis=1)
    x = DinoBlocks(self.depth, d, self.num_heads, self.mlp_ratio, self.ffn, self.train_blocks,
                   self.dtype, name="blocks")(x.astype(self.dtype))
    # the norm's parameters exist either way, so that every release (BoQ's keeps the
    # unused norm) loads and exports whole; unused, XLA drops its computation
    normed = _norm("norm")(x)
    x = normed if self.final_norm else x.astype(jnp.float32)
    r = self.registers
    return Features(feature_map=x[:, 1 + r:].reshape(n, gh, gw, d).astype(jnp.float32),
                    prefix=x[:, :1].astype(jnp.float32),
                    registers=x[:, 1:1 + r].astype(jnp.float32) if r else None)


def frozen_paths(depth: int, train_blocks: int, registers: int) -> tuple[str, ...]:
  """The backbone parameters that do not learn when only the last `train_blocks` blocks do."""
  if not train_blocks:
    return ()
  tokens = ("cls_token", "pos_embed", "mask_token") + (("register_tokens",) if registers else ())
  return tokens + ("patch_embed",) + tuple(f"blocks/{i}" for i in range(depth - train_blocks))


def nearest_sizes(n: int) -> str:
  """The multiples of 14 around `n`, for messages."""
  lo = max(PATCH, n // PATCH * PATCH)
  return f"{lo} or {lo + PATCH}" if lo != n else str(n)


def parse(name: str) -> dict | None:
  """'dinov2_vitb14_reg' -> {"size": "vitb14", "registers": 4}; None for other names."""
  if not name.startswith("dinov2_"):
    return None
  rest = name[len("dinov2_"):]
  registers = REGISTERS if rest.endswith("_reg") else 0
  size = rest.removesuffix("_reg")
  return {"size": size, "registers": registers} if size in SIZES else None


VALID_NAMES = ", ".join(f"dinov2_{s}{r}" for s in SIZES for r in ("", "_reg"))
