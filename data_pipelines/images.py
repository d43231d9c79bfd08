"""Where images come from: files on disk or records of an ArrayRecord dataset.

An image source is a picklable sequence of images (grain workers receive it once) with
`open(i)` -> decoded RGB PIL image and `name(i)` -> its relative path. Decoding and
resizing are the same for every source, so both give identical pixels.
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


def resize(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
  """PIL bilinear (antialiased) resize to (H, W) = size: uint8 (H, W, 3)."""
  height, width = size
  if image.size != (width, height):
    image = image.resize((width, height), Image.BILINEAR)
  return np.asarray(image, np.uint8)


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


def load_image(source: ImageSource, index: int, size: tuple[int, int],
               draft: bool = True) -> np.ndarray:
  """Image `index` of `source`, resized to (H, W) = size: uint8 (H, W, 3). draft: JPEG DCT
  downscaling first when the image is at least twice the size (see `decode`)."""
  return resize(source.open(index, tuple(size) if draft else None), size)
