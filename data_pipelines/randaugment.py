"""RandAugment on PIL images, as torchvision's T.RandAugment (the GSV recipes' training
augmentation: SALAD and MixVPR num_ops=3 at the default magnitude 9, BoQ magnitude 15).

Per image, `num_ops` operations are drawn uniformly (with replacement) from torchvision's 14,
each at the magnitude of bin `magnitude` of 31 (sign flipped with p = 0.5 for the signed
ones), and applied with PIL as torchvision does for PIL images: affine warps with black
fill, shears about the top-left corner, ImageEnhance factors 1 + m, posterize bits
8 - round(m / 7.5), solarize threshold 255 (1 - m / 30). The random draws come from a NumPy
generator instead of torch's, so the distribution is the same, not the draws.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

NUM_BINS = 31
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
       "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def magnitude_of(op: str, magnitude: int, width: int, height: int) -> tuple[float, bool]:
  """(value, signed) of `op` at bin `magnitude` (torchvision's _augmentation_space)."""
  t = magnitude / (NUM_BINS - 1)
  if op in ("ShearX", "ShearY"):
    return 0.3 * t, True
  if op == "TranslateX":
    return 150.0 / 331.0 * width * t, True
  if op == "TranslateY":
    return 150.0 / 331.0 * height * t, True
  if op == "Rotate":
    return 30.0 * t, True
  if op in ("Brightness", "Color", "Contrast", "Sharpness"):
    return 0.9 * t, True
  if op == "Posterize":
    return float(8 - int(round(magnitude / ((NUM_BINS - 1) / 4)))), False
  if op == "Solarize":
    return 255.0 * (1 - t), False
  return 0.0, False


def _inverse_affine(center, angle: float, translate, shear) -> list[float]:
  """torchvision's _get_inverse_affine_matrix (scale 1): output pixel -> input pixel."""
  rot = math.radians(angle)
  sx, sy = math.radians(shear[0]), math.radians(shear[1])
  cx, cy = center
  tx, ty = translate
  a = math.cos(rot - sy) / math.cos(sy)
  b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
  c = math.sin(rot - sy) / math.cos(sy)
  d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
  m = [d, -b, 0.0, -c, a, 0.0]
  m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
  m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
  m[2] += cx
  m[5] += cy
  return m


def apply_op(image: Image.Image, op: str, value: float, resample=Image.BILINEAR) -> Image.Image:
  """One operation at magnitude `value` (signed already)."""
  w, h = image.size
  if op in ("ShearX", "ShearY", "TranslateX", "TranslateY"):
    shear = (math.degrees(math.atan(value)), 0.0) if op == "ShearX" else (
        (0.0, math.degrees(math.atan(value))) if op == "ShearY" else (0.0, 0.0))
    translate = ((int(value), 0) if op == "TranslateX" else
                 (0, int(value)) if op == "TranslateY" else (0, 0))
    center = (0.0, 0.0) if op.startswith("Shear") else (w * 0.5, h * 0.5)
    return image.transform((w, h), Image.AFFINE, _inverse_affine(center, 0.0, translate, shear),
                           resample)
  if op == "Rotate":
    return image.rotate(value, resample)
  if op == "Brightness":
    return ImageEnhance.Brightness(image).enhance(1.0 + value)
  if op == "Color":
    return ImageEnhance.Color(image).enhance(1.0 + value)
  if op == "Contrast":
    return ImageEnhance.Contrast(image).enhance(1.0 + value)
  if op == "Sharpness":
    return ImageEnhance.Sharpness(image).enhance(1.0 + value)
  if op == "Posterize":
    return ImageOps.posterize(image, int(value))
  if op == "Solarize":
    return ImageOps.solarize(image, value)
  if op == "AutoContrast":
    return ImageOps.autocontrast(image)
  if op == "Equalize":
    return ImageOps.equalize(image)
  return image


def rand_augment(image: Image.Image, rng: np.random.Generator, num_ops: int = 2,
                 magnitude: int = 9, resample=Image.BILINEAR) -> Image.Image:
  """T.RandAugment(num_ops, magnitude, interpolation)(image) for an RGB PIL image."""
  w, h = image.size
  for _ in range(num_ops):
    op = OPS[int(rng.integers(len(OPS)))]
    value, signed = magnitude_of(op, magnitude, w, h)
    if signed and rng.integers(2):
      value = -value
    image = apply_op(image, op, value, resample)
  return image
