"""Eval-mode embedding of images: streaming fixed-size batches, sharded over the mesh."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from data_pipelines import images, loader
from vgssl_jax import data_config, sharding
from vgssl_jax.errors import ConfigError
from vgssl_jax.models.inputs import normalize
from vgssl_jax.progress import Progress


class Embedder:
  """Computes a named output of a network ("descriptor", "projection", or any other output
  the network has, e.g. local tokens) for images, with the network in eval mode.

  Batches have a fixed size (the last one padded), so the forward compiles once per output.
  """

  def __init__(self, model, mesh: Mesh, batch_size: int, options: loader.LoaderOptions,
               progress: bool = True):
    sharding.check_divisible(batch_size, mesh, "train.infer_batch_size")
    self.model, self.mesh, self.batch_size, self.options = model, mesh, batch_size, options
    self.devices = mesh.devices.size
    self.progress = progress
    self._forward = jax.jit(
        lambda variables, batch, output: self._apply(model, variables, *batch, output),
        static_argnums=2, in_shardings=(sharding.replicated(mesh), sharding.data_sharded(mesh)),
        out_shardings=sharding.replicated(mesh))

  @classmethod
  def from_config(cls, config, model, mesh: Mesh, progress: bool = True) -> "Embedder":
    return cls(model, mesh, config.train.infer_batch_size,
               data_config.loader_options(config, evaluation=True), progress)

  @staticmethod
  def _apply(model, variables, images, ok, output):
    x = normalize(images, model.dtype)
    extra = {"local": True} if output == "local" else {}  # stage 2's local tokens
    out = model.apply(variables, x, train=False, project=output == "projection",
                      feature_map=output == "feature_map", **extra)
    if output not in out:
      raise ValueError(f"the network has no output {output!r} (it has {sorted(out)})")
    feats = out[output]
    # unreadable images (skipped) come back as NaN rows: every process sees the same marks
    return jnp.where(ok.reshape(-1, *([1] * (feats.ndim - 1))), feats, jnp.nan)

  def __call__(self, variables: dict, source: images.ImageSource, indices=None,
               output: str = "descriptor", desc: str = "embedding",
               skip_unreadable: bool = False) -> np.ndarray:
    """(len(indices), ...) float32 features of images `source[indices]` (all by default),
    in order. skip_unreadable: an unreadable image gives a row of NaN (and a logged
    warning) instead of stopping with an ImageReadError (training's passes)."""
    return self.views(variables, source, indices, output=output, desc=desc,
                      skip_unreadable=skip_unreadable)[:, 0]

  def views(self, variables: dict, source: images.ImageSource, indices=None, views=None,
            output: str = "descriptor", desc: str = "embedding",
            skip_unreadable: bool = False) -> np.ndarray:
    """(len(indices), V, ...) float32 features of the V views of each image.

    `views` maps an image to (V, h, w, 3) pixels (test-time crops; see
    data_pipelines.query_views); by default one hard-resized view. Views of one size are
    batched `batch_size` images at a time (the last batch padded: one compilation);
    views whose size changes from image to image go one image per batch.
    """
    indices = np.arange(len(source)) if indices is None else np.asarray(indices)
    if len(indices) == 0:
      raise ValueError("nothing to embed: the list of images is empty")
    variables = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    fixed = getattr(views, "fixed_shape", True)
    n = len(indices)
    if fixed:
      # global batches of batch_size images (the last padded with a repeat of image 0);
      # every process loads its own block of each batch (multi-host), like training
      procs = jax.process_count()
      padded = np.concatenate([indices, np.full((-n) % self.batch_size, indices[0])])
      local = padded.reshape(-1, procs, self.batch_size // procs)[:, jax.process_index()]
      local, local_batch = local.reshape(-1), self.batch_size // procs
    else:
      if jax.process_count() > 1:
        raise ConfigError("test methods with query-dependent sizes (single_query) run in one "
                          "process; evaluate on a single host.")
      local, local_batch = indices, 1
    if skip_unreadable and not fixed:
      raise ValueError("skip_unreadable needs views of one size")
    out, filled = None, 0   # filled in place: no list of batches to concatenate at the end
    batches = loader.image_dataset(source, local, local_batch, self.options, views,
                                   skip_unreadable)
    steps = -(-len(local) // local_batch)
    for batch in Progress(batches, total=steps, desc=desc, unit="batch", enabled=self.progress):
      pixels = batch["views"]
      m, v = pixels.shape[:2]
      flat = pixels.reshape(m * v, *pixels.shape[2:])
      ok = np.repeat(batch["ok"], v)
      if not fixed:  # one image of its own size: pad to a multiple of the devices
        target = -(-len(flat) // self.devices) * self.devices
        flat = np.concatenate([flat, np.zeros((target - len(flat), *flat.shape[1:]), flat.dtype)])
        ok = np.concatenate([ok, np.ones(target - len(ok), bool)])
      feats = np.asarray(self._forward(variables, sharding.shard_batch((flat, ok), self.mesh),
                                       output))
      feats = feats[:len(feats) if fixed else m * v].reshape(-1, v, *feats.shape[1:])
      if out is None:
        rows = steps * (self.batch_size if fixed else 1)
        out = np.empty((rows, *feats.shape[1:]), np.float32)
      out[filled:filled + len(feats)] = feats
      filled += len(feats)
    return out[:n]
