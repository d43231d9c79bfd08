"""GSV-Cities: labelled places of Google Street View, the training set of MixVPR, SALAD and BoQ.

Layout (what gsv-cities' GSVCitiesDataset reads):

  <folder>/Dataframes/<city>.csv    place_id,year,month,northdeg,city_id,lat,lon,panoid
  <folder>/Images/<city>/<city_id>_<place_id:07d>_<year:04d>_<month:02d>_<northdeg:03d>_
                                    <lat>_<lon>_<panoid>.jpg

Place ids are per city; city i of the list gets i * 10^5 added, as the original, so that
ids never collide. Places with fewer than `min_img_per_place` images are left out.

An epoch (`epoch_places`) visits every place once, in gsv-cities' order: the cities in list
order, each city's rows shuffled (`df.sample(frac=1)`, redone when the Lightning module
reloads its dataset every epoch) and its places taken in the order of their first row; each
place gives K of its images drawn without replacement (`place.sample(n=K)`).

Rows that do not parse, images listed but missing on disk, and places left with too few
images are counted and reported, not fatal; a missing folder, a city without its CSV or a
CSV without the columns are errors that name the fix.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os

import numpy as np

from data_pipelines import images

COLUMNS = ("place_id", "year", "month", "northdeg", "city_id", "lat", "lon", "panoid")
CITY_OFFSET = 10**5


class GSVCitiesError(ValueError):
  """A GSV-Cities folder that cannot be read as such (the message names the fix)."""


def image_name(city_id: str, place_id: int, year: int, month: int, northdeg: int, lat: str,
               lon: str, panoid: str) -> str:
  """gsv-cities' get_img_name: the file name of one row (lat and lon as str() of the floats
  pandas reads)."""
  return (f"{city_id}_{place_id % CITY_OFFSET:07d}_{year:04d}_{month:02d}_{northdeg:03d}_"
          f"{lat}_{lon}_{panoid}.jpg")


def list_cities(folder: str) -> list[str]:
  """The cities of a GSV-Cities folder (its Dataframes/*.csv), sorted."""
  frames = os.path.join(folder, "Dataframes")
  if not os.path.isdir(frames):
    raise GSVCitiesError(f"{folder} is not a GSV-Cities folder (no Dataframes/ in it); set "
                         "data.gsv.name to the folder under data.root that holds Dataframes/ "
                         "and Images/ (data.gsv.name=synthetic_gsv generates a synthetic one).")
  return sorted(f[:-4] for f in os.listdir(frames) if f.endswith(".csv"))


@dataclasses.dataclass
class Skipped:
  """What reading left out, counted."""
  malformed_rows: int = 0
  missing_images: int = 0
  small_places: int = 0   # places with fewer than min_img_per_place images
  small_place_images: int = 0

  def __str__(self) -> str:
    return (f"{self.malformed_rows} malformed CSV rows, {self.missing_images} listed images "
            f"missing, {self.small_places} places ({self.small_place_images} images) with "
            "fewer than min_img_per_place images")


@dataclasses.dataclass
class GSVCities:
  """The places of some cities. `paths[i]` is image i; `place_images[p]` the images of place
  p (its rows in CSV order), `place_ids[p]` its id (with the city offset), `city[p]` the
  index of its city in `cities`."""
  folder: str
  cities: tuple[str, ...]
  paths: list[str]
  place_ids: np.ndarray
  place_images: list[np.ndarray]
  city: np.ndarray
  skipped: Skipped

  @property
  def num_places(self) -> int:
    return len(self.place_ids)

  # what a data-driven initialisation (NetVLAD's k-means) reads: every image is "database"
  @property
  def num_database(self) -> int:
    return len(self.paths)

  num_queries = 0

  def images(self, part: str = "database") -> images.ImageSource:
    del part
    return images.FileImages("", tuple(self.paths))

  def __repr__(self) -> str:
    return (f"GSV-Cities {self.folder} ({len(self.cities)} cities, {self.num_places} places, "
            f"{sum(len(p) for p in self.place_images)} images)")

  def epoch_places(self, rng: np.random.Generator) -> np.ndarray:
    """The places of one epoch in gsv-cities' order (see the module docstring)."""
    order = []
    for c in range(len(self.cities)):
      members = np.flatnonzero(self.city == c)
      if not len(members):
        continue
      # rows of the city's places, shuffled; a place comes when its first row comes
      counts = np.array([len(self.place_images[p]) for p in members])
      rows = np.repeat(np.arange(len(members)), counts)
      shuffled = rows[rng.permutation(len(rows))]
      uniq, first = np.unique(shuffled, return_index=True)
      order.append(members[uniq[np.argsort(first)]])
    return np.concatenate(order) if order else np.zeros(0, np.int64)

  def sample_images(self, place: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """K images of `place` drawn without replacement (all of them, then repeats, when it has
    fewer than K: only possible with min_img_per_place < K)."""
    imgs = self.place_images[place]
    if len(imgs) >= k:
      return imgs[rng.choice(len(imgs), k, replace=False)]
    return imgs[np.concatenate([rng.permutation(len(imgs)),
                                rng.integers(len(imgs), size=k - len(imgs))])]


def _read_city(folder: str, city: str, index: int, skipped: Skipped):
  """(place ids, image paths) of one city's CSV rows, in file order."""
  path = os.path.join(folder, "Dataframes", f"{city}.csv")
  if not os.path.isfile(path):
    raise GSVCitiesError(f"{path} is missing: city {city!r} is not in {folder} (its cities: "
                         f"{', '.join(list_cities(folder)) or 'none'}); fix data.gsv.cities.")
  image_dir = os.path.join(folder, "Images", city)
  present = set(os.listdir(image_dir)) if os.path.isdir(image_dir) else set()
  ids, paths = [], []
  with open(path, newline="") as f:
    reader = csv.DictReader(f)
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
      raise GSVCitiesError(f"{path} has no column {', '.join(missing)} (a GSV-Cities dataframe "
                           f"has {', '.join(COLUMNS)}).")
    for row in reader:
      try:
        place = int(row["place_id"])
        # lat and lon as pandas reads them (floats), then str(): "42.350000" -> "42.35"
        name = image_name(row["city_id"], place, int(row["year"]), int(row["month"]),
                          int(row["northdeg"]), str(float(row["lat"])),
                          str(float(row["lon"])), row["panoid"])
        if place < 0 or not row["panoid"] or not row["city_id"]:
          raise ValueError(place)
      except (ValueError, TypeError):
        skipped.malformed_rows += 1
        continue
      if name not in present:
        skipped.missing_images += 1
        continue
      ids.append(place + index * CITY_OFFSET)
      paths.append(os.path.join(image_dir, name))
  return ids, paths


def load_gsv_cities(folder: str, cities="all", min_img_per_place: int = 4) -> GSVCities:
  """The places of `cities` ("all", a comma-separated string or a list) in `folder`."""
  if not os.path.isdir(folder):
    raise GSVCitiesError(f"GSV-Cities folder {folder} does not exist; set data.root and "
                         "data.gsv.name (data.gsv.name=synthetic_gsv generates a synthetic one).")
  available = list_cities(folder)
  if cities == "all" or cities == ("all",):
    names = available
  else:
    names = [c.strip() for c in (cities.split(",") if isinstance(cities, str) else cities)
             if c.strip()]
  if not names:
    raise GSVCitiesError(f"no city to train on in {folder}: its Dataframes/ has no CSV.")
  skipped = Skipped()
  place_ids, paths, city_of_row = [], [], []
  for i, city in enumerate(names):
    ids, city_paths = _read_city(folder, city, i, skipped)
    place_ids += ids
    paths += city_paths
    city_of_row += [i] * len(ids)
  place_ids = np.asarray(place_ids, np.int64)
  city_of_row = np.asarray(city_of_row, np.int64)
  unique, first, inverse, counts = np.unique(place_ids, return_index=True, return_inverse=True,
                                             return_counts=True)
  keep = counts >= min_img_per_place
  skipped.small_places = int((~keep).sum())
  skipped.small_place_images = int(counts[~keep].sum())
  rows_of = np.argsort(inverse, kind="stable")
  bounds = np.concatenate([[0], np.cumsum(counts)])
  kept = np.flatnonzero(keep)
  # places in the order of their first row (city order, then CSV order)
  kept = kept[np.argsort(first[kept], kind="stable")]
  rows = [rows_of[bounds[p]:bounds[p + 1]] for p in kept]   # each kept place's rows
  used_rows = np.sort(np.concatenate(rows)) if rows else np.zeros(0, np.int64)
  new_index = np.full(len(paths), -1, np.int64)
  new_index[used_rows] = np.arange(len(used_rows))
  result = GSVCities(folder, tuple(names), [paths[r] for r in used_rows], unique[kept],
                     [new_index[r] for r in rows], city_of_row[first[kept]], skipped)
  if skipped.malformed_rows or skipped.missing_images or skipped.small_places:
    logging.warning("GSV-Cities %s: left out %s", folder, skipped)
  if not result.num_places:
    raise GSVCitiesError(f"no place of {folder} ({', '.join(names)}) has {min_img_per_place} "
                         f"images ({skipped}); lower data.gsv.min_img_per_place or check the "
                         "folder.")
  return result
