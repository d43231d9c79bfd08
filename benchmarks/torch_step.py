"""The PyTorch stage-1 step as a worker for train_step.py --compare-torch.

Reads commands on stdin, one per line ("run N": time N steps), and answers each with a JSON
list of per-step seconds, so that the caller can interleave it with the JAX step in the
same environment. Needs torch; run with the Python that has it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import common

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from tests.reference.torch_models import make_step  # noqa: E402


def profile(call, n: int) -> dict:
  """{"step_ms": wall ms per step, "self_ms": {aten operator: self CPU ms per step}}."""
  from torch.profiler import ProfilerActivity
  from torch.profiler import profile as torch_profile
  with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
    t0 = time.perf_counter()
    for _ in range(n):
      call()
    wall = (time.perf_counter() - t0) / n
  self_ms = {e.key: e.self_cpu_time_total / 1000 / n for e in prof.key_averages()
             if e.self_cpu_time_total > 0}
  return {"step_ms": 1000 * wall, "self_ms": self_ms}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--depth", type=int, default=50)
  p.add_argument("--width", type=int, default=64)
  p.add_argument("--resolution", default="224x224")
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--projection-size", type=int, default=4096)
  p.add_argument("--fc-output-dim", type=int, default=1024)
  p.add_argument("--dtype", default="float32")
  p.add_argument("--deit", default="", help="embed_dim,depth,num_heads: the DeiT step")
  p.add_argument("--triplet", type=int, default=0, help="M > 0: train.py's triplet step")
  p.add_argument("--zoo", default="", help="vgg16_netvlad | cct384_seqpool: that network")
  p.add_argument("--clusters", type=int, default=64)
  p.add_argument("--cct", default="384,14,6", help="CCT embed_dim,depth,num_heads")
  a = p.parse_args()
  h, w = common.parse_size(a.resolution)
  torch.manual_seed(0)
  deit = None
  if a.deit:
    dim, depth, heads = (int(v) for v in a.deit.split(","))
    deit = {"image_size": (h, w), "embed_dim": dim, "depth": depth, "num_heads": heads}
  zoo = None
  if a.zoo:
    dim, depth, heads = (int(v) for v in a.cct.split(","))
    zoo = {"net": a.zoo, "clusters": a.clusters} if a.zoo.startswith("vgg") else {
        "net": a.zoo, "cct": {"img_size": h, "dim": dim, "depth": depth, "heads": heads}}
  step = make_step(a.depth, a.width, a.fc_output_dim, a.projection_size, dtype=a.dtype,
                   deit=deit, triplet_negatives=a.triplet, zoo=zoo)
  x = torch.randn(a.batch * (1 + a.triplet), 3, h, w) if a.triplet else torch.randn(a.batch, 3, h, w)
  y = torch.randn(a.batch, 3, h, w)
  print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}),
        flush=True)
  for line in sys.stdin:
    cmd, n = line.split()
    assert cmd in ("run", "profile")
    if cmd == "profile":  # self CPU time per aten operator, per step
      print(json.dumps(profile(lambda: step(x, y), int(n))), flush=True)
      continue
    times = []
    for _ in range(int(n)):
      t0 = time.perf_counter()
      step(x, y)
      times.append(time.perf_counter() - t0)
    print(json.dumps(times), flush=True)


if __name__ == "__main__":
  main()
