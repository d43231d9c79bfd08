"""Training objectives by name (`config.method`): the class that builds each and the
projector family its network gets.

Adding an objective = one module in objectives/ and one entry here; the trainer, the step
and the evaluation runner do not change.
"""

from __future__ import annotations

import dataclasses

from vgssl_jax.models.network import build_model
from vgssl_jax.objectives import rerank, ssl, triplet
from vgssl_jax.objectives.base import Objective


@dataclasses.dataclass(frozen=True)
class ObjectiveEntry:
  cls: type                 # has from_config(name, model, config) -> Objective
  projector_family: str | None  # models.heads.projector_layout family; None: no projector
  epoch_source: str = "geopairs"   # training.run.EPOCH_SOURCES: where its batches come from
  keys: tuple[str, ...] = ()       # config keys (or sections, "rerank.") only it reads


_PROJECTOR = ("model.n_layers", "model.projection_size")
OBJECTIVES: dict[str, ObjectiveEntry] = {
    "vicreg": ObjectiveEntry(ssl.SSLObjective, "vicreg", keys=(
        "loss.sim_coeff", "loss.std_coeff", "loss.cov_coeff", *_PROJECTOR)),
    "bt": ObjectiveEntry(ssl.SSLObjective, "vicreg", keys=("loss.lambd", *_PROJECTOR)),
    "simclr": ObjectiveEntry(ssl.SSLObjective, "contrastive", keys=("loss.temperature",
                                                                     *_PROJECTOR)),
    "mocov2": ObjectiveEntry(ssl.MoCo, "contrastive", keys=(
        "loss.temperature", "loss.moco_momentum", "loss.queue_size", *_PROJECTOR)),
    "byol": ObjectiveEntry(ssl.BYOL, "byol", keys=("loss.momentum", *_PROJECTOR)),
    "simsiam": ObjectiveEntry(ssl.BYOL, "byol", keys=_PROJECTOR),
    # supervised (train.py): (query, best positive, M negatives) tuples from cache refreshes
    "triplet": ObjectiveEntry(triplet.TupleObjective, None, "triplets", keys=("train.margin",)),
    "sare_ind": ObjectiveEntry(triplet.TupleObjective, None, "triplets"),
    "sare_joint": ObjectiveEntry(triplet.TupleObjective, None, "triplets"),
    # stage 2 (train_reranker.py): the R2Former on the same tuples
    "r2former": ObjectiveEntry(rerank.RerankObjective, None, "triplets",
                               keys=("train.margin", "rerank.")),
}
# config keys only the epoch sources of one kind read
EPOCH_SOURCE_KEYS = {"geopairs": ("train.pair_negative",), "triplets": ("train.cache_refresh_rate",)}
SSL_METHODS = tuple(n for n, e in OBJECTIVES.items() if e.epoch_source == "geopairs")


def entry(name: str) -> ObjectiveEntry:
  if name not in OBJECTIVES:
    raise ValueError(f"unknown method {name!r}; expected one of {', '.join(OBJECTIVES)}")
  return OBJECTIVES[name]


def build_objective(config) -> Objective:
  """The objective `config.method` with its network built from `config.model`."""
  e = entry(config.method)
  model = build_model(config.model, e.projector_family, config.data.image_size)
  return e.cls.from_config(config.method, model, config)


def build_network(model_config, method: str, image_size):
  """The network alone (evaluation, export): its projector family from the method."""
  return build_model(model_config, entry(method).projector_family, image_size)
