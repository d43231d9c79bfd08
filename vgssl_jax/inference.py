"""Eval-mode embedding of image files: streaming batches, sharded over the mesh."""

from __future__ import annotations

import functools

import jax
import numpy as np
from jax.sharding import Mesh

from data_pipelines import augment, loader
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

  def __call__(self, variables: dict, paths: list[str], output: str = "descriptor",
               desc: str = "embedding") -> np.ndarray:
    """(len(paths), D) float32 features, in the order of `paths`."""
    if output not in OUTPUTS:
      raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    chunks = []
    batches = loader.image_dataset(list(paths), self.batch_size, self.options)
    steps = -(-len(paths) // self.batch_size)
    for batch in Progress(batches, total=steps, desc=desc, unit="batch", enabled=self.progress):
      n = len(batch)
      if n < self.batch_size:
        batch = np.concatenate([batch, np.zeros((self.batch_size - n, *batch.shape[1:]),
                                                batch.dtype)])
      feats = self._forward(variables, parallel.shard_batch(batch, self.mesh), output)
      chunks.append(np.asarray(feats)[:n])
    if not chunks:
      raise ValueError("nothing to embed: the list of images is empty")
    return np.concatenate(chunks).astype(np.float32)
