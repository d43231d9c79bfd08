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


def test_a_reranker_plugs_in_between_ranking_and_scoring(tiny_root, tmp_path):
  """evaluate_places: the re-ranked list is scored beside the global one ("reranked_"),
  and the exports follow the final order."""
  import jax

  from tests.conftest import tiny_config, tiny_network
  from vgssl_jax import data_config, sharding
  from vgssl_jax.evaluation.embedder import Embedder
  from vgssl_jax.models.network import init_variables
  c = tiny_config(tiny_root)
  model = tiny_network(fc_output_dim=32)
  embedder = Embedder.from_config(c, model, sharding.make_mesh(1), progress=False)
  variables = init_variables(model, jax.random.PRNGKey(0), (32, 48))
  places = data_config.open_split(c, "synthetic", "test")
  seen = {}

  def reverse(split, predictions):
    seen["global"] = predictions
    return predictions[:, ::-1]
  options = runner.EvalOptions(recall_values=(1, 5))
  out = str(tmp_path / "eval")
  r = runner.evaluate_places(embedder, variables, places, options, out_dir=out, rerank=reverse)
  positives = places.positives(25.0)
  assert r["recall@1"] == metrics.recalls(seen["global"], positives, (1,))["recall@1"]
  want = metrics.recalls(seen["global"][:, ::-1], positives, (1, 5))
  assert {k: r["reranked_" + k] for k in want} == want
  assert r["recall_curve"] == [round(float(v), 4) for v in metrics.recall_curve(
      seen["global"][:, ::-1], positives, only_with_positives=False)]
