"""Evaluation throughput: descriptors/s of the eval-mode forward, and seconds of the search
for a --database x --queries set, with the on-device top-k and with faiss.

  python benchmarks/evaluate.py --backbone resnet50conv5 --resolution 224x224 --batch 32

The forward is timed on uint8 batches already in memory (decoding is the input pipeline's
benchmark), after compilation and --warmup batches, median of --repeats. It is the pass that
mining embeds with, so its images/s is also compared with the training step's images/s
(the same network, measured in this run, 8 pairs per step).
"""

from __future__ import annotations

import argparse
import time

import common

if __name__ == "__main__":
  common.setup()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from data_pipelines.loader import LoaderOptions  # noqa: E402
from vgssl_jax import sharding  # noqa: E402
from vgssl_jax.evaluation import search  # noqa: E402
from vgssl_jax.evaluation.embedder import Embedder  # noqa: E402
from vgssl_jax.models.network import init_variables  # noqa: E402


def time_calls(fn, warmup: int, repeats: int) -> float:
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return common.median(times)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--backbone", default="resnet50conv5")
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--resolution", default="224x224")
  p.add_argument("--batch", type=int, default=32, help="images per forward (infer_batch_size)")
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--database", type=int, default=20000)
  p.add_argument("--queries", type=int, default=1000)
  p.add_argument("--dim", type=int, default=1024)
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--no-train-step", action="store_true", help="skip the training-step comparison")
  p.add_argument("--out", default=None)
  a = p.parse_args()
  size = common.parse_size(a.resolution)
  mesh = sharding.make_mesh()
  objective = common.objective("vicreg", a.backbone, a.width, 1024, 2, 4096, a.dtype)
  model = objective.model
  variables = jax.jit(lambda: init_variables(model, jax.random.PRNGKey(0), size),
                      out_shardings=sharding.replicated(mesh))()
  # the embedder's own jitted forward, on one batch (image decoding is timed elsewhere)
  forward = Embedder(model, mesh, a.batch, LoaderOptions(size))._forward
  images = sharding.shard_batch((np.random.default_rng(0).integers(
      0, 256, size=(a.batch, *size, 3), dtype=np.uint8), np.ones(a.batch, bool)), mesh)
  t0 = time.perf_counter()
  jax.block_until_ready(forward(variables, images, "projection"))
  compile_s = time.perf_counter() - t0
  # mining embeds projector outputs, evaluation descriptors: time the mining pass
  per_batch = time_calls(lambda: forward(variables, images, "projection"), a.warmup, a.repeats)
  extract = a.batch / per_batch

  rng = np.random.default_rng(1)
  db = rng.normal(size=(a.database, a.dim)).astype(np.float32)
  q = rng.normal(size=(a.queries, a.dim)).astype(np.float32)
  search.device_knn(q, db, 20)  # compile
  search_s = {b: time_calls(lambda b=b: search.knn(q, db, 20, b), 1, 3) for b in search.BACKENDS}

  result = {"backbone": a.backbone, "image_size": list(size), "batch": a.batch, "dtype": a.dtype,
            "devices": mesh.devices.size, "compile_s": compile_s,
            "descriptors_per_s": extract, "search_seconds": search_s,
            "database": a.database, "queries": a.queries, "dim": a.dim}
  summary = (f"eval {a.backbone} {size[0]}x{size[1]} {a.dtype}: {extract:.1f} descriptors/s "
             f"(batch {a.batch}, compile {compile_s:.1f} s); search {a.database} x {a.queries} "
             f"top-20: device {search_s['device']:.3f} s, faiss {search_s['faiss']:.3f} s")
  if not a.no_train_step:
    state, step, batch = common.stage_one_step(objective, size, 8, mesh)
    holder = [state]

    def one_step():
      holder[0], metrics = step(holder[0], batch)
      return holder[0]
    step_s = time_calls(one_step, 4, a.repeats)
    train_images = 16 / step_s
    result.update(train_images_per_s=train_images, mining_vs_train=extract / train_images)
    summary += (f"; training step {train_images:.1f} images/s: the mining pass is "
                f"{extract / train_images:.1f}x faster per image")
  common.report(summary, result, a.out)


if __name__ == "__main__":
  main()
