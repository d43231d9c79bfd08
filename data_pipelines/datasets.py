"""Datasets by name: the built-in synthetic set, and any folder in the `@` layout."""

from __future__ import annotations

import os

from data_pipelines import places, synthetic

SYNTHETIC = "synthetic"

# Where to get the datasets the original uses, for the error message of a missing folder.
HOW_TO_GET = {
    "msls": "Mapillary Street-Level Sequences: request it at "
            "https://www.mapillary.com/dataset/places and convert it with "
            "VPR-datasets-downloader (format_mapillary.py)",
    "pitts30k": "Pitts30k: ask the NetVLAD authors for the raw data and convert it with "
                "VPR-datasets-downloader",
    "tokyo247": "Tokyo 24/7: download and convert it with VPR-datasets-downloader",
    "nordland": "Nordland: download it with VPR-datasets-downloader",
}


def load_split(root: str, name: str, split: str,
               synthetic_config: synthetic.SyntheticConfig | None = None) -> places.PlaceDataset:
  """The `split` of dataset `name` under `root`.

  `synthetic` is generated on first use (deterministically, from `synthetic_config`).
  """
  if name == SYNTHETIC:
    synthetic.ensure_dataset(root, name, synthetic_config or synthetic.SyntheticConfig())
  elif not os.path.isdir(os.path.join(root, name)):
    how = HOW_TO_GET.get(name, f"put it in the `@` layout as {name}/images/<split>/"
                               "{database,queries}/")
    raise places.DatasetError(
        f"dataset {name!r} not found: looked in {os.path.abspath(os.path.join(root, name))}. "
        f"Get the data ({how}) and set --config.data.root to the folder that holds {name}/, "
        "or run the built-in demo with --config=configs/demo.py.")
  return places.load_at_dataset(root, name, split)
