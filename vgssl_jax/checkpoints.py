"""Checkpoints with orbax: the whole train state, the run's progress and metadata.

Layout: `<workdir>/checkpoints/<step>/{state,progress,meta}`:
  state     the TrainState pytree (params, BN statistics, optimizer, EMA target, MoCo queue)
  progress  JSON: epoch, step within the epoch, the input pipeline's iterator state, the
            epoch's GeoPairs (the mining state), best validation recall and patience count
  meta      JSON: the config and the model settings needed to rebuild the network
Saves are asynchronous (the state is copied off the device before save() returns) and
atomic: orbax writes into a temporary folder and commits it last, so a checkpoint cut
short by a kill is never picked up. The last N checkpoints are kept, and the best by the
validation score that selects models (recall@5 in stage 1; a tie keeps the earlier one,
as the original).

Older checkpoints: parameters that a backbone family has since moved (its `legacy_paths`,
e.g. DeiT's heads from the backbone into the aggregation) are read from their old place,
and recorded model settings are brought to today's meaning (`model_config_from`).
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import sys
import time

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from vgssl_jax.config import base_config
from vgssl_jax.errors import ConfigError
from vgssl_jax.models import backbones
from vgssl_jax.models.weights.files import WEIGHT_FILES_TEXT
from vgssl_jax.objectives.base import retrieval_variables

# the validation score that selects the best checkpoint (the loop's `selection`, e.g. R@5)
SELECTION = "selection"
ITEMS = ("state", "progress", "meta")


def _rank(metrics: dict) -> float:
  # strictly higher recall wins; among equal recalls the earlier step
  return metrics[SELECTION] - 1e-9 * metrics.get("step", 0)


def manager(directory: str, keep: int = 2, read_only: bool = False) -> ocp.CheckpointManager:
  policy = pp.AnyPreservationPolicy([
      pp.LatestN(keep),
      # BestN keeps the last n in ascending order: the highest rank
      pp.BestN(get_metric_fn=_rank, reverse=False, n=1, keep_checkpoints_without_metrics=False)])
  options = ocp.CheckpointManagerOptions(
      preservation_policy=policy, read_only=read_only, create=not read_only,
      cleanup_tmp_directories=not read_only, save_interval_steps=0 if read_only else 1)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_names=ITEMS)


def save(mngr: ocp.CheckpointManager, step: int, state, progress: dict, meta: dict,
         metrics: dict | None = None) -> None:
  """Starts an asynchronous save of everything needed to resume at `step`."""
  metrics = None if not metrics or SELECTION not in metrics else {**metrics, "step": step}
  mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                          progress=ocp.args.JsonSave(progress),
                                          meta=ocp.args.JsonSave(meta)), metrics=metrics)


# ----------------------------------------------------------------------------- old layouts

def _key_name(key) -> str:
  """A key path entry as orbax names it (dict key, attribute or index)."""
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _flat(tree, is_leaf=None) -> tuple[list[str], list, object]:
  """(dotted names, leaves, treedef) of a pytree."""
  pairs, treedef = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)
  return [".".join(_key_name(k) for k in path) for path, _ in pairs], [v for _, v in pairs], treedef


def _saved_name(name: str, saved: set[str]) -> str | None:
  """Where today's parameter `name` is stored in a checkpoint of names `saved`: the same
  name, or the name before a family moved it (backbones.LEGACY_PATHS)."""
  if name in saved:
    return name
  dotted = "." + name
  for old, new in backbones.LEGACY_PATHS:
    if "." + new in dotted:
      candidate = dotted.replace("." + new, "." + old, 1)[1:]
      if candidate in saved:
        return candidate
  return None


def _saved_tree(mngr: ocp.CheckpointManager, step: int):
  """The structure of the state saved at `step` (array metadata as leaves)."""
  path = epath.Path(os.fspath(mngr.directory)) / str(step) / "state"
  meta = ocp.StandardCheckpointHandler().metadata(path)
  return getattr(meta, "tree", meta)


def _legacy_names(mngr: ocp.CheckpointManager, step: int, names: list[str]) -> dict | None:
  """{today's name: stored name} when the checkpoint at `step` holds some of today's
  leaves `names` under older names; None when it needs no renaming (or cannot be
  renamed: the restore then reports what differs)."""
  try:
    saved = set(_flat(_saved_tree(mngr, step), is_leaf=lambda x: x is None)[0])
  except Exception:  # pylint: disable=broad-except  # unreadable metadata: restore says why
    return None
  if all(n in saved for n in names):
    return None
  mapping = {n: _saved_name(n, saved) for n in names}
  return mapping if None not in mapping.values() else None


def restore(mngr: ocp.CheckpointManager, step: int, abstract_state) -> tuple:
  """(state, progress, meta) saved at `step`; the state restored into `abstract_state`
  (shapes, dtypes, shardings), from older parameter names where a family moved them. A
  foreign or mismatching checkpoint is a ConfigError."""
  names, leaves, treedef = _flat(abstract_state)
  mapping = _legacy_names(mngr, step, names)
  target = abstract_state
  if mapping:  # the saved structure, each leaf with the shape and placement it gets today
    wanted = {mapping[n]: leaf for n, leaf in zip(names, leaves)}
    saved_names, saved_leaves, saved_def = _flat(_saved_tree(mngr, step),
                                                 is_leaf=lambda x: x is None)
    target = jax.tree_util.tree_unflatten(saved_def, [wanted.get(n, leaf) for n, leaf in
                                                      zip(saved_names, saved_leaves)])
  try:
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), progress=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
  except Exception as e:  # orbax raises many types for damaged or foreign folders
    raise ConfigError(f"cannot resume from the checkpoint {mngr.directory}/{step}: "
                      f"{str(e)[:300]}. It is damaged or was written by another model; use "
                      "another --workdir.") from e
  state = out["state"]
  if mapping:
    by_name = dict(zip(*_flat(state)[:2]))
    state = jax.tree_util.tree_unflatten(treedef, [by_name[mapping[n]] for n in names])
    logging.info("checkpoint %d: parameters read from their former places (%s)", step,
                 ", ".join(sorted({f"{mapping[n]} -> {n}" for n in names if mapping[n] != n}))[:300])
  return state, out["progress"], out["meta"]


def restore_latest(mngr: ocp.CheckpointManager, abstract_state) -> tuple | None:
  """(step, state, progress, meta) of the newest checkpoint that restores, or None when
  there is none.

  A newer checkpoint that fails while an older one restores is damaged (e.g. files cut
  short by a full disk): it is moved to <workdir>/damaged_checkpoints/<step> for
  inspection, with a warning saying why, and the run continues from the older one. When
  none restores, nothing is moved and the error lists every reason.
  """
  failures = []
  for step in sorted(mngr.all_steps(), reverse=True):
    with _quiet_stderr():
      try:
        state, progress, meta = restore(mngr, step, abstract_state)
      except ConfigError as e:
        failures.append((step, e))
        # tensorstore's reads still in flight report to a closed event loop: let them
        # finish, and collect their tasks while stderr is still quiet
        time.sleep(1.0)
        gc.collect()
        continue
    if failures:
      _set_aside(mngr, failures, step)
    return step, state, progress, meta
  if failures:
    raise ConfigError("no checkpoint of this run can be restored: " + "; ".join(
        f"step {step}: {e}" for step, e in failures))
  return None


@contextlib.contextmanager
def _quiet_stderr():
  """Python's sys.stderr swapped for a buffer: a failed restore makes tensorstore's
  background reads print tracebacks of their closed event loop ("Event loop is closed"),
  noise beside the one-line report. The log handlers keep the real stream."""
  saved, sys.stderr = sys.stderr, io.StringIO()
  try:
    yield
  finally:
    sys.stderr = saved


def _set_aside(mngr: ocp.CheckpointManager, failures: list, good: int) -> None:
  damaged = os.path.join(os.path.dirname(os.fspath(mngr.directory)), "damaged_checkpoints")
  os.makedirs(damaged, exist_ok=True)
  for step, error in failures:
    target = os.path.join(damaged, str(step))
    if os.path.exists(target):
      target += f".{int(time.time())}"
    os.replace(os.path.join(os.fspath(mngr.directory), str(step)), target)
    logging.warning("checkpoint %d cannot be restored (%s); it was moved to %s for inspection and "
                    "the run resumes from checkpoint %d", step, str(error)[:300], target, good)
  mngr.reload()


def _meta(mngr: ocp.CheckpointManager, step: int) -> dict:
  return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def best_step(mngr: ocp.CheckpointManager) -> int | None:
  """The kept step with the highest validation score (the earliest among equals), or None
  when no kept checkpoint was validated. Read from each checkpoint's metadata."""
  ranked = []
  for step in mngr.all_steps():
    metrics = _meta(mngr, step).get("metrics") or {}
    if SELECTION in metrics:
      ranked.append((_rank({**metrics, "step": step}), step))
  return max(ranked)[1] if ranked else None


def selection_score(mngr: ocp.CheckpointManager, step: int) -> float:
  """The validation score that selected the checkpoint at `step`."""
  return float(_meta(mngr, step)["metrics"][SELECTION])


def best_or_latest_step(mngr: ocp.CheckpointManager) -> int | None:
  """The best step by validation score if any was validated, else the latest."""
  best = best_step(mngr)
  return best if best is not None else mngr.latest_step()


def resolve(path: str) -> tuple[str, int | None]:
  """A run's workdir, its checkpoints/ folder, or one step folder -> (checkpoints dir, step)."""
  path = os.path.abspath(path)
  if not os.path.exists(path):
    raise ConfigError(f"checkpoint {path} does not exist: pass a run's workdir, its checkpoints/ "
                      "folder or one of its step folders.")
  if os.path.isfile(path):
    raise ConfigError(f"checkpoint {path} is a file of a kind not read here: pass a run's "
                      f"workdir or checkpoint folder, or a {WEIGHT_FILES_TEXT} weights file.")
  if os.path.isdir(os.path.join(path, "checkpoints")):
    return os.path.join(path, "checkpoints"), None
  if all(os.path.isdir(os.path.join(path, item)) for item in ("state", "meta")):
    name = os.path.basename(path)
    if name.isdigit():
      return os.path.dirname(path), int(name)
  return path, None


def read_meta(path: str) -> tuple[str, int, dict]:
  """(checkpoints dir, step, meta) of the checkpoint `path` points at (best or latest)."""
  directory, step = resolve(path)
  mngr = manager(directory, read_only=True)
  try:
    step = best_or_latest_step(mngr) if step is None else step
  except Exception as e:  # orbax raises several types for foreign or damaged folders
    raise ConfigError(f"cannot read the checkpoints in {directory}: {e}") from e
  if step is None:
    raise ConfigError(f"no checkpoint found in {directory}: is it a vgssl_jax run folder?")
  try:
    meta = _meta(mngr, step)
  except Exception as e:  # orbax raises several types for foreign or damaged folders
    raise ConfigError(f"cannot read the checkpoint metadata at {directory}/{step}: {e}") from e
  return directory, step, meta


def restore_variables(directory: str, step: int, template: dict, sharding) -> dict:
  """The retrieval network's {"params", "batch_stats"} saved at `step` (a partial restore of
  the train state: optimizer and objective state are not read). `template` gives the shapes
  (e.g. jax.eval_shape of the model's init); arrays are placed with `sharding`."""
  abstract = {"params": {"net": template["params"]}, "batch_stats": {"net": template["batch_stats"]}}
  mngr = manager(directory, read_only=True)
  names, leaves, treedef = _flat(abstract)
  mapping = _legacy_names(mngr, step, names) or {n: n for n in names}
  target: dict = {}
  for name, leaf in zip(names, leaves):  # params and batch stats: dicts all the way down
    *parents, last = mapping[name].split(".")
    node = target
    for part in parents:
      node = node.setdefault(part, {})
    node[last] = leaf
  restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), target)
  try:
    state = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        target, restore_args=restore_args, partial_restore=True)))["state"]
  except (ValueError, KeyError, FileNotFoundError) as e:
    raise ConfigError(f"the checkpoint at {directory}/{step} does not fit this model (shapes or "
                      f"structure differ, or it is not a vgssl_jax checkpoint): {str(e)[:500]}") from e
  by_name = dict(zip(*_flat(state)[:2]))
  if set(by_name) != set(mapping.values()):
    raise ConfigError(f"the checkpoint at {directory}/{step} has other parameters than this model")
  state = jax.tree_util.tree_unflatten(treedef, [by_name[mapping[n]] for n in names])
  want = jax.tree.map(lambda s: tuple(s.shape), abstract)
  if jax.tree.map(lambda a: tuple(a.shape), state) != want:
    raise ConfigError(f"the checkpoint at {directory}/{step} has other shapes than this model")
  return retrieval_variables(state["params"], state["batch_stats"])


def meta_for(config, epoch: int, metrics: dict | None = None) -> dict:
  """What a checkpoint records besides the state: enough to rebuild the model."""
  return {"epoch": epoch, "method": config.method, "model": config.model.to_dict(),
          "image_size": list(config.data.image_size), "metrics": metrics or {},
          "config": json.loads(config.to_json_best_effort())}


def model_config_from(settings: dict) -> ml_collections.ConfigDict:
  """A `model` section from a checkpoint's recorded settings, in today's meaning: keys added
  since it was written take their defaults, the backbone family brings older records up to
  date (models.backbones.upgrade_settings), and the aggregation is named (not "")."""
  mc = base_config().model
  with mc.unlocked():
    for key, value in backbones.upgrade_settings(dict(settings)).items():
      if isinstance(value, dict) and key in mc:
        mc[key].update(value)
      else:
        mc[key] = value
  mc.aggregation = backbones.aggregation_name(mc)
  return mc
