"""The one training loop, for every objective and stage: epochs of mined segments, the
jitted step, metric lines, NaN stop, validation and model selection, patience,
checkpoints that resume exactly, SIGTERM.

What is trained comes from the objective (objectives/), where the batches come from from
the epoch source (training.epochs), how a model is validated from `validate`. A run is
resumed from its latest checkpoint by running the same command again: the train state,
the segment's plan, the input pipeline's iterator state and the progress counters are
restored, so the run continues with the very batches and random keys it would have seen
(on CPU the final parameters are bit-identical to an uninterrupted run). SIGTERM (how
clusters preempt) saves a checkpoint before exiting.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import Mesh

from vgssl_jax import checkpoints, interrupts, sharding
from vgssl_jax.resume import config_changes
from vgssl_jax.errors import Preempted, TrainingDiverged
from vgssl_jax.models import aggregations, backbones
from vgssl_jax.objectives.base import Objective, retrieval_variables
from vgssl_jax.progress import Progress
from vgssl_jax.training.epochs import EpochSource
from vgssl_jax.training.metrics_log import MetricsWriter
from vgssl_jax.training.optimizer import make_optimizer, step_lr, with_lr
from vgssl_jax.training.state import (TrainState, abstract_train_state, create_train_state)
from vgssl_jax.training.step import jit_train_step

Validate = Callable[[TrainState], dict]


def fresh_progress() -> dict:
  """Where a run stands: epoch (0-based), segment and step within it; with a started
  segment, its plan and the data iterator's state; the epoch's running sums; the epoch
  source's state; the best validation score and the validations without a better one."""
  return {"epoch": 0, "segment": 0, "step_in_segment": 0, "plan": None, "iterator": None,
          "sums": fresh_sums(), "source": {}, "best": None, "stale": 0, "stopped_early": False}


def fresh_sums() -> dict:
  """The running sums of an epoch: loss over the steps so far, their number, and the
  unreadable images skipped (mining and batches)."""
  return {"loss": 0.0, "steps": 0, "skipped": 0}


class _Signals:
  """Turns SIGTERM (how clusters preempt) and a first Ctrl-C (SIGINT) into a flag checked
  between steps: the loop then saves a checkpoint and stops. A second Ctrl-C ends the
  process at once (exit status 130), also when both presses fall in one long call into
  XLA (a compilation): CPython then runs the handler only once, so the presses are counted
  from the bytes the C-level handler writes to a wakeup pipe. Once the final save is done,
  further presses are ignored: the process is only exiting."""

  def __init__(self):
    self.requested = None  # the name of the signal that asked to stop
    self.saved = False     # the checkpoint asked for is written: ignore further presses

  @contextlib.contextmanager
  def installed(self):
    read_fd, write_fd = os.pipe()
    for fd in (read_fd, write_fd):
      os.set_blocking(fd, False)

    def presses() -> int:
      try:
        return os.read(read_fd, 4096).count(bytes([signal.SIGINT]))
      except BlockingIOError:
        return 0

    def handler(signum, frame):
      del frame
      if signum == signal.SIGINT and (self.requested == "SIGINT" or presses() > 1):
        stop_now(signum, None)
      name = signal.Signals(signum).name
      again = " (Ctrl-C again stops at once, without saving)" if signum == signal.SIGINT else ""
      logging.warning("received %s: saving a checkpoint at the next step boundary%s", name, again)
      self.requested = name

    def stop_now(signum, frame):
      del signum, frame
      # at once: no clean-up that could hang; a checkpoint being written is never committed
      # half (orbax renames a finished one into place), so the last committed one resumes
      interrupts.exit_now("interrupted (Ctrl-C twice): stopped at once; run the same command "
                          "to resume from the last checkpoint.")
    try:
      previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
      previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:  # not the main thread (e.g. embedded use): no preemption handling
      os.close(read_fd)
      os.close(write_fd)
      yield
      return
    try:
      yield
    finally:
      signal.set_wakeup_fd(previous_fd)
      os.close(read_fd)
      os.close(write_fd)
      for s, h in previous.items():
        ignore = s == signal.SIGINT and self.saved
        signal.signal(s, signal.SIG_IGN if ignore else h)


class Trainer:
  """Trains `objective` on the batches of `source`; see the module docstring.

  `validate(state)` -> {"recall@N": ...} scores a model (None: no validation); the
  checkpoint with the best `selection` value (e.g. "recall@5") is kept, earlier wins ties.
  """

  def __init__(self, config, objective: Objective, mesh: Mesh, source: EpochSource,
               workdir: str, validate: Validate | None = None, selection: str = "recall@5"):
    self.config, self.objective, self.mesh, self.source = config, objective, mesh, source
    self.workdir, self.validate, self.selection = workdir, validate, selection
    tc = config.train
    self.tx = make_optimizer(tc.lr, tc.optimizer, tc.weight_decay)
    self.step_fn = jit_train_step(objective, self.tx, mesh, tc.grad_accum_steps,
                                  backbones.frozen_modules(config.model)
                                  + aggregations.frozen_modules(config.model)
                                  + tuple(objective.frozen))
    self.metrics = MetricsWriter(workdir)
    self.signals = _Signals()
    self.mngr = checkpoints.manager(os.path.join(workdir, "checkpoints"), tc.keep_checkpoints)

  # ------------------------------------------------------------------ state and checkpoints

  def init_state(self) -> TrainState:
    return create_train_state(self.objective, self.tx, self.config.seed,
                              tuple(self.config.data.image_size), self.mesh)

  def resume_or_init(self, init_fn=None) -> tuple[TrainState, dict]:
    """The newest checkpoint of the workdir that restores (a damaged newer one is set
    aside, see checkpoints.restore_latest), or a new state (`init_fn`, default init_state)."""
    if self.mngr.latest_step() is None:
      return (init_fn or self.init_state)(), fresh_progress()
    abstract = abstract_train_state(self.objective, self.tx, tuple(self.config.data.image_size),
                                    self.mesh)
    step, state, progress, meta = checkpoints.restore_latest(self.mngr, abstract)
    changed = config_changes(meta["config"], self.config)
    if changed:
      logging.info("resuming with changed settings: %s", ", ".join(changed))
    logging.info("resumed from %s/%d (epoch %d, segment %d, step %d of it)", self.mngr.directory,
                 step, progress["epoch"] + 1, progress["segment"] + 1, progress["step_in_segment"])
    return state, progress

  def _stop_preempted(self, where: str) -> None:
    """After the checkpoint a signal asked for was started: wait for it, stop the run."""
    self.mngr.wait_until_finished()
    self.signals.saved = True
    raise Preempted(f"stopped by {self.signals.requested} {where}: the checkpoint is saved in "
                    f"{self.mngr.directory}; run the same command to resume.")

  def save(self, state: TrainState, progress: dict, metrics: dict | None = None) -> None:
    step = int(state.step)
    if self.mngr.latest_step() == step:  # already saved at this step (e.g. then SIGTERM)
      return
    checkpoints.save(self.mngr, step, state, progress,
                     checkpoints.meta_for(self.config, progress["epoch"], metrics), metrics)

  # ------------------------------------------------------------------ one epoch

  def _check_finite(self, losses: list, first_step: int, epoch: int) -> np.ndarray:
    values = np.asarray(jax.device_get(losses), np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if len(bad):
      step = first_step + int(bad[0]) + 1
      last = self.mngr.latest_step()
      where = f"step {last} in {self.mngr.directory}" if last is not None else "none"
      raise TrainingDiverged(
          f"the loss became {values[bad[0]]} at step {step} (epoch {epoch + 1}); training "
          f"stopped. The last good checkpoint is {where}; lower train.lr or check the data, "
          "then run the same command to resume from it.")
    return values

  def train_segment(self, state: TrainState, progress: dict) -> tuple[TrainState, dict]:
    """Runs (the rest of) segment progress["segment"] of epoch progress["epoch"], the
    learning rate set before every step (optimizer.step_lr). The epoch's running sums
    (loss, steps, skipped images) are kept in progress["sums"], so that they are saved with
    every checkpoint: a resumed epoch reports what an uninterrupted one does."""
    tc, epoch, segment = self.config.train, progress["epoch"], progress["segment"]
    if progress["plan"] is None:
      plan = self.source.mine(state, epoch, segment)
      sums = dict(progress["sums"])
      sums["skipped"] += int(plan.get("skipped_images", 0))
      progress = {**progress, "plan": plan, "step_in_segment": 0, "iterator": None,
                  "sums": sums, "source": self.source.state()}
    iterator, steps = self.source.batches(progress["plan"], epoch, segment)
    if progress["iterator"] is not None:
      iterator.set_state(progress["iterator"])
    start = progress["step_in_segment"]
    segments = self.source.segments(epoch)
    desc = f"epoch {epoch + 1}/{tc.epochs}" + (f" part {segment + 1}/{segments}"
                                               if segments > 1 else "")

    window, window_first, wait, skipped = [], int(state.step), 0.0, 0
    extras: dict[str, list] = {}  # the objective's own metrics (batch_acc), per window
    window_start = time.perf_counter()
    bar = Progress(range(start, steps), total=steps - start, desc=desc, unit="step")
    steps_per_epoch = steps * segments
    lr, step = None, int(state.step)  # the step counted on the host: no sync per step
    for s in bar:
      t0 = time.perf_counter()
      batch = next(iterator)
      wait += time.perf_counter() - t0
      skipped += int(batch.pop("skipped").sum())
      step_rate = step_lr(tc, epoch, step, steps_per_epoch)
      step += 1
      if step_rate != lr:  # a new value only when the schedule moves
        lr = step_rate
        state = with_lr(state, lr)
      state, metrics = self.step_fn(state, sharding.shard_batch(batch, self.mesh))
      if window:
        # at most two steps in flight: a stop request (SIGTERM, Ctrl-C) is answered at the next
        # step boundary, not after the device drained a whole logging window of queued steps
        window[-1].block_until_ready()
      window.append(metrics["loss"])  # fetched per window
      for name, value in metrics.items():
        if name not in ("loss", "grad_norm"):
          extras.setdefault(name, []).append(value)
      done = s + 1
      progress = {**progress, "step_in_segment": done}
      at_checkpoint = tc.checkpoint_every and done % tc.checkpoint_every == 0 and done < steps
      if done % tc.log_every == 0 or done == steps or at_checkpoint or self.signals.requested:
        values = self._check_finite(window, window_first, epoch)
        seconds = time.perf_counter() - window_start
        sums = progress["sums"]
        progress["sums"] = {"loss": sums["loss"] + float(np.sum(values)),
                            "steps": sums["steps"] + len(values),
                            "skipped": sums["skipped"] + skipped}
        record = {"step": int(state.step), "epoch": epoch + 1, "loss": float(values.mean()),
                  "lr": lr, "step_time_s": seconds / len(values)}
        record.update({name: float(np.mean(jax.device_get(v))) for name, v in extras.items()})
        record.update({f"{unit}_per_s": len(values) * n / seconds
                       for unit, n in self.source.throughput.items()})
        record["input_wait"] = wait / seconds
        self.metrics.write(record)
        bar.set_postfix(f"loss {record['loss']:.4f}" + "".join(
            f" {name} {record[name]:.3f}" for name in extras))
        window, window_first, wait, skipped, extras = [], int(state.step), 0.0, 0, {}
        window_start = time.perf_counter()
      if at_checkpoint or self.signals.requested:
        self.save(state, {**progress, "iterator": iterator.get_state()})
      if self.signals.requested:
        self._stop_preempted(f"at step {int(state.step)}")
    return state, progress

  def train_epoch(self, state: TrainState, progress: dict) -> tuple[TrainState, dict, dict]:
    """Runs (the rest of) epoch progress["epoch"]; returns the state, the progress at the
    epoch's end and the epoch record."""
    epoch = progress["epoch"]
    while progress["segment"] < self.source.segments(epoch):
      state, progress = self.train_segment(state, progress)
      progress = {**progress, "segment": progress["segment"] + 1, "step_in_segment": 0,
                  "plan": None, "iterator": None}
    sums = progress["sums"]
    if sums["skipped"]:
      logging.warning("epoch %d: %d unreadable training images were skipped (listed above)",
                      epoch + 1, sums["skipped"])
    record = {"epoch": epoch + 1, "step": int(state.step),
              "epoch_loss": sums["loss"] / max(sums["steps"], 1), "skipped_images": sums["skipped"]}
    return state, {**progress, "epoch": epoch + 1, "segment": 0, "sums": fresh_sums()}, record

  # ------------------------------------------------------------------ the run

  def _validate(self, state: TrainState, progress: dict, epoch: int) -> dict:
    """Validation metrics for the checkpoint; updates the best score and patience."""
    tc = self.config.train
    val = self.validate(state)
    metrics = {f"val/{k}": v for k, v in val.items() if isinstance(v, (int, float))
               and "@" in k}
    self.metrics.write({"epoch": epoch + 1, "step": int(state.step), **metrics})
    score = val[self.selection]
    logging.info("epoch %d validation: %s (selection: %s %.2f)", epoch + 1,
                 " ".join(f"{k} {v:.1f}" for k, v in val.items() if "recall@" in k),
                 self.selection, score)
    improved = progress["best"] is None or score > progress["best"]
    progress["best"] = score if improved else progress["best"]
    progress["stale"] = 0 if improved else progress["stale"] + 1
    if tc.patience and progress["stale"] >= tc.patience:
      logging.info("early stop: %d validations without a better %s (best %.2f)",
                   progress["stale"], self.selection, progress["best"])
      progress["stopped_early"] = True
    return {**metrics, checkpoints.SELECTION: score}

  def fit(self, state: TrainState, progress: dict | None = None) -> TrainState:
    """All (remaining) epochs. A checkpoint after every epoch (with validation metrics when
    validated), every train.checkpoint_every steps, and on SIGTERM."""
    tc = self.config.train
    progress = progress or fresh_progress()
    self.source.restore(progress.get("source"))
    with self.signals.installed():
      while progress["epoch"] < tc.epochs and not progress["stopped_early"]:
        epoch = progress["epoch"]
        state, progress, record = self.train_epoch(state, progress)
        logging.info("epoch %d/%d: loss %.4f", epoch + 1, tc.epochs, record["epoch_loss"])
        self.metrics.write(record)
        metrics = None
        if self.validate is not None and tc.val_every and (epoch + 1) % tc.val_every == 0:
          metrics = self._validate(state, progress, epoch)
        self.save(state, progress, metrics)
        if self.signals.requested:
          self._stop_preempted(f"after epoch {epoch + 1}")
    self.mngr.wait_until_finished()
    return state

  def tested(self, state: TrainState) -> tuple[dict, dict]:
    """The retrieval network to test after training, and which it is: the checkpoint with
    the best validation score when the run validated (as the original reloads
    best_model.pth), else the last state. The info is {"step": N, "selection": "<metric> =
    <value>"} or {"step": N, "selection": "last"}."""
    self.mngr.wait_until_finished()
    best = checkpoints.best_step(self.mngr)
    last = retrieval_variables(state.params, state.batch_stats)
    if best is None:
      return last, {"step": int(state.step), "selection": "last"}
    score = checkpoints.selection_score(self.mngr, best)
    info = {"step": best, "selection": f"{self.selection} = {score:.2f}"}
    if best == int(state.step):
      return last, info
    template = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), last)
    variables = checkpoints.restore_variables(self.mngr.directory, best, template,
                                              sharding.replicated(self.mesh))
    logging.info("testing the best checkpoint: step %d (%s)", best, info["selection"])
    return variables, info

  def close(self) -> None:
    self.mngr.wait_until_finished()
    self.mngr.close()
