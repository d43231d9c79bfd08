"""The stage-1 loop: per epoch GeoPair mining, then the steps; validation every N epochs;
checkpoints that resume exactly.

A run is resumed from its latest checkpoint by running the same command again: the train
state, the epoch's GeoPairs (mining state), the input pipeline's iterator state and the
progress counters are restored, so the run continues with the very batches and random
keys it would have seen (on CPU the final parameters are bit-identical to an
uninterrupted run). SIGTERM (how clusters preempt) saves a checkpoint before exiting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time

import jax
import numpy as np
from jax.sharding import Mesh

from data_pipelines import loader, mining
from data_pipelines.places import PlaceDataset, TrainPlaces
from vgssl_jax import checkpoints, evaluation, parallel
from vgssl_jax.config import config_changes, items_per_step
from vgssl_jax.errors import Preempted, TrainingDiverged
from vgssl_jax.inference import Embedder
from vgssl_jax.methods import Method, descriptor_variables
from vgssl_jax.metrics import MetricsWriter
from vgssl_jax.progress import Progress
from vgssl_jax.train import (TrainState, abstract_train_state, create_train_state, epoch_lr,
                             jit_train_step, make_optimizer, mining_config, with_lr)


def pairs_to_json(pairs: mining.GeoPairs) -> dict:
  return {k: (None if v is None else np.asarray(v).tolist())
          for k, v in vars(pairs).items()}


def pairs_from_json(data: dict) -> mining.GeoPairs:
  return mining.GeoPairs(**{k: (None if v is None else np.asarray(v, np.int64))
                            for k, v in data.items()})


def fresh_progress() -> dict:
  """Where a run stands: epoch (0-based) and step within it; with a started epoch, its
  GeoPairs and the data iterator's state; the best validation R@5 and stale validations."""
  return {"epoch": 0, "step_in_epoch": 0, "pairs": None, "iterator": None, "best": None,
          "stale": 0, "stopped_early": False}


class _Signals:
  """Turns SIGTERM into a flag checked between steps (the handler itself does no work)."""

  def __init__(self):
    self.requested = False

  @contextlib.contextmanager
  def installed(self):
    def handler(signum, frame):
      del frame
      logging.warning("received signal %d: saving a checkpoint at the next step boundary", signum)
      self.requested = True
    try:
      previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. embedded use): no preemption handling
      yield
      return
    try:
      yield
    finally:
      signal.signal(signal.SIGTERM, previous)


class Trainer:
  """Trains a method on a place dataset; see the module docstring for resume semantics."""

  def __init__(self, config, method: Method, mesh: Mesh, train_places: TrainPlaces,
               workdir: str, embedder: Embedder, val_places: PlaceDataset | None = None):
    self.config, self.method, self.mesh = config, method, mesh
    self.train_places, self.val_places = train_places, val_places
    self.workdir, self.embedder = workdir, embedder
    tc = config.train
    self.tx = make_optimizer(tc.lr)
    self.step_fn = jit_train_step(method, self.tx, mesh, tc.random_resized_crop,
                                  tc.horizontal_flip, tc.grad_accum_steps)
    dc = config.data
    self.options = loader.LoaderOptions(tuple(dc.image_size), dc.num_workers, dc.num_threads,
                                        jpeg_draft=dc.jpeg_draft)
    self.mining = mining_config(config)
    self.items_per_step = items_per_step(config)
    self.metrics = MetricsWriter(workdir)
    self.signals = _Signals()
    self.mngr = checkpoints.manager(os.path.join(workdir, "checkpoints"), tc.keep_checkpoints)

  # ------------------------------------------------------------------ state and checkpoints

  def init_state(self) -> TrainState:
    return create_train_state(self.method, self.tx, self.config.seed,
                              tuple(self.config.data.image_size), self.mesh)

  def resume_or_init(self, init_fn=None) -> tuple[TrainState, dict]:
    """The latest checkpoint of the workdir, or a new state (`init_fn`, default init_state)."""
    step = self.mngr.latest_step()
    if step is None:
      return (init_fn or self.init_state)(), fresh_progress()
    abstract = abstract_train_state(self.method, self.tx, tuple(self.config.data.image_size),
                                    self.mesh)
    state, progress, meta = checkpoints.restore(self.mngr, step, abstract)
    changed = config_changes(meta["config"], self.config)
    if changed:
      logging.info("resuming with changed settings: %s", ", ".join(changed))
    logging.info("resumed from %s/%d (epoch %d, step %d of the epoch)", self.mngr.directory, step,
                 progress["epoch"] + 1, progress["step_in_epoch"])
    return state, progress

  def _stop_preempted(self, where: str) -> None:
    """After the SIGTERM checkpoint was started: wait for it, then stop the run."""
    self.mngr.wait_until_finished()
    raise Preempted(f"stopped by SIGTERM {where}: the checkpoint is saved in "
                    f"{self.mngr.directory}; run the same command to resume.")

  def save(self, state: TrainState, progress: dict, metrics: dict | None = None) -> None:
    step = int(state.step)
    if self.mngr.latest_step() == step:  # already saved at this step (e.g. then SIGTERM)
      return
    checkpoints.save(self.mngr, step, state, progress,
                     checkpoints.meta_for(self.config, progress["epoch"], metrics), metrics)

  # ------------------------------------------------------------------ one epoch

  def mine(self, state: TrainState, epoch: int) -> mining.GeoPairs:
    """This epoch's GeoPairs, mined with the current model (eval mode, projector output)."""
    places = self.train_places.places
    variables = descriptor_variables(state.params, state.batch_stats)

    def embed(part, indices):
      return self.embedder(variables, places.images(part), indices, output="projection",
                           desc=f"mining {part}")
    rng = np.random.default_rng([self.config.seed, epoch])
    return mining.compute_pairs(self.train_places, embed, rng, self.mining)

  def _check_finite(self, losses: list, first_step: int, epoch: int) -> np.ndarray:
    values = np.asarray(jax.device_get(losses), np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
      step = first_step + int(bad[0]) + 1
      last = self.mngr.latest_step()
      raise TrainingDiverged(
          f"the loss became {values[bad[0]]} at step {step} (epoch {epoch + 1}); training "
          f"stopped. The last good checkpoint is {'step %d in %s' % (last, self.mngr.directory) if last is not None else 'none'}"
          "; lower train.lr or check the data, then run the same command to resume from it.")
    return values

  def train_epoch(self, state: TrainState, progress: dict) -> tuple[TrainState, dict]:
    """Runs (the rest of) epoch progress["epoch"]; returns the state and the epoch record."""
    tc, epoch = self.config.train, progress["epoch"]
    places = self.train_places.places
    if progress["pairs"] is None:
      pairs = self.mine(state, epoch)
      progress = {**progress, "pairs": pairs_to_json(pairs), "step_in_epoch": 0, "iterator": None}
    else:
      pairs = pairs_from_json(progress["pairs"])
    lr = epoch_lr(tc.lr, epoch, tc.epochs, tc.lr_schedule, tc.warmup_epochs)
    state = with_lr(state, lr)
    plan = loader.plan_epoch(pairs, places.num_queries, self.items_per_step, self.config.seed,
                             epoch)
    items = loader.local_items(plan, jax.process_index(), jax.process_count())
    local_batch = self.items_per_step // jax.process_count()
    iterator = iter(loader.pair_dataset(places, items, local_batch, self.options))
    if progress["iterator"] is not None:
      iterator.set_state(progress["iterator"])
    steps, start = len(plan), progress["step_in_epoch"]

    window, window_first, wait, skipped, losses = [], int(state.step), 0.0, 0, []
    window_start = time.perf_counter()
    bar = Progress(range(start, steps), total=steps - start, desc=f"epoch {epoch + 1}/{tc.epochs}",
                   unit="step")
    for s in bar:
      t0 = time.perf_counter()
      batch = next(iterator)
      wait += time.perf_counter() - t0
      skipped += int(batch.pop("skipped").sum())
      state, metrics = self.step_fn(state, parallel.shard_batch(batch, self.mesh))
      window.append(metrics["loss"])  # fetched per window: no host sync inside the loop
      done = s + 1
      progress = {**progress, "step_in_epoch": done}
      at_checkpoint = tc.checkpoint_every and done % tc.checkpoint_every == 0 and done < steps
      if done % tc.log_every == 0 or done == steps or at_checkpoint or self.signals.requested:
        values = self._check_finite(window, window_first, epoch)
        seconds = time.perf_counter() - window_start
        losses.extend(values.tolist())
        record = {"step": int(state.step), "epoch": epoch + 1, "loss": float(values.mean()),
                  "lr": lr, "step_time_s": seconds / len(values),
                  "pairs_per_s": len(values) * tc.batch_size / seconds,
                  "images_per_s": 2 * len(values) * tc.batch_size / seconds,
                  "input_wait": wait / seconds}
        self.metrics.write(record)
        bar.set_postfix(f"loss {record['loss']:.4f}")
        window, window_first, wait = [], int(state.step), 0.0
        window_start = time.perf_counter()
      if at_checkpoint or self.signals.requested:
        self.save(state, {**progress, "iterator": iterator.get_state()})
      if self.signals.requested:
        self._stop_preempted(f"at step {int(state.step)}")
    if skipped:
      logging.warning("epoch %d: %d unreadable training images were skipped (listed above)",
                      epoch + 1, skipped)
    record = {"epoch": epoch + 1, "step": int(state.step), "epoch_loss": float(np.mean(losses)),
              "skipped_images": skipped}
    return state, record

  # ------------------------------------------------------------------ the run

  def validate(self, state: TrainState) -> dict:
    """Recall@N on the val split (hard resize, as the original's validation)."""
    ec = self.config.eval
    options = evaluation.EvalOptions(ec.positive_radius, tuple(ec.recall_values), ec.backend)
    return evaluation.evaluate_places(
        self.embedder, descriptor_variables(state.params, state.batch_stats), self.val_places,
        options)

  def fit(self, state: TrainState, progress: dict | None = None) -> TrainState:
    """All (remaining) epochs. A checkpoint after every epoch (with validation metrics when
    validated), every train.checkpoint_every steps, and on SIGTERM."""
    tc = self.config.train
    progress = progress or fresh_progress()
    with self.signals.installed():
      while progress["epoch"] < tc.epochs and not progress["stopped_early"]:
        epoch = progress["epoch"]
        state, record = self.train_epoch(state, progress)
        logging.info("epoch %d/%d: loss %.4f", epoch + 1, tc.epochs, record["epoch_loss"])
        self.metrics.write(record)
        progress = {**progress, "epoch": epoch + 1, "step_in_epoch": 0, "pairs": None,
                    "iterator": None}
        metrics = None
        if self.val_places is not None and tc.val_every and (epoch + 1) % tc.val_every == 0:
          val = self.validate(state)
          metrics = {f"val/{k}": v for k, v in val.items() if k.startswith(("recall@", "map@"))}
          self.metrics.write({"epoch": epoch + 1, "step": int(state.step), **metrics})
          logging.info("epoch %d validation: R@1 %.1f R@5 %.1f", epoch + 1, val["recall@1"],
                       val["recall@5"])
          improved = progress["best"] is None or val["recall@5"] > progress["best"]
          progress["best"] = val["recall@5"] if improved else progress["best"]
          progress["stale"] = 0 if improved else progress["stale"] + 1
          if tc.patience and progress["stale"] >= tc.patience:
            logging.info("early stop: %d validations without a better R@5 (best %.2f)",
                         progress["stale"], progress["best"])
            progress["stopped_early"] = True
        self.save(state, progress, metrics)
        if self.signals.requested:
          self._stop_preempted(f"after epoch {epoch + 1}")
    self.mngr.wait_until_finished()
    return state

  def close(self) -> None:
    self.mngr.wait_until_finished()
    self.mngr.close()
