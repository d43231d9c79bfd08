"""Stage-1 training from a config.

  python -m vgssl_jax.main --config configs/demo.py --workdir runs/demo
  python -m vgssl_jax.main --config configs/vicreg_msls.py --workdir runs/vicreg \
      --config.data.root=/data/datasets
"""

from __future__ import annotations

import json
import logging
import os
import time

import jax
from absl import app

from data_pipelines.places import TrainPlaces
from vgssl_jax import cli, evaluation, experiment, parallel
from vgssl_jax.methods import descriptor_variables
from vgssl_jax.train import Trainer, items_per_step

_CONFIG, _WORKDIR = cli.define_flags()


def run(config, workdir: str) -> dict:
  """Trains and evaluates; returns and writes {"before": ..., "after": ...} to results.json."""
  start = time.perf_counter()
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=1))
  mesh = parallel.make_mesh(config.num_devices)
  items = items_per_step(config)
  parallel.check_divisible(items, mesh, "train.batch_size" if items == config.train.batch_size
                           else "train.batch_size / 2 (items per step with pair_negative)")
  logging.info("mesh: %d %s device(s)", mesh.devices.size, jax.devices()[0].platform)

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
  state = trainer.init_state()

  def evaluate(state):
    variables = descriptor_variables(state.params, state.batch_stats)
    return experiment.evaluate_all(config, embedder, variables, eval_sets)

  results = {}
  if config.eval.before:
    results["before"] = evaluate(state)
  state = trainer.fit(state)
  results["after"] = evaluate(state)
  results["seconds"] = time.perf_counter() - start
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=1)
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
