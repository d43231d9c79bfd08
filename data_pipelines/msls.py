"""Raw Mapillary SLS (MSLS): the official API's im2im splits.

Replicates `mapillary_sls/datasets/msls.py` (class MSLS, task im2im) without pandas or
sklearn. The official metrics and the challenge prediction file are computed by the
evaluation (vgssl_jax.evaluation.metrics and .exports) from the extras read here.
Layout under `folder` (usually `<data.root>/msls`)::

    train_val/<city>/{query,database}/images/<key>.jpg
    train_val/<city>/{query,database}/{postprocessed,raw,seq_info,subtask_index}.csv
    test/<city>/{query,database}/images/<key>.jpg + {seq_info,subtask_index}.csv

Row i of every CSV of one folder describes the same image (the official code relies on
it: keys come from seq_info.csv, coordinates from postprocessed.csv); we check the keys.

Filters, as the official MSLS class:
  * train: panoramas (raw.csv `pano`) removed; no subtask filter; every query kept (the
    training code drops queries without a 10 m positive itself).
  * val: panoramas removed and only images whose subtask `all` flag is True; queries
    without a database image within 25 m dropped (they are not in the official
    denominator; leaves the 740 queries of the usual "MSLS val").
  * test: no raw.csv, so no panorama filter; subtask `all` filter; no coordinates.

One PlaceDataset holds every city, but the official positives are found per city. We keep
that by adding `city_index * CITY_OFFSET_M` to each city's easting, so the global radius
search (places.radius_neighbors) can never match across cities. `database_utms` and
`queries_utms` are therefore NOT raw UTM: subtract the offset of extras["*_city"] to get it.

The test split has no GPS (postprocessed.csv is withheld for the challenge): its utms are
NaN (`PlaceDataset.has_gps` is False) and positives() raises DatasetError; score it with
the prediction file and the challenge server instead.
"""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np

from data_pipelines.places import EVAL_RADIUS_M, DatasetError, PlaceDataset, radius_neighbors

CITIES = {
    "train": ("trondheim", "london", "boston", "melbourne", "amsterdam", "helsinki", "tokyo",
              "toronto", "saopaulo", "moscow", "zurich", "paris", "bangkok", "budapest",
              "austin", "berlin", "ottawa", "phoenix", "goa", "amman", "nairobi", "manila"),
    "val": ("cph", "sf"),
    "test": ("miami", "athens", "buenosaires", "stockholm", "bengaluru", "kampala"),
}
SPLIT_SUBDIR = {"train": "train_val", "val": "train_val", "test": "test"}
SUBTASKS = ("all", "s2w", "w2s", "o2n", "n2o", "d2n", "n2d")
# The raw MSLS folder names of the two parts (the `@` layout calls them database/queries).
PARTS = (("database", "database"), ("queries", "query"))
VAL_RADIUS = EVAL_RADIUS_M  # official evaluation threshold (evaluate.py --threshold default)
# Added to the easting of the i-th city of a split: far beyond any positive radius, and
# still exact in float64 (28 cities * 1e7 m keeps ~1e-7 m resolution).
CITY_OFFSET_M = 1e7

_POSTPROCESSED = "postprocessed.csv"
_RAW = "raw.csv"
_SEQ_INFO = "seq_info.csv"
_SUBTASK = "subtask_index.csv"
_HEADERS = {
    _POSTPROCESSED: ",key,easting,northing,unique_cluster,control_panel,night,view_direction",
    _RAW: ",key,lon,lat,ca,captured_at,pano",
    _SEQ_INFO: ",key,sequence_key,frame_number",
    _SUBTASK: ",key," + ",".join(SUBTASKS),
}
# Columns we read from each CSV, by name (other columns are ignored).
_REQUIRED = {_POSTPROCESSED: ("key", "easting", "northing"), _RAW: ("key", "pano"),
             _SEQ_INFO: ("key",), _SUBTASK: ("key", "all")}


def is_raw_msls(folder: str) -> bool:
  """True when `folder` holds the raw MSLS layout (`train_val|test/<city>/{query,database}/`),
  False for the `@` layout of VPR-datasets-downloader (`images/<split>/...`) or nothing."""
  for subdir in ("train_val", "test"):
    path = os.path.join(folder, subdir)
    if not os.path.isdir(path):
      continue
    for city in os.listdir(path):
      if any(os.path.isdir(os.path.join(path, city, part)) for _, part in PARTS):
        return True
  return False


def _read_csv(path: str, required: tuple[str, ...]) -> dict[str, list[str]]:
  """The columns of an MSLS CSV by header name; DatasetError if missing or malformed."""
  name = os.path.basename(path)
  if not os.path.isfile(path):
    raise DatasetError(
        f"{path} is missing: every raw MSLS <city>/{{query,database}}/ folder needs {name} "
        f"(header {_HEADERS[name]!r}). Re-extract the MSLS archive for this city.")
  with open(path, newline="") as f:
    rows = list(csv.reader(f))
  if not rows:
    raise DatasetError(f"{path} is empty: expected the header {_HEADERS[name]!r} and one row "
                       "per image. Re-extract the MSLS archive for this city.")
  header = [h.strip() for h in rows[0]]
  missing = [c for c in required if c not in header]
  if missing:
    raise DatasetError(f"{path}: columns {missing} not found in the header {rows[0]}; expected "
                       f"{_HEADERS[name]!r}. Re-extract the MSLS archive for this city.")
  for i, row in enumerate(rows[1:], start=2):
    if len(row) != len(header):
      raise DatasetError(f"{path} line {i}: {len(row)} fields, but the header has "
                         f"{len(header)} ({rows[0]}). The file is truncated or corrupt.")
  columns = list(zip(*rows[1:])) if len(rows) > 1 else [()] * len(header)
  return {h: list(col) for h, col in zip(header, columns)}


def _floats(path: str, column: str, values: list[str]) -> np.ndarray:
  try:
    return np.asarray(values, np.float64)
  except ValueError:
    bad = next(i for i, v in enumerate(values) if not _is_float(v))
    raise DatasetError(f"{path}: column {column!r} row {bad} is {values[bad]!r}, expected a "
                       "number (UTM metres).") from None


def _is_float(value: str) -> bool:
  try:
    float(value)
    return True
  except ValueError:
    return False


def _bools(path: str, column: str, values: list[str]) -> np.ndarray:
  lowered = np.char.lower(np.char.strip(np.asarray(values, str))) if values else np.zeros(0, str)
  ok = (lowered == "true") | (lowered == "false")
  if not ok.all():
    bad = int(np.flatnonzero(~ok)[0])
    raise DatasetError(f"{path}: column {column!r} row {bad} is {values[bad]!r}, expected "
                       "True or False.")
  return lowered == "true"


@dataclasses.dataclass
class _Part:
  """One `<city>/{query,database}` folder, unfiltered (row i = CSV row i)."""
  keys: np.ndarray                  # (N,) str
  utms: np.ndarray                  # (N, 2) float64, NaN without postprocessed.csv
  pano: np.ndarray | None           # (N,) bool
  subtasks: dict[str, np.ndarray]   # name -> (N,) bool, the columns present
  # postprocessed.csv's `night` (bool) and `view_direction` (str), where present
  conditions: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def _read_part(folder: str, split: str) -> _Part:
  if not os.path.isdir(os.path.join(folder, "images")):
    raise DatasetError(f"{os.path.join(folder, 'images')} does not exist: raw MSLS keeps the "
                       "pictures of each part in images/<key>.jpg. Re-extract the MSLS archive.")
  # As the official MSLS class: train/val read GPS and panorama flags, test only the
  # subtask index; train ignores subtask_index.csv (read here only for the extras).
  names = [_SEQ_INFO]
  if split in ("train", "val"):
    names += [_POSTPROCESSED, _RAW]
  if split in ("val", "test") or os.path.isfile(os.path.join(folder, _SUBTASK)):
    names.append(_SUBTASK)
  tables = {n: _read_csv(os.path.join(folder, n), _REQUIRED[n]) for n in names}
  keys = np.asarray([k.strip() for k in tables[_SEQ_INFO]["key"]], str)
  for n in names[1:]:
    other = np.asarray([k.strip() for k in tables[n]["key"]], str)
    if len(other) != len(keys) or not np.array_equal(other, keys):
      if len(other) != len(keys):
        what = f"{len(keys)} rows in {_SEQ_INFO} but {len(other)} in {n}"
      else:
        i = int(np.flatnonzero(other != keys)[0])
        what = f"row {i} is key {str(keys[i])!r} in {_SEQ_INFO} but {str(other[i])!r} in {n}"
      raise DatasetError(f"{folder}: the CSVs disagree ({what}); row i of every CSV must "
                         "describe the same image. Re-extract the MSLS archive for this city.")
  utms = np.full((len(keys), 2), np.nan)
  conditions = {}
  if _POSTPROCESSED in tables:
    path = os.path.join(folder, _POSTPROCESSED)
    utms[:, 0] = _floats(path, "easting", tables[_POSTPROCESSED]["easting"])
    utms[:, 1] = _floats(path, "northing", tables[_POSTPROCESSED]["northing"])
    table = tables[_POSTPROCESSED]
    conditions = {}
    if "night" in table:
      conditions["night"] = _bools(path, "night", table["night"])
    if "view_direction" in table:
      conditions["view_direction"] = np.asarray([v.strip() for v in table["view_direction"]],
                                                str)
  pano = None
  if _RAW in tables:
    pano = _bools(os.path.join(folder, _RAW), "pano", tables[_RAW]["pano"])
  subtasks = {}
  if _SUBTASK in tables:
    subtasks = {s: _bools(os.path.join(folder, _SUBTASK), s, tables[_SUBTASK][s])
                for s in SUBTASKS if s in tables[_SUBTASK]}
  return _Part(keys, utms, pano, subtasks, conditions)


def load_msls(folder: str, split: str) -> PlaceDataset:
  """The official im2im `split` ("train", "val" or "test") of raw MSLS under `folder`.

  Returns a PlaceDataset (NaN coordinates for "test") with paths relative to
  `folder`, per-city-offset utms (see the module docstring) and extras:
  "{database,queries}_key" and "_city" (N,) str, "{database,queries}_subtask_<name>" (N,)
  bool for each subtask column present.
  """
  if split not in CITIES:
    raise DatasetError(f"unknown MSLS split {split!r}: expected one of {sorted(CITIES)}.")
  subdir = os.path.join(folder, SPLIT_SUBDIR[split])
  present = [c for c in CITIES[split] if os.path.isdir(os.path.join(subdir, c))]
  if not present:
    found = sorted(os.listdir(subdir)) if os.path.isdir(subdir) else []
    raise DatasetError(
        f"no city of the MSLS {split!r} split in {os.path.abspath(subdir)}: expected some of "
        f"{list(CITIES[split])}, found {found or 'nothing'}. Point data.root at the folder "
        "holding msls/ with the raw Mapillary SLS archives extracted into it.")

  columns: dict[str, dict[str, list]] = {p: {} for p, _ in PARTS}
  for city in present:
    offset = CITIES[split].index(city) * CITY_OFFSET_M
    for part, raw_name in PARTS:
      data = _read_part(os.path.join(subdir, city, raw_name), split)
      keep = np.ones(len(data.keys), bool)
      if data.pano is not None:
        keep &= ~data.pano
      if split in ("val", "test"):
        keep &= data.subtasks["all"]
      relative = f"{SPLIT_SUBDIR[split]}/{city}/{raw_name}/images"
      cols = columns[part]
      cols.setdefault("paths", []).append(
          np.asarray([f"{relative}/{k}.jpg" for k in data.keys[keep]], object))
      cols.setdefault("utms", []).append(data.utms[keep] + [offset, 0.0])
      cols.setdefault("key", []).append(data.keys[keep])
      cols.setdefault("city", []).append(np.full(int(keep.sum()), city))
      for name, values in data.conditions.items():  # night, view_direction (msls_weighted)
        cols.setdefault(name, []).append(values[keep])
      for name, flags in data.subtasks.items():
        cols.setdefault(f"subtask_{name}", []).append(flags[keep])

  arrays = {p: {} for p, _ in PARTS}
  for part, _ in PARTS:
    for name, pieces in columns[part].items():
      optional = name.startswith("subtask_") or name in ("night", "view_direction")
      if optional and len(pieces) != len(present):
        continue  # a column some city lacks: not usable for the whole split
      arrays[part][name] = np.concatenate(pieces)
    if len(arrays[part]["paths"]) == 0:
      raise DatasetError(f"MSLS {split!r} in {os.path.abspath(subdir)} ({', '.join(present)}) "
                         f"has no {part} image left after the official filters (panoramas, "
                         "subtask 'all'). Check raw.csv and subtask_index.csv.")

  database, queries = arrays["database"], arrays["queries"]
  positives = {}
  if split == "val":
    # The official val set keeps only queries with a database image within 25 m.
    pos = radius_neighbors(queries["utms"], database["utms"], VAL_RADIUS)
    kept = np.flatnonzero(pos.counts > 0)
    if len(kept) == 0:
      raise DatasetError(f"MSLS val in {os.path.abspath(subdir)}: no query has a database image "
                         f"within {VAL_RADIUS} m, so nothing can be evaluated. Check the "
                         "easting/northing columns of postprocessed.csv.")
    queries = {name: values[kept] for name, values in queries.items()}
    positives[VAL_RADIUS] = pos.subset(kept)  # cached: the evaluation asks for it again

  extras = {f"{part}_{name}": values for part, values_of in (("database", database),
                                                            ("queries", queries))
            for name, values in values_of.items() if name not in ("paths", "utms")}
  return PlaceDataset(name="msls", split=split, root=folder,
             database_paths=tuple(database["paths"].tolist()),
             queries_paths=tuple(queries["paths"].tolist()),
             database_utms=database["utms"], queries_utms=queries["utms"],
             extras=extras, _positives=positives)
