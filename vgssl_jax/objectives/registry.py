"""Training objectives by name (the config's `method`): the class of each and the epoch
source its batches come from (training.epochs.EPOCH_SOURCES). The class knows the rest: its
projector family, the config keys it reads, its checks.

Adding an objective = its class in objectives/ and one entry here; the trainer, the step
and the evaluation runner do not change.
"""

from __future__ import annotations

import dataclasses

from vgssl_jax.models.network import build_model
from vgssl_jax.objectives import multi_similarity, rerank, ssl, triplet
from vgssl_jax.objectives.base import Objective


@dataclasses.dataclass(frozen=True)
class ObjectiveEntry:
  cls: type                        # an Objective subclass with from_config(name, model, config)
  epoch_source: str = "geopairs"   # training.epochs.EPOCH_SOURCES: where its batches come from

  @property
  def projector_family(self) -> str | None:
    """models.heads.projector_layout family of its network; None: no projector."""
    return self.cls.projector_family


OBJECTIVES: dict[str, ObjectiveEntry] = {
    "vicreg": ObjectiveEntry(ssl.VICReg),
    "bt": ObjectiveEntry(ssl.BarlowTwins),
    "simclr": ObjectiveEntry(ssl.SimCLR),
    "mocov2": ObjectiveEntry(ssl.MoCoV2),
    "byol": ObjectiveEntry(ssl.BYOL),
    "simsiam": ObjectiveEntry(ssl.SimSiam),
    # supervised (train.py): (query, best positive, M negatives) tuples from cache refreshes
    "triplet": ObjectiveEntry(triplet.Triplet, "triplets"),
    "sare_ind": ObjectiveEntry(triplet.SareInd, "triplets"),
    "sare_joint": ObjectiveEntry(triplet.SareJoint, "triplets"),
    # stage 2 (train_reranker.py): the R2Former on the same tuples
    "r2former": ObjectiveEntry(rerank.RerankObjective, "triplets"),
    # today's recipes (GSV-Cities, MixVPR, SALAD, BoQ): P places x K images, MS miner + loss
    "ms": ObjectiveEntry(multi_similarity.MultiSimilarity, "places"),
}


def entry(name: str) -> ObjectiveEntry:
  if name not in OBJECTIVES:
    raise ValueError(f"method={name!r} is not valid; expected one of {', '.join(OBJECTIVES)}")
  return OBJECTIVES[name]


def build_objective(config) -> Objective:
  """The objective `config.method` with its network built from `config.model`."""
  e = entry(config.method)
  model = build_model(config.model, e.projector_family, config.data.image_size)
  return e.cls.from_config(config.method, model, config)


def build_network(model_config, method: str, image_size):
  """The network alone (evaluation, export): its projector family from the method."""
  return build_model(model_config, entry(method).projector_family, image_size)
