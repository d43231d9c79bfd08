"""Place datasets as ArrayRecord files written by a tensorflow-datasets builder.

`prepare` converts an image folder into records once (the original encoded bytes, the
relative path, the UTM and per-image extras); `load_records` reads them back as a
PlaceDataset whose images come from the records, pixel-identical to the files.

tensorflow_datasets is imported only where it is needed (the builder, and the readers
opened in each process), so this package imports without it.
"""

from data_pipelines.tfds.records import RecordImages, dataset_dir, load_records

__all__ = ["RecordImages", "dataset_dir", "load_records"]
