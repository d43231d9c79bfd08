"""Where images come from (files on disk or records of an ArrayRecord dataset) and how they
are resized to the model's input size.

An image source is a picklable sequence of images (grain workers receive it once) with
`open(i)` -> decoded RGB PIL image and `name(i)` -> its relative path. Decoding and
resizing are the same for every source, so both give identical pixels.

Two resizes, as the original has them (docs/original.md §Preprocessing):
  pil     PIL's bilinear resize with its antialiasing, to uint8: the original's training
          images (`Resize` on the PIL image before ToTensor + Normalize);
  tensor  bilinear without antialiasing (align_corners=False) on the float pixels, to
          float32 in [0, 255]: the original's evaluation, database and mining-cache images
          (ToTensor + Normalize first, then torchvision 0.13's tensor resize). The ImageNet
          normalisation is affine per channel and the resize linear with weights summing
          to 1, so resizing the raw float pixels and normalising after (on the device)
          gives the original's values.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Protocol

import numpy as np
from PIL import Image


class ImageReadError(RuntimeError):
  """An image file cannot be opened or decoded."""


class ImageSource(Protocol):
  def __len__(self) -> int: ...
  def open(self, index: int, draft: tuple[int, int] | None = None) -> Image.Image: ...
  def name(self, index: int) -> str: ...


def decode(data: str | bytes, what: str, draft: tuple[int, int] | None = None) -> Image.Image:
  """Decodes a file path or encoded bytes into an RGB PIL image (fully loaded).

  draft=(H, W): a JPEG that is at least twice as large is decoded at a reduced scale
  (libjpeg's DCT scaling by 1/2, 1/4 or 1/8, never below (H, W)): much less work before
  the final resize to (H, W), at a small change of the pixels.
  """
  try:
    with Image.open(data if isinstance(data, str) else io.BytesIO(data)) as image:
      if draft is not None and image.format == "JPEG":
        image.draft("RGB", (draft[1], draft[0]))
      return image.convert("RGB")
  except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for missing/corrupt files
    raise ImageReadError(f"cannot read image {what!r}: {e}. Replace or remove the file.") from e


RESIZES = ("tensor", "pil")


def resize(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
  """PIL bilinear (antialiased) resize to (H, W) = size: uint8 (H, W, 3)."""
  height, width = size
  if image.size != (width, height):
    image = image.resize((width, height), Image.BILINEAR)
  return np.asarray(image, np.uint8)


def _bilinear_axis(x: np.ndarray, axis: int, n_out: int) -> np.ndarray:
  """torch's bilinear interpolation along one axis (align_corners=False, no antialias):
  source coordinate (i + 0.5) n_in / n_out - 0.5, clamped at 0, the upper tap at the border."""
  n_in = x.shape[axis]
  src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5))
                   * np.float32(n_in / n_out) - np.float32(0.5), np.float32(0))
  lo = np.minimum(src.astype(np.int64), n_in - 1)
  hi = np.minimum(lo + 1, n_in - 1)
  shape = [1] * x.ndim
  shape[axis] = n_out
  frac = (src - lo).astype(np.float32).reshape(shape)
  return np.take(x, lo, axis) * (np.float32(1) - frac) + np.take(x, hi, axis) * frac


def tensor_resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(h, w, 3) pixels -> (H, W, 3) float32 in [0, 255], resized bilinearly without
  antialiasing as torch's tensor resize (the original's evaluation pipeline)."""
  x = np.asarray(pixels, np.float32)
  for axis, n in enumerate(size):
    if x.shape[axis] != n:
      x = _bilinear_axis(x, axis, n)
  return x


def resized(image: Image.Image, size: tuple[int, int], method: str = "pil") -> np.ndarray:
  """`image` at (H, W) = size by `method` (RESIZES): uint8 from "pil", float32 from
  "tensor"."""
  if method == "pil":
    return resize(image, size)
  if method == "tensor":
    return tensor_resize(np.asarray(image, np.uint8), size)
  raise ValueError(f"unknown resize {method!r}; expected one of {RESIZES}")


@dataclasses.dataclass(frozen=True)
class FileImages:
  """Images stored as files: `root/paths[i]`."""
  root: str
  paths: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.paths)

  def open(self, index: int, draft: tuple[int, int] | None = None) -> Image.Image:
    path = os.path.join(self.root, self.paths[index])
    return decode(path, path, draft)

  def name(self, index: int) -> str:
    return self.paths[index]


@dataclasses.dataclass(frozen=True)
class ConcatImages:
  """Two sources one after the other (queries followed by the database, for self-pairs)."""
  first: ImageSource
  second: ImageSource

  def __len__(self) -> int:
    return len(self.first) + len(self.second)

  def _pick(self, index: int):
    n = len(self.first)
    return (self.first, index) if index < n else (self.second, index - n)

  def open(self, index: int, draft: tuple[int, int] | None = None) -> Image.Image:
    source, i = self._pick(index)
    return source.open(i, draft)

  def name(self, index: int) -> str:
    source, i = self._pick(index)
    return source.name(i)


def load_image(source: ImageSource, index: int, size: tuple[int, int], draft: bool = False,
               method: str = "pil") -> np.ndarray:
  """Image `index` of `source` resized to (H, W) = size by `method` (see `resized`): uint8
  or float32 (H, W, 3). draft: JPEG DCT downscaling first when the image is at least twice
  the size (see `decode`; off by default: it changes the pixels)."""
  return resized(source.open(index, tuple(size) if draft else None), size, method)
