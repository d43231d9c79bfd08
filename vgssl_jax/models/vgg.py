"""VGG16 and AlexNet as the original takes them: torchvision's `features` without its last
two layers (`features[:-2]`), so the map is the last convolution **before its ReLU**
(negative values reach the aggregation; GeM clamps them at 1e-6). VGG16: 13 3x3 convolutions
and 4 2x2 max-pools, stride 16, 512 channels. AlexNet: conv 11x11/4 pad 2, max-pool 3x3/2,
conv 5x5 pad 2, max-pool, three 3x3 convolutions, 256 channels.

Each convolution is named by its index in torchvision's `features` ("0", "2", "5", ...), so
the exported names are the original's `backbone.<index>.weight` and torchvision's
`features.<index>.weight` load by a prefix. `width` scales every convolution's channels by
width / 64 (64: torchvision's; narrow ones for tests and the demo).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vgssl_jax.models.features import Features
from vgssl_jax.models.layers import Conv, Dtype

# (index in torchvision's features, out channels at width 64, kernel, stride, padding) per
# convolution; "M" + (index, window, stride) per max-pool
VGG16 = [(0, 64, 3, 1, 1), (2, 64, 3, 1, 1), ("M", 4, 2, 2), (5, 128, 3, 1, 1),
         (7, 128, 3, 1, 1), ("M", 9, 2, 2), (10, 256, 3, 1, 1), (12, 256, 3, 1, 1),
         (14, 256, 3, 1, 1), ("M", 16, 2, 2), (17, 512, 3, 1, 1), (19, 512, 3, 1, 1),
         (21, 512, 3, 1, 1), ("M", 23, 2, 2), (24, 512, 3, 1, 1), (26, 512, 3, 1, 1),
         (28, 512, 3, 1, 1)]
ALEXNET = [(0, 64, 11, 4, 2), ("M", 2, 3, 2), (3, 192, 5, 1, 2), ("M", 5, 3, 2),
           (6, 384, 3, 1, 1), (8, 256, 3, 1, 1), (10, 256, 3, 1, 1)]
LAYERS = {"vgg16": VGG16, "alexnet": ALEXNET}
# the original's frozen part without --unfreeze: VGG16 features[:-2][:-5] (conv1_1 ..
# conv4_3), AlexNet features[:-2][:5] (conv1, conv2)
FROZEN = {"vgg16": tuple(str(i) for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21)),
          "alexnet": ("0", "3")}


def channels(name: str, width: int) -> int:
  """The map's channels: the last convolution's, scaled by width / 64."""
  return LAYERS[name][-1][1] * width // 64


def grid(name: str, image_size) -> tuple[int, int]:
  """The map's (h, w) for (H, W) inputs (floor at every stride, as PyTorch)."""
  h, w = image_size
  for layer in LAYERS[name]:
    if layer[0] == "M":
      _, _, k, s = layer
    else:
      _, _, k, s, p = layer
      h, w = h + 2 * p, w + 2 * p
    h, w = (h - k) // s + 1, (w - k) // s + 1
  return h, w


class PlainCNN(nn.Module):
  """VGG16 or AlexNet `features[:-2]`: images (N, H, W, 3) -> Features(feature_map)."""
  name_: str = "vgg16"
  width: int = 64
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, tokens: bool = False) -> Features:
    del train, tokens
    layers = LAYERS[self.name_]
    for i, layer in enumerate(layers):
      if layer[0] == "M":
        _, _, k, s = layer
        x = nn.max_pool(x, (k, k), (s, s), padding="VALID")
        continue
      index, out, k, s, p = layer
      x = Conv(out * self.width // 64, k, s, p, self.dtype, use_bias=True, name=str(index))(x)
      if i < len(layers) - 1:  # the last convolution's ReLU is cut off (features[:-2])
        x = jax.nn.relu(x)
    return Features(feature_map=x)
