"""What the `data` section of a config means for data_pipelines: the loader's options,
the synthetic world's settings, and the dataset splits it names (and the folders
eval.database_folder / eval.queries_folder name)."""

from __future__ import annotations

from data_pipelines import datasets, images, loader, places, synthetic, synthetic_gsv
from data_pipelines.places import PlaceDataset
from vgssl_jax.errors import ConfigError, check_choice


def eval_image_size(config) -> tuple[int, int]:
  """(H, W) of evaluation, validation and mining images: eval.image_size, else
  data.image_size."""
  return tuple(config.eval.get("image_size") or config.data.image_size)


def loader_options(config, evaluation: bool = False) -> loader.LoaderOptions:
  """The loader's options: at data.image_size (training batches) or, with `evaluation`, at
  eval_image_size (what the embedder reads)."""
  dc = config.data
  size = eval_image_size(config) if evaluation else tuple(dc.image_size)
  return loader.LoaderOptions(size, dc.num_workers, dc.num_threads,
                              jpeg_draft=dc.jpeg_draft, eval_resize=dc.eval_resize)


def _settings(cls, section):
  """Dataclass `cls` from a config section (its lists back to the tuples it holds)."""
  return cls(**{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in section.items()})


def synthetic_config(config) -> synthetic.SyntheticConfig:
  return _settings(synthetic.SyntheticConfig, config.data.synthetic)


def synthetic_gsv_config(config) -> synthetic_gsv.SyntheticGSVConfig:
  return _settings(synthetic_gsv.SyntheticGSVConfig, config.data.gsv.synthetic)


def open_split(config, name: str, split: str) -> PlaceDataset:
  """Split `split` of dataset `name` under data.root (or from data.records_dir)."""
  dc = config.data
  return datasets.load_split(dc.root, name, split, synthetic_config(config), dc.source,
                             dc.records_dir)


def open_folders(config) -> PlaceDataset | None:
  """eval.database_folder and eval.queries_folder as one split named "folders" (None when
  they are not set)."""
  ec = config.eval
  if not ec.database_folder and not ec.queries_folder:
    return None
  if not ec.database_folder or not ec.queries_folder:
    missing = "eval.queries_folder" if ec.database_folder else "eval.database_folder"
    raise ConfigError(f"{missing} is not set: evaluating folders needs both "
                      "eval.database_folder and eval.queries_folder.")
  return places.load_folders(ec.database_folder, ec.queries_folder, "folders",
                             ("eval.database_folder", "eval.queries_folder"))


def check_config(config) -> None:
  """ConfigError naming the setting when the data section is impossible."""
  dc = config.data
  check_choice("data.source", dc.source, datasets.SOURCES)
  check_choice("data.eval_resize", dc.eval_resize, images.RESIZES)
  for key, size in (("data.image_size", tuple(dc.image_size)),
                    ("eval.image_size", tuple(config.eval.get("image_size") or (32, 32)))):
    if len(size) != 2 or not all(isinstance(v, int) for v in size) or min(size) < 32:
      written = "x".join(map(str, size)).replace("'", "")
      raise ConfigError(f"{key}={written} must be (height, width) in pixels, each >= 32, "
                        f"written with a comma: --config.{key}=480,640.")
