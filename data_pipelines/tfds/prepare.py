"""Converts a place dataset folder into ArrayRecord files (once), for `load_records`.

  python -m data_pipelines.tfds.prepare --name synthetic --root datasets --data_dir tfds_data
  python -m data_pipelines.tfds.prepare --name pitts30k --root /data/datasets \\
      --data_dir /data/tfds --splits test

The folder must be <root>/<name>/images/<split>/{database,queries} (the `@` layout, or
raw MSLS). `synthetic` is converted with the configuration it was generated with (its
synthetic.json), or generated first with the default one. A prepared dataset is reused;
asking for splits it lacks rebuilds it with its splits and the new ones (--overwrite
rebuilds it anyway, e.g. after the images changed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from data_pipelines import formats, images, places, synthetic
from data_pipelines.tfds import records


def synthetic_on_disk(root: str, name: str = synthetic.NAME
                      ) -> synthetic.SyntheticConfig | None:
  """The configuration the synthetic dataset `<root>/<name>` was generated with, if any."""
  manifest = os.path.join(root, name, synthetic.MANIFEST)
  if not os.path.exists(manifest):
    return None
  with open(manifest) as f:
    config = json.load(f)["config"]
  return synthetic.SyntheticConfig(**{
      k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


def _prepared(directory: str) -> dict | None:
  """The "source" metadata of the dataset prepared in `directory`, if any."""
  if not os.path.exists(os.path.join(directory, "dataset_info.json")):
    return None
  tfds = records.import_tfds()
  metadata = tfds.builder_from_directory(directory).info.metadata or {}
  return metadata.get("source") if "source" in metadata else {}


def prepare(name: str, root: str, data_dir: str, splits: Sequence[str] | None = None,
            synthetic_config: synthetic.SyntheticConfig | None = None,
            overwrite: bool = False, num_shards: int | None = None) -> str:
  """Writes the `splits` (all split folders if None) of `<root>/<name>` as ArrayRecord files
  under the tfds `data_dir`; returns the prepared dataset's folder.

  `synthetic_config`: what `synthetic` is made from; None: the configuration of the folder
  there, or the default one if there is none. `num_shards`: files per split (None: tfds
  chooses from the size).
  """
  tfds = records.import_tfds()
  from data_pipelines.tfds import builder as builder_lib  # imports tensorflow_datasets

  if name == synthetic.NAME:
    synthetic_config = (synthetic_config or synthetic_on_disk(root, name)
                        or synthetic.SyntheticConfig())
    os.makedirs(root, exist_ok=True)
    synthetic.ensure_dataset(root, name, synthetic_config)
  available = builder_lib.available_splits(root, name)
  missing = [s for s in splits or () if s not in available]
  if missing:
    raise places.DatasetError(
        f"split(s) {missing} of {name!r} not found in {os.path.abspath(os.path.join(root, name))}"
        f"/images (available: {available}). Choose among those with --splits.")
  wanted = list(splits) if splits else available
  directory = records.dataset_dir(data_dir, name)
  source = _prepared(directory)
  mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  if source is not None:
    have = list(source.get("splits", []))
    fingerprint = (source.get("synthetic") or {}).get("fingerprint")
    stale = name == synthetic.NAME and fingerprint != synthetic_config.fingerprint()
    if overwrite or stale or not source:
      mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS  # deletes and rewrites it
    elif set(wanted) <= set(have):
      print(f"{name}: splits {wanted} already prepared in {directory} (--overwrite rewrites them)")
      return directory
    else:
      # A tfds dataset is written whole: keep the splits it has, add the new ones.
      wanted = have + [s for s in wanted if s not in have]
      print(f"{name}: adding splits to {directory}: rewriting it with {wanted}")
      mode = tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
  created = [d for d in (os.path.join(data_dir, records.BUILDER_NAME, name),
                         os.path.join(data_dir, "downloads")) if not os.path.exists(d)]
  builder = builder_lib.VgPlaces(config=name, data_dir=data_dir, splits=wanted,
                                 synthetic_config=synthetic_config)
  try:
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=root, download_mode=mode, num_shards=num_shards,
        compute_stats=tfds.download.ComputeStatsMode.SKIP))  # statistics would need TensorFlow
  except BaseException:
    _remove_empty(created)  # a failed first attempt leaves no empty folders behind
    raise
  return directory


def _remove_empty(folders: Sequence[str]) -> None:
  for folder in folders:
    for path, _, _ in sorted(os.walk(folder), reverse=True):  # deepest first
      try:
        os.rmdir(path)  # only succeeds on an empty folder: nothing written is deleted
      except OSError:
        pass


def describe(directory: str) -> str:
  """The files of a prepared dataset with their sizes, one per line."""
  lines, total = [], 0
  for entry in sorted(os.scandir(directory), key=lambda e: e.name):
    if entry.is_file():
      size = entry.stat().st_size
      total += size
      lines.append(f"  {size / 2**20:10.2f} MiB  {entry.name}")
  lines.append(f"  {total / 2**20:10.2f} MiB  total")
  return "\n".join([f"{os.path.abspath(directory)}:", *lines])


def main(argv: Sequence[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--name", required=True, help="dataset folder under --root, e.g. pitts30k")
  p.add_argument("--root", default="datasets", help="folder that holds <name>/images/<split>/")
  p.add_argument("--data_dir", default="tfds_data", help="where the ArrayRecord files go")
  p.add_argument("--splits", default="", help="comma-separated splits (default: all found)")
  p.add_argument("--overwrite", action="store_true", help="rewrite an already prepared dataset")
  p.add_argument("--num_shards", type=int, default=None,
                 help="files per split (default: chosen by tfds from the size)")
  a = p.parse_args(argv)
  splits = [s for s in a.splits.split(",") if s] or None
  try:
    directory = prepare(a.name, a.root, a.data_dir, splits, overwrite=a.overwrite,
                        num_shards=a.num_shards)
  except (places.DatasetError, formats.FilenameFormatError, images.ImageReadError,
          ImportError) as e:
    sys.exit(f"error: {e}")
  print(describe(directory))


if __name__ == "__main__":
  main()
