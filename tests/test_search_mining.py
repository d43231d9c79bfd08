import faiss
import numpy as np
import pytest

from data_pipelines import mining, places, search


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


def test_compute_pairs_picks_the_nearest_positive_in_feature_space():
  rng = np.random.default_rng(3)
  db_utm = np.stack([np.arange(40) * 4.0, np.zeros(40)], 1)
  q_utm = np.stack([rng.uniform(0, 160, 30), np.zeros(30)], 1)
  ds = places.PlaceDataset("toy", "train", "/nonexistent", tuple(f"d{i}" for i in range(40)),
                           tuple(f"q{i}" for i in range(30)), db_utm, q_utm)
  train = places.TrainPlaces.build(ds, 10.0, 25.0)
  db_feat = rng.normal(size=(40, 5)).astype(np.float32)
  q_feat = rng.normal(size=(30, 5)).astype(np.float32)
  calls = []

  def embed(part, idx):
    calls.append((part, np.asarray(idx)))
    return (db_feat if part == "database" else q_feat)[idx]
  pairs = mining.compute_pairs(train, embed, np.random.default_rng(0), 12)
  assert len(pairs) == 12 and len(set(pairs.queries.tolist())) == 12  # without replacement
  for qi, pi in zip(pairs.queries, pairs.positives):
    hard = np.flatnonzero(np.abs(db_utm[:, 0] - q_utm[qi, 0]) <= 10.0)
    d = ((db_feat[hard] - q_feat[qi]) ** 2).sum(1)
    assert pi == hard[np.argmin(d)]
  # only the sampled queries and their positives are embedded
  embedded_db = next(idx for part, idx in calls if part == "database")
  assert set(embedded_db.tolist()) <= set(np.flatnonzero(
      np.abs(db_utm[:, 0][:, None] - q_utm[pairs.queries, 0][None]).min(1) <= 10.0).tolist())


def test_sample_queries_falls_back_to_replacement():
  rows = mining.sample_queries(np.random.default_rng(0), 5, 12)
  assert len(rows) == 12 and rows.max() < 5
