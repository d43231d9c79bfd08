"""Resizing of small grids as torch does it (F.interpolate / the tensor Resize of
torchvision 0.13), for position embeddings and saliency maps: bilinear and bicubic, both
align_corners=False and without antialiasing; and, as per-axis weight matrices, bicubic with
a given scale factor and torch's antialiased bicubic (DINOv2's position embeddings).

`jax.image.resize` differs on both counts (it antialiases when shrinking; its cubic kernel
is Keys' with A = -0.5 where torch uses A = -0.75), so these are written out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def _source(n_in: int, n_out: int) -> jax.Array:
  """Source coordinates of the output samples (align_corners=False)."""
  return (jnp.arange(n_out, dtype=jnp.float32) + 0.5) * (n_in / n_out) - 0.5


def bilinear_axis(x: jax.Array, axis: int, n_out: int) -> jax.Array:
  n_in = x.shape[axis]
  src = jnp.maximum(_source(n_in, n_out), 0.0)  # torch clamps negative coordinates to 0
  lo = jnp.minimum(jnp.floor(src).astype(jnp.int32), n_in - 1)
  hi = jnp.minimum(lo + 1, n_in - 1)
  frac = (src - lo).reshape([-1 if a == axis % x.ndim else 1 for a in range(x.ndim)])
  return jnp.take(x, lo, axis) * (1 - frac) + jnp.take(x, hi, axis) * frac


def _cubic_weights(t: jax.Array, a: float = -0.75) -> list[jax.Array]:
  """Keys' cubic convolution weights of the 4 taps at distances 1 + t, t, 1 - t, 2 - t."""
  def near(d):   # |d| <= 1
    return ((a + 2) * d - (a + 3)) * d * d + 1
  def far(d):    # 1 < |d| < 2
    return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
  return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def bicubic_axis(x: jax.Array, axis: int, n_out: int) -> jax.Array:
  """torch's bicubic upsampling along one axis: A = -0.75, taps clamped to the border."""
  n_in = x.shape[axis]
  src = _source(n_in, n_out)
  base = jnp.floor(src)
  t = src - base
  shape = [-1 if a == axis % x.ndim else 1 for a in range(x.ndim)]
  out = 0.0
  for k, w in enumerate(_cubic_weights(t)):
    idx = jnp.clip(base.astype(jnp.int32) - 1 + k, 0, n_in - 1)
    out = out + jnp.take(x, idx, axis) * w.reshape(shape)
  return out


def resize(x: jax.Array, size: tuple[int, int], method: str = "bilinear",
           axes: tuple[int, int] = (0, 1)) -> jax.Array:
  """`x` resized to `size` along `axes` (torch's rule, see the module docstring)."""
  axis_fn = bilinear_axis if method == "bilinear" else bicubic_axis
  for axis, n in zip(axes, size):
    if x.shape[axis] != n:
      x = axis_fn(x, axis, n)
  return x


def pos_resize(grid: jax.Array, size: tuple[int, int]) -> jax.Array:
  """R2Former's pos_resize of a position grid (H, W, D): bicubic to `size`, then scaled
  about its centre entry so that the distance between the centre and the top-centre
  entries (summed over D) keeps its value relative to the source grid."""
  h, w = grid.shape[:2]
  new = resize(grid, size, "bicubic")
  ori = jnp.sum(jnp.square(grid[0, w // 2] - grid[h // 2, w // 2]))
  now = jnp.sum(jnp.square(new[size[0] // 2 - h // 2, size[1] // 2] -
                           new[size[0] // 2, size[1] // 2]))
  centre = new[size[0] // 2, size[1] // 2]
  return (new - centre) * jnp.sqrt(ori / now) + centre


def _keys_cubic(x: np.ndarray, a: float) -> np.ndarray:
  """Keys' cubic convolution kernel at distances x (any sign)."""
  x = np.abs(x)
  near = ((a + 2) * x - (a + 3)) * x * x + 1
  far = (((x - 5) * x + 8) * x - 4) * a
  return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def bicubic_matrix(n_in: int, n_out: int, scale: float | None = None) -> np.ndarray:
  """(n_out, n_in) weights of torch's bicubic interpolation without antialiasing (A =
  -0.75, taps clamped to the border), align_corners=False. `scale`: the scale_factor torch
  was given (the source index is then (i + 0.5) / scale - 0.5), else n_out / n_in."""
  step = 1.0 / scale if scale is not None else n_in / n_out
  src = (np.arange(n_out, dtype=np.float64) + 0.5) * step - 0.5
  base = np.floor(src)
  t = src - base
  out = np.zeros((n_out, n_in))
  for k in range(4):
    idx = np.clip(base.astype(np.int64) - 1 + k, 0, n_in - 1)
    np.add.at(out, (np.arange(n_out), idx), _keys_cubic(t + 1 - k, -0.75))
  return out


def antialiased_bicubic_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of torch's antialiased bicubic resize (PIL's: A = -0.5, support
  2 * max(n_in / n_out, 1), weights normalised per output), also when upsampling."""
  scale = n_in / n_out
  support = 2.0 * scale if scale >= 1.0 else 2.0
  inv = 1.0 / scale if scale >= 1.0 else 1.0
  out = np.zeros((n_out, n_in))
  for i in range(n_out):
    center = scale * (i + 0.5)
    lo = max(int(center - support + 0.5), 0)
    hi = min(int(center + support + 0.5), n_in)
    taps = np.arange(lo, hi)
    w = _keys_cubic((taps - center + 0.5) * inv, -0.5)
    total = w.sum()
    out[i, lo:hi] = w / total if total != 0 else w
  return out


def resize_with(grid: jax.Array, rows: np.ndarray, cols: np.ndarray) -> jax.Array:
  """(H, W, D) grid -> (h, w, D) by per-axis weight matrices (h, H) and (w, W)."""
  return jnp.einsum("hm,mnd,wn->hwd", jnp.asarray(rows, jnp.float32), grid.astype(jnp.float32),
                    jnp.asarray(cols, jnp.float32), precision=jax.lax.Precision.HIGHEST)
