"""GSV-Cities places: reading the official layout (with its bad rows, missing images and
small places), gsv-cities' epoch order, P x K batches that resume mid-epoch, the synthetic
GSV-Cities world, RandAugment's operations, and a run of method=ms through vgssl_jax.main."""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from data_pipelines import gsv_cities, loader, randaugment, synthetic_gsv
from tests.conftest import run_python, tiny_overrides
from vgssl_jax.config import base_config
from vgssl_jax.training import place_batches

ROW = dict(year=2015, month=6, northdeg=90, lat=42.35, lon=-71.06)


def write_city(folder, city, counts, missing=(), malformed=0, size=(20, 24)):
  """A city whose place p has counts[p] images (all written unless listed in `missing` as
  (place, image)), plus `malformed` rows that do not parse. Returns {place: [paths]}."""
  os.makedirs(os.path.join(folder, "Dataframes"), exist_ok=True)
  image_dir = os.path.join(folder, "Images", city)
  os.makedirs(image_dir, exist_ok=True)
  rows, written = [], {}
  for place, count in enumerate(counts):
    for k in range(count):
      row = dict(ROW, place_id=place, city_id=city, panoid=f"pano{place}x{k}", month=1 + k)
      rows.append(row)
      name = gsv_cities.image_name(city, place, row["year"], row["month"], row["northdeg"],
                                   str(row["lat"]), str(row["lon"]), row["panoid"])
      if (place, k) in missing:
        continue
      value = (place * 37 + k * 11) % 256
      Image.fromarray(np.full((*size, 3), value, np.uint8)).save(os.path.join(image_dir, name))
      written.setdefault(place, []).append(os.path.join(image_dir, name))
  rows += [dict(ROW, place_id="x", city_id=city, panoid="bad")] * malformed
  with open(os.path.join(folder, "Dataframes", f"{city}.csv"), "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=gsv_cities.COLUMNS)
    w.writeheader()
    w.writerows(rows)
  return written


@pytest.fixture(scope="module")
def gsv_folder(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp("gsv") / "gsv_cities")
  a = write_city(folder, "Alpha", [4, 5, 3, 6, 4], missing={(1, 0)}, malformed=2)
  b = write_city(folder, "Beta", [4, 4, 7, 4])
  return folder, a, b


def test_reading_counts_what_it_leaves_out(gsv_folder, caplog):
  folder, a, b = gsv_folder
  data = gsv_cities.load_gsv_cities(folder, "all", min_img_per_place=4)
  # Alpha: place 2 (3 images) is too small; place 1 lost a missing image but keeps 4
  assert data.cities == ("Alpha", "Beta")
  assert list(data.place_ids) == [0, 1, 3, 4, 100_000, 100_001, 100_002, 100_003]
  assert data.skipped.malformed_rows == 2 and data.skipped.missing_images == 1
  assert data.skipped.small_places == 1 and data.skipped.small_place_images == 3
  assert "left out 2 malformed CSV rows, 1 listed images missing, 1 places" in caplog.text
  for p, pid in enumerate(data.place_ids):
    city = a if pid < 100_000 else b
    assert sorted(data.paths[i] for i in data.place_images[p]) == sorted(city[pid % 100_000])
  assert list(data.city) == [0, 0, 0, 0, 1, 1, 1, 1]
  # one city by name; a stricter threshold
  assert gsv_cities.load_gsv_cities(folder, "Beta", 5).num_places == 1


def test_bad_folders_and_cities_name_the_fix(gsv_folder, tmp_path):
  folder = gsv_folder[0]
  with pytest.raises(gsv_cities.GSVCitiesError, match="does not exist"):
    gsv_cities.load_gsv_cities(str(tmp_path / "nowhere"))
  with pytest.raises(gsv_cities.GSVCitiesError, match="city 'Gamma' is not in .*Alpha, Beta"):
    gsv_cities.load_gsv_cities(folder, "Alpha,Gamma")
  with pytest.raises(gsv_cities.GSVCitiesError, match="min_img_per_place"):
    gsv_cities.load_gsv_cities(folder, "Alpha", 9)
  bad = tmp_path / "bad"
  (bad / "Dataframes").mkdir(parents=True)
  (bad / "Dataframes" / "X.csv").write_text("place_id,year\n1,2\n")
  with pytest.raises(gsv_cities.GSVCitiesError, match="no column month, northdeg"):
    gsv_cities.load_gsv_cities(str(bad))


def test_a_city_without_its_image_folder_counts_every_image_missing(tmp_path):
  folder = str(tmp_path / "gsv")
  write_city(folder, "Alpha", [4, 4])
  write_city(folder, "Beta", [4])
  import shutil  # pylint: disable=import-outside-toplevel
  shutil.rmtree(os.path.join(folder, "Images", "Beta"))
  data = gsv_cities.load_gsv_cities(folder)
  assert data.num_places == 2 and data.skipped.missing_images == 4
  with pytest.raises(gsv_cities.GSVCitiesError, match="no place"):
    gsv_cities.load_gsv_cities(folder, "Beta")


def test_an_epoch_visits_every_place_once_city_by_city(gsv_folder):
  data = gsv_cities.load_gsv_cities(gsv_folder[0])
  orders = [data.epoch_places(np.random.default_rng(e)) for e in range(6)]
  for order in orders:
    assert sorted(order) == list(range(data.num_places))
    assert list(data.city[order]) == sorted(data.city[order])  # cities in list order
  assert len({tuple(o) for o in orders}) > 1                   # reshuffled per epoch
  steps = place_batches.plan_items(data, 3, 4, seed=0, epoch=0)
  assert steps.shape == (data.num_places // 3, 3, 6)
  places = steps[..., 1].ravel()
  assert len(set(places)) == len(places)                       # once per epoch
  for row in steps.reshape(-1, 6):
    imgs = row[2:]
    assert len(set(imgs)) == 4 and set(imgs) <= set(data.place_images[row[1]])
  again = place_batches.plan_items(data, 3, 4, seed=0, epoch=0)
  np.testing.assert_array_equal(steps, again)


def test_a_place_with_fewer_than_k_images_repeats_them_all():
  data = gsv_cities.GSVCities("f", ("c",), ["a", "b"], np.array([0]), [np.array([0, 1])],
                              np.array([0]), gsv_cities.Skipped())
  picks = data.sample_images(0, 4, np.random.default_rng(0))
  assert set(picks[:2]) == {0, 1} and len(picks) == 4


def _source(folder, **gsv):
  c = base_config()
  c.method = "ms"
  c.data.root, c.data.gsv.name = os.path.dirname(folder), os.path.basename(folder)
  c.data.image_size = (16, 20)
  c.data.num_threads = 2
  c.data.gsv.update(gsv)
  c.train.batch_size = 2
  data = place_batches.open_gsv(c)
  return place_batches.PlaceSource(c, None, data, None), data


def test_place_batches_resume_mid_epoch_with_the_same_pixels(gsv_folder):
  source, data = _source(gsv_folder[0])
  it, steps = source.batches(source.mine(None, 1, 0), 1, 0)
  assert steps == data.num_places // 2
  batches = [next(it) for _ in range(steps)]
  b = batches[0]
  assert b["images"].shape == (2, 4, 16, 20, 3) and b["images"].dtype == np.uint8
  assert b["places"].shape == (2,) and int(b["skipped"].sum()) == 0
  it2, _ = source.batches({"epoch": 1}, 1, 0)
  next(it2)
  state = it2.get_state()
  it3, _ = source.batches({"epoch": 1}, 1, 0)
  it3.set_state(state)
  for want in batches[1:]:
    got = next(it3)
    np.testing.assert_array_equal(got["images"], want["images"])
    np.testing.assert_array_equal(got["places"], want["places"])
  # without augmentation each image is its file resized: the place's constant colour
  plain, _ = _source(gsv_folder[0], randaugment_ops=0)
  batch = next(plain.batches({"epoch": 0}, 0, 0)[0])
  for place, imgs in zip(batch["places"], batch["images"]):
    colours = {int(im[0, 0, 0]) for im in imgs}
    pid = int(data.place_ids[place]) % 100_000
    assert colours <= {(pid * 37 + k * 11) % 256 for k in range(7)}


def test_randaugment_operations():
  # magnitudes of torchvision's table at bins 9 and 15 (hand-computed)
  assert randaugment.magnitude_of("Posterize", 9, 10, 10) == (7.0, False)
  assert randaugment.magnitude_of("Posterize", 15, 10, 10) == (6.0, False)
  assert randaugment.magnitude_of("Solarize", 9, 10, 10)[0] == pytest.approx(178.5)
  assert randaugment.magnitude_of("Rotate", 15, 10, 10) == (15.0, True)
  assert randaugment.magnitude_of("TranslateX", 30, 331, 10)[0] == pytest.approx(150.0)
  # a shear about the top-left corner: x_in = x_out + tan(phi) y_out (torchvision's inverse)
  m = randaugment._inverse_affine((0, 0), 0.0, (0, 0), (np.degrees(np.arctan(0.3)), 0.0))
  np.testing.assert_allclose(m, [1, 0.3, 0, 0, 1, 0], atol=1e-12)
  # a translation by (5, 0): the content moves right, black comes in on the left
  img = Image.fromarray(np.tile(np.arange(20, dtype=np.uint8)[None, :, None] * 10, (8, 1, 3)))
  moved = np.asarray(randaugment.apply_op(img, "TranslateX", 5.0))
  np.testing.assert_array_equal(moved[:, 5:], np.asarray(img)[:, :15])
  assert (moved[:, :5] == 0).all()
  # the same generator state gives the same image; 0 ops leaves it unchanged
  rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8))
  a = randaugment.rand_augment(rgb, np.random.default_rng(3), 3, 9)
  b = randaugment.rand_augment(rgb, np.random.default_rng(3), 3, 9)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.asarray(randaugment.rand_augment(rgb, np.random.default_rng(3), 0)).tobytes() == \
      np.asarray(rgb).tobytes()
  aug = loader.Augment((12, 16), "bicubic", 0)
  assert aug(rgb, np.random.default_rng(0)).shape == (12, 16, 3)


TINY_WORLD = ["--config.data.gsv.synthetic.streets_per_city=1",
              "--config.data.gsv.synthetic.street_length_m=60",
              "--config.data.gsv.synthetic.image_size=24,32"]


def test_synthetic_world_is_a_gsv_cities_folder(tmp_path):
  cfg = synthetic_gsv.SyntheticGSVConfig(streets_per_city=1, street_length_m=45,
                                         image_size=(24, 32))
  folder = synthetic_gsv.ensure_world(str(tmp_path), cfg=cfg)
  data = gsv_cities.load_gsv_cities(folder, "all", min_img_per_place=4)
  assert set(data.cities) == set(cfg.cities)
  assert data.num_places == 2 * 3 and not data.skipped.missing_images
  assert all(4 <= len(p) <= 6 for p in data.place_images)
  assert synthetic_gsv.ensure_world(str(tmp_path), cfg=cfg) == folder  # reused


def test_ms_trains_on_the_synthetic_world_through_main(tiny_root, tmp_path):
  workdir = str(tmp_path / "run")
  root = str(tmp_path / "data")  # the tiny `@` set, and the GSV world generated beside it
  os.makedirs(root)
  os.symlink(os.path.join(tiny_root, "synthetic"), os.path.join(root, "synthetic"))
  args = ["-m", "vgssl_jax.main", "--config", "configs/demo_gsv.py", "--workdir", workdir,
          *tiny_overrides(tiny_root), f"--config.data.root={root}", *TINY_WORLD,
          "--config.data.image_size=42,56", "--config.model.dinov2.embed_dim=24",
          "--config.model.dinov2.depth=1", "--config.model.dinov2.num_heads=2",
          "--config.model.salad.num_clusters=4", "--config.model.salad.cluster_dim=4",
          "--config.model.salad.token_dim=8", "--config.model.salad.hidden=16",
          "--config.model.fc_output_dim=0", "--config.train.batch_size=4",
          "--config.train.epochs=1", "--config.train.lr_schedule=linear",
          "--config.train.lr_decay_steps=2", "--config.eval.before=False",
          "--config.train.log_every=1"]
  proc = run_python(args)
  assert proc.returncode == 0, proc.stderr[-3000:]
  r = json.load(open(os.path.join(workdir, "results.json")))["after"]["synthetic"]
  assert 0 <= r["recall@1"] <= r["recall@5"] <= 100
  lines = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  steps = [l for l in lines if "batch_acc" in l]
  assert steps and all(0 <= l["batch_acc"] <= 1 for l in steps)
  assert "places_per_s" in steps[0]
  # the per-step linear schedule: 1, then 0.6 (factor 1 -> 0.2 over 2 steps), then 0.2
  base = 1e-3
  assert [l["lr"] for l in steps] == pytest.approx([base, 0.6 * base, 0.2 * base][:len(steps)])
