"""What an evaluation writes besides its scores: descriptors, the MSLS challenge
prediction file, recall curves and prediction pictures (layout in vgssl_jax/evaluate.py)."""

from __future__ import annotations

import json
import os
import shutil

import jax
import numpy as np

from data_pipelines.places import PlaceDataset
from vgssl_jax.evaluation import visualize
from vgssl_jax.evaluation.metrics import check_predictions, hit_matrix, recall_curve

MSLS_TOP_K = 20  # columns of the official prediction file
# what one evaluation writes under its folder: replaced as a whole by the next one
FAMILIES = ("descriptors", "predictions", "plots", "preds")
RESULT_FILES = ("results.json", "results.md", "model.json")


def write_json(path: str, data) -> None:
  """`data` as indented JSON at `path`, from process 0 (the one that writes results)."""
  if jax.process_index() == 0:
    with open(path, "w") as f:
      json.dump(data, f, indent=1)


def staging_dir(workdir: str) -> str:
  """An empty folder inside `workdir` to write an evaluation's outputs into first."""
  path = os.path.join(workdir, ".incoming")
  shutil.rmtree(path, ignore_errors=True)
  os.makedirs(path)
  return path


def publish(staging: str, workdir: str) -> None:
  """Moves a finished evaluation from `staging` into `workdir`: each output family and
  result file replaces its predecessor whole (a family this evaluation did not write is
  removed), so nothing stale remains beside the new outputs; if the evaluation failed
  before this point, the previous outputs are untouched."""
  for name in FAMILIES + RESULT_FILES:
    old, new = os.path.join(workdir, name), os.path.join(staging, name)
    if os.path.isdir(old):
      trash = os.path.join(staging, f".old-{name}")
      os.replace(old, trash)
    elif os.path.exists(old) and not os.path.exists(new):
      os.remove(old)
    if os.path.exists(new):
      os.replace(new, old)
  shutil.rmtree(staging, ignore_errors=True)


def write_path_predictions(path: str, predictions: np.ndarray, places: PlaceDataset) -> None:
  """predictions/<dataset>.txt: per query a line `query db_1 ... db_K` of image paths
  (relative to the dataset's folder), best first."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  db = places.database_paths
  with open(path, "w") as f:
    for query, row in zip(places.queries_paths, predictions):
      f.write(" ".join([query, *(db[i] for i in row)]) + "\n")


def write_descriptors(out_dir: str, places: PlaceDataset, database: np.ndarray,
                      queries: np.ndarray, test_method: str) -> None:
  """descriptors/<dataset>.npz: database (N, D), queries (Q, D) (or (Q, 5, D) for the methods
  that search crops separately) and both path lists, in ranking order."""
  os.makedirs(os.path.join(out_dir, "descriptors"), exist_ok=True)
  exported = (queries[:, 0] if queries.shape[1] == 1 else
              (queries.mean(1) if test_method == "five_crops" else queries))
  np.savez(os.path.join(out_dir, "descriptors", f"{places.name}.npz"), database=database,
           queries=exported, database_paths=np.array(places.database_paths),
           queries_paths=np.array(places.queries_paths))


def write_curve(out_dir: str, places: PlaceDataset, predictions: np.ndarray, positives,
                only_with_positives: bool, title: str) -> list[float]:
  """plots/<dataset>_recall.png; returns the curve (recall@N for N = 1..K, percent)."""
  curve = recall_curve(predictions, positives, only_with_positives)
  visualize.recall_curve(os.path.join(out_dir, "plots", f"{places.name}_recall.png"), curve,
                         title)
  return [round(float(r), 4) for r in curve]


def write_pictures(out_dir: str, places: PlaceDataset, predictions: np.ndarray, positives,
                   k: int, only_wrong: bool) -> int:
  """preds/<dataset>/<query>.jpg: each query with its top k; returns how many."""
  hits = hit_matrix(predictions[:, :k], positives)
  return visualize.save_predictions(os.path.join(out_dir, "preds", places.name),
                                    places.images("queries"), places.images("database"),
                                    predictions[:, :k], hits, only_wrong)


def write_msls_predictions(path: str, predictions: np.ndarray, places: PlaceDataset,
                           k: int = MSLS_TOP_K) -> None:
  """Writes the official prediction file: one line `query_key db_key_1 ... db_key_k` per
  query, space separated, keys without .jpg (np.loadtxt-readable, as evaluate.py reads it).

  predictions: (Q, K) database indices of places' queries, best first; min(k, K) columns
  are written. Raises ValueError on an index outside the database or a duplicate in a row
  (the challenge rejects duplicate predictions; deduplicate before calling).
  """
  predictions = check_predictions(predictions, places, allow_empty=False)[:, :k]
  if k < 1 or predictions.shape[1] == 0:
    raise ValueError(f"nothing to write: k = {k}, predictions have shape {predictions.shape}.")
  ranked = np.sort(predictions, axis=1)
  dup = ranked[:, 1:] == ranked[:, :-1]
  if dup.any():
    q = int(np.flatnonzero(dup.any(axis=1))[0])
    raise ValueError(f"query {q} ({places.extras['queries_key'][q]}) has duplicate predictions "
                     f"in its top {predictions.shape[1]}: {predictions[q].tolist()}. The "
                     "challenge rejects duplicates: keep the first occurrence of each index.")
  query_keys = places.extras["queries_key"]
  db_keys = places.extras["database_key"]
  if os.path.dirname(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    for q in range(len(predictions)):
      f.write(" ".join([str(query_keys[q]), *db_keys[predictions[q]].tolist()]) + "\n")
