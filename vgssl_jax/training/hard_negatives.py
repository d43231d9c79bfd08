"""Stage 2's precomputed hard negatives (pre_compute_mining.py): for every training query,
the database images its stage-1 descriptor ranks highest, without its soft positives.

The training database and queries are embedded with the global model, ranked by dot
product on the device (chunks of queries, top 500), the query's soft positives (within
train.negative_radius, 25 m) dropped keeping the order, and the first 200 stored, -1
padded (data_pipelines.mining.hard_negative_lists). The file (`hard_negatives.npz` in the
run's folder, or rerank.hard_negatives) records the dataset and the model it was computed
from: a file of another dataset or model is refused, never silently used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import numpy as np

from data_pipelines import mining
from data_pipelines.places import TrainPlaces
from vgssl_jax.errors import ConfigError
from vgssl_jax.evaluation import search

FILE = "hard_negatives.npz"


def dataset_identity(train: TrainPlaces) -> dict:
  """What the lists index: the training split's images (paths hashed) and query rows."""
  places = train.places
  digest = hashlib.sha1()
  for path in list(places.database_paths) + [places.queries_paths[i] for i in train.query_ids]:
    digest.update(os.path.basename(str(path)).encode() + b"\0")
  return {"dataset": f"{places.name}/{places.split}", "database": int(places.num_database),
          "queries": int(len(train.query_ids)), "paths_sha1": digest.hexdigest()}


def model_fingerprint(variables: dict) -> str:
  """A hash of the global branch's weights (backbone, aggregation) that rank the lists."""
  digest = hashlib.sha1()
  params = variables["params"]
  tree = {k: params[k] for k in ("backbone", "aggregation") if k in params}
  for leaf in jax.tree.leaves(jax.device_get(tree)):
    digest.update(np.ascontiguousarray(leaf).tobytes())
  return digest.hexdigest()


def compute(embedder, variables: dict, train: TrainPlaces, chunk: int = 512) -> np.ndarray:
  """(len(train.query_ids), 200) hard negatives of each training query (see above)."""
  places = train.places
  db = embedder(variables, places.images("database"), desc="hard negatives: database")
  q = embedder(variables, places.images("queries"), train.query_ids,
               desc="hard negatives: queries")
  _, ranked = search.device_dot_topk(q, db, mining.HARD_NEGATIVES_RANKED, chunk)
  return mining.hard_negative_lists(ranked, train.soft_positives)


def _describe(meta: dict) -> str:
  return f"{meta['dataset']} ({meta['database']} database images, {meta['queries']} queries)"


def load(path: str, train: TrainPlaces, fingerprint: str | None) -> np.ndarray:
  """The lists of `path`, checked against this training split and (when given) the model's
  fingerprint; ConfigError naming the mismatch otherwise."""
  try:
    with np.load(path) as f:
      lists, meta = f["lists"], json.loads(str(f["meta"]))
  except (OSError, KeyError, ValueError) as e:
    raise ConfigError(f"{path} is not a hard-negative list written by vgssl_jax ({e}); delete "
                      "it or set rerank.hard_negatives to another file.") from None
  want = dataset_identity(train)
  if {k: meta.get(k) for k in want} != want:
    raise ConfigError(f"{path} was computed for {_describe(meta)}, not for this run's "
                      f"{_describe(want)}: it is stale. Delete it (it is recomputed) or point "
                      "rerank.hard_negatives at the list of this dataset.")
  bad = np.argwhere((lists < -1) | (lists >= train.places.num_database))
  if lists.ndim != 2 or len(lists) != want["queries"] or len(bad):
    what = (f"entry {int(lists[tuple(bad[0])])} in row {bad[0][0]}" if len(bad) else
            f"shape {lists.shape}")
    raise ConfigError(f"{path} does not hold valid hard-negative lists ({what}; expected "
                      f"{want['queries']} rows of database indices 0..{want['database'] - 1}, -1 "
                      "for padding): it was edited or damaged. Delete it to recompute it, or "
                      "point rerank.hard_negatives at an intact list.")
  if fingerprint is not None and meta.get("model") != fingerprint:
    raise ConfigError(f"{path} was ranked by another model than this run's global network "
                      "(its weights' fingerprint differs): delete it to recompute it with this "
                      "model, or point rerank.hard_negatives at the list of this model.")
  return lists


def load_or_compute(config, workdir: str, embedder, variables: dict, train: TrainPlaces,
                    check_model: bool) -> np.ndarray:
  """The run's lists: rerank.hard_negatives, else `<workdir>/hard_negatives.npz`, computed
  and written there when absent. `check_model`: compare the model fingerprint (at the start
  of training; a resumed joint fine-tuning has moved the weights on since)."""
  path = config.rerank.hard_negatives or os.path.join(workdir, FILE)
  fingerprint = model_fingerprint(variables) if check_model else None
  if os.path.exists(path):
    lists = load(path, train, fingerprint)
    logging.info("hard negatives: %s (%d queries x %d)", path, *lists.shape)
    return lists
  lists = compute(embedder, variables, train)
  meta = {**dataset_identity(train), "model": fingerprint or model_fingerprint(variables),
          "negative_radius": float(config.train.negative_radius)}
  if jax.process_index() == 0:
    tmp = path + ".tmp.npz"
    np.savez(tmp, lists=lists, meta=json.dumps(meta))
    os.replace(tmp, path)
  valid = (lists[:, :config.rerank.neg_hardness] >= 0).sum(axis=1)
  logging.info("hard negatives: computed for %d queries, written to %s (at least %d valid among "
               "each query's first %d)", len(lists), path, int(valid.min()) if len(valid) else 0,
               config.rerank.neg_hardness)
  return lists
