"""File-name formats of visual place recognition datasets.

The `@` format of VPR-datasets-downloader stores the metadata of an image in its
file name::

    @{utm_east}@{utm_north}@{zone_number}@{zone_letter}@{lat}@{lon}@{pano_id}
     @{tile_num}@{heading}@{pitch}@{roll}@{height}@{timestamp}@{note}@.jpg

Only UTM east and north are needed for geo-localization. We parse the *basename*
only: the original splits the whole path, which breaks on an `@` in a directory.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

AT_PATTERN = "@{utm_east}@{utm_north}@{zone_number}@{zone_letter}@{lat}@{lon}@...@{note}@.jpg"
# 16 pieces when splitting a complete name on "@": "", 14 fields, and the extension.
_NUM_FIELDS = 16


class FilenameFormatError(ValueError):
  """A file name does not follow the `@` convention."""


def parse_utm(path: str) -> tuple[float, float]:
  """Returns (east, north) in metres from an `@`-format file name.

  Raises FilenameFormatError naming the file and the expected pattern.
  """
  name = os.path.basename(path)
  fields = name.split("@")
  if len(fields) < 4 or fields[0] != "":
    raise FilenameFormatError(
        f"{path!r} is not an `@`-format image name: expected {AT_PATTERN} "
        "(e.g. '@0549678.37@4180874.60@10@S@037.77386@-122.43590@@@@@@@@@.jpg'). "
        "Rename the files with VPR-datasets-downloader or point data.root elsewhere.")
  try:
    return float(fields[1]), float(fields[2])
  except ValueError:
    raise FilenameFormatError(
        f"{path!r}: UTM east/north fields {fields[1]!r}, {fields[2]!r} are not numbers; "
        f"expected {AT_PATTERN}.") from None


def parse_utms(paths: Sequence[str]) -> np.ndarray:
  """(N, 2) float64 array of UTM (east, north) for a list of `@`-format paths."""
  utms = np.empty((len(paths), 2), np.float64)
  for i, path in enumerate(paths):
    utms[i] = parse_utm(path)
  return utms


def _format_coord(value: float | None, int_digits: int, decimals: int) -> str:
  """Zero-padded fixed width including the sign, as util.format_coord of VPR-datasets-downloader
  (7 integer digits for UTM: 0549678.37; 4 for longitude: -122.43590)."""
  if value is None:
    return ""
  return f"{value:0{int_digits + 1 + decimals}.{decimals}f}"


def format_name(utm_east: float, utm_north: float, zone_number: int | None = None,
                zone_letter: str = "", lat: float | None = None, lon: float | None = None,
                pano_id: str = "", tile_num: int | None = None,
                heading: int | None = None, pitch: int | None = None,
                timestamp: str = "", note: str = "", extension: str = ".jpg") -> str:
  """Writes an `@`-format file name (the inverse of `parse_utm` for east/north)."""
  for text, what in ((pano_id, "pano_id"), (note, "note"), (zone_letter, "zone_letter"),
                     (timestamp, "timestamp")):
    if "@" in text or "/" in text:
      raise ValueError(f"{what}={text!r} must not contain '@' or '/'.")
  fields = [
      "",
      _format_coord(utm_east, 7, 2),
      _format_coord(utm_north, 7, 2),
      "" if zone_number is None else f"{zone_number:02d}",
      zone_letter,
      _format_coord(lat, 3, 5),
      _format_coord(lon, 4, 5),
      pano_id,
      "" if tile_num is None else f"{tile_num:02d}",
      "" if heading is None else f"{heading:03d}",
      "" if pitch is None else f"{pitch:03d}",
      "",  # roll: not implemented in the downloader either
      "",  # height
      timestamp,
      note,
      extension,
  ]
  assert len(fields) == _NUM_FIELDS
  return "@".join(fields)
