"""The supervised path end to end: triplet training with cache refreshes, the original's
freezing, fine-tuning from a stage-1 run, NetVLAD, and bad input."""

import json
import os

import numpy as np
import pytest

from tests.conftest import run_python, tiny_overrides
from tests.test_main import assert_clean_error, main_args
from tests.test_resume import final_state

TRIPLET = ["--config.method=triplet", "--config.train.mining=partial",
           "--config.train.neg_samples_num=12", "--config.train.negs_num_per_query=2",
           "--config.train.cache_refresh_rate=8", "--config.train.batch_size=4"]


@pytest.fixture(scope="module")
def stage1(tiny_root, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("stage1"))
  proc = run_python(main_args(workdir, *tiny_overrides(tiny_root)))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def test_fine_tuning_a_stage1_run_with_triplets_and_frozen_early_layers(tiny_root, tmp_path,
                                                                       stage1):
  workdir = str(tmp_path / "ft")
  proc = run_python(main_args(workdir, *tiny_overrides(tiny_root), *TRIPLET,
                              f"--config.train.init_from={stage1}", "--config.model.unfreeze=False",
                              "--config.train.val_every=1", "--config.train.optimizer=adamw"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "train.init_from" in proc.stderr and "loaded" in proc.stderr
  results = json.load(open(os.path.join(workdir, "results.json")))
  stage1_after = json.load(open(os.path.join(stage1, "results.json")))["after"]["synthetic"]
  # the fine-tuned run starts from the stage-1 network: its "before" is the stage-1 "after"
  for n in (1, 5, 10):
    assert results["before"]["synthetic"][f"recall@{n}"] == stage1_after[f"recall@{n}"]
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  steps = [l for l in lines if "queries_per_s" in l]
  assert steps and {"images_per_s", "loss"} <= set(steps[0])
  assert any("val/recall@5" in l for l in lines)  # validated after the epoch
  _, start = final_state(stage1)
  _, end = final_state(workdir)
  conv1 = lambda s: s["params"]["net"]["backbone"]["conv1"]["kernel"]  # noqa: E731
  layer3 = lambda s: s["params"]["net"]["backbone"]["layer3"]["0"]["conv1"]["kernel"]  # noqa: E731
  np.testing.assert_array_equal(conv1(end), conv1(start))            # frozen: not updated ...
  assert not np.array_equal(end["batch_stats"]["net"]["backbone"]["bn1"]["mean"],
                            start["batch_stats"]["net"]["backbone"]["bn1"]["mean"])  # ... BN runs
  assert not np.array_equal(layer3(end), layer3(start))              # layer3 trains
  # a resumed run with another criterion is another experiment
  proc = run_python(main_args(workdir, *tiny_overrides(tiny_root), *TRIPLET,
                              "--config.method=sare_ind", f"--config.train.init_from={stage1}",
                              "--config.model.unfreeze=False", "--config.train.val_every=1",
                              "--config.train.optimizer=adamw"))
  assert_clean_error(proc, "changes the experiment", "method: 'triplet' -> 'sare_ind'")


@pytest.mark.parametrize("criterion,mining", [("sare_joint", "full"), ("sare_ind", "random")])
def test_other_criteria_and_mining_modes_train(tiny_root, tmp_path, criterion, mining):
  workdir = str(tmp_path / "run")
  proc = run_python(main_args(workdir, *tiny_overrides(tiny_root), *TRIPLET,
                              f"--config.method={criterion}", f"--config.train.mining={mining}",
                              "--config.eval.before=False"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))][-1]
  assert record["epoch"] == 1 and np.isfinite(record["epoch_loss"])


def test_netvlad_is_initialised_by_kmeans_and_trains(tiny_root, tmp_path):
  workdir = str(tmp_path / "netvlad")
  proc = run_python(main_args(workdir, *tiny_overrides(tiny_root), "--config.model.aggregation=netvlad",
                              "--config.model.netvlad_clusters=4", "--config.eval.before=False"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "NetVLAD initialised by k-means: 4 clusters" in proc.stderr
  _, state = final_state(workdir)
  assert state["params"]["net"]["aggregation"]["netvlad"]["centroids"].shape == (4, 32)


def test_bad_supervised_settings_are_clear_errors(tiny_root, tmp_path, stage1):
  base = main_args(str(tmp_path / "w"), *tiny_overrides(tiny_root), *TRIPLET)
  cases = [
      ([f"--config.train.init_from={tmp_path / 'nothing'}"], ["does not exist"]),
      ([f"--config.train.init_from={stage1}", "--config.model.width=16"],
       ["its network differs", "model.width: 8 in the run, 16 here"]),
      (["--config.train.mining=msls_weighted"], ["msls_weighted needs each query's night"]),
      (["--config.train.negs_num_per_query=20"], ["larger than the candidate pool"]),
      (["--config.model.aggregation=netvlad", "--config.model.netvlad_clusters=0"],
       ["model.netvlad_clusters=0 must be >= 1"]),
      # more negatives than the training database has outside a query's soft positives: said
      # before the untrained model is evaluated (before.json), not in a traceback from fit
      (["--config.train.mining=random", "--config.train.negs_num_per_query=100"],
       ["train.negs_num_per_query=100: each query needs 100 negatives", "database images of "
        "synthetic/train leave only", "lower train.negs_num_per_query to at most"]),
  ]
  for extra, fragments in cases:
    proc = run_python(base + extra)
    assert_clean_error(proc, *fragments)
    assert not os.path.exists(tmp_path / "w" / "checkpoints")
    assert not os.path.exists(tmp_path / "w" / "before.json")
  from safetensors.numpy import save_file
  empty = str(tmp_path / "unrelated.safetensors")
  save_file({"something.else": np.zeros(3, np.float32)}, empty)
  assert_clean_error(run_python(base + [f"--config.train.init_from={empty}"]),
                     "aggregation tensors do not fit")


def test_init_from_an_unfinished_run_says_so_and_which_step(tiny_root, tmp_path, stage1, caplog):
  import shutil

  import jax

  from tests.conftest import tiny_config
  from vgssl_jax.models.network import init_variables
  from vgssl_jax.objectives.registry import build_network
  from vgssl_jax.training import initial_weights
  run = str(tmp_path / "unfinished")
  shutil.copytree(stage1, run)
  os.remove(os.path.join(run, "results.json"))   # as a run stopped mid-way leaves it
  c = tiny_config(tiny_root)
  c.method, c.model.n_layers = "triplet", 0
  net = build_network(c.model, c.method, c.data.image_size)
  variables = jax.tree.map(np.asarray, init_variables(net, jax.random.PRNGKey(0),
                                                      c.data.image_size))
  with caplog.at_level("INFO"):
    initial_weights.load_init_from(run, c, variables)
  assert f"train.init_from={run}: that run has not finished (no results.json" in caplog.text
  assert "starting from its step 2 (epoch 1, its latest checkpoint)" in caplog.text
  caplog.clear()
  with caplog.at_level("INFO"):
    initial_weights.load_init_from(stage1, c, variables)
  assert "has not finished" not in caplog.text and "step 2 of" in caplog.text
