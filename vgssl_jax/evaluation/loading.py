"""The model an evaluation scores: as initialised, from one of our runs, or from a weights
file (a VG-SSL PyTorch checkpoint, one of our exports, or a published release: SALAD,
MegaLoc, BoQ, MixVPR)."""

from __future__ import annotations

import logging

import jax

from vgssl_jax import sharding
from vgssl_jax.errors import ConfigError
from vgssl_jax.models.network import init_variables
from vgssl_jax.models.weights import export as weights_export
from vgssl_jax.models.weights import importer
from vgssl_jax.models.weights.files import is_weight_file, load_state_dict
from vgssl_jax import checkpoints


def load_variables(config, checkpoint: str | None, model, mesh) -> tuple[dict, dict]:
  """(variables, info) of `model` to evaluate: as initialised (checkpoint None), from one of
  our runs, or from a weights file."""
  image_size = tuple(config.data.image_size)
  if checkpoint is None or is_weight_file(checkpoint):
    variables = jax.jit(lambda: init_variables(model, jax.random.PRNGKey(config.seed),
                                               image_size),
                        out_shardings=sharding.replicated(mesh))()
    if checkpoint is None:
      return variables, {"checkpoint": None, "note": "model as initialised (baseline)"}
    variables = importer.import_file(checkpoint, jax.device_get(variables), config.model)
    return (jax.device_put(variables, sharding.replicated(mesh)),
            {"checkpoint": checkpoint, "note": "imported weights file"})
  template = abstract_variables(model, image_size)
  directory, step, meta = checkpoints.read_meta(checkpoint)
  variables = checkpoints.restore_variables(directory, step, template, sharding.replicated(mesh))
  return variables, {"checkpoint": directory, "step": step, "epoch": meta.get("epoch"),
                     "validation": meta.get("metrics", {})}


def abstract_variables(model, image_size) -> dict:
  """Shapes and dtypes of `model`'s variables (traced, not computed or compiled)."""
  return jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0), tuple(image_size)))


def check_checkpoint(config, checkpoint: str, model) -> None:
  """Raises ConfigError unless `checkpoint` can give `model`'s weights: a weights file is
  read and matched against the network's shapes, a run's folder must hold a checkpoint."""
  if is_weight_file(checkpoint):
    _, report = importer.import_state(load_state_dict(checkpoint),
                                      abstract_variables(model, config.data.image_size),
                                      config.model)
    has_reranker = "Reranker" in report["stage2"]
  else:
    _, _, meta = checkpoints.read_meta(checkpoint)
    has_reranker = bool(meta["model"].get("local_dim"))
  if config.eval.rerank_top and not has_reranker:
    # the original's eval_reranker.py scores such a model with a random R2Former (quirk 25)
    raise ConfigError(f"eval.rerank_top={config.eval.rerank_top}: {checkpoint} has no trained "
                      "R2Former (a global-only, stage-1 model); its re-ranking would be random. "
                      "Evaluate it with eval.rerank_top=0, or give a stage-2 (method r2former) "
                      "checkpoint.")


def adopt_checkpoint_model(config, checkpoint: str) -> tuple[int, int]:
  """The checkpoint decides the network: its method and model settings replace the config's.
  Returns the image size the network was trained at (a DeiT's position grid is made for
  it; evaluation inputs of data.image_size use it resized).

  A run's checkpoint and our own .safetensors exports record them; original VG-SSL files do
  not, so the config must describe that network (backbone, sizes, data.image_size)."""
  if is_weight_file(checkpoint):
    meta = weights_export.read_export_metadata(checkpoint)
    if not meta.get("model"):
      return tuple(config.data.image_size)
  else:
    _, _, meta = checkpoints.read_meta(checkpoint)
  recorded = checkpoints.model_config_from(meta["model"])
  with config.unlocked():
    for key in recorded:
      if config.model[key] != recorded[key]:
        plain = lambda v: v.to_dict() if hasattr(v, "to_dict") else v  # noqa: E731
        logging.info("model.%s = %r from the checkpoint (config had %r)", key,
                     plain(recorded[key]), plain(config.model[key]))
    config.model = recorded
    config.method = meta["method"]
  return tuple(meta.get("image_size") or config.data.image_size)
