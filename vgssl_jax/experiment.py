"""What training and the evaluation runner share: datasets from a config, the model and
its embedder, PCA, and scoring a model on the configured datasets."""

from __future__ import annotations

import logging

import jax
import numpy as np
from jax.sharding import Mesh

from data_pipelines import datasets, loader, synthetic
from data_pipelines.places import PlaceDataset
from vgssl_jax import evaluation, parallel
from vgssl_jax.config import eval_datasets
from vgssl_jax.inference import Embedder
from vgssl_jax.methods import LossConfig, Method, make_method
from vgssl_jax.models.network import build_model


def synthetic_config(config) -> synthetic.SyntheticConfig:
  return synthetic.SyntheticConfig(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                                      for k, v in config.data.synthetic.items()})


def open_split(config, name: str, split: str) -> PlaceDataset:
  dc = config.data
  return datasets.load_split(dc.root, name, split, synthetic_config(config), dc.source,
                             dc.records_dir)


def build_method(config) -> Method:
  model = build_model(config.model, config.method)
  return make_method(config.method, model, LossConfig(**config.loss.to_dict()))


def build_embedder(config, method: Method, mesh: Mesh, progress: bool = True) -> Embedder:
  dc = config.data
  options = loader.LoaderOptions(tuple(dc.image_size), dc.num_workers, dc.num_threads,
                                  jpeg_draft=dc.jpeg_draft)
  return Embedder(method.model, mesh, config.train.infer_batch_size, options, progress)


def fit_pca(config, embedder: Embedder, variables: dict) -> evaluation.PCA | None:
  """PCA fitted on up to eval.pca_images database images of eval.pca_dataset (as the
  original, which fits on a training folder)."""
  ec = config.eval
  if not ec.pca_dim:
    return None
  places = open_split(config, ec.pca_dataset or config.data.name, ec.pca_split)
  n = min(ec.pca_images, places.num_database)
  indices = np.sort(np.random.default_rng(config.seed).choice(places.num_database, n,
                                                              replace=False))
  feats = embedder(variables, places.images("database"), indices, desc="PCA fit")
  logging.info("PCA to %d dims fitted on %d database images of %s/%s", ec.pca_dim, n,
               places.name, places.split)
  return evaluation.PCA.fit(feats, ec.pca_dim)


EvalSets = dict[str, tuple[PlaceDataset, dict]]


def open_eval_sets(config) -> EvalSets:
  """{name: (split, protocol check)} of the eval datasets, opened and checked before any
  model work starts (a protocol mismatch stops here)."""
  sets = {}
  for name in eval_datasets(config):
    places = open_split(config, name, config.eval.split)
    sets[name] = (places, datasets.check_protocol(places, config.eval.check_counts))
  return sets


def evaluate_all(config, embedder: Embedder, variables: dict, eval_sets: EvalSets,
                 out_dir: str | None = None) -> dict:
  """{dataset: result} for the eval datasets, with optional exports under out_dir."""
  options = evaluation.EvalOptions.from_config(config.eval)
  pca = fit_pca(config, embedder, variables)
  return {name: {**evaluation.evaluate_places(embedder, variables, places, options, pca, out_dir),
                 "split": places.split, **check}
          for name, (places, check) in eval_sets.items()}


def initial_state(config, trainer):
  """A new train state; with model.pretrained, its backbone from torchvision weights."""
  state = trainer.init_state()
  if not config.model.pretrained:
    return state
  from vgssl_jax.models import pretrained
  variables = pretrained.load_torchvision_backbone(
      config.model.pretrained, {"params": state.params["net"],
                                "batch_stats": state.batch_stats["net"]})
  variables = jax.device_put(variables, parallel.replicated(trainer.mesh))
  params = {**state.params, "net": variables["params"]}
  batch_stats = {**state.batch_stats, "net": variables["batch_stats"]}
  # the EMA target / key encoder starts as a copy of the online network, as without weights;
  # Adam's moments are zeros whatever the parameters, so the optimizer state stays
  method_state = state.method_state
  if "target" in method_state:
    method_state = {**method_state, "target": {"params": variables["params"],
                                               "batch_stats": variables["batch_stats"]}}
  return state.replace(params=params, batch_stats=batch_stats, method_state=method_state)
