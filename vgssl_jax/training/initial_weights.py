"""Where a new run's network starts, besides its random init: ImageNet weights of the
backbone (`model.pretrained`), a stage-1 network to fine-tune (`train.init_from`), and
NetVLAD's k-means initialisation. Each replaces parts of the train state's "net" group;
a target copy (BYOL, MoCo) follows the online network, as it does at init."""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh

from vgssl_jax import checkpoints, sharding
from vgssl_jax.errors import ConfigError
from vgssl_jax.evaluation.embedder import Embedder
from vgssl_jax.models import aggregations, backbones
from vgssl_jax.models.network import init_variables
from vgssl_jax.models.pooling import netvlad_init_params
from vgssl_jax.models.weights import importer
from vgssl_jax.models.weights.files import is_weight_file, load_state_dict
from vgssl_jax.models.weights.names import replace_subtrees, subtrees
from vgssl_jax.objectives.registry import build_network
from vgssl_jax.training.state import TrainState


def network_keys(model_config) -> list[str]:
  """The model.* settings that make two networks' backbone + aggregation interchangeable:
  backbone, aggregation and descriptor size, and what the family and aggregation read."""
  fam, _ = backbones.family(model_config.backbone)
  agg = aggregations.spec(backbones.aggregation_name(model_config))
  own = [k[len("model."):].rstrip(".") for k in fam.keys + agg.keys if k.startswith("model.")]
  return ["backbone", "aggregation", "fc_output_dim", *own]


def replace_net(state: TrainState, variables: dict, mesh: Mesh) -> TrainState:
  """`state` with the network's variables replaced by `variables` ({"params",
  "batch_stats"} of the whole net, NumPy or device arrays)."""
  variables = jax.device_put(variables, sharding.replicated(mesh))
  params = {**state.params, "net": variables["params"]}
  batch_stats = {**state.batch_stats, "net": variables["batch_stats"]}
  objective_state = state.objective_state
  if isinstance(objective_state, dict) and "target" in objective_state:
    objective_state = {**objective_state, "target": {"params": variables["params"],
                                                     "batch_stats": variables["batch_stats"]}}
  return state.replace(params=params, batch_stats=batch_stats, objective_state=objective_state)


def net_variables(state: TrainState) -> dict:
  return jax.device_get({"params": state.params["net"], "batch_stats": state.batch_stats["net"]})


def with_pretrained_backbone(state: TrainState, model_config, image_size,
                             mesh: Mesh) -> TrainState:
  """`state` with the network's backbone from `model_config.pretrained` (ImageNet weights
  of the backbone's family). Adam's moments are zeros whatever the parameters, so the
  optimizer state stays."""
  variables = backbones.load_pretrained(model_config, net_variables(state), image_size)
  return replace_net(state, variables, mesh)


def _names(tree: dict) -> set[str]:
  return {".".join(k) for k in traverse_util.flatten_dict(tree)}


STAGE2_MODULES = ("local_head", "Reranker")


def load_init_from(path: str, config, variables: dict) -> tuple[dict, tuple[str, ...]]:
  """(network variables with backbone + aggregation from `path`, the modules loaded).

  `path`: one of our runs (its workdir, checkpoints/ or a step folder: the best checkpoint
  by validation, else the latest) or a weights file (a VG-SSL checkpoint of train_ssl.py or
  train.py, one of our exports, or a published release such as SALAD's). A re-ranking network also takes the local head and the
  R2Former when `path` has them (stage 2's jobs (d), (e)); the projector and anything else
  stay as initialised."""
  if is_weight_file(path):
    loaded, report = importer.import_state(load_state_dict(path), variables, config.model)
    return loaded, ("backbone", "aggregation", *report["stage2"])
  directory, step, meta, theirs = _run_network(path, config)
  image_size = tuple(meta.get("image_size") or config.data.image_size)
  model = build_network(theirs, meta["method"], image_size)
  template = jax.eval_shape(lambda: init_variables(model, jax.random.PRNGKey(0), image_size))
  saved = checkpoints.restore_variables(directory, step, template,
                                        jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  modules = ("backbone", "aggregation") + tuple(
      m for m in STAGE2_MODULES if m in saved["params"] and m in variables["params"])
  taken = jax.device_get(subtrees(saved, modules))
  which = (f"the best validated checkpoint, {checkpoints.SELECTION} "
           f"{meta['metrics'][checkpoints.SELECTION]:.2f}"
           if checkpoints.SELECTION in (meta.get("metrics") or {}) else "its latest checkpoint")
  run = os.path.dirname(directory)
  if os.path.basename(directory) == "checkpoints" and not os.path.exists(
      os.path.join(run, "results.json")):
    logging.warning("train.init_from=%s: that run has not finished (no results.json in %s); "
                    "starting from its step %d (epoch %d, %s)", path, run, step,
                    meta.get("epoch", 0), which)
  logging.info("train.init_from: step %d of %s (%s; %s, method %s)", step, directory, which,
               theirs.backbone, meta["method"])
  return replace_subtrees(variables, taken), modules


def _plain(value):
  return value.to_dict() if hasattr(value, "to_dict") else value


def _run_network(path: str, config):
  """(directory, step, meta, model settings) of the run `path`; ConfigError when its
  network cannot give this config's backbone + aggregation."""
  directory, step, meta = checkpoints.read_meta(path)
  theirs, ours = checkpoints.model_config_from(meta["model"]), config.model

  def value(mc, key):
    return backbones.aggregation_name(mc) if key == "aggregation" else _plain(mc[key])
  differ = [f"model.{k}: {value(theirs, k)!r} in the run, {value(ours, k)!r} here"
            for k in network_keys(ours) if value(theirs, k) != value(ours, k)]
  if theirs.get("local_dim") and ours.local_dim and theirs.local_dim != ours.local_dim:
    differ.append(f"model.local_dim: {theirs.local_dim} in the run, {ours.local_dim} here")
  if differ:
    raise ConfigError(f"train.init_from={path}: its network differs from this config's "
                      f"({'; '.join(differ)}); set those model.* values to the run's.")
  return directory, step, meta, theirs


def check_init_from(config, abstract: dict) -> None:
  """ConfigError before any work unless train.init_from can start this network: the path
  exists, and a weights file fits the network's shapes or a run has the same network."""
  path = config.train.init_from
  if is_weight_file(path):
    importer.import_state(load_state_dict(path), abstract, config.model)
  else:
    _run_network(path, config)


def with_init_from(state: TrainState, config, mesh: Mesh) -> TrainState:
  """`state` whose network starts from train.init_from (fine-tuning): which tensors were
  loaded and which stay new is logged (the original ignores wrong keys silently)."""
  variables = net_variables(state)
  loaded, modules = load_init_from(config.train.init_from, config, variables)
  new = sorted(m for m in variables["params"] if m not in modules and variables["params"][m])
  count = sum(len(_names(loaded[c].get(m, {}))) for c in ("params", "batch_stats")
              for m in modules)
  logging.info("train.init_from %s: loaded %d tensors (%s); initialised here: %s",
               config.train.init_from, count, ", ".join(modules), ", ".join(new) or "none")
  return replace_net(state, loaded, mesh)


def with_netvlad_init(state: TrainState, config, places, embedder: Embedder,
                      mesh: Mesh) -> TrainState:
  """NetVLAD's centroids and assignment from k-means (faiss, 100 iterations) over 50,000
  backbone descriptors: 100 random locations (L2-normalised) of each of 500 random training
  images (database and queries), as the benchmark's initialize_netvlad_layer."""
  descriptors_num, per_image = 50_000, 100
  rng = np.random.default_rng([config.seed, 7])
  total = places.num_database + places.num_queries
  picks = np.sort(rng.choice(total, min(-(-descriptors_num // per_image), total), replace=False))
  variables = net_variables(state)
  chunks = []
  for part, ids in (("database", picks[picks < places.num_database]),
                    ("queries", picks[picks >= places.num_database] - places.num_database)):
    if not len(ids):
      continue
    maps = embedder(variables, places.images(part), ids, output="feature_map",
                    desc=f"NetVLAD init ({part})")
    maps = maps.reshape(len(ids), -1, maps.shape[-1])
    maps /= np.maximum(np.linalg.norm(maps, axis=-1, keepdims=True), 1e-12)
    take = min(per_image, maps.shape[1])
    for image in maps:
      chunks.append(image[rng.choice(len(image), take, replace=False)])
  descriptors = np.ascontiguousarray(np.concatenate(chunks), np.float32)
  clusters = config.model.netvlad_clusters
  if len(descriptors) < clusters:
    raise ConfigError(f"model.netvlad_clusters={clusters} exceeds the {len(descriptors)} "
                      "local descriptors sampled for its k-means initialisation.")
  import faiss  # pylint: disable=import-outside-toplevel  # only NetVLAD's init needs it
  kmeans = faiss.Kmeans(descriptors.shape[1], clusters, niter=100, verbose=False,
                        seed=int(config.seed))
  kmeans.train(descriptors)
  init = netvlad_init_params(kmeans.centroids, descriptors)
  logging.info("NetVLAD initialised by k-means: %d clusters over %d descriptors of %d images, "
               "alpha %.2f", clusters, len(descriptors), len(picks), init["alpha"])
  params = dict(variables["params"])
  # where the aggregation keeps them (NetVLAD: its "netvlad" module; CRN: itself)
  at = aggregations.spec(backbones.aggregation_name(config.model)).data_init_at
  vlad_params = {"centroids": init["centroids"], "conv": init["conv"]}
  params["aggregation"] = _merged(params["aggregation"], at, vlad_params)
  return replace_net(state, {**variables, "params": params}, mesh)


def _merged(tree: dict, path: tuple[str, ...], values: dict) -> dict:
  """`tree` with `values` merged in at `path`."""
  if not path:
    return {**tree, **values}
  return {**tree, path[0]: _merged(tree.get(path[0], {}), path[1:], values)}


# how an aggregation's parameters start from data (models.aggregations.AggregationSpec.data_init)
DATA_INITS = {"kmeans": with_netvlad_init}
