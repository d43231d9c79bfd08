"""The multi-similarity objective (method=ms) against the official miner and loss
(pytorch-metric-learning as gsv-cities, SALAD and BoQ configure it: golden ms_loss.npz), a
float64 NumPy transcription of the rules, and the step on 1 and 4 devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import golden
from vgssl_jax.objectives import multi_similarity as ms

G = golden.load("ms_loss.npz")
CASES = golden.config(G)["cases"]


@pytest.mark.parametrize("case", CASES)
def test_miner_and_loss_match_the_official_code(case):
  x, labels = G[f"{case}_embeddings"], G[f"{case}_labels"]
  sim = ms.cosine_similarity(jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(np.asarray(sim), G[f"{case}_similarity"], atol=2e-6)
  pos, neg = ms.mine(sim, jnp.asarray(labels))
  np.testing.assert_array_equal(np.asarray(pos), G[f"{case}_pos_mask"])
  np.testing.assert_array_equal(np.asarray(neg), G[f"{case}_neg_mask"])
  # the masks are the official index lists
  a1, p = np.nonzero(np.asarray(pos))
  assert sorted(zip(a1, p)) == sorted(zip(G[f"{case}_a1"], G[f"{case}_p"]))
  rows = ms.row_losses(sim, pos, neg)
  np.testing.assert_allclose(np.asarray(rows), G[f"{case}_row_losses"], rtol=2e-5, atol=2e-6)
  loss, acc = ms.ms_loss(jnp.asarray(x, jnp.float32), jnp.asarray(labels))
  np.testing.assert_allclose(float(loss), float(G[f"{case}_loss"]), rtol=2e-5, atol=2e-6)
  np.testing.assert_allclose(float(acc), float(G[f"{case}_batch_acc"]), atol=1e-7)


def _numpy_ms(x, labels, eps=0.1, alpha=1.0, beta=50.0):
  """The rules written out in float64 loops (an independent transcription)."""
  x = x / np.linalg.norm(x, axis=1, keepdims=True)
  s = x @ x.T
  n = len(x)
  pos_pairs, neg_pairs, rows, anchors = 0, 0, [], set()
  for i in range(n):
    p = [j for j in range(n) if j != i and labels[j] == labels[i]]
    q = [j for j in range(n) if labels[j] != labels[i]]
    if not p or not q:
      rows.append(0.0)
      continue
    mp = [j for j in p if s[i, j] - eps < max(s[i, q])]
    mn = [j for j in q if s[i, j] + eps > min(s[i, p])]
    pos_pairs, neg_pairs = pos_pairs + len(mp), neg_pairs + len(mn)
    anchors |= {i} if mp else set()
    rows.append(np.log1p(np.exp(-alpha * s[i, mp]).sum()) / alpha
                + np.log1p(np.exp(beta * s[i, mn]).sum()) / beta)
  loss = 0.0 if pos_pairs <= 1 and neg_pairs <= 1 else float(np.mean(rows))
  return loss, 1 - len(anchors) / n


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_matches_a_float64_transcription(seed):
  rng = np.random.default_rng(seed)
  p, k, d = 6, 3 + seed % 2, 16
  x = rng.normal(size=(p * k, d)) + 1.5 * np.repeat(rng.normal(size=(p, d)), k, axis=0)
  labels = np.repeat(rng.permutation(100)[:p], k)
  loss, acc = ms.ms_loss(jnp.asarray(x, jnp.float32), jnp.asarray(labels))
  want_loss, want_acc = _numpy_ms(x, labels)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(acc), want_acc, atol=1e-7)


def test_a_single_mined_pair_gives_zero_loss_and_gradients_are_finite():
  # two places, one pair each side mined at most: PML's "every list <= 1" rule
  x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
  labels = np.array([0, 0, 1, 1])
  loss, _ = ms.ms_loss(jnp.asarray(x, jnp.float32), jnp.asarray(labels))
  assert float(loss) == _numpy_ms(x, labels)[0]
  grads = jax.grad(lambda v: ms.ms_loss(v, jnp.asarray(labels))[0])(jnp.asarray(x, jnp.float32))
  assert np.isfinite(np.asarray(grads)).all()


def test_the_gram_gradient_is_autodiffs():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)), jnp.float32)
  w = jnp.asarray(np.random.default_rng(1).normal(size=(6, 6)), jnp.float32)
  ours = jax.grad(lambda v: jnp.sum(w * ms.gram(v)))(x)
  plain = jax.grad(lambda v: jnp.sum(w * (v @ v.T)))(x)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(plain), rtol=1e-5, atol=1e-5)
