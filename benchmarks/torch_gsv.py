r"""The PyTorch side of benchmarks/gsv.py (run with a Python that has torch, torchvision,
pandas and pytorch-metric-learning; never imported by the project):

  pipeline: gsv-cities' own GSVCitiesDataset (read from --gsv-src) over --folder with the
            recipes' transform (Resize 224 bilinear, RandAugment(3), ToTensor, Normalize) in a
            torch DataLoader of --places places per batch and --workers workers;
  loss:     pytorch-metric-learning's MultiSimilarityMiner(0.1) + MultiSimilarityLoss(1, 50,
            0) forward and backward on a --places x 4 batch of --dim-d descriptors.

Prints one JSON line: {"seconds": [...], "items": images or rows per timed run, ...}.
"""

import argparse
import glob
import json
import os
import sys
import time
import types

import numpy as np


def torchvision():
  # the PyPI torchvision wheel is built for a CUDA torch: its C operators do not load next to
  # the CPU build, but the transforms do not need them
  sys.modules.setdefault("torchvision._meta_registrations",
                         types.ModuleType("torchvision._meta_registrations"))
  import torchvision.transforms as T  # pylint: disable=import-outside-toplevel
  return T


def official_dataset(gsv_src: str, folder: str):
  """GSVCitiesDataset from gsv-cities' file, its hard-coded BASE_PATH pointed at `folder`."""
  path = os.path.join(gsv_src, "dataloaders", "train", "GSVCitiesDataset.py")
  text = open(path).read().replace("BASE_PATH = '/home/USER/work/datasets/gsv_cities/'",
                                   f"BASE_PATH = {folder.rstrip('/') + '/'!r}")
  module = types.ModuleType("GSVCitiesDataset")
  torchvision()
  exec(compile(text, path, "exec"), module.__dict__)  # pylint: disable=exec-used
  return module.GSVCitiesDataset


def pipeline(a):
  import torch  # pylint: disable=import-outside-toplevel
  T = torchvision()
  torch.set_num_threads(1)
  transform = T.Compose([
      T.Resize((a.size, a.size), interpolation=T.InterpolationMode.BILINEAR),
      T.RandAugment(num_ops=3, interpolation=T.InterpolationMode.BILINEAR),
      T.ToTensor(), T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
  cities = sorted(os.path.basename(p)[:-4] for p in glob.glob(f"{a.folder}/Dataframes/*.csv"))
  dataset = official_dataset(a.gsv_src, a.folder)(cities=cities, transform=transform,
                                                  base_path=a.folder.rstrip("/") + "/")
  loader = torch.utils.data.DataLoader(dataset, batch_size=a.places, num_workers=a.workers,
                                       shuffle=False, drop_last=True,
                                       persistent_workers=a.workers > 0)
  for _ in loader:  # warm-up pass (page cache, worker start)
    pass
  times, images = [], 0
  for _ in range(a.repeats):
    t = time.perf_counter()
    for x, _ in loader:
      images += x.shape[0] * x.shape[1]
    times.append(time.perf_counter() - t)
  return {"seconds": times, "items": images // a.repeats, "places": len(dataset)}


def loss(a):
  import torch  # pylint: disable=import-outside-toplevel
  from pytorch_metric_learning import losses, miners  # pylint: disable=import-outside-toplevel
  from pytorch_metric_learning.distances import CosineSimilarity  # pylint: disable=import-outside-toplevel
  miner = miners.MultiSimilarityMiner(epsilon=0.1, distance=CosineSimilarity())
  loss_fn = losses.MultiSimilarityLoss(alpha=1.0, beta=50, base=0.0)
  rng = np.random.default_rng(0)
  x = torch.tensor(rng.normal(size=(a.places * 4, a.dim)).astype(np.float32), requires_grad=True)
  labels = torch.arange(a.places).repeat_interleave(4)

  def run():
    x.grad = None
    value = loss_fn(x, labels, miner(x, labels))
    value.backward()
    return float(value)
  for _ in range(3):
    run()
  times = []
  for _ in range(a.repeats):
    t = time.perf_counter()
    run()
    times.append(time.perf_counter() - t)
  return {"seconds": times, "items": a.places * 4, "loss": run(), "threads": torch.get_num_threads()}


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--part", choices=["pipeline", "loss"], required=True)
  p.add_argument("--folder", default="")
  p.add_argument("--gsv-src", default="")
  p.add_argument("--size", type=int, default=224)
  p.add_argument("--places", type=int, default=8)
  p.add_argument("--workers", type=int, default=0)
  p.add_argument("--dim", type=int, default=8448)
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args()
  print(json.dumps(pipeline(a) if a.part == "pipeline" else loss(a)), flush=True)


if __name__ == "__main__":
  main()
