r"""The evaluation runner (the command; the work is in vgssl_jax.evaluation.runner): one
model on several datasets, with exports.

  python -m vgssl_jax.evaluate --config configs/vicreg_msls.py --checkpoint runs/vicreg \
      --config.eval.datasets=pitts30k,tokyo247,msls --workdir runs/vicreg/eval

Without --checkpoint the model is evaluated as initialised (a baseline). With one of our
runs, the network's settings (method, model) are read from the checkpoint. A published
VG-SSL model (PyTorch .pth) is imported (backbone + GeM + FC; the config describes it):
  python -m vgssl_jax.evaluate --config configs/simclr_msls.py --checkpoint best_model.pth
and so are the releases of SALAD, MegaLoc, BoQ and MixVPR, each with its config:
  python -m vgssl_jax.evaluate --config configs/salad_dinov2.py --checkpoint dino_salad.ckpt
--config.eval.database_folder=DIR --config.eval.queries_folder=DIR evaluate two folders of
images instead of named datasets (without `@` coordinates: predictions only).
Writes, under --workdir (default runs/eval):
  results.json               {dataset: {"recall@1": ..., "queries": n, "database": m, ...}}
  results.md                 the same as a Markdown table
  model.json                 which model was evaluated, with the config
  descriptors/<dataset>.npz  database, queries, database_paths, queries_paths
  predictions/<dataset>.txt  per query: its path and the top-K database paths; MSLS: the
                             official prediction file (query_key db_key1 ... db_key20)
  plots/<dataset>_recall.png recall@N for N = 1..K
  preds/<dataset>/*.jpg      with eval.num_preds_to_save=K: each query and its top K
"""

from __future__ import annotations

from vgssl_jax import cpu_env, interrupts, logs

if __name__ == "__main__":
  interrupts.stop_quietly()  # Ctrl-C while the libraries load: one line, no traceback
  logs.quiet_third_party()
  cpu_env.apply()  # re-executes with the CPU malloc defaults before anything else loads

# pylint: disable=wrong-import-position
import os

from absl import app, flags

from vgssl_jax import cli

_CONFIG, _WORKDIR = cli.define_flags()
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "A training workdir, its checkpoints/ folder or one step folder (the "
    "best checkpoint by validation score is used, else the latest); or a weights file: a "
    "VG-SSL PyTorch checkpoint (.pth/.ckpt) or an export of ours (.safetensors/.npz).")


def main(argv):
  from vgssl_jax.evaluation.runner import evaluate_model  # after the flags: fast --help
  cli.run_main(argv, _CONFIG, _WORKDIR, lambda c: os.path.join("runs", "eval"),
               lambda config, workdir: evaluate_model(config, _CHECKPOINT.value, workdir),
               purpose="evaluate")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.flags_parser(
      __doc__, "  --checkpoint=PATH      a run's workdir, or a .pth/.ckpt/.safetensors/.npz file\n"))
