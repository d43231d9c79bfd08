"""The official PyTorch DINOv2 + SALAD as a worker for vpr.py --compare-torch.

Builds the model from the official sources (facebookresearch/dinov2's hub builder, SALAD's
`models/backbones/dinov2.py` wrapper and `models/aggregators/salad.py`; the step also
gsv-cities' multi-similarity loss and miner, as SALAD's `vpr_model.py` trains), random
weights. Reads commands on stdin ("run N": time N forwards or steps) and answers each with a
JSON list of seconds. Needs torch (and pytorch-metric-learning for the step); run with the
Python that has them:

  --dinov2-src DIR   a checkout of facebookresearch/dinov2
  --salad-src DIR    a checkout of serizba/salad
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _module(path: str, name: str):
  """A source file of the official code loaded by itself (its package's __init__ would
  import torchvision, which the modules timed here do not use)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def build(a):
  import torch
  sys.path.insert(0, a.dinov2_src)
  from dinov2.hub import backbones as hub  # the official builder (no download: random weights)
  torch.hub.load = lambda repo, name, **kw: getattr(hub, name)(pretrained=False, **kw)
  salad = _module(os.path.join(a.salad_src, "models", "aggregators", "salad.py"), "salad_agg")
  wrapper = _module(os.path.join(a.salad_src, "models", "backbones", "dinov2.py"), "salad_dino")
  backbone = wrapper.DINOv2("dinov2_vitb14", num_trainable_blocks=a.trainable_blocks,
                            norm_layer=True, return_token=True)
  return torch.nn.Sequential(backbone, salad.SALAD(num_channels=768))


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--dinov2-src", required=True)
  p.add_argument("--salad-src", required=True)
  p.add_argument("--mode", choices=["forward", "step"], default="forward")
  p.add_argument("--resolution", default="322x322")
  p.add_argument("--batch", type=int, default=8, help="images (forward) or places (step)")
  p.add_argument("--images-per-place", type=int, default=4)
  p.add_argument("--trainable-blocks", type=int, default=4)
  p.add_argument("--threads", type=int, default=0)
  a = p.parse_args()
  import torch
  if a.threads:
    torch.set_num_threads(a.threads)
  torch.manual_seed(0)
  h, w = (int(v) for v in a.resolution.split("x"))
  model = build(a)
  if a.mode == "forward":
    model.eval()
    x = torch.randn(a.batch, 3, h, w)

    def call():
      with torch.inference_mode():
        model(x)
  else:
    from pytorch_metric_learning import losses, miners
    from pytorch_metric_learning.distances import CosineSimilarity, DotProductSimilarity
    model.train()
    loss_fn = losses.MultiSimilarityLoss(alpha=1.0, beta=50, base=0.0,
                                         distance=DotProductSimilarity())
    miner = miners.MultiSimilarityMiner(epsilon=0.1, distance=CosineSimilarity())
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=6e-5, weight_decay=9.5e-9)   # SALAD's main.py
    n = a.batch * a.images_per_place
    x = torch.randn(n, 3, h, w)
    labels = torch.arange(a.batch).repeat_interleave(a.images_per_place)

    def call():
      opt.zero_grad()
      d = model(x)
      loss = loss_fn(d, labels, miner(d, labels))
      loss.backward()
      opt.step()
  info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
          "trainable_parameters": sum(q.numel() for q in model.parameters() if q.requires_grad)}
  print(json.dumps(info), flush=True)
  for line in sys.stdin:
    cmd, n = line.split()
    assert cmd == "run"
    times = []
    for _ in range(int(n)):
      t = time.perf_counter()
      call()
      times.append(time.perf_counter() - t)
    print(json.dumps(times), flush=True)


if __name__ == "__main__":
  main()
