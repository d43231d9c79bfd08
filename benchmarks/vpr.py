r"""DINOv2-B/14 + SALAD: the evaluation forward and the GSV-Cities training step, side by side
with the official PyTorch modules in the same environment.

  python benchmarks/vpr.py --mode forward                       # 322x322, batch 8
  python benchmarks/vpr.py --mode step                          # 224x224, 16 places x 4, MS loss
  python benchmarks/vpr.py --mode forward --compare-torch --torch-python <python with torch> \
      --dinov2-src <facebookresearch/dinov2 checkout> --salad-src <serizba/salad checkout>

Random weights (the figures do not depend on them). forward: eval mode, the descriptor of a
batch of images. step: the last --trainable-blocks blocks of DINOv2 and SALAD learn (the
rest runs without gradients, as SALAD trains), the multi-similarity miner and loss, AdamW.
Times are medians of --steps runs after --warmup, PyTorch and JAX interleaved in --rounds.
"""

from __future__ import annotations

import argparse
import sys
import time

import common

common.setup()

# pylint: disable=wrong-import-position
import jax  # noqa: E402
import numpy as np  # noqa: E402

from vgssl_jax import sharding  # noqa: E402
from vgssl_jax.config import base_config  # noqa: E402


def config(a):
  c = base_config()
  c.method = "ms"
  c.model.backbone, c.model.aggregation = "dinov2_vitb14", "salad"
  c.model.fc_output_dim, c.model.n_layers = 0, 0
  c.model.train_blocks, c.model.dtype = a.trainable_blocks, a.dtype
  c.data.image_size = common.parse_size(a.resolution)
  c.train.batch_size, c.data.gsv.img_per_place = a.batch, a.images_per_place
  c.train.optimizer, c.train.lr, c.train.weight_decay = "adamw", 6e-5, 9.5e-9
  return c


def forward(a, mesh):
  from vgssl_jax.models.network import build_model, init_variables
  c = config(a)
  size = tuple(c.data.image_size)
  net = build_model(c.model, None, size)
  variables = jax.jit(lambda: init_variables(net, jax.random.PRNGKey(0), size),
                      out_shardings=sharding.replicated(mesh))()
  x = jax.device_put(np.random.default_rng(0).normal(size=(a.batch, *size, 3)).astype(
      np.float32), sharding.data_sharded(mesh))
  fn = jax.jit(lambda v, x: net.apply(v, x, False, project=False)["descriptor"])
  compiled = fn.lower(variables, x).compile()

  def run(n):
    times = []
    for _ in range(n):
      t = time.perf_counter()
      jax.block_until_ready(compiled(variables, x))
      times.append(time.perf_counter() - t)
    return times
  return run, a.batch


def step(a, mesh):
  from vgssl_jax.objectives.registry import build_objective
  from vgssl_jax.training.optimizer import make_optimizer
  from vgssl_jax.training.state import create_train_state
  from vgssl_jax.training.step import jit_train_step
  c = config(a)
  size = tuple(c.data.image_size)
  objective = build_objective(c)
  tx = make_optimizer(c.train.lr, c.train.optimizer, c.train.weight_decay)
  state = create_train_state(objective, tx, 0, size, mesh)
  fn = jit_train_step(objective, tx, mesh)
  rng = np.random.default_rng(0)
  batch = sharding.shard_batch({"images": rng.integers(
      0, 256, size=(a.batch, a.images_per_place, *size, 3), dtype=np.uint8),
      "places": np.arange(a.batch, dtype=np.int32)}, mesh)
  return common.step_runner(fn.lower(state, batch).compile(), state, batch), \
      a.batch * a.images_per_place


def torch_worker(a) -> common.TorchWorker:
  """benchmarks/torch_vpr.py in a subprocess: `run(n)` -> n times (seconds)."""
  return common.TorchWorker(
      a.torch_python, "torch_vpr.py", "--mode", a.mode, "--resolution", a.resolution,
      "--batch", str(a.batch), "--images-per-place", str(a.images_per_place),
      "--trainable-blocks", str(a.trainable_blocks), "--dinov2-src", a.dinov2_src,
      "--salad-src", a.salad_src)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--mode", choices=["forward", "step"], default="forward")
  p.add_argument("--resolution", default=None, help="HxW (forward 322x322, step 224x224)")
  p.add_argument("--batch", type=int, default=None,
                 help="images (forward, 8) or places per step (step, 16)")
  p.add_argument("--images-per-place", type=int, default=4)
  p.add_argument("--trainable-blocks", type=int, default=4)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--devices", type=int, default=0, help="mesh size (0: all)")
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--steps", type=int, default=5, help="timed runs per round")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--compare-torch", action="store_true")
  p.add_argument("--torch-python", default=sys.executable)
  p.add_argument("--dinov2-src", default="")
  p.add_argument("--salad-src", default="")
  p.add_argument("--out", default=None, help="write the figures as JSON here")
  a = p.parse_args()
  a.resolution = a.resolution or ("322x322" if a.mode == "forward" else "224x224")
  a.batch = a.batch or (8 if a.mode == "forward" else 16)
  if a.compare_torch and not (a.dinov2_src and a.salad_src):
    p.error("--compare-torch needs --dinov2-src and --salad-src (checkouts of the official code)")
  mesh = sharding.make_mesh(a.devices)
  t0 = time.perf_counter()
  run, images = (forward if a.mode == "forward" else step)(a, mesh)
  compile_s = time.perf_counter() - t0
  run(a.warmup)
  torch = torch_worker(a) if a.compare_torch else None
  if torch:
    torch.run(a.warmup)
  ours, theirs = [], []
  for _ in range(a.rounds if torch else 1):
    ours += run(a.steps)
    if torch:
      theirs += torch.run(a.steps)
  if torch:
    torch.close()
  ms = 1000 * common.median(ours)
  dev = jax.devices()[0]
  result = {"mode": a.mode, "image_size": list(common.parse_size(a.resolution)),
            "batch": a.batch, "images": images, "dtype": a.dtype, "devices": mesh.devices.size,
            "compile_s": compile_s, "ms": ms, "images_per_s": images / ms * 1000, "all_s": ours,
            "peak_host_memory_mb": common.peak_host_memory_mb()}
  what = ("forward" if a.mode == "forward" else
          f"step ({a.batch} places x {a.images_per_place}, last {a.trainable_blocks} blocks)")
  summary = (f"DINOv2-B/14 + SALAD {what} {a.resolution} {a.dtype} on {result['devices']} "
             f"{dev.platform}: {ms:.0f} ms, {result['images_per_s']:.1f} images/s")
  if torch:
    torch_ms = 1000 * common.median(theirs)
    result.update(torch_ms=torch_ms, torch_all_s=theirs, torch=torch.info,
                  speedup_vs_torch=torch_ms / ms)
    summary += f"; PyTorch {torch_ms:.0f} ms: {torch_ms / ms:.2f}x"
  common.report(summary, result, a.out)


if __name__ == "__main__":
  main()
