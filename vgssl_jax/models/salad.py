"""SALAD (Izquierdo & Civera, CVPR 2024; serizba/salad `models/aggregators/salad.py`): local
features assigned to clusters by optimal transport (Sinkhorn, with a dust bin), plus the
global scene token.

  f_i = cluster_features(x_i) (l), s_i = score(x_i) (m)    1x1 convs 512 wide, dropout, ReLU
  t = token_features(cls) (g)                              Linear 512, ReLU, Linear g
  P = exp(Sinkhorn_3(S with a dust-bin row of z))[:m]      log space, 3 iterations, reg 1
  V_lk = sum_i P_ki f_il                                   (l, m), L2 over l
  descriptor = L2([L2(t); flatten(V) in (l, m) order])     g + l m (256 + 128 x 64 = 8448)

With out_dim > 0 a linear layer maps that to out_dim, then L2 (MegaLoc). Parameter names
follow the original (`token_features.0`, `cluster_features.3`, `score.0`, `dust_bin`;
MegaLoc's `linear`).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgssl_jax.models.features import Features
from vgssl_jax.models.layers import Dense, l2_normalize


def log_otp_solver(log_a: jax.Array, log_b: jax.Array, cost: jax.Array, iters: int,
                   reg: float = 1.0) -> jax.Array:
  """Sinkhorn in log space (OpenGlue's, as SALAD has it): (B, M), (B, N) log-marginals and
  (B, M, N) scores -> the log transport plan; each iteration fits the rows, then the columns."""
  cost = cost / reg
  u, v = jnp.zeros_like(log_a), jnp.zeros_like(log_b)
  for _ in range(iters):
    u = log_a - jax.nn.logsumexp(cost + v[:, None, :], axis=2)
    v = log_b - jax.nn.logsumexp(cost + u[:, :, None], axis=1)
  return cost + u[:, :, None] + v[:, None, :]


def matching_log_probs(scores: jax.Array, dust_bin: jax.Array, iters: int = 3) -> jax.Array:
  """SALAD's get_matching_probs: (B, m, n) scores -> (B, m + 1, n) log-assignment (the dust
  bin last), + log(n + m). Needs n > m (the dust bin's mass is log(n - m))."""
  b, m, n = scores.shape
  aug = jnp.concatenate([scores, jnp.broadcast_to(dust_bin, (b, 1, n))], axis=1)
  norm = -math.log(n + m)
  log_a = jnp.full((b, m + 1), norm, scores.dtype).at[:, -1].add(math.log(n - m))
  log_b = jnp.full((b, n), norm, scores.dtype)
  return log_otp_solver(log_a, log_b, aug, iters) - norm


class Conv1x1(nn.Module):
  """nn.Conv2d(in, out, 1) with bias on (..., C) features: kernel (1, 1, C, out), so that
  PyTorch's (out, C, 1, 1) weights convert as a convolution's."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    fan_in = x.shape[-1]
    bound = 1.0 / math.sqrt(fan_in)
    kernel = self.param("kernel", nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
                        (1, 1, fan_in, self.features), jnp.float32)
    bias = self.param("bias", lambda k, s, d: jax.random.uniform(k, s, d, -bound, bound),
                      (self.features,), jnp.float32)
    return x @ kernel[0, 0] + bias


class _ConvMLP(nn.Module):
  """Sequential(Conv1x1(hidden), Dropout, ReLU, Conv1x1(out)): children "0" and "3"."""
  hidden: int
  out: int
  dropout: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = Conv1x1(self.hidden, name="0")(x)
    if train and self.dropout > 0 and self.has_rng("dropout"):
      x = nn.Dropout(self.dropout, deterministic=False)(x)
    return Conv1x1(self.out, name="3")(jax.nn.relu(x))


class Salad(nn.Module):
  """Features with a (N, h, w, C) map and the cls token -> (N, g + l m) descriptor (or
  out_dim). Dropout only while training and when the apply call gives a "dropout" rng."""
  num_clusters: int = 64
  cluster_dim: int = 128
  token_dim: int = 256
  hidden: int = 512
  dropout: float = 0.3
  out_dim: int = 0
  sinkhorn_iters: int = 3

  @nn.compact
  def __call__(self, features: Features, train: bool = False) -> jax.Array:
    x = features.feature_map.astype(jnp.float32)
    n, h, w, c = x.shape
    x = x.reshape(n, h * w, c)
    f = _ConvMLP(self.hidden, self.cluster_dim, self.dropout, name="cluster_features")(x, train)
    s = _ConvMLP(self.hidden, self.num_clusters, self.dropout, name="score")(x, train)
    t = _TokenMLP(self.hidden, self.token_dim, name="token_features")(
        features.prefix[:, 0].astype(jnp.float32))
    dust = self.param("dust_bin", nn.initializers.constant(1.0), (), jnp.float32)
    log_p = matching_log_probs(jnp.swapaxes(s, 1, 2), dust, self.sinkhorn_iters)
    self.sow("intermediates", "log_P", log_p)
    p = jnp.exp(log_p)[:, :-1]                                    # (N, m, n), dust bin dropped
    v = jnp.einsum("bnl,bmn->blm", f, p, precision=jax.lax.Precision.HIGHEST)
    v = l2_normalize(v, axis=1).reshape(n, -1)                    # (l, m) order
    out = l2_normalize(jnp.concatenate([l2_normalize(t), v], axis=-1))
    if self.out_dim:
      out = l2_normalize(Dense(self.out_dim, name="linear")(out))
    return out


class _TokenMLP(nn.Module):
  """Sequential(Linear(hidden), ReLU, Linear(out)): children "0" and "2"."""
  hidden: int
  out: int

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    return Dense(self.out, name="2")(jax.nn.relu(Dense(self.hidden, name="0")(t)))


def check(num_clusters: int, patches: int) -> None:
  """ValueError unless the map has more patches than clusters (the dust bin's mass)."""
  if patches <= num_clusters:
    raise ValueError(f"SALAD needs more patches than clusters: the image gives {patches} patches "
                     f"and model.salad.num_clusters={num_clusters}; use larger images or fewer "
                     "clusters")
