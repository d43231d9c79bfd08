import numpy as np

from data_pipelines.places import Neighbors
from vgssl_jax.evaluation import metrics, runner


def test_recall_on_a_hand_made_case():
  # 4 queries; positives: q0 {2}, q1 {0, 3}, q2 {} (no positive: counted as a miss), q3 {1}
  positives = Neighbors(np.array([0, 1, 3, 3, 4]), np.array([2, 0, 3, 1]))
  predictions = np.array([[2, 0, 1, 3],    # hit at rank 1
                          [1, 2, 3, 0],    # first hit at rank 3
                          [0, 1, 2, 3],    # never
                          [0, 2, 3, 4]])   # never (1 not predicted)
  r = metrics.recalls(predictions, positives, (1, 2, 3, 4))
  assert r == {"recall@1": 25.0, "recall@2": 25.0, "recall@3": 50.0, "recall@4": 50.0}
  np.testing.assert_array_equal(metrics.first_hit_rank(predictions, positives), [0, 2, 4, 4])


def test_format_table():
  table = runner.format_table({"after": {"toy": {"recall@1": 50.0, "recall@5": 75.25}}}, (1, 5))
  assert table.splitlines()[0] == "| model | dataset | R@1 | R@5 |"
  assert table.splitlines()[2] == "| after | toy | 50.0 | 75.2 |"
