"""The built-in synthetic geo dataset: place recognition under condition change.

A procedural world is rendered into a complete `@`-format dataset, deterministically
from a seed, so that every part of the system runs anywhere without downloads.

The world: each split lies in its own area of a UTM-like map (zone 10S) and holds
parallel streets, 60 m apart (so no two streets share a 25 m neighbourhood). Each
street side is a facade strip made of buildings with their own colours, textures
(stripes, checks, windows, dots, bricks) and landmarks (discs, triangles, signs).
A camera at a position along a street sees the `fov_m` metres of facade around it,
with sky above and road below, so images of close positions overlap and images
more than `fov_m` apart share nothing. Viewpoint jitter moves, zooms and tilts
the camera.

Database images are taken every `db_spacing_m` metres in daylight. Queries are
taken at random positions under a different condition (dusk, night, overcast,
winter, or a random colour cast), with sensor noise: place recognition under
condition change. Because GeM pools globally and discards layout, places are
told apart by local appearance (per-building colours, textures and landmarks),
not only by where things sit in the frame.

With `styles` > 0 the buildings share a few facade styles and the landmarks a few colours:
then the whole view of one place resembles that of many others, and what tells places
apart is which landmarks stand where, the local matching that stage-2 re-ranking does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil

import numpy as np
from PIL import Image, ImageDraw

from data_pipelines import formats

NAME = "synthetic"  # the dataset name under which the built-in world is generated
MANIFEST = "synthetic.json"
SPLITS = ("train", "val", "test")
# Each split lies in its own area (UTM zone 10S, around San Francisco).
_SPLIT_ORIGINS = {"train": (549_000.0, 4_178_000.0), "val": (555_000.0, 4_178_000.0),
                  "test": (561_000.0, 4_178_000.0)}
STREET_GAP_M = 60.0


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """What to render. Every field changes the files, so all of them go in the manifest."""
  seed: int = 0
  image_size: tuple[int, int] = (96, 128)  # (H, W) of the written JPEGs
  # streets per split and street length: train / val / test
  streets: tuple[int, int, int] = (12, 3, 4)
  street_length_m: float = 300.0
  db_spacing_m: float = 5.0
  queries_per_street: tuple[int, int, int] = (100, 40, 60)
  fov_m: float = 20.0
  px_per_m: float = 8.0
  jpeg_quality: int = 90
  # 0: every building has its own colours and texture. N > 0: buildings take one of N
  # facade styles shared by the whole split and landmarks take colours from a small
  # palette, so places look alike as a whole and differ in which landmarks stand where
  # (a world where local, spatially consistent matching matters: the stage-2 demo)
  styles: int = 0

  def fingerprint(self) -> str:
    data = json.dumps(dataclasses.asdict(self), sort_keys=True)
    return hashlib.sha256(data.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- world


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
  i = int(h * 6) % 6
  f = h * 6 - int(h * 6)
  p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
  return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


def _random_colour(rng: np.random.Generator, s=(0.35, 1.0), v=(0.3, 1.0)) -> np.ndarray:
  return _hsv_to_rgb(rng.random(), rng.uniform(*s), rng.uniform(*v))


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """One building face: (h, w, 3) float in [0, 1]."""
  a, b = _random_colour(rng), _random_colour(rng)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  kind = rng.integers(6)
  period = rng.uniform(4, 16)
  if kind == 0:    # stripes at a random angle
    angle = rng.uniform(0, np.pi)
    m = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0)
  elif kind == 1:  # checks
    m = ((xx // period).astype(int) + (yy // period).astype(int)) % 2 == 0
  elif kind == 2:  # windows on a wall
    px, py = rng.uniform(8, 18), rng.uniform(10, 20)
    m = ((xx % px) > px * rng.uniform(0.3, 0.6)) & ((yy % py) > py * rng.uniform(0.3, 0.6))
  elif kind == 3:  # dots
    r = period * rng.uniform(0.2, 0.45)
    m = ((xx % period - period / 2) ** 2 + (yy % period - period / 2) ** 2) < r * r
  elif kind == 4:  # bricks
    row = (yy // (period / 2)).astype(int)
    m = (((xx + (row % 2) * period / 2) % period) > 1.5) & ((yy % (period / 2)) > 1.5)
  else:            # smooth blobs
    freq = rng.uniform(0.05, 0.2, size=4)
    m = (np.sin(xx * freq[0] + rng.uniform(0, 6)) * np.sin(yy * freq[1]) +
         np.sin(xx * freq[2] + yy * freq[3])) > 0
  tex = np.where(m[..., None], a, b).astype(np.float32)
  return tex * rng.uniform(0.85, 1.0, size=(1, 1, 3)).astype(np.float32)


# landmark colours of a world with shared styles: few, so that a colour names no place
_PALETTE = ((230, 40, 40), (40, 200, 60), (50, 90, 230), (240, 220, 40), (240, 240, 240),
            (230, 60, 220))


def _landmarks(rng: np.random.Generator, image: Image.Image, x0: int, x1: int,
               palette: bool = False) -> None:
  """Draws 0-3 distinctive shapes (1-4 from the palette) onto the building that spans
  columns [x0, x1)."""
  draw = ImageDraw.Draw(image)
  h = image.height
  for _ in range(rng.integers(1, 5) if palette else rng.integers(0, 4)):
    colour = (_PALETTE[rng.integers(len(_PALETTE))] if palette else
              tuple(int(c) for c in _random_colour(rng, s=(0.7, 1.0), v=(0.7, 1.0)) * 255))
    size = rng.uniform(0.12, 0.35) * h
    cx = rng.uniform(x0 + size / 2, max(x0 + size / 2 + 1, x1 - size / 2))
    cy = rng.uniform(size / 2, h - size / 2)
    box = (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2)
    kind = rng.integers(3)
    if kind == 0:
      draw.ellipse(box, fill=colour)
    elif kind == 1:
      draw.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=colour)
    else:
      draw.rectangle(box, fill=colour, outline=(20, 20, 20), width=2)


def render_facade(rng: np.random.Generator, length_m: float, px_per_m: float,
                  height_px: int, styles: tuple[int, ...] = ()) -> np.ndarray:
  """A street's facade strip: (height_px, length_m * px_per_m, 3) uint8. With `styles`
  (seeds of shared facade styles) each building's texture is drawn from one of them."""
  width = int(round(length_m * px_per_m))
  strip = np.zeros((height_px, width, 3), np.float32)
  edges = [0]
  while edges[-1] < width:
    edges.append(min(width, edges[-1] + int(rng.uniform(8, 25) * px_per_m)))
  for x0, x1 in zip(edges[:-1], edges[1:]):
    top = int(rng.uniform(0.0, 0.3) * height_px)  # buildings of different heights
    strip[:top, x0:x1] = np.nan                     # sky shows above lower buildings
    style = np.random.default_rng(styles[rng.integers(len(styles))]) if styles else rng
    strip[top:, x0:x1] = _texture(style, height_px - top, x1 - x0)
  sky = np.isnan(strip)
  strip = np.nan_to_num(strip)
  image = Image.fromarray((strip * 255).astype(np.uint8))
  for x0, x1 in zip(edges[:-1], edges[1:]):
    _landmarks(rng, image, x0, x1, palette=bool(styles))
  out = np.asarray(image).copy()
  out[sky] = 0  # marks sky: painted per view, under the view's condition
  return out


# ----------------------------------------------------------------------------- camera


def render_view(facade: np.ndarray, position_m: float, rng: np.random.Generator,
                cfg: SyntheticConfig, jitter: float) -> np.ndarray:
  """Daylight view of the facade around `position_m`: (H, W, 3) float in [0, 1].

  `jitter` scales the viewpoint change (lateral shift, zoom, tilt, perspective).
  """
  H, W = cfg.image_size
  fh = facade.shape[0]
  centre = position_m * cfg.px_per_m + rng.normal(0, 1.0) * jitter * cfg.px_per_m
  zoom = np.exp(rng.normal(0, 0.08) * jitter)
  half_w = cfg.fov_m * cfg.px_per_m / 2 / zoom
  half_h = half_w * (0.62 * H / W) * 2  # the facade fills the middle ~62% of the frame
  cy = fh * 0.55 + rng.normal(0, 4) * jitter
  box = (centre - half_w, cy - half_h / 2, centre + half_w, cy + half_h / 2)
  src = Image.fromarray(facade)
  face_h = int(round(H * 0.62))
  face = src.resize((W, face_h), Image.BILINEAR, box=box)
  if jitter > 0:  # a mild perspective (keystone) change of viewpoint
    k = rng.normal(0, 0.04) * jitter
    d = k * W
    coeffs = _perspective_coeffs([(0, -d), (W, d), (W, face_h - d), (0, face_h + d)],
                                 [(0, 0), (W, 0), (W, face_h), (0, face_h)])
    face = face.transform((W, face_h), Image.PERSPECTIVE, coeffs, Image.BILINEAR)
  face = np.asarray(face, np.float32) / 255
  image = np.empty((H, W, 3), np.float32)
  top = int(round(H * 0.18))
  # sky: a vertical gradient; road: grey with lane marks moving with the camera
  t = np.linspace(0, 1, top + face_h)[:, None, None]
  sky = (1 - t) * np.array([0.45, 0.65, 0.95]) + t * np.array([0.8, 0.88, 1.0])
  image[:top + face_h] = sky
  region = image[top:top + face_h]
  visible = face.sum(-1, keepdims=True) > 0
  region[:] = np.where(visible, face, region)
  road = image[top + face_h:]
  road[:] = 0.35
  xs = (np.arange(W) - W / 2) / zoom / cfg.px_per_m + centre / cfg.px_per_m
  lane = (np.floor(xs / 3.0) % 2 == 0)
  mid = road.shape[0] // 2
  road[mid:mid + 2, lane] = 0.9
  return image


def _perspective_coeffs(src, dst):
  """Coefficients for PIL's PERSPECTIVE transform mapping dst corners to src corners."""
  rows = []
  for (x, y), (u, v) in zip(dst, src):
    rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
    rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
  a = np.array(rows, np.float64)
  b = np.array(src, np.float64).reshape(8)
  return np.linalg.solve(a, b).tolist()


CONDITIONS = ("dusk", "night", "overcast", "winter", "cast")


def apply_condition(image: np.ndarray, condition: str, rng: np.random.Generator) -> np.ndarray:
  """A change of appearance (light, colour, weather) and sensor noise. Float in [0, 1]."""
  x = image
  if condition == "dusk":
    x = x * np.array([1.1, 0.75, 0.5]) * rng.uniform(0.6, 0.85)
  elif condition == "night":
    x = (x ** rng.uniform(1.4, 2.0)) * np.array([0.55, 0.6, 0.9]) * rng.uniform(0.35, 0.55)
    H, W, _ = x.shape
    yy, xx = np.mgrid[0:H, 0:W]
    for _ in range(rng.integers(1, 4)):  # street lamps
      cy, cx, r = rng.uniform(0, H * 0.5), rng.uniform(0, W), rng.uniform(3, 10)
      glow = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
      x = x + glow[..., None] * np.array([1.0, 0.85, 0.5])
  elif condition == "overcast":
    grey = x.mean(-1, keepdims=True)
    x = 0.5 * x + 0.5 * grey
    x = (x - 0.5) * rng.uniform(0.5, 0.7) + 0.55
  elif condition == "winter":
    grey = x.mean(-1, keepdims=True)
    x = 0.6 * x + 0.4 * grey + 0.15
    snow = rng.random(x.shape[:2]) < rng.uniform(0.01, 0.04)
    x = np.where(snow[..., None], 1.0, x)
  elif condition == "cast":
    x = x * rng.uniform(0.6, 1.35, size=3)
    x = 0.5 + (x - 0.5) * rng.uniform(0.6, 1.2)
  else:
    raise ValueError(f"unknown condition {condition!r}; expected one of {CONDITIONS}")
  x = x + rng.normal(0, rng.uniform(0.01, 0.05), size=x.shape)
  return np.clip(x, 0, 1)


# ----------------------------------------------------------------------------- dataset


@dataclasses.dataclass(frozen=True)
class _Street:
  origin: np.ndarray     # UTM (east, north) of position 0
  direction: np.ndarray  # unit vector along the street
  facade: np.ndarray


def _streets(rng: np.random.Generator, split: str, count: int, cfg: SyntheticConfig,
             facade_h: int) -> list[_Street]:
  heading = rng.uniform(0, np.pi)
  direction = np.array([np.cos(heading), np.sin(heading)])
  normal = np.array([-direction[1], direction[0]])
  origin = np.array(_SPLIT_ORIGINS[split])
  styles = tuple(int(x) for x in rng.integers(2**31, size=cfg.styles)) if cfg.styles else ()
  return [_Street(origin + normal * STREET_GAP_M * i + direction * rng.uniform(-20, 20),
                  direction, render_facade(rng, cfg.street_length_m + cfg.fov_m * 2,
                                           cfg.px_per_m, facade_h, styles))
          for i in range(count)]


def _save(image: np.ndarray, folder: str, utm: np.ndarray, street: int, position: float,
          note: str, quality: int) -> None:
  name = formats.format_name(utm[0], utm[1], 10, "S", pano_id=f"s{street:02d}p{position:07.2f}",
                             note=note)
  Image.fromarray((image * 255 + 0.5).astype(np.uint8)).save(
      os.path.join(folder, name), quality=quality)


def generate_split(root: str, split: str, cfg: SyntheticConfig) -> None:
  """Writes `root/images/<split>/{database,queries}` for one split."""
  index = SPLITS.index(split)
  rng = np.random.default_rng([cfg.seed, index])
  facade_h = int(round(cfg.fov_m * cfg.px_per_m * 0.62 * cfg.image_size[0] / cfg.image_size[1]
                       * 2 * 1.3))
  streets = _streets(rng, split, cfg.streets[index], cfg, facade_h)
  db_folder = os.path.join(root, "images", split, "database")
  q_folder = os.path.join(root, "images", split, "queries")
  os.makedirs(db_folder)
  os.makedirs(q_folder)
  margin = cfg.fov_m  # the facade extends fov_m beyond both ends of the street
  for s, street in enumerate(streets):
    positions = np.arange(0.0, cfg.street_length_m, cfg.db_spacing_m)
    positions = positions + rng.uniform(-0.2, 0.2, size=len(positions)) * cfg.db_spacing_m
    for pos in positions:
      image = render_view(street.facade, pos + margin, rng, cfg, jitter=0.5)
      image = np.clip(image * rng.uniform(0.92, 1.08), 0, 1)
      _save(image, db_folder, street.origin + street.direction * pos, s, pos, "day",
            cfg.jpeg_quality)
    for pos in rng.uniform(0, cfg.street_length_m, size=cfg.queries_per_street[index]):
      condition = CONDITIONS[rng.integers(len(CONDITIONS))]
      image = apply_condition(render_view(street.facade, pos + margin, rng, cfg, jitter=1.0),
                              condition, rng)
      _save(image, q_folder, street.origin + street.direction * pos, s, pos, condition,
            cfg.jpeg_quality)


def ensure_dataset(root: str, name: str = NAME,
                   cfg: SyntheticConfig = SyntheticConfig()) -> str:
  """Generates `<root>/<name>` unless it already holds this exact configuration.

  Returns the dataset folder. A folder with another configuration is regenerated only if
  it is one of ours (it has our manifest); any other folder is never touched.
  """
  folder = os.path.join(root, name)
  manifest = os.path.join(folder, MANIFEST)
  if os.path.exists(manifest):
    with open(manifest) as f:
      if json.load(f).get("fingerprint") == cfg.fingerprint():
        return folder
    logging.info("Synthetic dataset at %s has another configuration: regenerating.", folder)
    shutil.rmtree(folder)
  elif os.path.exists(folder):
    raise FileExistsError(
        f"{folder} exists but is not a synthetic dataset of ours (no {MANIFEST}); "
        "move it away or set --config.data.root / --config.data.name to another folder.")
  logging.info("Generating the synthetic geo dataset in %s ...", folder)
  tmp = folder + ".partial"
  shutil.rmtree(tmp, ignore_errors=True)
  for split in SPLITS:
    generate_split(tmp, split, cfg)
  with open(os.path.join(tmp, MANIFEST), "w") as f:
    json.dump({"fingerprint": cfg.fingerprint(), "config": dataclasses.asdict(cfg)}, f, indent=1)
  os.replace(tmp, folder)  # atomic: a half-written dataset is never picked up
  return folder
