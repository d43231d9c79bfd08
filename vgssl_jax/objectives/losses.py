"""The losses of VG-SSL (docs/original.md §Losses) as pure functions of (N, D) arrays.

All reductions run in float32. Batch-level statistics (VICReg/Barlow moments,
SimCLR negatives) are over the whole batch: under a data-sharded jit that is the
global batch, as the original's all-gather.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vgssl_jax.models.layers import l2_normalize


def _f32(*xs):
  return [x.astype(jnp.float32) for x in xs]


def _sum_sq_gram(a: jax.Array, b: jax.Array) -> jax.Array:
  """||a^T b||_F^2 for (N, D) inputs, through N x N Gram matrices when N < D (cheaper)."""
  hi = jax.lax.Precision.HIGHEST
  if a.shape[0] < a.shape[1]:
    return jnp.sum(jnp.dot(a, a.T, precision=hi) * jnp.dot(b, b.T, precision=hi))
  return jnp.sum(jnp.square(jnp.dot(a.T, b, precision=hi)))


def vicreg_loss(z1: jax.Array, z2: jax.Array, sim_coeff: float = 25.0, std_coeff: float = 25.0,
                cov_coeff: float = 1.0) -> jax.Array:
  """VICReg: 25 * MSE + 25 * variance hinge + 1 * off-diagonal covariance (unbiased, eps 1e-4)."""
  x, y = _f32(z1, z2)
  n, d = x.shape
  repr_loss = jnp.mean(jnp.square(x - y))
  x = x - x.mean(axis=0)
  y = y - y.mean(axis=0)
  var_x = jnp.sum(jnp.square(x), axis=0) / (n - 1)
  var_y = jnp.sum(jnp.square(y), axis=0) / (n - 1)
  std_loss = (jnp.mean(jax.nn.relu(1 - jnp.sqrt(var_x + 1e-4))) / 2 +
              jnp.mean(jax.nn.relu(1 - jnp.sqrt(var_y + 1e-4))) / 2)
  # sum of squared off-diagonal covariance entries = ||C||_F^2 - sum(diag(C)^2)
  cov_x = (_sum_sq_gram(x, x) / (n - 1) ** 2 - jnp.sum(jnp.square(var_x))) / d
  cov_y = (_sum_sq_gram(y, y) / (n - 1) ** 2 - jnp.sum(jnp.square(var_y))) / d
  return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * (cov_x + cov_y)


def barlow_twins_loss(z1: jax.Array, z2: jax.Array, lambd: float = 0.0051) -> jax.Array:
  """Barlow Twins with the original's standardisation (unbiased variance, eps 1e-4), c = x^T y / N."""
  x, y = _f32(z1, z2)
  n, _ = x.shape
  def standardize(v):
    v = v - v.mean(axis=0)
    return v / jnp.sqrt(jnp.sum(jnp.square(v), axis=0) / (n - 1) + 1e-4)
  x, y = standardize(x), standardize(y)
  diag = jnp.sum(x * y, axis=0) / n
  on_diag = jnp.sum(jnp.square(diag - 1))
  off_diag = _sum_sq_gram(x, y) / n ** 2 - jnp.sum(jnp.square(diag))
  return on_diag + lambd * off_diag


def info_nce_loss(z1: jax.Array, z2: jax.Array, temperature: float = 0.07) -> jax.Array:
  """SimCLR (NT-Xent) over the 2N views; the positive of view a is its pair, the rest negatives."""
  z = l2_normalize(jnp.concatenate(_f32(z1, z2), axis=0))
  n2 = z.shape[0]
  n = n2 // 2
  logits = jnp.dot(z, z.T, precision=jax.lax.Precision.HIGHEST) / temperature
  logits = jnp.where(jnp.eye(n2, dtype=bool), -jnp.inf, logits)
  partner = (jnp.arange(n2) + n) % n2
  pos = logits[jnp.arange(n2), partner]
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - pos)


def moco_loss(q: jax.Array, k: jax.Array, queue: jax.Array, temperature: float = 0.07) -> jax.Array:
  """MoCo v2: cross-entropy with the positive logit q.k first, then q against the queue.

  q, k: (N, D) L2-normalised; queue: (K, D) L2-normalised rows. k gets no gradient.
  """
  q, k, queue = _f32(q, jax.lax.stop_gradient(k), jax.lax.stop_gradient(queue))
  hi = jax.lax.Precision.HIGHEST
  pos = jnp.sum(q * k, axis=1, keepdims=True)
  neg = jnp.dot(q, queue.T, precision=hi)
  logits = jnp.concatenate([pos, neg], axis=1) / temperature
  return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])


def byol_loss(p1: jax.Array, p2: jax.Array, z1: jax.Array, z2: jax.Array) -> jax.Array:
  """Symmetric BYOL/SimSiam loss: mean_i [l(p1_i, sg z2_i) + l(p2_i, sg z1_i)], l = 2 - 2 cos."""
  p1, p2 = _f32(p1, p2)
  z1, z2 = _f32(jax.lax.stop_gradient(z1), jax.lax.stop_gradient(z2))
  def l(p, z):
    return 2 - 2 * jnp.sum(l2_normalize(p) * l2_normalize(z), axis=-1)
  return jnp.mean(l(p1, z2) + l(p2, z1))


# ----------------------------------------------------------------------------- supervised
# The triplet path of the deep visual geo-localization benchmark that VG-SSL trains its
# baselines and fine-tunes with (docs/original.md §Supervised training). q (B, D) queries,
# p (B, D) their best positives, n (B, M, D) their M negatives; each returns the SUM over
# its terms (train.py divides by B * M). Computed in float32, or in the inputs' float64.


def _wide(*xs):
  dtype = jnp.promote_types(xs[0].dtype, jnp.float32)
  return [x.astype(dtype) for x in xs]


def triplet_margin_sum(q: jax.Array, p: jax.Array, n: jax.Array, margin: float = 0.1
                       ) -> jax.Array:
  """sum_{b,j} max(d(q_b, p_b) - d(q_b, n_bj) + margin, 0), d(a, b) = ||a - b + 1e-6||_2
  (torch.nn.TripletMarginLoss(margin, p=2, reduction="sum") over every (q, p*, n_j))."""
  q, p, n = _wide(q, p, n)
  dist = lambda a, b: jnp.sqrt(jnp.sum(jnp.square(a - b + 1e-6), axis=-1))  # noqa: E731
  return jnp.sum(jax.nn.relu(dist(q, p)[:, None] - dist(q[:, None], n) + margin))


def _sare_terms(d_pos: jax.Array, d_neg: jax.Array) -> jax.Array:
  """-log softmax(-[d_pos, d_neg])[0] along the last axis."""
  logits = -jnp.concatenate([d_pos[..., None], d_neg], axis=-1)
  return -jax.nn.log_softmax(logits, axis=-1)[..., 0]


def sare_ind_sum(q: jax.Array, p: jax.Array, n: jax.Array) -> jax.Array:
  """SARE, one negative at a time (model/functional.py sare_ind on each (q, p*, n_j)):
  sum_{b,j} -log softmax(-[|q-p|^2, |q-n_j|^2])[0]."""
  q, p, n = _wide(q, p, n)
  d_pos = jnp.sum(jnp.square(q - p), axis=-1)
  d_neg = jnp.sum(jnp.square(q[:, None] - n), axis=-1)
  return jnp.sum(_sare_terms(jnp.broadcast_to(d_pos[:, None], d_neg.shape), d_neg[..., None]))


def sare_joint_sum(q: jax.Array, p: jax.Array, n: jax.Array) -> jax.Array:
  """SARE over all negatives of a query at once: sum_b -log softmax(-[|q-p|^2, |q-n_1|^2,
  ..., |q-n_M|^2])[0] (the original hard-codes M = 10; any M works here)."""
  q, p, n = _wide(q, p, n)
  d_pos = jnp.sum(jnp.square(q - p), axis=-1)
  d_neg = jnp.sum(jnp.square(q[:, None] - n), axis=-1)
  return jnp.sum(_sare_terms(d_pos, d_neg))


SUPERVISED = {"triplet": lambda q, p, n, margin: triplet_margin_sum(q, p, n, margin),
              "sare_ind": lambda q, p, n, margin: sare_ind_sum(q, p, n),
              "sare_joint": lambda q, p, n, margin: sare_joint_sum(q, p, n)}


def supervised_loss(criterion: str, q: jax.Array, p: jax.Array, n: jax.Array,
                    margin: float = 0.1) -> jax.Array:
  """train.py's loss of a batch: the criterion's sum divided by B * M."""
  b, m = n.shape[:2]
  return SUPERVISED[criterion](q, p, n, margin) / (b * m)


# The re-ranking losses of stage 2 (train_reranker.py), on the R2Former's 2-way logits of
# (query, positive) and (query, negative_j) pairs; index 1 means "same place".
RERANK_LOSSES = ("ce", "triplet", "infoNCE", "combine")


def _ce(pos_logits, neg_logits, s_pos, s_neg, margin):
  del s_pos, s_neg, margin
  return -0.5 * (jnp.mean(jax.nn.log_softmax(pos_logits, axis=-1)[:, 1]) +
                 jnp.mean(jax.nn.log_softmax(neg_logits, axis=-1)[:, 0]))


def _triplet(pos_logits, neg_logits, s_pos, s_neg, margin):
  del pos_logits, neg_logits
  return jnp.mean(jax.nn.relu(s_neg - s_pos + margin))


def _hinge(pos_logits, neg_logits, s_pos, s_neg, margin):
  del pos_logits, neg_logits, margin
  return jnp.mean(jax.nn.relu(s_neg - s_pos))


def _info_nce(pos_logits, neg_logits, s_pos, s_neg, margin):
  del pos_logits, neg_logits, margin
  scores = jnp.stack([s_pos, s_neg], axis=-1) / 0.07
  return -jnp.mean(jax.nn.log_softmax(scores, axis=-1)[:, 0])


# the per-slice terms by rerank.loss; "combine" is CE on the last half of the slices and
# the plain hinge on the first
_SLICE_TERMS = {"ce": _ce, "triplet": _triplet, "infoNCE": _info_nce, "hinge": _hinge}


def rerank_slice_loss(kind: str, pos_logits: jax.Array, neg_logits: jax.Array, j: int, m: int,
                      margin: float = 0.1) -> jax.Array:
  """One negative slice j of M (B pairs each): ce = CE([pos; neg], [1]*B + [0]*B) (mean);
  triplet = mean relu(s_neg - s_pos + margin), s = softmax(logits)[1]; infoNCE = CE([s_pos,
  s_neg] / 0.07, 0) (mean); combine = ce for j >= M // 2, else mean relu(s_neg - s_pos)."""
  if kind == "combine":
    kind = "ce" if j >= m // 2 else "hinge"
  if kind not in _SLICE_TERMS:
    raise ValueError(f"unknown re-ranking loss {kind!r}; expected one of {RERANK_LOSSES}")
  pos_logits, neg_logits = _wide(pos_logits, neg_logits)
  s_pos = jax.nn.softmax(pos_logits, axis=-1)[:, 1]
  s_neg = jax.nn.softmax(neg_logits, axis=-1)[:, 1]
  return _SLICE_TERMS[kind](pos_logits, neg_logits, s_pos, s_neg, margin)


def rerank_loss(kind: str, pos_logits: jax.Array, neg_logits: jax.Array, margin: float = 0.1,
                global_triplet: tuple[jax.Array, jax.Array, jax.Array] | None = None
                ) -> jax.Array:
  """train_reranker.py's loss of a batch: pos_logits (B, 2), neg_logits (B, M, 2); with
  `global_triplet` = (q, p, n (B, M, D)) descriptors (fix = 0) the triplet margin sum is
  added. The total is divided by B * M (so the re-ranking term, a mean per slice, is
  divided twice: docs/original.md, quirk 20)."""
  b, m = neg_logits.shape[:2]
  total = sum(rerank_slice_loss(kind, pos_logits, neg_logits[:, j], j, m, margin)
              for j in range(m))
  if global_triplet is not None:
    total = total + triplet_margin_sum(*global_triplet, margin)
  return total / (b * m)
