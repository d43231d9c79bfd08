"""Test-time query views and the merging/voting of per-crop results (docs/original.md
§Evaluation)."""

import numpy as np
import pytest
from PIL import Image

from data_pipelines import query_views
from vgssl_jax.evaluation.retrieval import PCA, majority_voting, merge_crop_rankings


@pytest.fixture
def image():
  rng = np.random.default_rng(0)
  return Image.fromarray(rng.integers(0, 256, size=(60, 100, 3), dtype=np.uint8))


@pytest.mark.parametrize("method,shape", [
    ("hard_resize", (1, 32, 48, 3)), ("single_query", (1, 32, 53, 3)),
    ("central_crop", (1, 32, 48, 3)), ("five_crops", (5, 32, 32, 3)),
    ("nearest_crop", (5, 32, 32, 3)), ("maj_voting", (5, 32, 32, 3))])
@pytest.mark.parametrize("resize,dtype", [("tensor", np.float32), ("pil", np.uint8)])
def test_view_shapes(image, method, shape, resize, dtype):
  views = query_views.QueryViews(method, (32, 48), resize)
  assert views(image).shape == shape and views(image).dtype == dtype
  assert views.num_views == shape[0]


def test_resized_views_use_the_evaluation_resize(image):
  """single_query and the crops resize the short side as the original's tensor resize (no
  antialias) by default, with PIL's under resize="pil"."""
  from data_pipelines import images
  for resize in ("tensor", "pil"):
    got = query_views.QueryViews("single_query", (32, 48), resize)(image)[0]
    np.testing.assert_array_equal(got, images.resized(image, (32, 53), resize))
    crops = query_views.QueryViews("five_crops", (32, 48), resize)(image)
    np.testing.assert_array_equal(crops[4], images.resized(image, (32, 53), resize)[:, 10:42])


def test_central_crop_is_nearest_scaling_then_centre_crop(image):
  pixels = np.asarray(image)
  # 60x100 -> scale max(32/60, 48/100) = 0.5333: 32 x 53 (floor), source index floor(i / s)
  scale = 32 / 60
  rows = [int(i / scale) for i in range(32)]
  cols = [int(j / scale) for j in range(53)]
  scaled = pixels[rows][:, cols]
  left = round((53 - 48) / 2)
  want = scaled[:, left:left + 48]
  for resize in ("tensor", "pil"):  # nearest scaling: the same pixel values either way
    got = query_views.QueryViews("central_crop", (32, 48), resize)(image)[0]
    np.testing.assert_array_equal(got, want)


def test_five_crops_positions():
  img = np.arange(4 * 6).reshape(4, 6, 1).repeat(3, axis=2).astype(np.uint8)
  crops = query_views.five_crops(img, 2)
  # top-left, top-right, bottom-left, bottom-right, centre (torchvision FiveCrop)
  assert [int(c[0, 0, 0]) for c in crops] == [0, 4, 12, 16, 8]  # centre: row 1, col 2


def test_merge_crop_rankings_by_distance_without_duplicates():
  dist = np.array([[[0.1, 0.5], [0.2, 0.3], [0.05, 0.9], [0.4, 0.6], [0.7, 0.8]]])
  pred = np.array([[[1, 2], [3, 1], [4, 5], [2, 6], [7, 8]]])
  got = merge_crop_rankings(dist, pred, 4)
  # sorted: 4(.05) 1(.1) 3(.2) 1(.3 dup) 2(.4) ...
  assert got.tolist() == [[4, 1, 3, 2]]


def test_majority_voting_hand_computed():
  # five crops, top 2 each; image 9 is found by three crops at rank 1
  pred = np.array([[[9, 1], [9, 2], [9, 3], [4, 5], [6, 7]]])
  dist = np.array([[[0.50, 0.51], [0.52, 0.53], [0.54, 0.55], [0.10, 0.56], [0.20, 0.57]]])
  got = majority_voting(dist, pred, weight=0.2, k=3)
  # top1 vote: 9 counted 3 times -> -0.2 * 3 / 1 = -0.6 on its three rank-1 entries
  # top5/top10 votes (all columns): 9 again 3 times -> -0.2 * 3 / 5 and -0.2 * 3 / 10
  # 9: 0.50 - 0.6 - 0.12 - 0.06 = -0.28 < 4 (0.10) < 6 (0.20)
  assert got.tolist() == [[9, 4, 6]]
  unvoted = merge_crop_rankings(dist, pred, 3)
  assert unvoted.tolist() == [[4, 6, 9]]


def test_pca_matches_the_covariance_eigenvectors():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
  pca = PCA.fit(x, 3)
  cov = np.cov(x, rowvar=False)
  values, vectors = np.linalg.eigh(cov)
  top = vectors[:, ::-1][:, :3]
  want = (x - x.mean(0)) @ top
  got = pca(x)
  for j in range(3):  # components are defined up to their sign
    sign = np.sign(np.dot(got[:, j], want[:, j]))
    np.testing.assert_allclose(got[:, j] * sign, want[:, j], rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="pca_dim"):
    PCA.fit(x, 7)
