"""The networks' input convention: ImageNet-normalised float images (NHWC).

Pixels travel as uint8 (training batches; evaluation images of the "pil" resize) or as
float32 in [0, 255] (evaluation images of the "tensor" resize) and are normalised on the
device, by the train step's view making and by the evaluation forward alike.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: jax.Array, dtype=jnp.float32) -> jax.Array:
  """uint8 (or [0, 255] float) NHWC -> ImageNet-normalised float."""
  x = images.astype(jnp.float32) / 255.0
  x = (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
  return x.astype(dtype)
