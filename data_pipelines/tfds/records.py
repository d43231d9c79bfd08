"""Reading prepared place datasets: PlaceDatasets whose images are ArrayRecord records.

Layout (written by `data_pipelines.tfds.builder.VgPlaces`, see `prepare`):

  <data_dir>/vg_places/<name>/<version>/
    vg_places-<split>_<part>.array_record-0000i-of-0000n  record i = image i of that part
    dataset_info.json, features.json                      tfds metadata
    metadata.json                                         {"source": ..., "index": ...}

Every record holds the original encoded file ("image", bytes unchanged), its relative
path ("path", as PlaceDataset.database_paths), its UTM ("utm", float64[2]) and a JSON
object of per-image extras ("extras"). The index in metadata.json repeats path, UTM
and extras column by column, so a PlaceDataset is rebuilt without reading the images.

Extras: PlaceDataset.extras keys are "<part>_<field>" (e.g. "queries_key", as MSLS),
arrays with one entry per image of that part; a record's JSON holds {field: value}.
A dataset whose coordinates are not all finite (MSLS test: no GPS) comes back with NaN
coordinates (`PlaceDataset.has_gps` False), as from the folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
from typing import Any

import numpy as np
from PIL import Image

from data_pipelines import images, places, synthetic

BUILDER_NAME = "vg_places"
VERSION = "1.0.0"
FILE_FORMAT = "array_record"
PARTS = ("database", "queries")

# Serialises the lazy opening of readers by grain's threads (one reader per process).
_OPEN_LOCK = threading.Lock()


def import_tfds():
  """tensorflow_datasets, or an error that says how to install it."""
  try:
    # tfds imports importlib_resources when it writes, but declares it only for Python < 3.9
    # (tensorflow/datasets#11212): check it here rather than fail after the conversion began.
    import importlib_resources  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import tensorflow_datasets  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        f"reading or preparing ArrayRecord datasets needs tensorflow-datasets and "
        f"importlib_resources ({e}). Install them with `pip install -e '.[tfds]'` "
        "(TensorFlow itself is not needed).") from e
  return tensorflow_datasets


def tfds_split(split: str, part: str) -> str:
  """The tfds split of one part of a place split, e.g. ("test", "database") -> "test_database"."""
  return f"{split}_{part}"


def dataset_dir(data_dir: str, name: str) -> str:
  """The folder of the prepared dataset `name` under the tfds `data_dir`."""
  return os.path.join(data_dir, BUILDER_NAME, name, VERSION)


def prepare_command(name: str, data_dir: str, splits: str = "") -> str:
  """The shell command that prepares `name` (for error messages)."""
  command = (f"python -m data_pipelines.tfds.prepare --name {name} --root <datasets root> "
             f"--data_dir {data_dir}")
  return command + (f" --splits {splits}" if splits else "")


# ----------------------------------------------------------------------------- extras


def _field(key: str) -> tuple[str, str]:
  for part in PARTS:
    if key.startswith(part + "_") and len(key) > len(part) + 1:
      return part, key[len(part) + 1:]
  raise places.DatasetError(
      f"PlaceDataset.extras key {key!r} is not of the form '<part>_<field>' with part in "
      f"{PARTS}: name per-image extras e.g. 'queries_key' so they can be stored per image.")


def part_extras(extras: dict[str, np.ndarray], part: str) -> dict[str, list]:
  """The extras of one part as JSON-ready columns {field: [value of image i, ...]}."""
  out = {}
  for key, values in sorted(extras.items()):
    key_part, field = _field(key)
    if key_part == part:
      out[field] = np.asarray(values).tolist()
  return out


def image_extras(columns: dict[str, list], index: int) -> str:
  """The JSON object {field: value} of image `index`, from `part_extras` columns."""
  return json.dumps({field: values[index] for field, values in columns.items()}, sort_keys=True)


def join_extras(columns: dict[str, dict[str, list]]) -> dict[str, np.ndarray]:
  """PlaceDataset.extras from the columns of every part: {"<part>_<field>": array}."""
  return {f"{part}_{field}": np.asarray(values)
          for part, fields in columns.items() for field, values in fields.items()}


# ----------------------------------------------------------------------------- images


@dataclasses.dataclass(frozen=True)
class RecordImages:
  """Images stored as records of one tfds split of a prepared dataset: record i = image i.

  Picklable: only the folder, split and paths travel to grain workers; each process
  opens its own reader on first use (open file handles are never pickled).
  """
  directory: str                 # the prepared dataset, see `dataset_dir`
  split: str                     # tfds split, e.g. "test_database"
  paths: tuple[str, ...]         # relative paths, as the image files
  _reader: list = dataclasses.field(default_factory=list, init=False, repr=False, compare=False)

  def __len__(self) -> int:
    return len(self.paths)

  def __getstate__(self) -> dict:
    state = dict(self.__dict__)
    state["_reader"] = []  # reopened lazily by the receiving process
    return state

  def _records(self):
    if not self._reader:
      with _OPEN_LOCK:
        if not self._reader:
          tfds = import_tfds()
          builder = tfds.builder_from_directory(self.directory)
          self._reader.append(builder.as_data_source(split=self.split))
    return self._reader[0]

  def record(self, index: int) -> dict[str, Any]:
    """The decoded record `index`: {"image": bytes, "path": str, "utm": (2,), "extras": str}."""
    return self._records()[index]

  def encoded(self, index: int) -> bytes:
    """The original encoded bytes of image `index`."""
    data = self.record(index)["image"]
    return data.item() if isinstance(data, np.ndarray) else bytes(data)

  def open(self, index: int, draft: tuple[int, int] | None = None) -> Image.Image:
    # The same decoder as FileImages, on the same bytes: identical pixels.
    return images.decode(self.encoded(index), f"{self.split}[{index}] ({self.paths[index]}) "
                                              f"of {self.directory}", draft)

  def name(self, index: int) -> str:
    return self.paths[index]


# ----------------------------------------------------------------------------- datasets


def _check_synthetic(source: dict, name: str, data_dir: str,
                     config: synthetic.SyntheticConfig | None) -> None:
  want = (config or synthetic.SyntheticConfig()).fingerprint()
  have = (source.get("synthetic") or {}).get("fingerprint")
  if have != want:
    raise places.DatasetError(
        f"the prepared {name!r} records in {os.path.abspath(dataset_dir(data_dir, name))} were "
        f"made from another synthetic configuration (fingerprint {have}, expected {want}). "
        "Convert the dataset of this configuration: generate it (e.g. run once with "
        f"--config.data.source=files), then run {prepare_command(name, data_dir)}, which "
        "converts the configuration found in <datasets root>/synthetic.")


def load_records(data_dir: str, name: str, split: str,
                 synthetic_config: synthetic.SyntheticConfig | None = None
                 ) -> places.PlaceDataset:
  """The `split` of dataset `name` prepared under the tfds `data_dir`, images from records.

  Paths, UTMs and extras equal those of `datasets.load_split` on the source folder, and
  images decode to identical pixels. For `synthetic`, the records must come from
  `synthetic_config` (the default configuration if None), as with `load_split`.
  """
  directory = dataset_dir(data_dir, name)
  if not os.path.exists(os.path.join(directory, "dataset_info.json")):
    raise places.DatasetError(
        f"no prepared ArrayRecord dataset {name!r}: {os.path.abspath(directory)} does not "
        f"exist or is incomplete. Prepare it with: {prepare_command(name, data_dir, split)}")
  tfds = import_tfds()
  info = tfds.builder_from_directory(directory).info
  metadata = dict(info.metadata or {})
  if "index" not in metadata or "source" not in metadata:
    raise places.DatasetError(
        f"{os.path.abspath(directory)} has no place index in metadata.json: it was not written "
        f"by data_pipelines.tfds. Prepare it again: {prepare_command(name, data_dir, split)}")
  if name == synthetic.NAME:
    _check_synthetic(metadata["source"], name, data_dir, synthetic_config)
  prepared = list(metadata["source"]["splits"])
  if split not in prepared:
    command = prepare_command(name, data_dir, ",".join([*prepared, split]))
    raise places.DatasetError(
        f"split {split!r} of {name!r} was not prepared in {os.path.abspath(directory)} (prepared: "
        f"{prepared}). Prepare it too: {command}")
  parts, sources, extras = {}, {}, {}
  for part in PARTS:
    key = tfds_split(split, part)
    index = metadata["index"][key]
    paths = tuple(index["paths"])
    if info.splits[key].num_examples != len(paths):
      raise places.DatasetError(
          f"{os.path.abspath(directory)}: split {key!r} holds {info.splits[key].num_examples} "
          f"records but its index lists {len(paths)} images; the folder is corrupt. "
          f"Delete it and prepare it again: {prepare_command(name, data_dir, split)}")
    parts[part] = (paths, np.asarray(index["utms"], np.float64).reshape(-1, 2))
    sources[part] = RecordImages(directory, key, paths)
    extras[part] = index["extras"]
  return places.PlaceDataset(
      name=name, split=split, root=directory,
      database_paths=parts["database"][0], queries_paths=parts["queries"][0],
      database_utms=parts["database"][1], queries_utms=parts["queries"][1],
      sources=sources, extras=join_extras(extras))
