"""Stage 2 against the original's way, in one run:

  eval        queries/s of the re-ranking evaluation (global top --top, --tokens local tokens
              of 3 + --local-dim): our Reranker.logits (batches of --rerank-batch queries,
              one jitted call each, candidates gathered on the host as in evaluation) vs
              the original's test.test_rerank loop in PyTorch (benchmarks/torch_rerank.py);
  precompute  seconds of the hard-negative ranking (top 500 by dot product of --queries-pre
              x --database D=256 descriptors): search.device_dot_topk vs the original's
              chunked loop (120 queries per chunk, full argsort: numpy for CuPy), and numpy
              with argpartition for reference;
  train       ms per stage-2 training step, fix=1 and fix=0 (DeiT-S at --resolution, CE,
              --train-queries queries x --negatives negatives) vs train_reranker.py's step.

  python benchmarks/rerank.py --compare-torch --torch-python <python with torch>
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types

import common

if __name__ == "__main__":
  common.setup()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from vgssl_jax import sharding  # noqa: E402


def stage2_config(a, fix: int):
  from vgssl_jax.cli import load_config
  c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs",
                               "rerank_msls_deit.py"))
  c.data.image_size = common.parse_size(a.resolution)
  c.model.local_dim, c.model.num_local = a.local_dim, a.tokens
  c.rerank.fix = fix
  return c


def interleave(ours, theirs, rounds: int, calls: int):
  a, b = [], []
  for _ in range(rounds):
    a += ours(calls)
    if theirs:
      b += theirs.run(calls)
  return a, b


def bench_eval(a, mesh) -> dict:
  from vgssl_jax.evaluation.rerank import Reranker
  from vgssl_jax.objectives.registry import build_network
  from vgssl_jax.models.network import init_variables
  c = stage2_config(a, 1)
  model = build_network(c.model, c.method, c.data.image_size)
  variables = init_variables(model, jax.random.PRNGKey(0), c.data.image_size)
  shim = types.SimpleNamespace(model=model, mesh=mesh, progress=False)
  reranker = Reranker(shim, variables, a.top, a.rerank_batch)
  rng = np.random.default_rng(0)
  q_local = rng.random((a.rerank_batch, a.tokens, 3 + a.local_dim), dtype=np.float32)
  db_local = rng.random((a.rerank_batch * a.top, a.tokens, 3 + a.local_dim), dtype=np.float32)
  cand = rng.permutation(len(db_local)).reshape(a.rerank_batch, a.top)
  t0 = time.perf_counter()
  reranker.logits(q_local, db_local, cand)
  compile_s = time.perf_counter() - t0

  def ours(n):
    times = []
    for _ in range(n):
      t = time.perf_counter()
      reranker.logits(q_local, db_local, cand)
      times.append(time.perf_counter() - t)
    return times
  ours(2)
  torch = (common.TorchWorker(a.torch_python, "torch_rerank.py", "--tokens", str(a.tokens), "--local-dim",
                       str(a.local_dim), "--top", str(a.top), "--rerank-batch",
                       str(a.rerank_batch)) if a.compare_torch else None)
  if torch:
    torch.run(1)
  mine, theirs = interleave(ours, torch, a.rounds, a.calls)
  if torch:
    torch.close()
  out = {"compile_s": compile_s, "queries_per_s": a.rerank_batch / common.median(mine),
         "batch_s_all": mine}
  line = (f"re-rank eval, top {a.top}, {a.tokens} tokens, batches of {a.rerank_batch}: "
          f"{out['queries_per_s']:.2f} queries/s (compile {compile_s:.1f} s)")
  if torch:
    out.update(torch_queries_per_s=a.rerank_batch / common.median(theirs),
               torch_batch_s_all=theirs)
    out["speedup_vs_torch"] = out["queries_per_s"] / out["torch_queries_per_s"]
    line += (f"; PyTorch loop {out['torch_queries_per_s']:.2f} queries/s: "
             f"{out['speedup_vs_torch']:.2f}x")
  print(line, flush=True)
  return out


def bench_precompute(a) -> dict:
  from vgssl_jax.evaluation import search
  rng = np.random.default_rng(0)

  def unit(n):
    x = rng.normal(size=(n, 256)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
  q, db = unit(a.queries_pre), unit(a.database)
  k = 500
  t0 = time.perf_counter()
  search.device_dot_topk(q[:1024], db, k)
  compile_s = time.perf_counter() - t0

  def original(argpartition=False):
    out = np.empty((len(q), k), np.int64)
    for s in range(0, len(q), 120):
      scores = q[s:s + 120] @ db.T
      if argpartition:
        part = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, part, 1), axis=1, kind="stable")
        out[s:s + 120] = np.take_along_axis(part, order, 1)
      else:
        out[s:s + 120] = np.argsort(-scores, axis=1)[:, :k]
    return out
  timings = {"device": [], "numpy_argsort": [], "numpy_argpartition": []}
  for _ in range(a.rounds):
    t = time.perf_counter()
    _, ours = search.device_dot_topk(q, db, k)
    timings["device"].append(time.perf_counter() - t)
    t = time.perf_counter()
    theirs = original()
    timings["numpy_argsort"].append(time.perf_counter() - t)
    t = time.perf_counter()
    original(argpartition=True)
    timings["numpy_argpartition"].append(time.perf_counter() - t)
  agree = float(np.mean(ours[:, :10] == theirs[:, :10]))
  med = {name: common.median(v) for name, v in timings.items()}
  out = {"compile_s": compile_s, "seconds": med, "all": timings, "top10_agreement": agree,
         "speedup_vs_original": med["numpy_argsort"] / med["device"],
         "speedup_vs_argpartition": med["numpy_argpartition"] / med["device"]}
  print(f"precompute top {k} of {len(q)} x {len(db)}: device {med['device']:.2f} s, original "
        f"chunked argsort {med['numpy_argsort']:.2f} s ({out['speedup_vs_original']:.1f}x), "
        f"numpy argpartition {med['numpy_argpartition']:.2f} s "
        f"({out['speedup_vs_argpartition']:.1f}x); top-10 agreement {agree:.4f}", flush=True)
  return out


def bench_train(a, mesh, fix: int) -> dict:
  from vgssl_jax.objectives.registry import build_objective
  c = stage2_config(a, fix)
  size = tuple(c.data.image_size)
  objective = build_objective(c)
  state, step, batch = common.stage_one_step(objective, size, a.train_queries, mesh,
                                             negatives=a.negatives)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0

  ours = common.step_runner(compiled, state, batch)
  ours(3)
  torch = (common.TorchWorker(a.torch_python, "torch_rerank.py", "--fix", str(fix), "--resolution", a.resolution,
                       "--queries", str(a.train_queries), "--negatives", str(a.negatives),
                       "--tokens", str(a.tokens), "--local-dim", str(a.local_dim))
           if a.compare_torch else None)
  if torch:
    torch.run(2)
  mine, theirs = interleave(ours, torch, a.rounds, a.steps)
  if torch:
    torch.close()
  out = {"compile_s": compile_s, "ms_per_step": 1000 * common.median(mine), "step_s_all": mine}
  line = (f"re-rank train step fix={fix}, DeiT-S {a.resolution}, {a.train_queries} x "
          f"{a.negatives}: {out['ms_per_step']:.0f} ms/step (compile {compile_s:.1f} s)")
  if torch:
    out.update(torch_ms_per_step=1000 * common.median(theirs), torch_step_s_all=theirs)
    out["speedup_vs_torch"] = out["torch_ms_per_step"] / out["ms_per_step"]
    line += f"; PyTorch {out['torch_ms_per_step']:.0f} ms/step: {out['speedup_vs_torch']:.2f}x"
  print(line, flush=True)
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--parts", default="eval,precompute,train")
  p.add_argument("--top", type=int, default=100)
  p.add_argument("--tokens", type=int, default=500)
  p.add_argument("--local-dim", type=int, default=128)
  p.add_argument("--rerank-batch", type=int, default=8)
  p.add_argument("--calls", type=int, default=2, help="timed eval batches per round")
  p.add_argument("--queries-pre", type=int, default=10000)
  p.add_argument("--database", type=int, default=20000)
  p.add_argument("--resolution", default="480x640")
  p.add_argument("--train-queries", type=int, default=2)
  p.add_argument("--negatives", type=int, default=1)
  p.add_argument("--steps", type=int, default=2, help="timed training steps per round")
  p.add_argument("--fix", default="1,0", help="the training steps to time (rerank.fix values)")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--compare-torch", action="store_true")
  p.add_argument("--torch-python", default=sys.executable)
  p.add_argument("--out", default=None)
  a = p.parse_args()
  mesh = sharding.make_mesh(0)
  parts = a.parts.split(",")
  result = {"args": vars(a)}
  if "eval" in parts:
    result["eval"] = bench_eval(a, mesh)
  if "precompute" in parts:
    result["precompute"] = bench_precompute(a)
  if "train" in parts:
    for fix in (int(v) for v in a.fix.split(",")):
      result[f"train_fix{fix}"] = bench_train(a, mesh, fix)
  common.report("stage-2 benchmarks done", result, a.out)


if __name__ == "__main__":
  main()
