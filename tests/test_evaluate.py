"""The evaluation runner end to end: exports, checkpoints, MSLS raw, protocol checks."""

import glob
import json
import os
import shutil

import numpy as np
import pytest

from data_pipelines import datasets, places
from vgssl_jax import checkpoints
from vgssl_jax.errors import ConfigError
from tests.conftest import run_python, tiny_overrides
from tests.test_main import assert_clean_error, main_args
from tests.test_msls import VAL, write_part


def eval_args(workdir, *extra, config="configs/demo.py"):
  return ["-m", "vgssl_jax.evaluate", f"--config={config}", f"--workdir={workdir}", *extra]


def numpy_recalls(queries, database, positives, ns):
  d = ((queries[:, None, :].astype(np.float64) - database[None]) ** 2).sum(-1)
  order = np.argsort(d, axis=1, kind="stable")
  first = np.array([next((r for r, j in enumerate(row) if j in set(positives[i].tolist())),
                         len(row)) for i, row in enumerate(order)])
  return {f"recall@{n}": 100.0 * np.mean(first < n) for n in ns}, first


def test_runner_writes_exports_that_reproduce_its_numbers(tiny_root, tmp_path):
  out = str(tmp_path / "eval")
  proc = run_python(eval_args(out, *tiny_overrides(tiny_root), "--config.eval.num_preds_to_save=2",
                              "--config.eval.save_only_wrong_preds=True"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(os.path.join(out, "results.json")))
  r = results["synthetic"]
  assert (r["queries"], r["database"], r["split"]) == (8, 16, "test")
  exported = np.load(os.path.join(out, "descriptors", "synthetic.npz"))
  ds = places.load_at_dataset(tiny_root, "synthetic", "test")
  assert exported["database_paths"].tolist() == list(ds.database_paths)
  assert exported["queries_paths"].tolist() == list(ds.queries_paths)
  assert exported["database"].shape == (16, 32) and exported["queries"].shape == (8, 32)
  np.testing.assert_allclose(np.linalg.norm(exported["database"], axis=1), 1.0, rtol=1e-5)
  want, first = numpy_recalls(exported["queries"], exported["database"], ds.positives(25.0),
                              (1, 5, 10, 20))
  for key, value in want.items():
    assert r[key] == pytest.approx(value)
  assert r["queries_without_positive"] == int((ds.positives(25.0).counts == 0).sum())
  # one picture per query whose first prediction is wrong
  assert len(glob.glob(os.path.join(out, "preds", "synthetic", "*.jpg"))) == int((first > 0).sum())
  assert os.path.getsize(os.path.join(out, "plots", "synthetic_recall.png")) > 1000
  assert "| model | synthetic |" in open(os.path.join(out, "results.md")).read()


def test_queries_without_a_positive_are_counted_and_many_of_them_warned(caplog):
  from vgssl_jax.evaluation.runner import queries_without_positive
  db = np.array([[0.0, 0.0], [100.0, 0.0]])
  near, far = [[0.0, 5.0]], [[500.0, 500.0]]

  def split(queries):
    return places.PlaceDataset("toy", "test", "", ("a", "b"), tuple("q" * len(queries)), db,
                               np.asarray(queries, np.float64))
  with caplog.at_level("WARNING"):
    assert queries_without_positive(split(near * 19 + far), 25.0) == 1   # 5 %: no warning
    assert not caplog.records
    assert queries_without_positive(split(near + far * 3), 25.0) == 3
  assert "toy/test: 3 of 4 queries have no database image within 25 m" in caplog.text


def test_checkpoint_and_its_export_evaluate_like_the_training_run(tiny_root, tmp_path):
  run = str(tmp_path / "run")
  proc = run_python(main_args(run, *tiny_overrides(tiny_root)))
  assert proc.returncode == 0, proc.stderr[-3000:]
  trained = json.load(open(os.path.join(run, "results.json")))["after"]["synthetic"]

  def evaluate(name, *extra):
    out = str(tmp_path / name)
    proc = run_python(eval_args(out, *tiny_overrides(tiny_root), *extra))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # reading a checkpoint is not news: orbax's read-only warnings are not shown
    assert "read only" not in proc.stderr and "save_interval_steps" not in proc.stderr
    exported = np.load(os.path.join(out, "descriptors", "synthetic.npz"))
    return out, json.load(open(os.path.join(out, "results.json")))["synthetic"], exported

  # the checkpoint's model settings win over the config's (here a wider network)
  out, evaluated, from_checkpoint = evaluate("eval", f"--checkpoint={run}",
                                             "--config.model.width=16")
  for n in (1, 5, 10, 20):
    assert evaluated[f"recall@{n}"] == trained[f"recall@{n}"]
  assert json.load(open(os.path.join(out, "model.json")))["step"] == 2

  out_file = str(tmp_path / "model.safetensors")
  proc = run_python(["-m", "vgssl_jax.export", f"--checkpoint={run}", f"--out={out_file}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  _, _, from_export = evaluate("eval_export", f"--checkpoint={out_file}",
                              "--config.model.width=16")
  # the same weights, bit for bit; and not the weights the network starts from
  _, _, untrained = evaluate("eval_untrained")
  for part in ("database", "queries"):
    np.testing.assert_array_equal(from_export[part], from_checkpoint[part])
    assert np.abs(untrained[part] - from_checkpoint[part]).max() > 1e-3


def test_foreign_checkpoint_folder_is_a_clean_error(tmp_path):
  os.makedirs(tmp_path / "not_a_run")
  proc = run_python(eval_args(str(tmp_path / "out"), f"--checkpoint={tmp_path / 'not_a_run'}"))
  assert_clean_error(proc, "no checkpoint found")
  (tmp_path / "model.txt").write_text("not weights")
  with pytest.raises(ConfigError, match="a file of a kind not read here"):
    checkpoints.resolve(str(tmp_path / "model.txt"))


def test_evaluation_never_overwrites_a_training_run(tmp_path):
  run = tmp_path / "run"
  os.makedirs(run)
  (run / "config.json").write_text("{}")
  (run / "results.json").write_text('{"after": {}}')
  proc = run_python(eval_args(str(run), f"--checkpoint={run}"))
  assert_clean_error(proc, "holds a training run", os.path.join(str(run), "eval"))
  assert (run / "results.json").read_text() == '{"after": {}}'


def write_raw_msls(root):
  for (city, part), rows in VAL.items():
    write_part(os.path.join(root, "msls", "train_val", city, part), rows)


def test_msls_raw_official_metrics_and_prediction_file(tmp_path):
  root = str(tmp_path / "data")
  write_raw_msls(root)
  common = ["--config.data.image_size=32,48", "--config.model.backbone=resnet18conv4",
            "--config.model.width=8", "--config.model.fc_output_dim=16",
            "--config.train.infer_batch_size=8", f"--config.data.root={root}",
            "--config.eval.datasets=msls", "--config.eval.split=val"]
  out = str(tmp_path / "eval")
  # 5 database images / 4 queries (after the official filters) are not the official 18,871 / 740
  assert_clean_error(run_python(eval_args(out, *common)), "18,871", "740", "check_counts=False")
  proc = run_python(eval_args(out, *common, "--config.eval.check_counts=False"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.load(open(os.path.join(out, "results.json")))["msls"]
  assert r["queries"] == 4 and r["database"] == 5
  assert {"recall@1", "map@1", "map@20", "subtasks"} <= set(r)
  assert r["protocol"] == "count check disabled" and r["warnings"]
  assert "s2w" in r["subtasks"]
  rows = [line.split() for line in open(os.path.join(out, "predictions", "msls.txt"))]
  assert sorted(row[0] for row in rows) == ["c_q0", "c_q1", "s_q0", "s_q1"]
  assert all(len(row) == 1 + 5 and len(set(row[1:])) == 5 for row in rows)  # top 20 capped at D


def test_protocol_counts():
  toy = places.PlaceDataset("pitts30k", "test", "/x", ("a",) * 3, ("b",) * 2, np.zeros((3, 2)),
                            np.zeros((2, 2)))
  with pytest.raises(places.DatasetError) as err:
    datasets.check_protocol(toy)
  assert "10,000" in str(err.value) and "6,816" in str(err.value) and "3 database" in str(err.value)
  check = datasets.check_protocol(toy, enabled=False)
  assert check["protocol"] == "count check disabled" and "not comparable" in check["warnings"][0]
  assert datasets.check_protocol(
      places.PlaceDataset("mine", "test", "/x", (), (), np.zeros((0, 2)), np.zeros((0, 2))))[
          "protocol"].startswith("no official")


def test_corrupt_image_stops_evaluation_with_its_name(tiny_root, tmp_path):
  root = str(tmp_path / "data")
  shutil.copytree(os.path.join(tiny_root, "synthetic"), os.path.join(root, "synthetic"))
  victim = sorted(glob.glob(os.path.join(root, "synthetic", "images", "test", "queries", "*")))[0]
  with open(victim, "wb") as f:
    f.write(b"\xff\xd8 truncated")
  overrides = [a if not a.startswith("--config.data.root=") else f"--config.data.root={root}"
               for a in tiny_overrides(tiny_root)]
  assert_clean_error(run_python(eval_args(str(tmp_path / "out"), *overrides)),
                     "cannot read image", os.path.basename(victim))


def test_a_second_evaluation_replaces_the_outputs_of_the_first(tiny_root, tmp_path):
  """Prediction pictures, plots and descriptors are replaced as a whole: no pictures of
  the first evaluation stay beside those of the second; a failed evaluation leaves the
  previous outputs as they were."""
  out = str(tmp_path / "eval")
  pictures = os.path.join(out, "preds", "synthetic")
  proc = run_python(eval_args(out, *tiny_overrides(tiny_root), "--config.eval.num_preds_to_save=2"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert len(os.listdir(pictures)) == 8  # every query
  proc = run_python(eval_args(out, *tiny_overrides(tiny_root), "--config.eval.num_preds_to_save=2",
                              "--config.eval.save_only_wrong_preds=True",
                              "--config.eval.backend=faiss"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  # faiss's loader does not report the CPU builds it could not load
  assert "Could not load library" not in proc.stderr
  saved = json.load(open(os.path.join(out, "results.json")))["synthetic"]["saved_predictions"]
  assert len(os.listdir(pictures)) == saved < 8
  assert not [n for n in os.listdir(out) if n.startswith(".")]  # no staging folder left
  before = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(out, "**", "*"), recursive=True)}
  # a failing evaluation (a corrupt query image) keeps the previous outputs
  root = str(tmp_path / "data")
  shutil.copytree(os.path.join(tiny_root, "synthetic"), os.path.join(root, "synthetic"))
  victim = sorted(glob.glob(os.path.join(root, "synthetic", "images", "test", "queries", "*")))[0]
  open(victim, "wb").write(b"broken")
  overrides = [a if not a.startswith("--config.data.root=") else f"--config.data.root={root}"
               for a in tiny_overrides(tiny_root)]
  assert_clean_error(run_python(eval_args(out, *overrides)), "cannot read image")
  after = {p: os.path.getmtime(p) for p in glob.glob(os.path.join(out, "**", "*"), recursive=True)
           if not os.path.basename(p) == "info.log"}
  assert after == {p: t for p, t in before.items() if os.path.basename(p) != "info.log"}
