"""The training loop compiles each function once (fixed shapes across epochs)."""

import json
import os

from data_pipelines.places import TrainPlaces
from tests.conftest import tiny_config
from vgssl_jax import experiment, parallel
from vgssl_jax.trainer import Trainer


def test_no_recompilation_across_steps_and_epochs(tiny_root, tmp_path):
  c = tiny_config(tiny_root)
  c.train.epochs = 2
  c.train.queries_per_epoch = 24   # 3 steps per epoch
  c.train.log_every = 1
  mesh = parallel.make_mesh(1)
  method = experiment.build_method(c)
  embedder = experiment.build_embedder(c, method, mesh, progress=False)
  train = TrainPlaces.build(experiment.open_split(c, "synthetic", "train"))
  trainer = Trainer(c, method, mesh, train, str(tmp_path), embedder)
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
