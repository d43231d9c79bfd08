import os

import numpy as np
import pytest
from PIL import Image

from data_pipelines import images, loader, places
from data_pipelines.mining import GeoPairs


def test_load_image_resizes_to_uint8(tmp_path):
  path = str(tmp_path / "a.jpg")
  Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(path)
  img = images.load_image(images.FileImages(str(tmp_path), ("a.jpg",)), 0, (20, 30))
  assert img.shape == (20, 30, 3) and img.dtype == np.uint8
  assert abs(int(img.mean()) - 200) <= 2


def test_corrupt_image_error_names_the_file(tmp_path):
  path = str(tmp_path / "broken.jpg")
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
  with open(path, "r+b") as f:  # keep the header, destroy the rest
    f.seek(20)
    f.write(b"\x00" * 200)
    f.truncate(300)
  source = images.FileImages(str(tmp_path), ("broken.jpg", "missing.jpg"))
  with pytest.raises(images.ImageReadError, match="broken.jpg"):
    images.load_image(source, 0, (16, 16))
  with pytest.raises(images.ImageReadError, match="missing.jpg"):
    images.load_image(source, 1, (16, 16))


def test_local_items_give_the_same_global_batches_for_any_process_count():
  pairs = GeoPairs(queries=np.arange(50), positives=np.arange(50) + 100)
  plan = loader.plan_epoch(pairs, 50, 8, seed=3, epoch=2)
  assert plan.shape == (6, 8, 2)  # 50 items: 6 full steps, the last partial batch dropped
  assert len(set(plan[..., 0].ravel().tolist())) == 48
  np.testing.assert_array_equal(plan[..., 1], plan[..., 0] + 100)
  single = loader.local_items(plan)
  parts = [loader.local_items(plan, p, 4).reshape(6, 2, 2) for p in range(4)]
  rebuilt = np.concatenate(parts, axis=1).reshape(-1, 2)
  np.testing.assert_array_equal(rebuilt, single)
  assert not np.array_equal(plan, loader.plan_epoch(pairs, 50, 8, 3, 3))  # reshuffled per epoch


def test_plan_epoch_with_self_pairs_and_negatives():
  pairs = GeoPairs(queries=np.array([0, 1]), positives=np.array([5, 6]),
                   self_pairs=np.array([7, 8]))
  plan = loader.plan_epoch(pairs, num_queries=3, items_per_step=4, seed=0, epoch=0)
  rows = sorted(map(tuple, plan.reshape(-1, 2).tolist()))
  # self-pair (n, n): the query image is database image n, i.e. index num_queries + n
  assert rows == [(0, 5), (1, 6), (3 + 7, 7), (3 + 8, 8)]
  with_neg = GeoPairs(queries=np.array([0, 1]), positives=np.array([5, 6]),
                      negatives=np.array([[9, 4], [9, 2]]))
  plan = loader.plan_epoch(with_neg, 3, 2, 0, 0)
  assert plan.shape == (1, 2, 3)
  # one negative per item, unique within the batch: the second item falls back to its next one
  assert sorted(plan[0, :, 2].tolist()) in ([2, 9], [4, 9])


def test_pair_dataset_yields_query_and_positive(tmp_path):
  paths = []
  for i in range(4):
    p = str(tmp_path / f"{i}.png")
    Image.fromarray(np.full((8, 8, 3), i * 50, np.uint8)).save(p)
    paths.append(os.path.basename(p))
  ds = places.PlaceDataset("toy", "train", str(tmp_path), tuple(paths[:2]), tuple(paths[2:]),
                           np.zeros((2, 2)), np.zeros((2, 2)))
  # items (query image, positive, negative); query images index queries + database
  items = np.array([[1, 1, 0], [0, 1, 1]])
  options = loader.LoaderOptions((8, 8), num_threads=2)
  batches = list(loader.pair_dataset(ds, items, 1, options))
  assert len(batches) == 2
  assert batches[0]["query"].shape == (1, 8, 8, 3) and batches[0]["query"].dtype == np.uint8
  # files: database 0.png, 1.png; queries 2.png, 3.png
  assert [int(b["query"][0, 0, 0, 0]) for b in batches] == [150, 100]
  assert [int(b["positive"][0, 0, 0, 0]) for b in batches] == [50, 50]
  assert [int(b["negative"][0, 0, 0, 0]) for b in batches] == [0, 50]


def test_training_skips_unreadable_images_and_counts_them(tmp_path):
  for i in range(3):
    Image.fromarray(np.full((8, 8, 3), 40 * (i + 1), np.uint8)).save(str(tmp_path / f"{i}.png"))
  with open(tmp_path / "bad.png", "wb") as f:
    f.write(b"not an image")
  ds = places.PlaceDataset("toy", "train", str(tmp_path), ("0.png", "1.png"), ("bad.png", "2.png"),
                           np.zeros((2, 2)), np.zeros((2, 2)))
  # item 0 has the unreadable query: replaced by item 1 (query 2.png)
  items = np.array([[0, 0], [1, 1], [1, 0]])
  batches = list(loader.pair_dataset(ds, items, 3, loader.LoaderOptions((8, 8), num_threads=1)))
  assert batches[0]["skipped"].tolist() == [1, 0, 0]
  assert [int(v) for v in batches[0]["query"][:, 0, 0, 0]] == [120, 120, 120]
  assert [int(v) for v in batches[0]["positive"][:, 0, 0, 0]] == [80, 80, 40]


def test_jpeg_draft_decoding_is_close_to_a_full_decode(tmp_path):
  rng = np.random.default_rng(0)
  # a smooth picture (colour blocks of 40 px): at the target scale no detail is lost
  smooth = np.kron(rng.integers(0, 256, size=(5, 8, 3)), np.ones((40, 40, 1)))[:, :300].astype(np.uint8)
  Image.fromarray(smooth).save(str(tmp_path / "big.jpg"), quality=95)  # 200 x 300
  source = images.FileImages(str(tmp_path), ("big.jpg",))
  full = images.load_image(source, 0, (50, 75), draft=False)
  with Image.open(str(tmp_path / "big.jpg")) as im:  # PIL's full decode + bilinear resize
    want = np.asarray(im.convert("RGB").resize((75, 50), Image.BILINEAR))
  np.testing.assert_array_equal(full, want)
  fast = images.load_image(source, 0, (50, 75), draft=True)
  assert fast.shape == (50, 75, 3)
  assert np.abs(fast.astype(int) - full.astype(int)).mean() < 4  # of 255: the same picture
  assert not np.array_equal(fast, full)  # decoded at 1/2 scale: really another path


def _normalised(pixels):
  """[0, 255] (H, W, 3) -> ImageNet-normalised (3, H, W) float64, as ToTensor + Normalize."""
  from vgssl_jax.models.inputs import IMAGENET_MEAN, IMAGENET_STD
  x = np.asarray(pixels, np.float64) / 255.0
  return ((x - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def test_both_pipelines_equal_the_originals():
  """golden resize.npz: the original's evaluation pipeline (normalise, then torch's tensor
  resize without antialias) and its training pipeline (PIL resize, then normalise), for
  images larger, smaller, equal to and of another aspect than the model size."""
  from tests import golden
  g = golden.load("resize.npz")
  size = tuple(golden.config(g)["size"])
  cases = sorted(int(k.split("_")[1]) for k in g if k.startswith("image_"))
  assert cases
  for i in cases:
    image = Image.fromarray(g[f"image_{i}"])
    evaluation = images.resized(image, size, "tensor")
    assert evaluation.dtype == np.float32 and evaluation.shape == (*size, 3)
    np.testing.assert_allclose(_normalised(evaluation), g[f"eval_{i}"], atol=1e-5)
    training = images.resized(image, size, "pil")
    assert training.dtype == np.uint8
    np.testing.assert_allclose(_normalised(training), g[f"train_{i}"], atol=0.02)
  # the two differ wherever an image is shrunk: the default is not the PIL pipeline
  shrunk = [i for i in cases if g[f"image_{i}"].shape[0] > size[0]]
  assert any(np.abs(g[f"eval_{i}"] - g[f"train_{i}"]).max() > 0.1 for i in shrunk)


def test_the_evaluation_loader_uses_the_tensor_resize_and_training_batches_pil(tmp_path):
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, size=(30, 45, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(str(tmp_path / "a.png"))
  source = images.FileImages(str(tmp_path), ("a.png",))
  for resize, dtype in (("tensor", np.float32), ("pil", np.uint8)):
    options = loader.LoaderOptions((12, 16), num_threads=1, eval_resize=resize)
    (batch,) = list(loader.image_dataset(source, np.array([0]), 1, options))
    assert batch["views"].dtype == dtype
    want = images.resized(Image.fromarray(pixels), (12, 16), resize)
    np.testing.assert_array_equal(batch["views"][0, 0], want)
  # torch's rule by hand on one row: 45 -> 16 columns, source (j + 0.5) * 45 / 16 - 0.5
  row = images.tensor_resize(pixels[:1].astype(np.float32), (1, 16))[0]
  src = np.maximum((np.arange(16) + 0.5) * 45 / 16 - 0.5, 0)
  lo = np.floor(src).astype(int)
  frac = (src - lo)[:, None]
  want = pixels[0, lo] * (1 - frac) + pixels[0, np.minimum(lo + 1, 44)] * frac
  np.testing.assert_allclose(row, want, atol=1e-3)
