"""Raw MSLS: official im2im splits, per-city positives, official metrics, prediction file."""

import math
import os

import numpy as np
import pytest
from PIL import Image

from data_pipelines import msls
from data_pipelines.places import DatasetError, PlaceDataset
from vgssl_jax.evaluation.exports import write_msls_predictions
from vgssl_jax.evaluation.metrics import RECALL_VALUES, msls_metrics

SUBTASKS = ("all", "s2w", "w2s", "o2n", "n2o", "d2n", "n2d")
ALL = {"all"}

# (key, easting, northing, pano, subtask flags that are True). cph and sf use the SAME
# numeric coordinates: only the per-city search keeps them apart.
VAL = {
    ("cph", "database"): [
        ("c_db0", 0, 0, False, {"all", "s2w"}),
        ("c_db1", 10, 0, False, ALL),              # not s2w: no positive of the s2w subtask
        ("c_db2", 100, 0, False, {"all", "s2w", "d2n"}),
        ("c_db3", 5, 0, True, {"all", "s2w"}),     # panorama: excluded
        ("c_db4", 300, 0, False, set()),           # `all` False: excluded
    ],
    ("cph", "query"): [
        ("c_q0", 2, 0, False, {"all", "s2w"}),
        ("c_q1", 100, 3, False, {"all", "d2n"}),
        ("c_q2", 50, 0, False, ALL),     # no cph image within 25 m (sf's s_db1 is at 0 m): dropped
        ("c_q3", 300, 0, False, ALL),    # its only neighbour c_db4 is not `all`: dropped
        ("c_q4", 0, 0, True, ALL),       # panorama: excluded
        ("c_q5", 0, 0, False, set()),    # `all` False: excluded
    ],
    ("sf", "database"): [
        ("s_db0", 2, 0, False, {"all", "s2w"}),    # 0 m from c_q0 if cities were mixed
        ("s_db1", 50, 0, False, ALL),
    ],
    ("sf", "query"): [
        ("s_q0", 0, 0, False, {"all", "s2w"}),
        ("s_q1", 50, 10, False, {"all", "s2w"}),   # its positive s_db1 is not s2w
    ],
}
TRAIN = {
    ("zurich", "database"): [
        ("z_db0", 0, 0, False, ALL),
        ("z_db1", 8, 0, False, set()),   # `all` False: train is not subtask-filtered, kept
        ("z_db2", 4, 0, True, ALL),      # panorama: excluded
    ],
    ("zurich", "query"): [
        ("z_q0", 1, 0, False, ALL),
        ("z_q1", 500, 0, False, ALL),    # no positive: kept in train
        ("z_q2", 0, 0, True, ALL),       # panorama: excluded
    ],
}
TEST = {
    ("miami", "database"): [("m_db0", 0, 0, False, ALL), ("m_db1", 0, 0, False, set())],
    ("miami", "query"): [("m_q0", 0, 0, False, ALL), ("m_q1", 0, 0, False, ALL),
                         ("m_q2", 0, 0, False, set())],
}


def write_part(folder, rows, gps=True, subtask_order=SUBTASKS):
  """One raw MSLS <city>/{query,database} folder with the exact official CSV headers."""
  os.makedirs(os.path.join(folder, "images"), exist_ok=True)
  for i, (key, *_) in enumerate(rows):
    Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(os.path.join(folder, "images", key + ".jpg"))
  def write(name, header, lines):
    with open(os.path.join(folder, name), "w") as f:
      f.write("\n".join([header, *lines]) + "\n")
  write("seq_info.csv", ",key,sequence_key,frame_number",
        [f"{i},{key},seq{i},{i}" for i, (key, *_) in enumerate(rows)])
  write("subtask_index.csv", ",key," + ",".join(subtask_order),
        [f"{i},{key}," + ",".join(str(s in flags) for s in subtask_order)
         for i, (key, _, _, _, flags) in enumerate(rows)])
  if gps:
    write("postprocessed.csv", ",key,easting,northing,unique_cluster,control_panel,night,"
          "view_direction", [f"{i},{key},{e},{n},0,0,False,Forward"
                             for i, (key, e, n, _, _) in enumerate(rows)])
    write("raw.csv", ",key,lon,lat,ca,captured_at,pano",
          [f"{i},{key},12.5,55.6,90.0,1500000000000,{pano}"
           for i, (key, _, _, pano, _) in enumerate(rows)])


@pytest.fixture
def root(tmp_path):
  """msls/ with val cities cph, sf and train city zurich under train_val/, miami under test/."""
  folder = str(tmp_path / "msls")
  for (city, part), rows in VAL.items():
    # sf lists its subtask columns in another order: they must be read by name
    order = tuple(reversed(SUBTASKS)) if city == "sf" else SUBTASKS
    write_part(os.path.join(folder, "train_val", city, part), rows, subtask_order=order)
  for (city, part), rows in TRAIN.items():
    write_part(os.path.join(folder, "train_val", city, part), rows)
  for (city, part), rows in TEST.items():
    write_part(os.path.join(folder, "test", city, part), rows, gps=False)
  return folder


def positives_lists(ds, radius):
  pos = ds.positives(radius)
  return [pos[i].tolist() for i in range(len(pos))]


def test_val_filters_counts_and_paths(root):
  ds = msls.load_msls(root, "val")
  assert ds.name == "msls" and ds.split == "val" and ds.root == root
  assert ds.extras["database_key"].tolist() == ["c_db0", "c_db1", "c_db2", "s_db0", "s_db1"]
  assert ds.extras["queries_key"].tolist() == ["c_q0", "c_q1", "s_q0", "s_q1"]
  assert ds.extras["database_city"].tolist() == ["cph"] * 3 + ["sf"] * 2
  assert ds.extras["queries_city"].tolist() == ["cph", "cph", "sf", "sf"]
  assert ds.database_paths[0] == "train_val/cph/database/images/c_db0.jpg"
  assert ds.queries_paths[3] == "train_val/sf/query/images/s_q1.jpg"
  assert ds.images("queries").open(3).size == (8, 8)
  assert ds.database_utms.dtype == np.float64 and ds.database_utms.shape == (5, 2)
  # sf is the second val city: its eastings are moved by one city offset
  np.testing.assert_array_equal(ds.database_utms[3], [2 + msls.CITY_OFFSET_M, 0])
  np.testing.assert_array_equal(ds.queries_utms[1], [100, 3])
  # subtask flags read by name (sf wrote them in reverse column order)
  assert ds.extras["queries_subtask_s2w"].tolist() == [True, False, True, True]
  assert ds.extras["queries_subtask_d2n"].tolist() == [False, True, False, False]
  assert ds.extras["database_subtask_s2w"].tolist() == [True, False, True, True, False]
  assert ds.extras["queries_subtask_all"].all() and ds.extras["database_subtask_all"].all()
  assert ds.has_gps


def test_positives_are_per_city(root):
  ds = msls.load_msls(root, "val")
  # Mixed cities would give c_q0 also s_db0 (index 3) and s_q0 also c_db0, c_db1.
  assert positives_lists(ds, 25.0) == [[0, 1], [2], [3], [4]]
  assert positives_lists(ds, 2.5) == [[0], [], [3], []]


def test_train_keeps_all_queries_and_ignores_subtasks(root):
  ds = msls.load_msls(root, "train")
  assert ds.extras["database_key"].tolist() == ["z_db0", "z_db1"]   # pano gone, `all`=False kept
  assert ds.extras["queries_key"].tolist() == ["z_q0", "z_q1"]      # no-positive query kept
  assert ds.extras["database_subtask_all"].tolist() == [True, False]
  # zurich is train city 10
  np.testing.assert_array_equal(ds.queries_utms[0], [1 + 10 * msls.CITY_OFFSET_M, 0])
  assert positives_lists(ds, 10.0) == [[0, 1], []]
  # The official train mode never reads subtask_index.csv.
  os.remove(os.path.join(root, "train_val", "zurich", "query", "subtask_index.csv"))
  ds = msls.load_msls(root, "train")
  assert ds.num_queries == 2 and "queries_subtask_all" not in ds.extras


def test_test_split_has_no_gps(root, tmp_path):
  ds = msls.load_msls(root, "test")
  assert isinstance(ds, PlaceDataset)
  assert ds.extras["database_key"].tolist() == ["m_db0"]
  assert ds.extras["queries_key"].tolist() == ["m_q0", "m_q1"]
  assert ds.queries_paths[0] == "test/miami/query/images/m_q0.jpg"
  assert np.isnan(ds.database_utms).all() and ds.queries_utms.shape == (2, 2)
  assert not ds.has_gps
  with pytest.raises(DatasetError, match="no coordinates"):
    ds.positives(25.0)
  with pytest.raises(DatasetError, match="challenge"):
    msls_metrics(np.zeros((2, 1), np.int64), ds, ks=(1,))
  # ... but its predictions can be written for the challenge server
  path = str(tmp_path / "out" / "test.csv")
  write_msls_predictions(path, np.zeros((2, 1), np.int64), ds)
  assert open(path).read() == "m_q0 m_db0\nm_q1 m_db0\n"


# Predictions (database indices, best first) for the val queries c_q0, c_q1, s_q0, s_q1,
# whose 25 m positives are {0, 1}, {2}, {3}, {4}.
PREDICTIONS = np.array([
    [2, 0, 0, 1, 4],   # hits at ranks 2 and 4; the repeated 0 at rank 3 is not a second hit
    [2, 0, 1, 3, 4],   # hit at rank 1
    [0, 1, 2, 4, 3],   # hit at rank 5
    [0, 1, 2, 3, 1],   # no hit
])


def test_metrics_match_hand_computed_values(root):
  ds = msls.load_msls(root, "val")
  m = msls_metrics(PREDICTIONS, ds, ks=(1, 3, 5))
  # recall@K = queries with a positive in the top K / 4:
  #   @1: c_q1 -> 1/4;  @3: c_q0, c_q1 -> 2/4;  @5: c_q0, c_q1, s_q0 -> 3/4
  assert m["queries"] == 4
  assert m["recall@1"] == pytest.approx(25.0)
  assert m["recall@3"] == pytest.approx(50.0)
  assert m["recall@5"] == pytest.approx(75.0)
  # AP@K = sum over hits of (hits so far / rank) / min(#positives, K):
  #   c_q0 (2 positives): @1 0;  @3 (1/2) / 2 = 0.25;  @5 (1/2 + 2/4) / 2 = 0.5
  #   c_q1 (1 positive):  @1 = @3 = @5 = (1/1) / 1 = 1
  #   s_q0 (1 positive):  @1 = @3 = 0;  @5 (1/5) / 1 = 0.2
  #   s_q1: 0
  # map@1 = (0 + 1 + 0 + 0) / 4 = 25%;  map@3 = (0.25 + 1) / 4 = 31.25%;
  # map@5 = (0.5 + 1 + 0.2) / 4 = 42.5%
  assert m["map@1"] == pytest.approx(25.0)
  assert m["map@3"] == pytest.approx(31.25)
  assert m["map@5"] == pytest.approx(42.5)


def test_metrics_per_subtask(root):
  ds = msls.load_msls(root, "val")
  m = msls_metrics(PREDICTIONS, ds, ks=(1, 3, 5))
  assert sorted(m["subtasks"]) == sorted(SUBTASKS[1:])
  # s2w: queries c_q0, s_q0, s_q1 and the s2w database {0, 2, 3}. c_q0 keeps one positive
  # {0}; s_q0 keeps {3}; s_q1 loses its only positive (4), so it leaves the denominator.
  #   c_q0: hit at rank 2 (rank 4 is no longer positive): AP@3 = AP@5 = (1/2) / 1 = 0.5
  #   s_q0: hit at rank 5: AP@5 = (1/5) / 1 = 0.2
  # recall = 0/2, 1/2, 2/2; map@3 = (0.5 + 0) / 2 = 25%; map@5 = (0.5 + 0.2) / 2 = 35%
  s2w = m["subtasks"]["s2w"]
  assert s2w["queries"] == 2
  assert [s2w[f"recall@{k}"] for k in (1, 3, 5)] == pytest.approx([0.0, 50.0, 100.0])
  assert [s2w[f"map@{k}"] for k in (1, 3, 5)] == pytest.approx([0.0, 25.0, 35.0])
  # d2n: only c_q1, whose positive c_db2 is d2n and ranked first
  d2n = m["subtasks"]["d2n"]
  assert d2n["queries"] == 1
  assert [d2n[f"{x}@{k}"] for x in ("recall", "map") for k in (1, 3, 5)] == [100.0] * 6
  # w2s has no query: 0 queries and NaN metrics
  w2s = m["subtasks"]["w2s"]
  assert w2s["queries"] == 0 and all(math.isnan(w2s[f"map@{k}"]) for k in (1, 3, 5))
  assert math.isnan(w2s["recall@1"])


def naive_metrics(predictions, positives, ks):
  """The definitions written out query by query, on Python lists."""
  out = {}
  scored = [(list(row), set(pos)) for row, pos in zip(predictions, positives) if pos]
  for k in ks:
    out[f"recall@{k}"] = 100 * np.mean([bool(set(row[:k]) & pos) for row, pos in scored])
    aps = []
    for row, pos in scored:
      hits, score = 0, 0.0
      for i, p in enumerate(row[:k]):
        if p in pos and p not in row[:i]:
          hits += 1
          score += hits / (i + 1)
      aps.append(score / min(len(pos), k))
    out[f"map@{k}"] = 100 * np.mean(aps)
  out["queries"] = len(scored)
  return out


def test_metrics_match_naive_definition_on_random_data():
  rng = np.random.default_rng(0)
  db = rng.uniform(0, 200, (60, 2))
  q = rng.uniform(0, 200, (40, 2))
  ds = PlaceDataset("msls", "val", "/nowhere", tuple(f"d{i}" for i in range(60)),
                    tuple(f"q{i}" for i in range(40)), db, q)
  predictions = rng.integers(0, 60, (40, 20))   # with repeats
  predictions[:, 0] = np.argmin(((q[:, None] - db[None]) ** 2).sum(-1), axis=1)
  pos = ds.positives(25.0)
  want = naive_metrics(predictions.tolist(), [pos[i].tolist() for i in range(40)], RECALL_VALUES)
  got = msls_metrics(predictions, ds)
  assert 0 < got["queries"] < 40 and got["subtasks"] == {}
  for key, value in want.items():
    assert got[key] == pytest.approx(value), key


def test_metrics_rejects_bad_predictions(root):
  ds = msls.load_msls(root, "val")
  with pytest.raises(ValueError, match="columns"):
    msls_metrics(PREDICTIONS[:, :2], ds, ks=(1, 5))
  with pytest.raises(ValueError, match="shape"):
    msls_metrics(PREDICTIONS[:3], ds)
  with pytest.raises(ValueError, match="not a database index"):
    msls_metrics(PREDICTIONS + 3, ds, ks=(1, 5))
  # -1 (faiss padding) is an empty slot, never a hit
  padded = np.where(np.arange(5) >= 1, -1, PREDICTIONS)
  assert msls_metrics(padded, ds, ks=(1, 5))["recall@5"] == pytest.approx(25.0)


def test_prediction_file_round_trip(root, tmp_path):
  ds = msls.load_msls(root, "val")
  path = str(tmp_path / "pred.csv")
  write_msls_predictions(path, PREDICTIONS, ds, k=2)
  rows = np.loadtxt(path, dtype=str, ndmin=2)   # as the official evaluate.py reads it
  assert rows.tolist() == [["c_q0", "c_db2", "c_db0"], ["c_q1", "c_db2", "c_db0"],
                           ["s_q0", "c_db0", "c_db1"], ["s_q1", "c_db0", "c_db1"]]
  # k beyond K writes K columns; keys map back to the same indices
  fixed = PREDICTIONS.copy()
  fixed[0] = [2, 0, 3, 1, 4]
  fixed[3] = [0, 1, 2, 3, 4]
  write_msls_predictions(path, fixed, ds)
  rows = np.loadtxt(path, dtype=str, ndmin=2)
  assert rows.shape == (4, 6) and rows[:, 0].tolist() == ds.extras["queries_key"].tolist()
  index = {k: i for i, k in enumerate(ds.extras["database_key"])}
  np.testing.assert_array_equal([[index[k] for k in row[1:]] for row in rows], fixed)
  with open(path) as f:
    assert f.readline() == "c_q0 c_db2 c_db0 s_db0 c_db1 s_db1\n"


def test_prediction_file_rejects_duplicates_and_padding(root, tmp_path):
  ds = msls.load_msls(root, "val")
  with pytest.raises(ValueError, match=r"query 0 \(c_q0\) has duplicate"):
    write_msls_predictions(str(tmp_path / "p.csv"), PREDICTIONS, ds, k=3)
  with pytest.raises(ValueError, match="not a database index"):
    write_msls_predictions(str(tmp_path / "p.csv"), np.full((4, 2), -1), ds)


def test_is_raw_msls(root, tmp_path):
  assert msls.is_raw_msls(root)
  at = tmp_path / "at" / "msls" / "images" / "val" / "queries"
  at.mkdir(parents=True)
  assert not msls.is_raw_msls(str(tmp_path / "at" / "msls"))
  assert not msls.is_raw_msls(str(tmp_path / "missing"))


def test_missing_csv(root):
  os.remove(os.path.join(root, "train_val", "cph", "query", "raw.csv"))
  with pytest.raises(DatasetError, match=r"cph/query/raw\.csv is missing"):
    msls.load_msls(root, "val")


def test_mismatched_keys(root):
  path = os.path.join(root, "train_val", "sf", "database", "postprocessed.csv")
  text = open(path).read().replace("s_db0", "tmp").replace("s_db1", "s_db0").replace("tmp", "s_db1")
  open(path, "w").write(text)
  with pytest.raises(DatasetError, match="row 0 is key 's_db0' in seq_info.csv but 's_db1' in "
                                         "postprocessed.csv"):
    msls.load_msls(root, "val")


def test_malformed_csvs(root):
  path = os.path.join(root, "train_val", "cph", "database", "raw.csv")
  text = open(path).read()
  open(path, "w").write(text.replace(",True\n", ",maybe\n"))
  with pytest.raises(DatasetError, match="'pano' row 3 is 'maybe'"):
    msls.load_msls(root, "val")
  open(path, "w").write(text)
  path = os.path.join(root, "train_val", "sf", "query", "postprocessed.csv")
  text = open(path).read()
  open(path, "w").write(text.replace("easting", "east"))
  with pytest.raises(DatasetError, match=r"\['easting'\] not found"):
    msls.load_msls(root, "val")


def test_no_city_present(tmp_path):
  folder = str(tmp_path / "msls")
  write_part(os.path.join(folder, "train_val", "zurich", "query"), TRAIN[("zurich", "query")])
  with pytest.raises(DatasetError, match=r"expected some of \['cph', 'sf'\], found \['zurich'\]"):
    msls.load_msls(folder, "val")
  with pytest.raises(DatasetError, match="found nothing"):
    msls.load_msls(folder, "test")
  with pytest.raises(DatasetError, match="unknown MSLS split"):
    msls.load_msls(folder, "validation")
