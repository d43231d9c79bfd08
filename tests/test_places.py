import os

import numpy as np
import pytest

from data_pipelines import formats, places


def brute_force(queries, database, radius):
  d = np.sqrt(((queries[:, None, :] - database[None, :, :]) ** 2).sum(-1))
  return [np.flatnonzero(row <= radius) for row in d]


@pytest.mark.parametrize("radius", [10.0, 25.0])
def test_radius_neighbors_matches_brute_force(radius):
  rng = np.random.default_rng(0)
  database = rng.uniform(0, 300, size=(700, 2)) + [549000, 4178000]
  queries = rng.uniform(-20, 320, size=(250, 2)) + [549000, 4178000]
  # points exactly on the radius are positives (sklearn's radius search is inclusive)
  queries[0] = database[3] + [radius, 0.0]
  got = places.radius_neighbors(queries, database, radius, chunk=37)
  want = brute_force(queries, database, radius)
  assert len(got) == len(queries)
  for i in range(len(queries)):
    np.testing.assert_array_equal(got[i], want[i])
  assert 3 in got[0]


def test_radius_neighbors_empty_and_far():
  got = places.radius_neighbors(np.array([[0.0, 0.0]]), np.array([[100.0, 100.0]]), 10)
  assert got.counts.tolist() == [0]
  got = places.radius_neighbors(np.zeros((0, 2)), np.array([[1.0, 1.0]]), 10)
  assert len(got) == 0


def test_neighbors_subset_and_padded():
  n = places.Neighbors(np.array([0, 2, 2, 5]), np.array([1, 4, 0, 2, 3]))
  s = n.subset(np.array([2, 0, 1]))
  assert [s[i].tolist() for i in range(3)] == [[0, 2, 3], [1, 4], []]
  assert n.padded().tolist() == [[1, 4, -1], [-1, -1, -1], [0, 2, 3]]


def _write(folder, utms):
  os.makedirs(folder, exist_ok=True)
  for e, n in utms:
    with open(os.path.join(folder, formats.format_name(e, n)), "wb") as f:
      f.write(b"not read here")


def test_load_at_dataset_and_train_places(tmp_path):
  root = str(tmp_path)
  split = os.path.join(root, "mini", "images", "train")
  _write(os.path.join(split, "database"), [(0, 0), (5, 0), (100, 0)])
  _write(os.path.join(split, "queries"), [(1, 0), (60, 0), (99, 0)])
  ds = places.load_at_dataset(root, "mini", "train")
  assert ds.num_database == 3 and ds.num_queries == 3
  assert ds.database_paths[0].startswith(os.path.join("images", "train", "database"))
  assert [ds.positives(25.0)[i].tolist() for i in range(3)] == [[0, 1], [], [2]]
  train = places.TrainPlaces.build(ds, 10.0, 25.0)
  assert train.query_ids.tolist() == [0, 2]  # the query at 60 m has no 10 m positive
  assert train.dropped == 1
  assert [train.hard_positives[i].tolist() for i in range(2)] == [[0, 1], [2]]


def test_dataset_errors_name_the_problem(tmp_path):
  root = str(tmp_path)
  with pytest.raises(places.DatasetError, match="not found"):
    places.load_at_dataset(root, "missing", "test")
  os.makedirs(os.path.join(root, "mini", "images", "test", "database"))
  os.makedirs(os.path.join(root, "mini", "images", "test", "queries"))
  with pytest.raises(places.DatasetError, match="available splits: \\['test'\\]"):
    places.load_at_dataset(root, "mini", "val")
  with pytest.raises(places.DatasetError, match="holds no images"):
    places.load_at_dataset(root, "mini", "test")
  _write(os.path.join(root, "mini", "images", "test", "database"), [(0, 0)])
  with open(os.path.join(root, "mini", "images", "test", "queries", "IMG_0001.jpg"), "wb"):
    pass
  with pytest.raises(formats.FilenameFormatError, match="IMG_0001.jpg"):
    places.load_at_dataset(root, "mini", "test")


def test_two_folders_with_and_without_coordinates(tmp_path):
  db, q = str(tmp_path / "shots" / "db"), str(tmp_path / "mine" / "q")
  _write(db, [(0, 0), (5, 0), (100, 0)])
  _write(os.path.join(q, "sub"), [(1, 0), (99, 0)])   # searched recursively
  ds = places.load_folders(db, q)
  assert ds.has_gps and ds.num_database == 3 and ds.num_queries == 2
  assert ds.root == str(tmp_path) and ds.queries_paths[0].startswith(os.path.join("mine", "q"))
  assert [ds.positives(25.0)[i].tolist() for i in range(2)] == [[0, 1], [2]]
  plain_db, plain_q = tmp_path / "plain_db", tmp_path / "plain_q"
  for folder, names in ((plain_db, ("a.jpg", "b.png")), (plain_q, ("c.jpg",))):
    folder.mkdir()
    for name in names:
      (folder / name).write_bytes(b"x")
  ds = places.load_folders(str(plain_db), str(plain_q))
  assert not ds.has_gps and ds.num_database == 2 and ds.database_paths == (
      os.path.join("plain_db", "a.jpg"), os.path.join("plain_db", "b.png"))
  with pytest.raises(places.DatasetError, match="no `@` coordinates but other images"):
    (tmp_path / "shots" / "db" / "IMG_1.jpg").write_bytes(b"x")
    places.load_folders(db, q)
  with pytest.raises(places.DatasetError, match="queries_folder has images without `@`"):
    places.load_folders(str(tmp_path / "mine"), str(plain_q))
  with pytest.raises(places.DatasetError, match="database_folder=.*is not a folder"):
    places.load_folders(str(tmp_path / "nowhere"), q)
  (tmp_path / "empty").mkdir()
  with pytest.raises(places.DatasetError, match="queries_folder=.*holds no images"):
    places.load_folders(db, str(tmp_path / "empty"))


def test_neighbors_contains_matches_a_python_loop():
  rng = np.random.default_rng(5)
  rows = [sorted(set(rng.integers(0, 30, rng.integers(0, 6)).tolist())) for _ in range(12)]
  n = places.Neighbors(np.concatenate([[0], np.cumsum([len(r) for r in rows])]),
                       np.array([i for r in rows for i in r], np.int64))
  which = rng.integers(0, 12, 20)
  candidates = rng.integers(-1, 35, (20, 7))  # -1 pads and indices beyond every list
  got = n.contains(which, candidates)
  want = [[c >= 0 and c in rows[w] for c in cands] for w, cands in zip(which, candidates)]
  np.testing.assert_array_equal(got, want)
