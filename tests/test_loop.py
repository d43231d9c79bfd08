"""The training loop: one compilation per function (fixed shapes across epochs), patience
and model selection, metric lines."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from data_pipelines.places import TrainPlaces
from tests.conftest import tiny_config
from vgssl_jax import data_config, sharding
from vgssl_jax.evaluation.embedder import Embedder
from vgssl_jax.objectives.registry import build_objective
from vgssl_jax.training.geopairs import GeoPairSource
from vgssl_jax.training.loop import Trainer


def make_trainer(c, workdir, validate=None):
  mesh = sharding.make_mesh(1)
  objective = build_objective(c)
  embedder = Embedder.from_config(c, objective.model, mesh, progress=False)
  train = TrainPlaces.build(data_config.open_split(c, "synthetic", "train"))
  source = GeoPairSource(c, objective, train, embedder)
  return Trainer(c, objective, mesh, source, workdir, validate), embedder


def test_no_recompilation_across_steps_and_epochs(tiny_root, tmp_path):
  c = tiny_config(tiny_root)
  c.train.epochs = 2
  c.train.queries_per_epoch = 24   # 3 steps per epoch
  c.train.log_every = 1
  trainer, embedder = make_trainer(c, str(tmp_path))
  state, progress = trainer.resume_or_init()
  state = trainer.fit(state, progress)
  trainer.close()
  assert int(state.step) == 6
  # one train step for all 6 steps of both epochs (the per-epoch learning rate included) ...
  assert trainer.step_fn._cache_size() == 1
  # ... and one eval forward for all mining batches (last batches padded)
  assert embedder._forward._cache_size() == 1
  lines = [json.loads(l) for l in open(os.path.join(tmp_path, "metrics.jsonl"))]
  steps = [l for l in lines if "step_time_s" in l]
  assert len(steps) == 6 and all(0 <= l["input_wait"] <= 1 for l in steps)
  assert {"loss", "lr", "images_per_s", "pairs_per_s"} <= set(steps[0])


def test_early_stopping_after_patience_validations(tiny_root, tmp_path):
  c = tiny_config(tiny_root)
  c.train.epochs, c.train.val_every, c.train.patience = 6, 1, 2
  recalls = iter([50.0, 60.0, 60.0, 55.0, 70.0, 80.0])  # no gain at epochs 3 and 4
  trainer, _ = make_trainer(c, str(tmp_path), validate=lambda state: {
      "recall@1": 0.0, "recall@5": next(recalls)})
  state, progress = trainer.resume_or_init()
  state = trainer.fit(state, progress)
  tested, info = trainer.tested(state)
  trainer.close()
  assert int(state.step) == 4 * 2  # stopped after epoch 4 (2 steps per epoch)
  # the best checkpoint is the first with R@5 = 60 (a tie keeps the earlier one), and the
  # preservation policy kept it besides the last two
  from vgssl_jax import checkpoints
  assert checkpoints.best_step(trainer.mngr) == 4
  assert trainer.mngr.all_steps() == [4, 6, 8]
  assert checkpoints.read_meta(str(tmp_path))[1] == 4  # what the evaluation runner picks
  # the model tested after training is that checkpoint's, not the last state's
  assert info == {"step": 4, "selection": "recall@5 = 60.00"}
  from tests.test_resume import assert_bit_identical
  mngr = checkpoints.manager(os.path.join(tmp_path, "checkpoints"), read_only=True)
  saved = mngr.restore(4, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
  assert_bit_identical(jax.tree.map(np.asarray, tested),
                       {"params": jax.tree.map(np.asarray, saved["params"]["net"]),
                        "batch_stats": jax.tree.map(np.asarray, saved["batch_stats"]["net"])})
  last = jax.tree.map(np.asarray, state.params["net"])
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(last),
                                                      jax.tree.leaves(tested["params"])))


def test_without_validation_the_last_model_is_tested(tiny_root, tmp_path):
  c = tiny_config(tiny_root)
  trainer, _ = make_trainer(c, str(tmp_path))
  state, progress = trainer.resume_or_init()
  state = trainer.fit(state, progress)
  tested, info = trainer.tested(state)
  trainer.close()
  assert info == {"step": int(state.step), "selection": "last"}
  assert tested["params"] is state.params["net"]


def test_tensorboard_events_when_a_writer_is_installed(tmp_path, monkeypatch):
  import sys
  import types
  written = []

  class FakeWriter:
    def __init__(self, folder):
      self.folder = folder

    def add_scalar(self, key, value, step):
      written.append((key, value, step))

    def flush(self):
      pass
  monkeypatch.setitem(sys.modules, "tensorboardX", types.SimpleNamespace(SummaryWriter=FakeWriter))
  from vgssl_jax.training.metrics_log import MetricsWriter
  writer = MetricsWriter(str(tmp_path))
  writer.write({"step": 3, "loss": 1.5, "lr": 1e-5, "note": "text"})
  assert ("loss", 1.5, 3) in written and ("lr", 1e-5, 3) in written
  assert json.loads(open(os.path.join(tmp_path, "metrics.jsonl")).read())["loss"] == 1.5
