"""Milliseconds per stage-1 train step, pairs/s and images/s, compilation timed separately.

  python benchmarks/train_step.py --backbone resnet50conv5 --resolution 224x224 --batch 8

Steady state: at least --warmup steps (>= 3; the first steps after compilation are
several times slower while buffers are allocated) are run and discarded, then the
median of --steps timed steps is reported. Writes JSON with --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import numpy as np

from vgssl_jax import parallel
from vgssl_jax.config import base_config
from vgssl_jax.methods import LossConfig, make_method
from vgssl_jax.models.network import build_model
from vgssl_jax.train import create_train_state, jit_train_step, make_optimizer


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--method", default="vicreg")
  p.add_argument("--backbone", default="resnet50conv5")
  p.add_argument("--width", type=int, default=64, help="ResNet channel width (64: torchvision)")
  p.add_argument("--resolution", default="224x224", help="HxW of the input images")
  p.add_argument("--batch", type=int, default=8, help="pairs per step")
  p.add_argument("--n-layers", type=int, default=2)
  p.add_argument("--projection-size", type=int, default=4096)
  p.add_argument("--fc-output-dim", type=int, default=1024)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--devices", type=int, default=0, help="mesh size (0: all)")
  p.add_argument("--warmup", type=int, default=4)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--out", default=None, help="write the figures as JSON here")
  a = p.parse_args()
  if a.warmup < 3:
    p.error("--warmup must be >= 3: the first steps after compilation are not steady state")

  c = base_config()
  c.method = a.method
  c.model.backbone, c.model.width, c.model.dtype = a.backbone, a.width, a.dtype
  c.model.n_layers, c.model.projection_size = a.n_layers, a.projection_size
  c.model.fc_output_dim = a.fc_output_dim
  mesh = parallel.make_mesh(a.devices)
  parallel.check_divisible(a.batch, mesh, "--batch")
  method = make_method(a.method, build_model(c.model, a.method), LossConfig())
  tx = make_optimizer(1e-5)
  size = tuple(int(v) for v in a.resolution.lower().split("x"))
  state = create_train_state(method, tx, 0, size, mesh)
  step = jit_train_step(method, tx, mesh, random_resized_crop=0.25, horizontal_flip=True)
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch({k: rng.integers(0, 256, size=(a.batch, *size, 3), dtype=np.uint8)
                                for k in ("query", "positive")}, mesh)

  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  times = []
  for i in range(a.warmup + a.steps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    if i >= a.warmup:
      times.append(time.perf_counter() - t0)
  ms = 1000 * statistics.median(times)
  result = {
      "method": a.method, "backbone": a.backbone, "width": a.width, "image_size": list(size),
      "batch_pairs": a.batch, "dtype": a.dtype, "devices": mesh.devices.size,
      "platform": jax.devices()[0].platform, "device_kind": jax.devices()[0].device_kind,
      "compile_s": compile_s, "ms_per_step": ms, "pairs_per_s": a.batch / ms * 1000,
      "images_per_s": 2 * a.batch / ms * 1000, "step_ms_all": [1000 * t for t in times],
      "loss": float(metrics["loss"]), "host": platform.node(), "date": time.strftime("%Y-%m-%d"),
  }
  print(f"{a.method} {a.backbone} {size[0]}x{size[1]} batch {a.batch} {a.dtype} on "
        f"{result['devices']} {result['platform']}: {ms:.0f} ms/step, "
        f"{result['pairs_per_s']:.2f} pairs/s, {result['images_per_s']:.2f} images/s "
        f"(compile {compile_s:.1f} s, median of {a.steps} after {a.warmup} warm-up)")
  if a.out:
    with open(a.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
