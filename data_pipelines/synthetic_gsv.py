"""A synthetic world in GSV-Cities' format: labelled places, each seen several times under
different conditions, for tests and the GSV demo (no download).

It is rendered by the same procedural street world as the built-in `@` dataset
(data_pipelines.synthetic), in an area of its own: each city is a set of streets, a place is
a position on a street every `place_spacing_m` metres, and each place is photographed 4 to
6 times, in daylight or under the `@` queries' conditions (dusk, night, overcast, winter,
a colour cast) with viewpoint jitter, as GSV-Cities holds a place over years and seasons.
Training on it with the multi-similarity loss and testing on the synthetic `@` test split is
the GSV recipes' setting in miniature: other streets, the same kind of condition change.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os

import numpy as np
from PIL import Image

from data_pipelines import gsv_cities, synthetic

NAME = "synthetic_gsv"
GENERATOR_VERSION = 1
_ORIGIN = (567_000.0, 4_178_000.0)  # east of the `@` splits' areas (zone 10S)
_CITY_GAP_M = 2_000.0


@dataclasses.dataclass(frozen=True)
class SyntheticGSVConfig:
  seed: int = 0
  image_size: tuple[int, int] = (96, 128)
  cities: tuple[str, ...] = ("Synthville", "Fakeburg")
  streets_per_city: int = 6
  street_length_m: float = 300.0
  place_spacing_m: float = 15.0
  images_per_place: tuple[int, int] = (4, 6)   # min, max
  fov_m: float = 20.0
  px_per_m: float = 8.0
  jpeg_quality: int = 90

  def fingerprint(self) -> str:
    data = json.dumps({**dataclasses.asdict(self), "generator": GENERATOR_VERSION},
                      sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]

  def view_config(self) -> synthetic.SyntheticConfig:
    return synthetic.SyntheticConfig(seed=self.seed, image_size=tuple(self.image_size),
                                     street_length_m=self.street_length_m, fov_m=self.fov_m,
                                     px_per_m=self.px_per_m)


def _lat_lon(east: float, north: float) -> tuple[float, float]:
  """Rough degrees for the CSV (GSV-Cities training reads only the place ids)."""
  return round(north / 110_946.0, 6), round(-122.4 + (east - 549_000.0) / 88_000.0, 6)


def generate_city(folder: str, index: int, city: str, cfg: SyntheticGSVConfig) -> None:
  """Dataframes/<city>.csv and Images/<city>/ of one city."""
  rng = np.random.default_rng([cfg.seed, 100 + index])
  view = cfg.view_config()
  facade_h = int(round(cfg.fov_m * cfg.px_per_m * 0.62 * cfg.image_size[0] / cfg.image_size[1]
                       * 2 * 1.3))
  image_dir = os.path.join(folder, "Images", city)
  os.makedirs(image_dir)
  os.makedirs(os.path.join(folder, "Dataframes"), exist_ok=True)
  heading = rng.uniform(0, np.pi)
  direction = np.array([np.cos(heading), np.sin(heading)])
  normal = np.array([-direction[1], direction[0]])
  origin = np.array(_ORIGIN) + np.array([_CITY_GAP_M * index, 0.0])
  conditions = ("day",) + synthetic.CONDITIONS
  rows, place = [], 0
  for s in range(cfg.streets_per_city):
    facade = synthetic.render_facade(rng, cfg.street_length_m + cfg.fov_m * 2, cfg.px_per_m,
                                     facade_h)
    start = origin + normal * synthetic.STREET_GAP_M * s
    for pos in np.arange(cfg.place_spacing_m / 2, cfg.street_length_m, cfg.place_spacing_m):
      lat, lon = _lat_lon(*(start + direction * pos))
      northdeg = int(np.degrees(heading)) % 360
      for k in range(int(rng.integers(cfg.images_per_place[0], cfg.images_per_place[1] + 1))):
        condition = conditions[rng.integers(len(conditions))]
        image = synthetic.render_view(facade, pos + cfg.fov_m, rng, view, jitter=1.0)
        if condition != "day":
          image = synthetic.apply_condition(image, condition, rng)
        year, month = 2007 + int(rng.integers(14)), 1 + int(rng.integers(12))
        panoid = f"p{index}s{s:02d}x{place:05d}k{k}"
        row = {"place_id": place, "year": year, "month": month, "northdeg": northdeg,
               "city_id": city, "lat": lat, "lon": lon, "panoid": panoid}
        name = gsv_cities.image_name(city, place, year, month, northdeg, str(lat), str(lon),
                                     panoid)
        Image.fromarray((np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)).save(
            os.path.join(image_dir, name), quality=cfg.jpeg_quality)
        rows.append(row)
      place += 1
  with open(os.path.join(folder, "Dataframes", f"{city}.csv"), "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=gsv_cities.COLUMNS)
    writer.writeheader()
    writer.writerows(rows)


def ensure_world(root: str, name: str = NAME,
                 cfg: SyntheticGSVConfig = SyntheticGSVConfig()) -> str:
  """Generates `<root>/<name>` unless it holds this exact configuration; the folder."""
  def generate(tmp: str) -> None:
    for i, city in enumerate(cfg.cities):
      generate_city(tmp, i, city, cfg)
  return synthetic.ensure_generated(os.path.join(root, name), cfg, generate,
                                    "synthetic GSV-Cities world")
