"""A PyTorch twin of our network and stage-1 step: for weight-conversion tests and for
timing the original's step side by side (benchmarks/train_step.py --compare-torch).

Needs torch (not a dependency of the package). The ResNet has torchvision's module names
and children order (v1.5), with any stem width (torchvision's cannot be made narrow).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

# depth -> (block kind, blocks per stage), as vgssl_jax.models.resnet.STAGES
STAGES = {18: ("basic", (2, 2, 2, 2)), 50: ("bottleneck", (3, 4, 6, 3)),
          101: ("bottleneck", (3, 4, 23, 3))}


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    return self.relu(self.bn2(self.conv2(y)) + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride, downsample):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    return self.relu(self.bn3(self.conv3(y)) + identity)


class ResNet(nn.Module):
  """torchvision.models.resnet<depth>() with stem width `width` (64 = torchvision's)."""

  def __init__(self, depth: int = 50, width: int = 64):
    super().__init__()
    kind, blocks = STAGES[depth]
    block = BasicBlock if kind == "basic" else Bottleneck
    self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    inplanes = width
    for stage, n in enumerate(blocks):
      planes, stride = width * 2 ** stage, 1 if stage == 0 else 2
      layers = []
      for b in range(n):
        down = None
        if b == 0 and (stride != 1 or inplanes != planes * block.expansion):
          down = nn.Sequential(nn.Conv2d(inplanes, planes * block.expansion, 1, stride,
                                         bias=False), nn.BatchNorm2d(planes * block.expansion))
        layers.append(block(inplanes, planes, stride if b == 0 else 1, down))
        inplanes = planes * block.expansion
      setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(inplanes, 1000)
    self.features_dim = inplanes


class L2Norm(nn.Module):
  def forward(self, x):
    return F.normalize(x, p=2, dim=1)


class GeM(nn.Module):
  def __init__(self, p: float = 3.0, eps: float = 1e-6):
    super().__init__()
    self.p, self.eps = nn.Parameter(torch.ones(1) * p), eps

  def forward(self, x):
    x = x.clamp(min=self.eps).pow(self.p)
    return F.avg_pool2d(x, (x.size(-2), x.size(-1))).pow(1.0 / self.p).flatten(1)


def vicreg_loss(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
  """The original's VICReg (spec §2.6)."""
  n, d = x.shape
  repr_loss = F.mse_loss(x, y)
  x = x - x.mean(dim=0)
  y = y - y.mean(dim=0)
  std_x = torch.sqrt(x.var(dim=0) + 0.0001)
  std_y = torch.sqrt(y.var(dim=0) + 0.0001)
  std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
  cov_x = (x.T @ x) / (n - 1)
  cov_y = (y.T @ y) / (n - 1)
  off = lambda c: c.pow(2).sum() - c.diagonal().pow(2).sum()
  return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * (off(cov_x) + off(cov_y)) / d


class StageOne(nn.Module):
  """The original's stage-1 network: ResNet trunk (children[:-2]), L2 -> GeM -> FC -> L2,
  and the VICReg projector Lin nb -> BN -> ReLU -> Lin nb."""

  def __init__(self, depth: int = 50, width: int = 64, fc_output_dim: int = 1024,
               projection_size: int = 4096):
    super().__init__()
    resnet = ResNet(depth, width)
    self.backbone = nn.Sequential(*list(resnet.children())[:-2])
    self.aggregation = nn.Sequential(L2Norm(), GeM(), nn.Linear(resnet.features_dim, fc_output_dim),
                                     L2Norm())
    self.projector = nn.Sequential(nn.Linear(fc_output_dim, projection_size, bias=False),
                                   nn.BatchNorm1d(projection_size), nn.ReLU(inplace=True),
                                   nn.Linear(projection_size, projection_size, bias=False))

  def forward(self, x):
    return self.projector(self.aggregation(self.backbone(x)))


def make_step(depth=50, width=64, fc_output_dim=1024, projection_size=4096, lr=1e-5,
              dtype: str = "float32"):
  """A function (view1, view2) -> loss doing the original's optimizer step (NCHW tensors).

  bfloat16 runs the forward under CPU autocast (the usual PyTorch mixed precision)."""
  model = StageOne(depth, width, fc_output_dim, projection_size).train()
  optimizer = torch.optim.Adam(model.parameters(), lr=lr)

  def step(view1, view2):
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
      z1, z2 = model(view1), model(view2)  # separate BatchNorm passes, as the original
    loss = vicreg_loss(z1.float(), z2.float())
    loss.backward()
    optimizer.step()
    return float(loss.detach())
  return step
