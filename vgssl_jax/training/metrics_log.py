"""The training log: metric records as JSON lines in the workdir (metrics.jsonl), and
TensorBoard events when a writer is installed (tensorboardX, or tensorboard through
torch). Only process 0 writes."""

from __future__ import annotations

import json
import logging
import os

import jax


def _tensorboard_writer(folder: str):
  for module in ("tensorboardX", "torch.utils.tensorboard"):
    try:
      return __import__(module, fromlist=["SummaryWriter"]).SummaryWriter(folder)
    except ImportError:
      continue
  return None


class MetricsWriter:
  """`write({"step": ..., "loss": ...})` appends a line to metrics.jsonl (and TensorBoard)."""

  def __init__(self, workdir: str):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.tensorboard = _tensorboard_writer(os.path.join(workdir, "tensorboard")) if self.enabled else None
    if self.enabled and self.tensorboard is None:
      logging.info("TensorBoard events off (install tensorboardX to get them)")

  def write(self, record: dict) -> None:
    if not self.enabled:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self.tensorboard is not None and "step" in record:
      for key, value in record.items():
        if key != "step" and isinstance(value, (int, float)):
          self.tensorboard.add_scalar(key, value, record["step"])
      self.tensorboard.flush()
