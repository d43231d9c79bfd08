"""The supervised losses equal the original's (golden losses.npz: model/functional.py and
train.py's own loop on a collated batch), in float64 to 1e-10."""

import jax
import numpy as np
import pytest

from tests import golden
from vgssl_jax.objectives import losses


@pytest.fixture(scope="module")
def g():
  return golden.load("losses.npz")


def test_per_function_sums(g):
  with jax.enable_x64(True):
    q, p, n = g["query"], g["positive"], g["negatives"]
    assert float(losses.triplet_margin_sum(q, p, n, 0.1)) == pytest.approx(g["triplet_sum"],
                                                                           abs=1e-10)
    assert float(losses.sare_ind_sum(q, p, n)) == pytest.approx(g["sare_ind_sum"], abs=1e-10)
    assert float(losses.sare_joint_sum(q, p, n)) == pytest.approx(g["sare_joint_sum"], abs=1e-10)


def collated(features, indexes):
  """train.py's collated batch -> (q, p, n) of our layout, checking the original's index
  rows [b(2+M), b(2+M)+1, b(2+M)+2+j]. B(2 + M) feature rows and B M index rows give B, M."""
  b = (len(features) - len(indexes)) // 2
  m = len(indexes) // b
  want = np.array([[i * (2 + m), i * (2 + m) + 1, i * (2 + m) + 2 + j]
                   for i in range(b) for j in range(m)])
  np.testing.assert_array_equal(indexes, want)
  tuples = features.reshape(b, 2 + m, -1)
  return tuples[:, 0], tuples[:, 1], tuples[:, 2:]


@pytest.mark.parametrize("prefix", ["m10", "msmall"])
def test_train_py_loop_on_a_collated_batch(g, prefix):
  """Every criterion the file has a result of (SARE-joint only with the original's M = 10)."""
  with jax.enable_x64(True):
    q, p, n = collated(g[f"{prefix}_features"], g[f"{prefix}_triplets_local_indexes"])
    criteria = [c for c in losses.SUPERVISED if f"{prefix}_{c}_sum" in g]
    assert "triplet" in criteria
    for crit in criteria:
      total = losses.SUPERVISED[crit](q, p, n, 0.1)
      assert float(total) == pytest.approx(g[f"{prefix}_{crit}_sum"], abs=1e-10), crit
      assert float(losses.supervised_loss(crit, q, p, n, 0.1)) == pytest.approx(
          g[f"{prefix}_{crit}_loss"], abs=1e-10), crit


def test_sare_joint_takes_any_number_of_negatives():
  rng = np.random.default_rng(0)
  q, p, n = rng.normal(size=(3, 4)), rng.normal(size=(3, 4)), rng.normal(size=(3, 2, 4))
  with jax.enable_x64(True):
    d = lambda a, b: ((a - b) ** 2).sum(-1)  # noqa: E731
    want = 0.0
    for b in range(3):
      logits = -np.array([d(q[b], p[b]), *d(q[b], n[b])])
      want -= logits[0] - np.log(np.exp(logits).sum())
    assert float(losses.sare_joint_sum(q, p, n)) == pytest.approx(want, abs=1e-12)
