"""The evaluation runner: one model on several datasets, with exports.

  python -m vgssl_jax.evaluate --config configs/vicreg_msls.py --checkpoint runs/vicreg \
      --config.eval.datasets=pitts30k,tokyo247,msls --workdir runs/vicreg/eval

Without --checkpoint the model is evaluated as initialised (a baseline). With one of our
runs, the network's settings (method, model) are read from the checkpoint. A published
VG-SSL model (PyTorch .pth) is imported (backbone + GeM + FC; the config describes it):
  python -m vgssl_jax.evaluate --config configs/simclr_msls.py --checkpoint best_model.pth
Writes, under --workdir:
  results.json               {dataset: {"recall@1": ..., "queries": n, "database": m, ...}}
  results.md                 the same as a Markdown table
  descriptors/<dataset>.npz  database, queries, database_paths, queries_paths
  predictions/<dataset>.txt  MSLS: the official prediction file (query_key db_key1 ... db_key20)
  plots/<dataset>_recall.png recall@N for N = 1..K
  preds/<dataset>/*.jpg      with eval.num_preds_to_save=K: each query and its top K
"""

from __future__ import annotations

from vgssl_jax import cpu_env

if __name__ == "__main__":
  cpu_env.apply()  # re-executes with the CPU malloc defaults before anything else loads

# pylint: disable=wrong-import-position
import json
import logging
import os

import jax
from absl import app, flags

from vgssl_jax import checkpoints, cli, evaluation, experiment, parallel
from vgssl_jax.errors import ConfigError
from vgssl_jax.models import pretrained
from vgssl_jax.models.network import init_variables

_CONFIG, _WORKDIR = cli.define_flags()
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A training workdir, its checkpoints/ folder or one step folder (the "
    "best checkpoint by validation recall@5 is used, else the latest); or a weights file: a "
    "VG-SSL PyTorch checkpoint (.pth/.ckpt) or an export of ours (.safetensors/.npz).")


def is_weight_file(checkpoint: str | None) -> bool:
  return bool(checkpoint) and checkpoint.lower().endswith(pretrained.WEIGHT_FILES)


def load_variables(config, checkpoint: str | None, method, mesh) -> tuple[dict, dict]:
  """(variables, info) of the model to evaluate: as initialised, from one of our runs, or
  from a weights file (a VG-SSL PyTorch checkpoint or one of our exports)."""
  model = method.model
  template = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0),
                                                   tuple(config.data.image_size)))
  if checkpoint is None or is_weight_file(checkpoint):
    variables = jax.jit(lambda: init_variables(model, jax.random.PRNGKey(config.seed),
                                               tuple(config.data.image_size)),
                        out_shardings=parallel.replicated(mesh))()
    if checkpoint is None:
      return variables, {"checkpoint": None, "note": "model as initialised (baseline)"}
    variables = pretrained.import_vgssl_checkpoint(checkpoint, jax.device_get(variables))
    return (jax.device_put(variables, parallel.replicated(mesh)),
            {"checkpoint": checkpoint, "note": "imported weights file"})
  directory, step, meta = checkpoints.read_meta(checkpoint)
  variables = checkpoints.restore_variables(directory, step, template, parallel.replicated(mesh))
  return variables, {"checkpoint": directory, "step": step, "epoch": meta.get("epoch"),
                     "validation": meta.get("metrics", {})}


def adopt_checkpoint_model(config, checkpoint: str) -> None:
  """The checkpoint decides the network: its method and model settings replace the config's.

  A run's checkpoint and our own .safetensors exports record them; original VG-SSL files do
  not, so the config must describe that network (backbone, width, fc_output_dim)."""
  if is_weight_file(checkpoint):
    meta = pretrained.read_export_metadata(checkpoint)
    if not meta.get("model"):
      return
  else:
    _, _, meta = checkpoints.read_meta(checkpoint)
  with config.unlocked():
    for key, value in meta["model"].items():
      if config.model[key] != value:
        logging.info("model.%s = %r from the checkpoint (config had %r)", key, value,
                     config.model[key])
      config.model[key] = value
    config.method = meta["method"]


def run(config, checkpoint: str | None, workdir: str) -> dict:
  if os.path.exists(os.path.join(workdir, "config.json")):  # its results.json is the run's
    raise ConfigError(f"--workdir {workdir} holds a training run; write the evaluation to "
                      f"another folder, e.g. --workdir {os.path.join(workdir, 'eval')}.")
  os.makedirs(workdir, exist_ok=True)
  if checkpoint:
    adopt_checkpoint_model(config, checkpoint)
  mesh = parallel.make_mesh(config.num_devices)
  eval_sets = experiment.open_eval_sets(config)
  method = experiment.build_method(config)
  embedder = experiment.build_embedder(config, method, mesh)
  variables, info = load_variables(config, checkpoint, method, mesh)
  logging.info("evaluating %s on %s", info.get("checkpoint") or "the initial model",
               ", ".join(eval_sets))
  results = experiment.evaluate_all(config, embedder, variables, eval_sets, out_dir=workdir)
  table = evaluation.format_table({"model": results}, tuple(config.eval.recall_values))
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(results, f, indent=1)
    with open(os.path.join(workdir, "results.md"), "w") as f:
      f.write(f"# Evaluation\n\nmodel: {info.get('checkpoint') or info['note']}"
              f"{' (step %s)' % info['step'] if info.get('step') is not None else ''}, "
              f"test method {config.eval.test_method}, split {config.eval.split}\n\n{table}\n")
    with open(os.path.join(workdir, "model.json"), "w") as f:
      json.dump({**info, "config": json.loads(config.to_json_best_effort())}, f, indent=1)
  print(f"\nRecall@N (%), {config.eval.split} split:\n{table}\nresults: "
        f"{os.path.join(workdir, 'results.json')}", flush=True)
  return results


def main(argv):
  cli.run_main(argv, _CONFIG, _WORKDIR, lambda c: os.path.join("runs", "eval"),
               lambda config, workdir: run(config, _CHECKPOINT.value, workdir))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
