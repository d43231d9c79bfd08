"""Datasets by name: the built-in synthetic set, MSLS in its raw layout, any `@` folder,
and the same from prepared ArrayRecord files; protocol checks for the known benchmarks."""

from __future__ import annotations

import difflib
import logging
import os

from data_pipelines import places, synthetic

SOURCES = ("files", "array_record")

# Where to get the datasets the original uses, for the error message of a missing folder.
HOW_TO_GET = {
    "msls": "Mapillary Street-Level Sequences: request it at "
            "https://www.mapillary.com/dataset/places and unpack it as msls/train_val/<city>/... "
            "(the raw layout, for the official protocol) or convert it with "
            "VPR-datasets-downloader (format_mapillary.py)",
    "pitts30k": "Pitts30k: ask the NetVLAD authors for the raw data and convert it with "
                "VPR-datasets-downloader",
    "tokyo247": "Tokyo 24/7: download and convert it with VPR-datasets-downloader",
    "nordland": "Nordland: download it with VPR-datasets-downloader",
}

# Official (database, queries) counts of the benchmark splits (docs/datasets.md, "Official
# protocol sizes").
PROTOCOL_COUNTS = {
    ("pitts30k", "train"): (10_000, 7_416),
    ("pitts30k", "val"): (10_000, 7_608),
    ("pitts30k", "test"): (10_000, 6_816),
    ("tokyo247", "test"): (75_984, 315),
    ("msls", "val"): (18_871, 740),
}
USUAL_CAUSE = {
    "msls": "the VPR-datasets-downloader split keeps all ~11k queries of cph + sf, while the "
            "official protocol (mapillary_sls API) keeps 740; put MSLS in its raw layout "
            "(msls/train_val/<city>/...) for the official protocol",
    "pitts30k": "an incomplete download or conversion (the NetVLAD .mat split files)",
    "tokyo247": "queries from another release (the benchmark uses 247query_subset_v2, 315 "
                "queries) or an incomplete database",
}


def load_split(root: str, name: str, split: str,
               synthetic_config: synthetic.SyntheticConfig | None = None,
               source: str = "files", records_dir: str = "") -> places.PlaceDataset:
  """The `split` of dataset `name` under `root`.

  `synthetic` is generated on first use (deterministically, from `synthetic_config`);
  `msls` is read in its raw layout when `<root>/msls/train_val` or `test` exists. With
  source="array_record" the images come from the ArrayRecord files prepared under
  `records_dir` (python -m data_pipelines.tfds.prepare).
  """
  if source == "array_record":
    from data_pipelines.tfds import records  # needs the tfds extra
    return records.load_records(records_dir, name, split, synthetic_config)
  if source != "files":
    raise ValueError(f"unknown data source {source!r}; expected one of {SOURCES}")
  folder = os.path.join(root, name)
  if name == synthetic.NAME:
    synthetic.ensure_dataset(root, name, synthetic_config or synthetic.SyntheticConfig())
  elif name == "msls" and os.path.isdir(folder):
    from data_pipelines import msls
    if msls.is_raw_msls(folder):
      return msls.load_msls(folder, split)
  elif not os.path.isdir(folder):
    raise places.DatasetError(_not_found(root, name))
  return places.load_at_dataset(root, name, split)


def available(root: str) -> list[str]:
  """Dataset names usable under `root`: its dataset folders, and the built-in synthetic one."""
  found = [d for d in (sorted(os.listdir(root)) if os.path.isdir(root) else [])
           if os.path.isdir(os.path.join(root, d, "images"))
           or os.path.isdir(os.path.join(root, d, "train_val"))
           or os.path.isdir(os.path.join(root, d, "test"))]
  return sorted(set(found) | {synthetic.NAME})


def _not_found(root: str, name: str) -> str:
  names = available(root)
  close = difflib.get_close_matches(name, names + list(HOW_TO_GET), n=1)
  text = f"dataset {name!r} not found: looked in {os.path.abspath(os.path.join(root, name))}."
  if close and close[0] != name:
    text += f" Did you mean {close[0]!r}?"
  text += f" Available under {os.path.abspath(root)}: {', '.join(names)} (synthetic is built in)."
  if name in HOW_TO_GET:
    text += (f" To use {name}: {HOW_TO_GET[name]}, and set --config.data.root to the folder "
             f"that holds {name}/.")
  else:
    text += (f" A dataset of your own goes in the `@` layout as {name}/images/<split>/"
             "{database,queries}/ under --config.data.root.")
  return text


def check_protocol(dataset: places.PlaceDataset, enabled: bool = True) -> dict:
  """Compares a known benchmark split with its official counts.

  Returns {"protocol": ...} (and "warnings") for results.json. A mismatch raises
  DatasetError naming both counts and the usual cause, unless `enabled` is False.
  """
  key = (dataset.name, dataset.split)
  if key not in PROTOCOL_COUNTS:
    return {"protocol": "no official counts known for this split"}
  want = PROTOCOL_COUNTS[key]
  got = (dataset.num_database, dataset.num_queries)
  if got == want:
    return {"protocol": "official counts"}
  text = (f"{dataset.name}/{dataset.split} has {got[0]:,} database images and {got[1]:,} "
          f"queries, but the official protocol has {want[0]:,} and {want[1]:,}")
  if not enabled:
    warning = f"{text}: count check disabled (eval.check_counts=False), results are not comparable"
    logging.warning(warning)
    return {"protocol": "count check disabled", "warnings": [warning]}
  raise places.DatasetError(
      f"{text}. Usual cause: {USUAL_CAUSE.get(dataset.name, 'a subset or another release')}. "
      "For subsets and custom copies pass --config.eval.check_counts=False.")
