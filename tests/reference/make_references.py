"""Writes the torch-made reference files of the torch-free fidelity tests (tests/data/).

  PYTHONPATH=. python tests/reference/make_references.py     (needs torch; run once)

The files hold weights by their PyTorch names, inputs and the outputs of the PyTorch twins
in tests/reference/torch_models.py, so that CI, which has no torch, checks our networks
and weight loaders against PyTorch. Nothing here is imported by the tests.
  torch_resnet.npz       torchvision-named ResNet weights, images, trunk feature maps
  vgssl_descriptors.npz  VG-SSL stage-1 checkpoint state dicts (n_layers 0 and 2; of the
                         ssl_model.* copies only the predictor), images, descriptors
  torch_checkpoints/     real torch.save files of the original's two checkpoint layouts,
                         and torch_checkpoints.npz with what they hold
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from tests.reference import torch_models as tm

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
NETS = [("resnet18conv4", 8), ("resnet50conv5", 8)]   # as tests/test_weights.py


def _images(seed: int, n: int) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(n, 3, 32, 48)).astype(np.float32)


def torch_resnet() -> dict:
  out = {}
  for backbone, width in NETS:
    depth, last_stage = tm.parse_backbone(backbone)
    resnet = tm.ResNet(depth, width)
    tm.randomize(resnet, seed=0)
    x = _images(0, 2)
    with torch.no_grad():
      features = tm.trunk(resnet, last_stage).eval()(torch.from_numpy(x)).numpy()
    # the loader ignores fc (and layer4 for conv4): not stored
    names = {k.split(".")[0] for k in resnet.state_dict()} - {"fc"}
    names -= set() if last_stage == 5 else {"layer4"}
    out.update({f"{backbone}/w/{k}": v.numpy() for k, v in resnet.state_dict().items()
                if k.split(".")[0] in names})
    out[f"{backbone}/images"], out[f"{backbone}/features"] = x, features
  return out


def vgssl_descriptors() -> dict:
  out = {}
  backbone, width = NETS[0]
  for n_layers in (0, 2):
    net = tm.SSLGeoLocalizationNet(backbone, width, n_layers=n_layers)
    tm.randomize(net, seed=1)
    with torch.no_grad():
      net.gem().p.fill_(2.7)
    net.eval()
    x = _images(1, 3)
    with torch.no_grad():
      descriptors = net.descriptor(torch.from_numpy(x)).numpy()
    prefix = f"{backbone}/n_layers{n_layers}"
    # the shared modules' ssl_model.* copies repeat the weights: keep only the predictor's
    out.update({f"{prefix}/w/{k}": v.numpy() for k, v in net.state_dict().items()
                if not k.startswith("ssl_model.online_encoder")})
    out[f"{prefix}/images"], out[f"{prefix}/descriptors"] = x, descriptors
  return out


def torch_checkpoints(folder: str) -> dict:
  """The original's checkpoint files: util.save_checkpoint of train.py (DataParallel
  prefix, numpy recalls and best_r5) and a Lightning checkpoint (hyper-parameters as an
  argparse Namespace, a callback's state, a bfloat16 tensor, a non-contiguous view)."""
  import argparse as ap
  os.makedirs(folder, exist_ok=True)
  g = torch.Generator().manual_seed(3)
  w = torch.randn(4, 6, generator=g)
  state = {"backbone.0.weight": w, "backbone.0.bias": torch.randn(4, generator=g),
           "aggregation.0.1.p": torch.tensor([3.0]),
           "aggregation.1.weight": w.t(),                                   # a view
           "aggregation.1.bias": torch.randn(6, generator=g).to(torch.bfloat16),
           "backbone.1.num_batches_tracked": torch.tensor(7)}
  torch.save({"epoch_num": 5, "model_state_dict": {"module." + k: v for k, v in state.items()},
              "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-5}]},
              "recalls": np.array([61.5, 80.25, 85.0, 90.5]), "best_r5": np.float64(80.25),
              "not_improved_num": 0}, os.path.join(folder, "train_py.pth"))
  torch.save({"epoch": 9, "global_step": 90, "pytorch-lightning_version": "2.0.0",
              "state_dict": state, "hyper_parameters": ap.Namespace(lr=1e-5, method="simclr"),
              "callbacks": {"ModelCheckpoint{'monitor': 'val_recall5'}": {
                  "best_model_score": torch.tensor(80.25)}}},
             os.path.join(folder, "lightning.ckpt"))
  return {k: (v.float() if v.dtype == torch.bfloat16 else v).numpy() for k, v in state.items()}


def main() -> None:
  argparse.ArgumentParser(description=__doc__).parse_args()
  np.savez(os.path.join(DATA, "torch_resnet.npz"), **torch_resnet())
  np.savez(os.path.join(DATA, "vgssl_descriptors.npz"), **vgssl_descriptors())
  np.savez(os.path.join(DATA, "torch_checkpoints.npz"),
           **torch_checkpoints(os.path.join(DATA, "torch_checkpoints")))
  for name in sorted(os.listdir(DATA)):
    path = os.path.join(DATA, name)
    if os.path.isfile(path):
      print(f"{os.path.getsize(path) / 1024:8.1f} KiB  {name}")


if __name__ == "__main__":
  main()
