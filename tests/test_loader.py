import os

import numpy as np
import pytest
from PIL import Image

from data_pipelines import loader, places
from data_pipelines.mining import GeoPairs


def test_load_image_resizes_to_uint8(tmp_path):
  path = str(tmp_path / "a.jpg")
  Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(path)
  img = loader.load_image(path, (20, 30))
  assert img.shape == (20, 30, 3) and img.dtype == np.uint8
  assert abs(int(img.mean()) - 200) <= 2


def test_corrupt_image_error_names_the_file(tmp_path):
  path = str(tmp_path / "broken.jpg")
  Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(path)
  with open(path, "r+b") as f:  # keep the header, destroy the rest
    f.seek(20)
    f.write(b"\x00" * 200)
    f.truncate(300)
  with pytest.raises(loader.ImageReadError, match="broken.jpg"):
    loader.load_image(path, (16, 16))
  with pytest.raises(loader.ImageReadError, match="missing.jpg"):
    loader.load_image(str(tmp_path / "missing.jpg"), (16, 16))


def test_local_rows_give_the_same_global_batches_for_any_process_count():
  single = loader.local_rows(50, 8, seed=3, epoch=2)
  assert len(single) == 48 and len(set(single.tolist())) == 48  # drop_last, a permutation
  parts = [loader.local_rows(50, 8, 3, 2, p, 4) for p in range(4)]
  steps = len(single) // 8
  rebuilt = np.concatenate([np.stack([p.reshape(steps, 2)[t] for p in parts]).reshape(-1)
                            for t in range(steps)])
  np.testing.assert_array_equal(rebuilt, single)
  assert not np.array_equal(single, loader.local_rows(50, 8, 3, 3))  # reshuffled per epoch


def test_pair_dataset_yields_query_and_positive(tmp_path):
  paths = []
  for i in range(4):
    p = str(tmp_path / f"{i}.png")
    Image.fromarray(np.full((8, 8, 3), i * 50, np.uint8)).save(p)
    paths.append(os.path.basename(p))
  ds = places.PlaceDataset("toy", "train", str(tmp_path), tuple(paths[:2]), tuple(paths[2:]),
                           np.zeros((2, 2)), np.zeros((2, 2)))
  pairs = GeoPairs(queries=np.array([0, 1, 1]), positives=np.array([1, 0, 1]))
  options = loader.LoaderOptions((8, 8), num_threads=2)
  batches = list(loader.pair_dataset(ds, pairs, 1, np.array([2, 0]), options))
  assert len(batches) == 2
  assert batches[0]["query"].shape == (1, 8, 8, 3) and batches[0]["query"].dtype == np.uint8
  # item 2 = (query 1 -> file 3, positive 1 -> file 1); item 0 = (query 0 -> 2, positive 1 -> 1)
  assert [int(b["query"][0, 0, 0, 0]) for b in batches] == [150, 100]
  assert [int(b["positive"][0, 0, 0, 0]) for b in batches] == [50, 50]
