"""Global retrieval evaluation: embed database and queries, rank, recall@N (spec §6.1)."""

from __future__ import annotations

import numpy as np

from data_pipelines import search
from data_pipelines.places import Neighbors, PlaceDataset

RECALL_VALUES = (1, 5, 10, 20)


def first_hit_rank(predictions: np.ndarray, positives: Neighbors) -> np.ndarray:
  """Rank (0-based) of the first correct prediction per query; K where there is none.

  predictions: (Q, K) database indices, best first.
  """
  predictions = np.asarray(predictions, np.int64)
  Q, K = predictions.shape
  num_db = int(max(predictions.max(initial=0), positives.indices.max(initial=0))) + 1
  rows = np.repeat(np.arange(Q), positives.counts)
  pos_keys = rows * num_db + positives.indices
  pred_keys = np.arange(Q)[:, None] * num_db + predictions
  hits = np.isin(pred_keys, pos_keys)
  return np.where(hits.any(axis=1), hits.argmax(axis=1), K)


def recalls(predictions: np.ndarray, positives: Neighbors,
            recall_values=RECALL_VALUES) -> dict[str, float]:
  """recall@N in percent, every query in the denominator (queries without positives count
  as misses, as in the deep-VG benchmark code that VG-SSL uses)."""
  first = first_hit_rank(predictions, positives)
  return {f"recall@{n}": float(100.0 * np.mean(first < n)) for n in recall_values}


def evaluate_places(embedder, variables: dict, places: PlaceDataset, radius: float = 25.0,
                    recall_values=RECALL_VALUES, backend: str = "device") -> dict:
  """Recall@N of `variables` on one dataset split, with descriptors and predictions."""
  db = embedder(variables, [places.abs_path(p) for p in places.database_paths],
                desc=f"{places.name}/{places.split} database")
  q = embedder(variables, [places.abs_path(p) for p in places.queries_paths],
               desc=f"{places.name}/{places.split} queries")
  _, predictions = search.knn(q, db, max(recall_values), backend)
  result = recalls(predictions, places.positives(radius), recall_values)
  result.update(queries=places.num_queries, database=places.num_database)
  return result


def format_table(results: dict[str, dict[str, dict]], recall_values=RECALL_VALUES) -> str:
  """Markdown table: one row per (stage, dataset), e.g. results = {"before": {...}, "after": ...}."""
  head = "| model | dataset | " + " | ".join(f"R@{n}" for n in recall_values) + " |"
  lines = [head, "|" + "---|" * (len(recall_values) + 2)]
  for stage, per_dataset in results.items():
    for dataset, r in per_dataset.items():
      cells = " | ".join(f"{r[f'recall@{n}']:.1f}" for n in recall_values)
      lines.append(f"| {stage} | {dataset} | {cells} |")
  return "\n".join(lines)
