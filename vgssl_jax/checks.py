"""The one place where a config is checked and completed before any work: each component
checks the settings it owns (the backbone family, the aggregation, the objective, the epoch
source, the optimizer, the data and evaluation sections), and this module calls them in
turn, after the schema's own rules (sizes, counts, radii).

  validate(config, purpose)   ConfigError naming the setting and the fix
  resolve(config)             derived defaults made explicit (config.json records them)
  ignored_overrides(...)      command-line settings that this run's components do not read
"""

from __future__ import annotations

import os

import ml_collections

from vgssl_jax import data_config
from vgssl_jax.errors import ConfigError, check_choice
from vgssl_jax.evaluation import runner
from vgssl_jax.models import aggregations, backbones
from vgssl_jax.models.network import DTYPES, check_non_local
from vgssl_jax.objectives import registry as objectives
from vgssl_jax.training import optimizer
from vgssl_jax.training.sources import EPOCH_SOURCES, source_class

PURPOSES = ("train", "evaluate")


def _component(fn, *args, settings: str = ""):
  """fn(*args) with its ValueError as a ConfigError (the components of models/ speak
  ValueError: they are used outside configs too)."""
  try:
    return fn(*args)
  except ValueError as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError(f"{e}{f' ({settings})' if settings else ''}.") from None


def _check_schema(c: ml_collections.ConfigDict) -> None:
  """The rules of the schema itself: sizes, counts and radii."""
  mc, t = c.model, c.train
  check_choice("model.dtype", mc.dtype, tuple(DTYPES))
  if mc.fc_output_dim < 0:
    raise ConfigError(f"model.fc_output_dim={mc.fc_output_dim} must be >= 0 (0: no FC).")
  for key in ("model.width", "model.projection_size", "train.epochs", "train.batch_size",
              "train.queries_per_epoch", "train.infer_batch_size"):
    section, name = key.split(".")
    if int(c[section][name]) <= 0:
      raise ConfigError(f"{key}={c[section][name]} must be a positive integer.")
  if not 0.0 <= t.random_resized_crop < 1.0:
    raise ConfigError(f"train.random_resized_crop={t.random_resized_crop} must be in "
                      "[0, 1): the crop keeps a (1 - r, 1) fraction of the area.")
  if t.queries_per_epoch < t.batch_size:
    raise ConfigError(f"train.queries_per_epoch={t.queries_per_epoch} is smaller than "
                      f"train.batch_size={t.batch_size}: an epoch would have no step.")
  for key in ("positive_radius", "negative_radius"):
    if not t[key] > 0:
      raise ConfigError(f"train.{key}={t[key]} must be > 0.")
  if t.positive_radius > t.negative_radius:
    raise ConfigError("train.positive_radius must not exceed train.negative_radius.")
  if not 0 <= t.save_best < len(tuple(c.eval.recall_values)):
    raise ConfigError(f"train.save_best={t.save_best} must index eval.recall_values="
                      f"{tuple(c.eval.recall_values)} (0..{len(c.eval.recall_values) - 1}).")
  for key in ("patience", "checkpoint_every"):
    if t[key] < 0:
      raise ConfigError(f"train.{key}={t[key]} must be >= 0.")
  if t.keep_checkpoints < 1 or t.log_every < 1 or t.grad_accum_steps < 1:
    raise ConfigError("train.keep_checkpoints, train.log_every and train.grad_accum_steps must be "
                      ">= 1.")


def validate(c: ml_collections.ConfigDict, purpose: str = "train") -> None:
  """Raises ConfigError naming the setting and the fix; runs before anything is compiled.
  `purpose`: "train" (vgssl_jax.main) or "evaluate" (the settings of training alone, such as
  what stage 2 selects models by, are not checked)."""
  entry = _component(objectives.entry, c.method)
  mc, size = c.model, tuple(c.data.image_size)
  data_config.check_config(c)
  _check_schema(c)
  fam, _ = _component(backbones.family, mc.backbone, settings="model.backbone")
  _component(backbones.check, mc, size)
  shapes = _component(backbones.shapes, mc, size)
  eval_size = data_config.eval_image_size(c)
  if eval_size != size:
    _component(backbones.check, mc, eval_size, settings="eval.image_size")
    _component(aggregations.check_other_size, mc, shapes,
               _component(backbones.shapes, mc, eval_size), "eval.image_size")
  agg = _component(aggregations.check_pair, mc, shapes)
  _component(check_non_local, mc, shapes)
  if mc.local_dim:
    _component(backbones.check_local, mc, agg)
  entry.cls.check_config(c, purpose)
  source = EPOCH_SOURCES[entry.epoch_source]
  source.check_config(c)
  items, accum = source.steps_items(c), c.train.grad_accum_steps
  if items % accum:
    raise ConfigError(f"train.grad_accum_steps={accum} must divide the {items} items of a step "
                      "(train.batch_size, halved with train.pair_negative and negatives).")
  optimizer.check_config(c)
  runner.check_config(c, agg.size(mc, shapes))
  if mc.pretrained and not os.path.isfile(mc.pretrained):
    raise ConfigError(f"model.pretrained={mc.pretrained!r} is not a file: give the path of "
                      f"{fam.weights} (.pth or .safetensors); nothing is downloaded.")
  if c.get("init_run"):
    validate(c.init_run, purpose)


def resolve(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Settings whose default depends on others, made explicit (so config.json records what
  the run uses): the backbone's default aggregation, the optimizer's learning-rate schedule."""
  c.model.aggregation = backbones.aggregation_name(c.model)
  t = c.train
  t.lr_schedule = optimizer.schedule_for(t.optimizer, t.lr_schedule, t.cosine_scheduler)
  if c.get("init_run"):
    resolve(c.init_run)
  return c


# settings read only under a condition on other settings: (keys, used?, why not)
CONDITIONAL_KEYS = (
    (("train.schedule", "train.lr_gamma"), lambda c: c.train.lr_schedule == "step",
     "settings of the step schedule"),
    (("train.lr_end_factor", "train.lr_decay_steps"), lambda c: c.train.lr_schedule == "linear",
     "settings of the linear schedule"),
    (("model.num_non_local", "model.channel_bottleneck"), lambda c: c.model.non_local,
     "settings of the non-local blocks, with model.non_local=False"),
    (("eval.majority_weight",), lambda c: c.eval.test_method == "maj_voting",
     "read by eval.test_method=maj_voting only"),
    (("eval.pca_dataset", "eval.pca_split", "eval.pca_images"), lambda c: c.eval.pca_dim > 0,
     "PCA settings, with eval.pca_dim=0"),
    (("eval.rerank_batch_size",), lambda c: c.eval.rerank_top > 0,
     "re-ranking settings, with eval.rerank_top=0"),
)
# what an evaluation never reads
TRAINING_ONLY = ("train.", "loss.", "rerank.", "init_run.")


def _matches(key: str, patterns) -> bool:
  return any(key == p or (p.endswith(".") and key.startswith(p)) for p in patterns)


def ignored_overrides(c: ml_collections.ConfigDict, keys: list[str],
                      purpose: str = "train") -> dict[str, str]:
  """{key: why} of the given settings (those set on the command line) that this config's
  method, backbone, aggregation or other settings do not read. Run after `resolve`."""
  entry = objectives.entry(c.method)
  fam, _ = backbones.family(c.model.backbone)
  # (kind, name, keys only it reads) of every component, and this run's component per kind
  owners = [("method", m, e.cls.keys) for m, e in objectives.OBJECTIVES.items()]
  owners += [("training", t, cls.keys) for t, cls in EPOCH_SOURCES.items()]
  owners += [("backbone family", f.name, f.keys) for f in backbones.FAMILIES]
  owners += [("aggregation", a, s.keys) for a, s in aggregations.AGGREGATIONS.items()]
  active = {"method": c.method, "training": entry.epoch_source, "backbone family": fam.name,
            "aggregation": c.model.aggregation}
  out = {}
  for key in keys:
    if purpose == "evaluate" and _matches(key, TRAINING_ONLY) and key != "train.infer_batch_size":
      out[key] = "an evaluation does not train"
      continue
    users = [(kind, name) for kind, name, owned in owners if _matches(key, owned)]
    if users and not any(active[kind] == name for kind, name in users):
      kind = users[0][0]
      names = " | ".join(name for k, name in users if k == kind)
      out[key] = f"read only with {kind} {names}; this run's is {active[kind]}"
      continue
    for patterns, used, why in CONDITIONAL_KEYS:
      if _matches(key, patterns) and not used(c):
        out[key] = why
  return out


def items_per_step(config) -> int:
  """Global dataset items per optimizer step (what the devices and micro-batches divide)."""
  return source_class(config).steps_items(config)
