"""Pictures researchers look at: per-query predictions and recall@N curves (PIL only)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, ImageDraw

from data_pipelines import images

GREEN, RED, WHITE, BLACK, GREY = (0, 170, 0), (220, 0, 0), (255, 255, 255), (0, 0, 0), (200, 200, 200)


def _thumb(image: Image.Image, height: int) -> Image.Image:
  width = max(1, round(image.width * height / image.height))
  return image.resize((width, height), Image.BILINEAR)


def prediction_strip(query: Image.Image, predictions: list[Image.Image], correct: list[bool],
                     height: int = 160, border: int = 6) -> Image.Image:
  """The query, then its predictions framed green (within the radius) or red."""
  tiles = [_thumb(query, height)] + [_thumb(p, height) for p in predictions]
  width = sum(t.width for t in tiles) + border * 2 * len(tiles) + 4 * (len(tiles) - 1)
  canvas = Image.new("RGB", (width, height + 2 * border + 14), WHITE)
  draw = ImageDraw.Draw(canvas)
  x = 0
  for i, tile in enumerate(tiles):
    colour = BLACK if i == 0 else (GREEN if correct[i - 1] else RED)
    draw.rectangle([x, 0, x + tile.width + 2 * border - 1, height + 2 * border - 1], fill=colour)
    canvas.paste(tile, (x + border, border))
    draw.text((x + border, height + 2 * border + 1), "query" if i == 0 else f"#{i}", fill=BLACK)
    x += tile.width + 2 * border + 4
  return canvas


def save_predictions(folder: str, queries: images.ImageSource, database: images.ImageSource,
                     predictions: np.ndarray, hits: np.ndarray, only_wrong: bool) -> int:
  """One JPEG per query: <folder>/<query index>.jpg. hits: (Q, K) bool. Returns the count."""
  os.makedirs(folder, exist_ok=True)
  written = 0
  for q in range(len(predictions)):
    if only_wrong and hits[q, 0]:
      continue  # as the original: skip queries whose first prediction is correct
    strip = prediction_strip(queries.open(q), [database.open(int(p)) for p in predictions[q]],
                             list(hits[q]))
    strip.save(os.path.join(folder, f"{q:06d}.jpg"), quality=90)
    written += 1
  return written


def recall_curve(path: str, recalls: np.ndarray, title: str) -> None:
  """Line chart of recall@N (percent) for N = 1..len(recalls), saved as PNG."""
  w, h, left, bottom, top, right = 640, 420, 60, 50, 40, 20
  canvas = Image.new("RGB", (w, h), WHITE)
  draw = ImageDraw.Draw(canvas)
  x0, y0, x1, y1 = left, h - bottom, w - right, top
  n = len(recalls)
  def xy(i, r):
    x = x0 + (x1 - x0) * (i / max(n - 1, 1))
    return x, y0 - (y0 - y1) * r / 100.0
  for r in range(0, 101, 20):  # grid and y labels
    _, y = xy(0, r)
    draw.line([x0, y, x1, y], fill=GREY)
    draw.text((8, y - 6), f"{r:3d}%", fill=BLACK)
  for i in range(n):
    if n <= 20 or (i + 1) % 5 == 0 or i == 0:
      x, _ = xy(i, 0)
      draw.text((x - 4, y0 + 6), str(i + 1), fill=BLACK)
  draw.line([x0, y0, x1, y0], fill=BLACK)
  draw.line([x0, y0, x0, y1], fill=BLACK)
  points = [xy(i, r) for i, r in enumerate(recalls)]
  draw.line(points, fill=(30, 90, 200), width=3)
  for x, y in points:
    draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=(30, 90, 200))
  draw.text((x0, 12), title, fill=BLACK)
  draw.text(((x0 + x1) // 2 - 30, h - 20), "N (top-N)", fill=BLACK)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  canvas.save(path)
