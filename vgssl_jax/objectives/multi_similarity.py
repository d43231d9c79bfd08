"""The multi-similarity objective (`method=ms`) of GSV-Cities, MixVPR, SALAD and BoQ:
pytorch-metric-learning's MultiSimilarityMiner(epsilon=0.1) and MultiSimilarityLoss(alpha=1,
beta=50, base=0) on batches of P places x K images (docs/vpr_training.md).

Everything is a few dense (N, N) matrix products and masks over the **global** batch: under
jit the descriptors of all devices form one array, so mining and loss see every pair of the
step, and 1 device and 4 devices compute the same step (the PyTorch recipes run on one GPU).

Both the miner and the loss use cosine similarities (PML normalises embeddings by default,
DotProductSimilarity included). Per anchor i with s = cosine similarity:
  positive j (same place, j != i) mined iff s_ij - epsilon < max over negatives k of s_ik;
  negative j (other place) mined iff s_ij + epsilon > min over positives k of s_ik;
  row loss (1/alpha) log(1 + sum_pos e^(-alpha (s - base))) +
           (1/beta) log(1 + sum_neg e^(beta (s - base))),
and the loss is the mean over all N rows (MeanReducer). PML returns a zero loss when every
mined list has at most one entry (GenericPairLoss), and so does this. The logged `batch_acc`
is gsv-cities' "share of trivial samples": 1 - (anchors with a mined positive) / N.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from vgssl_jax.errors import ConfigError
from vgssl_jax.models.inputs import normalize
from vgssl_jax.objectives.base import Objective, dropout_rngs

EPSILON, ALPHA, BETA, BASE = 0.1, 1.0, 50.0, 0.0


@jax.custom_vjp
def gram(x: jax.Array) -> jax.Array:
  """x @ x.T; its gradient (G + G^T) @ x is one matrix product where autodiff of the
  product makes two (one per operand): the step's loss costs a third less."""
  return x @ x.T


def _gram_fwd(x):
  return x @ x.T, x


def _gram_bwd(x, g):
  return ((g + g.T) @ x,)


gram.defvjp(_gram_fwd, _gram_bwd)


def cosine_similarity(x: jax.Array) -> jax.Array:
  """(N, N) cosine similarities of the rows of x, in float32 (PML's eps: 1e-12 on the norm)."""
  x = x.astype(jnp.float32)
  x = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  return gram(x)


def mine(sim: jax.Array, labels: jax.Array, epsilon: float = EPSILON):
  """MultiSimilarityMiner on a similarity matrix: (positive mask, negative mask), (N, N) bool."""
  n = sim.shape[0]
  same = labels[:, None] == labels[None, :]
  eye = jnp.eye(n, dtype=bool)
  pos, neg = same & ~eye, ~same
  max_neg = jnp.max(jnp.where(neg, sim, -jnp.inf), axis=1, keepdims=True)
  min_pos = jnp.min(jnp.where(pos, sim, jnp.inf), axis=1, keepdims=True)
  # PML returns nothing when the batch has no positive or no negative pair at all
  any_pairs = jnp.any(pos) & jnp.any(neg)
  pos_mined = pos & (sim - epsilon < max_neg) & any_pairs
  neg_mined = neg & (sim + epsilon > min_pos) & any_pairs
  return pos_mined, neg_mined


def _log1p_sum_exp(x: jax.Array, mask: jax.Array) -> jax.Array:
  """log(1 + sum_j mask_ij e^x_ij) per row, stably (PML's logsumexp with add_one)."""
  x = jnp.where(mask, x, -jnp.inf)
  m = jnp.maximum(jnp.max(x, axis=1), 0.0)  # the "one" is e^0
  return m + jnp.log(jnp.exp(-m) + jnp.sum(jnp.where(mask, jnp.exp(x - m[:, None]), 0.0),
                                           axis=1))


def row_losses(sim: jax.Array, pos_mask: jax.Array, neg_mask: jax.Array, alpha: float = ALPHA,
               beta: float = BETA, base: float = BASE) -> jax.Array:
  """MultiSimilarityLoss per row (N,) on the mined masks."""
  pos = _log1p_sum_exp(-alpha * (sim - base), pos_mask) / alpha
  neg = _log1p_sum_exp(beta * (sim - base), neg_mask) / beta
  return pos + neg


def ms_loss(descriptors: jax.Array, labels: jax.Array, epsilon: float = EPSILON,
            alpha: float = ALPHA, beta: float = BETA, base: float = BASE):
  """(loss, batch_acc) of a batch of descriptors (N, D) with place labels (N,)."""
  sim = cosine_similarity(descriptors)
  pos_mask, neg_mask = mine(jax.lax.stop_gradient(sim), labels, epsilon)
  rows = row_losses(sim, pos_mask, neg_mask, alpha, beta, base)
  # GenericPairLoss: no loss when every mined list holds at most one pair
  trivial = (jnp.sum(pos_mask) <= 1) & (jnp.sum(neg_mask) <= 1)
  loss = jnp.where(trivial, 0.0, jnp.mean(rows))
  n = pos_mask.shape[0]
  batch_acc = (n - jnp.sum(jnp.any(pos_mask, axis=1))) / n
  return loss, batch_acc


class MultiSimilarity(Objective):
  """The MS loss of one train-mode forward of the batch's P x K images.

  batch: {"images": (P, K, H, W, 3) uint8 (augmented on the host), "places": (P,) int32};
  images of one place share its label, as gsv-cities' `labels.view(-1)`."""
  mining_output = "descriptor"
  projector_family = None
  keys = ("loss.ms_epsilon", "loss.ms_alpha", "loss.ms_beta", "loss.ms_base")

  def __init__(self, name: str, model, epsilon: float, alpha: float, beta: float, base: float):
    super().__init__(name, model)
    self.epsilon, self.alpha, self.beta, self.base = epsilon, alpha, beta, base

  @classmethod
  def from_config(cls, name: str, model, config) -> "MultiSimilarity":
    c = config.loss
    return cls(name, model, c.ms_epsilon, c.ms_alpha, c.ms_beta, c.ms_base)

  @classmethod
  def check_config(cls, config, purpose: str = "train") -> None:
    del purpose
    c = config.loss
    if c.ms_alpha <= 0 or c.ms_beta <= 0 or c.ms_epsilon < 0:
      raise ConfigError(f"loss.ms_alpha={c.ms_alpha} and loss.ms_beta={c.ms_beta} must be > 0 "
                        f"and loss.ms_epsilon={c.ms_epsilon} >= 0 (the authors: 1, 50, 0.1).")

  def loss(self, params: dict, batch_stats: dict, objective_state: dict, batch: dict,
           key: jax.Array):
    p, k = batch["images"].shape[:2]
    images = batch["images"].reshape(p * k, *batch["images"].shape[2:])
    out, updates = self.model.apply({"params": params["net"], "batch_stats": batch_stats["net"]},
                                    normalize(images.astype(jnp.float32), self.model.dtype),
                                    train=True, project=False, mutable=["batch_stats"],
                                    rngs=dropout_rngs(key))
    labels = jnp.repeat(batch["places"], k)
    loss, batch_acc = ms_loss(out["descriptor"], labels, self.epsilon, self.alpha, self.beta,
                              self.base)
    return loss, ({"net": updates.get("batch_stats", batch_stats["net"])}, objective_state,
                  {"batch_acc": batch_acc})
