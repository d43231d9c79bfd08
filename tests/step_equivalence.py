"""Run in a subprocess with 4 CPU devices (see test_sharding.py): the same global batch
through the train step on a 1-device and on a 4-device mesh. Prints JSON."""

import json
import sys

import jax
import numpy as np
import optax

from vgssl_jax import sharding
from vgssl_jax.config import base_config
from vgssl_jax.objectives.registry import build_objective
from vgssl_jax.training.optimizer import make_optimizer
from vgssl_jax.training.state import create_train_state
from vgssl_jax.training.step import jit_train_step


def run(method_name: str, devices: int, batches, plain_sgd: bool = True, deit: bool = False):
  """Runs len(batches) steps; returns the losses, the state after the first step and the
  number of compilations."""
  c = base_config()
  c.method = method_name
  c.model.backbone, c.model.width = "resnet18conv4", 8
  c.model.fc_output_dim, c.model.projection_size = 16, 32
  c.data.image_size = (32, 48)
  if deit:
    c.model.backbone = "deit"
    c.model.vit.update(dict(embed_dim=32, depth=1, num_heads=2))
  c.loss.queue_size = 16  # a small queue so that it wraps around within the three steps
  c.train.random_resized_crop, c.train.horizontal_flip = 0.25, True
  mesh = sharding.make_mesh(devices)
  objective = build_objective(c)
  # SGD: Adam turns noise-level gradients (e.g. of a bias in front of a BatchNorm, exactly 0 in
  # exact arithmetic) into lr-sized steps of either sign, which would hide real differences.
  tx = optax.sgd(0.001) if plain_sgd else make_optimizer(1e-3)
  state = create_train_state(objective, tx, 0, (32, 48), mesh)
  step = jit_train_step(objective, tx, mesh)
  losses, first = [], None
  for batch in batches:
    state, metrics = step(state, sharding.shard_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
    if "batch_acc" in metrics:  # the objective's metric, on the global batch too
      losses.append(float(metrics["batch_acc"]))
    if first is None:
      first = jax.device_get((state.params, state.batch_stats, state.objective_state))
  return losses, first, step._cache_size()


def max_diff(a, b) -> tuple[float, float]:
  """Largest absolute difference of two pytrees, and the largest magnitude in `a`."""
  as64 = lambda x: np.asarray(x, np.float64)
  diffs = jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.max(np.abs(as64(x) - as64(y)))) if np.size(x) else 0.0, a, b))
  scales = jax.tree.leaves(jax.tree.map(
      lambda x: float(np.max(np.abs(as64(x)))) if np.size(x) else 0.0, a))
  return max(diffs), max(scales)


def main():
  method_name = sys.argv[1]
  negatives = "--negatives" in sys.argv  # 4 items (q, p, n): 8 pairs per step
  keys = ("query", "positive", "negative") if negatives else ("query", "positive")
  items = 4 if negatives else 8
  rng = np.random.default_rng(0)
  if method_name == "ms":  # 8 places x 4 images: mining and loss over the global batch
    batches = [{"images": rng.integers(0, 256, size=(8, 4, 32, 48, 3), dtype=np.uint8),
                "places": rng.permutation(100)[:8].astype(np.int32)} for _ in range(3)]
  else:
    batches = [{k: rng.integers(0, 256, size=(items, 32, 48, 3), dtype=np.uint8) for k in keys}
               for _ in range(3)]
  deit = "--deit" in sys.argv
  l1, s1, compiles_1 = run(method_name, 1, batches, deit=deit)
  l4, s4, compiles_4 = run(method_name, 4, batches, deit=deit)
  # everything the first step updates: parameters, BN statistics, method state (EMA, queue)
  diff, scale = max_diff(s1, s4)
  print(json.dumps({"losses_1": l1, "losses_4": l4, "max_state_diff": diff, "max_state": scale,
                    "compiles_1": compiles_1, "compiles_4": compiles_4,
                    "devices": jax.device_count()}))


if __name__ == "__main__":
  main()
