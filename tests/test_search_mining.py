import functools
import types

import faiss
import numpy as np
import pytest

from data_pipelines import mining, places
from vgssl_jax.evaluation import search


def numpy_knn(q, db, k):
  d = ((q[:, None, :].astype(np.float64) - db[None].astype(np.float64)) ** 2).sum(-1)
  idx = np.argsort(d, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(d, idx, 1), idx


@pytest.mark.parametrize("backend", search.BACKENDS)
def test_knn_backends_match_numpy(backend):
  rng = np.random.default_rng(0)
  db = rng.normal(size=(300, 16)).astype(np.float32)
  q = rng.normal(size=(70, 16)).astype(np.float32)
  dist, idx = search.knn(q, db, 10, backend)
  want_d, want_i = numpy_knn(q, db, 10)
  np.testing.assert_array_equal(idx, want_i)  # random floats: no ties
  np.testing.assert_allclose(dist, want_d, rtol=1e-4, atol=1e-4)


def test_device_knn_chunks_and_small_database():
  rng = np.random.default_rng(1)
  db = rng.normal(size=(5, 4)).astype(np.float32)
  q = rng.normal(size=(9, 4)).astype(np.float32)
  _, idx = search.device_knn(q, db, 20, chunk=4)  # k > database, last chunk padded
  assert idx.shape == (9, 5)
  np.testing.assert_array_equal(idx, numpy_knn(q, db, 5)[1])


def test_device_knn_in_database_blocks_equals_one_search():
  """Large descriptors search the database in blocks (bounded memory); the merged top k is
  the float64 reference's, and equal distances keep the lower index across blocks."""
  rng = np.random.default_rng(2)
  db = rng.normal(size=(203, 24)).astype(np.float32)
  q = rng.normal(size=(37, 24)).astype(np.float32)
  want_d, want_i = numpy_knn(q, db, 15)
  for rows in (7, 50, 202):
    dist, idx = search.device_knn(q, db, 15, chunk=16, block_rows=rows)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_allclose(dist, want_d, rtol=1e-4, atol=1e-4)
  twins = np.concatenate([db[:5], db[:5], db[:5]])      # every row three times
  _, idx = search.device_knn(db[:5], twins, 3, block_rows=4)
  np.testing.assert_array_equal(idx, [[i, i + 5, i + 10] for i in range(5)])


def test_nearest_among_matches_a_faiss_index_per_query():
  """As the original: for each query, a faiss IndexFlatL2 over its own candidates."""
  rng = np.random.default_rng(2)
  feats = rng.normal(size=(50, 8)).astype(np.float32)
  q = rng.normal(size=(23, 8)).astype(np.float32)
  cands = np.full((23, 6), -1)
  for i in range(23):
    n = rng.integers(1, 7)
    cands[i, :n] = rng.choice(50, n, replace=False)
  chosen, _ = search.nearest_among(q, feats, cands, chunk=8)
  for i in range(23):
    row = cands[i][cands[i] >= 0]
    index = faiss.IndexFlatL2(8)
    index.add(feats[row])
    _, j = index.search(q[i:i + 1], 1)
    assert chosen[i] == row[j[0, 0]]


def toy_train(num_db=40, num_q=30, seed=3):
  """Database every 4 m on a line, queries at random positions; random features."""
  rng = np.random.default_rng(seed)
  db_utm = np.stack([np.arange(num_db) * 4.0, np.zeros(num_db)], 1)
  q_utm = np.stack([rng.uniform(0, num_db * 4.0, num_q), np.zeros(num_q)], 1)
  ds = places.PlaceDataset("toy", "train", "/nonexistent", tuple(f"d{i}" for i in range(num_db)),
                           tuple(f"q{i}" for i in range(num_q)), db_utm, q_utm)
  feats = {"database": rng.normal(size=(num_db, 5)).astype(np.float32),
           "queries": rng.normal(size=(num_q, 5)).astype(np.float32)}
  return places.TrainPlaces.build(ds, 10.0, 25.0), feats, db_utm, q_utm


def recording_embed(feats, calls):
  def embed(part, idx):
    calls.append((part, np.asarray(idx)))
    return feats[part][idx]
  return embed


def test_compute_pairs_picks_the_nearest_positive_in_feature_space():
  train, feats, db_utm, q_utm = toy_train()
  calls = []
  pairs = mining.compute_pairs(train, recording_embed(feats, calls), np.random.default_rng(0),
                               mining.MiningConfig(queries_per_epoch=12), search)
  assert len(pairs) == 12 and len(set(pairs.queries.tolist())) == 12  # without replacement
  assert pairs.negatives is None and pairs.self_pairs is None
  for qi, pi in zip(pairs.queries, pairs.positives):
    hard = np.flatnonzero(np.abs(db_utm[:, 0] - q_utm[qi, 0]) <= 10.0)
    d = ((feats["database"][hard] - feats["queries"][qi]) ** 2).sum(1)
    assert pi == hard[np.argmin(d)]
  # random mode embeds only the sampled queries and their positives
  embedded_db = next(idx for part, idx in calls if part == "database")
  near = np.abs(db_utm[:, 0][:, None] - q_utm[pairs.queries, 0][None]).min(1) <= 10.0
  assert set(embedded_db.tolist()) == set(np.flatnonzero(near).tolist())


def brute_force_negatives(q_feats, cand_feats, cand_ids, soft_sets, m):
  out = []
  for i, q in enumerate(q_feats):
    d = ((cand_feats.astype(np.float64) - q) ** 2).sum(1)
    order = [cand_ids[j] for j in np.argsort(d, kind="stable") if cand_ids[j] not in soft_sets[i]]
    out.append(order[:m])
  return np.array(out)


@pytest.mark.parametrize("backend", search.BACKENDS)
def test_hard_negatives_match_brute_force_and_faiss_per_query(backend):
  rng = np.random.default_rng(4)
  cand_ids = np.sort(rng.choice(500, 120, replace=False))
  cand_feats = rng.normal(size=(120, 8)).astype(np.float32)
  q_feats = rng.normal(size=(37, 8)).astype(np.float32)
  # soft positives: some of them among the nearest candidates, to be skipped
  soft_sets = [set(rng.choice(cand_ids, rng.integers(0, 6), replace=False).tolist())
               for _ in range(37)]
  counts = [len(s) for s in soft_sets]
  indptr = np.concatenate([[0], np.cumsum(counts)])
  soft = places.Neighbors(indptr, np.concatenate([sorted(s) for s in soft_sets] + [[]]).astype(np.int64))
  searcher = types.SimpleNamespace(nearest_among=search.nearest_among,
                                   masked_knn=functools.partial(search.masked_knn, backend=backend))
  got = mining.hard_negatives(q_feats, cand_feats, cand_ids, soft, 3, searcher)
  np.testing.assert_array_equal(got, brute_force_negatives(q_feats, cand_feats, cand_ids, soft_sets, 3))
  # the original: one faiss index over the pool minus the query's soft positives
  for i in range(37):
    keep = np.array([c not in soft_sets[i] for c in cand_ids])
    index = faiss.IndexFlatL2(8)
    index.add(cand_feats[keep])
    _, j = index.search(q_feats[i:i + 1], 3)
    np.testing.assert_array_equal(got[i], cand_ids[keep][j[0]])


def soft_sets_of(train, queries):
  rows = {int(q): r for r, q in enumerate(train.query_ids)}
  return [set(train.soft_positives[rows[int(q)]].tolist()) for q in queries]


def test_full_mining_negatives_are_the_nearest_in_the_database():
  train, feats, _, _ = toy_train()
  config = mining.MiningConfig(12, "full", neg_samples_num=1, negs_num_per_query=2,
                               pair_negative=True)
  pairs = mining.compute_pairs(train, recording_embed(feats, []), np.random.default_rng(1), config,
                               search)
  assert pairs.negatives.shape == (12, 2)
  want = brute_force_negatives(feats["queries"][pairs.queries], feats["database"], np.arange(40),
                               soft_sets_of(train, pairs.queries), 2)
  np.testing.assert_array_equal(pairs.negatives, want)


def test_partial_mining_uses_one_shared_pool():
  train, feats, _, _ = toy_train(num_db=200, num_q=60)
  calls = []
  config = mining.MiningConfig(20, "partial", neg_samples_num=30, negs_num_per_query=2,
                               pair_negative=True)
  pairs = mining.compute_pairs(train, recording_embed(feats, calls), np.random.default_rng(2),
                               config, search)
  # the epoch's pool: drawn once, after the queries, from the same generator
  rng = np.random.default_rng(2)
  mining.sample_queries(rng, len(train.query_ids), 20)
  pool = np.sort(rng.choice(200, 30, replace=False))
  embedded = next(idx for part, idx in calls if part == "database")
  assert set(pool.tolist()) <= set(embedded.tolist())
  want = brute_force_negatives(feats["queries"][pairs.queries], feats["database"][pool], pool,
                               soft_sets_of(train, pairs.queries), 2)
  np.testing.assert_array_equal(pairs.negatives, want)


def test_random_negatives_are_distinct_and_outside_soft_positives():
  train, _, _, _ = toy_train()
  soft = train.soft_positives
  negs = mining.random_negatives(np.random.default_rng(0), 40, soft, 5)
  assert negs.shape == (len(soft), 5)
  for i, row in enumerate(negs):
    assert len(set(row.tolist())) == 5 and not set(row.tolist()) & set(soft[i].tolist())
  many = mining.random_negatives(np.random.default_rng(1), 40, soft.subset(np.zeros(400, int)), 3)
  allowed = set(range(40)) - set(soft[0].tolist())
  assert set(many.ravel().tolist()) == allowed  # every allowed image gets drawn
  with pytest.raises(ValueError, match="fewer than negs_num_per_query"):
    mining.random_negatives(np.random.default_rng(0), 40, soft, 40)


def test_negatives_without_pair_negative_become_self_pairs():
  train, feats, _, _ = toy_train(num_db=200, num_q=30)
  embed = recording_embed(feats, [])
  rand = mining.compute_pairs(train, embed, np.random.default_rng(0),
                              mining.MiningConfig(12, "random", neg_samples_num=5), search)
  assert rand.negatives is None and len(rand.self_pairs) == 5 and len(rand) == 17
  every_soft = set().union(*soft_sets_of(train, rand.queries))
  assert not set(rand.self_pairs.tolist()) & every_soft
  full = mining.compute_pairs(train, embed, np.random.default_rng(0),
                              mining.MiningConfig(12, "full", neg_samples_num=5,
                                                  negs_num_per_query=2), search)
  paired = mining.compute_pairs(train, embed, np.random.default_rng(0),
                                mining.MiningConfig(12, "full", neg_samples_num=5,
                                                    negs_num_per_query=2, pair_negative=True),
                                search)
  np.testing.assert_array_equal(full.self_pairs, np.unique(paired.negatives))


def test_pick_negatives_keeps_one_unique_negative_per_item():
  negatives = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 2, 3], [5, 6, 7]])
  batches = np.array([[0, 1, 2, 3], [4, 0, 1, 2]])
  got = mining.pick_negatives(batches, negatives)
  # 4th item: all of its negatives taken by earlier items -> falls back to its first
  assert got.tolist() == [[1, 2, 3, 1], [5, 1, 2, 3]]
  assert mining.pick_negatives(batches, negatives[:, :1]).tolist() == [[1, 1, 1, 1], [5, 1, 1, 1]]


def test_sample_queries_falls_back_to_replacement():
  rows = mining.sample_queries(np.random.default_rng(0), 5, 12)
  assert len(rows) == 12 and rows.max() < 5


def test_masked_knn_backends_exclude_the_same_rows_as_brute_force():
  rng = np.random.default_rng(6)
  db = rng.normal(size=(90, 6)).astype(np.float32)
  q = rng.normal(size=(25, 6)).astype(np.float32)
  excluded = np.full((25, 9), -1)
  for i in range(25):
    k = rng.integers(0, 10)
    excluded[i, :k] = rng.choice(90, k, replace=False)
  d = ((q[:, None].astype(np.float64) - db[None]) ** 2).sum(-1)
  for i in range(25):
    d[i, excluded[i][excluded[i] >= 0]] = np.inf
  want = np.argsort(d, axis=1, kind="stable")[:, :5]
  for backend in search.BACKENDS:
    dist, idx = search.masked_knn(q, db, excluded, 5, backend)
    np.testing.assert_array_equal(idx, want, err_msg=backend)
    np.testing.assert_allclose(dist, np.take_along_axis(d, want, 1), rtol=1e-4, atol=1e-4)
