"""The PyTorch side of rerank.py --compare-torch, as a worker: the original's re-ranking
evaluation loop (test.test_rerank: per batch of `rerank_batch_size` queries, every
(query, candidate) pair through the R2Former) and train_reranker.py's step.

Commands on stdin, one per line, each answered with a JSON list of seconds per call:
"eval N" times N batches of the evaluation loop, "train N" N training steps. Needs torch;
run with the Python that has it.
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

from tests.reference.torch_models import R2Former, make_rerank_step  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--tokens", type=int, default=500)
  p.add_argument("--local-dim", type=int, default=128)
  p.add_argument("--top", type=int, default=100)
  p.add_argument("--rerank-batch", type=int, default=8)
  p.add_argument("--fix", type=int, default=-1, help="0/1: the training step; -1: evaluation")
  p.add_argument("--resolution", default="480x640")
  p.add_argument("--queries", type=int, default=2)
  p.add_argument("--negatives", type=int, default=1)
  p.add_argument("--vit", default="384,12,6")
  a = p.parse_args()
  torch.manual_seed(0)
  if a.fix < 0:
    model = R2Former().eval()
    q = torch.rand(a.rerank_batch, a.tokens, 3 + a.local_dim)
    db = torch.rand(a.rerank_batch, a.top, a.tokens, 3 + a.local_dim)

    def call():
      with torch.no_grad():  # test_rerank: the batch's queries, each against its candidates
        x = q[:, None].expand(-1, a.top, -1, -1).reshape(-1, *q.shape[1:])
        model(x, db.reshape(-1, *db.shape[2:])).softmax(-1)
  else:
    h, w = common.parse_size(a.resolution)
    dim, depth, heads = (int(v) for v in a.vit.split(","))
    step = make_rerank_step(a.fix, (h, w), local_dim=a.local_dim, num_local=a.tokens,
                            embed_dim=dim, depth=depth, num_heads=heads)
    b, m = a.queries, a.negatives
    images = torch.randn(b * (2 + m), 3, h, w)

    def call():
      step(images, b, m)
  print(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads()}),
        flush=True)
  for line in sys.stdin:
    _, n = line.split()
    times = []
    for _ in range(int(n)):
      t0 = time.perf_counter()
      call()
      times.append(time.perf_counter() - t0)
    print(json.dumps(times), flush=True)


if __name__ == "__main__":
  main()
