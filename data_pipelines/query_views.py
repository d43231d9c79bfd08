"""Test-time query views of the original (`--test_method`, docs/original.md "Evaluation"),
for queries only: each method turns one query image into the view(s) it is embedded as.

  hard_resize   resize to (H, W)                                  (the default)
  single_query  resize so the short side is H, aspect kept        (one query per batch)
  central_crop  scale by max(H/h, W/w) with nearest neighbours, centre crop (H, W)
  five_crops    short side to H, five H x H crops; descriptors averaged (not renormalised)
  nearest_crop  the five crops searched separately (merged by vgssl_jax.evaluation.retrieval)
  maj_voting    as nearest_crop, with majority voting over the crops' candidates

Database images always use hard_resize. The resizes are `resize`'s (data_pipelines.images:
"tensor", the original's evaluation pipeline, float32 out; or "pil", uint8 out); the
nearest-neighbour scaling of central_crop keeps the pixel values either way.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from data_pipelines import images

METHODS = ("hard_resize", "single_query", "central_crop", "five_crops", "nearest_crop",
           "maj_voting")
CROP_METHODS = ("five_crops", "nearest_crop", "maj_voting")


@dataclasses.dataclass(frozen=True)
class QueryViews:
  """image -> (V, h, w, 3) uint8 views for one test method. Picklable for grain workers."""
  method: str
  size: tuple[int, int]   # (H, W) of the model input
  resize: str = "tensor"  # images.RESIZES

  @property
  def num_views(self) -> int:
    return 5 if self.method in CROP_METHODS else 1

  @property
  def fixed_shape(self) -> bool:
    return self.method != "single_query"

  def __call__(self, image: Image.Image) -> np.ndarray:
    H, W = self.size
    w, h = image.size
    if self.method == "hard_resize":
      return images.resized(image, self.size, self.resize)[None]
    if self.method == "single_query":
      return images.resized(image, _short_side(h, w, H), self.resize)[None]
    if self.method == "central_crop":
      # F.interpolate(scale_factor=s) in nearest mode: size floor(n * s), source floor(i / s)
      scale = max(H / h, W / w)
      new_h, new_w = max(H, int(h * scale)), max(W, int(w * scale))
      rows = np.minimum((np.arange(new_h) / scale).astype(np.int64), h - 1)
      cols = np.minimum((np.arange(new_w) / scale).astype(np.int64), w - 1)
      top, left = int(round((new_h - H) / 2.0)), int(round((new_w - W) / 2.0))
      pixels = np.asarray(image, np.uint8)
      crop = pixels[rows[top:top + H]][:, cols[left:left + W]][None]
      return crop.astype(np.float32) if self.resize == "tensor" else crop
    if self.method in CROP_METHODS:
      return five_crops(images.resized(image, _short_side(h, w, H), self.resize), H)
    raise ValueError(f"unknown test method {self.method!r}; expected one of {METHODS}")


def _short_side(h: int, w: int, target: int) -> tuple[int, int]:
  """torchvision Resize(int): the short side becomes `target`, the aspect ratio is kept."""
  if h <= w:
    return target, int(target * w / h)
  return int(target * h / w), target


def five_crops(image: np.ndarray, size: int) -> np.ndarray:
  """torchvision FiveCrop: top-left, top-right, bottom-left, bottom-right, centre. (5, s, s, 3)."""
  h, w = image.shape[:2]
  if h < size or w < size:
    raise ValueError(f"image {h}x{w} is smaller than the crop size {size}")
  top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
  corners = [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size), (top, left)]
  return np.stack([image[y:y + size, x:x + size] for y, x in corners])
