"""Shared by the benchmark scripts: environment, medians and the JSON report."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def setup() -> None:
  """The CPU defaults of the entry points (re-executes once), so that benchmarks measure
  what training runs with; VGSSL_CPU_TUNING=0 measures glibc's defaults."""
  from vgssl_jax import cpu_env
  cpu_env.apply()


def parse_size(text: str) -> tuple[int, int]:
  """"480x640" -> (480, 640): (height, width)."""
  h, w = (int(v) for v in text.lower().split("x"))
  return h, w


def objective(method: str, backbone: str, width: int, fc_output_dim: int, n_layers: int,
              projection_size: int, dtype: str = "float32", vit: str = "384,12,6",
              image_size=(224, 224), aggregation: str = "", cct: str = "384,14,6"):
  """The SSL objective of a stage-1 step to time, with the original's augmentation (RRC
  0.25 and the batch flip: base_config's defaults). `vit`: a DeiT's "embed_dim,depth,heads"."""
  from vgssl_jax.config import base_config
  from vgssl_jax.objectives.registry import build_objective
  c = base_config()
  c.method = method
  c.data.image_size = tuple(image_size)
  c.model.vit.embed_dim, c.model.vit.depth, c.model.vit.num_heads = (
      int(v) for v in vit.split(","))
  c.model.backbone, c.model.width, c.model.dtype = backbone, width, dtype
  c.model.n_layers, c.model.projection_size = n_layers, projection_size
  c.model.fc_output_dim = fc_output_dim
  c.model.aggregation = aggregation
  dim, depth, heads = (int(v) for v in cct.split(","))
  c.model.cct.update({"embed_dim": dim, "depth": depth, "num_heads": heads,
                      "img_size": image_size[0]})
  return build_objective(c)


def stage_one_step(objective, size: tuple[int, int], pairs: int, mesh, seed: int = 0,
                   negatives: int = 0):
  """(state, jitted step, batch of `pairs` random uint8 pairs, or of `pairs` query tuples
  with `negatives` negatives each for the supervised objectives): the step to time, Adam."""
  import numpy as np
  from vgssl_jax import sharding
  from vgssl_jax.training.optimizer import make_optimizer
  from vgssl_jax.training.state import create_train_state
  from vgssl_jax.training.step import jit_train_step
  tx = make_optimizer(1e-5)
  state = create_train_state(objective, tx, 0, size, mesh)
  step = jit_train_step(objective, tx, mesh)
  rng = np.random.default_rng(seed)
  batch = {k: rng.integers(0, 256, size=(pairs, *size, 3), dtype=np.uint8)
           for k in ("query", "positive")}
  if negatives:
    batch["negatives"] = rng.integers(0, 256, size=(pairs, negatives, *size, 3), dtype=np.uint8)
  batch = sharding.shard_batch(batch, mesh)
  return state, step, batch


SUPERVISED = ("triplet", "sare_ind", "sare_joint")


def add_step_options(p) -> None:
  """The options that describe the stage-1 step to time or profile (train_step.py,
  profile_step.py) and its PyTorch twin (train_step.TorchWorker reads them)."""
  import sys
  p.add_argument("--method", default="vicreg")
  p.add_argument("--backbone", default="resnet50conv5")
  p.add_argument("--width", type=int, default=64, help="ResNet channel width (64: torchvision)")
  p.add_argument("--vit", default="384,12,6",
                 help="DeiT embed_dim,depth,num_heads (with --backbone deit; DeiT-S default)")
  p.add_argument("--aggregation", default="",
                 help="model.aggregation ('' = the backbone's; with --compare-torch: gem, or "
                      "netvlad with vgg16, seqpool with cct384)")
  p.add_argument("--cct", default="384,14,6", help="CCT embed_dim,depth,num_heads (cct384)")
  p.add_argument("--resolution", default="224x224", help="HxW of the input images")
  p.add_argument("--batch", type=int, default=8, help="pairs per step")
  p.add_argument("--n-layers", type=int, default=2)
  p.add_argument("--projection-size", type=int, default=4096)
  p.add_argument("--fc-output-dim", type=int, default=1024)
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--negatives", type=int, default=2,
                 help="M negatives per query tuple (triplet, sare_ind, sare_joint)")
  p.add_argument("--compare-torch", action="store_true")
  p.add_argument("--torch-python", default=sys.executable,
                 help="a Python with torch installed, for --compare-torch")
  p.add_argument("--out", default=None, help="write the figures as JSON here")


def step_from_options(a, mesh):
  """(image size, state, jitted step, batch) of the step `add_step_options` describes."""
  size = parse_size(a.resolution)
  step_objective = objective(a.method, a.backbone, a.width, a.fc_output_dim, a.n_layers,
                             a.projection_size, a.dtype, vit=a.vit, image_size=size,
                             aggregation=a.aggregation, cct=a.cct)
  negatives = a.negatives if a.method in SUPERVISED else 0
  return (size, *stage_one_step(step_objective, size, a.batch, mesh, negatives=negatives))


def step_runner(compiled, state, batch):
  """run(n) -> the times (seconds) of n calls of a compiled train step, its state carried."""
  import jax  # pylint: disable=import-outside-toplevel

  def run(n: int) -> list[float]:
    nonlocal state
    times = []
    for _ in range(n):
      t = time.perf_counter()
      state, _ = compiled(state, batch)
      jax.block_until_ready(state)
      times.append(time.perf_counter() - t)
    return times
  return run


class TorchWorker:
  """A PyTorch benchmark script of this folder in a subprocess (its own Python, with torch):
  it prints its info as one JSON line, then answers each "run N" on stdin with a JSON list
  of N times in seconds."""

  def __init__(self, python: str, script: str, *args: str):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), script)
    import subprocess  # pylint: disable=import-outside-toplevel
    self.proc = subprocess.Popen([python, path, *args], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
    self.info = json.loads(self.proc.stdout.readline())

  def run(self, n: int) -> list[float]:
    self.proc.stdin.write(f"run {n}\n")
    self.proc.stdin.flush()
    return json.loads(self.proc.stdout.readline())

  def close(self):
    self.proc.stdin.close()
    self.proc.wait()


def median(values) -> float:
  return float(statistics.median(values))


def peak_host_memory_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def environment() -> dict:
  import jax
  dev = jax.devices()[0]
  return {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "cpus": os.cpu_count(),
          "platform": dev.platform, "device_kind": dev.device_kind,
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", ""),
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "jax": jax.__version__}


def report(summary: str, result: dict, out: str | None) -> None:
  """Prints the one summary line and writes the JSON."""
  print(summary, flush=True)
  if out:
    with open(out, "w") as f:
      json.dump({**result, "environment": environment()}, f, indent=1)
