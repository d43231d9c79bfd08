"""torchvision-compatible ResNets (v1.5) cut after conv4 or conv5.

Module names map 1:1 onto torchvision's state-dict keys (`conv1`, `bn1`,
`layer1.0.conv1`, ..., `layer2.0.downsample.0`), so ImageNet weights convert by
name (see vgssl_jax.models.weights.names). Names and the stage table live in
resnet_layout (importable without jax).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgssl_jax.models.features import Features
from vgssl_jax.models.layers import BatchNorm, Conv, Dtype
from vgssl_jax.models.resnet_layout import STAGES, VALID_NAMES, features_dim, parse_backbone

__all__ = ["ResNet", "STAGES", "VALID_NAMES", "parse_backbone", "stem_max_pool"]


def _windows(x: jax.Array) -> list[jax.Array]:
  """The 9 strided views of the -inf padded input, one per window offset (row-major)."""
  n, h, w, c = x.shape
  ho, wo = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  views = [jax.lax.slice(xp, (0, i, j, 0), (n, i + 2 * ho - 1, j + 2 * wo - 1, c), (1, 2, 2, 1))
           for i in range(3) for j in range(3)]
  return views


@jax.custom_vjp
def _max_pool_3x3s2(x: jax.Array) -> jax.Array:
  return _max_pool_fwd(x)[0]


def _max_pool_fwd(x):
  views = _windows(x)
  y, arg = views[0], jnp.zeros(views[0].shape, jnp.int8)
  for k, v in enumerate(views[1:], 1):  # strictly greater: the first maximum keeps the window
    greater = v > y
    y, arg = jnp.where(greater, v, y), jnp.where(greater, jnp.int8(k), arg)
  return y, (arg, x.shape)


def _max_pool_bwd(res, dy):
  arg, (n, h, w, c) = res
  ho, wo = dy.shape[1:3]
  dx = jnp.zeros((n, h + 2, w + 2, c), dy.dtype)
  zero = jnp.zeros((), dy.dtype)
  for k in range(9):  # each window's gradient to its argmax: strided placements, summed
    i, j = divmod(k, 3)
    part = jnp.where(arg == k, dy, zero)
    dx = dx + jax.lax.pad(part, zero, ((0, 0, 0), (i, h + 2 - i - (2 * ho - 1), 1),
                                       (j, w + 2 - j - (2 * wo - 1), 1), (0, 0, 0)))
  return (dx[:, 1:h + 1, 1:w + 1],)


_max_pool_3x3s2.defvjp(_max_pool_fwd, _max_pool_bwd)


def stem_max_pool(x: jax.Array) -> jax.Array:
  """nn.MaxPool2d(3, 2, 1); the gradient goes to the first maximum of each window, as in
  PyTorch (tested). On CPU through a custom VJP that keeps each window's argmax (int8):
  XLA:CPU's own gradient of a max pool builds index arrays and scatters, which left the
  step's threads idle for about 10 % of the ResNet-18 step (benchmarks/README.md). Other
  backends keep XLA's select-and-scatter (not measured there)."""
  if jax.default_backend() == "cpu":
    return _max_pool_3x3s2(x)
  return nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))


class Downsample(nn.Module):
  features: int
  stride: int
  dtype: Dtype

  @nn.compact
  def __call__(self, x, train):
    x = Conv(self.features, 1, self.stride, dtype=self.dtype, name="0")(x)
    return BatchNorm(dtype=self.dtype, name="1")(x, train)


class BasicBlock(nn.Module):
  planes: int
  stride: int
  dtype: Dtype
  width_per_group: int = 64  # torchvision's BasicBlock only has 64
  expansion = 1

  @nn.compact
  def __call__(self, x, train):
    identity = x
    y = Conv(self.planes, 3, self.stride, 1, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(y, train))
    y = Conv(self.planes, 3, 1, 1, dtype=self.dtype, name="conv2")(y)
    y = BatchNorm(dtype=self.dtype, name="bn2")(y, train)
    if self.stride != 1 or x.shape[-1] != self.planes:
      identity = Downsample(self.planes, self.stride, self.dtype, name="downsample")(x, train)
    return nn.relu(y + identity)


class Bottleneck(nn.Module):
  """torchvision v1.5 bottleneck: the stride sits on the 3x3 convolution; its inner width
  is planes * width_per_group / 64 (torchvision's base_width)."""
  planes: int
  stride: int
  dtype: Dtype
  width_per_group: int = 64
  expansion = 4

  @nn.compact
  def __call__(self, x, train):
    identity = x
    out = self.planes * 4
    inner = self.planes * self.width_per_group // 64
    y = Conv(inner, 1, dtype=self.dtype, name="conv1")(x)
    y = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(y, train))
    y = Conv(inner, 3, self.stride, 1, dtype=self.dtype, name="conv2")(y)
    y = nn.relu(BatchNorm(dtype=self.dtype, name="bn2")(y, train))
    y = Conv(out, 1, dtype=self.dtype, name="conv3")(y)
    y = BatchNorm(dtype=self.dtype, name="bn3")(y, train)
    if self.stride != 1 or x.shape[-1] != out:
      identity = Downsample(out, self.stride, self.dtype, name="downsample")(x, train)
    return nn.relu(y + identity)


class ResLayer(nn.Module):
  """torchvision's `layerN`: blocks named '0', '1', ..."""
  block: type
  planes: int
  blocks: int
  stride: int
  dtype: Dtype
  width_per_group: int = 64

  @nn.compact
  def __call__(self, x, train):
    for i in range(self.blocks):
      x = self.block(self.planes, self.stride if i == 0 else 1, self.dtype, self.width_per_group,
                     name=str(i))(x, train)
    return x


class ResNet(nn.Module):
  """Input: (N, H, W, 3) normalised images. Output: Features with the (N, H/s, W/s, C)
  feature map.

  depth 18/50/101; `last_stage` 4 (stride 16) or 5 (stride 32); `width` is the
  channel count of the stem and of layer1's planes (64 in torchvision; smaller
  values give the narrow variants used in tests and the demo). `blocks` (blocks per
  stage) and `width_per_group` (torchvision's, bottlenecks only) default to the depth's.

  With tokens=True the Features also hold, in `local`, "layer3": the stride-16 map (N,
  H/16, W/16, C3), stage 2's local features of a conv5 ResNet.
  """
  depth: int = 50
  last_stage: int = 5
  width: int = 64
  dtype: Dtype = jnp.float32
  blocks: tuple[int, ...] | None = None
  width_per_group: int = 64

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, tokens: bool = False) -> Features:
    kind, blocks = STAGES[self.depth]
    blocks = self.blocks or blocks
    block = BasicBlock if kind == "basic" else Bottleneck
    x = Conv(self.width, 7, 2, 3, dtype=self.dtype, name="conv1")(x)
    x = nn.relu(BatchNorm(dtype=self.dtype, name="bn1")(x, train))
    x = stem_max_pool(x)
    maps = {}
    for stage in range(self.last_stage - 1):  # layer1 .. layer3 or layer4
      x = ResLayer(block, self.width * 2 ** stage, blocks[stage], 1 if stage == 0 else 2,
                   self.dtype, self.width_per_group, name=f"layer{stage + 1}")(x, train)
      maps[f"layer{stage + 1}"] = x
    return Features(feature_map=x, local={"layer3": maps["layer3"]} if tokens else {})

  @property
  def features_dim(self) -> int:
    return features_dim(self.depth, self.last_stage, self.width)
