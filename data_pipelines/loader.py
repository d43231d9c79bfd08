"""grain input pipelines: decode + resize on host workers to uint8 NHWC batches.

Training batches are GeoPair items (query, positive[, negative]); evaluation batches are
plain images in file order. An epoch is planned here in NumPy from (seed, epoch), then
every process loads only its own block of each global batch, so the global batch is the
same whatever the number of processes (see `local_items`).
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np
from PIL import Image

from data_pipelines import mining
from data_pipelines.mining import GeoPairs
from data_pipelines.places import PlaceDataset


class ImageReadError(RuntimeError):
  """An image file cannot be opened or decoded."""


def load_image(path: str, size: tuple[int, int]) -> np.ndarray:
  """Decodes `path` and resizes it (PIL bilinear, antialiased) to (H, W) = size: uint8 (H, W, 3)."""
  height, width = size
  try:
    with Image.open(path) as image:
      image = image.convert("RGB")
      if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
      return np.asarray(image, np.uint8)
  except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for missing/corrupt files
    raise ImageReadError(f"cannot read image {path!r}: {e}. Replace or remove the file.") from e


@dataclasses.dataclass(frozen=True)
class _LoadItem(grain.transforms.Map):
  """(query image, positive[, negative]) indices -> uint8 images. Picklable for workers.

  Query indices point into `query_images` = queries + database (self-pairs use database
  images as queries); positives and negatives into the database.
  """
  query_images: tuple[str, ...]
  database: tuple[str, ...]
  size: tuple[int, int]

  def map(self, item):
    out = {"query": load_image(self.query_images[item[0]], self.size),
           "positive": load_image(self.database[item[1]], self.size)}
    if len(item) > 2:
      out["negative"] = load_image(self.database[item[2]], self.size)
    return out


@dataclasses.dataclass(frozen=True)
class _LoadImage(grain.transforms.Map):
  paths: tuple[str, ...]
  size: tuple[int, int]

  def map(self, index):
    return load_image(self.paths[index], self.size)


def epoch_order(num_items: int, items_per_step: int, seed: int, epoch: int) -> np.ndarray:
  """(steps, items_per_step) item indices of one epoch: shuffled, last partial batch dropped."""
  steps = num_items // items_per_step
  order = np.random.default_rng([seed, epoch]).permutation(num_items)[:steps * items_per_step]
  return order.reshape(steps, items_per_step)


def plan_epoch(pairs: GeoPairs, num_queries: int, items_per_step: int, seed: int,
               epoch: int) -> np.ndarray:
  """(steps, items_per_step, 2 or 3) image indices (query image, positive[, negative]).

  Query images index queries + database (`num_queries` + n is database image n), so a
  self-pair (n, n) shows database image n as its query. With pair_negative, each item's
  negative is chosen per global batch by the original's collate rule.
  """
  order = epoch_order(len(pairs), items_per_step, seed, epoch)
  selfs = pairs.self_pairs if pairs.self_pairs is not None else np.zeros(0, np.int64)
  query_images = np.concatenate([pairs.queries, num_queries + selfs])
  positives = np.concatenate([pairs.positives, selfs])
  columns = [query_images[order], positives[order]]
  if pairs.negatives is not None:
    columns.append(mining.pick_negatives(order, pairs.negatives))
  return np.stack(columns, axis=-1)


def local_items(plan: np.ndarray, process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """This process's items: the p-th contiguous block of every global batch, flattened.

  Concatenating the blocks of all processes in process order gives the global batch, so
  the training batches are the same whatever the number of processes.
  """
  steps, per_step = plan.shape[:2]
  local = per_step // process_count
  return plan[:, process_index * local:(process_index + 1) * local].reshape(steps * local, -1)


@dataclasses.dataclass(frozen=True)
class LoaderOptions:
  image_size: tuple[int, int]
  num_workers: int = 0   # processes; 0 decodes in threads of this process
  num_threads: int = 4
  prefetch: int = 2


def _iterate(dataset: grain.MapDataset, options: LoaderOptions) -> grain.IterDataset:
  it = dataset.to_iter_dataset(grain.ReadOptions(num_threads=options.num_threads,
                                                 prefetch_buffer_size=max(options.prefetch, options.num_threads)))
  if options.num_workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=options.num_workers))
  return it


def pair_dataset(places: PlaceDataset, items: np.ndarray, local_batch: int,
                 options: LoaderOptions) -> grain.IterDataset:
  """Batches {"query", "positive"[, "negative"]}: (local_batch, H, W, 3) uint8 each.

  items: (num_items, 2 or 3) rows of `plan_epoch` (see `local_items`).
  """
  load = _LoadItem(tuple(places.abs_path(p) for p in places.queries_paths + places.database_paths),
                   tuple(places.abs_path(p) for p in places.database_paths),
                   tuple(options.image_size))
  dataset = grain.MapDataset.source(items).map(load).batch(local_batch, drop_remainder=True)
  return _iterate(dataset, options)


def image_dataset(paths: list[str], batch_size: int, options: LoaderOptions) -> grain.IterDataset:
  """Batches of (b, H, W, 3) uint8 images in the order of `paths`; the last may be smaller."""
  load = _LoadImage(tuple(paths), tuple(options.image_size))
  dataset = grain.MapDataset.source(np.arange(len(paths))).map(load).batch(
      batch_size, drop_remainder=False)
  return _iterate(dataset, options)

