"""Eval-mode embedding of image files: streaming batches, sharded over the mesh."""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh

from data_pipelines import augment, images, loader
from vgssl_jax import parallel
from vgssl_jax.progress import Progress

OUTPUTS = ("descriptor", "projection")


class Embedder:
  """Computes descriptors (or projector outputs) of image paths with a model in eval mode.

  Batches have a fixed size (the last one padded), so the forward compiles once.
  """

  def __init__(self, model, mesh: Mesh, batch_size: int, options: loader.LoaderOptions,
               progress: bool = True):
    parallel.check_divisible(batch_size, mesh, "infer_batch_size")
    self.model, self.mesh, self.batch_size, self.options = model, mesh, batch_size, options
    self.devices = mesh.devices.size
    self.progress = progress
    self._forward = jax.jit(
        functools.partial(self._apply, model), static_argnums=2,
        in_shardings=(parallel.replicated(mesh), parallel.data_sharded(mesh)),
        out_shardings=parallel.replicated(mesh))

  @staticmethod
  def _apply(model, variables, images, output):
    x = augment.normalize(images, model.dtype)
    out = model.apply(variables, x, train=False, project=output == "projection")
    return out[output]

  def __call__(self, variables: dict, source: images.ImageSource, indices=None,
               output: str = "descriptor", desc: str = "embedding") -> np.ndarray:
    """(len(indices), D) float32 features of images `source[indices]` (all by default), in order."""
    return self.views(variables, source, indices, output=output, desc=desc)[:, 0]

  def views(self, variables: dict, source: images.ImageSource, indices=None, views=None,
            output: str = "descriptor", desc: str = "embedding") -> np.ndarray:
    """(len(indices), V, D) float32 features of the V views of each image.

    `views` maps an image to (V, h, w, 3) uint8 (test-time crops; see
    data_pipelines.test_time); by default one hard-resized view. Views of one size are
    batched `batch_size` images at a time (the last batch padded: one compilation);
    views whose size changes from image to image go one image per batch.
    """
    if output not in OUTPUTS:
      raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    indices = np.arange(len(source)) if indices is None else np.asarray(indices)
    if len(indices) == 0:
      raise ValueError("nothing to embed: the list of images is empty")
    variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    fixed = getattr(views, "fixed_shape", True)
    batch_size = self.batch_size if fixed else 1
    chunks = []
    batches = loader.image_dataset(source, indices, batch_size, self.options, views)
    steps = -(-len(indices) // batch_size)
    for batch in Progress(batches, total=steps, desc=desc, unit="batch", enabled=self.progress):
      n, v = batch.shape[:2]
      flat = batch.reshape(n * v, *batch.shape[2:])
      # pad to the full batch (fixed shapes) or to a multiple of the devices (others)
      target = batch_size * v if fixed else -(-len(flat) // self.devices) * self.devices
      if len(flat) < target:
        flat = np.concatenate([flat, np.zeros((target - len(flat), *flat.shape[1:]), flat.dtype)])
      feats = self._forward(variables, parallel.shard_batch(flat, self.mesh), output)
      chunks.append(np.asarray(feats)[:n * v].reshape(n, v, -1))
    return np.concatenate(chunks).astype(np.float32)
