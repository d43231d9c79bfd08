"""R2Former, the re-ranking transformer of stage 2 (the original's `model/r2former.py`),
scoring (query, candidate) pairs from their global descriptors and local tokens.

A local token is [x, y, attention, feature] (models.local_tokens). For one pair:

  correlation C = L2(f_q) L2(f_c)^T                            (Nq x Nc)
  each query token's 5 best candidate tokens and each candidate token's 5 best query
  tokens -> Nq + Nc groups of 5 correspondences [c_q(i) (3), c_c(j) (3), C_ij] (7)
  pair_head (7 -> 32) + sin-cos(candidate x, y)  -> per group: [cls_token_2; 5] through
  blocks_2 (2 blocks), decoder_norm, its cls -> pair_head_2 + sin-cos(query x, y)
  -> [cls_token; Nq + Nc groups] through blocks (6), decoder_norm -> decoder_pred (2 logits)
  final_score = clamp(ratio, .1, .9) cos(g_q, g_c) + (1 - clamp(ratio)) softmax(logits)[1]

Everything is batched over pairs (leading axis) and written as array ops (top_k, gathers),
so a jit compiles one program per batch shape. Names follow the original's state-dict keys
(`blocks.0.attn.qkv`, `pair_head`, `cls_token_2`, ...). `decoder_pos_embed` is allocated
but unused, as in the original (docs/original.md, quirk 37); `final_score` is returned but
ranking uses softmax(logits)[1].
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgssl_jax.models.deit import Blocks, _norm, trunc_normal
from vgssl_jax.models.layers import Dense, l2_normalize

NUM_CORR = 5
xavier = nn.initializers.xavier_uniform()


def sincos_1d(dim: int, positions: jax.Array) -> jax.Array:
  """(..., ) positions -> (..., dim): [sin(p w_k), cos(p w_k)], w_k = 10000^(-k / (dim/2))."""
  omega = 1.0 / 10000 ** (jnp.arange(dim // 2, dtype=jnp.float32) / (dim / 2.0))
  angles = positions[..., None].astype(jnp.float32) * omega
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


def sincos_2d(dim: int, xy: jax.Array) -> jax.Array:
  """(..., 2) coordinates -> (..., dim): half the dims from each coordinate."""
  return jnp.concatenate([sincos_1d(dim // 2, xy[..., 0]), sincos_1d(dim // 2, xy[..., 1])],
                         axis=-1)


def correspondences(x_local: jax.Array, y_local: jax.Array, k: int = NUM_CORR) -> jax.Array:
  """(B, Nq, 3 + d), (B, Nc, 3 + d) -> (B, Nq + Nc, k, 7): for each query token its k best
  candidate tokens, then for each candidate token its k best query tokens, each as
  [c_q(i), c_c(j), C_ij] with c the clamped (x, y, attention), C the cosine correlation."""
  cq = jnp.clip(jax.lax.stop_gradient(x_local[..., :3]), 0.0, 1.0)
  cc = jnp.clip(jax.lax.stop_gradient(y_local[..., :3]), 0.0, 1.0)
  fq, fc = l2_normalize(x_local[..., 3:]), l2_normalize(y_local[..., 3:])
  corr = jnp.einsum("bid,bjd->bij", fq, fc)
  take = jax.vmap(lambda c, i: c[i])  # per pair: rows of c at indices i (any shape)
  v_q, j_q = jax.lax.top_k(corr, k)                          # (B, Nq, k): best j per i
  sel_q = jnp.concatenate([
      jnp.broadcast_to(cq[:, :, None], (*j_q.shape, 3)), take(cc, j_q), v_q[..., None]], -1)
  v_c, i_c = jax.lax.top_k(jnp.swapaxes(corr, 1, 2), k)     # (B, Nc, k): best i per j
  sel_c = jnp.concatenate([
      take(cq, i_c), jnp.broadcast_to(cc[:, :, None], (*i_c.shape, 3)), v_c[..., None]], -1)
  return jnp.concatenate([sel_q, sel_c], axis=1)


class R2Former(nn.Module):
  """(x_global (B, D_g), x_local (B, Nq, 3 + d), y_global, y_local (B, Nc, 3 + d)) ->
  (logits (B, 2), final_score (B,)). `num_local` only sizes the unused decoder_pos_embed."""
  num_local: int = 500
  dim: int = 32
  depth: int = 6
  corr_depth: int = 2
  num_heads: int = 4
  mlp_ratio: float = 4.0

  def setup(self):
    d = self.dim
    self.cls_token = self.param("cls_token", trunc_normal, (1, 1, d), jnp.float32)
    self.cls_token_2 = self.param("cls_token_2", trunc_normal, (1, 1, d), jnp.float32)

    def pos_init(key, shape, dtype):  # row 0 zero, the rest N(0, 0.01): never read
      return jnp.concatenate([jnp.zeros((1, 1, shape[2]), dtype),
                              0.01 * jax.random.normal(key, (1, shape[1] - 1, shape[2]), dtype)],
                             axis=1)
    self.decoder_pos_embed = self.param("decoder_pos_embed", pos_init,
                                        (1, 2 * self.num_local + 1, d), jnp.float32)
    self.ratio = self.param("ratio", lambda k, s, t: jnp.full(s, 0.5, t), (1,), jnp.float32)
    self.blocks = Blocks(self.depth, d, self.num_heads, self.mlp_ratio, jnp.float32, xavier)
    self.blocks_2 = Blocks(self.corr_depth, d, self.num_heads, self.mlp_ratio, jnp.float32,
                           xavier)
    self.decoder_norm = _norm()
    init = dict(kernel_init=xavier, bias_init=nn.initializers.zeros)
    self.pair_head = Dense(d, **init)
    self.pair_head_2 = Dense(d, **init)
    self.decoder_pred = Dense(2, **init)

  def logits(self, x_local: jax.Array, y_local: jax.Array) -> jax.Array:
    """The 2-way logits of B pairs (index 1: same place)."""
    sel = correspondences(x_local, y_local)                   # (B, G, 5, 7)
    b, g, k, _ = sel.shape
    d = self.dim
    h = self.pair_head(sel) + sincos_2d(d, sel[..., 3:5])
    h = h.reshape(b * g, k, d)
    h = jnp.concatenate([jnp.broadcast_to(self.cls_token_2, (b * g, 1, d)), h], axis=1)
    h = self.decoder_norm(self.blocks_2(h, keep=1)[:, 0]).reshape(b, g, d)
    h = self.pair_head_2(h) + sincos_2d(d, sel[:, :, 0, 0:2])
    h = jnp.concatenate([jnp.broadcast_to(self.cls_token, (b, 1, d)), h], axis=1)
    return self.decoder_pred(self.decoder_norm(self.blocks(h, keep=1)[:, 0]))

  def __call__(self, x_global, x_local, y_global, y_local):
    logits = self.logits(x_local, y_local)
    global_score = jax.lax.stop_gradient(jnp.sum(
        l2_normalize(x_global) * l2_normalize(y_global), axis=-1))
    r = jnp.clip(self.ratio[0], 0.1, 0.9)
    local_score = jax.lax.stop_gradient(jax.nn.softmax(logits, axis=-1)[:, 1])
    return logits, r * global_score + (1 - r) * local_score
