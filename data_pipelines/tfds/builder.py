"""tensorflow-datasets builder that writes place datasets as ArrayRecord files.

One builder, one BuilderConfig per dataset name (the folder under the manual dir), so a
prepared dataset lives in <data_dir>/vg_places/<name>/<version>/. The splits to convert
(and, for `synthetic`, its configuration) are builder arguments: they choose what to
write, not which dataset it is. No TensorFlow is needed: tfds writes tf.Example protos
with its own copy of the proto and reads them back with NumPy.

  builder = VgPlaces(config="pitts30k", data_dir="tfds_data", splits=["test"])
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir="datasets"))
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds

from data_pipelines import datasets, msls, places, synthetic
from data_pipelines.tfds import records

_DESCRIPTION = """\
A visual geo-localization dataset in the `@` layout (database and query images whose file
names carry UTM coordinates), split into `<split>_database` and `<split>_queries`. Record i
of a split is image i of that part in dataset order (sorted paths). Images are the original
encoded files, byte for byte.
"""

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put the dataset folder in the manual dir (`--root` of data_pipelines.tfds.prepare) as

  <manual_dir>/<name>/images/<split>/database/*.jpg
  <manual_dir>/<name>/images/<split>/queries/*.jpg

with `@`-format file names (@utm_east@utm_north@...), as written by VPR-datasets-downloader
(pitts30k, tokyo247, nordland, msls), or MSLS in its raw layout as
<manual_dir>/msls/{train_val,test}/<city>/{query,database}/ (images/ and the CSV files).
`synthetic` is generated there on first use.
"""

# What each record holds (documented in features.json).
FEATURES_DOC = {
    "image": "the original encoded image file (JPEG or PNG), bytes unchanged",
    "path": "relative path of the image in the dataset folder, as PlaceDataset paths",
    "utm": "UTM (east, north) in metres, float64",
    "extras": "JSON object of per-image extras (PlaceDataset.extras of this part)",
}


@dataclasses.dataclass(eq=False)
class PlaceConfig(tfds.core.BuilderConfig):
  """A place dataset: `name` is its folder under the manual dir."""


def _config(name: str) -> PlaceConfig:
  how = datasets.HOW_TO_GET.get(name, "a folder in the `@` layout")
  if name == synthetic.NAME:
    how = "the built-in synthetic dataset (generated on first use)"
  return PlaceConfig(name=name, description=how)


def available_splits(root: str, name: str) -> list[str]:
  """The split folders of `<root>/<name>/images` (all of synthetic's, which is generated;
  for raw MSLS, the splits with a city folder)."""
  if name == synthetic.NAME:
    return list(synthetic.SPLITS)
  if name == "msls" and msls.is_raw_msls(os.path.join(root, name)):
    return [s for s, cities in msls.CITIES.items() if any(
        os.path.isdir(os.path.join(root, name, msls.SPLIT_SUBDIR[s], c)) for c in cities)]
  folder = os.path.join(root, name, "images")
  if not os.path.isdir(folder):
    raise places.DatasetError(
        f"dataset {name!r} not found: {os.path.abspath(folder)} does not exist. "
        + MANUAL_DOWNLOAD_INSTRUCTIONS)
  return sorted(s for s in os.listdir(folder) if os.path.isdir(os.path.join(folder, s)))


class VgPlaces(tfds.core.GeneratorBasedBuilder):
  """Place datasets (`@` layout, raw MSLS) as ArrayRecord records of the original image files."""

  VERSION = tfds.core.Version(records.VERSION)
  RELEASE_NOTES = {records.VERSION: "Original image bytes, relative path, UTM and extras."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
  BUILDER_CONFIGS = [_config(n) for n in (*datasets.HOW_TO_GET, synthetic.NAME)]

  def __init__(self, *, config: str | PlaceConfig, splits: Sequence[str] | None = None,
               synthetic_config: synthetic.SyntheticConfig | None = None,
               file_format: str = records.FILE_FORMAT, **kwargs):
    """`config`: the dataset name (any folder; known names have a predefined config).

    `splits`: the splits to convert (every split folder found if None);
    `synthetic_config`: what `synthetic` is generated from (the default if None).
    """
    if isinstance(config, str) and config not in self.builder_configs:
      config = _config(config)  # any other folder in the `@` layout
    self._splits = tuple(splits) if splits else None
    self._synthetic_config = synthetic_config
    super().__init__(config=config, file_format=file_format, **kwargs)
    self._original_state.update(splits=splits, synthetic_config=synthetic_config,
                                file_format=file_format)  # for pickling

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=_DESCRIPTION,
        features=tfds.features.FeaturesDict({
            # a scalar string, not tfds.features.Image: stored as given, never re-encoded
            "image": tfds.features.Tensor(shape=(), dtype=np.object_,
                                          doc=FEATURES_DOC["image"]),
            "path": tfds.features.Text(doc=FEATURES_DOC["path"]),
            # bytes encoding: tf.Example has no float64 and would round UTMs to float32
            "utm": tfds.features.Tensor(shape=(2,), dtype=np.float64,
                                        encoding=tfds.features.Encoding.BYTES,
                                        doc=FEATURES_DOC["utm"]),
            "extras": tfds.features.Text(doc=FEATURES_DOC["extras"]),
        }),
        homepage="https://github.com/gmberton/VPR-datasets-downloader",
        # record i must stay image i: training and evaluation index images by position
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = os.fspath(dl_manager.manual_dir)
    name = self.builder_config.name
    splits = self._splits or available_splits(root, name)
    generators, index = {}, {}
    for split in splits:
      place = datasets.load_split(root, name, split, self._synthetic_config)
      for part in records.PARTS:
        key = records.tfds_split(split, part)
        paths = place.database_paths if part == "database" else place.queries_paths
        utms = place.database_utms if part == "database" else place.queries_utms
        extras = records.part_extras(place.extras, part)
        index[key] = {"paths": list(paths), "utms": utms.tolist(), "extras": extras}
        generators[key] = self._generate_examples(place, paths, utms, extras)
    synth = None
    if name == synthetic.NAME:
      config = self._synthetic_config or synthetic.SyntheticConfig()
      synth = {"fingerprint": config.fingerprint(), "config": dataclasses.asdict(config)}
    # Written next to the records: PlaceDatasets are rebuilt without reading the images.
    self.info.metadata["source"] = {"name": name, "splits": list(splits), "synthetic": synth}
    self.info.metadata["index"] = index
    return generators

  def _generate_examples(self, place: places.PlaceDataset, paths: Sequence[str],
                         utms: np.ndarray, extras: dict[str, list]) -> Iterator[tuple[int, dict]]:
    # Integer keys in dataset order: with shuffling disabled, tfds writes records by key.
    for i, path in enumerate(paths):
      with open(place.abs_path(path), "rb") as f:
        data = f.read()
      yield i, {"image": data, "path": path, "utm": utms[i],
                "extras": records.image_extras(extras, i)}
