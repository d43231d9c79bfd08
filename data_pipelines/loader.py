"""grain input pipelines: decode + resize on host workers to uint8 NHWC batches.

Training batches are GeoPair items (query, positive[, negative]), supervised tuples, or
places of K images (GSV-Cities, augmented on the host); evaluation batches are plain images
in file order. An epoch is planned here in NumPy from (seed, epoch), then
every process loads only its own block of each global batch, so the global batch is the
same whatever the number of processes (see `local_items`).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

import grain
from absl import flags
import numpy as np
from PIL import Image

from data_pipelines import images, mining, randaugment
from data_pipelines.mining import GeoPairs
from data_pipelines.places import PlaceDataset


# The unreadable files this process has warned about: one warning per file, however many
# epochs meet it (each time is counted in the metric lines' skipped_images)
_WARNED: set[str] = set()
_WARNED_LOCK = threading.Lock()


def warn_unreadable(error: images.ImageReadError) -> None:
  """Logs that training skips an unreadable image, once per file and process."""
  with _WARNED_LOCK:
    if str(error) in _WARNED:
      return
    _WARNED.add(str(error))
  logging.warning("training skips an unreadable image (warned once; counted in skipped_images): "
                  "%s", error)


def first_readable(items: np.ndarray, index: int, load, what: str) -> dict:
  """load(items[index]) with "skipped" = 0, or, when it meets an unreadable image, the next
  item that loads (in epoch order, wrapping) with "skipped" = the items passed over, so that
  training goes on and reports them; ImageReadError when none of them can be read."""
  n = len(items)
  for tries in range(n):
    try:
      out = load(items[(index + tries) % n])
      out["skipped"] = np.int32(tries)
      return out
    except images.ImageReadError as e:
      warn_unreadable(e)
  raise images.ImageReadError(f"none of the {n} {what} of this epoch could be read; check the "
                              "dataset files.")


@dataclasses.dataclass(frozen=True)
class _LoadItem(grain.transforms.Map):
  """Item number -> {"query", "positive"[, "negative"]} uint8 images and "skipped".

  items: (n, 2 or 3) rows (query image, positive[, negative]); query images index queries +
  database (self-pairs show database images as queries), the others the database. An item
  with an unreadable image is replaced by the next readable item of the epoch, and
  "skipped" counts the unreadable files met, so training goes on and reports them.
  Picklable for grain workers.
  """
  items: np.ndarray
  query_images: images.ImageSource
  database: images.ImageSource
  size: tuple[int, int]
  draft: bool = False
  stack_negatives: bool = False  # "negatives" (M, h, w, 3) instead of one "negative"

  def _load(self, item) -> dict:
    # training images: the PIL resize, as the original's training transform
    load = lambda source, i: images.load_image(source, i, self.size, self.draft)
    out = {"query": load(self.query_images, item[0]), "positive": load(self.database, item[1])}
    if self.stack_negatives:
      out["negatives"] = np.stack([load(self.database, i) for i in item[2:]])
    elif len(item) > 2:
      out["negative"] = load(self.database, item[2])
    return out

  def map(self, index):
    return first_readable(self.items, index, self._load, "training items")


@dataclasses.dataclass(frozen=True)
class _LoadImage(grain.transforms.Map):
  """index -> {"views": (V, h, w, 3) views of one image (one hard-resized view by default;
  uint8 from the "pil" resize, float32 from the "tensor" one), "ok": whether it could be
  read}. An unreadable image raises ImageReadError, or with skip_unreadable gives black
  views (V fixed: `num_views`) with ok False."""
  source: images.ImageSource
  size: tuple[int, int]
  views: Callable[[Image.Image], np.ndarray] | None = None
  draft: bool = False
  skip_unreadable: bool = False
  num_views: int = 1
  resize: str = "tensor"

  def map(self, index):
    try:
      if self.views is None:
        pixels = images.load_image(self.source, index, self.size, self.draft, self.resize)[None]
      else:
        pixels = self.views(self.source.open(index))
      return {"views": pixels, "ok": np.bool_(True)}
    except images.ImageReadError as e:
      if not self.skip_unreadable:
        raise
      warn_unreadable(e)
      dtype = np.float32 if self.resize == "tensor" else np.uint8
      return {"views": np.zeros((self.num_views, *self.size, 3), dtype), "ok": np.bool_(False)}


@dataclasses.dataclass(frozen=True)
class Augment:
  """The GSV recipes' training transform on the host: resize to `size` (PIL, antialiased,
  `interpolation`), then RandAugment(num_ops, magnitude) (none when num_ops is 0)."""
  size: tuple[int, int]
  interpolation: str = "bilinear"
  num_ops: int = 3
  magnitude: int = 9

  def __call__(self, image: Image.Image, rng: np.random.Generator) -> np.ndarray:
    height, width = self.size
    if image.size != (width, height):
      image = image.resize((width, height), randaugment.RESAMPLE[self.interpolation])
    if self.num_ops:
      image = randaugment.rand_augment(image, rng, self.num_ops, self.magnitude)
    return np.asarray(image, np.uint8)


@dataclasses.dataclass(frozen=True)
class _LoadPlace(grain.transforms.Map):
  """Item number -> {"images": (K, h, w, 3) uint8, "places": label, "skipped"}.

  items: (n, 2 + K) rows (draw id, place label, K image indices); the draw id seeds the
  item's augmentation with (seed, epoch), so a resumed epoch draws the same pixels. An item
  with an unreadable image is replaced by the next readable one, as _LoadItem."""
  items: np.ndarray
  source: images.ImageSource
  augment: Augment
  seed: int
  epoch: int
  draft: bool = False  # JPEG DCT downscaling towards the training size (data.jpeg_draft)

  def _load(self, row) -> dict:
    draft = tuple(self.augment.size) if self.draft else None
    rng = np.random.default_rng([self.seed, self.epoch, int(row[0])])
    pixels = np.stack([self.augment(self.source.open(int(i), draft), rng) for i in row[2:]])
    return {"images": pixels, "places": np.int32(row[1])}

  def map(self, index):
    return first_readable(self.items, index, self._load, "training places")


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
  jpeg_draft: bool = False  # JPEG DCT downscaling before the resize (see images.decode)
  # evaluation and mining images: "tensor" (the original's evaluation pipeline, float32) or
  # "pil" (the training resize, uint8); training batches always use "pil"
  eval_resize: str = "tensor"


def _iterate(dataset: grain.MapDataset, options: LoaderOptions) -> grain.IterDataset:
  it = dataset.to_iter_dataset(grain.ReadOptions(num_threads=options.num_threads,
                                                 prefetch_buffer_size=max(options.prefetch, options.num_threads)))
  if options.num_workers > 0:
    # grain's worker processes read its absl flags: outside an absl app (a script, a
    # notebook) take their defaults instead of failing in the worker
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=options.num_workers))
  return it


def pair_dataset(places: PlaceDataset, items: np.ndarray, local_batch: int,
                 options: LoaderOptions) -> grain.IterDataset:
  """Batches {"query", "positive"[, "negative"]}: (local_batch, H, W, 3) uint8 each, and
  "skipped" (local_batch,): unreadable files replaced by other items.

  items: (num_items, 2 or 3) rows of `plan_epoch` (see `local_items`).
  """
  load = _LoadItem(np.asarray(items), images.ConcatImages(places.images("queries"),
                                                          places.images("database")),
                   places.images("database"), tuple(options.image_size), options.jpeg_draft)
  dataset = grain.MapDataset.source(np.arange(len(items))).map(load).batch(
      local_batch, drop_remainder=True)
  return _iterate(dataset, options)


def tuple_dataset(places: PlaceDataset, items: np.ndarray, local_batch: int,
                  options: LoaderOptions) -> grain.IterDataset:
  """Batches of the supervised path's tuples {"query", "positive": (local_batch, H, W, 3),
  "negatives": (local_batch, M, H, W, 3) uint8, "skipped"}; items: (n, 2 + M) rows
  (query, positive, negatives...) of query / database indices, in order."""
  load = _LoadItem(np.asarray(items), places.images("queries"), places.images("database"),
                   tuple(options.image_size), options.jpeg_draft, stack_negatives=True)
  dataset = grain.MapDataset.source(np.arange(len(items))).map(load).batch(
      local_batch, drop_remainder=True)
  return _iterate(dataset, options)


def image_dataset(source: images.ImageSource, indices: np.ndarray, batch_size: int,
                  options: LoaderOptions, views=None,
                  skip_unreadable: bool = False) -> grain.IterDataset:
  """Batches {"views": (b, V, h, w, 3), "ok": (b,) bool} of the views of images
  `source[indices]`, in order; the last batch may be smaller. `views`: image -> (V, h, w,
  3) (default: one hard resize by options.eval_resize). skip_unreadable: unreadable images
  give black views and ok False instead of an ImageReadError (views must then have a fixed
  size)."""
  num_views = getattr(views, "num_views", 1)
  load = _LoadImage(source, tuple(options.image_size), views, options.jpeg_draft,
                    skip_unreadable, num_views, options.eval_resize)
  dataset = grain.MapDataset.source(np.asarray(indices)).map(load).batch(
      batch_size, drop_remainder=False)
  return _iterate(dataset, options)


def place_dataset(source: images.ImageSource, items: np.ndarray, local_batch: int,
                  augment: Augment, seed: int, epoch: int,
                  options: LoaderOptions) -> grain.IterDataset:
  """Batches {"images": (local_batch, K, H, W, 3) uint8, "places": (local_batch,) int32,
  "skipped"} of places; items: (n, 2 + K) rows (draw id, label, image indices), in order."""
  load = _LoadPlace(np.asarray(items), source, augment, seed, epoch, options.jpeg_draft)
  dataset = grain.MapDataset.source(np.arange(len(items))).map(load).batch(
      local_batch, drop_remainder=True)
  return _iterate(dataset, options)
