"""Where the stage-1 step's time goes, per kind of operation, ours next to PyTorch's.

  python benchmarks/profile_step.py --backbone resnet18conv4 --width 64 --resolution 96x128 \
      --batch 32 --n-layers 2 --projection-size 1024 --fc-output-dim 256 \
      --compare-torch --torch-python <python with torch>

Ours: a trace of --steps steps (jax.profiler, Perfetto JSON), every XLA:CPU thunk's time
summed by what it computes, read off the compiled HLO: convolutions forward, their input
and weight gradients (by kernel size), matrix products (the 1x1 convolutions, heads and
projector), the max pool and its gradient, top-k, and the rest (elementwise and reductions:
BatchNorm, ReLU, the loss, the optimizer). PyTorch: torch.profiler's self CPU time per
aten operator, grouped the same way. Thunk times are wall times of the thunks; on a
multi-core CPU a thunk uses all cores, so the rows add up to about the step time.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import tempfile
import time

import common

if __name__ == "__main__":
  common.setup()

import jax  # noqa: E402

from vgssl_jax import sharding  # noqa: E402

INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = (\S+?)(?:\{[^}]*\})? (\w[\w\-]*)\(")
COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) ")


def parse_hlo(text: str):
  """Compiled HLO text -> ({instruction: (shape, opcode, calls, op_name)}, {computation:
  [opcodes and shapes of its instructions]})."""
  instructions, computations, current = {}, collections.defaultdict(list), None
  for line in text.splitlines():
    m = COMPUTATION.match(line)
    if m and line.rstrip().endswith("{"):
      current = m.group(1)
      continue
    m = INSTRUCTION.match(line)
    if not m:
      continue
    name, shape, opcode = m.groups()
    calls = re.search(r"calls=%([\w.\-]+)", line)
    op_name = re.search(r'op_name="([^"]*)"', line)
    instructions[name] = (shape, opcode, calls.group(1) if calls else None,
                          op_name.group(1) if op_name else "")
    if current:
      computations[current].append((opcode, shape, line))
  return instructions, computations


def _kernel_size(line: str) -> str:
  window = re.search(r"window=\{size=(\d+)x(\d+)", line)
  return f"{window.group(1)}x{window.group(2)}" if window else "?"


def category(name: str, instructions, computations) -> str:
  """What the thunk `name` computes, e.g. 'conv 3x3 forward', 'conv 3x3 weight grad'."""
  base = name.split(":")[0]
  info = instructions.get(base)
  if info is None:
    return "other (runtime)"
  shape, opcode, calls, op_name = info
  body = computations.get(calls, []) if calls else []
  ops = [(opcode, shape, "")] if not body else body
  backward = "transpose(" in op_name
  for op, out_shape, line in ops:
    if op == "convolution":
      line = line or next((l for o, _, l in body if o == "convolution"), "")
      window = _kernel_size(line)
      if not backward:
        return f"conv forward ({window})"
      # an input gradient's window is the kernel (3x3: the stem's 7x7 input gradient, of the
      # image, is never computed); a weight gradient's is the forward output's spatial size
      return f"conv input grad ({window})" if window in ("1x1", "3x3") else "conv weight grad"
    if op == "dot":
      return f"matmul {'backward' if backward else 'forward'}"
  for op, _, _ in ops:
    if op in ("select-and-scatter", "scatter"):
      return "max pool gradient"
    if op == "reduce-window":
      return "max pool"
  if opcode == "custom-call":
    return "custom call (top-k, ...)"
  if opcode in ("copy", "transpose") or "transpose" in base or "copy" in base:
    return "copies and transposes"
  return "elementwise and reductions"


def profile_ours(a, mesh) -> dict:
  _, state, step, batch = common.step_from_options(a, mesh)
  compiled = step.lower(state, batch).compile()
  instructions, computations = parse_hlo(compiled.as_text())
  for _ in range(a.warmup):
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  folder = tempfile.mkdtemp(prefix="vgssl_profile_")
  try:
    t = time.perf_counter()
    with jax.profiler.trace(folder, create_perfetto_trace=True):
      for _ in range(a.steps):
        state, _ = compiled(state, batch)
        jax.block_until_ready(state)
    wall = (time.perf_counter() - t) / a.steps
    trace = glob.glob(os.path.join(folder, "**", "*.json.gz"), recursive=True)[0]
    with gzip.open(trace) as f:
      events = json.load(f)["traceEvents"]
  finally:
    shutil.rmtree(folder, ignore_errors=True)
  per = collections.Counter()
  for e in events:
    if e.get("ph") != "X" or e["name"].split(":")[0] not in instructions:
      continue
    per[category(e["name"], instructions, computations)] += e.get("dur", 0) / 1000 / a.steps
  return {"step_ms": 1000 * wall, "ms": dict(per)}


TORCH_GROUPS = [  # aten operator (self CPU time) -> our categories
    ("convolution_backward", "conv backward (input and weight grads)"),
    ("mkldnn_convolution", "conv forward"), ("convolution", "conv forward"),
    ("max_pool2d_with_indices_backward", "max pool gradient"),
    ("max_pool2d", "max pool"), ("mm", "matmul"), ("addmm", "matmul"), ("bmm", "matmul"),
]


def torch_category(op: str) -> str:
  name = op.split("::")[-1]
  for key, group in TORCH_GROUPS:
    if name == key or name.startswith(key + "_"):
      return group
  return "elementwise and reductions"


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  common.add_step_options(p)
  p.add_argument("--warmup", type=int, default=4)
  p.add_argument("--steps", type=int, default=3)
  a = p.parse_args()
  mesh = sharding.make_mesh(0)
  ours = profile_ours(a, mesh)
  result = {"args": vars(a), "ours": ours}
  print(f"ours: {ours['step_ms']:.0f} ms/step (traced)")
  for name, ms in sorted(ours["ms"].items(), key=lambda kv: -kv[1]):
    print(f"  {ms:8.1f} ms  {name}")
  if a.compare_torch:
    import train_step
    worker = train_step.torch_worker(a.torch_python, a)
    worker.run(a.warmup)
    worker.proc.stdin.write(f"profile {a.steps}\n")
    worker.proc.stdin.flush()
    ops = json.loads(worker.proc.stdout.readline())
    worker.close()
    groups = collections.Counter()
    for op, ms in ops["self_ms"].items():
      groups[torch_category(op)] += ms
    result["torch"] = {"step_ms": ops["step_ms"], "ms": dict(groups), "ops": ops["self_ms"]}
    print(f"PyTorch: {ops['step_ms']:.0f} ms/step (profiled)")
    for name, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
      print(f"  {ms:8.1f} ms  {name}")
    top = sorted(ops["self_ms"].items(), key=lambda kv: -kv[1])[:12]
    print("  PyTorch's largest operators: " + ", ".join(f"{k} {v:.0f}" for k, v in top))
  common.report("profile done", result, a.out)


if __name__ == "__main__":
  main()
