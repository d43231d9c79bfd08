"""Run in a subprocess with 4 CPU devices (see test_sharding.py): the same global batch
through the train step on a 1-device and on a 4-device mesh. Prints JSON."""

import json
import sys

import jax
import numpy as np

from vgssl_jax import parallel
from vgssl_jax.config import base_config
from vgssl_jax.methods import LossConfig, Method
from vgssl_jax.models.network import build_model
from vgssl_jax.train import create_train_state, jit_train_step, make_optimizer


def run(method_name: str, devices: int, steps: int, batches):
  c = base_config()
  c.method = method_name
  c.model.backbone, c.model.width = "resnet18conv4", 8
  c.model.fc_output_dim, c.model.projection_size = 16, 32
  mesh = parallel.make_mesh(devices)
  method = Method(method_name, build_model(c.model, method_name), LossConfig())
  tx = make_optimizer(1e-3)
  state = create_train_state(method, tx, 0, (32, 48), mesh)
  step = jit_train_step(method, tx, mesh, random_resized_crop=0.25, horizontal_flip=True)
  losses = []
  for batch in batches[:steps]:
    state, metrics = step(state, parallel.shard_batch(batch, mesh))
    losses.append(float(metrics["loss"]))
  return losses, jax.device_get(state), step._cache_size()


def main():
  method_name = sys.argv[1]
  rng = np.random.default_rng(0)
  batches = [{k: rng.integers(0, 256, size=(8, 32, 48, 3), dtype=np.uint8)
              for k in ("query", "positive")} for _ in range(3)]
  l1, s1, compiles1 = run(method_name, 1, 3, batches)
  l4, s4, compiles4 = run(method_name, 4, 3, batches)
  diffs = jax.tree.leaves(jax.tree.map(
      lambda a, b: float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
      if np.size(a) else 0.0, (s1.params, s1.batch_stats), (s4.params, s4.batch_stats)))
  scales = jax.tree.leaves(jax.tree.map(lambda a: float(np.max(np.abs(a))) if np.size(a) else 0.0,
                                        (s1.params, s1.batch_stats)))
  print(json.dumps({"losses_1": l1, "losses_4": l4, "max_param_diff": max(diffs),
                    "max_param": max(scales), "compiles_1": compiles1, "compiles_4": compiles4,
                    "devices": jax.device_count()}))


if __name__ == "__main__":
  main()
