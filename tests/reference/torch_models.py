"""PyTorch twins of the original's networks and stage-1 step: the reference the torch tests
compare with, what tests/reference/make_references.py stores for the torch-free tests, and
the original's step that benchmarks/train_step.py --compare-torch times side by side.

Needs torch (not a dependency of the package). The ResNet has torchvision's module names
and children order (v1.5), with any stem width (torchvision's cannot be made narrow).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from vgssl_jax.models.resnet_layout import STAGES, parse_backbone


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
    return F.avg_pool2d(x, (x.size(-2), x.size(-1))).pow(1.0 / self.p)  # (N, C, 1, 1)


class Flatten(nn.Module):
  def forward(self, x):
    assert x.shape[2] == x.shape[3] == 1
    return x[:, :, 0, 0]


def randomize(module: nn.Module, seed: int) -> None:
  """Random weights that keep activations O(1), and random BatchNorm running statistics."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in module.state_dict().items():
      if name.endswith("num_batches_tracked"):
        continue
      if name.endswith("running_var"):
        t.copy_(torch.rand(t.shape, generator=g) * 1.5 + 0.5)
      elif name.endswith("running_mean") or name.endswith("bias"):
        t.copy_(torch.randn(t.shape, generator=g) * 0.1)
      elif t.ndim == 1:  # BatchNorm scale
        t.copy_(torch.rand(t.shape, generator=g) + 0.5)
      else:
        t.copy_(torch.randn(t.shape, generator=g) * (2.0 / np.prod(t.shape[1:])) ** 0.5)


def trunk(resnet: ResNet, last_stage: int) -> nn.Sequential:
  """The original's backbone: Sequential(children[:-2]) (conv5) or [:-3] (conv4)."""
  return nn.Sequential(*list(resnet.children())[:-2 if last_stage == 5 else -3])


class SSLModel(nn.Module):
  """The wrapper's copies of the shared modules (`ssl_model.*` keys of a checkpoint)."""

  def __init__(self, backbone, aggregation, projection_size):
    super().__init__()
    self.online_encoder = nn.Sequential(backbone, aggregation)   # shared modules
    self.online_predictor = nn.Sequential(nn.Linear(projection_size, 32), nn.BatchNorm1d(32))


class SSLGeoLocalizationNet(nn.Module):
  """The original's stage-1 LightningModule parts, with its key layout:
  backbone = Sequential(children[:-2]); aggregation = Sequential(Sequential(L2Norm, GeM,
  Flatten), Linear, L2Norm), wrapped with the VICReg projector when n_layers > 0;
  ssl_model sharing them."""

  def __init__(self, backbone: str, width: int, fc_output_dim: int = 16, n_layers: int = 0,
               projection_size: int = 24):
    super().__init__()
    depth, last_stage = parse_backbone(backbone)
    resnet = ResNet(depth, width)
    self.n_layers = n_layers
    self.backbone = trunk(resnet, last_stage)
    channels = width * 2 ** (last_stage - 2) * (1 if depth == 18 else 4)
    self.aggregation = nn.Sequential(nn.Sequential(L2Norm(), GeM(), Flatten()),
                                     nn.Linear(channels, fc_output_dim), L2Norm())
    if n_layers > 0:
      self.aggregation = nn.Sequential(self.aggregation, nn.Sequential(
          nn.Linear(fc_output_dim, projection_size, bias=False), nn.BatchNorm1d(projection_size),
          nn.ReLU(inplace=True), nn.Linear(projection_size, projection_size, bias=False)))
    self.ssl_model = SSLModel(self.backbone, self.aggregation, projection_size)

  def descriptor(self, x):
    agg = self.aggregation[0] if self.n_layers > 0 else self.aggregation
    return agg(self.backbone(x))

  def gem(self) -> GeM:
    return self.aggregation[0][0][1] if self.n_layers > 0 else self.aggregation[0][1]


def vicreg_loss(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
  """The original's VICReg (docs/original.md §Losses)."""
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
    self.aggregation = nn.Sequential(L2Norm(), GeM(), Flatten(),
                                     nn.Linear(resnet.features_dim, fc_output_dim), L2Norm())
    self.projector = nn.Sequential(nn.Linear(fc_output_dim, projection_size, bias=False),
                                   nn.BatchNorm1d(projection_size), nn.ReLU(inplace=True),
                                   nn.Linear(projection_size, projection_size, bias=False))

  def forward(self, x):
    return self.projector(self.aggregation(self.backbone(x)))


class Attention(nn.Module):
  """timm 0.5.4's Attention (as the original's DeiT uses it)."""

  def __init__(self, dim, num_heads):
    super().__init__()
    self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
    self.qkv = nn.Linear(dim, dim * 3)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
  def __init__(self, dim, num_heads, mlp_ratio=4.0):
    super().__init__()
    self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim, num_heads)
    self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim, int(dim * mlp_ratio))

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, 16, 16)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class DistilledVisionTransformer(nn.Module):
  """The original's DeiT (timm names): descriptor L2((head(cls) + head_dist(dist)) / 2)."""

  def __init__(self, image_size=(224, 224), num_classes=256, embed_dim=384, depth=12,
               num_heads=6):
    super().__init__()
    grid = (image_size[0] // 16) * (image_size[1] // 16)
    self.cls_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
    self.dist_token = nn.Parameter(torch.randn(1, 1, embed_dim) * 0.02)
    self.pos_embed = nn.Parameter(torch.randn(1, grid + 2, embed_dim) * 0.02)
    self.patch_embed = PatchEmbed(embed_dim)
    self.blocks = nn.Sequential(*[Block(embed_dim, num_heads) for _ in range(depth)])
    self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
    self.head = nn.Linear(embed_dim, num_classes)
    self.head_dist = nn.Linear(embed_dim, num_classes)

  def forward(self, x):
    x = self.patch_embed(x)
    n = x.shape[0]
    x = torch.cat([self.cls_token.expand(n, -1, -1), self.dist_token.expand(n, -1, -1), x], 1)
    x = self.norm(self.blocks(x + self.pos_embed))
    return F.normalize((self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2, dim=-1)


class StageOneDeiT(nn.Module):
  """The original's DeiT stage-1 network: the DeiT's descriptor, then the VICReg projector."""

  def __init__(self, image_size, fc_output_dim=256, projection_size=4096, **vit):
    super().__init__()
    self.backbone = DistilledVisionTransformer(image_size, fc_output_dim, **vit)
    self.projector = nn.Sequential(nn.Linear(fc_output_dim, projection_size, bias=False),
                                   nn.BatchNorm1d(projection_size), nn.ReLU(inplace=True),
                                   nn.Linear(projection_size, projection_size, bias=False))

  def forward(self, x):
    return self.projector(self.backbone(x))


def vgg16_features(width: int = 64) -> nn.Sequential:
  """torchvision's VGG16 `features[:-2]` (the original's vgg16 backbone), width-scaled."""
  layers, c = [], 3
  for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]:
    if v == "M":
      layers.append(nn.MaxPool2d(2, 2))
    else:
      layers += [nn.Conv2d(c, v * width // 64, 3, padding=1), nn.ReLU(inplace=True)]
      c = v * width // 64
  return nn.Sequential(*layers[:-1])  # the last ReLU cut off (with the pool)


class NetVLAD(nn.Module):
  """The benchmark's NetVLAD (vectorised), then FC -> L2 when fc_output_dim (issue 39)."""

  def __init__(self, clusters: int, dim: int, fc_output_dim: int = 0):
    super().__init__()
    self.conv = nn.Conv2d(dim, clusters, 1, bias=False)
    self.centroids = nn.Parameter(torch.rand(clusters, dim))
    self.fc = nn.Linear(clusters * dim, fc_output_dim) if fc_output_dim else None

  def forward(self, x):
    n, d = x.shape[:2]
    x = F.normalize(x, dim=1)
    a = F.softmax(self.conv(x).view(n, self.centroids.shape[0], -1), dim=1)   # (N, K, HW)
    x = x.view(n, d, -1)
    v = torch.einsum("nkt,ndt->nkd", a, x) - a.sum(-1)[..., None] * self.centroids
    v = F.normalize(F.normalize(v, dim=2).flatten(1), dim=1)
    return F.normalize(self.fc(v), dim=1) if self.fc is not None else v


class CCTBlock(nn.Module):
  """CCT's TransformerEncoderLayer: x + proj(attn(pre_norm(x))), norm1, x + MLP."""

  def __init__(self, dim, heads, hidden):
    super().__init__()
    self.heads = heads
    self.pre_norm, self.norm1 = nn.LayerNorm(dim), nn.LayerNorm(dim)
    self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim)
    self.linear1, self.linear2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

  def forward(self, x):
    b, t, c = x.shape
    q, k, v = self.qkv(self.pre_norm(x)).reshape(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
    att = ((q @ k.transpose(-2, -1)) * (c // self.heads) ** -0.5).softmax(-1)
    x = self.norm1(x + self.proj((att @ v).transpose(1, 2).reshape(b, t, c)))
    return x + self.linear2(F.gelu(self.linear1(x)))


class CCTSeqPool(nn.Module):
  """The original's CCT (tokenizer without conv bias, fixed positional embedding) with
  sequence pooling, then FC -> L2 when fc_output_dim."""

  def __init__(self, img_size=384, dim=384, depth=14, heads=6, mlp_ratio=3.0,
               fc_output_dim=0):
    super().__init__()
    conv = lambda i, o: nn.Sequential(nn.Conv2d(i, o, 7, 2, 3, bias=False), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
    self.tokenizer = nn.Sequential(conv(3, 64), conv(64, dim))
    side = img_size
    for _ in range(4):
      side = (side - 1) // 2 + 1
    self.positional_emb = nn.Parameter(torch.randn(1, side * side, dim) * 0.02)
    self.blocks = nn.Sequential(*[CCTBlock(dim, heads, int(dim * mlp_ratio))
                                  for _ in range(depth)])
    self.norm = nn.LayerNorm(dim)
    self.attention_pool = nn.Linear(dim, 1)
    self.fc = nn.Linear(dim, fc_output_dim) if fc_output_dim else None

  def forward(self, x):
    x = self.tokenizer(x).flatten(2).transpose(1, 2) + self.positional_emb
    x = self.norm(self.blocks(x))
    x = (F.softmax(self.attention_pool(x), dim=1) * x).sum(1)
    return F.normalize(self.fc(x), dim=1) if self.fc is not None else x


class StageOneZoo(nn.Module):
  """A stage-1 network of the rest of the zoo (VGG16 + NetVLAD + FC, or CCT + SeqPool +
  FC), then the VICReg projector."""

  def __init__(self, net: str, fc_output_dim=1024, projection_size=4096, width=64,
               clusters=64, cct=None):
    super().__init__()
    if net == "vgg16_netvlad":
      self.net = nn.Sequential(vgg16_features(width), NetVLAD(clusters, 512 * width // 64,
                                                              fc_output_dim))
    else:
      self.net = CCTSeqPool(fc_output_dim=fc_output_dim, **(cct or {}))
    self.projector = nn.Sequential(nn.Linear(fc_output_dim, projection_size, bias=False),
                                   nn.BatchNorm1d(projection_size), nn.ReLU(inplace=True),
                                   nn.Linear(projection_size, projection_size, bias=False))

  def forward(self, x):
    return self.projector(self.net(x))


def make_step(depth=50, width=64, fc_output_dim=1024, projection_size=4096, lr=1e-5,
              dtype: str = "float32", deit: dict | None = None, triplet_negatives: int = 0,
              zoo: dict | None = None):
  """A function (view1, view2) -> loss doing the original's optimizer step (NCHW tensors):
  ResNet `depth` (+ GeM + FC), or with `deit` = {"image_size", "embed_dim", "depth",
  "num_heads"} the DeiT.

  With triplet_negatives = M > 0: train.py's step instead (no projector; view1 holds B
  queries then B * M negatives, view2 the B positives; one forward of all, triplet margin
  loss summed over (q, p, n_j) and divided by B * M).
  bfloat16 runs the forward under CPU autocast (the usual PyTorch mixed precision)."""
  if triplet_negatives:
    return _triplet_step(depth, width, fc_output_dim, lr, triplet_negatives)
  if zoo:  # {"net": "vgg16_netvlad" | "cct384_seqpool", ...}
    model = StageOneZoo(fc_output_dim=fc_output_dim, projection_size=projection_size,
                        width=width, **zoo).train()
  elif deit:
    model = StageOneDeiT(fc_output_dim=fc_output_dim, projection_size=projection_size,
                         **deit).train()
  else:
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


def _triplet_step(depth, width, fc_output_dim, lr, m):
  resnet = ResNet(depth, width)
  model = nn.Sequential(nn.Sequential(*list(resnet.children())[:-2]),
                        nn.Sequential(L2Norm(), GeM(), Flatten(),
                                      nn.Linear(resnet.features_dim, fc_output_dim), L2Norm()))
  model.train()
  optimizer = torch.optim.Adam(model.parameters(), lr=lr)
  criterion = nn.TripletMarginLoss(margin=0.1, p=2, reduction="sum")

  def step(view1, view2):
    b = len(view2)
    optimizer.zero_grad(set_to_none=True)
    feats = model(torch.cat([view1[:b], view2, view1[b:]]))
    q, p, n = feats[:b], feats[b:2 * b], feats[2 * b:].view(b, m, -1)
    loss = sum(criterion(q, p, n[:, j]) for j in range(m)) / (b * m)
    loss.backward()
    optimizer.step()
    return float(loss.detach())
  return step


# ----------------------------------------------------------------------------- stage 2


def sincos_2d(dim: int, xy):
  """The R2Former's 2-D sin-cos embedding: dim/2 from each coordinate, [sin, cos]."""
  def one(d, p):
    omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float32) / (d / 2.0))
    a = p[..., None] * omega
    return torch.cat([torch.sin(a), torch.cos(a)], -1)
  return torch.cat([one(dim // 2, xy[..., 0]), one(dim // 2, xy[..., 1])], -1)


class R2Former(nn.Module):
  """The original's R2Former (model/r2former.py) as its code computes it: every entry of
  the correlation is expanded to its 7-vector first, then both top-5 selections gather
  from that (B, Nq, Nc, 7) tensor."""

  def __init__(self, dim=32, depth=6, corr_depth=2, num_heads=4, num_corr=5):
    super().__init__()
    self.dim, self.num_corr = dim, num_corr
    self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
    self.cls_token_2 = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
    self.blocks = nn.Sequential(*[Block(dim, num_heads) for _ in range(depth)])
    self.blocks_2 = nn.Sequential(*[Block(dim, num_heads) for _ in range(corr_depth)])
    self.decoder_norm = nn.LayerNorm(dim, eps=1e-6)
    self.pair_head, self.pair_head_2 = nn.Linear(7, dim), nn.Linear(dim, dim)
    self.decoder_pred = nn.Linear(dim, 2)

  def forward(self, x_local, y_local):
    b, nq, _ = x_local.shape
    nc, k, d = y_local.shape[1], self.num_corr, self.dim
    cq, cc = x_local[..., :3].detach().clamp(0, 1), y_local[..., :3].detach().clamp(0, 1)
    corr = F.normalize(x_local[..., 3:], dim=-1) @ F.normalize(y_local[..., 3:], dim=-1).transpose(1, 2)
    full = torch.cat([cq[:, :, None].expand(b, nq, nc, 3), cc[:, None].expand(b, nq, nc, 3),
                      corr[..., None]], -1)
    j = corr.topk(k, dim=2).indices
    sel_q = torch.gather(full, 2, j[..., None].expand(-1, -1, -1, 7))
    i = corr.topk(k, dim=1).indices
    sel_c = torch.gather(full, 1, i[..., None].expand(-1, -1, -1, 7)).permute(0, 2, 1, 3)
    sel = torch.cat([sel_q, sel_c], 1)
    g = sel.shape[1]
    h = (self.pair_head(sel) + sincos_2d(d, sel[..., 3:5])).reshape(b * g, k, d)
    h = torch.cat([self.cls_token_2.expand(b * g, -1, -1), h], 1)
    h = self.decoder_norm(self.blocks_2(h))[:, 0].reshape(b, g, d)
    h = self.pair_head_2(h) + sincos_2d(d, sel[:, :, 0, 0:2])
    h = torch.cat([self.cls_token.expand(b, -1, -1), h], 1)
    return self.decoder_pred(self.decoder_norm(self.blocks(h))[:, 0])


class DeiTRerank(nn.Module):
  """GeoLocalizationNetRerank on the DeiT: global descriptor and `num_local` local tokens
  [x, y, attention, local_head(token entering the last block)] with the original's gather."""

  def __init__(self, image_size=(224, 224), fc_output_dim=256, local_dim=128, num_local=500,
               finetune=False, **vit):
    super().__init__()
    self.vit = DistilledVisionTransformer(image_size, fc_output_dim, **vit)
    self.local_head = nn.Linear(self.vit.norm.normalized_shape[0], local_dim)
    self.reranker = R2Former()
    self.num_local, self.finetune, self.image_size = num_local, finetune, image_size

  def parts(self, images):
    """(global descriptor, (B, n, 3) coordinates and attention, (B, n, C) token features)."""
    v = self.vit
    x = v.patch_embed(images)
    n = x.shape[0]
    x = torch.cat([v.cls_token.expand(n, -1, -1), v.dist_token.expand(n, -1, -1), x], 1)
    x = v.blocks[:-1](x + v.pos_embed)
    last = v.blocks[-1]
    a = last.attn
    b_, t, c = x.shape
    qkv = a.qkv(last.norm1(x)).reshape(b_, t, 3, a.num_heads, c // a.num_heads)
    qkv = qkv.permute(2, 0, 3, 1, 4)
    attn = ((qkv[0] @ qkv[1].transpose(-2, -1)) * a.scale).softmax(-1)
    score = attn[:, :, :2, 2:].sum((1, 2))
    score = score / score.max(1, keepdim=True).values
    att, idx = score.topk(self.num_local, dim=1)
    feats = torch.gather(x, 1, idx[..., None].expand(-1, -1, c))  # the off-by-two gather
    cols = -(-self.image_size[1] // 16)
    xy = torch.stack([(idx % cols) * 16 + 8, (idx // cols) * 16 + 8], -1).float()
    y = v.norm(last(x))
    g = F.normalize((v.head(y[:, 0]) + v.head_dist(y[:, 1])) / 2, dim=-1)
    return g, torch.cat([xy / max(self.image_size), att[..., None]], -1), feats

  def forward(self, images):
    g, coords, feats = self.parts(images)
    return g, torch.cat([coords, self.local_head(feats if self.finetune else feats.detach())], -1)


def make_rerank_step(fix: int, image_size=(224, 224), lr=5e-4, local_dim=128, num_local=500,
                     **vit):
  """train_reranker.py's step with the CE loss on (B queries, B positives, B * M negatives,
  in that order along the batch): fix=1 runs the global network under no_grad in eval mode
  and trains local_head + R2Former (AdamW); fix=0 trains everything, adding the global
  triplet margin sum; the total over B * M."""
  model = DeiTRerank(image_size, local_dim=local_dim, num_local=num_local, **vit)
  params = (list(model.local_head.parameters()) + list(model.reranker.parameters())
            if fix else list(model.parameters()))
  optimizer = torch.optim.AdamW(params, lr=lr)
  criterion = nn.TripletMarginLoss(margin=0.1, p=2, reduction="sum")

  def step(images, b, m):
    model.eval() if fix else model.train()
    optimizer.zero_grad(set_to_none=True)
    if fix:
      with torch.no_grad():
        g, coords, feats = model.parts(images)
      t = torch.cat([coords, model.local_head(feats)], -1)
    else:
      g, t = model(images)
    q, p, negs = t[:b], t[b:2 * b], t[2 * b:].view(b, m, *t.shape[1:])
    total = 0.0
    for j in range(m):
      logits = model.reranker(torch.cat([q, q]), torch.cat([p, negs[:, j]]))
      labels = torch.cat([torch.ones(b), torch.zeros(b)]).long()
      total = total + F.cross_entropy(logits, labels)
      if not fix:
        total = total + criterion(g[:b], g[b:2 * b], g[2 * b:].view(b, m, -1)[:, j])
    loss = total / (b * m)
    loss.backward()
    optimizer.step()
    return float(loss.detach())
  return step
