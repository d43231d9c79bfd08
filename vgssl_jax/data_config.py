"""What the `data` section of a config means for data_pipelines: the loader's options,
the synthetic world's settings, and the dataset splits it names."""

from __future__ import annotations

from data_pipelines import datasets, images, loader, synthetic
from data_pipelines.places import PlaceDataset
from vgssl_jax.errors import ConfigError, check_choice


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


def check_config(config) -> None:
  """ConfigError naming the setting when the data section is impossible."""
  dc = config.data
  check_choice("data.source", dc.source, datasets.SOURCES)
  check_choice("data.eval_resize", dc.eval_resize, images.RESIZES)
  size = tuple(dc.image_size)
  if len(size) != 2 or not all(isinstance(v, int) for v in size) or min(size) < 32:
    written = "x".join(map(str, size)).replace("'", "")
    raise ConfigError(f"data.image_size={written} must be (height, width) in pixels, each >= 32, "
                      "written with a comma: --config.data.image_size=480,640.")
