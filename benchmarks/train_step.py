"""The stage-1 train step: ms/step, pairs/s, images/s, compile seconds, peak memory.

  python benchmarks/train_step.py --backbone resnet50conv5 --resolution 224x224 --batch 8
  python benchmarks/train_step.py --compare-torch --torch-python /path/to/python-with-torch
  python benchmarks/train_step.py --dtype bfloat16 --resolution 480x640 --batch 64   # a GPU

Compilation is timed separately; then at least --warmup steps (>= 3: the first steps
after compilation are several times slower while buffers are allocated) are discarded and
the median of the timed steps is reported. With --compare-torch the same step (ResNet,
GeM, FC, projector, VICReg, Adam; tests/reference/torch_models.py) runs in PyTorch in a
worker process with the same environment, interleaved with ours in --rounds rounds.
"""

from __future__ import annotations

import argparse
import time

import common

if __name__ == "__main__":
  common.setup()

import jax  # noqa: E402

from vgssl_jax import sharding  # noqa: E402
from vgssl_jax.models.resnet import parse_backbone  # noqa: E402


def torch_worker(python: str, a) -> common.TorchWorker:
  """benchmarks/torch_step.py in a subprocess: `run(n)` -> n step times (seconds)."""
  if a.backbone in ("vgg16", "cct384"):  # the zoo's classic pairs
    net = ["--zoo", f"{a.backbone}_{a.aggregation or 'seqpool'}", "--width", str(a.width),
           "--cct", a.cct]
  else:
    net = ["--deit", a.vit] if a.backbone == "deit" else [
        "--depth", str(parse_backbone(a.backbone)[0]), "--width", str(a.width)]
  return common.TorchWorker(
      python, "torch_step.py", *net, "--resolution", a.resolution, "--batch", str(a.batch),
      "--projection-size", str(a.projection_size), "--fc-output-dim", str(a.fc_output_dim),
      "--dtype", a.dtype, *(["--triplet", str(a.negatives)] if a.method == "triplet" else []))


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  common.add_step_options(p)
  p.add_argument("--devices", type=int, default=0, help="mesh size (0: all)")
  p.add_argument("--warmup", type=int, default=4)
  p.add_argument("--steps", type=int, default=5, help="timed steps per round")
  p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (with --compare-torch)")
  a = p.parse_args()
  if a.warmup < 3:
    p.error("--warmup must be >= 3: the first steps after compilation are not steady state")
  if a.compare_torch and a.method not in ("vicreg", "triplet"):
    p.error("--compare-torch times the VICReg and the triplet steps")

  mesh = sharding.make_mesh(a.devices)
  sharding.check_divisible(a.batch, mesh, "--batch")
  size, state, step, batch = common.step_from_options(a, mesh)
  supervised = a.method in common.SUPERVISED

  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0

  run = common.step_runner(compiled, state, batch)
  run(a.warmup)
  torch = torch_worker(a.torch_python, a) if a.compare_torch else None
  ours, theirs = [], []
  if torch:
    torch.run(a.warmup)
  for _ in range(a.rounds if torch else 1):
    ours += run(a.steps)
    if torch:
      theirs += torch.run(a.steps)
  if torch:
    torch.close()
  ms = 1000 * common.median(ours)
  dev = jax.devices()[0]
  peak = (dev.memory_stats() or {}).get("peak_bytes_in_use") if dev.platform != "cpu" else None
  result = {
      "method": a.method, "backbone": a.backbone, "width": a.width, "image_size": list(size),
      "batch_pairs": a.batch, "dtype": a.dtype, "devices": mesh.devices.size,
      "compile_s": compile_s, "ms_per_step": ms, "pairs_per_s": a.batch / ms * 1000,
      "images_per_s": (2 + (a.negatives if supervised else 0)) * a.batch / ms * 1000,
      "step_s_all": ours,
      "peak_device_memory_mb": None if peak is None else peak / 2 ** 20,
      "peak_host_memory_mb": common.peak_host_memory_mb(),
  }
  summary = (f"{a.method} {a.backbone} {size[0]}x{size[1]} batch {a.batch} {a.dtype} on "
             f"{result['devices']} {dev.platform}: {ms:.0f} ms/step, {result['pairs_per_s']:.2f} "
             f"pairs/s, {result['images_per_s']:.2f} images/s (compile {compile_s:.1f} s, "
             f"median of {len(ours)} after {a.warmup} warm-up)")
  if torch:
    torch_ms = 1000 * common.median(theirs)
    result.update(torch_ms_per_step=torch_ms, torch_step_s_all=theirs, torch=torch.info,
                  speedup_vs_torch=torch_ms / ms)
    summary += f"; PyTorch {torch_ms:.0f} ms/step: {torch_ms / ms:.2f}x"
  common.report(summary, result, a.out)


if __name__ == "__main__":
  main()
