"""ArrayRecord datasets written by the tfds builder: same places, same pixels, same descriptors."""

import dataclasses
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorflow_datasets")

import jax  # noqa: E402

from data_pipelines import datasets, loader, places, synthetic  # noqa: E402
from data_pipelines.tfds import load_records, prepare, records  # noqa: E402
from tests.conftest import REPO, TINY_SYNTHETIC  # noqa: E402

SPLITS = ("train", "val", "test")
OPTIONS = loader.LoaderOptions(image_size=(32, 48), num_threads=2)


@pytest.fixture(scope="module")
def data_dir(tiny_root, tmp_path_factory) -> str:
  """The tiny synthetic dataset prepared as records, 3 files per split (order across files)."""
  out = str(tmp_path_factory.mktemp("tfds"))
  prepare.prepare("synthetic", tiny_root, out, synthetic_config=TINY_SYNTHETIC, num_shards=3)
  return out


def both(tiny_root, data_dir, split):
  return (datasets.load_split(tiny_root, "synthetic", split, TINY_SYNTHETIC),
          load_records(data_dir, "synthetic", split, TINY_SYNTHETIC))


@pytest.mark.parametrize("split", SPLITS)
def test_records_hold_the_folder_dataset(tiny_root, data_dir, split):
  files, recs = both(tiny_root, data_dir, split)
  assert (recs.name, recs.split) == ("synthetic", split)
  assert recs.database_paths == files.database_paths
  assert recs.queries_paths == files.queries_paths
  assert recs.database_utms.dtype == np.float64
  np.testing.assert_array_equal(recs.database_utms, files.database_utms)
  np.testing.assert_array_equal(recs.queries_utms, files.queries_utms)
  assert recs.extras == files.extras == {}
  assert len(os.listdir(recs.root)) > 3  # records live in the prepared folder
  for part in records.PARTS:
    source = recs.images(part)
    paths = files.database_paths if part == "database" else files.queries_paths
    utms = files.database_utms if part == "database" else files.queries_utms
    assert len(source) == len(paths)
    for i, path in enumerate(paths):
      record = source.record(i)
      # record i is image i: the original bytes, path, exact UTM, no extras
      with open(files.abs_path(path), "rb") as f:
        assert source.encoded(i) == f.read()
      assert record["path"].decode() == path == source.name(i)
      np.testing.assert_array_equal(record["utm"], utms[i])
      assert json.loads(record["extras"]) == {}
      np.testing.assert_array_equal(np.asarray(source.open(i)),
                                    np.asarray(files.images(part).open(i)))


def test_embedder_gives_identical_descriptors(tiny_root, data_dir):
  from tests.conftest import tiny_network
  from vgssl_jax import sharding
  from vgssl_jax.evaluation.embedder import Embedder
  from vgssl_jax.models.network import init_variables
  model = tiny_network()
  variables = init_variables(model, jax.random.key(0), OPTIONS.image_size)
  embed = Embedder(model, sharding.make_mesh(1), 8, OPTIONS, progress=False)
  files, recs = both(tiny_root, data_dir, "test")
  for part in records.PARTS:
    want = embed(variables, files.images(part))
    got = embed(variables, recs.images(part))
    assert want.shape == (len(files.images(part)), 16)
    assert np.array_equal(got, want)


def test_a_grain_worker_process_reads_the_records(tiny_root, data_dir):
  from absl import flags
  if not flags.FLAGS.is_parsed():  # grain's worker processes read its absl flags
    flags.FLAGS.mark_as_parsed()
  files, recs = both(tiny_root, data_dir, "val")
  source = recs.images("database")
  source.open(0)  # an open reader must not travel to the worker
  clone = pickle.loads(pickle.dumps(source))
  assert clone == source and not clone._reader
  indices = np.arange(len(source))[::-1]
  workers = dataclasses.replace(OPTIONS, num_workers=1)
  got = np.concatenate([b["views"] for b in loader.image_dataset(source, indices, 4, workers)])
  want = np.concatenate([b["views"] for b in loader.image_dataset(files.images("database"),
                                                                  indices, 4, OPTIONS)])
  assert got.shape == want.shape and len(got) == len(source)
  np.testing.assert_array_equal(got, want)


def test_missing_dataset_split_or_configuration_says_how_to_prepare(tiny_root, tmp_path):
  with pytest.raises(places.DatasetError, match="data_pipelines.tfds.prepare --name synthetic"):
    load_records(str(tmp_path / "none"), "synthetic", "test", TINY_SYNTHETIC)
  out = str(tmp_path / "tfds")
  prepare.prepare("synthetic", tiny_root, out, ["test"], synthetic_config=TINY_SYNTHETIC)
  with pytest.raises(places.DatasetError, match="--splits test,val"):
    load_records(out, "synthetic", "val", TINY_SYNTHETIC)
  with pytest.raises(places.DatasetError, match="another synthetic configuration"):
    load_records(out, "synthetic", "test", dataclasses.replace(TINY_SYNTHETIC, seed=2))
  # asking for another split keeps the prepared ones
  prepare.prepare("synthetic", tiny_root, out, ["val"], synthetic_config=TINY_SYNTHETIC)
  assert load_records(out, "synthetic", "val", TINY_SYNTHETIC).num_queries == 8
  assert load_records(out, "synthetic", "test", TINY_SYNTHETIC).num_queries == 8
  with pytest.raises(places.DatasetError, match="available"):
    prepare.prepare("synthetic", tiny_root, out, ["tset"], synthetic_config=TINY_SYNTHETIC)


def test_extras_are_stored_per_image(tiny_root, tmp_path, monkeypatch):
  """Per-image extras ("<part>_<field>" arrays) round-trip through records and the index."""
  load_split = datasets.load_split

  def with_extras(root, name, split, config=None):
    # as raw MSLS test: str keys, bool subtask flags, no GPS
    place = load_split(root, name, split, config)
    extras = {"queries_subtask": np.arange(place.num_queries) % 3 == 1,
              "database_key": np.array([f"k{i}" for i in range(place.num_database)])}
    return dataclasses.replace(place, queries_utms=np.full_like(place.queries_utms, np.nan),
                               extras=extras)

  monkeypatch.setattr(datasets, "load_split", with_extras)
  out = str(tmp_path / "tfds")
  prepare.prepare("synthetic", tiny_root, out, ["test"], synthetic_config=TINY_SYNTHETIC)
  want = with_extras(tiny_root, "synthetic", "test", TINY_SYNTHETIC).extras
  got = load_records(out, "synthetic", "test", TINY_SYNTHETIC)
  assert sorted(got.extras) == sorted(want)
  for key in want:
    assert got.extras[key].dtype.kind == want[key].dtype.kind
    np.testing.assert_array_equal(got.extras[key], want[key])
  assert json.loads(got.images("queries").record(4)["extras"]) == {"subtask": True}
  assert not got.has_gps and np.isnan(got.queries_utms).all()
  assert np.isnan(got.images("queries").record(0)["utm"]).all()
  assert json.loads(got.images("database").record(2)["extras"]) == {"key": "k2"}
  with pytest.raises(places.DatasetError, match="'<part>_<field>'"):
    records.part_extras({"subtask": np.zeros(3)}, "queries")


def test_the_project_imports_without_tensorflow_datasets():
  code = ("import sys; import data_pipelines.tfds, data_pipelines.datasets, data_pipelines.loader; "
          "assert 'tensorflow_datasets' not in sys.modules")
  subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_prepare_command_line(tmp_path):
  root, out = str(tmp_path / "datasets"), str(tmp_path / "tfds")
  small = synthetic.SyntheticConfig(seed=3, image_size=(16, 24), streets=(1, 1, 1),
                                    street_length_m=20.0, queries_per_street=(2, 2, 2))
  synthetic.ensure_dataset(root, "synthetic", small)
  # converts the configuration of the folder (not the default one, which would regenerate it)
  result = subprocess.run(
      [sys.executable, "-m", "data_pipelines.tfds.prepare", "--name", "synthetic", "--root", root,
       "--data_dir", out, "--splits", "test"],
      cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert "vg_places-test_database.array_record" in result.stdout and "MiB" in result.stdout
  assert load_records(out, "synthetic", "test", small).num_database == 4
  result = subprocess.run(
      [sys.executable, "-m", "data_pipelines.tfds.prepare", "--name", "absent", "--root", root,
       "--data_dir", out], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and "absent" in result.stderr and "Traceback" not in result.stderr
  bad = os.path.join(root, "bad", "images", "test")
  for part, name in (("database", "@abc@def@10@S@.jpg"), ("queries", "@1.0@2.0@10@S@.jpg")):
    os.makedirs(os.path.join(bad, part))
    Image.new("RGB", (8, 8)).save(os.path.join(bad, part, name))
  result = subprocess.run(
      [sys.executable, "-m", "data_pipelines.tfds.prepare", "--name", "bad", "--root", root,
       "--data_dir", out], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
  assert "@abc@def@10@S@.jpg" in result.stderr
  assert not os.path.exists(os.path.join(out, records.BUILDER_NAME, "bad"))  # no empty folders


def test_any_folder_in_the_at_layout(tmp_path):
  root, out = str(tmp_path / "datasets"), str(tmp_path / "tfds")
  small = synthetic.SyntheticConfig(seed=3, image_size=(16, 24), streets=(1, 1, 1),
                                    street_length_m=20.0, queries_per_street=(2, 2, 2))
  synthetic.ensure_dataset(root, "synthetic", small)
  os.rename(os.path.join(root, "synthetic"), os.path.join(root, "mine"))
  prepare.prepare("mine", root, out)  # every split found
  files = datasets.load_split(root, "mine", "val")
  mine = load_records(out, "mine", "val")
  assert mine.queries_paths == files.queries_paths and mine.num_database == 4
  np.testing.assert_array_equal(np.asarray(mine.images("queries").open(1)),
                                np.asarray(files.images("queries").open(1)))
