"""Today's models through the commands: a tiny DINOv2 with each aggregation trains with
vgssl_jax.main (an SSL method on it: what no other framework runs) and is scored by
vgssl_jax.evaluate on the synthetic set; exports come out in the official layouts; two
folders of images without coordinates give predictions and descriptors."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests import golden
from tests.conftest import run_python, tiny_model_config, tiny_overrides
from tests.test_main import main_args
from vgssl_jax.config import base_config
from vgssl_jax.models.network import build_model, init_variables
from vgssl_jax.objectives.registry import build_objective

SIZE = (42, 56)   # multiples of 14 (and >= 32): a 3x4 patch grid


def dinov2_overrides() -> list[str]:
  """The golden DINOv2's sizes (so exports have the official key lists of its pipelines)."""
  cfg = golden.config(golden.load("dinov2.npz"))
  return ["--config.model.backbone=dinov2_vitb14",
          f"--config.model.dinov2.embed_dim={cfg['embed_dim']}",
          f"--config.model.dinov2.depth={cfg['depth']}",
          f"--config.model.dinov2.num_heads={cfg['num_heads']}",
          f"--config.model.dinov2.img_size={cfg['img_size']}",
          "--config.model.train_blocks=2", "--config.data.image_size=%d,%d" % SIZE]


AGGREGATIONS = {
    "salad": ["--config.model.salad.num_clusters=4", "--config.model.salad.cluster_dim=8",
              "--config.model.salad.token_dim=8", "--config.model.salad.hidden=16",
              "--config.model.fc_output_dim=0"],
    "boq": ["--config.model.boq.proj_channels=64", "--config.model.boq.num_queries=4",
            "--config.model.boq.num_layers=2", "--config.model.boq.row_dim=2",
            "--config.model.fc_output_dim=0"],
    "mixvpr": ["--config.model.mixvpr.out_channels=8", "--config.model.mixvpr.mix_depth=1",
               "--config.model.mixvpr.out_rows=2", "--config.model.fc_output_dim=0"],
    "gem": [],
    "cls": [],
}


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_dinov2_with_each_aggregation_trains_and_evaluates(aggregation, tiny_root, tmp_path):
  workdir = str(tmp_path / "run")
  extra = [*dinov2_overrides(), f"--config.model.aggregation={aggregation}",
           *AGGREGATIONS[aggregation], "--config.eval.before=False"]
  proc = run_python(main_args(workdir, *tiny_overrides(tiny_root), *extra))
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.load(open(os.path.join(workdir, "results.json")))
  r = results["after"]["synthetic"]
  assert 0 <= r["recall@1"] <= r["recall@5"] <= 100 and r["queries"] == 8
  evaluation = os.path.join(workdir, "eval")
  proc = run_python(["-m", "vgssl_jax.evaluate", "--config=configs/demo.py", f"--checkpoint={workdir}",
                     f"--workdir={evaluation}", *tiny_overrides(tiny_root),
                     "--config.data.image_size=%d,%d" % SIZE])
  assert proc.returncode == 0, proc.stderr[-3000:]
  again = json.load(open(os.path.join(evaluation, "results.json")))["synthetic"]
  # the evaluation of the best checkpoint repeats the run's final test
  for n in (1, 5, 10, 20):
    assert again[f"recall@{n}"] == pytest.approx(r[f"recall@{n}"])
  if aggregation == "salad":
    _export_is_a_salad_release(workdir, tmp_path, tiny_root)


def _export_is_a_salad_release(workdir, tmp_path, tiny_root):
  """A DINOv2 + SALAD run exports with the official names (the golden pipeline's key list),
  and that file evaluates as the run."""
  from safetensors.numpy import load_file
  out = str(tmp_path / "dino_salad.safetensors")
  proc = run_python(["-m", "vgssl_jax.export", f"--checkpoint={workdir}", f"--out={out}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  official = set(golden.load("salad.npz")["pipeline_state_dict_keys"].tolist())
  assert set(load_file(out)) == official
  evaluation = str(tmp_path / "eval_export")
  proc = run_python(["-m", "vgssl_jax.evaluate", "--config=configs/demo.py", f"--checkpoint={out}",
                     f"--workdir={evaluation}", *tiny_overrides(tiny_root),
                     "--config.data.image_size=%d,%d" % SIZE])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "SALAD layout" in proc.stderr
  run = json.load(open(os.path.join(workdir, "eval", "results.json")))["synthetic"]
  exported = json.load(open(os.path.join(evaluation, "results.json")))["synthetic"]
  assert exported["recall@1"] == pytest.approx(run["recall@1"])


def test_two_folders_without_coordinates_give_predictions_and_descriptors(tiny_root, tmp_path):
  """Retrieval on a user's own photos: no `@` names, no recall; the top-K paths per query and
  the descriptors are written."""
  split = os.path.join(tiny_root, "synthetic", "images", "test")
  folders = {}
  for part in ("database", "queries"):
    folders[part] = tmp_path / f"my_{part}"
    folders[part].mkdir()
    for i, name in enumerate(sorted(os.listdir(os.path.join(split, part)))):
      shutil.copy(os.path.join(split, part, name), folders[part] / f"photo_{i:03d}.jpg")
  workdir = str(tmp_path / "eval")
  proc = run_python(["-m", "vgssl_jax.evaluate", "--config=configs/demo.py", f"--workdir={workdir}",
                     *tiny_overrides(tiny_root),
                     f"--config.eval.database_folder={folders['database']}",
                     f"--config.eval.queries_folder={folders['queries']}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "no coordinates: predictions and descriptors only" in proc.stderr
  result = json.load(open(os.path.join(workdir, "results.json")))["folders"]
  assert "recall@1" not in result and result["queries"] == 8 and result["database"] == 16
  lines = open(os.path.join(workdir, "predictions", "folders.txt")).read().splitlines()
  assert len(lines) == 8
  first = lines[0].split()
  assert first[0] == os.path.join("my_queries", "photo_000.jpg")
  assert len(first) == 1 + 16 and all(p.startswith("my_database") for p in first[1:])
  with np.load(os.path.join(workdir, "descriptors", "folders.npz")) as d:
    assert d["database"].shape[0] == 16 and d["queries"].shape[0] == 8
    # the predictions are the nearest database descriptors, nearest first
    dist = ((d["queries"][0][None] - d["database"]) ** 2).sum(1)
    ranked = [os.path.join("my_database", f"photo_{i:03d}.jpg") for i in np.argsort(dist)]
    assert first[1:4] == ranked[:3]
  # both folders or neither; not together with named datasets
  proc = run_python(["-m", "vgssl_jax.evaluate", "--config=configs/demo.py",
                     f"--workdir={tmp_path / 'e2'}", *tiny_overrides(tiny_root),
                     f"--config.eval.database_folder={folders['database']}"])
  assert proc.returncode != 0 and "eval.queries_folder is not set" in proc.stderr


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_salad_dropout_acts_in_training_steps_only(dropout):
  """SALAD's MLP dropout draws from the step's key: with dropout two keys give two losses
  (the triplet's images do not depend on the key without augmentation); without, one."""
  c = base_config()
  c.method = "triplet"
  c.data.image_size = SIZE
  c.train.random_resized_crop, c.train.horizontal_flip = 0.0, False   # images key-free
  c.model.update(tiny_model_config(backbone="dinov2_vitb14", aggregation="salad",
                                   fc_output_dim=0, n_layers=0).to_dict())
  c.model.dinov2.update(embed_dim=32, depth=1, num_heads=2, img_size=42)
  c.model.salad.update(num_clusters=4, cluster_dim=8, token_dim=8, hidden=16, dropout=dropout)
  objective = build_objective(c)
  params, stats, state = objective.init(jax.random.PRNGKey(0), SIZE)
  rng = np.random.default_rng(0)
  batch = {"query": rng.integers(0, 255, (2, *SIZE, 3), np.uint8),
           "positive": rng.integers(0, 255, (2, *SIZE, 3), np.uint8),
           "negatives": rng.integers(0, 255, (2, 2, *SIZE, 3), np.uint8)}
  loss = jax.jit(lambda key: objective.loss(params, stats, state, batch, key)[0])
  a, b = loss(jax.random.PRNGKey(1)), loss(jax.random.PRNGKey(2))
  assert (a != b) == (dropout > 0)
  # evaluation never drops
  net = build_model(c.model, None, SIZE)
  variables = init_variables(net, jax.random.PRNGKey(0), SIZE)
  x = jnp.asarray(rng.normal(size=(2, *SIZE, 3)), jnp.float32)
  once = net.apply(variables, x, False, project=False, rngs={"dropout": jax.random.PRNGKey(3)})
  twice = net.apply(variables, x, False, project=False, rngs={"dropout": jax.random.PRNGKey(4)})
  np.testing.assert_array_equal(once["descriptor"], twice["descriptor"])
