"""Aggregations by name (`model.aggregation`): what each consumes of the backbone's
Features (models.features), the module that makes the descriptor, its size, the config keys
it reads and its checks. `model.aggregation=""` takes the backbone family's default.

A pair the backbone cannot feed (a map pooling on a backbone that gives only class tokens)
is refused before any work, naming the aggregations that fit. Adding an aggregation = its
module in models/ and one entry in AGGREGATIONS; the network wires every pair alike.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp

from vgssl_jax.models import backbones, boq, deit, mixvpr, pooling, salad
from vgssl_jax.models.features import DESCRIBED, FEATURE_MAP, PREFIX, Features, FeatureShapes
from vgssl_jax.models.layers import Dense, l2_normalize


def _no_check(model_config, shapes: FeatureShapes) -> None:
  del model_config, shapes


@dataclasses.dataclass(frozen=True)
class AggregationSpec:
  name: str
  consumes: tuple[str, ...]                    # Features kinds it reads
  build: Callable[..., nn.Module]              # (model config, FeatureShapes) -> module
  size: Callable[..., int]                     # (model config, FeatureShapes) -> descriptor dim
  description: str                             # for messages and the README's table
  keys: tuple[str, ...] = ()                   # config keys only it reads
  check: Callable[..., None] = _no_check       # (model config, FeatureShapes); ValueError
  # how its parameters start from data (training.initial_weights.DATA_INITS), e.g. NetVLAD's
  # k-means over the backbone's local descriptors; None: from their initialisers
  data_init: str | None = None
  # an FC (model.fc_output_dim > 0) maps the pooled map channels: what a CNN's saliency of
  # stage-2 local tokens needs (layer4 x FC)
  pooled_channels: bool = False


def _check_l2(mc, shapes) -> None:
  del shapes
  if mc.l2 not in pooling.L2_MODES:
    raise ValueError(f"model.l2={mc.l2!r} is not valid; expected one of "
                     f"{', '.join(pooling.L2_MODES)}")


def _check_netvlad(mc, shapes) -> None:
  del shapes
  if mc.netvlad_clusters < 1:
    raise ValueError(f"model.netvlad_clusters={mc.netvlad_clusters} must be >= 1")


def _check_heads(mc, shapes) -> None:
  if mc.fc_output_dim < 1:
    raise ValueError(f"model.fc_output_dim={mc.fc_output_dim}: the DeiT heads' size, must be > 0")
  if shapes.prefix_tokens < 2:
    raise ValueError("the distillation heads read two class tokens (cls and dist); this "
                     f"backbone gives {shapes.prefix_tokens}")


class ClsToken(nn.Module):
  """The first class token, through an FC when fc_output_dim > 0, L2-normalised."""
  fc_output_dim: int = 0

  @nn.compact
  def __call__(self, features: Features, train: bool = False):
    del train
    x = features.prefix[:, 0].astype(jnp.float32)
    if self.fc_output_dim:
      x = Dense(self.fc_output_dim, name="fc")(x)
    return l2_normalize(x)


def _check_salad(mc, shapes) -> None:
  s = mc.salad
  if min(s.num_clusters, s.cluster_dim, s.token_dim, s.hidden) < 1 or s.out_dim < 0:
    raise ValueError("model.salad sizes (num_clusters, cluster_dim, token_dim, hidden) must be "
                     ">= 1 and out_dim >= 0")
  if not 0 <= s.dropout < 1:
    raise ValueError(f"model.salad.dropout={s.dropout} must be in [0, 1)")
  salad.check(s.num_clusters, shapes.map_hw[0] * shapes.map_hw[1])


def _check_boq(mc, shapes) -> None:
  del shapes
  b = mc.boq
  if min(b.num_queries, b.num_layers, b.row_dim) < 1:
    raise ValueError("model.boq.num_queries, num_layers and row_dim must be >= 1")
  boq.check(b.proj_channels)


def _check_mixvpr(mc, shapes) -> None:
  del shapes
  m = mc.mixvpr
  if min(m.out_channels, m.mix_depth, m.out_rows) < 1 or m.mlp_ratio <= 0:
    raise ValueError("model.mixvpr.out_channels, mix_depth and out_rows must be >= 1 and "
                     "mlp_ratio > 0")


def _pooling(name: str) -> AggregationSpec:
  return AggregationSpec(
      name, (FEATURE_MAP,),
      build=lambda mc, shapes: pooling.Pooling(mc.fc_output_dim, name, mc.l2, mc.netvlad_clusters),
      size=lambda mc, shapes: mc.fc_output_dim or shapes.map_channels,
      description={"gem": "generalised mean (learnable p)", "spoc": "average pooling",
                   "mac": "max pooling", "rmac": "regional max pooling (3 scales)"}[name]
      + ", L2 by model.l2, FC when model.fc_output_dim > 0",
      keys=("model.l2",), check=_check_l2, pooled_channels=True)


AGGREGATIONS: dict[str, AggregationSpec] = {
    **{name: _pooling(name) for name in pooling.POOLINGS},
    "netvlad": AggregationSpec(
        "netvlad", (FEATURE_MAP,),
        build=lambda mc, shapes: pooling.Pooling(mc.fc_output_dim, "netvlad", mc.l2,
                                                 mc.netvlad_clusters),
        size=lambda mc, shapes: mc.fc_output_dim or mc.netvlad_clusters * shapes.map_channels,
        description="NetVLAD (model.netvlad_clusters, k-means initialised), FC when "
                    "model.fc_output_dim > 0",
        keys=("model.netvlad_clusters",), check=_check_netvlad, data_init="kmeans"),
    deit.AGGREGATION: AggregationSpec(
        deit.AGGREGATION, (PREFIX,),
        build=lambda mc, shapes: deit.DistilledHeads(mc.fc_output_dim),
        size=lambda mc, shapes: mc.fc_output_dim,
        description="DeiT's cls and distillation heads, averaged (model.fc_output_dim wide)",
        check=_check_heads),
    "cls": AggregationSpec(
        "cls", (PREFIX,), build=lambda mc, shapes: ClsToken(mc.fc_output_dim),
        size=lambda mc, shapes: mc.fc_output_dim or shapes.token_dim,
        description="the cls token, FC when model.fc_output_dim > 0, L2"),
    "salad": AggregationSpec(
        "salad", (FEATURE_MAP, PREFIX),
        build=lambda mc, shapes: salad.Salad(**mc.salad.to_dict()),
        size=lambda mc, shapes: mc.salad.out_dim or (
            mc.salad.token_dim + mc.salad.num_clusters * mc.salad.cluster_dim),
        description="SALAD: Sinkhorn assignment of the patches to model.salad.num_clusters "
                    "clusters, plus the cls token (64 x 128 + 256 = 8448)",
        keys=("model.salad.",), check=_check_salad),
    "boq": AggregationSpec(
        "boq", (FEATURE_MAP,), build=lambda mc, shapes: boq.BoQ(**mc.boq.to_dict()),
        size=lambda mc, shapes: mc.boq.proj_channels * mc.boq.row_dim,
        description="Bag-of-Queries: learned queries attending to the map (proj_channels x "
                    "row_dim)",
        keys=("model.boq.",), check=_check_boq),
    "mixvpr": AggregationSpec(
        "mixvpr", (FEATURE_MAP,),
        build=lambda mc, shapes: mixvpr.MixVPR(shapes.map_hw[0] * shapes.map_hw[1],
                                               **mc.mixvpr.to_dict()),
        size=lambda mc, shapes: mc.mixvpr.out_channels * mc.mixvpr.out_rows,
        description="MixVPR: feature mixers over the map's positions (out_channels x out_rows; "
                    "the training image size only)",
        keys=("model.mixvpr.",), check=_check_mixvpr),
}


def spec(name: str) -> AggregationSpec:
  """The aggregation `name`; ValueError listing the valid names."""
  if name not in AGGREGATIONS:
    raise ValueError(f"model.aggregation={name!r} is not valid; expected one of "
                     f"{', '.join(AGGREGATIONS)}")
  return AGGREGATIONS[name]


def fitting(shapes: FeatureShapes) -> list[str]:
  """The aggregations a backbone that gives `shapes` can feed."""
  return [n for n, s in AGGREGATIONS.items() if set(s.consumes) <= set(shapes.outputs)]


def check_pair(model_config, shapes: FeatureShapes) -> AggregationSpec:
  """The spec of model.aggregation after checking that the backbone feeds it and that its
  own settings hold; ValueError naming the settings otherwise."""
  mc = model_config
  agg = spec(backbones.aggregation_name(mc))
  missing = [k for k in agg.consumes if k not in shapes.outputs]
  if missing:
    gives = " and ".join(DESCRIBED[k] for k in shapes.outputs)
    raise ValueError(f"model.aggregation={agg.name} reads {DESCRIBED[missing[0]]}, but "
                     f"model.backbone={mc.backbone} gives {gives}: use one of "
                     f"{', '.join(fitting(shapes))}")
  agg.check(mc, shapes)
  return agg


def build_aggregation(model_config, shapes: FeatureShapes) -> tuple[nn.Module, int]:
  """(module, descriptor size) of model.aggregation for a backbone that gives `shapes`."""
  agg = check_pair(model_config, shapes)
  return agg.build(model_config, shapes), agg.size(model_config, shapes)
