"""Places: database and query images with UTM coordinates, positives by radius."""

from __future__ import annotations

import dataclasses
import glob
import os

import numpy as np

from data_pipelines import formats, images

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
# The field's radii: training positives lie within 10 m of the query; evaluation positives
# (and the soft positives that training never uses as negatives) within 25 m.
TRAIN_POSITIVE_RADIUS_M = 10.0
EVAL_RADIUS_M = 25.0


class DatasetError(ValueError):
  """A dataset folder is missing, empty or malformed."""


@dataclasses.dataclass(frozen=True)
class Neighbors:
  """Ragged neighbour lists in CSR form: neighbours of row i are indices[indptr[i]:indptr[i+1]]."""
  indptr: np.ndarray   # (Q + 1,) int64
  indices: np.ndarray  # (nnz,) int64, ascending within each row

  def __len__(self) -> int:
    return len(self.indptr) - 1

  def __getitem__(self, i: int) -> np.ndarray:
    return self.indices[self.indptr[i]:self.indptr[i + 1]]

  @property
  def counts(self) -> np.ndarray:
    return np.diff(self.indptr)

  def subset(self, rows: np.ndarray) -> "Neighbors":
    """The neighbour lists of `rows`, in that order."""
    rows = np.asarray(rows, np.int64)
    counts = self.counts[rows]
    indptr = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    starts = np.repeat(self.indptr[rows] - indptr[:-1], counts)
    return Neighbors(indptr, self.indices[starts + np.arange(indptr[-1])])

  def contains(self, rows: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(R, K) bool: candidates[i, j] is a neighbour of row rows[i] (negative candidates,
    e.g. -1 pads, never are). One sorted-key lookup, no Python loop over rows."""
    rows = np.asarray(rows, np.int64)
    candidates = np.asarray(candidates, np.int64)
    width = int(max(candidates.max(initial=0), self.indices.max(initial=0))) + 1
    keys = np.repeat(np.arange(len(self), dtype=np.int64), self.counts) * width + self.indices
    wanted = rows.reshape(-1, *([1] * (candidates.ndim - 1))) * width + candidates
    return (candidates >= 0) & np.isin(wanted, keys)

  def padded(self, fill: int = -1) -> np.ndarray:
    """(Q, max_count) array with rows padded by `fill`."""
    counts = self.counts
    out = np.full((len(self), max(int(counts.max(initial=0)), 1)), fill, np.int64)
    rows = np.repeat(np.arange(len(self)), counts)
    cols = np.arange(len(self.indices)) - np.repeat(self.indptr[:-1], counts)
    out[rows, cols] = self.indices
    return out


def radius_neighbors(queries: np.ndarray, database: np.ndarray, radius: float,
                     chunk: int = 65536) -> Neighbors:
  """Exact radius search in the plane (distance <= radius, as sklearn's radius_neighbors).

  Vectorised grid hashing: database points are bucketed into square cells of side
  `radius`, so the neighbours of a query lie in its own cell or the 8 around it.
  Cost is O(Q + D + candidates) instead of O(Q * D).

  Args:
    queries: (Q, 2) coordinates in metres.
    database: (D, 2) coordinates in metres.
    radius: search radius in metres (> 0).
  Returns:
    Neighbors with ascending database indices per query.
  """
  if radius <= 0:
    raise ValueError(f"radius must be positive, got {radius}")
  queries = np.asarray(queries, np.float64).reshape(-1, 2)
  database = np.asarray(database, np.float64).reshape(-1, 2)
  if len(database) == 0 or len(queries) == 0:
    return Neighbors(np.zeros(len(queries) + 1, np.int64), np.zeros(0, np.int64))
  origin = database.min(axis=0)
  db_cells = np.floor((database - origin) / radius).astype(np.int64)
  # Cell keys with one spare cell on every side, so that queries' neighbour cells never alias.
  span = db_cells.max(axis=0) + 3
  def key(cells):
    return (cells[:, 0] + 1) * span[1] + (cells[:, 1] + 1)
  order = np.argsort(key(db_cells), kind="stable")
  sorted_keys = key(db_cells)[order]

  indptrs, indices = [np.zeros(1, np.int64)], []
  total = 0
  for start in range(0, len(queries), chunk):
    q = queries[start:start + chunk]
    q_cells = np.floor((q - origin) / radius).astype(np.int64)
    cand_q, cand_d = [], []
    for dx in (-1, 0, 1):
      for dy in (-1, 0, 1):
        cells = q_cells + np.array([dx, dy])
        inside = np.all((cells >= -1) & (cells <= span - 2), axis=1)
        k = np.where(inside, key(np.clip(cells, -1, span - 2)), -1)
        lo = np.searchsorted(sorted_keys, k, "left")
        hi = np.searchsorted(sorted_keys, k, "right")
        n = np.where(inside, hi - lo, 0)
        qi = np.repeat(np.arange(len(q)), n)
        offsets = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        cand_q.append(qi)
        cand_d.append(order[np.repeat(lo, n) + offsets])
    qi = np.concatenate(cand_q)
    di = np.concatenate(cand_d)
    dist2 = np.sum((q[qi] - database[di]) ** 2, axis=1)
    keep = dist2 <= radius * radius
    qi, di = qi[keep], di[keep]
    sort = np.lexsort((di, qi))
    qi, di = qi[sort], di[sort]
    counts = np.bincount(qi, minlength=len(q))
    indptrs.append(total + np.cumsum(counts))
    indices.append(di)
    total += len(di)
  return Neighbors(np.concatenate(indptrs), np.concatenate(indices))


def list_images(folder: str) -> list[str]:
  """Sorted image paths under `folder` (recursive), as the original's sorted glob."""
  paths = [p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
           if p.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(p)]
  return sorted(paths)


@dataclasses.dataclass(frozen=True, eq=False)
class PlaceDataset:
  """Database and queries of one split, with UTM coordinates.

  Index space: database images are 0..D-1, queries 0..Q-1 (separate arrays).
  """
  name: str
  split: str
  root: str                   # folder the relative paths are relative to
  database_paths: tuple[str, ...]
  queries_paths: tuple[str, ...]
  database_utms: np.ndarray   # (D, 2) float64
  queries_utms: np.ndarray    # (Q, 2) float64
  # where the pixels come from; files under `root` unless given (e.g. ArrayRecord records)
  sources: dict[str, images.ImageSource] | None = dataclasses.field(default=None, repr=False)
  # per-image metadata of some formats (MSLS keys and subtasks), arrays keyed by name
  extras: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
  _positives: dict = dataclasses.field(default_factory=dict, repr=False)

  @property
  def has_gps(self) -> bool:
    """False where coordinates are withheld (the MSLS test split: NaN) or unknown (folders
    of images without `@` names), so nothing can be scored locally."""
    return bool(np.isfinite(self.database_utms).all() and np.isfinite(self.queries_utms).all())

  @property
  def is_msls(self) -> bool:
    """Raw MSLS with its image keys: scored by the official metrics, predictions written in
    the challenge's format."""
    return "queries_key" in self.extras

  @property
  def num_database(self) -> int:
    return len(self.database_paths)

  @property
  def num_queries(self) -> int:
    return len(self.queries_paths)

  def abs_path(self, relative: str) -> str:
    return os.path.join(self.root, relative)

  def images(self, part: str) -> images.ImageSource:
    """The image source of "database" or "queries"."""
    if self.sources is not None:
      return self.sources[part]
    paths = {"database": self.database_paths, "queries": self.queries_paths}[part]
    return images.FileImages(self.root, paths)

  def positives(self, radius: float) -> Neighbors:
    """Database images within `radius` metres of each query (cached per radius)."""
    if not self.has_gps and radius not in self._positives:
      raise DatasetError(
          f"{self}: the {self.split!r} split has no coordinates (the MSLS test split's GPS is "
          "withheld for the challenge), so positives and recall cannot be computed here. "
          "Submit its prediction file to the challenge server, or evaluate on split 'val'.")
    if radius not in self._positives:
      self._positives[radius] = radius_neighbors(self.queries_utms, self.database_utms, radius)
    return self._positives[radius]

  def __repr__(self) -> str:
    return (f"PlaceDataset({self.name}/{self.split}: {self.num_database} database, "
            f"{self.num_queries} queries)")


def split_folder(root: str, name: str, split: str) -> str:
  return os.path.join(root, name, "images", split)


def load_at_dataset(root: str, name: str, split: str) -> PlaceDataset:
  """Reads `<root>/<name>/images/<split>/{database,queries}` in the `@` format."""
  folder = split_folder(root, name, split)
  if not os.path.isdir(os.path.join(root, name)):
    raise DatasetError(
        f"dataset {name!r} not found: {os.path.abspath(os.path.join(root, name))} does not exist. "
        f"Set --config.data.root to the folder that holds {name}/images/<split>/"
        "{database,queries}, or download it (e.g. with VPR-datasets-downloader).")
  if not os.path.isdir(folder):
    available = sorted(os.listdir(os.path.join(root, name, "images"))) if os.path.isdir(
        os.path.join(root, name, "images")) else []
    raise DatasetError(
        f"split {split!r} of dataset {name!r} not found: {os.path.abspath(folder)} does not exist "
        f"(available splits: {available or 'none'}). Choose one of those splits.")
  parts = {}
  for part in ("database", "queries"):
    part_folder = os.path.join(folder, part)
    if not os.path.isdir(part_folder):
      raise DatasetError(f"{os.path.abspath(part_folder)} does not exist: an `@` dataset split "
                         "needs both database/ and queries/ subfolders.")
    paths = list_images(part_folder)
    if not paths:
      raise DatasetError(f"{os.path.abspath(part_folder)} holds no images "
                         f"({', '.join(IMAGE_EXTENSIONS)}): the {split!r} split is empty.")
    parts[part] = paths
  base = os.path.join(root, name)
  return PlaceDataset(
      name=name, split=split, root=base,
      database_paths=tuple(os.path.relpath(p, base) for p in parts["database"]),
      queries_paths=tuple(os.path.relpath(p, base) for p in parts["queries"]),
      database_utms=formats.parse_utms(parts["database"]),
      queries_utms=formats.parse_utms(parts["queries"]))


def _folder_images(folder: str, setting: str) -> list[str]:
  if not os.path.isdir(folder):
    raise DatasetError(f"{setting}={folder}: {os.path.abspath(folder)} is not a folder; give the "
                       "folder that holds the images (searched recursively).")
  paths = list_images(folder)
  if not paths:
    raise DatasetError(f"{setting}={folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}).")
  return paths


def _folder_utms(paths: list[str], setting: str) -> np.ndarray | None:
  """(N, 2) UTMs of `@`-named images; None when no name carries coordinates; a
  DatasetError naming a file when only some do."""
  labelled = [os.path.basename(p).startswith("@") for p in paths]
  if not any(labelled):
    return None
  if not all(labelled):
    bad = paths[labelled.index(False)]
    raise DatasetError(f"{setting}: {bad} has no `@` coordinates but other images there do; "
                       "name every image in the `@` format, or none (retrieval without labels).")
  return formats.parse_utms(paths)


def load_folders(database_folder: str, queries_folder: str, name: str = "folders",
                 settings: tuple[str, str] = ("database_folder", "queries_folder")
                 ) -> PlaceDataset:
  """Two folders of images, without the `<root>/<name>/images/<split>` layout: the
  database and the queries. With `@`-format names they carry coordinates (scored by
  recall@N); images without coordinates in both folders give a split without labels
  (NaN coordinates: has_gps False, predictions and descriptors only). `settings` name the
  two folders in messages."""
  db = _folder_images(database_folder, settings[0])
  q = _folder_images(queries_folder, settings[1])
  db_utms, q_utms = _folder_utms(db, settings[0]), _folder_utms(q, settings[1])
  if (db_utms is None) != (q_utms is None):
    which = settings[0] if db_utms is None else settings[1]
    raise DatasetError(f"{which} has images without `@` coordinates while the other folder's "
                       "have them: recall needs both labelled; rename them or use two folders "
                       "without coordinates (predictions only).")
  if db_utms is None:
    db_utms, q_utms = np.full((len(db), 2), np.nan), np.full((len(q), 2), np.nan)
  root = os.path.commonpath([os.path.abspath(database_folder), os.path.abspath(queries_folder)])
  return PlaceDataset(
      name=name, split="folders", root=root,
      database_paths=tuple(os.path.relpath(os.path.abspath(p), root) for p in db),
      queries_paths=tuple(os.path.relpath(os.path.abspath(p), root) for p in q),
      database_utms=db_utms, queries_utms=q_utms)


@dataclasses.dataclass(frozen=True)
class TrainPlaces:
  """A training split: queries that have a positive within `positive_radius` (10 m).

  As the original, queries without a training positive are dropped.
  """
  places: PlaceDataset
  query_ids: np.ndarray          # (Q',) indices into places.queries_*
  hard_positives: Neighbors      # within positive_radius, one row per kept query
  soft_positives: Neighbors      # within negative_radius (never used as negatives)
  dropped: int

  @classmethod
  def build(cls, places: PlaceDataset, positive_radius: float = TRAIN_POSITIVE_RADIUS_M,
            negative_radius: float = EVAL_RADIUS_M) -> "TrainPlaces":
    hard = places.positives(positive_radius)
    keep = np.flatnonzero(hard.counts > 0)
    if len(keep) == 0:
      raise DatasetError(f"{places}: no query has a database image within {positive_radius} m, "
                         "so there are no training pairs. Check the coordinates in the file names.")
    soft = places.positives(negative_radius)
    return cls(places, keep, hard.subset(keep), soft.subset(keep), len(hard) - len(keep))
