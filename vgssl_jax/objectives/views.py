"""The objectives' views of a batch: the original's query transform (RandomResizedCrop,
pure jax on the device) and its whole-batch flip, applied inside the jitted train step
(docs/original.md §Augmentation, §Batches).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from vgssl_jax.models.inputs import normalize


@dataclasses.dataclass(frozen=True)
class ViewConfig:
  """The random query transform of the original (RandomResizedCrop with scale (1 - r, 1)
  when r > 0) and its whole-batch horizontal flip."""
  random_resized_crop: float
  horizontal_flip: bool

  @classmethod
  def from_config(cls, config) -> "ViewConfig":
    return cls(config.train.random_resized_crop, config.train.horizontal_flip)


def crop_params(key: jax.Array, height: int, width: int, scale: tuple[float, float],
                ratio: tuple[float, float] = (3 / 4, 4 / 3), tries: int = 10) -> jax.Array:
  """torchvision RandomResizedCrop.get_params for one image: (top, left, h, w) int32.

  Up to `tries` samples of area fraction ~ U(scale) and log-uniform aspect w/h;
  the first that fits is used, else the central crop with the ratio clamped.
  """
  area = height * width
  k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
  target = area * jax.random.uniform(k_area, (tries,), minval=scale[0], maxval=scale[1])
  log_r = jax.random.uniform(k_ratio, (tries,), minval=math.log(ratio[0]),
                             maxval=math.log(ratio[1]))
  aspect = jnp.exp(log_r)
  w = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
  h = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
  ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
  first = jnp.argmax(ok)
  # fallback: central crop (torchvision's rule)
  in_ratio = width / height
  if in_ratio < ratio[0]:
    fw, fh = width, int(round(width / ratio[0]))
  elif in_ratio > ratio[1]:
    fw, fh = int(round(height * ratio[1])), height
  else:
    fw, fh = width, height
  any_ok = jnp.any(ok)
  h = jnp.where(any_ok, h[first], fh)
  w = jnp.where(any_ok, w[first], fw)
  top = jnp.where(any_ok, jax.random.randint(k_top, (), 0, height - h + 1), (height - fh) // 2)
  left = jnp.where(any_ok, jax.random.randint(k_left, (), 0, width - w + 1), (width - fw) // 2)
  return jnp.stack([top, left, h, w]).astype(jnp.int32)


def _axis_weights(start, size, in_len: int, out_len: int):
  """Bilinear (half-pixel centres, no antialias) source rows and weights along one axis."""
  src = start + (jnp.arange(out_len, dtype=jnp.float32) + 0.5) * (size / out_len) - 0.5
  src = jnp.clip(src, 0.0, in_len - 1.0)
  lo = jnp.floor(src).astype(jnp.int32)
  hi = jnp.minimum(lo + 1, in_len - 1)
  return lo, hi, src - lo


def crop_and_resize(image: jax.Array, box: jax.Array) -> jax.Array:
  """Bilinear resize of image[top:top+h, left:left+w] back to the image size.

  The crop never exceeds the image, so this only upsamples and needs no antialias.
  image (H, W, C) -> (H, W, C) float32.
  """
  H, W, _ = image.shape
  top, left, h, w = (box[i].astype(jnp.float32) for i in range(4))
  x = image.astype(jnp.float32)
  lo, hi, f = _axis_weights(top, h, H, H)
  x = x[lo] * (1 - f)[:, None, None] + x[hi] * f[:, None, None]
  lo, hi, f = _axis_weights(left, w, W, W)
  return x[:, lo] * (1 - f)[None, :, None] + x[:, hi] * f[None, :, None]


def random_resized_crop(key: jax.Array, images: jax.Array, r: float) -> jax.Array:
  """RandomResizedCrop with scale (1 - r, 1), ratio (3/4, 4/3) per image; same size out."""
  N, H, W, _ = images.shape
  boxes = jax.vmap(lambda k: crop_params(k, H, W, (1.0 - r, 1.0)))(jax.random.split(key, N))
  return jax.vmap(crop_and_resize)(images, boxes)


def query_transform(key: jax.Array, images: jax.Array, random_resized_crop_r: float) -> jax.Array:
  """T_q of the original: the random query transform (RRC when r > 0), float [0, 255] out."""
  if random_resized_crop_r > 0:
    return random_resized_crop(key, images, random_resized_crop_r)
  return images.astype(jnp.float32)


def batch_flip(key: jax.Array, views: list[jax.Array]) -> list[jax.Array]:
  """The original's horizontal flip: all images of the step mirrored, or none (p = 0.5)."""
  flip = jax.random.bernoulli(key)
  return [jnp.where(flip, v[:, :, ::-1], v) for v in views]


def make_views(key: jax.Array, batch: dict, views: ViewConfig, dtype) -> tuple[jax.Array,
                                                                               jax.Array]:
  """uint8 GeoPair batch -> the two normalised views (docs/original.md §Batches).

  view 1 = [T_q(queries); T_q(negatives)], view 2 = [positives; T_q'(negatives)]: the query
  and both negative views get independent random query transforms, the positive none.
  Then the whole step is mirrored or not (one coin for all images).
  """
  r = views.random_resized_crop
  k_query, k_neg1, k_neg2, k_flip = jax.random.split(key, 4)
  view1 = [query_transform(k_query, batch["query"], r)]
  view2 = [batch["positive"].astype(jnp.float32)]
  if "negative" in batch:
    view1.append(query_transform(k_neg1, batch["negative"], r))
    view2.append(query_transform(k_neg2, batch["negative"], r))
  view1, view2 = jnp.concatenate(view1), jnp.concatenate(view2)
  if views.horizontal_flip:
    view1, view2 = batch_flip(k_flip, [view1, view2])
  return normalize(view1, dtype), normalize(view2, dtype)
