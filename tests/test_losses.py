"""Each loss against a float64 NumPy reference written here, independently of the code."""

import jax.numpy as jnp
import numpy as np
import pytest

from vgssl_jax import losses

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
