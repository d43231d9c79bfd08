"""Triplet mining (the supervised path's cache refreshes) against brute-force float64
searches, and msls_weighted's sampling weights."""

import numpy as np
import pytest

from data_pipelines import mining, places
from tests.test_search_mining import brute_force_negatives, recording_embed, soft_sets_of, toy_train
from vgssl_jax.evaluation import search


def best_positives(train, feats, queries):
  rows = {int(q): r for r, q in enumerate(train.query_ids)}
  out = []
  for q in queries:
    hard = train.hard_positives[rows[int(q)]]
    d = ((feats["database"][hard].astype(np.float64) - feats["queries"][q]) ** 2).sum(1)
    out.append(hard[np.argmin(d)])
  return np.array(out)


@pytest.mark.parametrize("mode", ["partial", "full", "random"])
def test_positives_and_negatives_equal_brute_force(mode):
  train, feats, _, _ = toy_train(num_db=120, num_q=40)
  config = mining.TripletMiningConfig(16, mode, neg_samples_num=30, negs_num_per_query=3)
  cache = {}
  t = mining.compute_triplets(train, recording_embed(feats, []), np.random.default_rng(5),
                              config, search, cache)
  assert t.negatives.shape == (16, 3) and len(set(t.queries.tolist())) == 16
  np.testing.assert_array_equal(t.positives, best_positives(train, feats, t.queries))
  soft = soft_sets_of(train, t.queries)
  for i, row in enumerate(t.negatives):
    assert not set(row.tolist()) & soft[i] and len(set(row.tolist())) == 3
  if mode == "partial":
    # one pool drawn after the queries; the 3 nearest of it outside the soft positives
    rng = np.random.default_rng(5)
    mining.sample_queries(rng, len(train.query_ids), 16)
    pool = np.sort(rng.choice(120, 30, replace=False))
    want = brute_force_negatives(feats["queries"][t.queries], feats["database"][pool], pool,
                                 soft, 3)
    np.testing.assert_array_equal(t.negatives, want)
  if mode == "full":
    assert set(cache) == set(int(q) for q in t.queries)
    # a second refresh: each query's candidates include its previous hardest negatives,
    # so its new hardest are at least as near
    again = mining.compute_triplets(train, recording_embed(feats, []),
                                    np.random.default_rng(6), config, search, cache)
    for q, negs in zip(again.queries, again.negatives):
      d = lambda ids: ((feats["database"][ids] - feats["queries"][q]) ** 2).sum(1)  # noqa: E731
      if int(q) in {int(x) for x in t.queries}:
        before = t.negatives[list(t.queries).index(q)]
        assert d(negs).max() <= d(before).max() + 1e-6


def test_full_mining_searches_the_draw_and_the_cache_by_brute_force():
  train, feats, _, _ = toy_train(num_db=80, num_q=30)
  config = mining.TripletMiningConfig(10, "full", neg_samples_num=20, negs_num_per_query=2)
  previous = {int(q): np.array([0, 1]) for q in train.query_ids}
  cache = {k: v.copy() for k, v in previous.items()}
  t = mining.compute_triplets(train, recording_embed(feats, []), np.random.default_rng(7),
                              config, search, cache)
  # replay the draws: queries, then one draw of 20 per query (after the positives' search)
  rng = np.random.default_rng(7)
  rows = mining.sample_queries(rng, len(train.query_ids), 10)
  draws = [rng.choice(80, 20, replace=False) for _ in rows]
  soft = soft_sets_of(train, t.queries)
  for i, q in enumerate(t.queries):
    cand = np.unique(np.concatenate([previous[int(q)],
                                     [d for d in draws[i] if d not in soft[i]]]))
    want = brute_force_negatives(feats["queries"][[q]], feats["database"][cand], cand, [set()], 2)
    np.testing.assert_array_equal(t.negatives[i], want[0])
    np.testing.assert_array_equal(cache[int(q)], t.negatives[i])


def test_msls_weights_favour_night_and_sideways_queries():
  ds = places.PlaceDataset(
      "msls", "train", "/x", ("d",), tuple(f"q{i}" for i in range(4)), np.zeros((1, 2)),
      np.zeros((4, 2)), extras={"queries_night": np.array([True, False, False, False]),
                                "queries_view_direction": np.array(["Forward", "Sideways",
                                                                    "Forward", "Backward"])})
  train = places.TrainPlaces(ds, np.arange(4), None, None, 0)
  w = mining.msls_weights(train)
  raw = np.array([1 + 4 / 1, 1 + 4 / 1, 1, 1])  # 1 + Q/#night, 1 + Q/#sideways
  np.testing.assert_allclose(w, raw / raw.sum())
  from data_pipelines import formats
  notes = ["night_forward_x", "day_sideways_x", "day_forward_x", "day_backward_x"]
  at = places.PlaceDataset("msls", "train", "/x", ("d",),
                           tuple(formats.format_name(0, i, note=n) for i, n in enumerate(notes)),
                           np.zeros((1, 2)), np.zeros((4, 2)))
  np.testing.assert_allclose(mining.msls_weights(places.TrainPlaces(at, np.arange(4), None, None,
                                                                     0)), raw / raw.sum())
  plain = places.PlaceDataset("pitts30k", "train", "/x", ("d",), ("@1@2@.jpg",), np.zeros((1, 2)),
                              np.zeros((1, 2)))
  with pytest.raises(places.DatasetError, match="msls_weighted needs each query's night"):
    mining.msls_weights(places.TrainPlaces(plain, np.arange(1), None, None, 0))
