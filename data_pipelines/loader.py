"""grain input pipelines: decode + resize on host workers to uint8 NHWC batches.

Training batches are GeoPair items (query, positive); evaluation batches are plain
images in file order. Shuffling is done here in NumPy from (seed, epoch), then every
process loads only its own rows of each global batch, so the global batch is the
same whatever the number of processes (see `local_rows`).
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np
from PIL import Image

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
class _LoadPair(grain.transforms.Map):
  """(query index, positive index) -> {"query", "positive"} uint8 images. Picklable."""
  queries: tuple[str, ...]
  database: tuple[str, ...]
  size: tuple[int, int]

  def map(self, item):
    return {"query": load_image(self.queries[item[0]], self.size),
            "positive": load_image(self.database[item[1]], self.size)}


@dataclasses.dataclass(frozen=True)
class _LoadImage(grain.transforms.Map):
  paths: tuple[str, ...]
  size: tuple[int, int]

  def map(self, index):
    return load_image(self.paths[index], self.size)


def local_rows(num_items: int, global_batch: int, seed: int, epoch: int,
               process_index: int = 0, process_count: int = 1) -> np.ndarray:
  """This process's item order for one epoch: shuffled, last partial batch dropped.

  Global batch t holds items order[t*B:(t+1)*B]; process p loads the p-th contiguous
  block of B / process_count of them.
  """
  steps = num_items // global_batch
  order = np.random.default_rng([seed, epoch]).permutation(num_items)[:steps * global_batch]
  local = global_batch // process_count
  return order.reshape(steps, process_count, local)[:, process_index].reshape(-1)


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


def pair_dataset(places: PlaceDataset, pairs: GeoPairs, local_batch: int, rows: np.ndarray,
                 options: LoaderOptions) -> grain.IterDataset:
  """Batches {"query": (b, H, W, 3), "positive": (b, H, W, 3)} uint8 of the given item rows."""
  items = np.stack([pairs.queries[rows], pairs.positives[rows]], axis=1)
  load = _LoadPair(tuple(places.abs_path(p) for p in places.queries_paths),
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

