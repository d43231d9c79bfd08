import filecmp
import json
import os

import numpy as np
import pytest
from PIL import Image

from data_pipelines import places, synthetic
from vgssl_jax.evaluation import metrics
from tests.conftest import TINY_SYNTHETIC


def test_generation_is_deterministic(tmp_path):
  a = synthetic.ensure_dataset(str(tmp_path / "a"), "s", TINY_SYNTHETIC)
  b = synthetic.ensure_dataset(str(tmp_path / "b"), "s", TINY_SYNTHETIC)
  for split in synthetic.SPLITS:
    for part in ("database", "queries"):
      da = os.path.join(a, "images", split, part)
      db = os.path.join(b, "images", split, part)
      names = sorted(os.listdir(da))
      assert names == sorted(os.listdir(db)) and names
      match, mismatch, errors = filecmp.cmpfiles(da, db, names, shallow=False)
      assert not mismatch and not errors


def test_regenerates_only_its_own_folders(tmp_path):
  root = str(tmp_path)
  folder = synthetic.ensure_dataset(root, "s", TINY_SYNTHETIC)
  queries = os.path.join(folder, "images", "test", "queries")
  first = {n: open(os.path.join(queries, n), "rb").read() for n in os.listdir(queries)}
  other = synthetic.SyntheticConfig(**{**TINY_SYNTHETIC.__dict__, "seed": 5})
  assert synthetic.ensure_dataset(root, "s", other) == folder
  with open(os.path.join(folder, synthetic.MANIFEST)) as f:
    assert json.load(f)["fingerprint"] == other.fingerprint() != TINY_SYNTHETIC.fingerprint()
  second = {n: open(os.path.join(queries, n), "rb").read() for n in os.listdir(queries)}
  assert first != second  # another seed: other places and pictures
  os.makedirs(os.path.join(root, "mine"))
  with pytest.raises(FileExistsError, match="not a synthetic dataset"):
    synthetic.ensure_dataset(root, "mine", TINY_SYNTHETIC)


def test_splits_have_geo_structure(tiny_root):
  for split in synthetic.SPLITS:
    ds = places.load_at_dataset(tiny_root, "synthetic", split)
    hard = ds.positives(10.0)
    soft = ds.positives(25.0)
    assert (hard.counts > 0).all()                    # every query has a 10 m positive
    assert (soft.counts < ds.num_database).all()      # and real negatives beyond 25 m
    assert all(p.split("@")[-2] == "day" for p in ds.database_paths)
    assert all(p.split("@")[-2] in synthetic.CONDITIONS for p in ds.queries_paths)
    img = np.asarray(Image.open(ds.abs_path(ds.queries_paths[0])))
    assert img.shape == (*TINY_SYNTHETIC.image_size, 3)


def test_thumbnail_baseline_clearly_beats_chance(tmp_path):
  """The default dataset is learnable from appearance: tiny mean-centred thumbnails
  retrieve far above chance (the demo checks that a trained network does too)."""
  root = str(tmp_path)
  synthetic.ensure_dataset(root, "synthetic", synthetic.SyntheticConfig())
  ds = places.load_at_dataset(root, "synthetic", "test")

  def thumbs(paths):
    t = np.stack([np.asarray(Image.open(ds.abs_path(p)).resize((8, 6), Image.BILINEAR))
                  for p in paths]).reshape(len(paths), -1).astype(np.float64)
    t -= t.mean(1, keepdims=True)
    return t / np.linalg.norm(t, axis=1, keepdims=True)
  q, db = thumbs(ds.queries_paths), thumbs(ds.database_paths)
  pred = np.argsort(((q[:, None] - db[None]) ** 2).sum(-1), axis=1)[:, :1]
  r1 = metrics.recalls(pred, ds.positives(25.0), (1,))["recall@1"]
  chance = 100 * ds.positives(25.0).counts.mean() / ds.num_database
  assert r1 > 5 * chance, (r1, chance)


def test_shared_styles_repeat_one_facade_look_across_buildings():
  """styles=1: every building has the one style's two colours (the brightness factor
  included), landmarks only the palette's colours (and their outline); the default world
  draws colours per building, so it has many more."""
  def colours(styles):
    strip = synthetic.render_facade(np.random.default_rng(3), 200.0, 4.0, 60, styles)
    return {tuple(c) for c in strip.reshape(-1, 3)}
  shared = colours((12345,))
  allowed = set(synthetic._PALETTE) | {(20, 20, 20), (0, 0, 0)}
  texture = shared - allowed
  assert 1 <= len(texture) <= 2, texture
  assert len(colours(())) > 20  # own colours per building (about 10 buildings x 2)


def test_the_splits_of_a_styled_world_share_its_styles(tmp_path):
  """The facade textures of the test split are those of train (the world's styles), so
  that what stage 2 learns on train streets applies to test streets."""
  cfg = synthetic.SyntheticConfig(**{**TINY_SYNTHETIC.__dict__, "styles": 2})
  assert synthetic.style_seeds(cfg) == synthetic.style_seeds(
      synthetic.SyntheticConfig(**{**cfg.__dict__, "streets": (3, 2, 2)}))
  assert synthetic.style_seeds(cfg) != synthetic.style_seeds(
      synthetic.SyntheticConfig(**{**cfg.__dict__, "seed": cfg.seed + 1}))
  allowed = set(synthetic._PALETTE) | {(20, 20, 20), (0, 0, 0)}

  def textures(split):
    streets = synthetic._streets(np.random.default_rng([cfg.seed, synthetic.SPLITS.index(split)]),
                                 split, 2, cfg, 40)
    return {tuple(c) for s in streets for c in s.facade.reshape(-1, 3)} - allowed
  train, test = textures("train"), textures("test")
  assert 2 <= len(train) <= 4 and train == test, (train, test)


def test_a_dataset_of_an_older_generator_is_regenerated(tmp_path, monkeypatch):
  root = str(tmp_path)
  folder = synthetic.ensure_dataset(root, "s", TINY_SYNTHETIC)
  stamp = os.path.getmtime(os.path.join(folder, synthetic.MANIFEST))
  assert synthetic.ensure_dataset(root, "s", TINY_SYNTHETIC) == folder
  assert os.path.getmtime(os.path.join(folder, synthetic.MANIFEST)) == stamp  # reused
  monkeypatch.setattr(synthetic, "GENERATOR_VERSION", synthetic.GENERATOR_VERSION + 1)
  synthetic.ensure_dataset(root, "s", TINY_SYNTHETIC)
  with open(os.path.join(folder, synthetic.MANIFEST)) as f:
    assert json.load(f)["fingerprint"] == TINY_SYNTHETIC.fingerprint()  # the new version's
