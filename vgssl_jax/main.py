"""Stage-1 training from a config.

  python -m vgssl_jax.main --config configs/demo.py --workdir runs/demo
  python -m vgssl_jax.main --config configs/vicreg_msls.py --workdir runs/vicreg \
      --config.data.root=/data/datasets

Running the same command again resumes the run from its last checkpoint.
"""

from __future__ import annotations

from vgssl_jax import cpu_env

if __name__ == "__main__":
  cpu_env.apply()  # re-executes with the CPU malloc defaults before anything else loads

# pylint: disable=wrong-import-position
import json
import logging
import os
import time

import jax
from absl import app

from data_pipelines.places import TrainPlaces
from vgssl_jax import cli, evaluation, experiment, parallel
from vgssl_jax.config import config_changes, items_per_step
from vgssl_jax.errors import ConfigError
from vgssl_jax.methods import descriptor_variables
from vgssl_jax.trainer import Trainer

_CONFIG, _WORKDIR = cli.define_flags()


def holds_run(workdir: str) -> bool:
  """Whether `workdir` has results of a run (a checkpoint or the untrained model's scores),
  not only the config.json of a start that failed before training."""
  ckpt = os.path.join(workdir, "checkpoints")
  steps = [d for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else []
  return bool(steps) or os.path.exists(os.path.join(workdir, "before.json"))


def check_workdir(config, workdir: str) -> None:
  """A workdir that holds a run of another config is refused before anything is written."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path) and holds_run(workdir):
    try:
      with open(path) as f:
        saved = json.load(f)
    except (OSError, ValueError) as e:
      raise ConfigError(f"{path} is unreadable ({e}); use another --workdir.") from e
    try:
      changed = config_changes(saved, config)
    except ConfigError as e:
      raise ConfigError(f"--workdir {workdir} holds a run of another config: {e}") from None
    if changed:
      logging.info("workdir %s: continuing with changed settings %s", workdir, ", ".join(changed))


def _write_json(path: str, data) -> None:
  if jax.process_index() == 0:
    with open(path, "w") as f:
      json.dump(data, f, indent=1)


def run(config, workdir: str) -> dict:
  """Trains (or resumes) and evaluates; writes {"before": ..., "after": ...} to results.json."""
  start = time.perf_counter()
  check_workdir(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=1))
  mesh = parallel.make_mesh(config.num_devices)
  items = items_per_step(config)
  parallel.check_divisible(items, mesh, "train.batch_size" if items == config.train.batch_size
                           else "train.batch_size / 2 (items per step with pair_negative)")
  if config.train.grad_accum_steps > 1:
    parallel.check_divisible(items // config.train.grad_accum_steps, mesh,
                             "items per micro-batch (train.batch_size / train.grad_accum_steps)")
  logging.info("mesh: %d %s device(s) in %d process(es)", mesh.devices.size,
               jax.devices()[0].platform, jax.process_count())

  dc = config.data
  train_places = TrainPlaces.build(experiment.open_split(config, dc.name, "train"),
                                   config.train.positive_radius, config.train.negative_radius)
  val_places = experiment.open_split(config, dc.name, "val") if config.train.val_every else None
  eval_sets = experiment.open_eval_sets(config)
  logging.info("train: %s (%d queries with a %g m positive, %d dropped)", train_places.places,
               len(train_places.query_ids), config.train.positive_radius, train_places.dropped)

  method = experiment.build_method(config)
  embedder = experiment.build_embedder(config, method, mesh)
  trainer = Trainer(config, method, mesh, train_places, workdir, embedder, val_places)
  state, progress = trainer.resume_or_init(lambda: experiment.initial_state(config, trainer))

  def evaluate(state):
    variables = descriptor_variables(state.params, state.batch_stats)
    return experiment.evaluate_all(config, embedder, variables, eval_sets)

  results = {}
  before_path = os.path.join(workdir, "before.json")
  if config.eval.before:
    if os.path.exists(before_path):  # a resumed run: the untrained model was scored already
      with open(before_path) as f:
        results["before"] = json.load(f)
    else:
      results["before"] = evaluate(state)
      _write_json(before_path, results["before"])
  try:
    state = trainer.fit(state, progress)
  finally:
    trainer.close()
  results["after"] = evaluate(state)
  results["seconds"] = time.perf_counter() - start
  _write_json(os.path.join(workdir, "results.json"), results)
  table = evaluation.format_table({k: v for k, v in results.items() if k != "seconds"},
                                  tuple(config.eval.recall_values))
  print(f"\nRecall@N (%) on the {config.eval.split} split, {results['seconds']:.0f} s in all:\n"
        f"{table}\nresults: {os.path.join(workdir, 'results.json')}", flush=True)
  return results


def main(argv):
  cli.run_main(argv, _CONFIG, _WORKDIR,
               lambda c: os.path.join("runs", f"{c.method}_{c.data.name}"), run)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
