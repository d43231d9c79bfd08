"""What the `data` section of a config means for data_pipelines: the loader's options,
the synthetic world's settings, and the dataset splits it names."""

from __future__ import annotations

from data_pipelines import datasets, loader, synthetic
from data_pipelines.places import PlaceDataset


def loader_options(config) -> loader.LoaderOptions:
  dc = config.data
  return loader.LoaderOptions(tuple(dc.image_size), dc.num_workers, dc.num_threads,
                              jpeg_draft=dc.jpeg_draft, eval_resize=dc.eval_resize)


def synthetic_config(config) -> synthetic.SyntheticConfig:
  return synthetic.SyntheticConfig(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                                      for k, v in config.data.synthetic.items()})


def open_split(config, name: str, split: str) -> PlaceDataset:
  """Split `split` of dataset `name` under data.root (or from data.records_dir)."""
  dc = config.data
  return datasets.load_split(dc.root, name, split, synthetic_config(config), dc.source,
                             dc.records_dir)
