"""The evaluation runner: one model on several datasets (embed -> rank -> re-rank ->
score -> export), also used for validation during training.

`evaluate_places` is the pipeline for one split; a re-ranking step (predictions in,
predictions out, e.g. stage 2's R2Former) plugs in between the global ranking and the
scores, and is scored beside it with the prefix "reranked_".
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable

import jax
import numpy as np

from data_pipelines import datasets
from data_pipelines import query_views
from data_pipelines.places import PlaceDataset
from vgssl_jax import data_config, sharding
from vgssl_jax.config import base_config
from vgssl_jax.errors import ConfigError, check_choice
from vgssl_jax.evaluation import exports, loading, metrics, retrieval, search
from vgssl_jax.evaluation import rerank as rerank_lib
from vgssl_jax.evaluation.embedder import Embedder
from vgssl_jax.objectives import registry

# (split, global predictions (Q, K)) -> re-ranked predictions (Q, K')
Reranker = Callable[[PlaceDataset, np.ndarray], np.ndarray]


_EVAL = base_config().eval  # the defaults, written once in the schema


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """What the `eval` section of a config means for one evaluation."""
  radius: float = _EVAL.positive_radius
  recall_values: tuple[int, ...] = tuple(_EVAL.recall_values)
  backend: str = _EVAL.backend
  test_method: str = _EVAL.test_method
  majority_weight: float = _EVAL.majority_weight
  num_preds_to_save: int = _EVAL.num_preds_to_save
  save_only_wrong_preds: bool = _EVAL.save_only_wrong_preds
  rerank_top: int = _EVAL.rerank_top            # > 0: the R2Former re-ranks the global top-N
  rerank_batch_size: int = _EVAL.rerank_batch_size

  @classmethod
  def from_config(cls, ec) -> "EvalOptions":
    return cls(ec.positive_radius, tuple(ec.recall_values), ec.backend, ec.test_method,
               ec.majority_weight, ec.num_preds_to_save, ec.save_only_wrong_preds,
               ec.rerank_top, ec.rerank_batch_size)

  def reranker(self, embedder, variables: dict) -> Reranker | None:
    """The re-ranking step of these options for one model (None without rerank_top)."""
    if not self.rerank_top:
      return None
    return rerank_lib.Reranker(embedder, variables, self.rerank_top, self.rerank_batch_size)

  def for_validation(self) -> "EvalOptions":
    """As the original's validation during training: hard resize, no pictures."""
    return dataclasses.replace(self, test_method="hard_resize", num_preds_to_save=0)


# warn when more queries than this share have no database image within the radius
MANY_WITHOUT_POSITIVE = 0.1


def queries_without_positive(places: PlaceDataset, radius: float) -> int:
  """How many queries have no database image within `radius` (they count as misses in
  recall@N, the deep-VG benchmark's convention); warns when they are many."""
  without = int((places.positives(radius).counts == 0).sum())
  if without > MANY_WITHOUT_POSITIVE * places.num_queries:
    logging.warning("%s/%s: %d of %d queries have no database image within %g m, so no "
                    "ranking can find them (recall@N counts them as misses): check the "
                    "coordinates in the file names and eval.positive_radius", places.name,
                    places.split, without, places.num_queries, radius)
  return without


def score(predictions: np.ndarray, places: PlaceDataset, options: EvalOptions,
          prefix: str = "") -> dict:
  """{prefix + "recall@N": ...} of one ranking (MSLS raw: the official metrics)."""
  if not places.has_gps:
    return {}
  if places.is_msls:
    result = metrics.msls_metrics(predictions, places, tuple(options.recall_values),
                                  options.radius)
  else:
    result = metrics.recalls(predictions, places.positives(options.radius),
                             options.recall_values)
  return {prefix + k: v for k, v in result.items()}


def eval_datasets(config) -> list[str]:
  """The datasets an evaluation scores: eval.datasets, else data.name."""
  names = [n.strip() for n in str(config.eval.datasets).split(",") if n.strip()]
  return names or [config.data.name]


def check_config(config, descriptor_size: int) -> None:
  """ConfigError naming the setting when the `eval` section is impossible for a network of
  `descriptor_size`-d descriptors (before any data or model work)."""
  ec = config.eval
  check_choice("eval.backend", ec.backend, search.BACKENDS)
  check_choice("eval.test_method", ec.test_method, query_views.METHODS)
  for key in ("pca_dim", "num_preds_to_save", "pca_images"):
    if ec[key] < 0:
      raise ConfigError(f"eval.{key}={ec[key]} must be >= 0.")
  recall_values = tuple(ec.recall_values)
  if not recall_values or any(not isinstance(n, int) or n < 1 for n in recall_values):
    raise ConfigError(f"eval.recall_values={recall_values} must be ranks N >= 1 (recall@N), e.g. "
                      "--config.eval.recall_values=1,5,10,20.")
  if not ec.positive_radius > 0:
    raise ConfigError(f"eval.positive_radius={ec.positive_radius} must be > 0.")
  if ec.pca_dim > descriptor_size:
    raise ConfigError(f"eval.pca_dim={ec.pca_dim} exceeds the descriptor size "
                      f"{descriptor_size} (model.fc_output_dim={config.model.fc_output_dim}): "
                      "PCA can only reduce it.")
  if ec.pca_dim and ec.pca_dim > ec.pca_images:
    raise ConfigError(f"eval.pca_dim={ec.pca_dim} exceeds eval.pca_images={ec.pca_images}"
                      ": PCA needs at least as many images as dimensions.")
  if ec.rerank_top < 0 or ec.rerank_batch_size < 1:
    raise ConfigError(f"eval.rerank_top={ec.rerank_top} must be >= 0 and "
                      f"eval.rerank_batch_size={ec.rerank_batch_size} >= 1.")
  if ec.rerank_top and not config.model.local_dim:
    raise ConfigError(f"eval.rerank_top={ec.rerank_top}: re-ranking needs a network with local "
                      "tokens and an R2Former (a stage-2 run, model.local_dim > 0); set "
                      "eval.rerank_top=0 for global retrieval only.")


def evaluate_places(embedder, variables: dict, places: PlaceDataset,
                    options: EvalOptions = EvalOptions(), pca: retrieval.PCA | None = None,
                    out_dir: str | None = None, rerank: Reranker | None = None) -> dict:
  """Scores one dataset split; with `rerank` also the re-ranked list ("reranked_*" keys).
  With `out_dir` also writes the exports (see vgssl_jax/evaluate.py)."""
  db, q = retrieval.embed_places(embedder, variables, places, options.test_method,
                                 embedder.options.image_size)
  if pca is not None:
    db, q = pca(db), pca(q.reshape(-1, q.shape[-1])).reshape(*q.shape[:2], -1)
  k = min(len(db), max(list(options.recall_values) + [options.num_preds_to_save] +
                       [exports.MSLS_TOP_K if places.is_msls else 0] +
                       [options.rerank_top if rerank is not None else 0]))
  predictions = retrieval.rank(q, db, k, options.test_method, options.backend,
                               options.majority_weight)
  result = {"queries": places.num_queries, "database": places.num_database,
            "test_method": options.test_method}
  if pca is not None:
    result["pca_dim"] = int(pca.components.shape[0])
  if places.has_gps:
    result["queries_without_positive"] = queries_without_positive(places, options.radius)
  result.update(score(predictions, places, options))
  final = predictions
  if rerank is not None:
    final = rerank(places, predictions)
    result.update(score(final, places, options, prefix="reranked_"))
  if not places.has_gps:
    logging.info("%s/%s has no coordinates: predictions and descriptors only, no recall%s",
                 places.name, places.split,
                 " (score them on the challenge server)" if places.is_msls else "")
  if out_dir is not None:
    result.update(write_exports(out_dir, places, db, q, final, options))
  return result


def write_exports(out_dir: str, places: PlaceDataset, db: np.ndarray, q: np.ndarray,
                  predictions: np.ndarray, options: EvalOptions) -> dict:
  """The exports of one split (the final ranking's); returns what results.json records."""
  record = {}
  exports.write_descriptors(out_dir, places, db, q, options.test_method)
  path = os.path.join(out_dir, "predictions", f"{places.name}.txt")
  if places.is_msls:
    exports.write_msls_predictions(path, predictions, places)
  else:
    exports.write_path_predictions(path, predictions, places)
  record["predictions_file"] = os.path.relpath(path, out_dir)
  if places.has_gps:
    positives = places.positives(options.radius)
    record["recall_curve"] = exports.write_curve(
        out_dir, places, predictions, positives, only_with_positives=places.is_msls,
        title=f"{places.name}/{places.split}: recall@N (%), {options.test_method}")
    if options.num_preds_to_save:
      record["saved_predictions"] = exports.write_pictures(
          out_dir, places, predictions, positives,
          min(options.num_preds_to_save, predictions.shape[1]), options.save_only_wrong_preds)
  return record


@dataclasses.dataclass(frozen=True)
class EvalSets:
  """The splits an evaluation scores, opened and checked before any model work."""
  sets: dict[str, tuple[PlaceDataset, dict]]   # name -> (split, protocol check)
  pca: PlaceDataset | None = None              # whose database images fit the PCA


def open_eval_sets(config) -> EvalSets:
  """The eval datasets (and the PCA's), opened and checked before any model work starts:
  a protocol mismatch or a PCA larger than its images stops here."""
  sets = {}
  ec = config.eval
  folders = data_config.open_folders(config)
  if folders is not None and str(ec.datasets).strip():
    raise ConfigError(f"eval.datasets={ec.datasets} and eval.database_folder/queries_folder are "
                      "both set: evaluate either named datasets or two folders (unset one).")
  for name in [folders.name] if folders is not None else eval_datasets(config):
    places = folders or data_config.open_split(config, name, ec.split)
    sets[name] = (places, {} if folders else datasets.check_protocol(places, ec.check_counts))
    if ec.rerank_top > places.num_database:
      raise ConfigError(f"eval.rerank_top={ec.rerank_top} exceeds the {places.num_database} "
                        f"database images of {places.name}/{places.split}: lower "
                        "eval.rerank_top.")
  pca = None
  if ec.pca_dim:
    pca = data_config.open_split(config, ec.pca_dataset or config.data.name, ec.pca_split)
    if ec.pca_dim > pca.num_database:
      raise ConfigError(f"eval.pca_dim={ec.pca_dim} exceeds the {pca.num_database} database "
                        f"images of {pca.name}/{pca.split} that fit the PCA; lower eval.pca_dim "
                        "or choose another eval.pca_dataset / eval.pca_split.")
  return EvalSets(sets, pca)


def fit_pca(config, embedder, variables: dict, places: PlaceDataset | None) -> retrieval.PCA | None:
  """PCA fitted on up to eval.pca_images database images of `places` (eval.pca_dataset,
  as the original, which fits on a training folder); None without eval.pca_dim."""
  ec = config.eval
  if not ec.pca_dim:
    return None
  n = min(ec.pca_images, places.num_database)
  indices = np.sort(np.random.default_rng(config.seed).choice(places.num_database, n,
                                                              replace=False))
  feats = embedder(variables, places.images("database"), indices, desc="PCA fit")
  logging.info("PCA to %d dims fitted on %d database images of %s/%s", ec.pca_dim, n,
               places.name, places.split)
  return retrieval.PCA.fit(feats, ec.pca_dim)


def evaluate_all(config, embedder, variables: dict, eval_sets: EvalSets,
                 out_dir: str | None = None) -> dict:
  """{dataset: result} for the eval datasets, with optional exports under out_dir."""
  options = EvalOptions.from_config(config.eval)
  pca = fit_pca(config, embedder, variables, eval_sets.pca)
  rerank = options.reranker(embedder, variables)
  return {name: {**evaluate_places(embedder, variables, places, options, pca, out_dir, rerank),
                 "split": places.split, **check}
          for name, (places, check) in eval_sets.sets.items()}


def format_table(results: dict[str, dict[str, dict]], recall_values=tuple(_EVAL.recall_values)
                 ) -> str:
  """Markdown table: one row per (model, dataset), e.g. results = {"before": {...}, ...};
  a re-ranked result adds a row "<dataset> re-ranked" under its global one."""
  head = "| model | dataset | " + " | ".join(f"R@{n}" for n in recall_values) + " |"
  lines = [head, "|" + "---|" * (len(recall_values) + 2)]
  for stage, per_dataset in results.items():
    for dataset, r in per_dataset.items():
      for prefix, label in (("", dataset), ("reranked_", f"{dataset} re-ranked")):
        if prefix and f"{prefix}recall@{recall_values[0]}" not in r:
          continue
        cells = " | ".join(f"{r[f'{prefix}recall@{n}']:.1f}" if f"{prefix}recall@{n}" in r
                           else "-" for n in recall_values)
        lines.append(f"| {stage} | {label} | {cells} |")
  return "\n".join(lines)


def evaluate_model(config, checkpoint: str | None, workdir: str) -> dict:
  """What `python -m vgssl_jax.evaluate` does: one model on the eval datasets, results and
  exports written under `workdir` (see vgssl_jax/evaluate.py)."""
  if os.path.exists(os.path.join(workdir, "config.json")):  # its results.json is the run's
    raise ConfigError(f"--workdir {workdir} holds a training run; write the evaluation to "
                      f"another folder, e.g. --workdir {os.path.join(workdir, 'eval')}.")
  trained_size = tuple(config.data.image_size)
  if checkpoint:
    trained_size = loading.adopt_checkpoint_model(config, checkpoint)
  mesh = sharding.make_mesh(config.num_devices)
  eval_sets = open_eval_sets(config)
  model = registry.build_network(config.model, config.method, trained_size)
  if checkpoint:
    loading.check_checkpoint(config, checkpoint, model)  # before any compilation or writing
  os.makedirs(workdir, exist_ok=True)
  embedder = Embedder.from_config(config, model, mesh)
  variables, info = loading.load_variables(config, checkpoint, model, mesh)
  logging.info("evaluating %s on %s", info.get("checkpoint") or "the initial model",
               ", ".join(eval_sets.sets))
  staging = exports.staging_dir(workdir) if jax.process_index() == 0 else None
  results = evaluate_all(config, embedder, variables, eval_sets, out_dir=staging)
  table = format_table({"model": results}, tuple(config.eval.recall_values))
  if jax.process_index() == 0:
    exports.write_json(os.path.join(staging, "results.json"), results)
    with open(os.path.join(staging, "results.md"), "w") as f:
      f.write(f"# Evaluation\n\nmodel: {info.get('checkpoint') or info['note']}"
              f"{' (step %s)' % info['step'] if info.get('step') is not None else ''}, "
              f"test method {config.eval.test_method}, split {config.eval.split}\n\n{table}\n")
    exports.write_json(os.path.join(staging, "model.json"),
                       {**info, "config": json.loads(config.to_json_best_effort())})
    exports.publish(staging, workdir)
  print(f"\nRecall@N (%), {config.eval.split} split:\n{table}\nresults: "
        f"{os.path.join(workdir, 'results.json')}", flush=True)
  return results
