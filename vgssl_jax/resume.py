"""The resume policy: which settings a resumed run may change, and the check of a workdir
that already holds a run (beside vgssl_jax.checkpoints, which stores the runs).

Rerunning a command continues its run from the last checkpoint. Settings that do not change
the experiment (SAFE_TO_CHANGE: epochs, logging, data locations, evaluation, ...) may
differ and are logged; any other change is refused with the keys listed, model-shape
changes first, because the checkpoint would continue a different experiment. A saved
config is read in today's meaning: keys added to the schema since count as unchanged while
they keep their default, and the recorded model settings are upgraded as the checkpoints'
are.
"""

from __future__ import annotations

import json
import logging
import os

import ml_collections

from vgssl_jax.checkpoints import model_config_from
from vgssl_jax.config import base_config
from vgssl_jax.errors import ConfigError
from vgssl_jax.models import backbones

SAFE_TO_CHANGE = ("train.epochs", "train.val_every", "train.patience", "train.keep_checkpoints",
                  "train.checkpoint_every", "train.log_every", "train.infer_batch_size",
                  "data.root", "data.num_workers", "data.num_threads", "data.source",
                  "data.records_dir", "eval.", "num_devices", "distributed.", "model.pretrained",
                  "train.init_from")
SHAPE_KEYS = ("model.", "loss.queue_size", "data.image_size")


def _flat(tree: dict, prefix: str = "") -> dict:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def _json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def _resolved(model_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  mc = ml_collections.ConfigDict(model_config.to_dict())
  mc.aggregation = backbones.aggregation_name(mc)
  return mc


def config_changes(saved: dict, config: ml_collections.ConfigDict) -> list[str]:
  """Keys whose value differs between a run's saved config and `config` (JSON-normalised).
  Keys added to the schema since the run was saved count as unchanged while they keep their
  default; keys since removed are not compared.

  Returns the safe changes; raises ConfigError naming the others (model-shape changes first)."""
  if isinstance(saved.get("model"), dict):
    saved = {**saved, "model": _json(model_config_from(saved["model"]))}
  new = _json(config)
  new["model"] = _json(_resolved(config.model))
  old, new = _flat(saved), _flat(new)
  defaults = _flat(_json(base_config()))
  changed = sorted(k for k in new if old.get(k, defaults.get(k)) != new[k])
  unsafe = [k for k in changed if not k.startswith(SAFE_TO_CHANGE)]
  shape = [k for k in unsafe if k.startswith(SHAPE_KEYS)]
  if unsafe:
    def listed(keys):
      return ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)
    experiment = [k for k in unsafe if k not in shape]
    what = []
    if experiment:
      what.append(f"changes the experiment ({listed(experiment)})")
    if shape:
      what.append(f"changes the model shape ({listed(shape)})")
    raise ConfigError(f"this config {' and '.join(what)} of the run being resumed. Use another "
                      "--workdir for a new run, or the run's own config to resume it.")
  return changed


def holds_run(workdir: str) -> bool:
  """Whether `workdir` has results of a run (a checkpoint or the untrained model's scores),
  not only the config.json of a start that failed before training."""
  ckpt = os.path.join(workdir, "checkpoints")
  steps = [d for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else []
  return bool(steps) or os.path.exists(os.path.join(workdir, "before.json"))


def check_workdir(config, workdir: str) -> None:
  """A workdir that holds a run of another config is refused before anything is written;
  settings that may change between restarts (SAFE_TO_CHANGE) are logged."""
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
