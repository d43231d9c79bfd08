"""Each loss against a float64 NumPy reference written here, independently of the code."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vgssl_jax.objectives import losses

SHAPES = [(8, 5), (6, 32), (40, 16)]  # N < D, N > D, N != D


def vicreg_ref(x, y, sim=25.0, std=25.0, cov=1.0):
  x, y = x.astype(np.float64), y.astype(np.float64)
  n, d = x.shape
  repr_loss = np.mean((x - y) ** 2)
  x = x - x.mean(0)
  y = y - y.mean(0)
  std_x = np.sqrt(x.var(0, ddof=1) + 1e-4)
  std_y = np.sqrt(y.var(0, ddof=1) + 1e-4)
  std_loss = np.mean(np.maximum(1 - std_x, 0)) / 2 + np.mean(np.maximum(1 - std_y, 0)) / 2
  cx = x.T @ x / (n - 1)
  cy = y.T @ y / (n - 1)
  off = lambda c: (c ** 2).sum() - (np.diag(c) ** 2).sum()
  return sim * repr_loss + std * std_loss + cov * (off(cx) / d + off(cy) / d)


@pytest.mark.parametrize("n,d", SHAPES)
@pytest.mark.parametrize("scale", [0.1, 3.0])  # below and above the variance hinge
def test_vicreg_matches_numpy(n, d, scale):
  rng = np.random.default_rng(n * d)
  x = rng.normal(size=(n, d)).astype(np.float32) * scale
  y = (x + rng.normal(size=(n, d)) * 0.5 * scale).astype(np.float32)
  got = float(losses.vicreg_loss(jnp.asarray(x), jnp.asarray(y)))
  np.testing.assert_allclose(got, vicreg_ref(x, y), rtol=2e-5)


def test_vicreg_coefficients():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(2, 10, 6)).astype(np.float32)
  got = float(losses.vicreg_loss(jnp.asarray(x), jnp.asarray(y), 1.0, 2.0, 3.0))
  np.testing.assert_allclose(got, vicreg_ref(x, y, 1.0, 2.0, 3.0), rtol=2e-5)


def barlow_ref(x, y, lambd=0.0051):
  x, y = x.astype(np.float64), y.astype(np.float64)
  n = len(x)
  xs = (x - x.mean(0)) / np.sqrt(x.var(0, ddof=1) + 1e-4)
  ys = (y - y.mean(0)) / np.sqrt(y.var(0, ddof=1) + 1e-4)
  c = xs.T @ ys / n
  on = ((np.diag(c) - 1) ** 2).sum()
  off = (c ** 2).sum() - (np.diag(c) ** 2).sum()
  return on + lambd * off


def info_nce_ref(x, y, t=0.07):
  z = np.concatenate([x, y]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n2 = len(z)
  total = 0.0
  for a in range(n2):
    partner = (a + n2 // 2) % n2
    s = z @ z[a] / t
    others = np.exp(np.delete(s, a))
    total += -np.log(np.exp(s[partner]) / others.sum())
  return total / n2


def moco_ref(q, k, queue, t=0.07):
  q, k, queue = (v.astype(np.float64) for v in (q, k, queue))
  total = 0.0
  for i in range(len(q)):
    logits = np.concatenate([[q[i] @ k[i]], queue @ q[i]]) / t
    total += -logits[0] + np.log(np.exp(logits).sum())
  return total / len(q)


def byol_ref(p1, p2, z1, z2):
  cos = lambda a, b: (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
  p1, p2, z1, z2 = (v.astype(np.float64) for v in (p1, p2, z1, z2))
  return np.mean((2 - 2 * cos(p1, z2)) + (2 - 2 * cos(p2, z1)))


def unit(v):
  return v / np.linalg.norm(v, axis=-1, keepdims=True)


@pytest.mark.parametrize("n,d", SHAPES)
def test_barlow_twins_matches_numpy(n, d):
  rng = np.random.default_rng(n + d)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = (x + rng.normal(size=(n, d))).astype(np.float32)
  np.testing.assert_allclose(float(losses.barlow_twins_loss(jnp.asarray(x), jnp.asarray(y))),
                             barlow_ref(x, y), rtol=3e-5)


def test_barlow_twins_floor_of_an_invariant_representation():
  # identical views: c_dd = (N - 1) / N (up to the 1e-4 eps), so the on-diagonal term is
  # about D / N^2 (docs/original.md §Losses)
  x = np.random.default_rng(0).normal(size=(64, 256)).astype(np.float32)
  on_diag = barlow_ref(x, x, lambd=0.0)
  np.testing.assert_allclose(on_diag, 256 / 64 ** 2, rtol=2e-2)
  np.testing.assert_allclose(float(losses.barlow_twins_loss(jnp.asarray(x), jnp.asarray(x), 0.0)),
                             on_diag, rtol=1e-3)


@pytest.mark.parametrize("n,d", SHAPES)
def test_info_nce_matches_numpy(n, d):
  rng = np.random.default_rng(n * 3 + d)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = (x + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
  np.testing.assert_allclose(float(losses.info_nce_loss(jnp.asarray(x), jnp.asarray(y))),
                             info_nce_ref(x, y), rtol=2e-5, atol=1e-6)


def test_info_nce_gives_gradients_to_both_views():
  rng = np.random.default_rng(0)
  x, y = (jnp.asarray(rng.normal(size=(6, 4)).astype(np.float32)) for _ in range(2))
  gx, gy = jax.grad(lambda a, b: losses.info_nce_loss(a, b), argnums=(0, 1))(x, y)
  assert float(jnp.abs(gx).sum()) > 0 and float(jnp.abs(gy).sum()) > 0


@pytest.mark.parametrize("n,d,k", [(8, 5, 16), (6, 32, 12), (40, 16, 64)])
def test_moco_matches_numpy(n, d, k):
  rng = np.random.default_rng(n + k)
  q = unit(rng.normal(size=(n, d))).astype(np.float32)
  key = unit(q + 0.2 * rng.normal(size=(n, d))).astype(np.float32)
  queue = unit(rng.normal(size=(k, d))).astype(np.float32)
  got = float(losses.moco_loss(jnp.asarray(q), jnp.asarray(key), jnp.asarray(queue)))
  np.testing.assert_allclose(got, moco_ref(q, key, queue), rtol=2e-5, atol=1e-6)
  gk = jax.grad(lambda kk: losses.moco_loss(jnp.asarray(q), kk, jnp.asarray(queue)))(jnp.asarray(key))
  assert float(jnp.abs(gk).sum()) == 0.0  # keys come from the no-grad key encoder


@pytest.mark.parametrize("n,d", SHAPES)
def test_byol_matches_numpy_with_stopped_targets(n, d):
  rng = np.random.default_rng(n * 7 + d)
  p1, p2, z1, z2 = (rng.normal(size=(n, d)).astype(np.float32) for _ in range(4))
  args = [jnp.asarray(v) for v in (p1, p2, z1, z2)]
  np.testing.assert_allclose(float(losses.byol_loss(*args)), byol_ref(p1, p2, z1, z2), rtol=2e-5)
  grads = jax.grad(lambda *a: losses.byol_loss(*a), argnums=(0, 1, 2, 3))(*args)
  assert float(jnp.abs(grads[0]).sum()) > 0 and float(jnp.abs(grads[1]).sum()) > 0
  assert float(jnp.abs(grads[2]).sum()) == 0 and float(jnp.abs(grads[3]).sum()) == 0
