import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vgssl_jax.objectives import views as augment


def bilinear_ref(image, top, left, h, w):
  """Half-pixel-centre bilinear resize of a crop back to the image size, in float64."""
  H, W, _ = image.shape
  def coords(start, size, n):
    src = np.clip(start + (np.arange(n) + 0.5) * size / n - 0.5, 0, n - 1)
    lo = np.floor(src).astype(int)
    return lo, np.minimum(lo + 1, n - 1), src - lo
  y0, y1, fy = coords(top, h, H)
  x0, x1, fx = coords(left, w, W)
  img = image.astype(np.float64)
  out = np.zeros_like(img)
  for i in range(H):
    for j in range(W):
      out[i, j] = ((1 - fy[i]) * (1 - fx[j]) * img[y0[i], x0[j]] + (1 - fy[i]) * fx[j] * img[y0[i], x1[j]]
                   + fy[i] * (1 - fx[j]) * img[y1[i], x0[j]] + fy[i] * fx[j] * img[y1[i], x1[j]])
  return out


def test_crop_and_resize_matches_reference_and_identity():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, size=(12, 16, 3)).astype(np.uint8)
  full = augment.crop_and_resize(jnp.asarray(image), jnp.array([0, 0, 12, 16]))
  np.testing.assert_allclose(full, image, atol=1e-4)
  box = (2, 3, 9, 11)
  got = augment.crop_and_resize(jnp.asarray(image), jnp.array(box))
  np.testing.assert_allclose(got, bilinear_ref(image, *box), atol=1e-3)


@pytest.mark.parametrize("r", [0.25, 0.9])
def test_crop_params_follow_torchvision_rules(r):
  H, W = 48, 64
  boxes = jax.vmap(lambda k: augment.crop_params(k, H, W, (1 - r, 1.0)))(
      jax.random.split(jax.random.PRNGKey(0), 500))
  top, left, h, w = np.asarray(boxes).T
  assert (top >= 0).all() and (left >= 0).all() and (top + h <= H).all() and (left + w <= W).all()
  area = h * w / (H * W)
  # rounding of w and h moves the area a little outside the sampled range
  assert area.min() >= (1 - r) * 0.9 and area.max() <= 1.0
  ratio = w / h
  fallback = (h == H) & (w == W)  # the central crop (ratio 4/3 fits) when no try fits
  assert ((ratio >= 0.7) & (ratio <= 1.4) | fallback).all()
  assert len(set(zip(top, left, h, w))) > 100  # random


def test_batch_flip_is_all_or_none():
  views = [jnp.arange(2 * 2 * 3 * 1, dtype=jnp.float32).reshape(2, 2, 3, 1)] * 2
  outcomes = set()
  for seed in range(20):
    a, b = augment.batch_flip(jax.random.PRNGKey(seed), views)
    fa = bool(jnp.all(a == views[0][:, :, ::-1]))
    fb = bool(jnp.all(b == views[1][:, :, ::-1]))
    assert fa == fb and (fa or bool(jnp.all(a == views[0])))
    outcomes.add(fa)
  assert outcomes == {True, False}


def test_normalize_imagenet():
  from vgssl_jax.models.inputs import normalize
  x = jnp.full((1, 1, 1, 3), 255, jnp.uint8)
  # torchvision's ImageNet statistics, written out here
  want = (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(normalize(x)[0, 0, 0], want, rtol=1e-6)
