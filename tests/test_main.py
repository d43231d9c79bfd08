"""The entry point end to end on the tiny synthetic set, and its answers to bad input."""

import json
import os

import pytest

from tests.conftest import run_python, tiny_overrides


def main_args(workdir, *extra, config="configs/demo.py"):
  return ["-m", "vgssl_jax.main", f"--config={config}", f"--workdir={workdir}", *extra]


def test_main_trains_and_evaluates_end_to_end(tiny_root, tmp_path):
  workdir = str(tmp_path / "run")
  proc = run_python(main_args(workdir, *tiny_overrides(tiny_root)))
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  for stage in ("before", "after"):
    r = results[stage]["synthetic"]
    assert set(r) >= {"recall@1", "recall@5", "recall@10", "recall@20"}
    assert 0 <= r["recall@1"] <= r["recall@5"] <= r["recall@10"] <= r["recall@20"] <= 100
    assert r["queries"] == 8 and r["database"] == 16
  assert "| after | synthetic |" in proc.stdout
  # no validation: the last model is the one tested, and the table says so
  assert results["tested"] == {"step": 2, "selection": "last"}
  assert "after = the last model (step 2, no validation)" in proc.stdout
  # the entry point re-executed itself with the CPU malloc defaults (vgssl_jax.cpu_env)
  assert "CPU malloc settings: glibc.malloc.arena_max=1" in proc.stderr
  lines = open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()
  assert json.loads(lines[-1])["epoch"] == 1
  assert os.path.exists(os.path.join(workdir, "config.json"))


@pytest.mark.parametrize("extra", [
    ["--config.method=simclr", "--config.train.mining=partial", "--config.train.neg_samples_num=10",
     "--config.train.pair_negative=True", "--config.model.n_layers=1"],
    ["--config.method=mocov2", "--config.train.mining=full", "--config.train.neg_samples_num=1",
     "--config.loss.queue_size=64", "--config.model.n_layers=0"],
])
def test_main_with_negatives(tiny_root, tmp_path, extra):
  workdir = str(tmp_path / "run")
  proc = run_python(main_args(workdir, *tiny_overrides(tiny_root), *extra))
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads(open(os.path.join(workdir, "metrics.jsonl")).read().splitlines()[-1])
  if "--config.train.pair_negative=True" in extra:
    assert record["step"] == 4  # 16 items, halved to 4 per step (8 pairs)
  else:
    assert record["step"] > 2   # 16 pairs + appended negative self-pairs, 8 per step


def assert_clean_error(proc, *fragments):
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  for fragment in fragments:
    assert fragment in proc.stderr, proc.stderr[-3000:]


def test_the_last_of_repeated_overrides_wins():
  from vgssl_jax import cli
  argv = ["main", "--config=c.py", "--config.data.image_size=(32,32)", "--config.train.lr=0.1",
          "--config.data.image_size=(64,48)", "--workdir=w"]
  assert cli.last_overrides(argv) == ["main", "--config=c.py", "--config.train.lr=0.1",
                                      "--config.data.image_size=(64,48)", "--workdir=w"]


def test_a_failed_start_does_not_block_the_corrected_command(tmp_path):
  """A start that fails before training leaves only config.json; the next command with
  other settings is not refused as a different run."""
  workdir = str(tmp_path / "run")
  for name in ("msl", "foo"):
    proc = run_python(main_args(workdir, f"--config.data.root={tmp_path}",
                                f"--config.data.name={name}"))
    assert_clean_error(proc, f"'{name}'")
    assert "holds a run of another config" not in proc.stderr


@pytest.mark.parametrize("extra,fragments", [
    (["--config.train.bogus=1"], ["unknown config key 'train.bogus'"]),
    (["--config.trian.lr=1"], ["unknown config key 'trian.lr'", "train.lr"]),
    (["--config.method=simclrr"], ["method='simclrr' is not valid", "vicreg"]),
    (["--config.model.n_layers=7"], ["n_layers=7"]),
    (["--config.model.backbone=resnet34conv5"], ["unknown backbone 'resnet34conv5'"]),
])
def test_bad_config_gives_one_clear_error(tmp_path, extra, fragments):
  proc = run_python(main_args(str(tmp_path), *extra))
  assert_clean_error(proc, *fragments)
  # the run's log says why it ended (a cluster job's only record)
  log = open(tmp_path / "info.log").read()
  assert all(f in log for f in fragments) and "ERROR error: " in log, log


def test_missing_config_file(tmp_path):
  assert_clean_error(run_python(main_args(str(tmp_path), config="configs/nope.py")),
                     "configs/nope.py", "does not exist")


def test_missing_msls_says_where_it_looked_and_how_to_get_it(tmp_path):
  proc = run_python(main_args(str(tmp_path / "run"), f"--config.data.root={tmp_path}",
                              config="configs/vicreg_msls.py"))
  assert_clean_error(proc, "dataset 'msls' not found", str(tmp_path / "msls"), "mapillary")


def test_too_few_devices_for_the_mesh(tiny_root, tmp_path):
  proc = run_python(main_args(str(tmp_path), *tiny_overrides(tiny_root), "--config.num_devices=8"))
  assert_clean_error(proc, "the mesh asks for 8 devices but only 1 are visible")
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints"))


def test_batch_not_divisible_by_devices(tiny_root, tmp_path):
  proc = run_python(main_args(str(tmp_path), *tiny_overrides(tiny_root),
                              "--config.train.batch_size=7"), devices=2)
  assert_clean_error(proc, "train.batch_size=7 is not divisible by the 2 devices")


@pytest.mark.parametrize("module,option", [("vgssl_jax.main", "--workdir=DIR"),
                                           ("vgssl_jax.evaluate", "--checkpoint=PATH")])
def test_help_prints_usage_and_where_the_keys_are(module, option):
  proc = run_python(["-m", module, "--help"])
  assert proc.returncode == 0, proc.stderr[-2000:]
  for text in (f"python -m {module}", "--config=FILE", option, "vgssl_jax/config.py"):
    assert text in proc.stdout
  assert "Traceback" not in proc.stderr
  # the examples keep their line continuations (a backslash-newline in a docstring is eaten)
  assert "\\\n      --config." in proc.stdout, proc.stdout


@pytest.mark.parametrize("extra,fragments", [
    (["--config.eval.recall_values=0,5"], ["eval.recall_values=(0, 5)", "N >= 1"]),
    (["--config.eval.pca_dim=5000"], ["eval.pca_dim=5000", "model.fc_output_dim=32"]),
])
def test_impossible_evaluation_settings_are_refused_up_front(tmp_path, tiny_root, extra, fragments):
  proc = run_python(main_args(str(tmp_path / "run"), *tiny_overrides(tiny_root), *extra))
  assert_clean_error(proc, *fragments)
  assert not os.path.exists(tmp_path / "run" / "config.json")  # refused before any work


def test_pca_larger_than_its_images_is_refused_before_embedding(tmp_path, tiny_root):
  out = tmp_path / "eval"
  proc = run_python(["-m", "vgssl_jax.evaluate", "--config=configs/demo.py", f"--workdir={out}",
                     *tiny_overrides(tiny_root), "--config.eval.pca_dim=24",
                     "--config.eval.pca_split=test"])
  assert_clean_error(proc, "eval.pca_dim=24 exceeds the 16 database images of synthetic/test")
  assert not os.path.exists(out / "descriptors")


def test_workdir_that_is_a_file_or_cannot_be_written(tmp_path):
  path = tmp_path / "notes.txt"
  path.write_text("mine")
  assert_clean_error(run_python(main_args(str(path))), f"--workdir {path} is a file")
  assert path.read_text() == "mine"
  assert_clean_error(run_python(main_args("/proc/vgssl_cannot_exist")),
                     "cannot write to --workdir /proc/vgssl_cannot_exist")


def copy_of_tiny(tiny_root, tmp_path):
  import shutil
  root = str(tmp_path / "data")
  shutil.copytree(os.path.join(tiny_root, "synthetic"), os.path.join(root, "synthetic"))
  overrides = [a if not a.startswith("--config.data.root=") else f"--config.data.root={root}"
               for a in tiny_overrides(tiny_root)]
  return root, overrides


def test_settings_the_run_does_not_read_are_named_once(tmp_path):
  # (named before the dataset is opened: a missing one ends this run right after)
  proc = run_python(main_args(str(tmp_path / "run"), f"--config.data.root={tmp_path}",
                              "--config.data.name=none", "--config.train.margin=0.3",
                              "--config.model.vit.depth=3", "--config.loss.lambd=0.1",
                              "--config.loss.sim_coeff=20"))
  assert_clean_error(proc, "dataset 'none' not found")
  lines = [l for l in proc.stderr.splitlines() if "settings without effect" in l]
  assert len(lines) == 1, proc.stderr[-3000:]
  assert "train.margin (read only with method triplet | r2former; this run's is vicreg)" in lines[0]
  assert "model.vit.depth (read only with backbone family deit" in lines[0]
  assert "loss.lambd (read only with method bt" in lines[0]
  assert "loss.sim_coeff" not in lines[0]   # VICReg reads it


def test_training_skips_unreadable_images_in_mining_and_batches(tiny_root, tmp_path):
  """A truncated database JPEG and a text file named .jpg in the training split: mining and
  the batches leave them out, the run finishes, and metrics.jsonl counts them."""
  import glob
  root, overrides = copy_of_tiny(tiny_root, tmp_path)
  train = os.path.join(root, "synthetic", "images", "train")
  database = sorted(glob.glob(os.path.join(train, "database", "*.jpg")))
  queries = sorted(glob.glob(os.path.join(train, "queries", "*.jpg")))
  with open(database[3], "r+b") as f:
    f.truncate(200)
  with open(queries[0], "w") as f:
    f.write("not a picture")
  workdir = str(tmp_path / "run")
  proc = run_python(main_args(workdir, *overrides, "--config.train.queries_per_epoch=32",
                              "--config.train.mining=full", "--config.train.neg_samples_num=1",
                              "--config.train.pair_negative=True"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  for path in (database[3], queries[0]):  # named once, however often the epoch meets it
    named = [l for l in proc.stderr.splitlines() if os.path.basename(path) in l]
    assert len(named) == 1, named
  epoch = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))
           if "epoch_loss" in l][-1]
  assert epoch["skipped_images"] >= 2


@pytest.mark.parametrize("backbone,weights", [("resnet18conv4", "torchvision's ImageNet ResNet"),
                                              ("deit", "timm's ImageNet DeiT-S distilled")])
def test_a_missing_weights_file_names_the_family_s_weights(tmp_path, backbone, weights):
  proc = run_python(main_args(str(tmp_path / "w"), f"--config.model.backbone={backbone}",
                              f"--config.model.pretrained={tmp_path / 'none.pth'}"))
  assert_clean_error(proc, "is not a file: give the path of " + weights)


def test_bad_config_files_are_one_line_errors(tmp_path):
  (tmp_path / "syntax.py").write_text("def get_config():\n  return dict(a=1\n")
  (tmp_path / "empty.py").write_text("x = 1\n")
  assert_clean_error(run_python(main_args(str(tmp_path / "w"), config=str(tmp_path / "syntax.py"))),
                     "syntax.py has a syntax error at line 2")
  assert_clean_error(run_python(main_args(str(tmp_path / "w"), config=str(tmp_path / "empty.py"))),
                     "empty.py defines no get_config()")


@pytest.mark.parametrize("extra,fragments", [
    (["--config.data.name=synthtic"], ["dataset 'synthtic' not found", "Did you mean 'synthetic'?"]),
    (["--config.data.image_size=96x128"], ["data.image_size=96x128", "image_size=480,640"]),
])
def test_typos_get_a_suggestion(tmp_path, extra, fragments):
  proc = run_python(main_args(str(tmp_path / "w"), f"--config.data.root={tmp_path}", *extra))
  assert_clean_error(proc, *fragments)


def test_a_garbage_weights_file_is_reported_before_anything_is_written(tmp_path, tiny_root):
  import time
  garbage = tmp_path / "resnet18.pth"
  garbage.write_bytes(b"\x00garbage" * 100)
  workdir = tmp_path / "run"
  start = time.time()
  proc = run_python(main_args(str(workdir), *tiny_overrides(tiny_root),
                              f"--config.model.pretrained={garbage}"))
  assert_clean_error(proc, "cannot read", "resnet18.pth", "PyTorch checkpoint")
  assert not os.path.exists(workdir / "config.json") and not os.path.exists(workdir / "checkpoints")
  assert time.time() - start < 45  # no model compilation before the check
  eval_dir = tmp_path / "eval"
  proc = run_python(["-m", "vgssl_jax.evaluate", "--config=configs/demo.py",
                     f"--workdir={eval_dir}", *tiny_overrides(tiny_root), f"--checkpoint={garbage}"])
  assert_clean_error(proc, "cannot read", "resnet18.pth")
  assert os.listdir(eval_dir) == ["info.log"]  # the log of the refusal, nothing else
